"""Soak: the demo swarm with attackers for many steps, with random kills and rejoins (not a test).

    .venv/bin/python benchmarks/soak.py --steps 1000            # 8 peers, 3 Byzantine, digits-mlp
    .venv/bin/python benchmarks/soak.py --steps 200 --kill-every 30

Starts the site (embedded SQLite, in-process layer, as ``make demo``, but with Django's ``DEBUG`` off unless
``--debug``: DEBUG keeps the last 9,000 SQL queries of each database thread) and the demo's workers, then every
``--kill-every`` seconds SIGKILLs one random honest worker (with its p2p daemon) and starts it again with the
same token and identity after ``--down`` seconds. Samples the site's resident memory (``/proc/<pid>/status``)
after the warm-up and at the end, and prints a summary: steps, applied/dropped, kills, bans (every attacker
banned? any honest account or key banned?), RSS at start, every ``--sample-every`` steps and at the end.
Writes it to ``var/soak/summary.json`` (at every checkpoint too, so a stopped soak leaves a usable result);
``--plot PNG`` draws the RSS curve, ``--plot-from summary.json --plot PNG`` redraws an earlier soak's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker_client.demo import Demo, build_parser


def soak_demo(ours: argparse.Namespace) -> Demo:
    """The demo the soak runs: its peers, port and directory, and the site's DEBUG as ``--debug`` says."""
    demo = Demo(build_parser().parse_args(["--port", str(ours.port), "--var-dir", str(ours.var_dir),
                                           "--peers", str(ours.peers), "--byzantine", str(ours.byzantine)]))
    demo.env["DEBUG"] = "1" if ours.debug else "0"  # the site's processes get demo.env (the group's env too)
    if getattr(ours, "memlog", 0) or getattr(ours, "tracemalloc", None):
        inject = Path(demo.var) / "memlog"
        inject.mkdir(parents=True, exist_ok=True)
        (inject / "sitecustomize.py").write_text(MEMLOG_SITECUSTOMIZE + TRACEMALLOC_SITECUSTOMIZE)
        demo.env.update(PYTHONPATH=os.pathsep.join([str(inject), demo.env["PYTHONPATH"]]))
    if getattr(ours, "memlog", 0):
        demo.env.update(BTARD_SOAK_MEMLOG=str(inject / "memlog.jsonl"),
                        BTARD_SOAK_MEMLOG_EVERY=str(ours.memlog),
                        BTARD_SOAK_MEMLOG_TRIM="1" if ours.memlog_trim else "0",
                        BTARD_SOAK_MEMLOG_GC="1" if ours.memlog_gc else "0")
    if getattr(ours, "tracemalloc", None):
        tm = tracemalloc_dir(demo)
        tm.mkdir(parents=True, exist_ok=True)
        demo.env.update(BTARD_SOAK_TRACEMALLOC=str(tm),
                        BTARD_SOAK_TRACEMALLOC_FRAMES=str(ours.tracemalloc_frames))
    return demo


def tracemalloc_dir(demo: Demo) -> Path:
    """Where ``--tracemalloc`` puts its requests and the site's snapshots (``snapshot-<label>.pickle``, a
    ``tracemalloc.Snapshot.dump``, with ``snapshot-<label>.json``: when, the step, the traced and RSS sizes)."""
    return Path(demo.var) / "tracemalloc"


