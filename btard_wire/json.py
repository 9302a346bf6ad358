"""The one way untrusted JSON enters the project: size cap, depth cap, object check, version, schema.

Every wire surface (signed envelopes, worker <-> site control messages, data-plane frame headers, the
payload of a broadcast) reads its input through :func:`load_object` and :func:`validate` (or both at
once, :func:`parse_model`). Any failure raises the caller's :class:`~btard_wire.errors.CodedError`
subclass with one of the stable codes

- ``too_large``: more than ``max_bytes`` bytes (UTF-8), refused before parsing;
- ``malformed``: not JSON, nested deeper than ``max_depth``, or not a JSON object;
- ``version``: a ``v`` field other than the protocol version this side speaks;
- ``schema``: the object does not fit the model; the message names the first error as ``where: msg``.

Nothing else escapes: no ``RecursionError`` from deeply nested input, no ``UnicodeDecodeError``.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from . import PROTOCOL_VERSION
from .errors import CodedError, ProtocolError

# No message of the protocol nests deeper than 6; 32 leaves room and stays far below the interpreter's stack.
MAX_DEPTH = 32


def first_error(exc: ValidationError, *, default: str = "message") -> str:
    """The first pydantic error as ``where: msg`` (``where`` is the dotted field path)."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or default
    return f"{where}: {first['msg']}"


def depth(obj: Any) -> int:
    """How deeply ``obj`` nests lists and dicts (a scalar is 0, ``[]`` is 1), without recursion."""
    deepest, todo = 0, [(obj, 1)]
    while todo:
        item, level = todo.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        todo.extend((child, level + 1) for child in children)
    return deepest


def load_object(data: bytes | str, *, max_bytes: int, max_depth: int = MAX_DEPTH, what: str = "message",
                error: type[CodedError] = ProtocolError, version: int | None = PROTOCOL_VERSION) -> dict:
    """Parse ``data`` as one JSON object of at most ``max_bytes`` bytes and ``max_depth`` levels.

    ``version``: when not ``None``, an object whose ``v`` is present and differs is refused (a missing
    ``v`` means this version). Raises ``error`` (through ``error.coded(code, message)``).
    """
    size = len(data.encode() if isinstance(data, str) else data)
    if size > max_bytes:
        raise error.coded("too_large", f"{what} of {size} bytes exceeds the limit of {max_bytes} bytes")
    try:
        obj = json.loads(data)
    except RecursionError:
        raise error.coded("malformed", f"{what} nests deeper than {max_depth} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise error.coded("malformed", f"{what} is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise error.coded("malformed", f"{what} must be a JSON object")
    if depth(obj) > max_depth:
        raise error.coded("malformed", f"{what} nests deeper than {max_depth} levels")
    if version is not None and obj.get("v", version) != version:
        raise error.coded("version", f"protocol version {obj.get('v')!r} is not supported "
                                     f"(this side speaks {version})")
    return obj


def validate(schema: type[BaseModel] | TypeAdapter, obj: Any, *, what: str = "message",
             error: type[CodedError] = ProtocolError, where: str = "message"):
    """Validate a parsed object against a model or a ``TypeAdapter``; the first error becomes ``error``
    with code ``schema`` and the message ``invalid <what>: <where>: <msg>``."""
    try:
        if isinstance(schema, TypeAdapter):
            return schema.validate_python(obj)
        return schema.model_validate(obj)
    except ValidationError as exc:
        raise error.coded("schema", f"invalid {what}: {first_error(exc, default=where)}") from None
    except RecursionError:  # a Python object built by hand can nest deeper than any JSON we accept
        raise error.coded("malformed", f"{what} nests too deeply") from None


def parse_model(schema: type[BaseModel] | TypeAdapter, data: bytes | str, *, max_bytes: int,
                max_depth: int = MAX_DEPTH, what: str = "message", error: type[CodedError] = ProtocolError,
                version: int | None = PROTOCOL_VERSION):
    """:func:`load_object` then :func:`validate`: untrusted bytes in, a validated model out."""
    obj = load_object(data, max_bytes=max_bytes, max_depth=max_depth, what=what, error=error, version=version)
    return validate(schema, obj, what=what, error=error)
