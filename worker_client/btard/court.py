"""The court of a step: accusations, ELIMINATEs, verdicts and judging (paper Sec. 3.3, Alg. 3).

A :class:`Court` object belongs to one step of one :class:`~.peer.BtardPeer` (created with the step,
like :class:`~.checks.Checks`). It files this peer's accusations and ELIMINATEs, judges every
accusation that decides the step from the evidence it names by digest (never the judge's own copy of a
slot), posts verdicts, and tells when a case is resolved and who is banned. Evidence too large to
travel inline is fetched by its committed hash: a judge abstains until it holds it (nobody is
convicted on missing evidence). It posts through its peer, so a behaviour's hooks see every message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from btard_wire import payloads as M
from btard_wire.errors import ProtocolError

from .actions import Action, ComputeGradient, FetchTensor
from .checks import header_ok, part_tensor
from .kernels import _dist, _scalar, recalc_mismatch, sha256_hex
from .state import Ban, StepState

if TYPE_CHECKING:
    from .peer import BtardPeer


class NotReady(Exception):
    """An accusation cannot be judged yet (its data has not arrived)."""




class Court:
    """Accusations and verdicts of one step (see the module docstring)."""

    def __init__(self, peer: BtardPeer, s: StepState):
        self.peer = peer
        self.s = s
        self.me = peer.peer_id
        self.params = peer.params
        self.memo = peer.memo

    def evidence_bytes(self, acc: M.AccusePayload, sha256: str, holders: tuple[str, ...], part: int) -> bytes:
        """The contested part of an accusation: inline, else held here, else fetched by its committed hash
        (finding 4: nobody is convicted on missing evidence). Raises NotReady until it is here."""
        if acc.data is not None:
            return M.decode_inline_tensor(acc.data)
        data = self.peer._held_tensor(sha256)
        if data is not None:
            return data
        s = self.s
        if sha256 not in s.fetch_requested:
            s.fetch_requested.add(sha256)
            a, b = s.bounds[part]
            s.fetch_queue.append(FetchTensor(sha256=sha256, holders=holders, step=s.ctx.step, numel=b - a))
        raise NotReady

    def phantom_verdicts(self) -> list[Action]:
        """At the verdict deadline: a report naming an accusation the board never relayed is the
        reporter's provable fault (its signed report names a digest nobody holds; security review,
        finding 1). The step is dropped either way (``_finish`` needs every listed accusation)."""
        s = self.s
        actions: list[Action] = []
        for p in s.ctx.group:
            if not s.got("validation", p):
                continue
            missing = [d for d in s.payload("validation", p).accusations
                       if d not in s.accusations and d not in s.eliminates]
            if missing:
                actions += self.direct_verdict(p, M.FaultKind.bad_broadcast, [s.board[("validation", p)][2]],
                                               f"report lists {len(missing)} accusation(s) never broadcast: "
                                               f"{missing[0][:16]}")
        return actions

    def case_of(self, v: M.VerdictPayload) -> str:
        s = self.s
        if v.evidence and v.evidence[0] in s.accusations:
            return v.evidence[0]
        if v.accuser is not None and v.evidence:
            return v.evidence[0]
        return f"direct:{v.guilty}:{v.kind.value}"

    def accuse(self, accused: str, kind: M.FaultKind, reason: str, *, evidence: list[str] = (),
               part: int | None = None, data: bytes | None = None, header: M.TensorHeader | None = None,
               target_step: int | None = None) -> list[Action]:
        s = self.s
        inline = None
        if data is not None:
            try:
                inline = M.encode_inline_tensor(data)
            except ProtocolError:
                inline = None  # too large to inline: verifiers without the tensor abstain (ours)
        payload = M.AccusePayload(accused=accused, kind=kind, evidence=[e for e in evidence if e][:64],
                                  reason=reason[:500], part=part, data=inline, header=header,
                                  target_step=target_step)
        actions = self.peer._broadcast("accuse", payload)
        s.my_accusations.append(s.last_digest)
        s.early.add(s.last_digest)
        return actions

    def eliminate(self, target: str, reason: str) -> list[Action]:
        s = self.s
        actions = self.peer._broadcast("eliminate", M.EliminatePayload(target=target, reason=reason))
        s.my_accusations.append(s.last_digest)
        s.early.add(s.last_digest)
        return actions

    def direct_verdict(self, guilty: str, kind: M.FaultKind, evidence: list[str], reason: str) -> list[Action]:
        """A verdict on a fault every peer sees on the board (no accuser)."""
        s = self.s
        case = f"direct:{guilty}:{kind.value}"
        if case in s.my_cases:
            return []
        s.my_cases.add(case)
        s.direct_seen = True
        return self.peer._broadcast("verdict", M.VerdictPayload(guilty=guilty, accuser=None, accused=guilty, kind=kind,
                                                                evidence=[e for e in evidence if e][:64],
                                                                reason=reason[:500]))

    def judge(self, digest: str) -> list[Action]:
        s = self.s
        env, acc = s.accusations[digest]
        accuser, accused = env.sender, acc.accused
        if acc.kind == M.FaultKind.recalc:
            if s.r is None and not s.mprng_failed and s.ctx.validators is None:
                # the validators are drawn from r_t: a peer doomed before it combined the reveals
                # combines them now, or waits for the ones still on their way
                if not self.peer._all(s, "mprng_reveal", s.mprng_members):
                    return []
                return self.peer._combine_randomness() + self.judge(digest)
            prev = s.ctx.prev
            if (prev is None or acc.target_step != prev.step or s.validators.get(accuser) != accused
                    or accused not in prev.seeds):
                return self.verdict(digest, accuser, "the accuser was not assigned this target/step")
            s.judging.add(digest)
            return [ComputeGradient(request_id=f"verdict:{digest}", seed=prev.seeds[accused],
                                    model_ref=prev.model_ref, step=prev.step, peer=accused, purpose="verdict",
                                    batch_size=self.peer.batch_for(len(prev.group)))]
        try:
            guilty_is_accused, why = self.evaluate(accuser, acc)
        except NotReady:
            return []
        except ProtocolError as exc:
            guilty_is_accused, why = False, f"evidence does not hold: {exc}"
        return self.verdict(digest, accused if guilty_is_accused else accuser, why)

    def finish_recalc_verdict(self, digest: str, g: torch.Tensor) -> list[Action]:
        s = self.s
        if digest not in s.judging:
            return []
        s.judging.discard(digest)
        env, acc = s.accusations[digest]
        reason = recalc_mismatch(g, s.ctx.prev, acc.accused, self.params.recalc_rtol, z=self.peer._z_of(s.ctx.prev))
        if reason is not None:
            return self.verdict(digest, acc.accused, f"recalculation confirms: {reason}")
        return self.verdict(digest, env.sender, "recalculation matches the target's claims")

    def verdict(self, digest: str, guilty: str, why: str) -> list[Action]:
        s = self.s
        env, acc = s.accusations[digest]
        s.judged[digest] = guilty
        s.my_cases.add(digest)
        kind = acc.kind if guilty == acc.accused else M.FaultKind.false_accusation
        return self.peer._broadcast("verdict", M.VerdictPayload(
            guilty=guilty, accuser=env.sender, accused=acc.accused, kind=kind,
            evidence=[digest] + list(acc.evidence)[:63], reason=why[:500]))

    def named(self, acc: M.AccusePayload, phase: str, sender: str) -> Any:
        """The payload of ``sender``'s ``phase`` broadcast that the accusation names by digest, never this
        peer's own copy of the slot (two signed copies may exist; security review, finding 7). None
        when the evidence names none; raises NotReady when it names one this peer does not hold yet."""
        s = self.s
        for d in acc.evidence:
            env = s.evidence.get(d)
            if env is not None and env.phase == phase and env.sender == sender:
                payload, _ = self.peer.verifier.check(env, s.ctx.public_keys[sender])
                return payload
        if not s.got(phase, sender) and any(d not in s.evidence for d in acc.evidence):
            raise NotReady  # it names a message that has not reached us yet
        return None

    def evaluate(self, accuser: str, acc: M.AccusePayload) -> tuple[bool, str]:
        """Check an accusation's evidence; (True, why) when the accused is guilty. Raises NotReady."""
        s = self.s
        group = s.ctx.group
        accused = acc.accused
        if accused not in group or accused == accuser:
            return False, "accused is not in the group"
        kind = acc.kind
        if kind in (M.FaultKind.part_mismatch, M.FaultKind.malformed_part, M.FaultKind.wrong_scalar):
            # accuser aggregates its own part; the accused is a contributor
            part = group.index(accuser)
            commit = self.named(acc, "commit", accused)
            if commit is None or part >= len(commit.hashes):
                return False, "accused has no commitment for the part"
            if kind == M.FaultKind.part_mismatch:
                h = acc.header
                if h is None or not header_ok(s, h, accused, "part", part, None):
                    return False, "no valid signed part header from the accused"
                if h.sha256 == commit.hashes[part]:
                    return False, "the signed part matches the commitment"
                return True, "signed part contradicts the signed commitment"
            data = self.evidence_bytes(acc, commit.hashes[part], (accuser, accused), part)
            if sha256_hex(data) != commit.hashes[part]:
                return False, "inline part does not match the accused's commitment"
            if kind == M.FaultKind.malformed_part:
                try:
                    part_tensor(s, part, data)
                except ProtocolError as exc:
                    return True, f"committed part is malformed: {exc}"
                return False, "committed part is well formed"
            if s.r is None:
                if s.mprng_failed:
                    return False, "no shared randomness this step"
                raise NotReady
            if part not in s.aggregates:
                raise NotReady
            scalars = self.named(acc, "scalars", accused)
            if scalars is None:
                return False, "the accusation names no scalars of the accused"
            g = part_tensor(s, part, data)
            a0, a1 = s.bounds[part]
            zj = self.memo.projection_slice(s.r, s.ctx.numel, a0, a1)
            sc = scalars.values
            if len(sc) != s.n:
                return True, "scalars of the wrong length"
            expected = _scalar(zj, g, s.aggregates[part])
            tol = self.params.exact_rtol * float(zj.to(torch.float64).norm()) * _dist(g, s.aggregates[part]) + 1e-12
            if abs(expected - sc[part]) <= tol:
                return False, f"s_kj = {sc[part]:.9g} is right"
            return True, f"s_kj declared {sc[part]:.9g}, recomputed {expected:.9g}"
        if kind == M.FaultKind.aggregate_mismatch:
            part = group.index(accused)
            res = self.named(acc, "agg_result", accused)
            h = acc.header
            if res is None or h is None or not header_ok(s, h, accused, "aggregate", part, None):
                return False, "no valid signed aggregate header from the accused"
            if h.sha256 == res.hash:
                return False, "the signed aggregate matches H(a_j)"
            return True, "signed aggregate contradicts the published H(a_j)"
        if kind == M.FaultKind.wrong_distance:
            part = group.index(accused)
            commit = self.named(acc, "commit", accuser)
            res = self.named(acc, "agg_result", accused)
            if commit is None or res is None or acc.part != part:
                return False, "evidence incomplete"
            if part >= len(commit.hashes):
                return False, "the accuser's commitment has no such part"
            data = self.evidence_bytes(acc, commit.hashes[part], (accuser, accused), part)
            if sha256_hex(data) != commit.hashes[part]:
                return False, "inline part does not match the accuser's commitment"
            if part not in s.aggregates:
                if part in s.aggregate_faulted:
                    return False, "aggregate unavailable"
                raise NotReady
            g = part_tensor(s, part, data)
            d = _dist(g, s.aggregates[part])
            declared = res.distances.get(accuser)
            if declared is None or not abs(declared - d) <= self.params.exact_rtol * (d + 1e-30) + 1e-12:
                return True, f"d declared {declared}, recomputed {d:.9g}"
            return False, "declared distance is right"
        return False, f"{kind.value} is not something a peer can accuse another of"

    def resolved(self, case: str) -> bool:
        s = self.s
        votes = s.verdicts.get(case, {})
        counts: dict[str, int] = {}
        for g in votes.values():
            counts[g] = counts.get(g, 0) + 1
        if any(c >= s.majority for c in counts.values()):
            return True
        voters = [p for p in s.ctx.group if p not in s.silent]
        return all(p in votes for p in voters)

    def bans(self) -> list[Ban]:
        s = self.s
        bans = []
        for guilty, votes in s.guilty_votes.items():
            if len(votes) >= s.majority:
                _, v = next(iter(votes.values()))
                bans.append(Ban(peer=guilty, kind=v.kind.value, reason=v.reason, evidence=list(v.evidence),
                                accuser=v.accuser))
        return bans
