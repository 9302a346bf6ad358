"""The hivemind data plane: three real p2pd daemons in one process exchanging tensors on loopback."""

from __future__ import annotations

import asyncio
import glob
import hashlib

import pytest
import pytest_asyncio
import torch

from btard_wire.errors import ProtocolError
from worker_client.btard.kernels import sha256_hex
from worker_client.btard.tensors import HashedBytes, tensor_to_bytes, tensor_to_hashed_bytes
from worker_client.net import DataPlane, DataPlaneError
from worker_client.net.wire import BODY_CHUNK, MAX_HEADER_BYTES, read_body, read_request

from .conftest import remove_stale_hivemind_sockets
from .faulty import FaultyDataPlane

pytestmark = pytest.mark.asyncio(loop_scope="module")

RUN = "run-test"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def planes():
    before = set(glob.glob("/tmp/hivemind-*"))
    created: list[DataPlane] = []
    try:
        for cls in (FaultyDataPlane, DataPlane, DataPlane, DataPlane):  # a can lie on request (overrides)
            created.append(await cls.create(RUN, call_timeout=60.0, max_wait=30.0, allow_private=True))
        directory = {}
        for name, plane in zip("abcd", created):
            directory[name] = (plane.p2p_id, await plane.addrs())
        for plane in created:
            plane.set_directory(directory)
        yield dict(zip("abcd", created))
    finally:
        for plane in created:
            await plane.shutdown()
        remove_stale_hivemind_sockets(set(glob.glob("/tmp/hivemind-*")) - before)


async def test_it_scatters_gradient_parts_to_their_aggregators(planes):
    a, b, c = planes["a"], planes["b"], planes["c"]
    grad = torch.randn(30)
    parts = grad.split(10)
    # a owns the gradient; part j may be fetched only by aggregator j.
    for j, name in enumerate("abc"):
        a.publish(1, "grad", str(j), parts[j], allowed={name})
    got_b = await b.fetch("a", step=1, kind="grad", key="1", numel=10)
    got_c = await c.fetch("a", step=1, kind="grad", key="2", numel=10)
    assert torch.equal(got_b, parts[1]) and torch.equal(got_c, parts[2])
    assert b.traffic.bytes_received >= 40 and a.traffic.bytes_sent >= 80


async def test_it_refuses_a_part_to_a_peer_that_is_not_its_aggregator(planes):
    a, c = planes["a"], planes["c"]
    a.publish(2, "grad", "1", torch.ones(4), allowed={"b"})
    with pytest.raises(DataPlaneError) as err:
        await c.fetch("a", step=2, kind="grad", key="1", numel=4)
    assert err.value.code == "refused" and err.value.peer == "a"


async def test_it_all_gathers_aggregated_parts_published_after_the_request(planes):
    a, b = planes["a"], planes["b"]
    results = {name: torch.full((5,), float(i)) for i, name in enumerate("abcd")}

    async def publish_later():
        await asyncio.sleep(0.3)  # the fetch is already waiting on the server side
        for name, plane in planes.items():
            plane.publish(3, "agg", name, results[name])

    fetches = [a.fetch(owner, step=3, kind="agg", key=owner, numel=5, wait=30.0) for owner in "bc"]
    fetches += [b.fetch("c", step=3, kind="agg", key="c", numel=5, wait=30.0)]
    _, got_b, got_c, got_c_by_b = await asyncio.gather(publish_later(), *fetches)
    assert torch.equal(got_b, results["b"]) and torch.equal(got_c, results["c"])
    assert torch.equal(got_c_by_b, results["c"])


async def test_it_rejects_a_tensor_whose_size_differs_from_what_the_run_expects(planes):
    a, b = planes["a"], planes["b"]
    a.publish(4, "agg", "a", torch.ones(8))
    with pytest.raises(DataPlaneError) as err:
        await b.fetch("a", step=4, kind="agg", key="a", numel=1000)
    assert err.value.code == "size"