# ``--memlog``: a sitecustomize on the site's PYTHONPATH; in the Daphne process only (not the workers, not
# manage.py) a daemon thread appends one JSON line every N seconds: RSS and its kinds, glibc's mallinfo2()
# (malloc's arenas: their size, bytes in use, bytes free), pymalloc's arenas and bytes in use
# (sys._debugmallocstats), SQLite's own allocations (sqlite3_memory_used) and the site's lru caches. With
# --memlog-trim it then calls malloc_trim(0) and logs the RSS after it (what the allocator kept free); with
# --memlog-gc, gc.collect() (does the RSS still rise when no garbage cycle waits for a full collection?).
MEMLOG_SITECUSTOMIZE = r'''
import os
try:
    _argv = open("/proc/self/cmdline", "rb").read().split(b"\0")
except OSError:
    _argv = []


def _kib_status():  # this process's RSS and its kinds, KiB (both diagnoses below read it)
    keys = {"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file", "RssShmem": "shmem", "Threads": "threads"}
    out = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in keys:
            out[keys[k]] = int(v.split()[0])
    return out


if os.environ.get("BTARD_SOAK_MEMLOG") and any(a.endswith(b"daphne") for a in _argv):
    import ctypes, gc, json, re, sys, tempfile, threading, time

    class _MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                   "fsmblks", "uordblks", "fordblks", "keepcost")]

    _libc = ctypes.CDLL("libc.so.6")
    _libc.mallinfo2.restype = _MallInfo2
    _libc.malloc_trim.argtypes = [ctypes.c_size_t]
    try:
        _sqlite = ctypes.CDLL("libsqlite3.so.0")  # the library Python's sqlite3 module loaded: one counter
        _sqlite.sqlite3_memory_used.restype = ctypes.c_int64
    except OSError:
        _sqlite = None
    _PYMALLOC = {"pymalloc_arenas": r"# arenas allocated current\s*=\s*([\d,]+)",
                 "pymalloc_used": r"# bytes in allocated blocks\s*=\s*([\d,]+)"}

    def _pymalloc():
        with tempfile.TemporaryFile("w+") as tmp:  # _debugmallocstats writes to C stderr: fd 2 for a moment
            sys.stderr.flush()
            saved = os.dup(2)
            try:
                os.dup2(tmp.fileno(), 2)
                sys._debugmallocstats()
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            tmp.seek(0)
            text = tmp.read()
        out = {}
        for key, pattern in _PYMALLOC.items():
            m = re.search(pattern, text)
            if m:
                out[key] = int(m.group(1).replace(",", ""))
        return out

    def _sample():
        mi = _libc.mallinfo2()
        rec = {"t": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **_kib_status(),
               "malloc_arena": mi.arena // 1024, "malloc_mmap": mi.hblkhd // 1024,
               "malloc_used": mi.uordblks // 1024, "malloc_free": mi.fordblks // 1024}
        rec.update({k: v // 1024 if k == "pymalloc_used" else v for k, v in _pymalloc().items()})
        if _sqlite is not None:
            rec["sqlite_used"] = _sqlite.sqlite3_memory_used() // 1024
        rnd = sys.modules.get("btard_wire.randomness")
        if rnd is not None:
            rec["mprng_cache"] = rnd.mprng_commitment.cache_info().currsize
        stats = gc.get_stats()  # the collector: objects pending per generation, full collections so far
        rec.update(gc_count=list(gc.get_count()), gc_full=stats[2]["collections"],
                   gc_collected=[g["collected"] for g in stats])
        return rec

    def _loop(path, every, trim, collect):
        while True:
            time.sleep(every)
            try:
                rec = _sample()
                if trim:
                    _libc.malloc_trim(0)
                    rec["rss_after_trim"] = _kib_status()["rss"]
                if collect:
                    rec["gc_freed"] = gc.collect()
            except Exception as exc:  # a diagnostic never stops the site
                rec = {"error": repr(exc)}
            with open(path, "a") as out:
                out.write(json.dumps(rec) + "\n")

    threading.Thread(target=_loop, name="soak-memlog", daemon=True,
                     args=(os.environ["BTARD_SOAK_MEMLOG"], float(os.environ.get("BTARD_SOAK_MEMLOG_EVERY", "10")),
                           os.environ.get("BTARD_SOAK_MEMLOG_TRIM") == "1",
                           os.environ.get("BTARD_SOAK_MEMLOG_GC") == "1")).start()
'''


