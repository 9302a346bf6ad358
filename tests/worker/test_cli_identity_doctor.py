"""The CLI surface, the identity key file, the terminal view and the doctor's checks."""

from __future__ import annotations

import io
import json
import os
import stat

import pytest
from websockets.asyncio.server import serve

from btard_wire.control import CLOSE_REVOKED_TOKEN, ReachabilityResult, RunInfo, Welcome, parse_worker_message
from btard_wire.envelope import Identity
from worker_client import cli
from worker_client.doctor import FAIL, OK, UNKNOWN, run_doctor
from worker_client.identity import IdentityFileError, identity_path, load_identity
from worker_client.ui import JsonView, WorkerStatus, render


def test_the_identity_key_is_created_0600_and_reused_across_restarts(tmp_path):
    first, path, created = load_identity("https://swarm.example:8443", tmp_path)
    assert created and path == tmp_path / "identity-swarm.example_8443.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again, _, created_again = load_identity("https://swarm.example:8443", tmp_path)
    assert not created_again and again.peer_id == first.peer_id
    other, _, _ = load_identity("https://other.example", tmp_path)
    assert other.peer_id != first.peer_id  # one key per site


def test_a_new_key_retires_the_old_one_and_gives_a_new_peer_id(tmp_path):
    from worker_client.identity import retire_identity

    first, path, _ = load_identity("http://site:8000", tmp_path)
    assert retire_identity("http://site:8000", tmp_path) == path.with_name(path.name + ".retired-1")
    second, _, created = load_identity("http://site:8000", tmp_path)
    assert created and second.peer_id != first.peer_id
    assert retire_identity("http://site:8000", tmp_path).name.endswith(".retired-2")  # the first is kept
    assert retire_identity("http://site:8000", tmp_path) is None  # nothing left to retire
    assert stat.S_IMODE(path.with_name(path.name + ".retired-1").stat().st_mode) == 0o600


def test_it_refuses_a_key_file_others_can_read(tmp_path):
    _, path, _ = load_identity("http://127.0.0.1:8000", tmp_path)
    os.chmod(path, 0o644)
    with pytest.raises(IdentityFileError, match="chmod 600"):
        load_identity("http://127.0.0.1:8000", tmp_path)


def test_the_key_is_never_written_or_read_through_a_planted_symlink(tmp_path):
    planted = tmp_path / "elsewhere"
    path = identity_path("http://h", tmp_path / "cfg")
    path.parent.mkdir(mode=0o700)
    path.symlink_to(planted)  # dangling: following it would create the key where the attacker wants
    with pytest.raises(IdentityFileError, match="symbolic link"):
        load_identity("http://h", tmp_path / "cfg")
    assert not planted.exists()
    planted.write_bytes(os.urandom(32))
    os.chmod(planted, 0o600)
    with pytest.raises(IdentityFileError, match="symbolic link"):  # nor read one through a link
        load_identity("http://h", tmp_path / "cfg")


def test_a_key_directory_others_can_write_to_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(IdentityFileError, match="chmod 700"):
        load_identity("http://h", shared)
    assert list(shared.iterdir()) == []


def test_a_corrupt_key_file_says_a_new_key_only_costs_a_probation(tmp_path):
    path = identity_path("http://h", tmp_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"short")
    os.chmod(path, 0o600)
    with pytest.raises(IdentityFileError, match="probation"):
        load_identity("http://h", tmp_path)


