"""A hostile site against one real worker (its own p2pd, loopback only): the findings of the worker review
(docs/threat-model.md, "Volunteer's machine") that a site can trigger. Each test fails on the code
before its fix: a traceback, a dial, a leaked token, unbounded memory or a busy loop."""

from __future__ import annotations

import asyncio
import io
import json
import math
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from websockets.asyncio.server import serve

from btard_wire.control import BanNotice, Group, PeerInfo, ReachabilityCheck, Relay
from btard_wire.envelope import Identity, sign_envelope
from worker_client.worker import EXIT_REFUSED, EXIT_STARTUP

from .hostile import RUN, HostileSite, Listener, RecordingView, running_worker, worker_config

pytestmark = [pytest.mark.usefixtures("clean_hivemind_sockets"), pytest.mark.timeout(120)]

OTHER = Identity.from_seed(b"another-peer")


def _run(**changes) -> dict:
    return RUN.model_dump() | changes


# --- M1: values from the site ---------------------------------------------------------------------------
@pytest.mark.parametrize("changes, words", [
    ({"task": "../../etc/passwd"}, "../../etc/passwd"),
    ({"seed": 2**70}, "seed"),
    ({"lr": float("nan")}, "lr"),
    ({"batch_size": 0}, "batch_size"),
])
async def test_it_refuses_a_run_it_cannot_train_with_a_sentence_not_a_traceback(changes, words):
    view = RecordingView()
    async with HostileSite(run=_run(**changes)) as site:
        async with running_worker(worker_config(site.url, allow_private=True), view) as (worker, task):
            code = await asyncio.wait_for(task, 60)  # returns: no exception escapes Worker.run
    assert code in (EXIT_REFUSED, EXIT_STARTUP)
    assert words in worker.exit_message
    assert not any("Traceback" in message for _, message in view.events)


async def _group_then(site, ws, group: dict, *, then=None):
    await ws.send(json.dumps(group))
    if then is not None:
        await then(site, ws)


def _raw_group(step: int, **fields) -> dict:
    return {"type": "group", "v": 1, "step": step, "peers": [], **fields}


@pytest.mark.parametrize("candidate", [
    {"peer_id": "SELF", "seed": "x"},
    {"peer_id": "SELF", "seed": [1, 2]},
    {"peer_id": 12345, "seed": 1},
])
async def test_a_candidate_entry_it_cannot_use_is_ignored_and_the_worker_keeps_running(candidate):
    view = RecordingView()

    async def script(site, ws):
        cand = {k: (site.peer_id if v == "SELF" else v) for k, v in candidate.items()}
        await ws.send(json.dumps(_raw_group(0, candidates=[cand])))

    async with HostileSite(script) as site:
        async with running_worker(worker_config(site.url, allow_private=True), view) as (worker, task):
            await site.wait_for(lambda: any("candidate" in m for k, m in view.events if k == "warning"),
                                what="the warning about the candidate")
            beats = len(site.sent("heartbeat"))
            await site.wait_for(lambda: len(site.sent("heartbeat")) > beats + 1, what="more heartbeats")
            assert not task.done()


async def test_a_phase_timeout_longer_than_the_data_plane_waits_does_not_crash_the_state_download():
    """An honest site's adaptive deadlines can say 1300 s; a data-plane wait stops at 600 s."""
    from worker_client.net import DataPlane

    gone = await DataPlane.create("x", allow_private=True)
    donor_id, donor_addrs = gone.p2p_id, await gone.addrs()
    await gone.shutdown()  # a donor whose port refuses: the download fails fast, it must not crash
    view = RecordingView()

    async def script(site, ws):
        donor = PeerInfo(peer_id="d" * 40, public_key=OTHER.public_key_b64, p2p_id=donor_id, p2p_addrs=donor_addrs)
        me = PeerInfo(peer_id=site.peer_id, public_key=site.hellos[0]["public_key"],
                      p2p_id=site.hellos[0]["p2p_id"], p2p_addrs=site.hellos[0]["p2p_addrs"])
        group = Group(step=5, peers=[me, donor], state_donors=[donor], deadlines={"phase_timeout": 1300.0})
        await ws.send(group.model_dump_json())

    async with HostileSite(script, run=_run(phase_timeout=1300.0)) as site:
        async with running_worker(worker_config(site.url, allow_private=True), view) as (worker, task):
            await site.wait_for(lambda: any("state download failed" in m for _, m in view.events), 60,
                                what="the failed download")
            assert not task.done()
            assert worker.steps.phase_timeout("state") == 600.0


