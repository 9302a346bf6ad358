"""Probation on the networked worker: a candidate's assigned gradient, and the member that checks it.

A candidate computes the gradient of the step's state on the public seed the site assigned, serves it
on the data plane to its panel's validators only (two active members, with a signed header) and reports
``probation``. Each validator fetches it after its own step, recomputes it and posts a signed
``probation`` report (``ProbationPayload``: the candidate, ``ok``, the reason of a mismatch); the site
counts the step only when both validators passed it and rejects the candidate only when both failed it
(``btard_wire.probation.probation_decision``). Its own
step's ``validation`` slot is never reused for it (two signed messages in one slot
are equivocation). Candidates are never aggregated (spec, Newcomers).
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import TYPE_CHECKING

import torch

from btard_wire import payloads as M
from btard_wire.control import Broadcast as BroadcastMessage
from btard_wire.control import Group, Status, StepReport
from btard_wire.envelope import sign_envelope
from btard_wire.probation import panel_of

from ..btard.kernels import gradient_mismatch
from ..net import DataPlaneError

if TYPE_CHECKING:
    from .worker import Worker


class Probation:
    def __init__(self, worker: Worker):
        self.worker = worker
        self.checks: list[dict] = []  # candidates this worker validates in the current step

    def assign(self, group: Group) -> None:
        me = self.worker.identity.peer_id
        self.checks = [c for c in group.candidates if me in panel_of(c)]

    # ------------------------------------------------------------------ ours (a candidate)
    async def candidate_step(self, group: Group, mine: dict) -> None:
        w = self.worker
        left = mine.get("probation_left", "?")
        w.status.step, w.status.step_roles = group.step, [f"candidate ({left} probation steps left)"]
        if w.state.step != group.step and not await w.state_sync.download(group):
            return
        w.set_status(Status.training, f"probation step {group.step}: computing the assigned gradient")
        seed = int(mine.get("seed", 0))
        try:
            g, loss = await asyncio.to_thread(w.state.gradient, group.step, seed, w.run_info.batch_size)
        except Exception as exc:  # noqa: BLE001 - any task error: the candidate reports nothing
            w.event("error", f"probation gradient failed: {exc}")
            return
        data = g.numpy().astype("<f4").tobytes()
        header = M.sign_tensor_header(w.identity, run=w.run_name, step=group.step, kind="part", part=0, data=data)
        validators = panel_of(mine)
        w.plane.publish(group.step, "probation", w.identity.peer_id, data,
                        allowed=validators or None, header=header.model_dump())
        w.steps.last_loss = w.status.loss = loss
        w.site.send(StepReport(step=group.step, outcome="probation", loss=loss, samples=w.run_info.batch_size))
        w.set_status(Status.waiting_for_group, f"probation step {group.step} done; waiting for the next step")

    # ------------------------------------------------------------------ theirs (we validate)
    async def validate_candidates(self, step: int) -> None:
        """Recompute each candidate this peer validates at ``step``; post ``ok: false`` on a mismatch."""
        checks, self.checks = self.checks, []
        for cand in checks:
            await self._validate(step, cand)

    async def _validate(self, step: int, cand: dict) -> None:
        w = self.worker
        peer_id = cand.get("peer_id", "")
        w.plane.set_directory({peer_id: (cand.get("p2p_id", ""), cand.get("p2p_addrs") or [])})
        w.set_status(Status.validating, f"checking candidate {peer_id[:8]}'s probation gradient")
        try:
            data, header = await w.plane.fetch_bytes_with_header(
                peer_id, step=step, kind="probation", key=peer_id, numel=w.state.numel,
                timeout=w.steps.phase_timeout("probation"))
            # The signed header makes a wrong gradient attributable to the candidate.
            signed = M.TensorHeader.model_validate(header or {})
            if signed.sender != peer_id or signed.sha256 != hashlib.sha256(data).hexdigest():
                raise DataPlaneError("malformed", "the gradient does not match its signed header", peer=peer_id)
            signed.verify(cand.get("public_key", ""))
            claimed = torch.frombuffer(bytearray(data), dtype=torch.float32)
            mine, _ = await asyncio.to_thread(w.state.gradient, step, int(cand.get("seed", 0)),
                                              w.run_info.batch_size)
            reason = gradient_mismatch(mine, claimed, float(w.run_info.extra.get("recalc_rtol", 1e-3))) or ""
        except (DataPlaneError, ValueError) as exc:  # ProtocolError and pydantic's errors are ValueErrors
            reason = f"no usable probation gradient: {exc}"
        except KeyError as exc:
            w.event("error", f"cannot check candidate {peer_id[:8]}: {exc}")
            return
        try:  # one report per (validator, candidate, step) in its own phase, read by probation_decision
            report = M.ProbationPayload(candidate=peer_id, ok=not reason, reason=reason[:500])
        except ValueError as exc:  # a candidate id the site should not have named
            w.event("error", f"cannot report on candidate {peer_id[:8]}: {exc}")
            return
        env = sign_envelope(w.identity, run=w.run_name, step=step, phase="probation",
                            payload=M.payload_dict(report))
        w.site.send(BroadcastMessage(envelope=env))
        if reason:
            w.event("probation", f"candidate {peer_id[:8]} failed probation: {reason}")
        else:
            w.event("probation", f"candidate {peer_id[:8]} passed probation step {step}")
