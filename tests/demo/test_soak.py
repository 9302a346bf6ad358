"""benchmarks/soak.py measures the site's memory: its site must not keep a log of every SQL query.

Under Django's DEBUG every connection keeps its last 9,000 queries (``queries_log``); a request's start
clears it, but the worker sockets' database thread never sees a request, so a DEBUG site holds ~7 MiB of
SQL text there (the soak's first RSS rise, found with tracemalloc in the soak's Daphne process). A
production site runs with DEBUG off; so does the soak unless ``--debug``.
"""

from __future__ import annotations

from benchmarks.soak import build_soak_parser, soak_demo

# what the site's worker-socket thread does: queries outside any request
QUERIES_OUTSIDE_A_REQUEST = (
    "from django.db import connection\n"
    "with connection.cursor() as c:\n"
    "    for _ in range(50): c.execute('SELECT 1')\n"
    "print('logged', len(connection.queries_log))\n"
)


def _logged_queries(tmp_path, *extra: str) -> int:
    demo = soak_demo(build_soak_parser().parse_args(["--var-dir", str(tmp_path), *extra]))
    demo.env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'soak.sqlite3'}"  # the soak's own embedded database,
    demo.env.pop("REDIS_URL", None)  # and its in-process layer, whatever the test run's environment says
    out = demo.manage("shell", "-c", QUERIES_OUTSIDE_A_REQUEST)  # the site's settings, the soak's environment
    return int(out.split("logged", 1)[1].split()[0])


def test_the_soaks_site_keeps_no_log_of_its_queries(tmp_path):
    assert _logged_queries(tmp_path) == 0


def test_the_soaks_debug_flag_gives_the_demos_query_log_back(tmp_path):
    assert _logged_queries(tmp_path, "--debug") == 50


def test_the_soak_splits_resident_memory_into_anonymous_file_and_shared_parts():
    """A growth of the site's RSS must say whether it is its heaps (anon) or mapped files (file: code pages,
    SQLite's shared memory): the parts add up to the RSS the kernel reports."""
    import os

    from benchmarks.soak import memory_mib, rss_mib

    parts = memory_mib(os.getpid())
    assert set(parts) == {"rss", "anon", "file", "shmem"}
    assert parts["anon"] > 0 and parts["file"] > 0
    assert abs(parts["anon"] + parts["file"] + parts["shmem"] - parts["rss"]) < 0.05
    assert rss_mib(os.getpid()) > 0


def _run_with_the_soaks_env(demo, *argv: str) -> None:
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", "import time; time.sleep(2.5)", *argv], env=demo.env, check=True,
                   timeout=60)


def test_memlog_logs_the_sites_heaps_in_the_daphne_process_only(tmp_path):
    """--memlog: the Daphne process appends RSS, malloc's and pymalloc's figures; a worker does not."""
    import json

    demo = soak_demo(build_soak_parser().parse_args(["--var-dir", str(tmp_path), "--memlog", "0.5",
                                                     "--memlog-trim", "--memlog-gc"]))
    log = tmp_path / "memlog" / "memlog.jsonl"
    _run_with_the_soaks_env(demo, "-m", "worker_client.cli")  # argv of a worker: no log
    assert not log.exists()
    _run_with_the_soaks_env(demo, "-m", "daphne")  # argv of the site (the -c program only sleeps)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records and not any("error" in r for r in records)
    for r in records:
        assert r["rss"] == r["anon"] + r["file"] + r["shmem"]
        assert r["malloc_used"] > 0 and r["malloc_arena"] >= r["malloc_used"]
        assert r["pymalloc_arenas"] >= 1 and r["pymalloc_used"] > 0
        assert "rss_after_trim" in r and "sqlite_used" in r
        assert len(r["gc_count"]) == 3 and r["gc_full"] >= 0 and r["gc_freed"] >= 0


def test_tracemalloc_snapshots_the_daphne_process_and_names_the_site_that_grew(tmp_path):
    """--tracemalloc: the Daphne process dumps a snapshot when the soak asks; the diff of two names the line
    whose allocations grew between them, with their size and count."""
    import subprocess
    import sys
    import time

    from benchmarks.soak import request_snapshot, tracemalloc_dir, tracemalloc_growth

    demo = soak_demo(build_soak_parser().parse_args(["--var-dir", str(tmp_path), "--tracemalloc", "1", "2"]))
    grows = ("import pathlib, time\n"
             "keep, where = [], pathlib.Path(__import__('os').environ['BTARD_SOAK_TRACEMALLOC'])\n"
             "while not (where / 'snapshot-1.json').exists(): time.sleep(0.05)\n"
             "for _ in range(200): keep.append(bytearray(5000))  # the growing site\n"
             "(where / 'grown').touch()\n"
             "while not (where / 'snapshot-2.json').exists(): time.sleep(0.05)\n")
    program = tmp_path / "site.py"
    program.write_text(grows)
    site = subprocess.Popen([sys.executable, str(program), "-m", "daphne"], env=demo.env)  # the site's argv
    try:
        first = request_snapshot(demo, "1", 10, wait=60)
        while not (tracemalloc_dir(demo) / "grown").exists() and site.poll() is None:
            time.sleep(0.05)
        second = request_snapshot(demo, "2", 20, wait=60)
        site.wait(timeout=60)
    finally:
        site.kill()
    assert first["started"] and "error" not in first and "error" not in second
    where = tracemalloc_dir(demo)
    report = tracemalloc_growth(where / "snapshot-1.pickle", where / "snapshot-2.pickle", top=1)
    top = report.split("#1:", 1)[1]
    grew_kib = float(top.split("KiB", 1)[0])
    assert 200 * 5000 / 1024 <= grew_kib < 1.1 * 200 * 5000 / 1024  # the 200 buffers (and their objects)
    assert "B/step" in top  # 10 steps apart: ~100 KB a step
    assert "site.py\", line 4" in top and "# the growing site" in top  # where, with its source line