async def test_a_zero_or_nan_deadline_does_not_make_the_worker_busy_loop():
    phases = ["gradient", "commit", "parts", "agg_result", "mprng_commit", "mprng_reveal", "scalars", "validation"]

    async def script(site, ws):
        me = {"peer_id": site.peer_id, "public_key": site.hellos[0]["public_key"],
              "p2p_id": site.hellos[0]["p2p_id"], "p2p_addrs": site.hellos[0]["p2p_addrs"]}
        deadlines = {p: 0.0 for p in phases} | {"phase_timeout": float("nan")}
        # the site never echoes the commit back: the worker stays in a board phase and asks to close it
        await ws.send(json.dumps(_raw_group(0, peers=[me], state_donors=[me], deadlines=deadlines)))

    async with HostileSite(script) as site:
        async with running_worker(worker_config(site.url, allow_private=True)) as (worker, task):
            await site.wait_for(lambda: site.sent("phase_close"), 60, what="a phase_close")
            await asyncio.sleep(2.0)
            assert not task.done()
    assert len(site.sent("phase_close")) <= 8  # one per clamped 0.5 s deadline, not thousands


def test_phase_deadlines_from_the_site_are_clamped_to_what_the_worker_can_honour():
    from btard_wire.control import RunInfo
    from worker_client.worker import Worker

    worker = Worker(worker_config("http://127.0.0.1:1"))
    worker.run_info = RunInfo(id=1, name="r", task="digits-mlp", phase_timeout=float("nan"))
    assert worker.steps.phase_timeout("parts") == 30.0
    for value, expected in ((0.0, 0.5), (float("nan"), 30.0), (1e9 - 1, 600.0), (-5.0, 0.5)):
        worker.current_group = Group(step=1, peers=[], deadlines={"parts": value})
        assert worker.steps.phase_timeout("parts") == expected, value


# --- M2: bounded buffers ----------------------------------------------------------------------------------
async def test_relays_for_far_steps_are_dropped_and_early_ones_stay_within_a_byte_budget():
    blob = "a" * (900 * 1024)

    async def script(site, ws):
        for step in (10**9, 10**9 + 1, 7):
            env = sign_envelope(OTHER, run="7", step=step, phase="commit", payload={"pad": "x"})
            await ws.send(Relay(envelope=env).model_dump_json())
        for i in range(24):  # 24 x 0.9 MiB for the next step: more than the 16 MiB budget
            env = sign_envelope(OTHER, run="7", step=1, phase="commit", payload={"pad": blob, "i": i})
            await ws.send(Relay(envelope=env).model_dump_json())

    async with HostileSite(script) as site:
        async with running_worker(worker_config(site.url, allow_private=True)) as (worker, task):
            await asyncio.wait_for(site.done.wait(), 60)
            relays = worker.steps
            await site.wait_for(lambda: relays.pending_relays and relays.pending_relays[-1][1].payload.get("i") == 23,
                                what="the last relay")
            steps = {env.step for _, env in worker.steps.pending_relays}
            assert steps == {1}
            assert worker.steps.pending_relay_bytes <= 16 * 1024 * 1024
            assert worker.steps.pending_relay_bytes == sum(size for size, _ in worker.steps.pending_relays)
            assert len(worker.steps.pending_relays) < 24


async def test_a_group_for_a_far_step_does_not_hide_the_groups_after_it():
    async def script(site, ws):
        await ws.send(json.dumps(_raw_group(2**50)))  # a member of nothing at a step nobody reaches
        me = {"peer_id": site.peer_id, "public_key": site.hellos[0]["public_key"],
              "p2p_id": site.hellos[0]["p2p_id"], "p2p_addrs": site.hellos[0]["p2p_addrs"]}
        await ws.send(json.dumps(_raw_group(0, peers=[me], state_donors=[me])))

    async with HostileSite(script) as site:
        async with running_worker(worker_config(site.url, allow_private=True)) as (worker, task):
            await site.wait_for(lambda: worker.current_group is not None and worker.current_group.step == 0,
                                what="the real group to be acted on")
            assert worker.status.step == 0 and not task.done()


