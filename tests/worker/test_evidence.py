"""Evidence by hash on the worker's side (no network): whom a judge asks, and whom a holder serves."""

from __future__ import annotations

import asyncio
import hashlib

from btard_wire.control import Group, PeerInfo
from btard_wire.envelope import Identity
from worker_client.btard.actions import FetchTensor
from worker_client.net import DataPlaneError
from worker_client.worker import Worker, WorkerConfig
from worker_client.worker.inbox import EvidenceArrived

DATA = bytes(range(256)) * 16  # 1,024 float32 values
SHA = hashlib.sha256(DATA).hexdigest()
STEP = 4


class FakePlane:
    """Holders answer with the evidence, except ``liars`` (a wrong hash) and ``silent`` (a timeout)."""

    def __init__(self, *, liars=(), silent=()):
        self.asked: list[str] = []
        self.liars, self.silent = set(liars), set(silent)

    async def fetch_evidence(self, peer, *, step, sha256, numel, timeout):
        self.asked.append(peer)
        if peer in self.silent:
            raise DataPlaneError("timeout", "no answer", peer=peer)
        if peer in self.liars:
            raise DataPlaneError("hash", "does not hash", peer=peer)
        return DATA


class FakePeer:
    step = STEP

    def serve_tensor(self, sha256, step=None):
        return DATA if sha256 == SHA and step == STEP else None


def judge(members=("a", "b", "c"), *, plane=None) -> Worker:
    worker = Worker(WorkerConfig(server="ws://127.0.0.1:1", token="t", identity=Identity.from_seed(b"judge")))
    me = worker.identity.peer_id
    peers = [PeerInfo(peer_id=p, public_key="k") for p in (*members, me)]
    worker.current_group = Group(step=STEP, peers=peers)
    worker.steps.layouts[STEP] = ([p.peer_id for p in peers], [(0, 1024)] * len(peers))
    worker.plane, worker.peer = plane or FakePlane(), FakePeer()
    return worker


async def fetched(worker: Worker, request: FetchTensor) -> list:
    worker.steps.evidence.fetch(request)
    await asyncio.gather(*worker.steps.evidence.in_flight.values())
    items = []
    while not worker.inputs.empty():
        items.append(worker.inputs.get_nowait())
    return items


async def test_a_judge_asks_only_group_members_in_the_cores_order_until_one_serves_the_hash():
    plane = FakePlane(liars={"a"}, silent={"b"})
    worker = judge(plane=plane)
    me = worker.identity.peer_id
    request = FetchTensor(sha256=SHA, holders=("stranger", me, "a", "b", "c"), step=STEP, numel=1024)
    assert await fetched(worker, request) == [EvidenceArrived(STEP, SHA, DATA)]
    assert plane.asked == ["a", "b", "c"]  # never itself, never a peer outside the group
    assert worker.steps.evidence.fetched == 1


async def test_a_judge_fetches_nothing_for_another_step_or_a_size_no_part_has():
    plane = FakePlane()
    worker = judge(plane=plane)
    assert await fetched(worker, FetchTensor(sha256=SHA, holders=("a",), step=STEP + 1, numel=1024)) == []
    assert await fetched(worker, FetchTensor(sha256=SHA, holders=("a",), step=STEP, numel=1025)) == []
    assert await fetched(worker, FetchTensor(sha256=SHA, holders=("stranger",), step=STEP, numel=1024)) == []
    assert plane.asked == []


async def test_a_judge_that_nobody_serves_abstains():
    worker = judge(plane=FakePlane(silent={"a", "b", "c"}))
    assert await fetched(worker, FetchTensor(sha256=SHA, holders=("a", "b", "c"), step=STEP, numel=1024)) == []


def test_a_holder_serves_evidence_to_members_of_its_current_step_only():
    worker = judge()
    serve = worker.steps.serve_evidence
    assert serve(SHA, STEP, "b") == DATA
    assert serve(SHA, STEP, "stranger") is None
    assert serve(SHA, STEP - 1, "b") is None
    assert serve("0" * 64, STEP, "b") is None
