"""Hostile peers against a worker's data plane: real p2pd daemons on loopback (no UPnP), a victim that knows
one member of its step and a stranger it knows nothing about. Each test fails on the code before its fix
(worker review H1, H2, M5, L2, L3, L6; docs/threat-model.md, "Volunteer's machine")."""

from __future__ import annotations

import asyncio
import glob
import json
from pathlib import Path

import pytest
import pytest_asyncio
import torch

from worker_client.net import DataPlane, DataPlaneError
from worker_client.net.dataplane import MAX_STREAMS_PER_PEER, handler_name
from worker_client.net.policy import address_refusal
from worker_client.net.wire import PutRequest, encode_header

from .conftest import remove_stale_hivemind_sockets
from .hostile import Listener

pytestmark = pytest.mark.timeout(120)

RUN = "run-hostile"


@pytest_asyncio.fixture
async def trio():
    """``victim`` knows ``member`` (its step's group); ``stranger`` is in no group. All on loopback."""
    before = set(glob.glob("/tmp/hivemind-*"))
    planes: list[DataPlane] = []
    try:
        for _ in range(3):
            planes.append(await DataPlane.create(RUN, call_timeout=30.0, max_wait=30.0, allow_private=True))
        victim, member, stranger = planes
        victim.set_directory({"member": (member.p2p_id, await member.addrs())}, step=5)
        victim.forget_before(5)
        for plane in (member, stranger):  # both know where the victim is
            plane.set_directory({"victim": (victim.p2p_id, await victim.addrs())})
        yield victim, member, stranger
    finally:
        for plane in planes:
            await plane.shutdown()
        remove_stale_hivemind_sockets(set(glob.glob("/tmp/hivemind-*")) - before)


async def _raw_stream(plane: DataPlane, target: DataPlane, name: str):
    from hivemind.p2p import PeerID

    await plane.connect(target.p2p_id, await target.addrs())
    _, reader, writer = await plane.p2p.call_binary_stream_handler(PeerID.from_base58(target.p2p_id), name)
    return reader, writer


# --- H2 / M5: strangers ------------------------------------------------------------------------------------
async def test_a_stranger_is_refused_at_once_and_parks_no_stream(trio):
    victim, member, stranger = trio
    victim.publish_state(5, torch.ones(1000))
    fetches = [stranger.fetch("victim", step=5, kind="agg", key=str(i), numel=4, wait=60.0, timeout=10.0)
               for i in range(40)]
    results = await asyncio.gather(*fetches, return_exceptions=True)
    codes = {getattr(r, "code", r) for r in results}
    assert "refused" in codes and codes <= {"refused", "unreachable"}  # never "timeout": nothing waited
    with pytest.raises(DataPlaneError) as err:
        await stranger.fetch("victim", step=5, kind="agg", key="1", numel=4, wait=60.0, timeout=10.0)
    assert err.value.code == "refused"
    with pytest.raises(DataPlaneError) as err:  # M5: the model state is not for strangers
        await stranger.fetch("victim", step=0, kind="state", key="s5", numel=1000, timeout=10.0)
    assert err.value.code == "refused"
    with pytest.raises(DataPlaneError) as err:
        await stranger.send("victim", step=5, kind="part", key="0", data=torch.zeros(4), wait=60.0, timeout=10.0)
    assert err.value.code == "refused"
    assert victim.open_streams == 0 and not victim.store.events
    # the member of the step is served as before
    got = await member.fetch("victim", step=0, kind="state", key="s5", numel=1000, timeout=10.0)
    assert torch.equal(got, torch.ones(1000))


async def test_a_member_is_capped_per_peer_and_its_parked_fetches_are_served_once_published(trio):
    victim, member, _ = trio
    fetches = [asyncio.create_task(member.fetch("victim", step=5, kind="agg", key="k", numel=3, wait=30.0,
                                                timeout=30.0)) for _ in range(MAX_STREAMS_PER_PEER + 6)]
    loop = asyncio.get_running_loop()
    until = loop.time() + 20
    while sum(t.done() for t in fetches) < 6 and loop.time() < until:
        await asyncio.sleep(0.05)
    assert victim.open_streams == MAX_STREAMS_PER_PEER
    victim.publish(5, "agg", "k", torch.arange(3, dtype=torch.float32))
    results = await asyncio.gather(*fetches, return_exceptions=True)
    busy = [r for r in results if isinstance(r, DataPlaneError)]
    served = [r for r in results if isinstance(r, torch.Tensor)]
    # over the cap: refused at once ("busy" when the answer arrives before the close)
    assert len(busy) == 6 and "busy" in {e.code for e in busy} and {e.code for e in busy} <= {"busy", "unreachable"}
    assert len(served) == MAX_STREAMS_PER_PEER
    assert victim.open_streams == 0