async def test_a_group_with_oversized_lists_or_a_far_step_is_ignored_with_a_warning():
    view = RecordingView()

    async def script(site, ws):
        peer = {"peer_id": "p", "public_key": "k", "p2p_id": "", "p2p_addrs": []}
        await ws.send(json.dumps(_raw_group(0, peers=[peer] * 5000)))
        await ws.send(json.dumps(_raw_group(2**60)))

    async with HostileSite(script) as site:
        async with running_worker(worker_config(site.url, allow_private=True), view) as (worker, task):
            await site.wait_for(lambda: sum(k == "warning" and "group" in m for k, m in view.events) >= 2,
                                what="two warnings")
            assert worker.latest_group_step < 2**53 and worker.current_group is None
            assert not task.done()


# --- M3: terminal output ----------------------------------------------------------------------------------
def test_rich_markup_from_the_site_is_printed_as_text_not_interpreted():
    from rich.console import Console

    from worker_client.ui import LiveView, WorkerStatus, render

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=200)
    view = LiveView(console=console)
    with view:
        view.event("ban", "peer eeeeeeee banned: [/dim] owned")
        view.event("error", "site: x: [link=https://evil.example]update btard-worker here[/link]")
        view.update(WorkerStatus(run="[/bold]run", detail="[red]x[/blue]", last_error="[/]"))
    text = out.getvalue()
    assert "[/dim] owned" in text and "[link=https://evil.example]" in text
    assert "\x1b]8;" not in text  # no OSC-8 hyperlink
    plain = Console(file=io.StringIO(), width=200)
    plain.print(render(WorkerStatus(run="[/bold]run", detail="[red]x[/blue]", last_error="[/]")))
    assert "[/bold]run" in plain.file.getvalue()


def test_doctor_prints_site_text_without_interpreting_markup():
    from rich.console import Console

    from worker_client.doctor import FAIL, Report, print_report

    report = Report()
    report.add("token", FAIL, "run '[/red]' said [link=https://evil.example]x[/link]", fix="[/bold]")
    console = Console(file=io.StringIO(), force_terminal=True, width=200)
    print_report(report, console=console)
    assert "[/red]" in console.file.getvalue() and "\x1b]8;" not in console.file.getvalue()


async def test_a_ban_reason_with_markup_keeps_the_live_view_and_the_worker_alive():
    from rich.console import Console

    from worker_client.ui import LiveView

    async def script(site, ws):
        await ws.send(BanNotice(peer_id="e" * 40, reason="[/dim] owned [link=https://evil.example]x[/link]")
                      .model_dump_json())

    out = io.StringIO()
    view = LiveView(console=Console(file=out, force_terminal=True, width=200))
    async with HostileSite(script) as site:
        with view:
            async with running_worker(worker_config(site.url, allow_private=True), view) as (worker, task):
                await site.wait_for(lambda: "e" * 40 in worker.status.bans_seen, what="the ban")
                await asyncio.sleep(0.3)
                assert not task.done()
    assert "[/dim] owned" in out.getvalue()


# --- L1: deep JSON ----------------------------------------------------------------------------------------
async def test_deeply_nested_json_from_the_site_is_ignored():
    async def script(site, ws):
        await ws.send("[" * 50000)
        await ws.send(json.dumps({"type": "error", "v": 1, "code": "x", "message": {"a": [[[[[[[[[[]]]]]]]]]]}}))

    async with HostileSite(script) as site:
        async with running_worker(worker_config(site.url, allow_private=True)) as (worker, task):
            await asyncio.wait_for(site.done.wait(), 30)
            beats = len(site.sent("heartbeat"))
            await site.wait_for(lambda: len(site.sent("heartbeat")) > beats + 1, what="more heartbeats")
            assert not task.done()


# --- H1: reachability checks ----------------------------------------------------------------------------
async def test_a_reachability_check_never_dials_loopback_or_dns_and_answers_only_yes_or_no():
    async with Listener() as lan:
        async def script(site, ws):
            target = site.hellos[0]["p2p_id"]
            for i, addr in enumerate([f"/ip4/127.0.0.1/tcp/{lan.port}", f"/dns4/localhost/tcp/{lan.port}",
                                      f"/ip4/192.168.1.1/tcp/{lan.port}", "not-a-multiaddr"]):
                await ws.send(ReachabilityCheck(request_id=f"r{i}", p2p_id=target, p2p_addrs=[addr])
                              .model_dump_json())

        async with HostileSite(script) as site:
            async with running_worker(worker_config(site.url)) as (worker, task):
                await site.wait_for(lambda: len(site.sent("reachability_result")) == 4, what="four answers")
                assert not task.done()
        results = site.sent("reachability_result")
        assert all(r["reachable"] is False and r["detail"] == "not_allowed" for r in results)
        assert lan.connections == 0


