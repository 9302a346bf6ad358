"""Validation by recalculation at the honest recomputation error we measured (docs/protocol.md,
"Recomputation error"; benchmarks/recalc_error.py).

Through the in-memory swarm: every validator's and every judge's recomputed gradient carries noise of the
measured size (relative L2 per part = the table's largest figure, fresh noise on every recomputation), as
if each ran on another machine. With the default ``recalc_rtol``, no honest peer is accused in a run of
that; and a peer whose committed gradient is off by ten times that size (a tiny gradient attack, nothing
else wrong) is accused by a validator, the judges agree, and it is banned for ``recalc``.
"""

from __future__ import annotations

import torch

from tests.protocol._swarm import Swarm
from worker_client.btard import protocol as P

# The largest honest error of docs/protocol.md's table (worst part, CPU 1 vs 2 threads, any task).
MEASURED_MAX = 5.1e-6
MARGIN = 5.0  # recalc_rtol = MARGIN * MEASURED_MAX, rounded up (docs/protocol.md)
N = 8
NUMEL = N * 512


def perturb(g: torch.Tensor, rel: float, gen: torch.Generator, parts: int = N) -> torch.Tensor:
    """``g`` plus noise whose L2 norm is ``rel`` times ``||g||`` in every one of ``parts`` parts (and so in
    the whole), proportional to ``|g|`` per coordinate like rounding error."""
    out = g.clone()
    for a, b in P.part_bounds(g.numel(), parts):
        e = g[a:b].abs() * torch.randn(b - a, generator=gen)
        out[a:b] += e * (rel * float(g[a:b].norm()) / float(e.norm()))
    return out


class NoisyRecalcSwarm(Swarm):
    """The test swarm where recomputations (``validate``, ``verdict``) carry ``noise`` and the peers marked
    Byzantine (honest code) commit their own gradient off by ``offset``."""

    def __init__(self, *, noise: float, offset: float = 0.0, **kw):
        self.noise, self.offset = noise, offset
        self.gen = torch.Generator().manual_seed(20261201)
        self.recomputed = 0
        super().__init__(**kw)
        self.board.keep_log = True  # every stored broadcast, for the accusations

    def _gradients(self, requests):
        grads = super()._gradients(requests)
        out = []
        for (peer, req), g in zip(requests, grads):
            if req.purpose in ("validate", "verdict"):
                self.recomputed += 1
                g = perturb(g, self.noise, self.gen)
            elif req.purpose == "own" and peer in self.byzantine and self.offset:
                g = perturb(g, self.offset, self.gen)
            out.append(g)
        return out

    def accusations(self) -> list[tuple[str, str]]:
        return [(e.sender, e.payload["accused"]) for e in self.board.log if e.phase == "accuse"]


def test_the_default_tolerance_is_the_measured_error_times_the_stated_margin():
    rtol = P.ProtocolParams().recalc_rtol
    assert MARGIN * MEASURED_MAX <= rtol <= 1.25 * MARGIN * MEASURED_MAX


def test_it_accuses_no_honest_peer_when_recomputations_differ_by_the_measured_error():
    swarm = NoisyRecalcSwarm(noise=MEASURED_MAX, n=N, numel=NUMEL, params=P.ProtocolParams(tau=1.0))
    swarm.run(25)
    assert swarm.recomputed >= 25  # validators really recomputed (two per step after step 0)
    assert swarm.accusations() == [] and not swarm.board.banned and not swarm.board.eliminated
    assert all(r.outcome == "applied" for results in swarm.history for r in results.values())


def test_it_bans_a_gradient_off_by_ten_times_the_measured_error():
    swarm = NoisyRecalcSwarm(noise=MEASURED_MAX, offset=10 * MEASURED_MAX, n=N, numel=NUMEL, byzantine=(3,),
                             params=P.ProtocolParams(tau=1.0))
    attacker = swarm.ids[3]
    for _ in range(25):
        swarm.step()
        if attacker in swarm.board.banned:
            break
    assert attacker in swarm.board.banned and swarm.board.banned[attacker].kind == "recalc"
    assert set(swarm.board.banned) == {attacker}
    assert {accused for _, accused in swarm.accusations()} == {attacker}