async def test_it_times_out_when_a_peer_withholds_its_part(planes):
    b = planes["b"]
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(DataPlaneError) as err:
        await b.fetch("a", step=5, kind="grad", key="1", numel=4, wait=60.0, timeout=1.0)
    assert err.value.code == "timeout" and err.value.peer == "a"
    assert loop.time() - t0 < 30  # bounded by the timeout, not by the server's wait


async def test_it_reports_a_missing_tensor_without_waiting_when_asked_not_to(planes):
    with pytest.raises(DataPlaneError) as err:
        await planes["c"].fetch("b", step=6, kind="agg", key="b", numel=3, wait=0.0)
    assert err.value.code == "not_found"


async def test_only_the_faulty_test_plane_serves_different_tensors_to_different_peers(planes):
    a, b, c = planes["a"], planes["b"], planes["c"]
    a.publish(7, "agg", "a", torch.zeros(3), header={"sha256": "honest"},
              overrides={"c": torch.ones(3)}, override_headers={"c": {"sha256": "forked"}})
    data_b, header_b = await b.fetch_bytes_with_header("a", step=7, kind="agg", key="a", numel=3)
    data_c, header_c = await c.fetch_bytes_with_header("a", step=7, kind="agg", key="a", numel=3)
    assert data_b == bytes(12) and header_b == {"sha256": "honest"}
    assert torch.equal(torch.frombuffer(bytearray(data_c), dtype=torch.float32), torch.ones(3))
    assert header_c == {"sha256": "forked"}
    with pytest.raises(TypeError):  # the production plane has no way to fork what it serves
        b.publish(7, "agg", "b", torch.zeros(3), overrides={"c": torch.ones(3)})