async def test_waits_are_only_for_steps_next_to_the_current_one(trio):
    victim, member, _ = trio
    for step in (10**15, 1):
        with pytest.raises(DataPlaneError) as err:
            await member.fetch("victim", step=step, kind="agg", key="x", numel=3, wait=30.0, timeout=10.0)
        assert err.value.code == "not_found"  # answered at once, not held for 30 s
    assert not victim.store.events  # no entry for a stranger-named slot is left behind


async def test_a_silent_stream_is_dropped_after_the_short_request_timeout(trio):
    victim, member, _ = trio
    victim.request_timeout = 0.5
    reader, writer = await _raw_stream(member, victim, handler_name(RUN))
    try:
        data = await asyncio.wait_for(reader.read(), 10.0)  # EOF: the victim closed it
    finally:
        writer.close()
    assert data == b""
    assert victim.open_streams == 0


async def test_the_state_is_served_to_a_member_at_most_twice_per_step(trio):
    victim, member, _ = trio
    victim.publish_state(5, torch.ones(100), chunk_numel=50)
    for _ in range(2):
        state, _, _ = await member.download_state(["victim"], step=5, numel=100, timeout=10.0)
        assert torch.equal(state, torch.ones(100))
    with pytest.raises(DataPlaneError) as err:
        await member.download_state(["victim"], step=5, numel=100, timeout=10.0)
    assert err.value.code == "refused"


async def test_a_second_parallel_put_for_the_same_slot_is_refused_before_its_body_is_read(trio):
    victim, member, _ = trio
    victim.set_receiver(lambda step, kind, key, sender: 4 if sender == "member" else None, lambda *a: None)
    reader, writer = await _raw_stream(member, victim, handler_name(RUN))
    try:
        # the first put announces its body and sends none: its slot stays taken while it is being read
        writer.write(encode_header(PutRequest(run=RUN, step=5, kind="part", key="0", numel=4)))
        writer.write((16).to_bytes(8, "big"))
        await writer.drain()
        await asyncio.sleep(0.3)
        with pytest.raises(DataPlaneError) as err:
            await member.send("victim", step=5, kind="part", key="0", data=torch.zeros(4), timeout=10.0)
        assert err.value.code == "busy"
    finally:
        writer.close()


async def test_the_directory_forgets_peers_no_recent_group_named():
    plane = DataPlane(None, RUN, call_timeout=5.0, max_wait=5.0)
    for step in range(100):
        plane.set_directory({f"peer{step}": (f"p2p{step}", [])}, step=step)
    plane.forget_before(100)
    assert set(plane.directory.peers) == {"peer99"} and set(plane.directory.by_p2p) == {"p2p99"}
    assert not plane.knows("p2p3") and plane.knows("p2p99")
    # a site naming ever new peers at far steps: the directory stays bounded
    from worker_client.net.dataplane import MAX_DIRECTORY

    for i in range(MAX_DIRECTORY + 500):
        plane.set_directory({f"far{i}": (f"f{i}", [])}, step=10**12 + i)
    assert len(plane.directory.peers) == len(plane.directory.by_p2p) == len(plane.directory.named_at) == MAX_DIRECTORY
    assert plane.knows(f"f{MAX_DIRECTORY + 499}") and not plane.knows("f0")


# --- H1 / L3: what the worker dials ------------------------------------------------------------------------
async def test_a_worker_dials_no_loopback_private_or_dns_address_and_survives_garbage(clean_hivemind_sockets):
    plane = await DataPlane.create(RUN, call_timeout=5.0)  # the default: public addresses only
    target = await DataPlane.create(RUN, call_timeout=5.0)
    try:
        async with Listener() as lan:
            for addr in (f"/ip4/127.0.0.1/tcp/{lan.port}", f"/dns4/localhost/tcp/{lan.port}",
                         f"/ip6/::1/tcp/{lan.port}", f"/ip4/169.254.169.254/tcp/{lan.port}"):
                with pytest.raises(DataPlaneError) as err:
                    await plane.ping(target.p2p_id, [addr], timeout=5.0)
                assert err.value.code == "refused", addr
            plane.set_directory({"t": (target.p2p_id, [f"/ip4/127.0.0.1/tcp/{lan.port}"])})
            with pytest.raises(DataPlaneError) as err:  # a group member's private address: refused the same way
                await plane.fetch("t", step=0, kind="agg", key="x", numel=1, timeout=5.0)
            assert err.value.code == "refused"
            assert lan.connections == 0
        for garbage in ("not-a-multiaddr", "/ip4/1.2.3.4/tcp/99999", "/ip4/300.1.1.1/tcp/1", "x" * 5000):
            with pytest.raises(DataPlaneError):  # L3: a DataPlaneError, not the parser's exception
                await plane.ping(target.p2p_id, [garbage], timeout=5.0)
        with pytest.raises(DataPlaneError):
            await plane.ping("not-a-peer-id", ["/ip4/8.8.8.8/tcp/1"], timeout=5.0)
    finally:
        await plane.shutdown()
        await target.shutdown()


