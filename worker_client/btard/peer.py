"""The BTARD peer: one step of the protocol as a pure, transport-agnostic state machine (paper Sec. 3,
Alg. 1-3).

A :class:`BtardPeer` consumes typed inputs (signed envelopes from the bulletin board, raw float32
bytes from private channels, gradients the driver computed, deadlines) and returns a list of
:class:`~.actions.Action` objects for its driver to carry out. It does no I/O, starts no threads and
knows no transport: the in-memory simulator (:mod:`worker_client.transports.memory`) and the networked
worker drive the same object. The driver API and every message are specified in ``docs/protocol.md``.

This module holds the driver API, the deadlines, the step's board store and ``_advance``, the progress
function whose stages are :class:`~.state.Stage` flags. Each step gets two collaborators the peer owns
for that step: :class:`~.checks.Checks` (hash, scalar and fixed-point checks, the aggregate bound) and
:class:`~.court.Court` (accusations, ELIMINATEs, verdicts). Byzantine behaviours (:mod:`.attacks`)
subclass :class:`BtardPeer` and override one ``hook_*`` method each; hooks receive the read-only
:class:`~.state.StepView`. Import the core's names from :mod:`worker_client.btard.protocol`.
"""

from __future__ import annotations

import math
import os
import secrets
from collections import deque
from collections.abc import Callable, Collection
from typing import Any

import torch

from btard_wire import BOARD_PHASES
from btard_wire import payloads as M
from btard_wire.board import checkable_targets
from btard_wire.envelope import Envelope, Identity, ReplayGuard, sign_envelope_with_digest, verify_envelope
from btard_wire.errors import ProtocolError
from btard_wire.randomness import validators_for_step

from .actions import Action, ComputeGradient, Finish, PostEnvelope, SendTensor
from .checks import Checks
from .court import Court
from .kernels import hashed_parts, part_bounds, recalc_mismatch, sha256_hex
from .memo import Memo
from .mprng import (
    batch_seed,
    combine_reveals,
    mprng_commitment,
    select_validators,
    skipped_randomness,
)
from .state import (
    Ban,
    ProtocolParams,
    Stage,
    StepContext,
    StepRecord,
    StepResult,
    StepState,
    StepView,
)
from .tau import centered_clip_part
from .tensors import tensor_to_hashed_bytes

# The order in which a step's deadlines expire (a driver fires the earliest pending one first).
PHASE_ORDER = ("gradient", "commit", "mprng_commit", "parts", "agg_result", "mprng_reveal", "aggregates",
               "scalars", "validation", "verdict")
# one message per peer and step; their deadlines are the bulletin board's call (see ``on_deadline``)
SINGLE_PHASES = BOARD_PHASES
_SINGLE = frozenset(BOARD_PHASES)  # membership tests on the per-envelope path (a tuple is a linear scan)



class EnvelopeVerifier:
    """Checks signatures and parses payloads, remembering envelopes it has checked by object identity.

    In one process (the simulator) the same frozen Envelope object reaches every peer, so one shared
    verifier checks each signature once. The result for a given object never changes, so sharing it
    is sound; a different object with the same content is simply checked again."""

    def __init__(self, max_entries: int = 200_000):
        self._seen: dict[int, tuple[Envelope, str, Any, str]] = {}
        self._max = max_entries

    def remember_own(self, envelope: Envelope, public_key_b64: str, payload: Any, digest: str) -> None:
        """Record an envelope this process just signed itself (its signature is known to be valid)."""
        if len(self._seen) >= self._max:
            self._seen.clear()
        self._seen[id(envelope)] = (envelope, public_key_b64, payload, digest)

    def check(self, envelope: Envelope, public_key_b64: str) -> tuple[Any, str]:
        """Verify and parse; returns ``(payload_model, digest)``; raises ProtocolError."""
        hit = self._seen.get(id(envelope))
        if hit is not None and hit[0] is envelope and hit[1] == public_key_b64:
            return hit[2], hit[3]
        verify_envelope(envelope, public_key_b64)
        payload = M.parse_payload(envelope.phase, envelope.payload)
        digest = envelope.digest()
        if len(self._seen) >= self._max:
            self._seen.clear()
        self._seen[id(envelope)] = (envelope, public_key_b64, payload, digest)
        return payload, digest


# --------------------------------------------------------------------------------------------------
# the peer


