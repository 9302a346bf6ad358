"""Step overhead of BTARD over plain butterfly all-reduce, each peer in its own process (not a test).

    .venv/bin/python benchmarks/step_overhead.py --quick          # 4 peers x 1M, loopback, 1 step: < 1 min
    .venv/bin/python benchmarks/step_overhead.py                  # 4 peers x 10M: loopback, 1 Gbit/s, 100 Mbit/s
    .venv/bin/python benchmarks/step_overhead.py --links loopback --peers 16 --numel 1000000 --steps 2

Every peer is its own Python process (as on volunteers' machines) with its own hivemind p2pd daemon and
:class:`worker_client.net.DataPlane`; a coordinator process starts them, relays the signed broadcasts (a
stand-in for the site: one TCP connection per peer, newline-delimited JSON), says when each step starts
and collects what each peer measured. Per link setting, in the same run and on the same daemons:

- **butterfly (mean)**: peer i pushes part j of its gradient to peer j, peer j averages its part and
  pushes the mean to everyone: the reference all-reduce;
- **BTARD**: the unchanged protocol core (:class:`BtardPeer`) for the whole step (commitments, scatter,
  CenteredClip, MPRNG, all-gather with hash checks, scalars and checks) over the same data plane.
  Gradients are given (random), so the gradient computation is excluded; validators = 0 for the same
  reason (validation by recalculation *is* a gradient computation).

Link settings: ``loopback`` (every daemon on 127.0.0.1), and ``1gbit`` / ``100mbit``: each peer in its own
network namespace (``bo*``) behind a veth pair on a bridge, ``tc tbf`` capping both ends of its veth; the
benchmark creates and removes them and skips the setting, saying why, where it cannot (not root, no
iproute2, no netns).

Per peer and step: wall time from the coordinator's go to the peer's finish, the process's CPU time
(Python) and its p2pd daemon's, and the main thread's CPU split by phase (exclusive time of the functions
each phase names, :data:`PHASES`); "transport waiting" is wall minus the main thread's CPU. The
step's time is the slowest peer's; figures are medians over the measured steps after one warm-up step.
A same-run reference measures the machine: ``.sum()`` read bandwidth, SHA-256 and normal-sampling rates,
from which the floor of BTARD's extra O(d) work is printed next to what it costs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import glob
import hashlib
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from worker_client.processes import ProcessGroup

RUN = "bench"
PROFILER: list = []  # peer 0's cProfile.Profile with --profile, enabled during its BTARD steps
TRACE = [0.0] if os.environ.get("BO_TRACE") else []
LINKS = {"loopback": None, "1gbit": "1gbit", "100mbit": "100mbit"}

# phase -> "module:qualname" of the functions whose (exclusive) main-thread CPU time it counts; names
# missing in this checkout are skipped (the core's layout changes, the benchmark should not break)
PHASES = {
    # the core's hashes, and the data plane's SHA-256 of every received body, chunk by chunk as it arrives
    "hashing": ["worker_client.btard.kernels:sha256_hex", "worker_client.net.wire:_hash_chunk"],
    "centered_clip": ["worker_client.btard.aggregators:centered_clip_with_info"],
    "projection": ["worker_client.btard.mprng:projection_slice", "worker_client.btard.mprng:projection"],
    "scalars_checks": [
        "worker_client.btard.kernels:per_part_scalars_and_distances",
        "worker_client.btard.kernels:rows_scalars_and_norms",
        "worker_client.btard.kernels:distances_to",
        "worker_client.btard.kernels:recalc_mismatch",
        "worker_client.btard.kernels:_scalar",
        "worker_client.btard.checks:Checks.fixed_point",
        "worker_client.btard.checks:Checks.aggregate_bound",
        "worker_client.btard.checks:Checks.report",
    ],
    "serialisation": [
        "worker_client.btard.tensors:tensor_to_bytes",
        "worker_client.btard.tensors:bytes_to_tensor",
        "worker_client.btard.kernels:decode_tensor",
        "btard_wire.envelope:sign_envelope",
        "btard_wire.envelope:verify_envelope",
        "btard_wire.envelope:decode_envelope",
        "btard_wire.envelope:canonical_json",
    ],
    "mean": [],  # butterfly's averaging, timed inline
}


# ------------------------------------------------------------------------------------------------
# per-phase CPU accounting (peer side)


class Phases:
    """Exclusive main-thread CPU time per phase: a wrapped call inside another one pauses the outer one."""

    def __init__(self) -> None:
        self.acc: dict[str, float] = {}
        self._stack: list[list] = []

    def reset(self) -> None:
        self.acc = {name: 0.0 for name in PHASES}

    @contextlib.contextmanager
    def phase(self, name: str):
        now = time.thread_time()
        if self._stack:
            top = self._stack[-1]
            self.acc[top[0]] += now - top[1]
        self._stack.append([name, now])
        try:
            yield
        finally:
            now = time.thread_time()
            top = self._stack.pop()
            self.acc[top[0]] = self.acc.get(top[0], 0.0) + now - top[1]
            if self._stack:
                self._stack[-1][1] = now

    def wrap(self, name: str, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with self.phase(name):
                return fn(*args, **kwargs)
        return wrapper


def instrument(phases: Phases) -> list[str]:
    """Wrap every function :data:`PHASES` names, in its module and wherever it was imported by name."""
    import importlib

    missing = []
    for name, targets in PHASES.items():
        for target in targets:
            modname, qual = target.split(":")
            try:
                mod = importlib.import_module(modname)
            except ImportError:
                missing.append(target)
                continue
            owner, attr = mod, qual
            if "." in qual:
                cls, attr = qual.split(".")
                owner = getattr(mod, cls, None)
            original = getattr(owner, attr, None) if owner is not None else None
            if original is None:
                missing.append(target)
                continue
            wrapped = phases.wrap(name, original)
            setattr(owner, attr, wrapped)
            if owner is mod:  # functions imported by name elsewhere: replace those references too
                for other in list(sys.modules.values()):
                    if getattr(other, "__name__", "").startswith(("worker_client", "btard_wire")) and \
                            getattr(other, attr, None) is original:
                        setattr(other, attr, wrapped)
    return missing


def child_cpu() -> float:
    """CPU seconds (user + system) of this process's child processes that are still running (p2pd)."""
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for path in glob.glob(f"/proc/{os.getpid()}/task/*/children"):
        try:
            pids = Path(path).read_text().split()
        except OSError:
            continue
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick
            except (OSError, IndexError, ValueError):
                pass
    return total