async def test_evidence_larger_than_an_envelope_is_fetched_by_its_hash_from_a_member_only(planes):
    from btard_wire.envelope import MAX_ENVELOPE_BYTES

    a, b, c, d = planes["a"], planes["b"], planes["c"], planes["d"]
    part = torch.randn(MAX_ENVELOPE_BYTES // 4 + 10_000)  # too large to travel inline in an accusation
    data = part.numpy().tobytes()
    sha = hashlib.sha256(data).hexdigest()
    asked = []

    def source(sha256, step, requester):
        asked.append((sha256, step, requester))
        return data if sha256 == sha and step == 11 and requester in {"b", "d"} else None

    a.set_evidence_source(source)
    try:
        got = await b.fetch_evidence("a", step=11, sha256=sha, numel=part.numel(), timeout=30.0)
    except DataPlaneError as exc:
        # the first stream to a fresh daemon was seen cut early in 2 of 5 full-suite runs on a 2-core machine
        # (never when run alone): this test is about who is served and what is checked, so it asks once more
        if exc.code != "unreachable":
            raise
        got = await b.fetch_evidence("a", step=11, sha256=sha, numel=part.numel(), timeout=30.0)
    assert got == data and asked[-1] == (sha, 11, "b")  # the server knows who asks, by its p2p identity
    with pytest.raises(DataPlaneError) as err:  # not a member of the group: the source serves nothing
        await c.fetch_evidence("a", step=11, sha256=sha, numel=part.numel(), timeout=30.0)
    assert err.value.code == "not_found"
    with pytest.raises(DataPlaneError) as err:  # the requester's size is checked before the body is read
        await b.fetch_evidence("a", step=11, sha256=sha, numel=10, timeout=30.0)
    assert err.value.code == "size"
    a.set_evidence_source(lambda sha256, step, requester: bytes(len(data)))  # a holder serving other bytes
    with pytest.raises(DataPlaneError) as err:
        await d.fetch_evidence("a", step=11, sha256=sha, numel=part.numel(), timeout=30.0)
    assert err.value.code == "hash" and err.value.peer == "a"


async def test_a_newcomer_downloads_the_state_from_several_donors_and_outvotes_a_liar(planes):
    a, b, c, d = planes["a"], planes["b"], planes["c"], planes["d"]
    state = torch.randn(2500)
    a.publish_state(9, state, chunk_numel=1000)
    b.publish_state(9, state, chunk_numel=1000)
    got, per_donor, _ = await d.download_state(["a", "b"], step=9, numel=2500)
    assert torch.equal(got, state)
    assert set(per_donor) == {"a", "b"}  # both donors served chunks, not one
    assert sum(per_donor.values()) == 4 * 2500

    # A lying donor serving a different state is outvoted by the two honest ones and never used.
    c.publish_state(9, state + 1.0, chunk_numel=1000)
    got2, per_donor2, info = await d.download_state(["a", "c", "b"], step=9, numel=2500)
    assert torch.equal(got2, state)
    assert "c" not in per_donor2 and set(per_donor2) == {"a", "b"}
    assert info["step"] == 9 and info["numel"] == 2500


async def test_it_pings_a_peer_at_its_announced_address_and_reports_a_dead_one(planes):
    a, b, c = planes["a"], planes["b"], planes["c"]
    answered_before = b.traffic.bytes_sent
    rtt = await a.ping(b.p2p_id, await b.addrs(), timeout=60.0)
    assert b.traffic.bytes_sent > answered_before  # b's own handler echoed our nonce, nobody else's
    assert isinstance(rtt, float)
    gone = await DataPlane.create("other-run", call_timeout=3.0, allow_private=True)
    gone_id, gone_addrs = gone.p2p_id, await gone.addrs()
    await gone.shutdown()
    with pytest.raises(DataPlaneError) as err:
        await a.ping(gone_id, gone_addrs, timeout=3.0)
    assert err.value.code in {"unreachable", "timeout"}
    # an address that answers with another identity is no proof: the ping dials the id, not the address
    with pytest.raises(DataPlaneError) as err:
        await c.ping(gone_id, await b.addrs(), timeout=5.0)
    assert err.value.code in {"unreachable", "timeout"}


async def test_it_refuses_a_body_length_other_than_expected_before_reading_it():
    reader = asyncio.StreamReader()
    reader.feed_data((1 << 40).to_bytes(8, "big") + b"\0" * 16)
    reader.feed_eof()
    with pytest.raises(ProtocolError, match="announced"):
        await read_body(reader, expected_bytes=16)


async def test_it_rejects_an_oversized_header():
    reader = asyncio.StreamReader()
    reader.feed_data((MAX_HEADER_BYTES + 1).to_bytes(4, "big"))
    reader.feed_eof()
    with pytest.raises(ProtocolError, match="exceeds"):
        await read_request(reader)


async def test_pushed_parts_are_accepted_only_in_the_size_the_layout_expects(planes):
    a, b, c = planes["a"], planes["b"], planes["c"]
    inbox: list = []
    layout: dict = {}
    b.set_receiver(lambda step, kind, key, sender: layout.get((step, kind, key, sender)),
                   lambda step, kind, key, sender, data, header: inbox.append((step, kind, key, sender, data, header)))

    async def learn_the_step_later():
        await asyncio.sleep(0.3)  # the sender is a step ahead: the put waits for the layout
        layout[(10, "part", "1", "a")] = 4
        layout[(10, "part", "1", "c")] = 4
        b.notify_layout()

    part = torch.arange(4, dtype=torch.float32)
    await asyncio.gather(learn_the_step_later(),
                         a.send("b", step=10, kind="part", key="1", data=part, header={"sha256": "x"}, wait=30.0))
    assert inbox == [(10, "part", "1", "a", part.numpy().tobytes(), {"sha256": "x"})]

    with pytest.raises(DataPlaneError) as err:  # wrong size: refused before the body is read
        await c.send("b", step=10, kind="part", key="1", data=torch.zeros(1000), wait=0.0)
    assert err.value.code == "size"
    with pytest.raises(DataPlaneError) as err:  # a slot nobody expects
        await c.send("b", step=10, kind="part", key="0", data=torch.zeros(4), wait=0.2)
    assert err.value.code == "refused"
    assert len(inbox) == 1


async def test_a_pushed_body_arrives_carrying_the_sha256_taken_while_it_was_received(planes):
    a, b = planes["a"], planes["b"]
    numel = (2 * BODY_CHUNK + 12) // 4  # three chunks, the last a short one
    inbox: list = []
    b.set_receiver(lambda step, kind, key, sender: numel if (step, kind, sender) == (20, "part", "a") else None,
                   lambda step, kind, key, sender, data, header: inbox.append(data))
    part = torch.randn(numel)
    await a.send("b", step=20, kind="part", key="1", data=part, wait=5.0)
    (data,) = inbox
    assert type(data) is HashedBytes and data == part.numpy().tobytes()
    assert data.sha256 == hashlib.sha256(part.numpy().tobytes()).hexdigest() == sha256_hex(data)


async def test_a_fetched_body_carries_the_sha256_of_its_bytes(planes):
    a, b = planes["a"], planes["b"]
    tensor = torch.randn(BODY_CHUNK // 4 + 3)
    a.publish(21, "aggregate", "0", tensor)
    data = await b.fetch_bytes("a", step=21, kind="aggregate", key="0", numel=tensor.numel())
    assert type(data) is HashedBytes and data.sha256 == hashlib.sha256(tensor.numpy().tobytes()).hexdigest()


async def test_a_chunk_tampered_in_transit_is_hashed_as_it_arrived_so_the_commitment_check_fails():
    original = torch.randn(100).numpy().tobytes()
    tampered = bytearray(original)
    tampered[150] ^= 0x01  # one bit, in the third of seven 64-byte chunks
    reader = asyncio.StreamReader()
    reader.feed_data(len(tampered).to_bytes(8, "big") + bytes(tampered))
    reader.feed_eof()
    body = await read_body(reader, expected_bytes=400, chunk=64)
    commitment = hashlib.sha256(original).hexdigest()
    assert body == bytes(tampered)
    assert body.sha256 == hashlib.sha256(bytes(tampered)).hexdigest()
    assert sha256_hex(body) != commitment  # what the core compares with the signed commitment


async def test_an_empty_body_carries_the_sha256_of_nothing():
    reader = asyncio.StreamReader()
    reader.feed_data((0).to_bytes(8, "big"))
    reader.feed_eof()
    body = await read_body(reader, expected_bytes=0)
    assert body == b"" and body.sha256 == hashlib.sha256(b"").hexdigest()


async def test_the_core_uses_the_digest_a_received_body_carries_and_hashes_anything_else():
    carried = HashedBytes.of_chunks([b"abc", b"def"], "f" * 64)
    assert carried == b"abcdef"
    assert sha256_hex(carried) == "f" * 64  # no second pass over a received body
    # a slice or a copy is plain bytes: hashed the ordinary way
    assert type(carried[:3]) is bytes and sha256_hex(carried[:3]) == hashlib.sha256(b"abc").hexdigest()
    assert sha256_hex(bytes(carried)) == hashlib.sha256(b"abcdef").hexdigest()


def test_a_senders_part_bytes_carry_their_own_digest_and_a_tampered_copy_is_hashed_anew():
    # what a peer commits to and hands to its transport (peer.py: parts and aggregates); a receiver in
    # the same process (the simulator) reads the digest instead of hashing the same object again
    tensor = torch.randn(257)
    part = tensor_to_hashed_bytes(tensor)
    assert type(part) is HashedBytes and part == tensor_to_bytes(tensor)
    assert sha256_hex(part) == hashlib.sha256(tensor.numpy().tobytes()).hexdigest()
    # a behaviour that alters the bytes makes a new object: plain bytes, hashed, so the commitment fails
    flipped = bytearray(part)
    flipped[0] ^= 0x80
    assert type(bytes(flipped)) is bytes and sha256_hex(bytes(flipped)) != sha256_hex(part)
    assert sha256_hex(part[:-4] + part[-4:]) == sha256_hex(part)  # a rebuilt copy: hashed, same digest
    assert tensor_to_hashed_bytes(torch.zeros(0)).sha256 == hashlib.sha256(b"").hexdigest()


async def test_a_plane_told_not_to_hash_delivers_plain_bytes(planes):
    a, c = planes["a"], planes["c"]
    tensor = torch.randn(10)
    a.publish(22, "aggregate", "0", tensor)
    c.hash_bodies = False
    try:
        data = await c.fetch_bytes("a", step=22, kind="aggregate", key="0", numel=10)
    finally:
        c.hash_bodies = True
    assert type(data) is bytes and data == tensor.numpy().tobytes()
