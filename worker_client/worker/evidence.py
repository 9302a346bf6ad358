"""Evidence by hash (docs/protocol.md, "Evidence fetched by hash"; threat model invariant 4).

An accusation names the contested part by its committed SHA-256; when the part is too large to travel
inline, the core asks for it with a :class:`~worker_client.btard.actions.FetchTensor` and its judges
abstain until they hold it. The worker fetches it over the data plane from the holders the core names
(the accused, the accuser, then the other members), keeping only those in the current group and never
itself, one holder at a time, each within a timeout and the whole within the verdict phase's deadline;
the data plane checks the size before reading and the hash after. The bytes go back to the core
through the inbox (:class:`~.inbox.EvidenceArrived`); a fetch that fails everywhere leaves the judge
abstaining, which is what the core does with missing evidence.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from ..btard.actions import FetchTensor
from ..net import DataPlaneError
from .inbox import EvidenceArrived

if TYPE_CHECKING:
    from .worker import Worker

log = logging.getLogger(__name__)

MAX_FETCHES_IN_FLIGHT = 8  # evidence fetches at once (one per open case is the honest need)
MAX_HOLDERS_TRIED = 8


class EvidenceFetcher:
    def __init__(self, worker: Worker):
        self.worker = worker
        self.in_flight: dict[tuple[int, str], asyncio.Task] = {}
        self.fetched = 0  # pieces of evidence fetched and verified (the UI and the tests read it)

    def fetch(self, request: FetchTensor) -> None:
        """Start fetching ``request`` in the background (deduplicated by step and hash, bounded in number)."""
        w = self.worker
        key = (request.step, request.sha256)
        if key in self.in_flight:
            return
        group = w.current_group
        if group is None or group.step != request.step:
            log.info("not fetching evidence %s of step %s: not our current step", request.sha256[:16], request.step)
            return
        layout = w.steps.layouts.get(request.step)
        biggest = max((b - a for a, b in layout[1]), default=0) if layout else 0
        if not 0 < request.numel <= biggest:  # a committed part is never larger than the largest part
            log.info("not fetching evidence %s: %s values is not a part size of step %s", request.sha256[:16],
                     request.numel, request.step)
            return
        if len(self.in_flight) >= MAX_FETCHES_IN_FLIGHT:
            log.info("not fetching evidence %s: %d fetches in flight", request.sha256[:16], len(self.in_flight))
            return
        members = {p.peer_id for p in group.peers} - {w.identity.peer_id}
        holders = [h for h in dict.fromkeys(request.holders) if h in members][:MAX_HOLDERS_TRIED]
        if not holders:
            log.info("not fetching evidence %s: no holder is a member of the group", request.sha256[:16])
            return
        task = w.spawn(self._fetch(request, holders))
        self.in_flight[key] = task
        task.add_done_callback(lambda _: self.in_flight.pop(key, None))

    async def _fetch(self, request: FetchTensor, holders: list[str]) -> None:
        w = self.worker
        budget = w.steps.phase_timeout("verdict")
        per_holder = max(1.0, budget / len(holders))
        loop = asyncio.get_running_loop()
        until = loop.time() + budget
        for holder in holders:
            remaining = until - loop.time()
            if remaining <= 0:
                break
            try:
                data = await w.plane.fetch_evidence(holder, step=request.step, sha256=request.sha256,
                                                    numel=request.numel, timeout=min(per_holder, remaining))
            except DataPlaneError as exc:
                log.info("evidence %s from %s: %s", request.sha256[:16], holder[:8], exc)
                continue
            self.fetched += 1
            w.inputs.put_nowait(EvidenceArrived(request.step, request.sha256, data))
            w.event("evidence", f"step {request.step}: fetched evidence {request.sha256[:12]} "
                                f"({len(data)} bytes) from {holder[:8]}", step=request.step)
            return
        w.event("warning", f"step {request.step}: evidence {request.sha256[:12]} could not be fetched from "
                           f"{len(holders)} peers; this peer abstains on that case", step=request.step)
