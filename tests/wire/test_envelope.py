"""Envelopes: sign, verify, decode, replay; identities; the coded errors every boundary raises."""

from __future__ import annotations

import pickle

import pytest
from pydantic import ValidationError

from btard_wire import PROTOCOL_VERSION
from btard_wire.envelope import (
    Envelope,
    Identity,
    ReplayGuard,
    b64d,
    canonical_json,
    decode_envelope,
    peer_id_from_public_key,
    sign_envelope,
    verify_envelope,
)
from btard_wire.errors import CodedError, ControlError, ProtocolError

RUN = "wire-envelope"


def signed(identity, **overrides):
    fields = {"run": RUN, "step": 2, "phase": "mprng_reveal", "payload": {"type": "mprng_reveal", "value": "ab" * 32}}
    fields.update(overrides)
    return sign_envelope(identity, **fields)


def test_a_signed_envelope_verifies_against_its_senders_key_and_survives_the_wire():
    alice = Identity.from_seed(b"alice")
    env = signed(alice)
    assert env.sender == alice.peer_id == peer_id_from_public_key(alice.public_key_bytes)
    verify_envelope(env, alice.public_key_b64)
    decoded = decode_envelope(env.model_dump_json())
    assert decoded == env and decoded.digest() == env.digest()
    verify_envelope(decoded, alice.public_key_b64)


@pytest.mark.parametrize("change,code", [
    ({"payload": {"type": "mprng_reveal", "value": "cd" * 32}}, "signature"),
    ({"step": 3}, "signature"),
    ({"run": "another-run"}, "signature"),
    ({"v": PROTOCOL_VERSION + 1}, "version"),
])
def test_any_change_to_a_signed_envelope_is_refused_with_a_code(change, code):
    alice = Identity.from_seed(b"alice")
    tampered = signed(alice).model_copy(update=change)
    with pytest.raises(ProtocolError) as info:
        verify_envelope(tampered, alice.public_key_b64)
    assert info.value.code == code


def test_an_envelope_is_refused_under_a_key_that_is_not_its_senders():
    alice, mallory = Identity.from_seed(b"alice"), Identity.from_seed(b"mallory")
    with pytest.raises(ProtocolError) as info:
        verify_envelope(signed(alice), mallory.public_key_b64)
    assert info.value.code == "sender"
    forged = signed(mallory).model_copy(update={"sender": alice.peer_id})  # claims alice, signed by mallory
    with pytest.raises(ProtocolError) as info:
        verify_envelope(forged, alice.public_key_b64)
    assert info.value.code == "signature"


def test_the_replay_guard_refuses_a_repeated_nonce_and_forgets_what_it_is_told_to():
    alice = Identity.from_seed(b"alice")
    guard = ReplayGuard()
    first = signed(alice)
    guard.check_and_remember(first)
    with pytest.raises(ProtocolError) as info:
        guard.check_and_remember(signed(alice, nonce=first.nonce, step=5))
    assert info.value.code == "replay"
    guard.check_and_remember(signed(alice))  # a new nonce is fine
    guard.forget_before(set())
    guard.check_and_remember(first)  # forgotten: accepted again


def test_decoding_refuses_what_is_not_an_envelope_with_a_reason():
    alice = Identity.from_seed(b"alice")
    raw = signed(alice).model_dump()
    for broken, code, words in (
        ({**raw, "sender": "not-hex"}, "schema", "invalid envelope: sender:"),
        ({**raw, "extra": 1}, "schema", "invalid envelope: extra:"),
        ({k: v for k, v in raw.items() if k != "nonce"}, "schema", "invalid envelope: nonce:"),
    ):
        with pytest.raises(ProtocolError) as info:
            decode_envelope(canonical_json(broken))
        assert info.value.code == code and str(info.value).startswith(words)
    with pytest.raises(ProtocolError) as info:
        decode_envelope(b"x" * 300_000)
    assert info.value.code == "too_large"


def test_canonical_json_is_sorted_compact_and_refuses_nan():
    assert canonical_json({"b": 1, "a": [1.5, "\u00e9"]}) == b'{"a":[1.5,"\\u00e9"],"b":1}'
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_an_identity_round_trips_through_its_private_bytes_and_refuses_a_wrong_length():
    alice = Identity.generate()
    again = Identity.from_private_bytes(alice.private_bytes())
    assert again.peer_id == alice.peer_id
    verify_envelope(signed(again), alice.public_key_b64)
    with pytest.raises(ProtocolError, match="key.bin is not a 32-byte Ed25519 private key"):
        Identity.from_private_bytes(b"\x00" * 31, what="key.bin")


def test_bad_base64_and_bad_keys_are_protocol_errors():
    with pytest.raises(ProtocolError, match="signature is not valid base64"):
        b64d("***", what="signature")
    with pytest.raises(ProtocolError, match="32 bytes"):
        peer_id_from_public_key(b"\x01" * 31)
    with pytest.raises(ProtocolError):
        verify_envelope(signed(Identity.from_seed(b"a")), "AAAA")


def test_coded_errors_share_one_shape_and_survive_pickling():
    errors = [ProtocolError("bad thing"), ProtocolError("too big", code="too_large"),
              ControlError("schema", "invalid message: x: y"), CodedError(4005, "banned")]
    assert [e.code for e in errors] == ["protocol", "too_large", "schema", 4005]
    for error in errors:
        assert isinstance(error, CodedError) and str(error) == error.message
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and (copy.code, copy.message, str(copy)) == (error.code, error.message,
                                                                                      str(error))
    assert isinstance(errors[0], ValueError) and isinstance(errors[2], ValueError)


def test_an_envelope_is_frozen():
    env = signed(Identity.from_seed(b"alice"))
    with pytest.raises(ValidationError, match="frozen"):
        env.step = 9  # type: ignore[misc]
    assert isinstance(env, Envelope)