# ------------------------------------------------------------------------------------------------
# peer process


async def peer_main(args) -> None:
    import torch

    torch.set_num_threads(1)
    from btard_wire.envelope import Identity, decode_envelope
    from worker_client.btard import protocol as P
    from worker_client.drive.dispatch import carry_out
    from worker_client.net import DataPlane

    phases = Phases()
    missing = instrument(phases)
    tensor_to_bytes = sys.modules["worker_client.btard.tensors"].tensor_to_bytes  # the wrapped one
    i, n, numel = args.peer, args.n, args.numel
    host, port = args.coord.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port), limit=1 << 26)

    def say(msg: dict) -> None:
        writer.write(json.dumps(msg).encode() + b"\n")

    plane = await DataPlane.create(RUN, host_maddrs=[f"/ip4/{args.listen}/tcp/0"], call_timeout=900.0,
                                   max_wait=900.0, allow_private=True)
    ids = [Identity.from_seed(b"bench-%d" % k) for k in range(n)]
    group = [ident.peer_id for ident in ids]
    me = ids[i]
    bounds = P.part_bounds(numel, n)
    grad = torch.randn(numel, generator=torch.Generator().manual_seed(1000 + i)) * 0.01
    say({"hello": i, "p2p": plane.p2p_id, "addrs": await plane.addrs(), "missing": missing})
    await writer.drain()

    queue: asyncio.Queue = asyncio.Queue()

    def expect(s, kind, key, sender):
        j = int(key)
        if kind == "part" and j == i:
            return bounds[i][1] - bounds[i][0]
        if kind in ("aggregate", "mean") and 0 <= j < n and group[j] == sender:
            return bounds[j][1] - bounds[j][0]
        return None

    def deliver(s, kind, key, sender, data, header):
        queue.put_nowait(("tensor", s, kind, sender, int(key), data, header))

    plane.set_receiver(expect, deliver)

    async def read_coord():
        while True:
            line = await reader.readline()
            if not line:
                queue.put_nowait(("coord", {"quit": True}))
                return
            queue.put_nowait(("coord", json.loads(line)))

    reader_task = asyncio.create_task(read_coord())
    early: list[tuple] = []  # tensors of a step this peer has not started yet
    board_in = [0]  # bytes of the broadcasts relayed to this peer in the current step
    peer = P.BtardPeer(me, P.ProtocolParams(tau=args.tau, validators=0))
    tasks: set[asyncio.Task] = set()

    def spawn(coro) -> None:
        task = asyncio.create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def butterfly(step: int) -> None:
        plane.hash_bodies = False  # a plain all-reduce hashes nothing
        a, b = bounds[i]
        inbox: dict[str, bytes] = {}
        means: dict[int, bytes] = {}
        with phases.phase("serialisation"):
            blobs = {j: tensor_to_bytes(grad[bounds[j][0]:bounds[j][1]]) for j in range(n) if j != i}
        for j, blob in blobs.items():
            spawn(plane.send(group[j], step=step, kind="part", key=str(j), data=blob))
        items = [x for x in early if x[1] == step]
        early[:] = [x for x in early if x[1] != step]
        sent_mean = False
        while len(means) < n or not sent_mean:
            if items:
                item = items.pop(0)
            else:
                item = await queue.get()
            if item[0] == "coord":
                raise RuntimeError(f"unexpected coordinator message mid-step: {item[1]}")
            _, s, kind, sender, key, data, _header = item
            if s != step:
                early.append(item)
                continue
            if kind == "part":
                inbox[sender] = data
            elif kind == "mean":
                means[key] = data
            if len(inbox) == n - 1 and not sent_mean:
                sent_mean = True
                with phases.phase("serialisation"):
                    parts = [grad[a:b]] + [torch.frombuffer(bytearray(d), dtype=torch.float32)
                                           for d in inbox.values()]
                with phases.phase("mean"):
                    mean = torch.stack(parts).mean(dim=0)
                    means[i] = mean
                with phases.phase("serialisation"):
                    blob = tensor_to_bytes(mean)
                for j in range(n):
                    if j != i:
                        spawn(plane.send(group[j], step=step, kind="mean", key=str(i), data=blob))
        # the all-reduce's result: the whole averaged gradient (BTARD's _finish assembles its update too)
        with phases.phase("serialisation"):
            pieces = [means[j] if j == i else torch.frombuffer(bytearray(means[j]), dtype=torch.float32)
                      for j in range(n)]
        with phases.phase("mean"):
            update = torch.cat(pieces)
        assert update.numel() == numel
        while tasks:
            await asyncio.gather(*list(tasks), return_exceptions=True)

    async def btard(step: int, r_prev: bytes) -> bytes:
        plane.hash_bodies = True  # parts and aggregates arrive with their SHA-256 (no second pass)
        finished: list = []
        posted = 0
        board_in[0] = 0

        class Link:
            def post(self, envelope) -> None:
                nonlocal posted
                with phases.phase("serialisation"):
                    text = envelope.model_dump_json()
                posted += len(text)
                say({"post": text})

            def send_tensor(self, action) -> None:
                header = action.header.model_dump(mode="json") if action.header is not None else None
                spawn(plane.send(action.to, step=step, kind=action.kind, key=str(action.part), data=action.data,
                                 header=header))

            def compute(self, request) -> None:
                queue.put_nowait(("gradient", request.request_id))

            def fetch(self, request) -> None:
                pass  # honest peers: no evidence is fetched

            def finish(self, result) -> None:
                finished.append(result)

        link = Link()
        ctx = P.StepContext(run=RUN, step=step, group=group, public_keys={p.peer_id: p.public_key_b64 for p in ids},
                            r_prev=r_prev, numel=numel, model_ref=step, prev=None, validators={})
        carry_out(peer.begin_step(ctx), link)
        items = [x for x in early if x[1] == step]
        early[:] = [x for x in early if x[1] != step]
        while not finished:
            item = items.pop(0) if items else await queue.get()
            kind = item[0]
            if TRACE and i == 0:
                print(f"[{time.perf_counter() - TRACE[0]:8.3f}] {kind} "
                      f"{item[1]['broadcast'][:0] + json.loads(item[1]['broadcast'])['phase'] + ' ' + json.loads(item[1]['broadcast'])['sender'][:6] if kind == 'coord' else item[2:4] if kind == 'tensor' else ''}",
                      file=sys.stderr)
            if kind == "coord":
                msg = item[1]
                if "broadcast" in msg:
                    board_in[0] += len(msg["broadcast"])
                    with phases.phase("serialisation"):
                        env = decode_envelope(msg["broadcast"])
                    carry_out(peer.on_broadcast(env), link)
                else:
                    raise RuntimeError(f"unexpected coordinator message mid-step: {msg}")
            elif kind == "gradient":
                carry_out(peer.on_gradient(item[1], grad), link)
            else:
                _, s, tkind, sender, key, data, header = item
                if s != step:
                    early.append(item)
                    continue
                hdr = P.M.TensorHeader.model_validate(header) if header else None
                if tkind == "part":
                    carry_out(peer.on_part(sender, key, data, hdr, step=step), link)
                elif tkind == "aggregate":
                    carry_out(peer.on_aggregate(sender, key, data, hdr, step=step), link)
        result = finished[0]
        if result.outcome != "applied":
            raise RuntimeError(f"BTARD step did not apply on peer {i}: {result.reason}")
        while tasks:
            await asyncio.gather(*list(tasks), return_exceptions=True)
        return result.r, posted

    try:
        while True:
            item = await queue.get()
            if item[0] == "tensor":
                early.append(item)
                continue
            msg = item[1]
            if msg.get("quit"):
                break
            if "directory" in msg:
                plane.set_directory({pid: (p2p, addrs) for pid, (p2p, addrs) in msg["directory"].items()})
                say({"ready": i})
                await writer.drain()
                continue
            if "go" not in msg:
                continue
            step, mode = msg["step"], msg["go"]
            if TRACE:
                TRACE[0] = time.perf_counter()
            phases.reset()
            sent0, recv0 = plane.traffic.bytes_sent, plane.traffic.bytes_received
            w0, c0, t0, d0 = time.perf_counter(), time.process_time(), time.thread_time(), child_cpu()
            posted, r = 0, None
            if mode == "butterfly":
                await butterfly(step)
            else:
                if PROFILER:
                    PROFILER[0].enable()
                r, posted = await btard(step, bytes.fromhex(msg["r"]))
                if PROFILER:
                    PROFILER[0].disable()
            wall = time.perf_counter() - w0
            main = time.thread_time() - t0
            say({"done": step, "peer": i, "mode": mode, "wall": wall, "cpu": time.process_time() - c0,
                 "main_cpu": main, "p2pd_cpu": child_cpu() - d0, "phases": dict(phases.acc),
                 "sent": plane.traffic.bytes_sent - sent0 + posted, "posted": posted,
                 "received": plane.traffic.bytes_received - recv0 + (board_in[0] if mode == "btard" else 0),
                 "r": r.hex() if r else None})
            await writer.drain()
    finally:
        reader_task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(plane.shutdown(), 30)
        writer.close()