# ``--tracemalloc STEP...``: the same sitecustomize, in the Daphne process only: a daemon thread watches
# <var-dir>/tracemalloc/ for ``request-<label>`` files that the soak writes when the run reaches a STEP listed
# (and ``end`` before it stops the site). The first request starts tracemalloc (N frames); each one then runs a
# full gc.collect() (so a cycle not yet collected is not counted as growth) and dumps a snapshot. Tracing starts
# late on purpose: what was allocated before it is not traced, so a bounded cache whose entries were all made
# before the start would show its turnover as growth; compare snapshots from a step well after the first.
TRACEMALLOC_SITECUSTOMIZE = r'''
if os.environ.get("BTARD_SOAK_TRACEMALLOC") and any(a.endswith(b"daphne") for a in _argv):
    import gc as _gc, json as _json, threading as _threading, time as _time, tracemalloc as _tracemalloc
    from pathlib import Path as _Path

    def _tm_loop(where, frames):
        while True:
            _time.sleep(0.5)
            for req in sorted(where.glob("request-*")):
                label = req.name[len("request-"):]
                rec = {"label": label, "t": _time.strftime("%Y-%m-%dT%H:%M:%SZ", _time.gmtime())}
                try:
                    rec.update(_json.loads(req.read_text() or "{}"))  # the soak's step and time
                    t0 = _time.monotonic()
                    if not _tracemalloc.is_tracing():
                        _tracemalloc.start(frames)
                        rec["started"] = True
                    _gc.collect()
                    snap = _tracemalloc.take_snapshot()
                    snap.dump(str(where / f"snapshot-{label}.pickle"))
                    cur, peak = _tracemalloc.get_traced_memory()
                    rec.update(traced_kib=cur // 1024, traced_peak_kib=peak // 1024, traces=len(snap.traces),
                               overhead_kib=_tracemalloc.get_tracemalloc_memory() // 1024, rss_kib=_kib_status().get("rss"),
                               pause_s=round(_time.monotonic() - t0, 2), frames=frames)
                except Exception as exc:  # a diagnostic never stops the site
                    rec["error"] = repr(exc)
                (where / f"snapshot-{label}.json").write_text(_json.dumps(rec))
                req.unlink(missing_ok=True)

    _threading.Thread(target=_tm_loop, name="soak-tracemalloc", daemon=True,
                      args=(_Path(os.environ["BTARD_SOAK_TRACEMALLOC"]),
                            int(os.environ.get("BTARD_SOAK_TRACEMALLOC_FRAMES", "12")))).start()
'''


def request_snapshot(demo: Demo, label: str, step: int | None, *, wait: float = 0.0) -> dict | None:
    """Ask the site's tracemalloc thread for a snapshot; with ``wait``, wait up to that many seconds for its
    ``snapshot-<label>.json`` and return it (None if it did not come)."""
    where = tracemalloc_dir(demo)
    (where / f"request-{label}").write_text(json.dumps({"step": step, "soak_t": time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime())}))
    done = where / f"snapshot-{label}.json"
    deadline = time.monotonic() + wait
    while wait and time.monotonic() < deadline:
        if done.exists():
            with contextlib.suppress(ValueError):
                return json.loads(done.read_text())
        time.sleep(0.5)
    return None


def tracemalloc_growth(before: Path, after: Path, *, top: int = 25, group: str = "traceback",
                       frames: int = 12) -> str:
    """The allocation sites that grew most from snapshot ``before`` to ``after`` (``Snapshot.dump`` files of
    ``--tracemalloc``), grouped by ``group`` (``traceback``, ``lineno`` or ``filename``): size and count
    differences, per step where both snapshots' ``.json`` say their step, each with its traceback (innermost
    frame last). The snapshot thread's own frames (tracemalloc, the sitecustomize) are left out."""
    import tracemalloc

    exclude = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "*/pickle.py"),
               tracemalloc.Filter(False, "*/sitecustomize.py", all_frames=True)]
    a = tracemalloc.Snapshot.load(str(before)).filter_traces(exclude)
    b = tracemalloc.Snapshot.load(str(after)).filter_traces(exclude)
    meta = [json.loads(p.with_suffix(".json").read_text()) if p.with_suffix(".json").exists() else {}
            for p in (before, after)]
    steps = (meta[1].get("step") or 0) - (meta[0].get("step") or 0)
    diff = b.compare_to(a, group)
    total = sum(d.size_diff for d in diff)
    grew = sum(d.size_diff for d in diff if d.size_diff > 0)
    lines = [(f"tracemalloc growth {before.name} (step {meta[0].get('step')}, {meta[0].get('t')}) -> "
              f"{after.name} (step {meta[1].get('step')}, {meta[1].get('t')}), grouped by {group}"),
             f"traced: {sum(s.size for s in a.statistics('filename')) / 1024:.1f} -> "
             f"{sum(s.size for s in b.statistics('filename')) / 1024:.1f} KiB; net {total / 1024:+.1f} KiB"
             + (f" ({total / steps:+.0f} B a step over {steps} steps)" if steps > 0 else "")
             + f"; the growing sites {grew / 1024:+.1f} KiB, "
             + f"the shrinking ones {(total - grew) / 1024:+.1f} KiB"]
    growing = sorted((d for d in diff if d.size_diff > 0), key=lambda d: d.size_diff, reverse=True)
    for i, d in enumerate(growing[:top], 1):
        per = f", {d.size_diff / steps:+.0f} B/step" if steps > 0 else ""
        lines.append(f"#{i}: {d.size_diff / 1024:+.1f} KiB ({d.size / 1024:.1f} KiB now), "
                     f"{d.count_diff:+d} blocks ({d.count} now){per}")
        lines.extend("    " + line for line in d.traceback.format(limit=frames))
    return "\n".join(lines)


