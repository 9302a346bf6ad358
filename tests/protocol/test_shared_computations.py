"""What peers in one process share (the simulator's speed-ups) changes nothing a peer decides or publishes:
the aggregate bound computed once through the shared :class:`~worker_client.btard.memo.Memo`, the
simulator's comparison of the honest views by the updates' bytes, an envelope's digest taken from the
bytes that were signed."""

from __future__ import annotations

import hashlib

import pytest
import torch

from btard_wire.envelope import Identity, sign_envelope, sign_envelope_with_digest, verify_envelope
from tests.protocol._swarm import Swarm
from tests.protocol.test_aggregate_bound import StepZeroForger
from worker_client.btard import attacks, checks
from worker_client.btard import protocol as P
from worker_client.btard.kernels import hashed_parts, part_bounds
from worker_client.btard.memo import Memo
from worker_client.btard.tensors import HashedBytes, tensor_to_hashed_bytes
from worker_client.sim.run import honest_views

pytestmark = pytest.mark.usefixtures("one_thread")


def _run_forged(monkeypatch, *, private_memos: bool) -> tuple[Swarm, int]:
    """Five steps of a swarm whose attacker forges beyond the first step's bound; returns the swarm and how
    many times the aggregate bound was computed."""
    monkeypatch.setitem(attacks.ATTACKS, StepZeroForger.name, StepZeroForger)
    monkeypatch.setattr(StepZeroForger, "reach", 1.5)
    calls = []
    compute = checks._aggregate_bound

    def counted(*args):
        calls.append(1)
        return compute(*args)

    monkeypatch.setattr(checks, "_aggregate_bound", counted)
    swarm = Swarm(n=7, attack=StepZeroForger.name, byzantine=(4,), attack_start=0, seed=3,
                  params=P.ProtocolParams(validators=0, aggregate_bound=4.0))
    if private_memos:
        for peer in swarm.peers.values():
            peer.memo = Memo()
    swarm.run(5)
    return swarm, len(calls)


def test_the_aggregate_bound_is_computed_once_per_step_and_decides_as_each_peers_own(monkeypatch):
    shared, shared_calls = _run_forged(monkeypatch, private_memos=False)
    private, private_calls = _run_forged(monkeypatch, private_memos=True)
    first = shared.honest[0]
    assert shared.history[0][first].outcome == "dropped"  # the forged step 0 fails the bound
    assert "beyond the bound" in shared.history[0][first].reason
    assert shared_calls == len(shared.history)  # every peer's check of a step read one computation
    assert private_calls == len(shared.peers) * len(shared.history)
    for a, b in zip(shared.history, private.history, strict=True):
        for p in shared.ids:
            ra, rb = a[p], b[p]
            assert (ra.outcome, ra.reason, ra.r) == (rb.outcome, rb.reason, rb.r)
            assert (ra.update is None) == (rb.update is None)
            if ra.update is not None:
                assert torch.equal(ra.update.view(torch.int32), rb.update.view(torch.int32))
            assert ra.record.scales == rb.record.scales and ra.record.scales
            assert ra.record.digests == rb.record.digests  # every published envelope, bit for bit


class _Result:
    def __init__(self, outcome: str, r: bytes, update: torch.Tensor | None):
        self.outcome, self.r, self.update = outcome, r, update


def test_the_honest_views_are_grouped_by_the_updates_bytes():
    u = torch.tensor([1.0, -2.5, 0.0])
    zero_sign = torch.tensor([1.0, -2.5, -0.0])  # equal values, different bytes
    nan = torch.tensor([float("nan"), 1.0, 2.0])
    results = [_Result("applied", b"r", u), _Result("applied", b"r", u.clone()), _Result("applied", b"r", zero_sign),
               _Result("applied", b"s", u.clone()), _Result("dropped", b"r", None), _Result("dropped", b"r", None),
               _Result("applied", b"r", nan), _Result("applied", b"r", nan.clone())]
    views = honest_views(results)
    assert [[results.index(r) for r in v] for v in views] == [[0, 1], [2], [3], [4, 5], [6, 7]]
    assert max(views, key=len)[0] is results[0]  # the first of the largest view is the reference


def test_a_signed_envelope_comes_with_the_digest_of_the_bytes_it_signed():
    ident = Identity.from_seed(b"shared-digest")
    payload = {"type": "scalars", "values": [0.1, -0.0, 1e300, 3.0]}
    env, digest = sign_envelope_with_digest(ident, run="r", step=4, phase="scalars", payload=payload,
                                            nonce="ab" * 16)
    assert digest == env.digest()
    verify_envelope(env, ident.public_key_b64)
    assert env == sign_envelope(ident, run="r", step=4, phase="scalars", payload=payload, nonce="ab" * 16)


def test_a_steps_whole_aggregate_is_concatenated_once_for_the_peers_that_hold_its_parts(monkeypatch):
    made = []
    whole = Memo.whole

    def counted(self, digests, concat):
        return whole(self, digests, lambda: made.append(digests) or concat())

    monkeypatch.setattr(Memo, "whole", counted)
    swarm = Swarm(n=5, seed=1)
    swarm.run(3)
    assert len(made) == 3 and len(set(made)) == 3  # one concatenation per step, for all five peers
    first = swarm.history[-1][swarm.honest[0]]
    assert first.outcome == "applied"
    parts = [first.record.aggregate[a:b] for a, b in part_bounds(swarm.numel, 5)]
    assert torch.equal(first.update, torch.cat(parts))


def test_the_parts_bytes_from_one_view_are_each_parts_own_bytes_and_digest():
    g = torch.randn(1003, generator=torch.Generator().manual_seed(5))
    bounds = part_bounds(g.numel(), 16)
    for got, (a, b) in zip(hashed_parts(g, bounds), bounds, strict=True):
        own = tensor_to_hashed_bytes(g[a:b])
        assert type(got) is HashedBytes and bytes(got) == bytes(own) and got.sha256 == own.sha256
        assert got.sha256 == hashlib.sha256(g[a:b].numpy().tobytes()).hexdigest()
