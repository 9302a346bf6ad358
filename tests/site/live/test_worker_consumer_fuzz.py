"""Property-based fuzzing of the site's untrusted inputs (hypothesis): every worker-socket message type
through the real consumer, the envelope decoder and the control-message parser, the checkpoint upload
and the JSON API. Properties: no 5xx and no ``internal`` error, the consumer survives (it still answers),
the peer's state stays consistent, and nothing is stored that should not be (every stored broadcast is
signed by its sender, fits its phase's schema and its sender's share; every stored report is bounded).

``HYPOTHESIS_PROFILE=ci`` (default: a few hundred cases in all, well under a minute) or ``thorough``
(thousands) chooses how hard to look."""

from __future__ import annotations

import json
import math
import os

import pytest
from asgiref.sync import async_to_sync
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from btard_wire import BOARD_PHASES, BROADCAST_PHASES
from btard_wire.envelope import Identity, decode_envelope, sign_envelope, verify_envelope
from btard_wire.errors import ControlError, ProtocolError
from btard_wire.payloads import parse_payload

hsettings.register_profile("ci", max_examples=60, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                                 HealthCheck.data_too_large])
hsettings.register_profile("thorough", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                                 HealthCheck.data_too_large])
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
# raw peer input in a cache key (Redis takes it; memcached and key hygiene do not) fails the test
pytestmark = pytest.mark.filterwarnings("error::django.core.cache.backends.base.CacheKeyWarning")
hsettings.load_profile(PROFILE)
SCALE = 1 if PROFILE == "ci" else 10

