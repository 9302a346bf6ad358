"""The one "parse untrusted JSON" helper: size cap, depth cap, object check, version check, schema errors."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel, ConfigDict, Field

from btard_wire import PROTOCOL_VERSION
from btard_wire.control import parse_site_message, parse_worker_message
from btard_wire.envelope import decode_envelope
from btard_wire.errors import CodedError, ControlError, ProtocolError
from btard_wire.json import MAX_DEPTH, depth, first_error, load_object, parse_model, validate


class Point(BaseModel):
    model_config = ConfigDict(extra="forbid")
    v: int = PROTOCOL_VERSION
    x: int = Field(ge=0)
    tags: list[str] = Field(default_factory=list)


def nested(levels: int) -> str:
    """A JSON object whose value nests ``levels`` levels in all (the object itself is level 1)."""
    return '{"x": ' + "[" * (levels - 1) + "]" * (levels - 1) + "}"


def test_it_accepts_an_object_at_exactly_the_size_limit_and_refuses_one_byte_more():
    data = json.dumps({"x": 1, "pad": "a" * 50}).encode()
    assert load_object(data, max_bytes=len(data)) == {"x": 1, "pad": "a" * 50}
    with pytest.raises(ProtocolError) as info:
        load_object(data + b" ", max_bytes=len(data))
    assert info.value.code == "too_large"
    assert str(info.value) == f"message of {len(data) + 1} bytes exceeds the limit of {len(data)} bytes"


def test_it_counts_the_size_of_text_in_utf8_bytes():
    text = json.dumps({"x": "\u00e9" * 10}, ensure_ascii=False)  # 10 characters, 20 bytes
    with pytest.raises(ProtocolError) as info:
        load_object(text, max_bytes=len(text) + 5)
    assert info.value.code == "too_large"


def test_it_accepts_the_depth_limit_and_refuses_one_level_more():
    assert depth(load_object(nested(MAX_DEPTH), max_bytes=10_000)) == MAX_DEPTH
    with pytest.raises(ProtocolError) as info:
        load_object(nested(MAX_DEPTH + 1), max_bytes=10_000)
    assert info.value.code == "malformed" and f"deeper than {MAX_DEPTH}" in str(info.value)


@pytest.mark.parametrize("levels", [2_000, 200_000])
def test_deeply_nested_json_is_a_coded_error_never_a_recursion_error(levels):
    for data in (nested(levels), "[" * levels + "]" * levels, '{"a":' * levels + "1" + "}" * levels):
        with pytest.raises(ProtocolError) as info:
            load_object(data, max_bytes=10**7)
        assert info.value.code == "malformed"


def test_every_wire_entry_point_refuses_deep_nesting_with_its_own_coded_error():
    deep_payload = json.dumps({"v": 1, "run": "r", "step": 0, "phase": "commit", "sender": "a" * 40,
                               "nonce": "b" * 32, "payload": {"x": 0}}).replace('{"x": 0}', nested(5_000))
    with pytest.raises(ProtocolError) as envelope_error:
        decode_envelope(deep_payload, max_bytes=10**7)
    deep_message = '{"type": "heartbeat", "status": "training", "detail": ' + "[" * 5_000 + "]" * 5_000 + "}"
    with pytest.raises(ControlError) as worker_error:
        parse_worker_message(deep_message, max_bytes=10**7)
    with pytest.raises(ControlError) as site_error:
        parse_site_message(deep_message, max_bytes=10**7)
    assert {envelope_error.value.code, worker_error.value.code, site_error.value.code} == {"malformed"}


@pytest.mark.parametrize("data,reason", [
    (b"{not json", "is not valid JSON"),
    (b"\xff\xfe{}", "is not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b'"text"', "must be a JSON object"),
    (b"", "is not valid JSON"),
    (b'{"x": NaN}', None),  # Python's json reads NaN; the schema decides (here: x must be an int)
])
def test_malformed_input_is_refused_with_the_code_malformed(data, reason):
    if reason is None:
        with pytest.raises(ProtocolError) as info:
            parse_model(Point, data, max_bytes=100)
        assert info.value.code == "schema"
        return
    with pytest.raises(ProtocolError) as info:
        load_object(data, max_bytes=100, what="header")
    assert info.value.code == "malformed"
    assert str(info.value).startswith(f"header {reason}")


def test_a_version_other_than_ours_is_refused_and_a_missing_one_means_ours():
    with pytest.raises(ProtocolError) as info:
        load_object(json.dumps({"v": PROTOCOL_VERSION + 1, "x": 1}), max_bytes=100)
    assert info.value.code == "version"
    assert str(info.value) == (f"protocol version {PROTOCOL_VERSION + 1} is not supported "
                               f"(this side speaks {PROTOCOL_VERSION})")
    assert load_object('{"x": 1}', max_bytes=100) == {"x": 1}
    assert load_object('{"v": 99}', max_bytes=100, version=None) == {"v": 99}  # the caller checks it later


def test_the_first_schema_error_is_reported_as_where_colon_message():
    with pytest.raises(ProtocolError) as info:
        parse_model(Point, '{"x": 1, "tags": ["a", 7]}', max_bytes=100, what="point")
    assert info.value.code == "schema"
    assert str(info.value) == "invalid point: tags.1: Input should be a valid string"
    with pytest.raises(ProtocolError) as info:
        validate(Point, {"x": -1}, what="point")
    assert str(info.value) == "invalid point: x: Input should be greater than or equal to 0"


def test_an_error_without_a_field_path_names_the_default_place():
    from pydantic import TypeAdapter, ValidationError

    try:
        TypeAdapter(int).validate_python("seven")
    except ValidationError as exc:
        assert first_error(exc, default="payload") == "payload: Input should be a valid integer, unable to parse " \
                                                      "string as an integer"


def test_the_caller_chooses_the_error_class_and_keeps_the_codes():
    with pytest.raises(ControlError) as info:
        parse_model(Point, '{"x": "many"}', max_bytes=100, error=ControlError)
    assert isinstance(info.value, CodedError) and info.value.code == "schema"
    assert info.value.message == str(info.value)


def test_a_valid_object_comes_back_as_the_model():
    point = parse_model(Point, b'{"x": 3, "tags": ["a"]}', max_bytes=100)
    assert point == Point(x=3, tags=["a"])
