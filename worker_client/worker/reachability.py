"""Reachability: can other peers dial this worker (asked of the site), and dialling others when the
site asks us to (bounded, yes/no answers only: the site must not turn volunteers into a port scanner)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from btard_wire.control import REACHABILITY_ADVICE, ReachabilityCheck, ReachabilityRequest, ReachabilityResult

from ..net import DataPlaneError

if TYPE_CHECKING:
    from .worker import Worker

log = logging.getLogger(__name__)

REACHABILITY_CHECKS_PER_MINUTE = 4  # dials the site may ask of this worker for other peers
REACHABILITY_ADDRS = 4  # addresses tried per check
ASK_AT_MOST = 2  # times this worker asks the site to have it checked


class Reachability:
    def __init__(self, worker: Worker):
        self.worker = worker
        self.reachable: bool | None = None  # can other peers dial us? (asked once joined; None: not known)
        self.asked = 0
        self.checks: list[float] = []  # when the site's recent checks started
        self.in_flight = False

    # ------------------------------------------------------------------ ours
    def ask(self) -> None:
        """Like Petals at start-up: have another peer dial our announced address, and say what to fix."""
        w = self.worker
        if w.hello is None or w.site is None or self.reachable is not None or self.asked >= ASK_AT_MOST \
                or not w.hello.p2p_addrs:
            return
        self.asked += 1
        w.site.send(ReachabilityRequest(p2p_id=w.hello.p2p_id, p2p_addrs=w.hello.p2p_addrs))

    def on_result(self, result: ReachabilityResult) -> None:
        self.reachable = result.reachable
        detail = f" ({result.detail[:100]})" if result.detail else ""
        if result.reachable:
            self.worker.event("reachability", f"another peer dialled this worker{detail}")
        else:
            self.worker.event("warning", f"other peers cannot reach this worker{detail}: {REACHABILITY_ADVICE}")

    # ------------------------------------------------------------------ theirs
    def _take_slot(self) -> bool:
        """At most one check at a time and :data:`REACHABILITY_CHECKS_PER_MINUTE` a minute."""
        now = time.monotonic()
        self.checks = [t for t in self.checks if now - t < 60.0]
        if len(self.checks) >= REACHABILITY_CHECKS_PER_MINUTE or self.in_flight:
            return False
        self.checks.append(now)
        return True

    async def check_for_site(self, check: ReachabilityCheck) -> None:
        """Dial another peer for the site. The answer is yes or no with a coarse code (``ok``, ``failed``,
        ``not_allowed``), never the daemon's error text: that would tell open ports from closed ones."""
        w = self.worker
        if not self._take_slot():
            log.info("ignoring reachability check %s: too many checks", check.request_id[:16])
            return
        self.in_flight = True
        addrs = check.p2p_addrs[:REACHABILITY_ADDRS]
        try:
            if not w.plane.dialable(addrs):
                reachable, code = False, "not_allowed"
            else:
                try:
                    await w.plane.ping(check.p2p_id, addrs, timeout=10.0)
                    reachable, code = True, "ok"
                except DataPlaneError:
                    reachable, code = False, "failed"
        finally:
            self.in_flight = False
        w.site.send(ReachabilityResult(request_id=check.request_id, reachable=reachable, detail=code))
