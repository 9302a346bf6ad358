"""The checks a peer runs on a step's data (paper Sec. 3.2-3.3): part and aggregate hash checks, the
scalar and distance checks, the CenteredClip fixed-point check and the aggregate bound (invariant 3).

A :class:`Checks` object belongs to one step of one :class:`~.peer.BtardPeer` (the peer creates it with
the step, as hivemind's ``AllReduceRunner`` owns its ``TensorPartContainer`` and ``TensorPartReducer``).
It reads and updates that step's :class:`~.state.StepState`, files what it finds with the step's
:class:`~.court.Court` (accusations, direct verdicts) and posts through its peer, so a behaviour's
``hook_*`` methods see every message. It does no I/O.
"""

from __future__ import annotations

import itertools
import math
from typing import TYPE_CHECKING

import torch

from btard_wire import payloads as M
from btard_wire.errors import ProtocolError

from .actions import Action
from .aggregators import clip_weights
from .kernels import (
    decode_tensor,
    per_part_scalars_and_distances,
    rows_scalars_and_norms,
    sha256_hex,
)
from .state import Stage, StepState
from .tau import part_tau

if TYPE_CHECKING:
    from .court import Court
    from .peer import BtardPeer


def part_tensor(s: StepState, part: int, data: bytes) -> torch.Tensor:
    """Raw float32 ``data`` of part ``part`` of the step as a tensor (size and finiteness checked:
    ProtocolError otherwise)."""
    a, b = s.bounds[part]
    return decode_tensor(data, b - a)


def header_ok(s: StepState, header: M.TensorHeader, sender: str, kind: str, part: int, data: bytes | None) -> bool:
    """``header`` is ``sender``'s valid signed header of tensor ``kind`` part ``part`` of this step (and
    of ``data``, when given)."""
    if (header.sender != sender or header.kind != kind or header.part != part or header.run != s.ctx.run
            or header.step != s.ctx.step):
        return False
    if data is not None and header.sha256 != sha256_hex(data):
        return False
    try:
        header.verify(s.ctx.public_keys[sender])
    except ProtocolError:
        return False
    return True


# the width of the shortest interval holding half of a normal sample, in standard deviations
_SHORTH_TO_SIGMA = 1.349

# The mean, in standard deviations / _SHORTH_TO_SIGMA, of the shortest interval holding ``n // 2 + 1`` of
# ``n`` standard normal values, for n = 2 .. 64 (Monte Carlo, 200,000 samples each, +-0.001), then sparse
# points to 1024 (40,000 samples; linear between them). A small sample's majority interval is much
# narrower than 1.349 sigma (0.62 of it at n = 9), so without this factor the aggregate bound's own-spread
# reference underestimated an honest part's spread in small groups and dropped honest steps (gpt-char,
# 9 peers after 7 bans: 4 of 86; P(the interval < 1/4 of its sigma) = 4.7% at n = 9, 0.9% with it).
# A constant of the rule, the same on every peer.
_SHORTH_MEAN_SMALL = (
    0.836, 0.336, 0.735, 0.480, 0.734, 0.563, 0.748, 0.618, 0.762, 0.656, 0.776, 0.687, 0.788, 0.713, 0.800,
    0.733, 0.809, 0.749, 0.817, 0.764, 0.825, 0.776, 0.831, 0.787, 0.838, 0.796, 0.843, 0.804, 0.848, 0.812,
    0.853, 0.820, 0.857, 0.825, 0.862, 0.831, 0.865, 0.836, 0.868, 0.841, 0.872, 0.845, 0.875, 0.850, 0.878,
    0.853, 0.881, 0.858, 0.883, 0.860, 0.885, 0.864, 0.887, 0.867, 0.889, 0.870, 0.891, 0.873, 0.894, 0.875,
    0.895, 0.877, 0.897)
_SHORTH_MEAN_LARGE = ((64, 0.897), (80, 0.909), (96, 0.918), (128, 0.931), (192, 0.945), (256, 0.954),
                      (512, 0.969), (1024, 0.980))


def shorth_sigma(n: int) -> float:
    """The expected majority interval of ``n`` standard normal values (``n // 2 + 1`` of them), in
    standard deviations: divide a sample's interval by it to estimate its standard deviation without the
    small-sample bias. 0 for n < 2 (no interval)."""
    if n < 2:
        return 0.0
    if n <= 64:
        return _SHORTH_TO_SIGMA * _SHORTH_MEAN_SMALL[n - 2]
    for (n0, v0), (n1, v1) in itertools.pairwise(_SHORTH_MEAN_LARGE):
        if n <= n1:
            return _SHORTH_TO_SIGMA * (v0 + (v1 - v0) * (n - n0) / (n1 - n0))
    return _SHORTH_TO_SIGMA * _SHORTH_MEAN_LARGE[-1][1]