def test_the_address_policy_allows_only_public_unicast_unless_private_is_allowed():
    public = ["/ip4/8.8.8.8/tcp/31337", "/ip6/2001:4860:4860::8888/tcp/1",
              "/ip4/8.8.8.8/tcp/1/p2p/QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"]
    private = ["/ip4/10.0.0.1/tcp/1", "/ip4/192.168.1.1/tcp/1", "/ip4/172.16.0.1/tcp/1", "/ip4/127.0.0.1/tcp/1",
               "/ip4/169.254.169.254/tcp/80", "/ip4/100.64.0.1/tcp/1", "/ip6/fc00::1/tcp/1", "/ip6/fe80::1/tcp/1",
               "/ip6/::1/tcp/1", "/ip6/::ffff:127.0.0.1/tcp/1", "/dns4/localhost/tcp/1", "/dns/example.org/tcp/1",
               "/dnsaddr/bootstrap.example/tcp/1",
               "/ip4/8.8.8.8/tcp/1/p2p/QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N/p2p-circuit/ip4/10.0.0.1"]
    never = ["/ip4/0.0.0.0/tcp/1", "/ip4/224.0.0.1/udp/1", "", "nonsense", 42, None, "/unix/tmp/x.sock"]
    assert all(address_refusal(a, allow_private=False) is None for a in public)
    assert all(address_refusal(a, allow_private=False) for a in private + never)
    assert all(address_refusal(a, allow_private=True) is None for a in private[:-1])
    assert all(address_refusal(a, allow_private=True) for a in never)


# --- L2: what the daemon runs and announces -------------------------------------------------------------------
async def test_the_daemon_runs_without_dht_autonat_or_relay_and_announces_no_loopback(clean_hivemind_sockets):
    plane = await DataPlane.create(RUN, call_timeout=5.0)
    try:
        args = Path(f"/proc/{plane.p2p._child.pid}/cmdline").read_bytes().split(b"\0")
        flags = {a.decode() for a in args if a.startswith(b"-")}
        assert not {f for f in flags if f.startswith(("-dht", "-dhtServer", "-dhtClient"))}
        assert {"-autonat=0", "-relay=0", "-natPortMap=0"} <= flags
        assert await plane.addrs() and await plane.announced_addrs() == []
    finally:
        await plane.shutdown()


async def test_a_deeply_nested_request_header_is_refused_and_the_victim_keeps_serving(trio):
    victim, member, _ = trio
    reader, writer = await _raw_stream(member, victim, handler_name(RUN))
    nested = b"[" * 16000
    writer.write(len(nested).to_bytes(4, "big") + nested)
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 10.0) == b""  # closed, no answer
    writer.close()
    victim.publish(5, "agg", "ok", torch.ones(2))
    assert torch.equal(await member.fetch("victim", step=5, kind="agg", key="ok", numel=2, timeout=10.0),
                       torch.ones(2))


async def test_a_fetch_info_wait_beyond_the_wire_limit_is_clamped_not_a_crash(trio):
    victim, member, _ = trio
    victim.publish_state(5, torch.ones(10))
    response = await member.fetch_info("victim", step=0, kind="state", key="s5", wait=1300.0, timeout=10.0)
    assert response.info["numel"] == 10


async def test_a_hostile_donor_cannot_crash_the_worker_with_a_bad_randomness_chain(clean_hivemind_sockets):
    """The only donor that answers serves a well-formed state whose ``r`` is not hex (review M1)."""
    from btard_wire.control import Group, PeerInfo
    from btard_wire.envelope import Identity

    from .hostile import HostileSite, RecordingView, running_worker, worker_config

    donor = await DataPlane.create(None, call_timeout=10.0, allow_private=True)
    view = RecordingView()
    try:
        async def script(site, ws):
            hello = site.hellos[0]
            await donor.set_run("7")
            donor.set_directory({site.peer_id: (hello["p2p_id"], hello["p2p_addrs"])})
            await site.wait_for(lambda: worker.state is not None, what="the worker's model")
            numel = worker.state.full_state().numel()
            donor.publish_state(5, torch.zeros(numel), meta={"r": "zz" * 32})
            info = PeerInfo(peer_id="d" * 40, public_key=Identity.from_seed(b"donor").public_key_b64,
                            p2p_id=donor.p2p_id, p2p_addrs=await donor.addrs())
            me = PeerInfo(peer_id=site.peer_id, public_key=hello["public_key"], p2p_id=hello["p2p_id"],
                          p2p_addrs=hello["p2p_addrs"])
            await ws.send(Group(step=5, peers=[me, info], state_donors=[info]).model_dump_json())

        async with HostileSite(script) as site:
            async with running_worker(worker_config(site.url, allow_private=True), view) as (worker, task):
                await site.wait_for(lambda: any("randomness" in m for _, m in view.events), 60,
                                    what="the refused state")
                assert not task.done()
                assert json.dumps(view.events).count("Traceback") == 0
    finally:
        await donor.shutdown()
