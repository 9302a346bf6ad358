"""Tensors on the wire: raw little-endian float32 bytes, never pickle. Sizes are checked before use.

Bodies the data plane read off a stream arrive as :class:`HashedBytes`: plain immutable bytes that
carry the SHA-256 computed chunk by chunk while they were received (``worker_client.net.wire.read_body``),
so the protocol core's hash of a received part or aggregate (:func:`sha256_hex`) costs no second pass.
"""

from __future__ import annotations

import hashlib
import math
import sys

import numpy as np
import torch

from btard_wire.errors import ProtocolError


def tensor_to_bytes(t: torch.Tensor) -> bytes:
    arr = t.detach().to(torch.float32).contiguous().cpu().numpy()
    return arr.astype("<f4", copy=False).tobytes()


def tensor_to_hashed_bytes(t: torch.Tensor) -> HashedBytes:
    """:func:`tensor_to_bytes` with the SHA-256 of exactly those bytes computed now (one copy, as
    ``tobytes`` makes). A peer commits to this digest and hands the same immutable object to its data
    plane; receivers in the same process (the simulator) then read the digest instead of hashing the
    bytes a second time: the same value, since it was computed over this very object's content."""
    arr = t.detach().to(torch.float32).contiguous().cpu().numpy().astype("<f4", copy=False)
    out = HashedBytes(arr.data)
    out.sha256 = hashlib.sha256(out).hexdigest()
    return out


def bytes_to_tensor(data: bytes, *, expected_numel: int) -> torch.Tensor:
    """Decode raw float32 bytes after checking the size matches; rejects NaN and inf."""
    if expected_numel < 0:
        raise ProtocolError("expected size must be non-negative")
    if len(data) != 4 * expected_numel:
        raise ProtocolError(f"tensor has {len(data)} bytes, expected {4 * expected_numel} "
                            f"({expected_numel} float32 values)")
    if sys.byteorder == "little" and expected_numel:
        t = torch.frombuffer(bytearray(data), dtype=torch.float32)
    else:  # pragma: no cover - the wire format is little-endian
        t = torch.from_numpy(np.frombuffer(data, dtype="<f4").astype(np.float32, copy=True))
    # one reduction; the elementwise test only when the sum is not finite (a huge finite tensor can
    # overflow the sum too)
    if not math.isfinite(float(t.sum())) and not bool(torch.isfinite(t).all()):
        raise ProtocolError("tensor contains NaN or inf")
    return t


class HashedBytes(bytes):
    """Bytes whose SHA-256 (hex) was computed over exactly these bytes.

    Two makers: the data plane's body reader (:meth:`of_chunks`, from the chunks it hashed as they were
    read) and :func:`tensor_to_hashed_bytes` (a sender's own part or aggregate, hashed once for its
    commitment); the digest cannot go stale because bytes are immutable. Slices, copies and concatenations are plain
    ``bytes`` again (hashed the ordinary way)."""

    sha256: str

    @classmethod
    def of_chunks(cls, chunks: list[bytes], sha256: str) -> HashedBytes:
        """The concatenation of ``chunks`` with the digest their caller computed over them, in order."""
        out = cls(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        out.sha256 = sha256
        return out


def sha256_hex(data: bytes) -> str:
    """SHA-256 (hex) of ``data``: the digest a :class:`HashedBytes` carries, else computed now."""
    if type(data) is HashedBytes:
        return data.sha256
    return hashlib.sha256(data).hexdigest()


def tensor_hash(t: torch.Tensor) -> str:
    """SHA-256 of the tensor's little-endian float32 bytes (the protocol's commitment hash)."""
    return hashlib.sha256(tensor_to_bytes(t)).hexdigest()
