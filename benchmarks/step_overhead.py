"""Step overhead of BTARD over plain butterfly all-reduce, on the same transport (not a test).

    .venv/bin/python benchmarks/step_overhead.py                 # 4 peers, d = 10M, then 16 peers, d = 1M
    .venv/bin/python benchmarks/step_overhead.py --peers 4 --numel 1000000 --steps 3 --skip-16

Every peer has its own hivemind p2pd daemon on loopback and its own :class:`worker_client.net.DataPlane`,
all driven from one process (peers take turns on this machine's cores, as they would not on separate
machines: compare the two columns, not the absolute times with a real swarm).

- **butterfly (mean)**: peer i pushes part j of its gradient to peer j, peer j averages its part and
  pushes the average to everyone: the reference all-reduce.
- **BTARD**: the unchanged protocol core (:class:`BtardPeer`) for the whole step - commitments,
  scatter, CenteredClip, MPRNG, all-gather with hash checks, scalars and checks - over the same data
  plane; signed broadcasts go through an in-process relay standing in for the site and are counted
  as bytes sent by their author and received by every other peer. Gradients are given (random), so
  the gradient computation is excluded as the issue asks; validators = 0 for the same reason.

Prints the median over the measured steps (after one warm-up step) of the step time and of the bytes
each peer sent and received.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from btard_wire.envelope import Identity
from worker_client.btard import protocol as P
from worker_client.btard.mprng import genesis_randomness
from worker_client.btard.tensors import tensor_to_bytes
from worker_client.drive.dispatch import carry_out
from worker_client.net import DataPlane

RUN = "bench"


async def make_planes(n: int) -> tuple[list[DataPlane], list[Identity]]:
    identities = [Identity.from_seed(b"bench-%d" % i) for i in range(n)]
    planes = []
    for _ in range(n):
        planes.append(await DataPlane.create(RUN, call_timeout=300.0, max_wait=300.0, allow_private=True))
    directory = {ident.peer_id: (plane.p2p_id, await plane.addrs()) for ident, plane in zip(identities, planes)}
    for plane in planes:
        plane.set_directory(directory)
    return planes, identities


def traffic(planes) -> list[tuple[int, int]]:
    return [(p.traffic.bytes_sent, p.traffic.bytes_received) for p in planes]


def delta(after, before) -> list[tuple[int, int]]:
    return [(a[0] - b[0], a[1] - b[1]) for a, b in zip(after, before)]


# --- butterfly all-reduce (mean) ------------------------------------------------------------------
async def butterfly_step(step: int, planes, ids, grads) -> None:
    n = len(planes)
    bounds = P.part_bounds(grads[0].numel(), n)
    inbox: list[dict] = [{} for _ in range(n)]
    done = [asyncio.Event() for _ in range(n)]
    gathered: list[dict] = [{} for _ in range(n)]
    gathered_done = [asyncio.Event() for _ in range(n)]

    for i, plane in enumerate(planes):
        def expect(s, kind, key, sender, i=i):
            j = int(key)
            if kind == "part" and j == i:
                return bounds[i][1] - bounds[i][0]
            if kind == "mean":
                return bounds[j][1] - bounds[j][0]
            return None

        def deliver(s, kind, key, sender, data, header, i=i):
            if kind == "part":
                inbox[i][sender] = data
                if len(inbox[i]) == n - 1:
                    done[i].set()
            else:
                gathered[i][int(key)] = data
                if len(gathered[i]) == n - 1:
                    gathered_done[i].set()

        plane.set_receiver(expect, deliver)

    async def peer(i: int) -> None:
        a, b = bounds[i]
        sends = [planes[i].send(ids[j].peer_id, step=step, kind="part", key=str(j),
                                data=tensor_to_bytes(grads[i][bounds[j][0]:bounds[j][1]]))
                 for j in range(n) if j != i]
        await asyncio.gather(*sends)
        await done[i].wait()
        parts = [grads[i][a:b]] + [torch.frombuffer(bytearray(d), dtype=torch.float32) for d in inbox[i].values()]
        mean = torch.stack(parts).mean(dim=0)
        await asyncio.gather(*(planes[i].send(ids[j].peer_id, step=step, kind="mean", key=str(i),
                                              data=tensor_to_bytes(mean)) for j in range(n) if j != i))
        await gathered_done[i].wait()

    await asyncio.gather(*(peer(i) for i in range(n)))


# --- full BTARD step --------------------------------------------------------------------------------
async def btard_step(step: int, planes, ids, grads, peers, r_prev: bytes, board_bytes: list[list[int]]) -> bytes:
    n = len(planes)
    group = [ident.peer_id for ident in ids]
    numel = grads[0].numel()
    bounds = P.part_bounds(numel, n)
    queue: asyncio.Queue = asyncio.Queue()
    finished: dict[int, P.StepResult] = {}
    tasks: set[asyncio.Task] = set()

    for i, plane in enumerate(planes):
        def expect(s, kind, key, sender, i=i):
            j = int(key)
            if kind == "part" and j == i:
                return bounds[i][1] - bounds[i][0]
            if kind == "aggregate" and group[j] == sender:
                return bounds[j][1] - bounds[j][0]
            return None

        def deliver(s, kind, key, sender, data, header, i=i):
            queue.put_nowait((i, kind, sender, int(key), data))

        plane.set_receiver(expect, deliver)

    class Link:
        """Peer i's transport (:class:`worker_client.drive.dispatch.Transport`): broadcasts through the
        in-process relay, tensors over peer i's data plane."""

        def __init__(self, i: int):
            self.i = i

        def post(self, envelope) -> None:
            i = self.i
            size = len(envelope.model_dump_json())
            board_bytes[i][0] += size
            for k in range(n):
                if k != i:
                    board_bytes[k][1] += size
                    queue.put_nowait((k, "broadcast", envelope))

        def send_tensor(self, action: P.SendTensor) -> None:
            task = asyncio.create_task(planes[self.i].send(action.to, step=step, kind=action.kind,
                                                           key=str(action.part), data=action.data))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            # a send still in flight when the daemons shut down at the end may fail: not a result
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

        def compute(self, request: P.ComputeGradient) -> None:
            queue.put_nowait((self.i, "gradient", request.request_id))

        def fetch(self, request: P.FetchTensor) -> None:
            pass  # honest peers, no accusations: no evidence is ever fetched in this benchmark

        def finish(self, result: P.StepResult) -> None:
            finished[self.i] = result

    links = [Link(i) for i in range(n)]

    def execute(i: int, actions) -> None:
        carry_out(actions, links[i])

    for i, peer in enumerate(peers):
        ctx = P.StepContext(run=RUN, step=step, group=group, public_keys={p.peer_id: p.public_key_b64 for p in ids},
                            r_prev=r_prev, numel=numel, model_ref=step, prev=None, validators={})
        execute(i, peer.begin_step(ctx))
    while len(finished) < n:
        item = await asyncio.wait_for(queue.get(), 600)
        i, kind = item[0], item[1]
        if kind == "broadcast":
            execute(i, peers[i].on_broadcast(item[2]))
        elif kind == "gradient":
            execute(i, peers[i].on_gradient(item[2], grads[i]))
        elif kind == "part":
            execute(i, peers[i].on_part(item[2], item[3], item[4], step=step))
        elif kind == "aggregate":
            execute(i, peers[i].on_aggregate(item[2], item[3], item[4], step=step))
    outcomes = {r.outcome for r in finished.values()}
    if outcomes != {"applied"}:
        raise RuntimeError(f"BTARD step did not apply: {[r.reason for r in finished.values()]}")
    return finished[0].r