def rss_mib(pid: int) -> float:
    return memory_mib(pid).get("rss", float("nan"))


def memory_mib(pid: int) -> dict[str, float]:
    """The process's resident memory and its kinds, in MiB (``/proc/<pid>/status``): ``rss`` = ``anon`` (heap,
    Python's and malloc's arenas, stacks) + ``file`` (mapped code and files) + ``shmem``."""
    names = {"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file", "RssShmem": "shmem"}
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in names:
            out[names[key]] = round(int(value.split()[0]) / 1024, 2)
    return out


def api(url: str, path: str, *, tries: int = 6) -> dict:
    """GET a JSON page of the site; a slow answer on a loaded machine is retried, not fatal to the soak."""
    for attempt in range(tries):
        try:
            with urllib.request.urlopen(url + path, timeout=30) as response:
                return json.loads(response.read())
        except OSError:
            if attempt == tries - 1:
                raise
            time.sleep(5)
    raise AssertionError("unreachable")


def build_soak_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--kill-every", type=float, default=45.0, help="seconds between kills")
    parser.add_argument("--down", type=float, default=10.0, help="seconds a killed worker stays down")
    parser.add_argument("--settle", type=float, default=0.0,
                        help="seconds after its restart before a worker may be killed again (default: 0, any "
                             "worker; a second kill while it still catches up is its third silent step in a row, "
                             "a key ban by btard_wire.board's silence rule)")
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--peers", type=int, default=8, help="workers (the demo's --peers)")
    parser.add_argument("--byzantine", type=int, default=3, help="how many of them attack (the demo's --byzantine)")
    parser.add_argument("--sample-every", type=int, default=100,
                        help="steps between the RSS checkpoints of the summary (rss_by_step_mib)")
    parser.add_argument("--phase-timeout", type=float, default=None,
                        help="the run's phase deadline floor in seconds (default: the demo run's)")
    parser.add_argument("--step-timeout", type=float, default=None,
                        help="the run's step deadline floor in seconds (default: the demo run's; the site raises "
                             "it to the sum of the phase deadlines)")
    parser.add_argument("--min-peers", type=int, default=None,
                        help="online active peers a step needs (default: the demo's honest count, so any kill "
                             "stalls the run until the worker is back)")
    parser.add_argument("--var-dir", default="var/soak", help="the soak's database, logs and summary.json")
    parser.add_argument("--debug", action="store_true",
                        help="run the site with Django's DEBUG on (as make demo does); off by default: DEBUG keeps "
                             "the last 9,000 SQL queries of each database thread in memory, which a production "
                             "site does not, and the soak measures the site's memory")
    parser.add_argument("--memlog", type=float, default=0, metavar="SECONDS",
                        help="every SECONDS the site's Daphne process appends its memory to <var-dir>/memlog/"
                             "memlog.jsonl: RSS (anon/file), glibc malloc's arenas (mallinfo2), pymalloc's arenas, "
                             "SQLite's allocations (a sitecustomize on the site's PYTHONPATH; off by default)")
    parser.add_argument("--memlog-trim", action="store_true",
                        help="with --memlog: call malloc_trim(0) after each sample and log the RSS after it "
                             "(diagnosis only: what RSS the allocator kept as free memory)")
    parser.add_argument("--memlog-gc", action="store_true",
                        help="with --memlog: run a full gc.collect() after each sample and log what it freed "
                             "(diagnosis only: the collector otherwise lets garbage cycles pile up in its oldest "
                             "generation until they are a quarter of the long-lived objects)")
    parser.add_argument("--tracemalloc", type=int, nargs="+", default=None, metavar="STEP",
                        help="the site's Daphne process starts tracemalloc when the run reaches the first STEP and "
                             "dumps a snapshot there, at each later STEP and at the end, to <var-dir>/tracemalloc/ "
                             "(diagnosis only: tracing slows the site; off by default). Compare two with "
                             "--tracemalloc-diff")
    parser.add_argument("--tracemalloc-frames", type=int, default=12, help="frames a traceback keeps (default 12)")
    parser.add_argument("--tracemalloc-diff", type=Path, nargs=2, default=None, metavar=("BEFORE", "AFTER"),
                        help="print the allocation sites that grew most between two snapshot-*.pickle files of "
                             "--tracemalloc and exit (no soak)")
    parser.add_argument("--tracemalloc-group", choices=("traceback", "lineno", "filename"), default="traceback",
                        help="with --tracemalloc-diff: how to group the allocations (default traceback)")
    parser.add_argument("--tracemalloc-top", type=int, default=25, help="with --tracemalloc-diff: sites to print")
    parser.add_argument("--plot", type=Path, default=None, help="also draw the RSS samples to this PNG")
    parser.add_argument("--plot-from", type=Path, default=None,
                        help="draw --plot from this summary.json of an earlier soak and exit (no soak)")
    return parser


def main(argv=None) -> int:
    ours = build_soak_parser().parse_args(argv)
    if ours.tracemalloc_diff:
        print(tracemalloc_growth(*ours.tracemalloc_diff, top=ours.tracemalloc_top, group=ours.tracemalloc_group,
                                 frames=ours.tracemalloc_frames))
        return 0
    if ours.plot_from:
        plot(json.loads(ours.plot_from.read_text()), ours.plot or ours.plot_from.with_suffix(".png"))
        return 0
    demo = soak_demo(ours)
    rng = random.Random(ours.seed)
    run = demo.prepare()
    fields = {k: v for k, v in (("phase_timeout", ours.phase_timeout), ("step_timeout", ours.step_timeout),
                                             ("min_peers", ours.min_peers)) if v}
    if fields:
        args = ", ".join(f"{k}={v!r}" for k, v in fields.items())
        demo.manage("shell", "-c", f"from runs.models import Run; Run.objects.filter(pk={run['run_id']}).update({args})")
    summary: dict = {"steps_target": ours.steps, "kills": 0, "rejoins": 0,
                     "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(ours).items()},
                     "rss_samples_mib": [], "rss_by_step_mib": {}}
    out = Path(demo.var) / "summary.json"
    signal.signal(signal.SIGTERM, _interrupt)  # before any child starts: a SIGTERM always stops them all
    try:
        demo.start_site()
        plan = demo.start_workers(run)
        site_pid = next(p.pid for n, p in demo.procs if n == "daphne")
        honest = [name for name, behaviour in plan if behaviour is None]
        attackers = {name for name, behaviour in plan if behaviour}
        argv_of = {name: proc.args for name, proc in demo.procs[1:]}
        rid = run["run_id"]
        step = lambda: api(demo.url, f"/api/runs/{rid}/")["step"]
        while step() < ours.warmup_steps:
            time.sleep(1)
        summary["rss_start_mib"] = rss_mib(site_pid)
        summary["memory_start_mib"] = memory_mib(site_pid)  # rss split into anon / file / shmem
        t0 = time.monotonic()
        try:
            _loop(demo, ours, rng, honest, argv_of, step, site_pid, summary, out)
        except KeyboardInterrupt:
            summary["interrupted"] = True  # Ctrl-C / SIGTERM: summarise what ran
        summary["seconds"] = round(time.monotonic() - t0, 1)
        if ours.tracemalloc:  # the last snapshot, while the swarm still runs (it may take a while when loaded)
            with contextlib.suppress(OSError, ValueError, KeyboardInterrupt):
                summary.setdefault("tracemalloc", []).append(
                    request_snapshot(demo, "end", step(), wait=300) or {"label": "end", "missing": True})
        summary["rss_end_mib"] = rss_mib(site_pid)
        summary["memory_end_mib"] = memory_mib(site_pid)
        state = api(demo.url, f"/api/runs/{rid}/")
        bans = api(demo.url, "/api/bans/")["bans"]
        banned_accounts = {b["account"] for b in bans}
        summary.update(steps=state["step"], bans=[{k: b.get(k) for k in ("account", "reason", "scope", "step")}
                                                  for b in bans],
                       every_attacker_banned=attackers <= banned_accounts,
                       honest_banned=sorted(banned_accounts - attackers))
    finally:
        demo.stop()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary, indent=1))  # also when the soak itself failed: what ran so far
    if ours.plot:
        plot(summary, ours.plot)
    print(json.dumps({k: v for k, v in summary.items() if k != "rss_samples_mib"}, indent=1))
    return 0 if summary.get("every_attacker_banned") and not summary.get("honest_banned") else 1