# --- strategies ---------------------------------------------------------------------------------------
scalars = (st.none() | st.booleans() | st.integers(min_value=-(2 ** 70), max_value=2 ** 70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40)
           | st.sampled_from(["", "0" * 64, "ab" * 32, "a" * 40, "NaN", "Infinity", "\u0000", "<b>x</b>"]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
hex64 = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
steps = st.integers(min_value=-2, max_value=4) | st.integers() | json_values


def field(plausible):
    """Mostly a plausible value, sometimes anything JSON can hold, sometimes missing."""
    return st.one_of(plausible, plausible, json_values)


def message(kind: str, fields: dict):
    """A worker message of ``kind``: its known fields (each maybe junk or missing) and maybe an extra one."""
    optional = st.fixed_dictionaries({}, optional={name: field(s) for name, s in fields.items()})
    extra = st.dictionaries(st.text(max_size=6), json_values, max_size=1)
    return st.tuples(optional, extra, st.booleans()).map(
        lambda t: {"type": kind, **t[0], **(t[1] if t[2] else {})})


def payloads(phase: str, peers: list[str]):
    peer = st.sampled_from(peers) | st.text(alphabet="0123456789abcdef", min_size=40, max_size=40)
    known = {
        "commit": {"hashes": st.lists(hex64, min_size=1, max_size=3)},
        "agg_result": {"part": st.integers(-1, 3), "hash": hex64,
                       "distances": st.dictionaries(peer, st.floats(allow_nan=True), max_size=3)},
        "mprng_commit": {"hash": hex64},
        "mprng_reveal": {"value": hex64},
        "scalars": {"values": st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=0, max_size=3)},
        "accuse": {"accused": peer, "kind": st.sampled_from(["part_mismatch", "withheld_reveal", "nonsense"]),
                   "evidence": st.lists(hex64, max_size=2), "reason": st.text(max_size=50)},
        "eliminate": {"target": peer, "reason": st.text(max_size=50)},
        "verdict": {"guilty": peer, "accused": peer, "accuser": peer,
                    "kind": st.sampled_from(["part_mismatch", "withheld_reveal", "bad_broadcast", "x"]),
                    "evidence": st.lists(hex64, max_size=2), "reason": st.text(max_size=50)},
        "validation": {"target": peer, "target_step": st.integers(-1, 3), "ok": st.booleans(),
                       "accusations": st.lists(hex64, max_size=2), "silent": st.lists(peer, max_size=2)},
    }.get(phase, {})
    body = st.fixed_dictionaries({}, optional={k: field(v) for k, v in known.items()})
    return st.tuples(body, st.booleans(), json_values).map(
        lambda t: ({"type": phase, **t[0]} if t[1] else (t[2] if isinstance(t[2], dict) else {"junk": t[2]})))


def worker_messages(identity: Identity, run_id: int, peers: list[str]):
    phase = st.sampled_from(BROADCAST_PHASES) | st.text(max_size=10)

    @st.composite
    def signed_broadcast(draw):
        p = draw(phase)
        payload = draw(payloads(p, peers))
        step = draw(st.integers(min_value=0, max_value=4))
        run = draw(st.sampled_from([str(run_id), str(run_id), "999", ""]))
        try:
            env = sign_envelope(identity, run=run or "x", step=step, phase=p[:32] or "x", payload=payload)
            data = env.model_dump()
        except (ValueError, ProtocolError):  # unsignable (NaN): send the unsigned body instead
            data = {"v": 1, "run": run, "step": step, "phase": p, "sender": identity.peer_id,
                    "nonce": "0" * 32, "payload": payload, "signature": ""}
        if draw(st.booleans()):  # tamper after signing
            data = {**data, draw(st.sampled_from(list(data))): draw(json_values)}
        return {"type": "broadcast", "envelope": data}

    board_phase = st.sampled_from(BOARD_PHASES) | st.text(max_size=10)
    return st.one_of(
        message("heartbeat", {"status": st.sampled_from(["training", "error", "sleeping"]),
                              "detail": st.text(max_size=600), "step": steps,
                              "bytes_sent": st.integers(), "bytes_received": st.integers()}),
        message("step_report", {"step": steps, "outcome": st.sampled_from(["applied", "dropped", "probation", "?"]),
                                "loss": st.floats(allow_nan=True, allow_infinity=True) | st.none(),
                                "accuracy": st.floats(allow_nan=True) | st.none(),
                                "samples": st.integers(min_value=-1, max_value=2 ** 80),
                                "banned": st.lists(st.sampled_from(peers), max_size=3),
                                "eliminated": st.lists(st.lists(st.sampled_from(peers), max_size=2), max_size=2),
                                "missing": st.lists(st.sampled_from(peers), max_size=3),
                                "state_sha256": hex64 | st.none()}),
        message("phase_close", {"step": steps, "phase": board_phase}),
        message("board_request", {"step": steps, "phase": board_phase,
                                  "senders": st.lists(st.sampled_from(peers), max_size=3)}),
        message("reachability_request", {"p2p_id": st.text(max_size=20),
                                         "p2p_addrs": st.lists(st.text(max_size=30), max_size=3)}),
        message("reachability_result", {"request_id": st.text(max_size=70), "reachable": st.booleans(),
                                        "detail": st.text(max_size=50)}),
        message("hello", {"public_key": st.just(identity.public_key_b64) | st.text(max_size=70),
                          "proof": st.text(max_size=130)}),
        message("teleport", {"x": json_values}),
        signed_broadcast(),
    )


raw_texts = st.one_of(
    st.text(max_size=200),
    json_values.map(json.dumps),
    st.integers(min_value=1, max_value=3000).map(lambda n: '{"type": "heartbeat", "detail": ' + "[" * n + "]" * n + "}"),
    st.binary(max_size=100).map(lambda b: b.decode("latin-1")),
)


# --- decoders (fast: many cases) ----------------------------------------------------------------------
@hsettings(max_examples=300 * SCALE)
@given(data=st.one_of(st.binary(max_size=300), raw_texts.map(str.encode),
                      json_values.map(lambda v: json.dumps(v).encode())))
def test_the_envelope_decoder_returns_an_envelope_or_a_coded_error(data):
    try:
        envelope = decode_envelope(data)
    except ProtocolError as exc:
        assert exc.code in {"too_large", "malformed", "schema", "version"}
        return
    try:
        verify_envelope(envelope, Identity.from_seed(b"fuzz").public_key_b64)
    except (ProtocolError, ValueError):
        pass


@hsettings(max_examples=300 * SCALE)
@given(text=raw_texts | json_values.map(lambda v: json.dumps({"type": "step_report", "step": 0, "x": v})))
def test_the_control_parser_returns_a_message_or_a_coded_error(text):
    from btard_wire.control import parse_worker_message

    try:
        parse_worker_message(text)
    except ControlError as exc:
        assert exc.code in {"too_large", "malformed", "schema", "version"}


# --- the worker socket --------------------------------------------------------------------------------
def _stored_state_is_consistent(run) -> None:
    """Everything stored is what the site may store."""
    from runs.models import BroadcastLog, Peer, StepReportRecord
    from runs.services import MAX_REPORTED_LOSS, MAX_SAMPLE_CLAIM_FACTOR

    from btard_wire import board

    keys = {p.peer_id: p.public_key for p in Peer.objects.filter(run=run)}
    per_slot: dict = {}
    for entry in BroadcastLog.objects.filter(run=run):
        from btard_wire.envelope import Envelope

        env = Envelope.model_validate(entry.envelope)
        verify_envelope(env, keys[env.sender])  # signed by its sender
        parse_payload(env.phase, env.payload)  # fits its phase's schema
        assert env.run == str(run.id)
        per_slot[(env.step, env.phase, env.sender)] = per_slot.get((env.step, env.phase, env.sender), 0) + 1
    for (step, phase, _), count in per_slot.items():
        assert count <= board.sender_message_limit(phase, board_phases=BOARD_PHASES, group_size=2)
    for r in StepReportRecord.objects.filter(step_record__run=run):
        assert 0 <= r.samples <= run.batch_size * MAX_SAMPLE_CLAIM_FACTOR
        assert r.loss is None or (math.isfinite(r.loss) and abs(r.loss) <= MAX_REPORTED_LOSS)
    assert Peer.objects.filter(run=run).count() == 2  # nobody else joined


@pytest.fixture
def fuzz_run(db):
    from tests.factories import RunFactory

    return RunFactory(name="fuzz-run", min_peers=2, peers_per_group=4, checkpoint_every=0)


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(240)
def test_every_worker_message_type_leaves_the_consumer_alive_and_the_state_consistent(fuzz_run, alice, bob):
    from channels.layers import channel_layers
    from runs.models import Peer
    from volunteers import services as volunteers

    from btard_wire.control import CLOSE_BANNED
    from tests.site.wsclient import send

    raws = [volunteers.create_worker_token(user=u, name="fuzz").raw for u in (alice, bob)]
    ids = [Identity.from_seed(f"fuzz-{i}".encode()) for i in range(2)]
    peers = [i.peer_id for i in ids] + ["0" * 40]
    seen_codes: set[str] = set()

    pings = iter(range(10 ** 9, 2 * 10 ** 9))

    async def joined(raw, seed):
        from tests.site.wsclient import challenge_of, hello_for, open_worker

        comm = await open_worker(raw)
        await send(comm, hello_for(Identity.from_seed(seed), await challenge_of(comm)))
        out = await comm.receive_output(timeout=10)
        if out["type"] == "websocket.close":  # banned by what an earlier example posted: a consistent end
            assert out["code"] == CLOSE_BANNED, out
            return None
        assert json.loads(out["text"])["type"] == "welcome", out
        return comm

    async def scenario(messages):
        channel_layers.backends.pop("default", None)
        socks = [await joined(raw, f"fuzz-{i}".encode()) for i, raw in enumerate(raws)]
        comm = socks[0]
        try:
            if comm is None:
                return
            for msg in messages:
                if isinstance(msg, str):
                    await comm.send_to(text_data=msg or " ")
                else:
                    await send(comm, msg)
            ping = next(pings)  # answered (stale_step, naming it) only if the consumer survived all the above
            await send(comm, {"type": "phase_close", "step": ping, "phase": "commit"})
            while True:
                out = await comm.receive_output(timeout=10)
                if out["type"] == "websocket.close":
                    assert out["code"] == CLOSE_BANNED, out  # a ban the fuzzer earned is the only close
                    return
                answer = json.loads(out["text"])
                if answer["type"] == "error":
                    assert answer["code"] != "internal", answer
                    seen_codes.add(answer["code"])
                    if str(ping) in answer["message"]:
                        break
        finally:
            for c in socks:
                if c is not None:
                    await c.disconnect()

    @hsettings(max_examples=60 * SCALE)
    @given(messages=st.lists(worker_messages(ids[0], fuzz_run.pk, peers) | raw_texts, min_size=1, max_size=6))
    def run_example(messages):
        async_to_sync(scenario)(messages)
        me = Peer.objects.get(run=fuzz_run, peer_id=ids[0].peer_id)
        assert me.role in {"active", "banned"} and me.user_id == alice.id

    run_example()
    _stored_state_is_consistent(fuzz_run)
    assert "schema" in seen_codes  # the fuzzer reached the parser and beyond


# --- checkpoint upload and the JSON API ----------------------------------------------------------------
@pytest.mark.django_db
@pytest.mark.timeout(120)
def test_the_checkpoint_upload_answers_4xx_and_stores_nothing_unconfirmed(run, client, settings, tmp_path):
    from runs import services as runs
    from runs.models import Checkpoint, Run
    from volunteers import services as volunteers

    from tests.factories import UserFactory, make_peer

    settings.CHECKPOINT_DIR = tmp_path / "ck"
    Run.objects.filter(pk=run.pk).update(checkpoint_every=2, current_step=1)
    issued = volunteers.create_worker_token(user=UserFactory(), name="box")
    make_peer(run=run, user=issued.token.user, seed="fz0", token=issued.token)
    make_peer(run=run, seed="fz1")
    runs.start_step_if_ready(run=run)

    header = st.binary(max_size=8) | st.integers(0, 2 ** 64 - 1).map(lambda n: n.to_bytes(8, "little"))
    body = st.one_of(st.binary(max_size=2000),
                     st.tuples(header, json_values.map(lambda v: json.dumps(v).encode()), st.binary(max_size=64))
                     .map(lambda t: b"".join(t)))

    @hsettings(max_examples=80 * SCALE)
    @given(data=body, step=st.integers(-1, 5), token=st.sampled_from([issued.raw, "btard_00000000_x", ""]))
    def upload(data, step, token):
        path = f"/api/runs/{run.pk}/checkpoints/{step}/" if step >= 0 else f"/api/runs/{run.pk}/checkpoints/x/"
        answer = client.post(path, data=data, content_type="application/octet-stream",
                             HTTP_AUTHORIZATION=f"Bearer {token}")
        assert answer.status_code < 500
        assert answer.status_code != 201  # no member reported any state: nothing is confirmed

    upload()
    assert not Checkpoint.objects.exists() and not any(tmp_path.rglob("*.safetensors"))


@pytest.mark.django_db
@pytest.mark.timeout(120)
def test_the_json_api_never_answers_5xx_or_non_standard_json(run, client):
    from tests.factories import make_peer

    make_peer(run=run, seed="api0")
    paths = st.sampled_from(["/api/runs/", f"/api/runs/{run.pk}/", "/api/bans/", "/api/worker/check",
                             "/api/runs/999999999999999999999/", "/api/runs/0/"])
    query = st.dictionaries(st.text(max_size=8), st.text(max_size=30), max_size=3)

    @hsettings(max_examples=100 * SCALE)
    @given(path=paths, params=query, auth=st.text(max_size=60), method=st.sampled_from(["get", "post", "head"]))
    def call(path, params, auth, method):
        try:
            answer = getattr(client, method)(path, params, HTTP_AUTHORIZATION=auth)
        except (ValueError, UnicodeError):  # the test client refuses to build such a request at all
            return
        assert answer.status_code < 500, (path, params, answer.status_code)
        if answer.status_code == 200 and method == "get":
            json.loads(answer.content, parse_constant=lambda c: pytest.fail(f"{c} in {path}"))

    call()