class Checks:
    """The checks of one step (see the module docstring)."""

    def __init__(self, peer: BtardPeer, s: StepState, court: Court):
        self.peer = peer
        self.s = s
        self.court = court
        self.me = peer.peer_id
        self.params = peer.params
        self.memo = peer.memo

    def check_part(self, sender: str, part: int, data: bytes, header: M.TensorHeader | None) -> list[Action]:
        s = self.s
        _, commit, cdigest = s.board[("commit", sender)]
        if len(commit.hashes) != s.n:
            s.faulted.add(sender)
            return self.court.direct_verdict(sender, M.FaultKind.bad_broadcast, [cdigest],
                                             f"commitment lists {len(commit.hashes)} hashes for {s.n} parts")
        if sha256_hex(data) == commit.hashes[part]:
            try:
                t = part_tensor(s, part, data)
            except ProtocolError as exc:
                s.faulted.add(sender)
                s.fetched[commit.hashes[part]] = data  # evidence others may fetch by its hash
                return self.court.accuse(sender, M.FaultKind.malformed_part, f"committed part is malformed: {exc}",
                                         evidence=[cdigest], part=part, data=data)
            s.received[sender] = t
            s.received_bytes[sender] = data
            return []
        # the data differs from the commitment: attributable only with the sender's signed header
        if header is not None and header_ok(s, header, sender, "part", part, data):
            s.faulted.add(sender)
            return self.court.accuse(sender, M.FaultKind.part_mismatch,
                                     f"part {part} does not match the signed commitment", evidence=[cdigest],
                                     part=part, header=header)
        self.peer._reject(f"part {part} from {sender[:8]} does not match its commitment and is unsigned")
        return []

    def check_aggregate(self, sender: str, part: int, data: bytes, header: M.TensorHeader | None) -> list[Action]:
        s = self.s
        _, res, rdigest = s.board[("agg_result", sender)]
        if res.part != part:
            s.aggregate_faulted.add(part)
            return self.court.direct_verdict(sender, M.FaultKind.bad_broadcast, [rdigest],
                                             f"aggregator of part {part} published a result for part {res.part}")
        digest, tensor, error = self.memo.decode(data, s.bounds[part][1] - s.bounds[part][0])
        if digest == res.hash:
            try:
                if error is not None:
                    raise error
                s.aggregates[part] = tensor
            except ProtocolError as exc:
                s.aggregate_faulted.add(part)
                return self.court.direct_verdict(sender, M.FaultKind.bad_aggregate, [rdigest],
                                                 f"published aggregate is malformed: {exc}")
            return []
        if header is not None and header_ok(s, header, sender, "aggregate", part, data):
            s.aggregate_faulted.add(part)
            return self.court.accuse(sender, M.FaultKind.aggregate_mismatch,
                                     f"aggregate {part} differs from the published H(a_j)", evidence=[rdigest],
                                     part=part, header=header)
        self.peer._reject(f"aggregate {part} from {sender[:8]} does not match H(a_j) and is unsigned")
        return []

    def send_scalars(self) -> list[Action]:
        s = self.s
        z = self.memo.projection_slice(s.r, s.ctx.numel, 0, s.ctx.numel)  # float32, widened exactly
        values, dists = per_part_scalars_and_distances(z, s.gradient, self.whole_aggregate(), s.n)
        actions: list[Action] = []
        for j, agg in enumerate(s.ctx.group):
            res_entry = s.board.get(("agg_result", agg))
            if res_entry is None or agg == self.me or j in s.aggregate_faulted or self.part_accused_by(agg):
                continue
            declared = res_entry[1].distances.get(self.me)
            d = dists[j]
            if declared is None or not abs(declared - d) <= self.params.exact_rtol * d + 1e-12:
                actions += self.court.accuse(agg, M.FaultKind.wrong_distance,
                                             f"d for part {j} declared {declared}, computed {d:.9g}",
                                             evidence=[s.board[("commit", self.me)][2], res_entry[2]],
                                             part=j, data=s.my_part_bytes[j])
        values = self.peer.hook_scalars(values, s.view())
        return actions + self.peer._broadcast("scalars", M.ScalarsPayload(values=values))

    def whole_aggregate(self) -> torch.Tensor:
        """``concat(a_j)`` over the step's parts (every ``a_j`` held), shared through the memo with the
        in-process peers holding the same parts. The key is each part's ``H(a_j)`` on this peer's board:
        its own part's is the hash of the very tensor it holds (its own ``agg_result``, stored before any
        hook), and a received part is held only when its bytes hash to it (:meth:`check_aggregate`), so
        the key fixes the content bit for bit. Read-only (the driver applies a copy)."""
        s = self.s
        key = tuple(s.board[("agg_result", agg)][1].hash for agg in s.ctx.group)
        return self.memo.whole(key, lambda: torch.cat([s.aggregates[j] for j in range(s.n)]))

    def part_accused_by(self, aggregator: str) -> bool:
        s = self.s
        return any(env.sender == aggregator and acc.kind in (M.FaultKind.part_mismatch, M.FaultKind.malformed_part)
                   for env, acc in s.accusations.values())

    def report(self) -> list[Action]:
        s = self.s
        actions: list[Action] = []
        me = self.me
        if s.r is not None and s.my_aggregate is not None:
            a0, a1 = s.bounds[s.index]
            zj = self.memo.projection_slice(s.r, s.ctx.numel, a0, a1)
            ks = []
            for k in s.contributors:
                if k == me or k not in s.received or not s.got("scalars", k):
                    continue
                _, sc, sdigest = s.board[("scalars", k)]
                if len(sc.values) != s.n:
                    actions += self.court.direct_verdict(k, M.FaultKind.bad_broadcast, [sdigest],
                                                         f"{len(sc.values)} scalars for {s.n} parts")
                else:
                    ks.append(k)
            if ks:
                expected, norms = rows_scalars_and_norms([s.received[k] for k in ks], s.my_aggregate, zj)
                declared = torch.tensor([s.payload("scalars", k).values[s.index] for k in ks], dtype=torch.float64)
                tol = self.params.exact_rtol * float(zj.to(torch.float64).norm()) * norms + 1e-12
                for i in torch.nonzero(~((expected - declared).abs() <= tol)).flatten().tolist():
                    k = ks[i]
                    actions += self.court.accuse(k, M.FaultKind.wrong_scalar,
                                                 f"s for part {s.index} declared {float(declared[i]):.9g}, "
                                                 f"recomputed {float(expected[i]):.9g}",
                                                 evidence=[s.board[("commit", k)][2], s.board[("scalars", k)][2]],
                                                 part=s.index, data=s.received_bytes[k])
        target = s.validators.get(me)
        if target is not None and s.validation_ok is False:
            prev = s.ctx.prev
            ev = [prev.digests.get(("scalars", target), "")] + [
                prev.digests.get(("agg_result", g), "") for g in prev.group]
            actions += self.court.accuse(target, M.FaultKind.recalc,
                                         f"recalculation of step {prev.step} failed: {s.validation_reason}",
                                         evidence=ev, target_step=prev.step)
        for acc in self.peer.hook_extra_accusations(s.view()):
            actions += self.peer._broadcast("accuse", acc)
            s.my_accusations.append(s.last_digest)
            s.early.add(s.last_digest)
        prev_step = s.ctx.prev.step if (target is not None and s.ctx.prev is not None) else None
        # the report fixes which accusations and ELIMINATEs decide the step (finding 6): this peer's own
        # and every other one it saw before reporting; later ones count only if another report lists them
        listed = list(dict.fromkeys(s.my_accusations + sorted(s.early - set(s.my_accusations))))
        s.stages |= Stage.REPORTED
        actions += self.peer._broadcast("validation", M.ValidationPayload(
            target=target, target_step=prev_step, ok=s.validation_ok if target else None,
            accusations=listed[:64], silent=sorted(s.silent)))
        return actions

    def fixed_point(self) -> list[Action]:
        """Everyone checks ``|sum_k min(1, tau_j/d_kj) s_kj| <= tol_j`` for every part (Sec. 3.2), with
        ``tau_j`` the rule's value for the part's published distances (:func:`.tau.part_tau`)."""
        s = self.s
        actions: list[Action] = []
        p = self.params
        accused_parts = set()
        for digest, (env, acc) in s.accusations.items():
            if digest not in s.early and digest not in s.listed:
                continue  # a late accusation no report lists decides nothing (finding 6)
            if acc.kind in (M.FaultKind.part_mismatch, M.FaultKind.malformed_part):
                accused_parts.add(s.ctx.group.index(env.sender))
            elif acc.kind in (M.FaultKind.wrong_scalar, M.FaultKind.wrong_distance) and acc.part is not None:
                accused_parts.add(acc.part)
        contributors = list(s.contributors)
        if not contributors or any(len(s.payload("scalars", k).values) != s.n for k in contributors):
            return actions
        cset = set(contributors)
        parts = []
        for j, agg in enumerate(s.ctx.group):
            if j in accused_parts or j in s.aggregate_faulted or j not in s.aggregates:
                continue
            env, res, rdigest = s.board[("agg_result", agg)]
            if set(res.distances) != cset:
                actions += self.court.direct_verdict(agg, M.FaultKind.bad_broadcast, [rdigest],
                                                     "distances do not cover exactly the step's contributors")
                continue
            parts.append(j)
        if not parts:
            return actions
        self.aggregate_bound(parts)
        # A pure function of content-addressed public data (envelope digests fix the distances and
        # scalars, H(a_j) fixes a_j), so in-process peers share one computation (the simulator).
        key = (tuple(s.board[("agg_result", s.ctx.group[j])][2] for j in parts),
               tuple(s.board[("scalars", k)][2] for k in contributors), tuple(parts), p)

        def compute() -> tuple[torch.Tensor, torch.Tensor]:
            dists = [s.payload("agg_result", s.ctx.group[j]).distances for j in parts]
            d = torch.tensor([[dj[k] for dj in dists] for k in contributors], dtype=torch.float64)  # [c, parts]
            sv = torch.tensor([s.payload("scalars", k).values for k in contributors], dtype=torch.float64)[:, parts]
            a_norm = torch.tensor([float(s.aggregates[j].norm()) for j in parts], dtype=torch.float64)
            # each part's tau from its own published distances (ProtocolParams.tau_rule; .tau)
            w = torch.stack([clip_weights(d[:, i], part_tau(p, dists[i].values())) for i in range(len(parts))],
                            dim=1)
            totals = (w * sv).sum(dim=0)
            tol = p.fixed_point_sigmas * (len(contributors) * p.cc_eps
                                          + p.fixed_point_rtol * (w * (d + a_norm[None, :])).sum(dim=0))
            return totals, tol

        cached = self.memo.fixed_point(key, compute)
        totals, tol = cached
        s.fixed_point_margin = float((totals.abs() / tol).max())
        failed = torch.nonzero(~(totals.abs() <= tol)).flatten().tolist()
        if not failed and not actions and parts == list(range(s.n)) and not s.bound_failed:
            # invariant 1: the step may be applied only once this check ran over every part and passed
            s.stages |= Stage.FIXED_POINT_PASSED
        for i in failed:
            j = parts[i]
            agg = s.ctx.group[j]
            digests = [s.board[("agg_result", agg)][2]] + [s.board[("scalars", k)][2] for k in contributors]
            actions += self.court.direct_verdict(agg, M.FaultKind.bad_aggregate, digests,
                                                 f"CenteredClip fixed point fails along z for part {j}: "
                                                 f"|sum w s| = {float(totals[i].abs()):.3g} > {float(tol[i]):.3g}")
        return actions

    def aggregate_bound(self, parts: list[int]) -> None:
        """Invariant 3: each ``a_j`` must lie within the bound of a majority of the step's contributors,
        at every step, the first included (no previous step is needed).

        Per value (distance / sqrt(part size)), ``rho_j``, the majority-th smallest published distance
        ``d_kj``, must not exceed ``aggregate_bound`` times the part's reference, measured in this step:

        - ``G``: the lower median of ``rho`` over the step's parts. Each part has another aggregator, so
          a minority of forged parts cannot raise it beyond the honest parts' values (and a part's
          ``rho`` is within the honest contributors' distances, which they verified);
        - the part's weight relative to ``G`` in the previous step, between 1 and
          ``aggregate_bound_spread`` (so a forger that stays under the bound cannot ratchet its part's
          reference up step after step); ``aggregate_bound_spread`` itself when there is no previous
          step for these values (the run's first step, a peer's first step after it joined);
        - at least the part's own spread along ``z``: the shortest interval that holds a majority of the
          contributors' scalars ``s_kj`` (``<z_j, g_kj> - <z_j, a_j>``: moving ``a_j`` shifts them all
          alike, so the aggregator cannot change it, and ``z`` is revealed after ``a_j`` is committed;
          a majority interval is at most as wide as the honest majority's own, whatever a minority
          posts), scaled to a standard deviation by the interval's expected width for that many
          contributors (:func:`shorth_sigma`: a small group's interval is narrower than a large one's),
          averaged with the previous step's estimate for the same part when there is one (two samples: a
          small group's single interval reads far too low often enough to drop honest steps).
          A part whose honest gradients spread far more than the median part (a transformer's
          embeddings) is measured against its own spread, not capped at the median's.

        Every honest contributor checked its own ``d_kj`` (else it accused), and a majority needs honest
        contributors, so a forged aggregate that passed the fixed-point check (an absorber's scalar)
        still moves at most about the bound times an honest spread in one step. The check reads only
        the board (published distances and scalars), so every peer reaches the same outcome; a failure
        drops the step on every peer and bans nobody."""
        s = self.s
        p = self.params
        contributors = list(s.contributors)
        prev = s.ctx.prev
        follows = prev is not None and prev.step == s.ctx.step - 1
        ref_scales = tuple((a, b, r) for a, b, r in prev.scales) if follows else ()
        ref_z = tuple((a, b, r) for a, b, r in prev.z_scales) if follows else ()
        # A pure function of content-addressed public data (the parts' agg_result and the contributors'
        # scalars envelopes, by digest), of the previous step's scales this peer holds, of the part bounds
        # and of the parameters: in-process peers with the same inputs share one computation (the
        # simulator), as they share the fixed-point check.
        key = ("aggregate_bound", tuple(s.board[("agg_result", s.ctx.group[j])][2] for j in parts),
               tuple(s.board[("scalars", k)][2] for k in contributors), tuple(parts),
               tuple(s.bounds[j] for j in parts), ref_scales, ref_z, p)
        failed, scales, z_scales = self.memo.fixed_point(
            key, lambda: _aggregate_bound(s, p, contributors, parts, ref_scales, ref_z))
        s.bound_failed.extend(failed)
        s.scales.extend(scales)
        s.z_scales.extend(z_scales)


