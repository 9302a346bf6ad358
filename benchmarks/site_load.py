"""Site load benchmark (not a test): N authenticated worker sockets against the site under Daphne with
the Redis channel layer.

Measures
  * how long a step's group broadcast (a ``Relay`` of one signed envelope to every member of the group)
    takes from the site's delivery call to its arrival at each socket, and at *every* socket (p50, p99);
  * heartbeat throughput: heartbeats the site stores per second with all sockets sending at once;
and prints them next to a same-run reference: the loopback Redis round trip.

    .venv/bin/python benchmarks/site_load.py --sockets 1000 --rounds 20

Needs PostgreSQL (``--database-url``; the database is created if missing) and Redis (``--redis-url``; a
separate Redis database number keeps it apart from other users of the server). Daphne runs as a child
process and is stopped by PID on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "platform"), str(ROOT)]

from worker_client.processes import ProcessGroup, free_port, wait_for_site


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def ensure_database(url: str) -> None:
    from urllib.parse import urlparse

    import psycopg

    parsed = urlparse(url)
    name = parsed.path.lstrip("/")
    admin = parsed._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def setup_site(n: int):
    """Migrate, then create a run and ``n`` volunteers with tokens and identities."""
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    from django.contrib.auth import get_user_model
    from runs.models import Run
    from volunteers.models import Volunteer, WorkerToken
    from volunteers.services import TOKEN_PREFIX, hash_token

    from btard_wire.envelope import Identity

    stamp = time.strftime("%Y%m%d%H%M%S")
    # min_peers above n: the benchmark, not the join traffic, decides when to broadcast
    run = Run.objects.create(name=f"bench-{stamp}", admission_policy="open", peers_per_group=n,
                             min_peers=n + 1, step_timeout=600)
    User = get_user_model()
    users = User.objects.bulk_create([User(username=f"bench{stamp}-{i}", password="!") for i in range(n)])
    Volunteer.objects.bulk_create([Volunteer(user=u) for u in users])
    tokens, raws = [], []
    for i, user in enumerate(users):
        prefix = os.urandom(4).hex()
        raw = f"{TOKEN_PREFIX}_{prefix}_{os.urandom(16).hex()}"
        tokens.append(WorkerToken(user=user, name="bench", prefix=prefix, token_hash=hash_token(raw)))
        raws.append(raw)
    WorkerToken.objects.bulk_create(tokens)
    identities = [Identity.from_seed(f"{stamp}-{i}".encode()) for i in range(n)]
    return run, raws, identities


def start_daphne(procs: ProcessGroup, port: int, env: dict, log_path: Path, profile: Path | None = None,
                 server: str = "daphne") -> subprocess.Popen:
    prefix = ["-m", "cProfile", "-o", str(profile)] if profile else []
    if server == "uvicorn":
        cmd = ["-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
               "--loop", "uvloop", "--http", "httptools", "--ws", "websockets", "--ws-max-size", str(1 << 20),
               "btard_site.asgi:application"]
    else:
        cmd = ["-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "-v", "0", "--websocket_connect_timeout", "120",
               "btard_site.asgi:application"]
    proc = procs.start(server, [sys.executable, *prefix, *cmd], log=log_path, env=env, cwd=ROOT)
    outcome = wait_for_site(f"http://127.0.0.1:{port}", proc, timeout=60)
    if outcome != "up":
        raise SystemExit(f"{server} {outcome}; see {log_path}")
    return proc


class Worker:
    def __init__(self, raw: str, identity):
        self.raw = raw
        self.identity = identity
        self.ws = None
        self.arrivals: dict[str, float] = {}
        self.errors = asyncio.Queue()

    async def open(self, url: str) -> None:
        from websockets.asyncio.client import connect

        from btard_wire.control import Hello

        self.ws = await connect(url, additional_headers={"Authorization": f"Bearer {self.raw}"},
                                open_timeout=120, ping_interval=None, max_size=2 ** 22)
        from btard_wire.control import hello_proof

        challenge = json.loads(await asyncio.wait_for(self.ws.recv(), 120))
        await self.ws.send(Hello(public_key=self.identity.public_key_b64, p2p_id="bench",
                                 proof=hello_proof(self.identity, challenge["nonce"])).model_dump_json())
        welcome = json.loads(await asyncio.wait_for(self.ws.recv(), 120))
        if welcome.get("type") != "welcome":
            raise RuntimeError(f"no welcome: {welcome}")
        self.reader = asyncio.create_task(self.read())

    async def read(self) -> None:
        async for raw in self.ws:
            now = time.perf_counter()
            msg = json.loads(raw)
            if msg["type"] == "relay":
                self.arrivals[msg["envelope"]["nonce"]] = now
            elif msg["type"] == "error":
                self.errors.put_nowait(now)


async def redis_rtt(url: str, n: int = 200) -> float:
    import redis.asyncio as aioredis

    client = aioredis.from_url(url)
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        await client.ping()
        samples.append(time.perf_counter() - t0)
    await client.aclose()
    return statistics.median(samples)


async def bench(args, run, raws, identities, port: int) -> dict:
    from channels.layers import get_channel_layer
    from live.bus import deliver_async
    from live.events import BroadcastRecorded

    from btard_wire.control import Heartbeat
    from btard_wire.envelope import sign_envelope

    url = f"ws://127.0.0.1:{port}/ws/worker/"
    workers = [Worker(raw, ident) for raw, ident in zip(raws, identities)]
    gate = asyncio.Semaphore(args.connect_concurrency)

    async def open_one(w):
        async with gate:
            await w.open(url)

    t0 = time.perf_counter()
    await asyncio.gather(*(open_one(w) for w in workers))
    connect_seconds = time.perf_counter() - t0
    print(f"{len(workers)} sockets joined in {connect_seconds:.1f}s", flush=True)

    layer = get_channel_layer()
    sender = identities[0]
    members = [i.peer_id for i in identities]
    per_socket, to_every, sent = [], [], []
    for r in range(args.warmup + args.rounds):
        env = sign_envelope(sender, run=str(run.id), step=0, phase="commit", payload={"hashes": ["00" * 32] * 16})
        event = BroadcastRecorded(run_id=run.id, step=0, envelope=env, recipients=members)
        t0 = time.perf_counter()
        await deliver_async(event, layer)
        sent.append(time.perf_counter() - t0)
        deadline = time.perf_counter() + 30
        while time.perf_counter() < deadline:
            if all(env.nonce in w.arrivals for w in workers[1:]):
                break
            await asyncio.sleep(0.002)
        got = [w.arrivals[env.nonce] - t0 for w in workers[1:] if env.nonce in w.arrivals]
        if len(got) < len(workers) - 1:
            print(f"round {r}: only {len(got)} of {len(workers) - 1} sockets received the relay", flush=True)
        if r >= args.warmup and got:
            per_socket += got
            to_every.append(max(got))
        await asyncio.sleep(args.pause)

    # heartbeat throughput: every socket sends H heartbeats, then one bad message whose error reply
    # proves all its heartbeats were processed (a connection's messages are handled in order)
    statuses = ["training", "aggregating", "validating", "waiting_for_group"]
    t0 = time.perf_counter()

    async def beat(w, k):
        for j in range(args.heartbeats):
            await w.ws.send(Heartbeat(status=statuses[(j + k) % len(statuses)] if args.change_status
                                      else "training", step=0).model_dump_json())
        await w.ws.send("{}")
        return await asyncio.wait_for(w.errors.get(), 300)

    done = await asyncio.gather(*(beat(w, k) for k, w in enumerate(workers)))
    hb_seconds = max(done) - t0
    for w in workers:
        await w.ws.close()
    return {
        "sockets": len(workers),
        "rounds": args.rounds,
        "connect_seconds": round(connect_seconds, 2),
        "fanout_per_socket_ms": {"p50": pct(per_socket, 50) * 1e3, "p99": pct(per_socket, 99) * 1e3,
                                 "max": max(per_socket) * 1e3 if per_socket else None},
        "fanout_to_every_socket_ms": {"p50": pct(to_every, 50) * 1e3, "p99": pct(to_every, 99) * 1e3},
        "site_delivery_call_ms": {"p50": pct(sent, 50) * 1e3, "p99": pct(sent, 99) * 1e3},
        "heartbeats": len(workers) * args.heartbeats,
        "heartbeat_seconds": round(hb_seconds, 2),
        "heartbeats_per_second": round(len(workers) * args.heartbeats / hb_seconds, 1),
        "reference_redis_ping_ms": await redis_rtt(args.redis_url) * 1e3,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--pause", type=float, default=0.2, help="seconds between broadcast rounds")
    parser.add_argument("--heartbeats", type=int, default=5, help="per socket")
    parser.add_argument("--change-status", action="store_true", help="heartbeats alternate status (events)")
    parser.add_argument("--connect-concurrency", type=int, default=20)
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/btard_bench")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/5")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--profile", type=Path, help="run Daphne under cProfile, stats written here")
    parser.add_argument("--server", choices=["daphne", "uvicorn"], default="daphne",
                        help="ASGI server for the site (uvicorn: pip install uvicorn httptools)")
    args = parser.parse_args(argv)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.sockets + 256)), hard))
    ensure_database(args.database_url)
    env = {k: v for k, v in os.environ.items()}
    env.update(DATABASE_URL=args.database_url, REDIS_URL=args.redis_url, DJANGO_SETTINGS_MODULE="btard_site.settings",
               PYTHONPATH=os.pathsep.join([str(ROOT / "platform"), str(ROOT)]), LOG_LEVEL="WARNING",
               HEARTBEAT_TIMEOUT_SECONDS="600")
    os.environ.update(env)
    run, raws, identities = setup_site(args.sockets)
    port = free_port()
    log_path = ROOT / "var" / "site_load_daphne.log"
    log_path.parent.mkdir(exist_ok=True)
    procs = ProcessGroup(cwd=ROOT, env=env)
    proc = start_daphne(procs, port, env, log_path, args.profile, server=args.server)
    try:
        try:  # the clients are the measuring instrument: the faster loop keeps them out of the figures
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        except ImportError:
            pass
        result = asyncio.run(bench(args, run, raws, identities, port))
    finally:
        if args.profile:  # cProfile writes its file on SIGINT
            procs.kill(proc, signal.SIGINT)
        procs.stop(grace=15)
    result["cpu_count"] = os.cpu_count()
    print(json.dumps(result, indent=2))
    print(f"\nfan-out to every one of {result['sockets']} sockets: p50 {result['fanout_to_every_socket_ms']['p50']:.1f} ms, "
          f"p99 {result['fanout_to_every_socket_ms']['p99']:.1f} ms (per socket p50 "
          f"{result['fanout_per_socket_ms']['p50']:.1f} ms); heartbeats {result['heartbeats_per_second']:.0f}/s; "
          f"reference: Redis PING {result['reference_redis_ping_ms']:.2f} ms")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
