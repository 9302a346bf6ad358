"""The one-command demo, end to end, in a real browser.

Starts ``python -m worker_client.demo`` (the target of ``make demo``) on the embedded default with a
small swarm, opens the run dashboard and the ban list in Debian's Chromium through Playwright, waits
for the step counter to advance and for every attacker to appear on the ban list without a reload,
saves a screenshot, checks no honest peer was banned, then stops the demo and checks that it left no
process or hivemind socket behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import CHROMIUM_ARGS, ROOT, free_port
from worker_client.processes import bound_sockets, group_pids

pytestmark = [pytest.mark.browser, pytest.mark.timeout(900)]

def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return False


@pytest.fixture
def demo(tmp_path, output_dir):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    log = open(output_dir / "demo.log", "w")  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker_client.demo", "--peers", "5", "--byzantine", "2",
         "--behaviours", "wrong_aggregate,bad_commitment", "--port", str(port), "--var-dir", str(tmp_path / "var")],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    plan_path = tmp_path / "var" / "swarm.json"
    state = {"proc": proc, "plan": None, "stopped": False}
    try:
        deadline = time.monotonic() + 300
        while not plan_path.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("the demo did not start:\n" + (output_dir / "demo.log").read_text()[-3000:])
            time.sleep(0.5)
        time.sleep(0.2)
        state["plan"] = json.loads(plan_path.read_text())
        yield state
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        plan = state["plan"] or {"peers": [], "site_pid": None}
        for pid in [p["pid"] for p in plan["peers"]] + [plan["site_pid"]]:
            if pid and _alive(pid):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        log.close()


def _api(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_the_demo_shows_steps_advancing_and_every_attacker_banned_live(demo, chromium_path, output_dir):
    from playwright.sync_api import sync_playwright

    plan = demo["plan"]
    attackers = {p["account"] for p in plan["peers"] if p["behaviour"]}
    honest = {p["account"] for p in plan["peers"] if not p["behaviour"]}
    assert len(attackers) == 2 and len(honest) == 3

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 1100})
            page.goto(plan["dashboard"])
            bans_page = browser.new_page()
            bans_page.goto(plan["url"] + "/bans/")
            for p in (page, bans_page):  # survives only if nothing reloads the page
                p.evaluate("window.__noReload = 'still here'")
            first_step = int(page.inner_text("#run-step"))

            page.wait_for_function(f"parseInt(document.querySelector('#run-step').innerText) > {first_step}",
                                   timeout=420_000)
            accounts = " && ".join(f"document.querySelector('#ban-rows').innerText.includes('{a}')"
                                   for a in sorted(attackers))
            bans_page.wait_for_function(accounts, timeout=420_000)
            page.wait_for_function(f"parseInt(document.querySelector('#run-step').innerText) > {first_step + 1}",
                                   timeout=120_000)
            for p in (page, bans_page):
                assert p.evaluate("window.__noReload") == "still here", "the page was reloaded"
            page.screenshot(path=str(output_dir / "dashboard.png"), full_page=True)
            bans_page.screenshot(path=str(output_dir / "bans.png"), full_page=True)
        finally:
            browser.close()

    bans = _api(plan["url"] + "/api/bans/")["bans"]
    banned = {b["account"] for b in bans}
    assert attackers <= banned
    assert not (banned & honest), f"honest peers were banned: {banned & honest}"
    run = _api(plan["url"] + f"/api/runs/{plan['run_id']}/")
    assert run["step"] >= first_step + 2

    # the hivemind sockets the demo's processes hold (worker_client.processes reads them from /proc)
    held = set().union(*(bound_sockets(group_pids(p["pid"])) for p in plan["peers"]))
    assert held, "the workers hold no hivemind socket (is /proc readable?)"
    proc = demo["proc"]
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    time.sleep(0.5)
    leftovers = [p["pid"] for p in plan["peers"] if _alive(p["pid"])] + (
        [plan["site_pid"]] if _alive(plan["site_pid"]) else [])
    assert not leftovers, f"processes left behind: {leftovers}"
    stale = sorted(p for p in held if os.path.exists(p))
    assert not stale, f"hivemind sockets left behind: {stale}"