def _aggregate_bound(s: StepState, p, contributors: list[str], parts: list[int],
                     ref_scales: tuple[tuple[int, int, float], ...], ref_z: tuple[tuple[int, int, float], ...] = ()
                     ) -> tuple[tuple[int, ...], tuple[tuple[int, int, float], ...], tuple[tuple[int, int, float], ...]]:
    """:meth:`Checks.aggregate_bound`'s computation: the parts that fail the bound, the scales of every
    part and their spreads along z (in ``parts`` order), from the step's published distances and scalars."""
    m = len(contributors) // 2 + 1
    per_sigma = shorth_sigma(len(contributors))
    spreads = sorted(r for _, _, r in ref_scales)
    g_prev = spreads[len(spreads) // 2] if spreads else 0.0
    rhos, along_z = {}, {}
    for j in parts:
        lo, hi = s.bounds[j]
        root = math.sqrt(max(1, hi - lo))
        dists = s.payload("agg_result", s.ctx.group[j]).distances
        rhos[j] = sorted(dists[k] for k in contributors)[m - 1] / root
        sc = sorted(s.payload("scalars", k).values[j] for k in contributors)
        along_z[j] = (min(sc[i + m - 1] - sc[i] for i in range(len(sc) - m + 1)) / per_sigma / root
                      if per_sigma > 0 else 0.0)
    ordered = sorted(rhos.values())
    g = ordered[(len(ordered) - 1) // 2]
    failed, scales, z_scales = [], [], []
    for j in parts:
        lo, hi = s.bounds[j]
        rho = rhos[j]
        own = max((r for a, b, r in ref_scales if a < hi and lo < b), default=0.0)
        weight = (min(max(own / g_prev, 1.0), p.aggregate_bound_spread) if g_prev > 0 and own > 0
                  else p.aggregate_bound_spread)
        # the part's own spread along z: the mean of this step's and the previous step's estimate for the
        # same part (the same values), where there is one. One majority interval of 9 scalars reads under a
        # quarter of the honest sigma 0.7% of the time (a 9-peer transformer group dropped 5 honest steps in
        # 760); the mean of two almost never does, and it is tighter against a forgery than either alone.
        # Neither estimate can exceed the honest majority's own interval, whatever a minority posts.
        prev_z = next((r for a, b, r in ref_z if (a, b) == (lo, hi)), 0.0)
        ref = max(g * weight, (along_z[j] + prev_z) / 2 if prev_z > 0 else along_z[j])
        bad = p.aggregate_bound > 0 and ref > 0 and rho > p.aggregate_bound * ref
        if bad:
            failed.append(j)
        # the next step's weight: this spread when it passed, else at most twice the reference
        scales.append((lo, hi, min(rho, 2.0 * ref) if bad else rho))
        z_scales.append((lo, hi, along_z[j]))
    return tuple(failed), tuple(scales), tuple(z_scales)