async def test_with_allow_private_a_check_dials_but_reports_no_daemon_text_and_is_rate_limited():
    async with Listener() as lan:
        async def script(site, ws):
            for i in range(12):
                await ws.send(ReachabilityCheck(request_id=f"r{i}", p2p_id=site.hellos[0]["p2p_id"],
                                                p2p_addrs=[f"/ip4/127.0.0.1/tcp/{lan.port}"] * 10).model_dump_json())
                await asyncio.sleep(0.05)

        async with HostileSite(script) as site:
            async with running_worker(worker_config(site.url, allow_private=True)) as (worker, task):
                await asyncio.wait_for(site.done.wait(), 30)
                await site.wait_for(lambda: site.sent("reachability_result"), what="an answer")
                await asyncio.sleep(1.0)
        results = site.sent("reachability_result")
        assert 1 <= len(results) <= 4  # at most a few checks a minute, one at a time
        assert all(r["detail"] in {"ok", "failed", "not_allowed"} for r in results)
        assert all("dial" not in r["detail"] and "127.0.0.1" not in r["detail"] for r in results)


# --- L2: the hello announces no private address ----------------------------------------------------------
async def test_the_hello_announces_no_loopback_address_unless_private_addresses_are_allowed():
    async with HostileSite() as site:
        async with running_worker(worker_config(site.url)) as (worker, task):
            await site.wait_for(lambda: site.hellos, what="the hello")
        async with running_worker(worker_config(site.url, allow_private=True, seed=b"lan")) as (worker, task):
            await site.wait_for(lambda: len(site.hellos) == 2, what="the second hello")
    assert site.hellos[0]["p2p_addrs"] == []
    assert site.hellos[1]["p2p_addrs"] and all("/ip4/127.0.0.1/" in a for a in site.hellos[1]["p2p_addrs"])


# --- M4: scheme, redirects, the token -------------------------------------------------------------------
def test_a_server_without_a_scheme_means_https_and_plain_http_needs_insecure():
    from worker_client.checkpoint import http_base
    from worker_client.site_client import site_url, ws_url

    assert ws_url("swarm.example") == "wss://swarm.example/ws/worker/"
    assert http_base("swarm.example:8443") == "https://swarm.example:8443"
    assert site_url("swarm.example") == "https://swarm.example"
    with pytest.raises(ValueError, match="--insecure"):
        site_url("http://swarm.example")
    with pytest.raises(ValueError, match="--insecure"):
        site_url("ws://10.0.0.5:8000")
    assert site_url("http://swarm.example", insecure=True) == "http://swarm.example"
    assert site_url("http://127.0.0.1:8000") == "http://127.0.0.1:8000"  # this machine: no one in between
    assert site_url("http://localhost:8000") == "http://localhost:8000"
    with pytest.raises(ValueError, match="scheme"):
        site_url("ftp://swarm.example")


def test_the_cli_refuses_a_plaintext_server_with_a_sentence(capsys, tmp_path):
    from worker_client.cli import EXIT_USAGE, main

    with pytest.raises(SystemExit) as exit_:
        main(["--token", "t", "--server", "http://swarm.example", "--config-dir", str(tmp_path)])
    assert exit_.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--insecure" in err and "unencrypted" in err and "Traceback" not in err
    assert main(["doctor", "--server", "http://swarm.example", "--config-dir", str(tmp_path)]) == EXIT_USAGE


def test_btard_token_is_the_documented_way_to_keep_the_token_out_of_ps():
    from pathlib import Path

    from worker_client.cli import build_parser

    help_text = " ".join(build_parser().format_help().split())
    assert "BTARD_TOKEN" in help_text and "ps" in help_text and "--token-file" in help_text
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "BTARD_TOKEN=" in readme and "--allow-private" in readme and "--insecure" in readme


def test_the_token_file_is_read(tmp_path):
    import argparse

    from worker_client.cli import _resolve_site_and_token

    path = tmp_path / "token"
    path.write_text("btard_secret\n")
    args = argparse.Namespace(server="swarm.example", insecure=False, token=None, token_file=str(path))
    assert _resolve_site_and_token(args) is None
    assert args.token == "btard_secret" and args.server == "https://swarm.example"
    args = argparse.Namespace(server="swarm.example", insecure=False, token=None, token_file=str(tmp_path / "no"))
    assert "cannot read" in _resolve_site_and_token(args)