# ------------------------------------------------------------------------------------------------
# network namespaces


def _ip(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=30)


def netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` (iproute2) is not installed"
    probe = f"boprobe{secrets.token_hex(3)}"
    made = _ip("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    _ip("ip", "netns", "del", probe, check=False)
    return None


class Namespaces:
    """A bridge ``bobr<tag>`` (host side ``10.<x>.<y>.1``) and one namespace ``bo<tag>h<i>`` per peer behind a
    veth pair whose both ends are capped at ``rate`` by ``tc tbf``. ``close()`` removes everything."""

    def __init__(self, n: int, rate: str):
        self.tag = secrets.token_hex(2)
        self.bridge = f"bobr{self.tag}"
        self.subnet = f"10.{100 + secrets.randbelow(100)}.{secrets.randbelow(250)}"
        self.gateway = f"{self.subnet}.1"
        self.hosts: list[tuple[str, str, str, str]] = []  # (netns, ip, veth host end, veth ns end)
        self.made_bridge = False
        try:
            _ip("ip", "link", "add", self.bridge, "type", "bridge")
            self.made_bridge = True
            _ip("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _ip("ip", "link", "set", self.bridge, "up")
            for k in range(n):
                self._add(k, rate)
        except BaseException:
            self.close()
            raise

    def _add(self, k: int, rate: str) -> None:
        ns, ip = f"bo{self.tag}h{k}", f"{self.subnet}.{10 + k}"
        vh, vn = f"bo{self.tag}v{k}", f"bo{self.tag}n{k}"
        _ip("ip", "netns", "add", ns)
        self.hosts.append((ns, ip, vh, vn))
        _ip("ip", "link", "add", vh, "type", "veth", "peer", "name", vn)
        _ip("ip", "link", "set", vn, "netns", ns)
        _ip("ip", "link", "set", vh, "master", self.bridge)
        _ip("ip", "link", "set", vh, "up")
        x = ["ip", "netns", "exec", ns]
        _ip(*x, "ip", "addr", "add", f"{ip}/24", "dev", vn)
        _ip(*x, "ip", "link", "set", vn, "up")
        _ip(*x, "ip", "link", "set", "lo", "up")
        _ip(*x, "ip", "route", "add", "default", "via", self.gateway)
        for prefix, dev in ((x, vn), ([], vh)):
            # a 50 ms queue (a home router's, not a bufferbloated one); the burst covers a timer tick at 1 Gbit/s
            _ip(*prefix, "tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate,
                "burst", "1mb" if rate.endswith("gbit") else "128kb", "latency", "50ms")

    def close(self) -> None:
        for ns, _ip_addr, vh, _vn in self.hosts:
            _ip("ip", "link", "del", vh, check=False)
            _ip("ip", "netns", "del", ns, check=False)
        self.hosts = []
        if self.made_bridge:
            _ip("ip", "link", "del", self.bridge, check=False)
            self.made_bridge = False


# ------------------------------------------------------------------------------------------------
# coordinator


async def run_setting(args, link: str, rate: str | None) -> dict:
    n, numel = args.peers, args.numel
    nets = Namespaces(n, rate) if rate else None
    coord_ip = nets.gateway if nets else "127.0.0.1"
    conns: dict[int, asyncio.StreamWriter] = {}
    inbox: asyncio.Queue = asyncio.Queue()
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    # each peer in its own session (its p2pd daemon in its group), stopped by group, only its sockets removed
    procs = ProcessGroup(cwd=str(ROOT), env=env)
    logs = Path(tempfile.mkdtemp(prefix=f"bo-step-{link}-"))

    async def on_conn(reader, writer):
        who = None
        while True:
            line = await reader.readline()
            if not line:
                return
            msg = json.loads(line)
            if "hello" in msg:
                who = msg["hello"]
                conns[who] = writer
            if "post" in msg:  # relay a signed broadcast to every other peer, as the site would
                out = (json.dumps({"broadcast": msg["post"]}) + "\n").encode()
                for k, w in conns.items():
                    if k != who:
                        w.write(out)
                continue
            inbox.put_nowait(msg)

    started = time.perf_counter()
    server = await asyncio.start_server(on_conn, coord_ip, 0, limit=1 << 26)
    port = server.sockets[0].getsockname()[1]
    try:
        for k in range(n):
            listen = nets.hosts[k][1] if nets else "127.0.0.1"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--as-peer", str(k), "--n", str(n),
                   "--numel", str(numel), "--tau", str(args.tau), "--coord", f"{coord_ip}:{port}", "--listen", listen]
            if args.profile:
                cmd += ["--profile", args.profile]
            if nets:
                cmd = ["ip", "netns", "exec", nets.hosts[k][0]] + cmd
            procs.start(f"peer{k}", cmd, log=logs / f"peer{k}.log")
        hellos = {}
        while len(hellos) < n:
            try:
                msg = await asyncio.wait_for(inbox.get(), 600)  # daemons start slowly on a loaded machine
            except TimeoutError:
                raise RuntimeError(f"{n - len(hellos)} peers never said hello; their logs: {logs}") from None
            hellos[msg["hello"]] = msg
        procs.note_sockets()
        from btard_wire.envelope import Identity

        ids = [Identity.from_seed(b"bench-%d" % k) for k in range(n)]
        directory = {ids[k].peer_id: (hellos[k]["p2p"], hellos[k]["addrs"]) for k in range(n)}
        for w in conns.values():
            w.write((json.dumps({"directory": directory}) + "\n").encode())
        ready = 0
        while ready < n:
            msg = await asyncio.wait_for(inbox.get(), 60)
            ready += "ready" in msg
        missing = sorted(set().union(*(h.get("missing", []) for h in hellos.values())))
        print(f"({link}: {n} peer processes and daemons ready in {time.perf_counter() - started:.1f} s)", flush=True)
        from worker_client.btard.mprng import genesis_randomness

        r = genesis_randomness(RUN, 0)
        rows: dict[str, list[list[dict]]] = {"butterfly": [], "btard": []}
        # one warm-up step of each, then the two modes alternate step by step (the machine's load drifts)
        schedule = ["butterfly", "btard"] + ["butterfly", "btard"] * args.steps
        for step, mode in enumerate(schedule, start=1):
            go = (json.dumps({"go": mode, "step": step, "r": r.hex()}) + "\n").encode()
            for w in conns.values():
                w.write(go)
            done = []
            while len(done) < n:
                msg = await asyncio.wait_for(inbox.get(), 900)
                if "done" in msg:
                    done.append(msg)
            done.sort(key=lambda m: m["peer"])
            if mode == "btard":
                r = bytes.fromhex(done[0]["r"])
            rows[mode].append(done)
        for w in conns.values():
            w.write(b'{"quit": true}\n')
        deadline = time.monotonic() + 60  # a daemon slow to stop on a loaded machine is killed below
        while any(p.poll() is None for _, p in procs.procs) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        shutil.rmtree(logs, ignore_errors=True)  # kept only when something failed
        # the first step of each mode warms up
        return {"link": link, "missing": missing,
                "butterfly": rows["butterfly"][1:], "btard": rows["btard"][1:]}
    finally:
        server.close()
        procs.stop()
        if nets:
            nets.close()


def machine_reference(numel: int) -> dict:
    """Same-run rates of this machine, one thread, as CPU time (the phases are CPU time too; on a shared
    machine wall time measures the other jobs): read bandwidth (``.sum()``), SHA-256, drawing z."""
    import torch

    torch.set_num_threads(1)
    from worker_client.btard.mprng import projection_slice

    x = torch.randn(numel)
    blob = x.numpy().tobytes()

    def best(fn, reps=3):
        out = 1e9
        for _ in range(reps):
            t0 = time.thread_time()
            fn()
            out = min(out, time.thread_time() - t0)
        return max(out, 1e-9)

    t_sum = best(lambda: x.sum())
    t_sha = best(lambda: hashlib.sha256(blob).digest())
    t_z = best(lambda: projection_slice(b"\0" * 32, numel, 0, numel))
    return {"read_GBps": 4 * numel / t_sum / 1e9, "sha_GBps": 4 * numel / t_sha / 1e9,
            "z_Mps": numel / t_z / 1e6, "load": os.getloadavg()}


def floor_extra(n: int, numel: int, ref: dict) -> dict:
    """BTARD's extra O(d) work per peer at memory speed: hashes of the n parts it commits, the n - 1 it
    receives, its aggregate and the n - 1 it receives; drawing z; CenteredClip's passes beyond the mean
    (input check, Gram, combine with distances: +2 over the stack of d values); the scalars (g, the
    aggregates and z) and the checks of the n - 1 received parts (x_k, a_j, z_j)."""
    b = 4 * numel
    hashed = b * (1 + 2 * (n - 1) / n + 1 / n)
    passes = 2 + 3 + (n - 1) / n + 2 / n
    return {"hashing": hashed / (ref["sha_GBps"] * 1e9), "projection": numel / (ref["z_Mps"] * 1e6),
            "passes": passes * b / (ref["read_GBps"] * 1e9)}


def summarize(res: dict, n: int, numel: int, ref: dict) -> dict:
    def per_step(rows):
        return [max(p["wall"] for p in step) for step in rows]

    out = {}
    for mode in ("butterfly", "btard"):
        rows = res[mode]
        med = statistics.median
        per_peer = []
        for k in range(n):
            vals = [step[k] for step in rows]
            phase = {name: med(v["phases"].get(name, 0.0) for v in vals) for name in PHASES}
            main = med(v["main_cpu"] for v in vals)
            per_peer.append({"wall": med(v["wall"] for v in vals), "cpu": med(v["cpu"] for v in vals),
                             "main_cpu": main, "p2pd_cpu": med(v["p2pd_cpu"] for v in vals),
                             "phases": phase, "other": main - sum(phase.values()),
                             "waiting": med(v["wall"] - v["main_cpu"] for v in vals),
                             "sent": med(v["sent"] for v in vals), "received": med(v["received"] for v in vals)})
        out[mode] = {"time": statistics.median(per_step(rows)), "peers": per_peer}
    return out


def report(link: str, n: int, numel: int, summary: dict, ref: dict) -> None:
    b, t = summary["butterfly"], summary["btard"]
    print(f"\n== {link}: {n} peers, d = {numel:,} float32 ({4 * numel / 2**20:.1f} MiB per gradient), "
          f"{len(PHASES)} phases, load {ref['load'][0]:.1f}")
    names = [p for p in PHASES]
    head = (f"{'mode':>9} {'peer':>4} {'wall':>7} {'cpu':>6} {'p2pd':>6} {'wait':>6} "
            + " ".join(f"{p[:10]:>10}" for p in names) + f" {'other':>6} {'sent MiB':>9} {'recv MiB':>9}")
    print(head)
    for mode, s in (("butterfly", b), ("btard", t)):
        for k, p in enumerate(s["peers"]):
            print(f"{mode:>9} {k:>4} {p['wall']:>7.3f} {p['cpu']:>6.3f} {p['p2pd_cpu']:>6.3f} {p['waiting']:>6.3f} "
                  + " ".join(f"{p['phases'][x]:>10.3f}" for x in names)
                  + f" {p['other']:>6.3f} {p['sent'] / 2**20:>9.3f} {p['received'] / 2**20:>9.3f}")
    cpu_b = statistics.mean(p["cpu"] + p["p2pd_cpu"] for p in b["peers"])
    cpu_t = statistics.mean(p["cpu"] + p["p2pd_cpu"] for p in t["peers"])
    sent = statistics.mean(p["sent"] for p in t["peers"]) / statistics.mean(p["sent"] for p in b["peers"])
    recv = statistics.mean(p["received"] for p in t["peers"]) / statistics.mean(p["received"] for p in b["peers"])
    fl = floor_extra(n, numel, ref)
    extra = {x: statistics.mean(p["phases"][x] for p in t["peers"]) - statistics.mean(
        p["phases"][x] for p in b["peers"]) for x in names}
    print(f"step time (slowest peer): butterfly {b['time']:.3f} s, BTARD {t['time']:.3f} s, "
          f"ratio {t['time'] / b['time']:.3f}x")
    print(f"CPU per peer and step (python + p2pd): butterfly {cpu_b:.3f} s, BTARD {cpu_t:.3f} s, "
          f"BTARD - butterfly {cpu_t - cpu_b:.3f} s; bytes sent {sent:.5f}x, received {recv:.5f}x")
    print("BTARD - butterfly by phase (s/peer): " + ", ".join(f"{x} {v:+.3f}" for x, v in extra.items())
          + f"; floor at this machine's rates: hashing {fl['hashing']:.3f}, projection {fl['projection']:.3f}, "
          f"passes over the data {fl['passes']:.3f} (sum {sum(fl.values()):.3f})")


def run_peer(args) -> None:
    """A peer process; with ``--profile PATH`` peer 0 writes a cProfile of its BTARD steps there."""
    if not (args.profile and args.peer == 0):
        asyncio.run(peer_main(args))
        return
    import cProfile

    profiler = cProfile.Profile()
    PROFILER.append(profiler)
    try:
        asyncio.run(peer_main(args))
    finally:
        profiler.dump_stats(args.profile)


def print_profile(path: str, top: int = 25) -> None:
    import pstats

    print(f"\ncProfile of peer 0's BTARD steps (main thread, tottime; {path}):")
    pstats.Stats(path).sort_stats("tottime").print_stats(top)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=4)
    parser.add_argument("--numel", type=int, default=10_000_000)
    parser.add_argument("--steps", type=int, default=4, help="measured steps per mode (after one warm-up)")
    parser.add_argument("--tau", type=float, default=1.0)
    parser.add_argument("--links", default="loopback,1gbit,100mbit", help=f"comma-separated, of {sorted(LINKS)}")
    parser.add_argument("--quick", action="store_true", help="4 peers x 1M, loopback, 1 step (< 1 min idle)")
    parser.add_argument("--json", help="write every measurement here")
    parser.add_argument("--profile", help="peer 0 writes a cProfile of its BTARD steps to this path (last setting)")
    parser.add_argument("--as-peer", type=int, dest="peer", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--coord", help=argparse.SUPPRESS)
    parser.add_argument("--listen", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peer is not None:
        run_peer(args)
        return 0
    if args.quick:
        args.peers, args.numel, args.steps, args.links = 4, 1_000_000, 1, "loopback"
    links = [x.strip() for x in args.links.split(",") if x.strip()]
    unknown = set(links) - set(LINKS)
    if unknown:
        parser.error(f"unknown link setting(s) {sorted(unknown)}")
    ref = machine_reference(args.numel)
    print(f"machine: {os.cpu_count()} CPU cores, load {ref['load'][0]:.1f}/{ref['load'][1]:.1f}/{ref['load'][2]:.1f}; "
          f"one thread: .sum() {ref['read_GBps']:.1f} GB/s, SHA-256 {ref['sha_GBps']:.2f} GB/s, "
          f"z {ref['z_Mps']:.0f} M values/s")
    out = {"ref": ref, "args": vars(args), "settings": []}
    for link in links:
        rate = LINKS[link]
        if rate:
            why = netns_unavailable()
            if why:
                print(f"\n== {link}: skipped: {why}")
                continue
        res = asyncio.run(run_setting(args, link, rate))
        if res["missing"]:
            print(f"(not instrumented in this checkout: {', '.join(res['missing'])})")
        summary = summarize(res, args.peers, args.numel, ref)
        report(link, args.peers, args.numel, summary, dict(ref, load=os.getloadavg()))
        out["settings"].append({"link": link, "summary": summary, "raw": res})
        if args.json:  # after every setting: a later one may fail or be stopped
            Path(args.json).write_text(json.dumps(out, indent=1))
        if args.profile and Path(args.profile).exists():
            print_profile(args.profile)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
