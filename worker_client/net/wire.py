"""Frames of the data plane: a small JSON header (pydantic) followed by raw little-endian float32 bytes.

Every stream carries exactly one request and one response::

    request  := u32 header_len | header JSON (FetchRequest)
    response := u32 header_len | header JSON (FetchResponse) | [u64 body_len | body]

The body is present only when ``FetchResponse.ok``. The requester says how many float32 values it
expects (``numel``, derived from the run's model layout) and checks the response header *and* the body
length against that before it reads or allocates anything. Nothing here is ever unpickled.

A body is read in chunks of :data:`BODY_CHUNK` bytes and hashed chunk by chunk as it arrives, so its
SHA-256 is ready when its last byte is (:class:`~worker_client.btard.tensors.HashedBytes`): the
protocol core's commitment and ``H(a_j)`` checks use that digest instead of a second pass, and the
hashing overlaps the transfer instead of following it.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from btard_wire import PROTOCOL_VERSION
from btard_wire.errors import ProtocolError
from btard_wire.json import load_object, validate

from ..btard.tensors import HashedBytes

MAX_HEADER_BYTES = 16 * 1024
# A hard ceiling on one body whatever a peer claims (1 GiB = 256M float32 values).
MAX_BODY_BYTES = 1 << 30
# Bodies are read (and hashed) and written in chunks of this many bytes.
BODY_CHUNK = 1 << 20

KIND_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"
KEY_PATTERN = r"^[A-Za-z0-9_:.\-]{1,96}$"


class _Frame(BaseModel):
    model_config = ConfigDict(extra="forbid")
    v: int = PROTOCOL_VERSION


class FetchRequest(_Frame):
    """Ask a peer for a tensor it published for ``(run, step, kind, key)``.

    ``start``/``numel`` select a contiguous range (state download splits the model among donors);
    ``wait`` is how long the server may hold the request while the tensor is not published yet.
    """

    type: Literal["fetch"] = "fetch"
    run: str = Field(min_length=1, max_length=64)
    step: int = Field(ge=0)
    kind: str = Field(pattern=KIND_PATTERN)
    key: str = Field(pattern=KEY_PATTERN)
    start: int = Field(default=0, ge=0)
    numel: int = Field(ge=0, le=MAX_BODY_BYTES // 4)
    wait: float = Field(default=0.0, ge=0.0, le=600.0)


class InfoRequest(_Frame):
    """Ask for small JSON metadata a peer published (for example the chunk hashes of its state)."""

    type: Literal["info"] = "info"
    run: str = Field(min_length=1, max_length=64)
    step: int = Field(ge=0)
    kind: str = Field(pattern=KIND_PATTERN)
    key: str = Field(pattern=KEY_PATTERN)
    wait: float = Field(default=0.0, ge=0.0, le=600.0)


class PutRequest(_Frame):
    """Push a tensor to a peer (scatter of parts, all-gather of aggregates): the body follows.

    The receiver decides from the run's layout how many values it accepts for ``(step, kind, key)``
    from this sender and refuses anything else before reading the body. ``header`` is the sender's
    signed ``TensorHeader`` (optional).
    """

    type: Literal["put"] = "put"
    run: str = Field(min_length=1, max_length=64)
    step: int = Field(ge=0)
    kind: str = Field(pattern=KIND_PATTERN)
    key: str = Field(pattern=KEY_PATTERN)
    numel: int = Field(ge=0, le=MAX_BODY_BYTES // 4)
    header: dict | None = None
    wait: float = Field(default=0.0, ge=0.0, le=600.0)


class PingRequest(_Frame):
    type: Literal["ping"] = "ping"
    nonce: str = Field(default="", max_length=64)


class FetchResponse(_Frame):
    type: Literal["response"] = "response"
    ok: bool
    numel: int = Field(default=0, ge=0)
    code: str = Field(default="", max_length=64)
    message: str = Field(default="", max_length=500)
    info: dict | None = None
    # The sender's signed header over the body (``btard_wire.payloads.TensorHeader``), when it published one.
    header: dict | None = None


REQUEST_TYPES = {"fetch": FetchRequest, "info": InfoRequest, "ping": PingRequest, "put": PutRequest}


def encode_header(model: BaseModel) -> bytes:
    data = model.model_dump_json().encode()
    if len(data) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {len(data)} bytes exceeds {MAX_HEADER_BYTES}")
    return len(data).to_bytes(4, "big") + data


async def read_header_json(reader: asyncio.StreamReader) -> dict:
    size = int.from_bytes(await reader.readexactly(4), "big")
    if size > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {size} bytes exceeds {MAX_HEADER_BYTES}", code="too_large")
    return load_object(await reader.readexactly(size), max_bytes=MAX_HEADER_BYTES, what="header")


async def read_request(reader: asyncio.StreamReader) -> FetchRequest | InfoRequest | PingRequest | PutRequest:
    obj = await read_header_json(reader)
    model = REQUEST_TYPES.get(obj.get("type"))
    if model is None:
        raise ProtocolError(f"unknown request type {obj.get('type')!r}", code="schema")
    return validate(model, obj, what="request")


async def read_response(reader: asyncio.StreamReader) -> FetchResponse:
    return validate(FetchResponse, await read_header_json(reader), what="response")


def _hash_chunk(hasher, chunk: bytes) -> None:
    """One chunk into the body's SHA-256 (a function of its own so a profile can name the time)."""
    hasher.update(chunk)


async def read_body(reader: asyncio.StreamReader, *, expected_bytes: int, chunk: int = BODY_CHUNK,
                    digest: bool = True) -> bytes:
    """Read a length-prefixed body, refusing any length but the expected one before allocating.

    Returns :class:`HashedBytes`, the bytes with the SHA-256 computed over them chunk by chunk as they
    arrived; with ``digest=False`` plain bytes in one read (a transport that hashes nothing: the
    benchmark's butterfly reference)."""
    size = int.from_bytes(await reader.readexactly(8), "big")
    if size != expected_bytes or size > MAX_BODY_BYTES:
        raise ProtocolError(f"peer announced {size} bytes, expected {expected_bytes}")
    if not digest:
        return await reader.readexactly(size)
    hasher = hashlib.sha256()
    chunks = []
    for offset in range(0, size, chunk):
        piece = await reader.readexactly(min(chunk, size - offset))
        _hash_chunk(hasher, piece)
        chunks.append(piece)
    return HashedBytes.of_chunks(chunks or [b""], hasher.hexdigest())


async def write_body(writer: asyncio.StreamWriter, data: bytes | memoryview, *, chunk: int = BODY_CHUNK) -> None:
    writer.write(len(data).to_bytes(8, "big"))
    view = memoryview(data)
    for offset in range(0, len(view), chunk):
        writer.write(view[offset:offset + chunk])
        await writer.drain()
    await writer.drain()