def test_the_config_dir_follows_btard_config_dir_then_xdg(tmp_path, monkeypatch):
    monkeypatch.delenv("BTARD_CONFIG_DIR", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert identity_path("http://h").parent == tmp_path / "xdg" / "btard-swarm"
    monkeypatch.setenv("BTARD_CONFIG_DIR", str(tmp_path / "mine"))
    assert identity_path("http://h").parent == tmp_path / "mine"


def test_byzantine_options_are_hidden_from_help_unless_asked(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    plain = capsys.readouterr().out
    assert "--token" in plain and "--device" in plain and "--behaviour" not in plain
    assert cli.main(["--show-test-options"]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert "--behaviour" in shown and "attacks registry" in shown


def test_it_requires_a_token(capsys, monkeypatch):
    monkeypatch.delenv("BTARD_TOKEN", raising=False)
    with pytest.raises(SystemExit) as err:
        cli.main(["--server", "http://127.0.0.1:9"])
    assert err.value.code == 2 and "--token is required" in capsys.readouterr().err


@pytest.mark.parametrize("spec,says", [("verdict=3", "PHASE one of"), ("commit", "PHASE=SECONDS"),
                                       ("commit=soon", "not a number"), ("commit=-1", "between 0 and 3600")])
def test_a_bad_hold_broadcast_spec_is_refused_with_the_reason(spec, says, capsys):
    with pytest.raises(SystemExit) as err:
        cli.main(["--token", "t", "--hold-broadcast", spec])
    assert err.value.code == 2 and says in capsys.readouterr().err


def test_the_live_view_shows_step_loss_group_role_bytes_and_bans():
    from rich.console import Console

    status = WorkerStatus(server="http://s", peer_id="ab" * 20, step=12, loss=0.4321, group_size=5,
                          step_roles=["aggregator of part 2", "validator of 1a2b3c4d"], bytes_sent=3 * 2**20,
                          bytes_received=1500, bans_seen=["deadbeef" * 5], status="aggregating", detail="part 2")
    console = Console(file=io.StringIO(), width=120)
    console.print(render(status))
    text = console.file.getvalue()
    for expected in ("12", "0.4321", "5 peers", "aggregator of part 2", "validator of 1a2b3c4d", "3.0 MiB",
                     "deadbeef", "aggregating"):
        assert expected in text


def test_json_logs_emit_one_object_per_line():
    out = io.StringIO()
    view = JsonView(out)
    view.update(WorkerStatus(step=1))
    view.update(WorkerStatus(step=1))  # unchanged step: no new line
    view.event("ban", "peer x banned", peer="x")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["status", "ban"] and lines[1]["peer"] == "x"


async def _fake_site(behaviour):
    server = await serve(behaviour, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def test_doctor_reports_a_reachable_peer_when_an_active_peer_dialled_it(clean_hivemind_sockets):
    seen = []

    async def site(ws):
        hello = parse_worker_message(await ws.recv())
        seen.append(hello)
        await ws.send(Welcome(peer_id="ab" * 20, role="active", step=3,
                              run=RunInfo(id=1, name="demo", task="digits-mlp")).model_dump_json())
        while True:
            msg = parse_worker_message(await ws.recv())
            if msg.type == "reachability_request":
                seen.append(msg)
                await ws.send(ReachabilityResult(request_id="r1", reachable=True, detail="dialled in 3 ms")
                              .model_dump_json())

    server, url = await _fake_site(site)
    try:
        report = await run_doctor(server=url, token="t", identity=Identity.from_seed(b"doc"),
                                  host_maddrs=["/ip4/127.0.0.1/tcp/0"], announce_maddrs=None, timeout=30,
                                  allow_private=True)
    finally:
        server.close()
        await server.wait_closed()
    results = {c.name: c.result for c in report.checks}
    assert results["site"] == OK and results["token"] == OK and results["hivemind"] == OK
    assert results["reachability"] == OK and results["gpu"] in {OK, UNKNOWN}
    assert seen[1].p2p_addrs and seen[1].p2p_id == seen[0].p2p_id


async def test_doctor_says_what_to_fix_for_a_revoked_token_and_an_unreachable_site(clean_hivemind_sockets):
    async def site(ws):
        await ws.recv()
        await ws.close(CLOSE_REVOKED_TOKEN, "revoked")

    server, url = await _fake_site(site)
    try:
        report = await run_doctor(server=url, token="t", identity=Identity.from_seed(b"doc"),
                                  host_maddrs=["/ip4/127.0.0.1/tcp/0"], announce_maddrs=None, timeout=30)
    finally:
        server.close()
        await server.wait_closed()
    token = next(c for c in report.checks if c.name == "token")
    assert token.result == FAIL and "revoked" in token.detail and "/tokens/" in token.fix
    assert not report.ok

    down = await run_doctor(server="http://127.0.0.1:1", token="t", identity=Identity.from_seed(b"doc"),
                            host_maddrs=["/ip4/127.0.0.1/tcp/0"], announce_maddrs=None, timeout=3)
    site_check = next(c for c in down.checks if c.name == "site")
    assert site_check.result == FAIL and "--server" in site_check.fix
    assert next(c for c in down.checks if c.name == "reachability").result == UNKNOWN
