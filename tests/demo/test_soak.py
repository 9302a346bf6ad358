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
