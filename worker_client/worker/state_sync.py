"""The worker's model state against the group's: publish ours, download the step's from several donors
(also after steps the site closed without us), or carry ours over when the one step we missed applied
nothing anywhere (no donor has a newer state)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from btard_wire.control import Group, Status

from ..btard.mprng import genesis_randomness, skipped_randomness
from ..net import DataPlaneError

if TYPE_CHECKING:
    from .worker import Worker

HEX = frozenset("0123456789abcdef")


class StateSync:
    def __init__(self, worker: Worker):
        self.worker = worker

    def publish(self, step: int) -> None:
        """Serve our state as of ``step`` (params + optimizer state) with the randomness chain it follows."""
        w = self.worker
        meta = {"r": w.r_prev.hex()} if w.r_prev is not None else {}
        w.plane.publish_state(step, w.state.full_state(), meta=meta)

    def carry_over(self, step: int, why: str) -> bool:
        """The site moved on past the one step this peer did not finish and no donor has a newer state:
        that step applied nothing anywhere, so our state is the state of ``step``; the randomness chain
        follows the public skip rule for the steps in between (see ``mprng.skipped_randomness``)."""
        w = self.worker
        start = w.state.step
        r = w.r_prev or genesis_randomness(w.run_name, w.run_info.seed)
        for skipped in range(max(start, 0), step):
            r = skipped_randomness(r, w.run_name, skipped)
        w.r_prev = r
        w.prev_record = None
        w.state.snapshot(step)
        self.publish(step)
        w.event("state", f"{why}; continuing from our own state of step {start} (steps {start}..{step - 1} "
                         f"were not applied here)")
        return True

    async def download(self, group: Group) -> bool:
        """Bring the local model to the state of ``group.step``: the seeded initial model at step 0,
        else a download from several of the step's donors at once."""
        w = self.worker
        donors = [p.peer_id for p in group.state_donors if p.peer_id != w.identity.peer_id]
        if group.step == 0 and w.state.step <= 0:
            w.state.snapshot(0)  # every peer builds the same initial model from the run's seed
            w.plane.publish_state(0, w.state.full_state(), meta={})
            return True
        if not donors:
            w.event("error", f"at step {w.state.step}, the group is at {group.step} and nobody can send the state")
            return False
        w.set_status(Status.downloading_state, f"downloading the state of step {group.step} from "
                                               f"{len(donors)} peers")
        try:
            flat, per_donor, info = await w.plane.download_state(donors, step=group.step,
                                                                 numel=w.state.state_numel,
                                                                 timeout=w.steps.phase_timeout("state"))
        except DataPlaneError as exc:
            if w.state.step >= 0 and w.role == "active" and group.step == w.state.step + 1:
                # nobody has a newer state than ours: the step we missed applied nothing anywhere
                return self.carry_over(group.step, f"no donor has the state of step {group.step} ({exc})")
            w.event("error", f"state download failed: {exc}")
            return False
        r = info.get("r")
        if r and not (isinstance(r, str) and len(r) == 64 and set(r) <= HEX):
            w.event("error", "state download failed: the donors' randomness chain is not 64 hex digits")
            return False
        w.state.load_full_state(flat, group.step)
        if r:
            w.r_prev = bytes.fromhex(r)
        w.prev_record = None
        w.event("state", f"downloaded the state of step {group.step} from {len(per_donor)} peers "
                         f"({sum(per_donor.values())} bytes)")
        return True