async def measure(n: int, numel: int, steps: int, *, tau: float) -> dict:
    torch.manual_seed(0)
    planes, ids = await make_planes(n)
    try:
        results = {}
        grads = [torch.randn(numel) * 0.01 for _ in range(n)]
        # butterfly
        times, sent, received = [], [], []
        for step in range(steps + 1):
            before = traffic(planes)
            t0 = time.perf_counter()
            await butterfly_step(step, planes, ids, grads)
            dt = time.perf_counter() - t0
            d = delta(traffic(planes), before)
            if step:
                times.append(dt)
                sent.append(statistics.mean(x[0] for x in d))
                received.append(statistics.mean(x[1] for x in d))
        results["butterfly"] = {"time": statistics.median(times), "sent": statistics.median(sent),
                                "received": statistics.median(received)}
        # BTARD
        peers = [P.BtardPeer(ident, P.ProtocolParams(tau=tau, validators=0)) for ident in ids]
        r = genesis_randomness(RUN, 0)
        times, sent, received = [], [], []
        for step in range(100, 100 + steps + 1):
            before = traffic(planes)
            board = [[0, 0] for _ in range(n)]
            t0 = time.perf_counter()
            r = await btard_step(step, planes, ids, grads, peers, r, board)
            dt = time.perf_counter() - t0
            d = delta(traffic(planes), before)
            if step > 100:
                times.append(dt)
                sent.append(statistics.mean(x[0] + b[0] for x, b in zip(d, board)))
                received.append(statistics.mean(x[1] + b[1] for x, b in zip(d, board)))
        results["btard"] = {"time": statistics.median(times), "sent": statistics.median(sent),
                            "received": statistics.median(received)}
        return results
    finally:
        for plane in planes:
            await plane.shutdown()


def report(n: int, numel: int, res: dict) -> None:
    b, t = res["butterfly"], res["btard"]
    print(f"\n{n} peers, d = {numel:,} float32 ({4 * numel / 2**20:.1f} MiB per gradient)")
    print(f"{'':>18} {'time/step':>10} {'sent/peer':>14} {'received/peer':>14}")
    for name, row in (("butterfly (mean)", b), ("BTARD", t)):
        print(f"{name:>18} {row['time']:>9.3f}s {row['sent'] / 2**20:>11.3f} MiB {row['received'] / 2**20:>11.3f} MiB")
    print(f"{'BTARD / butterfly':>18} {t['time'] / b['time']:>9.3f}x {t['sent'] / b['sent']:>13.5f}x "
          f"{t['received'] / b['received']:>13.5f}x")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=4)
    parser.add_argument("--numel", type=int, default=10_000_000)
    parser.add_argument("--steps", type=int, default=5, help="measured steps (after one warm-up)")
    parser.add_argument("--tau", type=float, default=1.0)
    parser.add_argument("--skip-16", action="store_true", help="skip the 16-peer, d = 1M bytes ratio")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, (os.cpu_count() or 1)))
    before = set(glob.glob("/tmp/hivemind-*"))
    try:
        print(f"machine: {os.cpu_count()} CPU cores, torch {torch.__version__}, threads {torch.get_num_threads()}")
        report(args.peers, args.numel, asyncio.run(measure(args.peers, args.numel, args.steps, tau=args.tau)))
        if not args.skip_16:
            report(16, 1_000_000, asyncio.run(measure(16, 1_000_000, 2, tau=args.tau)))
    finally:
        # only sockets no daemon listens on any more: other programs may run daemons of their own
        for path in set(glob.glob("/tmp/hivemind-*")) - before:
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
            except OSError:
                try:
                    os.remove(path)
                except OSError:
                    pass
            finally:
                probe.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