class _Redirect(BaseHTTPRequestHandler):
    target = ""
    seen: list = []

    def _answer(self):
        type(self).seen.append((self.command, self.path, self.headers.get("Authorization")))
        if self.path.startswith("/steal"):
            self.send_response(200)
            body = b'{"ok": true}'
        else:
            self.send_response(302)
            self.send_header("Location", type(self).target)
            body = b""
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


def _http_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_the_checkpoint_upload_follows_no_redirect_and_never_forwards_the_token():
    from worker_client.checkpoint import UploadRefused, upload

    site, thief = _http_server(), _http_server()
    _Redirect.seen = []
    _Redirect.target = f"http://127.0.0.1:{thief.server_address[1]}/steal"
    try:
        with pytest.raises(UploadRefused) as refused:
            upload(f"http://127.0.0.1:{site.server_address[1]}/api/runs/1/checkpoints/1/", "SECRET", b"x",
                   attempts=1, wait=0)
    finally:
        site.shutdown(), thief.shutdown()
        site.server_close(), thief.server_close()
    assert refused.value.status == 302
    assert [s for s in _Redirect.seen if s[1].startswith("/steal")] == []


def test_an_upload_counts_only_when_the_site_confirms_it():
    from worker_client.checkpoint import UploadRefused, upload

    class Html(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            body = b"<html>captive portal</html>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Html)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(UploadRefused, match="does not confirm"):
            upload(f"http://127.0.0.1:{server.server_address[1]}/u/", "t", b"x", attempts=1, wait=0)
    finally:
        server.shutdown()
        server.server_close()


async def test_the_websocket_follows_no_redirect_and_never_forwards_the_token():
    from worker_client.site_client import FatalSiteError, SiteClient

    stolen = []

    async def thief(ws):
        stolen.append(ws.request.headers.get("Authorization"))
        await ws.close()

    async with serve(thief, "127.0.0.1", 0) as thief_server:
        target = f"ws://127.0.0.1:{thief_server.sockets[0].getsockname()[1]}/ws/worker/"

        def redirect(connection, request):
            response = connection.respond(HTTPStatus.FOUND, "")
            response.headers["Location"] = target
            return response

        async with serve(lambda ws: None, "127.0.0.1", 0, process_request=redirect) as site:
            client = SiteClient(f"http://127.0.0.1:{site.sockets[0].getsockname()[1]}", "SECRET",
                                hello=lambda: None, heartbeat=lambda: None, on_message=lambda m: None)
            with pytest.raises(FatalSiteError, match="redirect"):
                await asyncio.wait_for(client.run(), 20)
    assert stolen == []


# --- issue 15: an unreachable --server is reported at once and on every retry -----------------------------
async def test_a_refused_server_is_reported_within_seconds_and_on_every_retry_with_the_next_time():
    from worker_client.ui import JsonView

    out = io.StringIO()
    view = JsonView(out)
    async with running_worker(worker_config("http://127.0.0.1:1", allow_private=True), view) as (worker, task):
        loop = asyncio.get_running_loop()
        until = loop.time() + 20
        while loop.time() < until and out.getvalue().count('"event": "connection"') < 2:
            await asyncio.sleep(0.1)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    reports = [line for line in lines if line["event"] == "connection"]
    assert len(reports) >= 2
    assert all("connection refused" in r["message"] and "next try in" in r["message"] for r in reports)
    from worker_client.ui import QuietView

    quiet = io.StringIO()
    QuietView(quiet).event("connection", reports[0]["message"])  # --quiet shows it too
    assert json.loads(quiet.getvalue())["event"] == "connection"


async def test_a_silent_server_is_reported_before_the_connection_attempt_times_out():
    from worker_client.site_client import SLOW_CONNECT_REPORT, SiteClient

    async def silent(reader, writer):
        await asyncio.sleep(60)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    problems = []
    try:
        client = SiteClient(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", "t", hello=lambda: None,
                            heartbeat=lambda: None, on_message=lambda m: None, on_problem=problems.append,
                            open_timeout=30)
        task = asyncio.create_task(client.run())
        await asyncio.sleep(SLOW_CONNECT_REPORT + 0.8)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        server.close()
    assert SLOW_CONNECT_REPORT < 5 and problems and "no answer" in problems[0] and "still trying" in problems[0]


def test_clamp_timeout_turns_garbage_into_a_usable_number():
    from worker_client.site_limits import clamp_timeout

    assert clamp_timeout(math.inf) == 30.0 and clamp_timeout("x") == 30.0 and clamp_timeout(None, 7.0) == 7.0