class BtardPeer:
    """An honest BTARD peer. One object per peer for the whole run; :meth:`begin_step` starts a step.

    Every ``on_*`` method returns the list of :class:`Action` the driver must carry out, in order.
    Invalid input (bad signature, wrong run/step/phase, replay, malformed payload or tensor) is
    recorded in :attr:`rejected` and changes nothing; it never raises.
    """

    name = "honest"
    byzantine = False

    def __init__(self, identity: Identity, params: ProtocolParams | None = None, *,
                 entropy: Callable[[int], bytes] = os.urandom, verifier: EnvelopeVerifier | None = None,
                 nonce: Callable[[], str] | None = None, memo: Memo | None = None):
        self.identity = identity
        self.peer_id = identity.peer_id
        self.params = params or ProtocolParams()
        self.entropy = entropy  # the MPRNG secrets
        self.nonce = nonce or _random_nonce  # envelope nonces (a simulator passes a seeded source)
        self.memo = memo if memo is not None else Memo()  # shared by a simulator's peers, else private
        self.verifier = verifier or EnvelopeVerifier()
        self.replay_guard = ReplayGuard()
        self.rejected: deque[tuple[int, str]] = deque(maxlen=1000)
        self.results: deque[StepResult] = deque(maxlen=4)
        self._s: StepState | None = None
        self._court: Court | None = None     # the current step's collaborators (begin_step)
        self._checks: Checks | None = None
        self._future: list[tuple[str, tuple]] = []

    # ------------------------------------------------------------------ driver API
    @property
    def step(self) -> int | None:
        return self._s.ctx.step if self._s else None

    @property
    def finished(self) -> bool:
        return self._s is None or self._s.result is not None

    @property
    def result(self) -> StepResult | None:
        return self._s.result if self._s else None

    @property
    def role(self) -> str:
        return self._s.role if self._s else ""

    def view(self) -> StepView | None:
        """The read-only view of the current step (what hooks receive); None before the first step."""
        return self._s.view() if self._s else None

    def _z_of(self, record: StepRecord) -> torch.Tensor:
        return self.memo.projection_slice(record.r, record.numel, 0, record.numel)

    def batch_for(self, group_size: int) -> int:
        """Samples per peer in a step of ``group_size`` peers (0: the driver's own batch size)."""
        g = self.params.global_batch
        return 0 if g <= 0 else max(1, math.ceil(g / max(1, group_size)))

    def begin_step(self, ctx: StepContext) -> list[Action]:
        """Start step ``ctx.step``; any unfinished previous step is abandoned."""
        if self.peer_id not in ctx.group:
            raise ValueError("this peer is not in the step's group")
        n = len(ctx.group)
        # Validators of this step and their targets (step t-1's contributors) are drawn from r_t, this
        # step's MPRNG output, once it is revealed (``_draw_validators``): nobody can know them before
        # step t-1's scalars are on the board (Sec. 3.3; security review, findings 2-3). A driver may
        # still fix them (``ctx.validators``: tests, benchmarks).
        validators = dict(ctx.validators) if ctx.validators is not None else {}
        # (ours) validators contribute their own gradient as well: if they sat the step out, b
        # attackers among n - m contributors could reach one half (7 of 14 for n = 16, b = 7, m = 2),
        # where CenteredClip has no stable fixed point. The cost is m extra gradients per step.
        contributors = list(ctx.group)
        role = "validator" if self.peer_id in validators else "contributor"
        self._s = s = StepState(ctx=ctx, n=n, index=ctx.group.index(self.peer_id),
                            bounds=part_bounds(ctx.numel, n), validators=validators,
                            contributors=contributors, mprng_members=list(ctx.group), role=role,
                            secret=self.entropy(32), majority=n // 2 + 1, members=frozenset(ctx.group))
        # the step's collaborators, owned by the peer for this step (see the module docstring)
        self._court = Court(self, s)
        self._checks = Checks(self, s, self._court)
        actions: list[Action] = []
        commit = mprng_commitment(s.secret, run=ctx.run, step=ctx.step, sender=self.peer_id)
        actions += self._broadcast("mprng_commit", M.MprngCommitPayload(hash=commit))
        req = ComputeGradient(request_id=f"own:{ctx.step}",
                              seed=batch_seed(ctx.r_prev, ctx.run, ctx.step, self.peer_id),
                              model_ref=ctx.model_ref, step=ctx.step, peer=self.peer_id, purpose="own",
                              batch_size=self.batch_for(n))
        actions.append(self.hook_gradient_request(req))
        if role == "validator":
            actions += self._request_recalc()
        # inputs for this step that arrived early
        early, self._future = self._future, []
        for kind, args in early:
            if args[0] == ctx.step:
                actions += getattr(self, kind)(*args[1:])
        actions += self._advance()
        return actions

    def _draw_validators(self) -> list[Action]:
        """r_t is known: draw this step's validators and their targets among step t-1's contributors
        (:func:`btard_wire.randomness.draw_validators`, the rule the site and the boards use too) and,
        if this peer is one, ask for the recomputation of its target's step t-1 gradient."""
        s = self._s
        ctx = s.ctx
        if ctx.validators is not None or s.r is None or Stage.VALIDATORS_DRAWN in s.stages:
            return []
        s.stages |= Stage.VALIDATORS_DRAWN
        if ctx.prev is None or ctx.prev.step != ctx.step - 1:
            return []
        s.validators = select_validators(s.r, ctx.group, checkable_targets(
            contributors=ctx.prev.contributors, scalars_senders=ctx.prev.scalars), step_validator_count(self.params, ctx))
        if self.peer_id not in s.validators or Stage.CHECKED in s.stages:
            return []  # not a validator, or drawn only while judging, after this peer already reported
        s.role = "validator"
        return self._request_recalc()

    def _request_recalc(self) -> list[Action]:
        s = self._s
        target, prev = s.validators[self.peer_id], s.ctx.prev
        if prev is None or target not in prev.seeds:
            s.validation_ok, s.validation_reason = None, "no record of the target"
            return []
        return [ComputeGradient(request_id=f"validate:{s.ctx.step}", seed=prev.seeds[target],
                                model_ref=prev.model_ref, step=prev.step, peer=target,
                                purpose="validate", batch_size=self.batch_for(len(prev.group)))]

    def on_gradient(self, request_id: str, gradient: torch.Tensor) -> list[Action]:
        """The driver's answer to a :class:`ComputeGradient` (a flat float32 tensor of ``numel``)."""
        s = self._s
        if s is None or s.result is not None:
            return []
        g = gradient.detach().reshape(-1).to(torch.float32)
        if g.numel() != s.ctx.numel:
            self._reject(f"gradient for {request_id} has {g.numel()} values, expected {s.ctx.numel}")
            return []
        if request_id == f"own:{s.ctx.step}" and s.gradient is None:
            if type(self).hook_corrupt_gradient is not BtardPeer.hook_corrupt_gradient:
                # a behaviour's hook gets its own copy (it may write in place); an honest peer keeps the
                # driver's tensor as it is (no 40 MB copy per step at 10M values)
                g = self.hook_corrupt_gradient(g.clone(), s.view())
            if not math.isfinite(float(g.sum())) and not bool(torch.isfinite(g).all()):
                # never commit to NaN/inf ourselves: a numerically broken peer sits the step out
                s.silent.add(self.peer_id)
                s.contributors = [p for p in s.contributors if p != self.peer_id]
                return self._advance()
            s.gradient = g.contiguous()
        elif request_id == f"validate:{s.ctx.step}" and s.recalc is None:
            s.recalc = g
            target = s.validators[self.peer_id]
            reason = recalc_mismatch(g, s.ctx.prev, target, self.params.recalc_rtol, z=self._z_of(s.ctx.prev))
            s.validation_ok, s.validation_reason = reason is None, reason or ""
        elif request_id.startswith("verdict:"):
            digest = request_id.split(":", 1)[1]
            return self._court.finish_recalc_verdict(digest, g) + self._advance()
        return self._advance()

    def on_broadcast_refused(self, step: int, digest: str, code: str = "") -> list[Action]:
        """The board refused one of this peer's own broadcasts of ``step`` and stored nothing (the site
        says so with the refused envelope's digest; ``code`` is its reason, e.g. ``eliminate_limit``).

        A refused accusation or ELIMINATE decides nothing: it leaves this peer's lists and its report
        never names it. A refused validation report that named such a digest (``unheld_digest``) is
        signed again without it; the slot stayed empty, so the new report is not equivocation. Any
        other refusal changes nothing here (the phase's deadline and the site's close decide)."""
        s = self._s
        if s is None or s.ctx.step != step or s.result is not None:
            return []
        own = s.evidence.get(digest)
        if own is None or own.sender != self.peer_id:
            return []
        if own.phase in ("accuse", "eliminate"):
            s.refused.add(digest)
            s.my_accusations = [d for d in s.my_accusations if d != digest]
            s.early.discard(digest)
            s.listed.discard(digest)
            s.accusations.pop(digest, None)
            s.eliminates.pop(digest, None)
            return self._advance()
        entry = s.board.get(("validation", self.peer_id))
        if own.phase != "validation" or entry is None or entry[2] != digest:
            return []
        old: M.ValidationPayload = entry[1]
        keep = [d for d in old.accusations if d not in s.refused]
        if keep == list(old.accusations):
            return []  # nothing of ours to take out: the refusal stands (the volunteer sees the site's reason)
        del s.board[("validation", self.peer_id)]
        s.senders.get("validation", set()).discard(self.peer_id)
        s.listed = {d for (phase, _), (_, p, _) in s.board.items() if phase == "validation" for d in p.accusations}
        return self._broadcast("validation", old.model_copy(update={"accusations": keep})) + self._advance()

    def on_broadcast(self, envelope: Envelope) -> list[Action]:
        """A signed message from the bulletin board (any phase)."""
        s = self._s
        if s is None:
            return []
        if envelope.run == s.ctx.run and envelope.step == s.ctx.step + 1:
            if len(self._future) < 10_000:
                self._future.append(("on_broadcast", (envelope.step, envelope)))
            return []
        if s.result is not None:
            return []
        try:
            payload, digest = self._accept_envelope(envelope)
        except _Equivocation as exc:
            # two different signed messages in one single-message slot: refused, and themselves proof
            # of equivocation (security review, finding 7); the first one received stays in the slot
            self._reject(str(exc))
            return self._court.direct_verdict(exc.sender, M.FaultKind.bad_broadcast, [exc.first, exc.second],
                                        f"equivocation: two signed {exc.phase} messages in one slot") + self._advance()
        except ProtocolError as exc:
            self._reject(str(exc))
            return []
        if digest is None:  # echo of our own broadcast: the board stored it
            if self.params.board_echo and envelope.phase in _SINGLE and s.got(envelope.phase, self.peer_id):
                confirmed = s.senders.setdefault(envelope.phase, set())
                if self.peer_id not in confirmed:
                    confirmed.add(self.peer_id)
                    return self._advance()
            return []
        self._store(envelope, payload, digest)
        phase = envelope.phase
        if phase in _SINGLE:
            # Only the message that completes a barrier can move the step on, except a commitment or
            # an aggregation result that unlocks a tensor which arrived before it.
            if phase == "commit" and envelope.sender in s.pending_parts:
                return self._advance()
            if phase == "agg_result" and payload.part in s.pending_aggregates:
                return self._advance()
            if len(s.senders[phase]) + (len(s.silent) if phase == "validation" else 0) < self._needed(phase):
                return []
        # an ELIMINATE (like an accusation) decides the step only if a validation report lists it: every
        # peer saw it before reporting or its sender listed it (finding 6), so it dooms the step here
        # only when it came before this peer's report; later ones count once a report lists them
        return self._advance()

    def on_part(self, sender: str, part: int, data: bytes, header: M.TensorHeader | None = None,
                step: int | None = None) -> list[Action]:
        """Gradient part ``part`` from ``sender`` (private channel); ``step`` defaults to the current."""
        s = self._tensor_arrival("part", sender, part, data, header, step)
        if s is None or sender in s.received or sender in s.faulted:
            return []
        s.pending_parts[sender] = (part, data, header)
        if s.got("commit", sender):
            actions = self._checks.check_part(sender, *s.pending_parts.pop(sender))
            if actions or len(s.received) + len(s.faulted) >= len(s.contributors):
                return actions + self._advance()
            return actions
        return []

    def on_aggregate(self, sender: str, part: int, data: bytes, header: M.TensorHeader | None = None,
                     step: int | None = None) -> list[Action]:
        """Aggregated part ``a_part`` from its aggregator ``sender`` (all-gather)."""
        s = self._tensor_arrival("aggregate", sender, part, data, header, step)
        if s is None or part in s.aggregates or part in s.aggregate_faulted:
            return []
        s.pending_aggregates[part] = (sender, data, header)
        if s.got("agg_result", sender):
            _, data, header = s.pending_aggregates.pop(part)
            actions = self._checks.check_aggregate(sender, part, data, header)
            if actions or len(s.aggregates) + len(s.aggregate_faulted) >= s.n:
                return actions + self._advance()
            return actions
        return []

    def _tensor_arrival(self, kind: str, sender: str, part: int, data: bytes, header: M.TensorHeader | None,
                        step: int | None) -> StepState | None:
        """What ``on_part`` and ``on_aggregate`` share: a tensor of the next step is kept for it, a stale
        one ignored, an unexpected or oversized one rejected (None); else the current step's state."""
        s = self._s
        if s is None:
            return None
        if step is not None and step == s.ctx.step + 1:
            if len(self._future) < 10_000:
                self._future.append((f"on_{kind}", (step, sender, part, data, header, step)))
            return None
        if s.result is not None or (step is not None and step != s.ctx.step):
            return None
        if kind == "part":
            expected = sender in s.contributors and part == s.index
        else:
            expected = 0 <= part < s.n and s.ctx.group[part] == sender
        if not expected or sender == self.peer_id:
            self._reject(f"unexpected {kind} {part} from {sender[:8]}")
            return None
        if len(data) > 8 * (s.bounds[part][1] - s.bounds[part][0]) + 1024:
            self._reject(f"{kind} {part} from {sender[:8]} is far larger than a part")
            return None
        return s

    def on_tensor(self, sha256: str, data: bytes, step: int | None = None) -> list[Action]:
        """A tensor this peer asked for with :class:`FetchTensor` (evidence fetched by its hash). Anything
        that does not hash to a requested value is ignored."""
        s = self._s
        if s is None or s.result is not None or (step is not None and step != s.ctx.step):
            return []
        if sha256 not in s.fetch_requested or sha256 in s.fetched or sha256_hex(data) != sha256:
            self._reject(f"unrequested or wrong tensor for hash {sha256[:16]}")
            return []
        s.fetched[sha256] = data
        return self._advance()

    def serve_tensor(self, sha256: str, step: int | None = None) -> bytes | None:
        """The bytes this peer holds for the current step whose SHA-256 is ``sha256`` (its own parts, the
        parts it received, evidence it fetched), for a peer's :class:`FetchTensor`; None otherwise."""
        s = self._s
        if s is None or (step is not None and step != s.ctx.step):
            return None
        return self._held_tensor(sha256)

    def _held_tensor(self, sha256: str) -> bytes | None:
        s = self._s
        if sha256 in s.fetched:
            return s.fetched[sha256]
        mine = s.payload("commit", self.peer_id)
        if mine is not None and sha256 in mine.hashes and s.my_part_bytes:
            return s.my_part_bytes[mine.hashes.index(sha256)]
        for sender, data in s.received_bytes.items():
            commit = s.payload("commit", sender)
            if commit is not None and s.index < len(commit.hashes) and commit.hashes[s.index] == sha256:
                return data
        return None

    @property
    def waiting_for(self) -> str | None:
        """The phase whose deadline applies now (None when the step is finished)."""
        s = self._s
        if s is None or s.result is not None:
            return None
        if self._doomed(s):
            if s.role == "validator" and s.validation_ok is None and not s.validation_reason:
                return "gradient"
            if self._reveal_open(s):
                return "mprng_reveal"
            if not self._all(s, "validation", s.ctx.group):
                return "validation"
            return "verdict"
        if s.gradient is None and self.peer_id in s.contributors:
            return "gradient"
        if not self._all(s, "commit", s.contributors):
            return "commit"
        if not self._all(s, "mprng_commit", s.mprng_members):
            return "mprng_commit"
        if Stage.AGGREGATED not in s.stages:
            return "parts"
        if not self._all(s, "agg_result", s.ctx.group):
            return "agg_result"
        if s.r is None and not s.mprng_failed:
            return "mprng_reveal"
        if not s.mprng_failed and len(s.aggregates) + len(s.aggregate_faulted) < s.n:
            return "aggregates"
        if not s.mprng_failed and not self._all(s, "scalars", s.contributors):
            return "scalars"
        if s.role == "validator" and s.validation_ok is None and not s.validation_reason:
            return "gradient"
        if not self._all(s, "validation", s.ctx.group):
            return "validation"
        return "verdict"

    def on_deadline(self, phase: str, senders: Collection[str] | None = None) -> list[Action]:
        """The deadline of ``phase`` passed. Stale calls (not the phase waited for) are ignored.

        For a board phase (:data:`BOARD_PHASES`), ``senders`` are the peers whose broadcast of the phase
        the bulletin board holds, as the site fixed them when it closed the phase: every peer then drops
        the same late peers (this one included, if its own broadcast came too late). Senders whose
        message has not reached us yet are waited for. Without ``senders`` (the simulator, where every
        peer shares one view) the peers this peer has heard from, and itself, count as present.
        """
        s = self._s
        if s is None or s.result is not None or phase != self.waiting_for:
            return []
        if phase in BOARD_PHASES:
            who = self._phase_members(phase)
            if senders is None:
                senders = {p for p in who if s.got(phase, p)}
                if phase != "mprng_reveal":  # a peer that kept its own reveal back fails the MPRNG itself
                    senders.add(self.peer_id)
            return self._close_board_phase(phase, who, set(senders))
        if phase == "gradient":
            if s.gradient is None and self.peer_id in s.contributors:
                s.silent.add(self.peer_id)
                s.contributors = [p for p in s.contributors if p != self.peer_id]
            else:
                s.validation_reason = "recalculation did not finish in time"
        elif phase == "parts":
            late = [p for p in s.contributors if p not in s.received and p not in s.faulted
                    and p != self.peer_id]
            actions: list[Action] = []
            for p in late:
                actions += self._court.eliminate(p, f"part {s.index} of step {s.ctx.step} never arrived")
            if late:  # the step is doomed: report (listing the ELIMINATEs), then finish with the others
                return actions + self._advance()
            s.stages |= Stage.PARTS_TIMEOUT
        elif phase == "aggregates":
            late = [j for j in range(s.n) if j not in s.aggregates and j not in s.aggregate_faulted]
            actions = []
            for j in late:
                actions += self._court.eliminate(s.ctx.group[j], f"aggregate {j} of step {s.ctx.step} never arrived")
            if late:
                return actions + self._advance()
        elif phase == "verdict":
            return self._court.phantom_verdicts() + self._finish(None, "verdict deadline")
        return self._advance()

    def missing_broadcasts(self, phase: str, senders: Collection[str]) -> list[str]:
        """Of ``senders``, those whose ``phase`` broadcast of the current step has not reached this peer."""
        s = self._s
        if s is None:
            return []
        return [p for p in senders if not s.got(phase, p)]

    def _phase_members(self, phase: str) -> list[str]:
        s = self._s
        if phase in ("commit", "scalars"):
            return list(s.contributors)
        if phase in ("mprng_commit", "mprng_reveal"):
            return list(s.mprng_members)
        return list(s.ctx.group)

    def _close_board_phase(self, phase: str, who: list[str], senders: set[str]) -> list[Action]:
        s = self._s
        late = [p for p in who if p not in senders]
        if self.peer_id in senders and s.got(phase, self.peer_id):
            s.senders.setdefault(phase, set()).add(self.peer_id)  # the board has ours, echo or not
        if not late:
            return self._advance()  # everyone posted in time; what has not reached us is on its way
        s.silent.update(late)
        if phase == "commit":
            s.contributors = [p for p in s.contributors if p not in late]
        elif phase == "mprng_commit":
            s.mprng_members = [p for p in s.mprng_members if p not in late]
        elif phase == "agg_result":
            return self._finish("dropped", f"aggregators {[p[:8] for p in late]} never published a result")
        elif phase == "mprng_reveal":
            # A reveal missing at the close is silence, not a fault (a cut link looks the same; issue 13):
            # the late peers are silent for the step (SILENCE_LIMIT consecutive silent steps ban) and r_t
            # combines the reveals the board holds, in group order (btard_wire.board.mprng_output with the
            # closed sender set). The step goes on: a withholder gains one bit, not a stalled step.
            s.mprng_members = [p for p in s.mprng_members if p not in late]
            s.stages |= Stage.REVEAL_CLOSED
            if not s.mprng_members:
                s.mprng_failed = True  # nobody revealed: no r_t, the public skip chain
        elif phase == "scalars":
            return self._finish("dropped", f"contributors {[p[:8] for p in late]} never published scalars")
        elif phase == "validation":
            s.stages |= Stage.VALIDATION_TIMEOUT
        return self._advance()

    # ------------------------------------------------------------------ hooks (attacks override one)
    def hook_gradient_request(self, request: ComputeGradient) -> ComputeGradient:
        return request

    def hook_corrupt_gradient(self, gradient: torch.Tensor, s: StepView) -> torch.Tensor:
        return gradient

    def hook_outgoing_part(self, to: str, part: int, data: bytes, s: StepView) -> SendTensor | None:
        return SendTensor(kind="part", to=to, part=part, data=data)

    def hook_outgoing_aggregate(self, to: str, part: int, data: bytes, s: StepView) -> SendTensor | None:
        return SendTensor(kind="aggregate", to=to, part=part, data=data)

    def hook_aggregate(self, x: torch.Tensor, s: StepView) -> tuple[torch.Tensor, list[float]]:
        """CenteredClip of the received float32 parts, published as float32 with the exact (float64)
        distances to the published value. No float64 copy of the parts: the Gram pass falls back to
        float64 products only when float32 ones overflow (huge finite inputs), and the last pass builds
        the aggregate and its distances together. The part's tau follows ``ProtocolParams.tau_rule``
        (:func:`.tau.centered_clip_part`: with the spread rule, the joint fixed point of a_j and tau_j)."""
        res, _ = centered_clip_part(x, self.params)
        return res.v, res.distances.tolist()

    def hook_scalars(self, values: list[float], s: StepView) -> list[float]:
        return values

    def hook_reveal(self, secret: bytes, s: StepView) -> bytes | None:
        return secret

    def hook_extra_accusations(self, s: StepView) -> list[M.AccusePayload]:
        return []

    def hook_outgoing_broadcast(self, envelope: Envelope, s: StepView) -> list[Envelope]:
        return [envelope]

    def hook_hold_broadcast(self, envelope: Envelope, s: StepView) -> bool:
        """True: the driver holds this broadcast back until the next deadline (a timing attacker; the
        in-memory transport honours it, an honest driver never asks)."""
        return False

    # ------------------------------------------------------------------ internals
    def _reject(self, reason: str) -> None:
        self.rejected.append((self._s.ctx.step if self._s else -1, reason))

    def _needed(self, phase: str) -> int:
        s = self._s
        if phase in ("commit", "scalars"):
            return len(s.contributors)
        if phase in ("mprng_commit", "mprng_reveal"):
            return len(s.mprng_members)
        return s.n

    def _reported_accusations_in(self) -> bool:
        """Every accusation and ELIMINATE named in a validation report is on this peer's board (a
        transport need not keep one sender's messages in order)."""
        s = self._s
        return all(d in s.accusations or d in s.eliminates for d in s.listed)

    def _reveal_open(self, s: StepState) -> bool:
        """The MPRNG reveal phase is still open for this peer: it revealed (every aggregation result is
        in) but neither every member's reveal nor the site's close has come. A doomed step waits for it
        too, so every honest peer ends the step with the same r_t (the combined one, or the skip chain)."""
        return (s.r is None and not s.mprng_failed and Stage.REVEALED in s.stages and Stage.REVEAL_CLOSED not in s.stages
                and not self._all(s, "mprng_reveal", s.mprng_members))

    @staticmethod
    def _doomed(s: StepState) -> bool:
        """The step cannot be applied any more (a fault is pending): skip to reports and verdicts.

        An accusation or ELIMINATE dooms it when this peer saw it before its own report (its report
        lists it) or a report lists it; one that came later and that no report lists does not decide
        the step (finding 6). So does a fault this peer itself saw on the board. Direct verdicts posted
        by others do not (ours: a Byzantine peer could otherwise stall every step for free)."""
        return bool(s.early) or bool(s.listed) or s.mprng_failed or bool(s.faulted) or bool(s.aggregate_faulted) or s.direct_seen

    @staticmethod
    def _all(s: StepState, phase: str, who: list[str]) -> bool:
        """Barrier: every peer of ``who`` has broadcast ``phase``. Peers silent at an earlier deadline
        are no longer in ``who`` (contributors, MPRNG members); only reports may be skipped by silence."""
        skip = s.silent if phase == "validation" else ()
        key = (phase, len(who), len(skip))
        if key in s.barriers:
            return True
        senders = s.senders.get(phase, ())
        if len(senders) + len(skip) < len(who):
            return False
        if all(p in senders or p in skip for p in who):
            s.barriers.add(key)
            return True
        return False

    def _accept_envelope(self, env: Envelope) -> tuple[Any, str | None]:
        s = self._s
        ctx = s.ctx
        if env.run != ctx.run:
            raise ProtocolError(f"message for run {env.run!r}, this is {ctx.run!r}")
        if env.step != ctx.step:
            raise ProtocolError(f"message for step {env.step}, this is step {ctx.step}")
        key = ctx.public_keys.get(env.sender)
        if key is None or env.sender not in s.members:
            raise ProtocolError(f"sender {env.sender[:8]} is not in this step's group")
        payload, digest = self.verifier.check(env, key)
        if env.sender == self.peer_id and digest in s.evidence:
            return payload, None
        self.replay_guard.check_and_remember(env)
        if env.phase in _SINGLE and (env.phase, env.sender) in s.board:
            first = s.board[(env.phase, env.sender)][2]
            if first != digest:
                s.evidence[digest] = env  # the second signature is the proof (judges resolve by digest)
                raise _Equivocation(env.sender, env.phase, first, digest)
            raise ProtocolError(f"second {env.phase} message from {env.sender[:8]}")
        return payload, digest

    def _store(self, env: Envelope, payload: Any, digest: str) -> None:
        s = self._s
        s.evidence[digest] = env
        if env.phase in _SINGLE:
            s.board[(env.phase, env.sender)] = (env, payload, digest)
            if isinstance(payload, M.ValidationPayload):
                s.listed.update(payload.accusations)
            senders = s.senders.setdefault(env.phase, set())
            if env.sender != self.peer_id or not self.params.board_echo:
                senders.add(env.sender)  # our own counts once the board echoes it (on_broadcast)
        elif isinstance(payload, M.AccusePayload):
            s.accusations[digest] = (env, payload)
            if Stage.REPORTED not in s.stages:
                s.early.add(digest)
        elif isinstance(payload, M.EliminatePayload):
            s.eliminates[digest] = (env, payload)
            if Stage.REPORTED not in s.stages:
                s.early.add(digest)
        elif isinstance(payload, M.VerdictPayload):
            case = self._court.case_of(payload)
            s.verdicts.setdefault(case, {})[env.sender] = payload.guilty
            s.guilty_votes.setdefault(payload.guilty, {})[env.sender] = (env, payload)

    def _sign(self, phase: str, payload: M._Payload) -> tuple[Envelope, str]:
        """This peer's signed envelope of ``payload`` for the current step, and its digest."""
        s = self._s
        return sign_envelope_with_digest(self.identity, run=s.ctx.run, step=s.ctx.step, phase=phase,
                                         payload=M.payload_dict(payload), nonce=self.nonce())

    def _broadcast(self, phase: str, payload: M._Payload) -> list[Action]:
        env, digest = self._sign(phase, payload)
        self.verifier.remember_own(env, self.identity.public_key_b64, payload, digest)
        self._s.last_digest = digest
        self._store(env, payload, digest)
        self.replay_guard.check_and_remember(env)
        return [PostEnvelope(e) for e in self.hook_outgoing_broadcast(env, self._s.view())]

    # The progress function: every input ends here. Each stage is guarded by a flag so calling it
    # again is harmless; stages run in protocol order so one call can move through several phases.
    def _advance(self) -> list[Action]:
        s = self._s
        actions: list[Action] = []
        if s is None or s.result is not None:
            return actions
        ctx = s.ctx
        me = self.peer_id
        if self._doomed(s):
            return actions + self._advance_doomed()

        # 3. commit
        if s.gradient is not None and Stage.COMMITTED not in s.stages and me in s.contributors:
            s.stages |= Stage.COMMITTED
            # hashed once here: the digest rides with the bytes (HashedBytes), so a receiver in this process
            # that gets this very object reads it instead of hashing the same bytes again (the simulator)
            s.my_part_bytes = hashed_parts(s.gradient, s.bounds)
            actions += self._broadcast("commit", M.CommitPayload(hashes=[sha256_hex(d) for d in s.my_part_bytes]))
            s.received[me] = s.gradient[slice(*s.bounds[s.index])]
            s.received_bytes[me] = s.my_part_bytes[s.index]

        # 4. scatter, after the barrier on every commitment
        commits_in = self._all(s, "commit", s.contributors)
        if Stage.COMMITTED in s.stages and Stage.SCATTERED not in s.stages and commits_in and me in s.contributors:
            s.stages |= Stage.SCATTERED
            view = s.view()
            for j, peer in enumerate(ctx.group):
                if peer != me:
                    out = self.hook_outgoing_part(peer, j, s.my_part_bytes[j], view)
                    if out is not None:
                        actions.append(out)

        # 4b. check received parts against the signed commitments
        if s.pending_parts:
            for sender in list(s.pending_parts):
                if not s.got("commit", sender):
                    continue
                part, data, header = s.pending_parts.pop(sender)
                actions += self._checks.check_part(sender, part, data, header)

        # 5. aggregate my part (CenteredClip) and publish H(a_j), d_kj; all-gather a_j
        if Stage.AGGREGATED not in s.stages and commits_in and all(
                p in s.received or p in s.faulted for p in s.contributors):
            s.stages |= Stage.AGGREGATED
            used = [p for p in s.contributors if p in s.received]
            a0, a1 = s.bounds[s.index]
            if used:
                x = torch.stack([s.received[p] for p in used])
                a, dists = self.hook_aggregate(x, s.view())
            else:
                a, dists = torch.zeros(a1 - a0), []
            a = a.to(torch.float32).contiguous()
            s.my_aggregate = a
            s.aggregates[s.index] = a
            data = tensor_to_hashed_bytes(a)
            actions += self._broadcast("agg_result", M.AggResultPayload(
                part=s.index, hash=sha256_hex(data), distances={p: float(d) for p, d in zip(used, dists)}))
            view = s.view()
            for peer in ctx.group:
                if peer != me:
                    out = self.hook_outgoing_aggregate(peer, s.index, data, view)
                    if out is not None:
                        actions.append(out)

        # 5b. check received aggregates against H(a_j)
        if s.pending_aggregates:
            for part in list(s.pending_aggregates):
                if not s.got("agg_result", ctx.group[part]):
                    continue
                sender, data, header = s.pending_aggregates.pop(part)
                actions += self._checks.check_aggregate(sender, part, data, header)

        # 6. MPRNG reveal once every aggregation result is fixed on the board
        actions += self._reveal(s)

        if s.r is None and not s.mprng_failed and Stage.REVEALED in s.stages and self._all(
                s, "mprng_reveal", s.mprng_members):
            actions += self._combine_randomness()

        # 7. scalars s_ij and my check of the declared d_ij
        have_all_aggregates = len(s.aggregates) == s.n
        if (s.r is not None and have_all_aggregates and s.gradient is not None
                and Stage.SCALARS not in s.stages and Stage.COMMITTED in s.stages and me in s.contributors):
            s.stages |= Stage.SCALARS
            actions += self._checks.send_scalars()

        if self._doomed(s):
            return actions + self._advance_doomed()

        # 7b/8. my checks: scalars of my part's contributors, the validation recalculation; then report
        scalars_done = s.mprng_failed or (s.r is not None and self._all(s, "scalars", s.contributors))
        validation_done = s.role != "validator" or s.validation_ok is not None or bool(s.validation_reason)
        if (Stage.CHECKED not in s.stages and scalars_done and validation_done and Stage.AGGREGATED in s.stages
                and (s.mprng_failed or have_all_aggregates)):
            s.stages |= Stage.CHECKED
            actions += self._checks.report()

        # fixed-point checks once everyone has reported (all accusations about parts are known)
        if (Stage.FIXED_POINT not in s.stages and Stage.CHECKED in s.stages
                and self._all(s, "validation", ctx.group) and self._reported_accusations_in()):
            s.stages |= Stage.FIXED_POINT
            if not s.mprng_failed:
                actions += self._checks.fixed_point()

        return actions + self._judge_and_finish()

    def _advance_doomed(self) -> list[Action]:
        """A fault is pending: report, judge every accusation, finish once the cases are resolved."""
        s = self._s
        actions: list[Action] = []
        # aggregates that arrived before their H(a_j) are still needed to judge accusations
        for part in list(s.pending_aggregates):
            if s.got("agg_result", s.ctx.group[part]):
                sender, data, header = s.pending_aggregates.pop(part)
                actions += self._checks.check_aggregate(sender, part, data, header)
        validation_done = s.role != "validator" or s.validation_ok is not None or bool(s.validation_reason)
        if Stage.CHECKED not in s.stages and validation_done:
            s.stages |= Stage.CHECKED
            actions += self._checks.report()
        actions += self._reveal_when_fixed(s)
        if (Stage.FIXED_POINT not in s.stages and Stage.CHECKED in s.stages and self._all(s, "validation", s.ctx.group)
                and self._reported_accusations_in()):
            s.stages |= Stage.FIXED_POINT
        return actions + self._judge_and_finish()

    def _reveal(self, s: StepState) -> list[Action]:
        """Step 6: this peer's MPRNG reveal, once every aggregation result is fixed on the board (and every
        commitment is in, its own included)."""
        if not (Stage.REVEALED not in s.stages and self._all(s, "agg_result", s.ctx.group)
                and self._all(s, "mprng_commit", s.mprng_members) and s.got("mprng_commit", self.peer_id)):
            return []
        s.stages |= Stage.REVEALED
        value = self.hook_reveal(s.secret, s.view())
        if value is None:
            return []
        return self._broadcast("mprng_reveal", M.MprngRevealPayload(value=value.hex()))

    def _reveal_when_fixed(self, s: StepState) -> list[Action]:
        """A doomed step still gets this peer's reveal (:meth:`_reveal`), as long as the step's reports are
        not all in: the members not doomed yet (an equivocator's forged aggregate reached only some of them)
        revealed and wait for it, and a committed member that never reveals counts as withholding its
        reveal. The reveal changes nothing of this peer's own step: a peer doomed before it combined r_t
        still ends on the public skip chain, as before (``_finish``). After the report, so no validator is
        drawn here (ours)."""
        if Stage.FIXED_POINT in s.stages or s.r is not None or s.mprng_failed:
            return []
        return self._reveal(s)

    def _judge_and_finish(self) -> list[Action]:
        s = self._s
        actions: list[Action] = []
        if s.result is not None:
            return actions
        # judge the accusations that decide the step (seen before this peer's report, or listed in one)
        deciding = [d for d in s.accusations if d in s.early or d in s.listed]
        for digest in deciding:
            if digest not in s.judged and digest not in s.judging:
                actions += self._court.judge(digest)
        if s.fetch_queue:  # evidence too large to inline: judges abstain until they hold it
            actions += s.fetch_queue
            s.fetch_queue = []

        # finish when every case I voted on is resolved
        if (Stage.FIXED_POINT in s.stages and all(d in s.judged for d in deciding) and not s.judging
                and all(self._court.resolved(case) for case in s.my_cases) and not self._reveal_open(s)):
            actions += self._finish(None, "")
        return actions

    def _combine_randomness(self) -> list[Action]:
        s = self._s
        actions: list[Action] = []
        values = []
        for p in s.mprng_members:
            commit = s.payload("mprng_commit", p)
            reveal = s.payload("mprng_reveal", p)
            x = bytes.fromhex(reveal.value)
            if mprng_commitment(x, run=s.ctx.run, step=s.ctx.step, sender=p) != commit.hash:
                s.mprng_failed = True
                actions += self._court.direct_verdict(p, M.FaultKind.bad_reveal,
                                                [s.board[("mprng_commit", p)][2], s.board[("mprng_reveal", p)][2]],
                                                "MPRNG reveal does not match its commitment")
            values.append(x)
        if not s.mprng_failed:
            s.r = combine_reveals(values)
            actions += self._draw_validators()
        return actions

    # ------------------------------------------------------------------ accusations and verdicts

    def _finish(self, outcome: str | None, reason: str) -> list[Action]:
        s = self._s
        if s.result is not None:
            return []
        bans = self._court.bans()
        # Invariant 1 (security review, finding 1): "applied" needs every check of the step to have run
        # and passed, the fixed-point check over every part included; reaching a deadline is not enough.
        eliminations = [(env.sender, e.target) for d, (env, e) in s.eliminates.items()
                        if d in s.listed or d in s.early]
        complete = (s.r is not None and len(s.aggregates) == s.n and not eliminations and not s.listed
                    and Stage.AGGREGATED in s.stages and Stage.FIXED_POINT_PASSED in s.stages
                    and self._reported_accusations_in())
        if outcome is None:
            if eliminations and not bans:
                e = eliminations[0]
                outcome, reason = "dropped", reason or f"ELIMINATE({e[0][:8]}, {e[1][:8]})"
            elif self._doomed(s) and not bans:
                outcome, reason = "dropped", reason or "a fault was raised and not resolved by a ban"
            elif bans:
                outcome, reason = "dropped", reason or f"banned during the step: {[b.peer[:8] for b in bans]}"
            elif s.bound_failed:
                outcome, reason = "dropped", reason or (f"aggregate {s.bound_failed[0]} lies beyond the bound of "
                                                        f"a majority of contributors")
            elif not complete:
                outcome, reason = "dropped", reason or "step incomplete"
            else:
                outcome = "applied"
        update = None
        if outcome == "applied":
            update = self._checks.whole_aggregate()
        record = None
        if s.r is not None and len(s.aggregates) == s.n:
            ctx = s.ctx
            record = StepRecord(
                run=ctx.run, step=ctx.step, r=s.r, model_ref=ctx.model_ref, numel=ctx.numel,
                group=list(ctx.group), contributors=list(s.contributors),
                seeds={p: batch_seed(ctx.r_prev, ctx.run, ctx.step, p) for p in s.contributors},
                aggregate=update if update is not None else self._checks.whole_aggregate(),
                scalars={k: list(s.payload("scalars", k).values) for k in s.contributors if s.got("scalars", k)},
                distances={j: dict(s.payload("agg_result", g).distances) for j, g in enumerate(ctx.group)
                           if s.got("agg_result", g)},
                digests={key: entry[2] for key, entry in s.board.items()},
                scales=list(s.scales) or (list(ctx.prev.scales) if ctx.prev is not None else []),
                z_scales=list(s.z_scales) if s.scales else (list(ctx.prev.z_scales) if ctx.prev is not None else []),
                recalc_ban=_recalc_banned(bans))
        r = s.r if s.r is not None else skipped_randomness(s.ctx.r_prev, s.ctx.run, s.ctx.step)
        s.result = StepResult(step=s.ctx.step, outcome=outcome, update=update, bans=bans,
                              eliminations=list(dict.fromkeys(eliminations)), silent=sorted(s.silent),
                              r=r, record=record, reason=reason, role=s.role,
                              contributed=Stage.COMMITTED in s.stages and self.peer_id in s.contributors,
                              revert_previous=reverts_previous(bans, self.params, s.ctx))
        self.results.append(s.result)
        return [Finish(s.result)]


def step_validator_count(params: ProtocolParams, ctx: StepContext) -> int:
    """How many validators step ``ctx.step`` draws: ``params.validators``, times ``params.alarm_factor``
    when step t-1 (``ctx.prev``, the record every member that draws holds) ended with a recalculation ban
    (:func:`btard_wire.randomness.validators_for_step`, the rule the site and the boards use too)."""
    prev = ctx.prev
    return validators_for_step(params.validators, alarm_factor=params.alarm_factor,
                               prev_recalc_ban=prev is not None and prev.step == ctx.step - 1 and prev.recalc_ban)


def reverts_previous(bans: list[Ban], params: ProtocolParams, ctx: StepContext) -> bool:
    """Whether a step that ends with ``bans`` undoes step - 1's update (if the driver applied it): a ban
    for a wrong recomputation names a contributor of step - 1 (validators' targets are drawn among
    them, and the court takes an accusation only for that step) whose gradient was not the one its
    public seed gives, so that step's aggregate took in an attacker's gradient. Board facts only: a
    peer that has no record of step - 1 (a newcomer) reaches the same answer."""
    return params.revert_on_recalc_ban and ctx.step >= 1 and _recalc_banned(bans)


def _recalc_banned(bans: list[Ban]) -> bool:
    """A ban of the step for a wrong recomputation: it undoes step - 1 (:func:`reverts_previous`) and
    raises the next step's validator count (:func:`step_validator_count`, via ``StepRecord.recalc_ban``)."""
    return any(b.kind == M.FaultKind.recalc.value for b in bans)


def _random_nonce() -> str:
    return secrets.token_hex(16)


class _Equivocation(ProtocolError):
    """A second, different signed message in a single-message slot ``(step, phase, sender)``."""

    def __init__(self, sender: str, phase: str, first: str, second: str):
        super().__init__(f"second {phase} message from {sender[:8]}: equivocation")
        self.sender, self.phase, self.first, self.second = sender, phase, first, second

