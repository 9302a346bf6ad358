"""Payload schemas of the broadcast phases: malformed input is a clear ProtocolError, never another exception.

(Moved here from tests/protocol/test_messages.py: these need neither torch nor a peer.)
"""

from __future__ import annotations

import json
import random

import pytest

from btard_wire import BROADCAST_PHASES
from btard_wire import payloads as M
from btard_wire.envelope import Identity, decode_envelope, sign_envelope
from btard_wire.errors import ProtocolError

RUN = "wire-test"


def _random_json(rng: random.Random, depth=0):
    choice = rng.randrange(9 if depth < 3 else 6)
    if choice == 0:
        return rng.randint(-10**40, 10**40)
    if choice == 1:
        return rng.choice([1e308 * 10, -1e308 * 10, float("nan"), 0.1, -0.0])
    if choice == 2:
        return "".join(rng.choice("abcdef0123456789\u00e9\x00\"") for _ in range(rng.randrange(70)))
    if choice == 3:
        return None
    if choice == 4:
        return rng.choice([True, False])
    if choice == 5:
        return "ab" * 32
    if choice == 6:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(5))]
    keys = ["type", "hashes", "hash", "part", "distances", "values", "accused", "kind", "evidence", "data",
            "header", "target", "guilty", "accuser", "reason", "ok", "silent", "value", "x"]
    return {rng.choice(keys): _random_json(rng, depth + 1) for _ in range(rng.randrange(6))}


def _valid_envelope():
    ident = Identity.from_seed(b"wire:1")
    return sign_envelope(ident, run=RUN, step=3, phase="mprng_commit",
                         payload={"type": "mprng_commit", "hash": "ab" * 32})


def test_fuzzed_bytes_and_json_never_escape_as_anything_but_protocol_error():
    rng = random.Random(1234)
    valid = _valid_envelope().model_dump_json().encode()
    samples = []
    for _ in range(300):
        samples.append(bytes(rng.randrange(256) for _ in range(rng.randrange(200))))  # random bytes
        samples.append(valid[:rng.randrange(len(valid))])  # truncated JSON
        obj = json.loads(valid)
        obj[rng.choice(list(obj))] = _random_json(rng)  # wrong types / huge numbers
        samples.append(json.dumps(obj).encode())
    samples.append(b"x" * (300 * 1024))  # over the size limit
    codes: dict[str, int] = {}
    parsed = 0
    for data in samples:
        try:
            env = decode_envelope(data)  # anything but ProtocolError fails the test
        except ProtocolError as exc:
            codes[exc.code] = codes.get(exc.code, 0) + 1
            continue
        try:
            model = M.parse_payload(env.phase, env.payload)
        except ProtocolError as exc:
            codes[exc.code] = codes.get(exc.code, 0) + 1
            continue
        assert model.type == env.phase
        parsed += 1
    assert set(codes) <= {"too_large", "malformed", "schema", "protocol"}
    assert codes.get("too_large") == 1 and codes.get("malformed", 0) >= 300 and codes.get("schema", 0) >= 100
    assert parsed >= 1  # a field replaced by a value it accepts (the signature, say) still parses


@pytest.mark.parametrize("phase", BROADCAST_PHASES)
def test_fuzzed_payloads_of_every_phase_raise_protocol_error_or_parse(phase):
    rng = random.Random(hash(phase) & 0xFFFF)
    refused = 0
    for _ in range(300):
        payload = _random_json(rng)
        if isinstance(payload, dict) and rng.random() < 0.7:
            payload["type"] = phase
        try:
            model = M.parse_payload(phase, payload)
        except ProtocolError as exc:
            assert str(exc)  # a reason, always
            refused += 1
            continue
        assert model.type == phase
    assert refused > 0


def test_non_finite_and_huge_numbers_in_payloads_are_rejected():
    bad = [
        ("scalars", {"type": "scalars", "values": [1.0, float("nan")]}),
        ("scalars", {"type": "scalars", "values": [float("inf")]}),
        ("agg_result", {"type": "agg_result", "part": 0, "hash": "ab" * 32, "distances": {"a" * 40: -1.0}}),
        ("agg_result", {"type": "agg_result", "part": 10**30, "hash": "ab" * 32, "distances": {}}),
        ("commit", {"type": "commit", "hashes": ["zz" * 32]}),
        ("commit", {"type": "commit", "hashes": ["ab" * 32] * 5000}),
        ("verdict", {"type": "verdict", "guilty": "a" * 40, "accused": "a" * 40, "kind": "made_up"}),
        ("eliminate", {"type": "eliminate", "target": "a" * 40, "reason": "x", "extra": 1}),
        ("commit", {"type": "scalars", "values": [1.0]}),
        ("nonsense", {"type": "nonsense"}),
        ("commit", ["not", "an", "object"]),
    ]
    for phase, payload in bad:
        with pytest.raises(ProtocolError):
            M.parse_payload(phase, payload)


def test_a_schema_error_names_the_phase_and_the_field():
    with pytest.raises(ProtocolError) as info:
        M.parse_payload("scalars", {"type": "scalars", "values": [1.0, "x"]})
    assert info.value.code == "schema"
    assert str(info.value).startswith("invalid scalars payload: scalars.values.1: ")


def test_the_site_facing_payloads_keep_their_field_names():
    v = M.VerdictPayload(guilty="a" * 40, accuser=None, accused="a" * 40, kind=M.FaultKind.recalc,
                         evidence=["ab" * 32], reason="r")
    assert set(M.payload_dict(v)) == {"type", "guilty", "accuser", "accused", "kind", "evidence", "reason"}
    assert M.payload_dict(v)["kind"] == "recalc" and M.payload_dict(v)["accuser"] is None
    e = M.EliminatePayload(target="b" * 40, reason="part never arrived")
    assert M.payload_dict(e) == {"type": "eliminate", "target": "b" * 40, "reason": "part never arrived"}


def test_a_fault_kind_reads_as_its_stored_value_in_text():
    # the site writes ``f"{payload.kind}: ..."`` into ban reasons and stores the kind as a string
    assert f"{M.FaultKind.wrong_scalar}: x" == "wrong_scalar: x"
    assert str(M.FaultKind.recalc) == "recalc" and M.FaultKind("recalc") == "recalc"


def test_every_broadcast_phase_has_exactly_one_payload_schema():
    assert set(M.PAYLOAD_TYPES) == set(BROADCAST_PHASES)
    for phase, model in M.PAYLOAD_TYPES.items():
        assert model.model_fields["type"].default == phase