def plot(summary: dict, path: Path) -> None:
    """The site's RSS against the step (every sample of the soak), with its start and end marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, rss = zip(*summary["rss_samples_mib"]) if summary["rss_samples_mib"] else ((), ())
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=110)
    ax.plot(steps, rss, lw=1, label="site (Daphne) RSS, every 5 s")
    ax.set_xlabel("step")
    ax.set_ylabel("MiB")
    ax.set_ylim(min(rss, default=0) - 5, max(rss, default=1) + 5)  # zoomed: a slope must show
    ax.set_title(f"soak: {summary.get('steps', steps[-1] if steps else 0)} steps, {summary['kills']} kills, "
                 f"site RSS {summary.get('rss_start_mib', float('nan')):.1f} -> "
                 f"{summary.get('rss_end_mib', rss[-1] if rss else float('nan')):.1f} MiB", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _loop(demo, ours, rng, honest, argv_of, step, site_pid, summary, out: Path) -> None:
    down: dict[str, float] = {}
    back_at: dict[str, float] = {}  # when a killed worker was started again
    last_kill = time.monotonic()
    last_step, since = -1, time.monotonic()
    summary.setdefault("stalls", [])  # [step, seconds] for a step that took longer than 2 minutes
    while (s := step()) < ours.steps:
        now = time.monotonic()
        if s != last_step:
            if last_step >= 0 and now - since > 120:
                summary["stalls"].append([last_step, round(now - since)])
            last_step, since = s, now
        for name, killed_at in list(down.items()):  # (not ``since``: that is the current step's start)
            if now - killed_at >= ours.down:
                demo.spawn(name, argv_of[name])
                del down[name]
                back_at[name] = now
                summary["rejoins"] += 1
        if now - last_kill >= ours.kill_every:
            alive = [n for n in honest if n not in down]
            settled = [n for n in alive if now - back_at.get(n, -1e9) >= ours.settle]
            if len(alive) > len(honest) // 2 + 1 and settled:
                victim = rng.choice(settled)
                proc = next(p for n, p in reversed(demo.procs) if n == victim)
                demo.group.kill(proc, signal.SIGKILL)
                down[victim] = now
                summary["kills"] += 1
                summary.setdefault("kill_log", []).append([s, victim])  # [step, worker]
            last_kill = now
        for at in ours.tracemalloc or ():
            if s >= at and at not in summary.setdefault("tracemalloc_requested", []):
                request_snapshot(demo, str(at), s)  # labelled by the STEP asked for; its .json has the step
                summary["tracemalloc_requested"].append(at)
        memory = memory_mib(site_pid)
        rss = memory.get("rss", float("nan"))
        if len(summary["rss_samples_mib"]) < 2000:
            summary["rss_samples_mib"].append([s, round(rss, 1)])
        checkpoint = s // ours.sample_every * ours.sample_every
        if str(checkpoint) not in summary["rss_by_step_mib"]:
            summary["rss_by_step_mib"][str(checkpoint)] = round(rss, 1)
            summary.setdefault("memory_by_step_mib", {})[str(checkpoint)] = memory
            with contextlib.suppress(OSError, ValueError):
                summary["bans_so_far"] = sorted({b["account"] for b in api(demo.url, "/api/bans/")["bans"]})
            out.write_text(json.dumps(summary, indent=1))  # a partial result stays usable
        print(f"[soak] {time.strftime('%H:%M:%S')} step {s}/{ours.steps}, site RSS {rss:.1f} MiB, "
              f"kills {summary['kills']}, rejoins {summary['rejoins']}", flush=True)
        time.sleep(5)


if __name__ == "__main__":
    sys.exit(main())
