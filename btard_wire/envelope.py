"""Identity keys, peer ids and signed envelopes shared by the protocol, the worker and the site.

Every broadcast of the protocol is an :class:`Envelope` ``{v, run, step, phase, sender, nonce,
payload, signature}`` signed with the sender's Ed25519 key over its canonical JSON (sorted keys, no
whitespace, signature field excluded). The sender's peer id is derived from its public key, so a
message cannot claim another peer's identity without that peer's private key.

No file I/O here: the worker keeps its key file in :mod:`worker_client.identity`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field

from . import PROTOCOL_VERSION
from .errors import ProtocolError
from .json import parse_model

MAX_ENVELOPE_BYTES = 256 * 1024
PRIVATE_KEY_BYTES = 32


def b64e(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64d(text: str, *, what: str = "value") -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as exc:
        raise ProtocolError(f"{what} is not valid base64") from exc


def peer_id_from_public_key(public_key_bytes: bytes) -> str:
    """Peer id = first 20 bytes of SHA-256 of the raw 32-byte Ed25519 public key, hex."""
    if len(public_key_bytes) != 32:
        raise ProtocolError("an Ed25519 public key is 32 bytes")
    return hashlib.sha256(b"btard-peer:" + public_key_bytes).hexdigest()[:40]


class Identity:
    """A peer's Ed25519 key pair (in memory; :mod:`worker_client.identity` stores it in a file)."""

    def __init__(self, private_key: Ed25519PrivateKey):
        self._key = private_key
        self.public_key_bytes = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.peer_id = peer_id_from_public_key(self.public_key_bytes)

    @classmethod
    def generate(cls) -> Identity:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """Deterministic identity (simulations and tests): seed is hashed to 32 bytes."""
        return cls(Ed25519PrivateKey.from_private_bytes(hashlib.sha256(seed).digest()))

    @classmethod
    def from_private_bytes(cls, data: bytes, *, what: str = "private key") -> Identity:
        """The identity of a raw 32-byte Ed25519 private key (as :meth:`private_bytes` returns it)."""
        if len(data) != PRIVATE_KEY_BYTES:
            raise ProtocolError(f"{what} is not a 32-byte Ed25519 private key")
        return cls(Ed25519PrivateKey.from_private_bytes(data))

    @property
    def public_key_b64(self) -> str:
        return b64e(self.public_key_bytes)

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def private_bytes(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )


def load_public_key(public_key_b64: str) -> Ed25519PublicKey:
    raw = b64d(public_key_b64, what="public key")
    if len(raw) != 32:
        raise ProtocolError("an Ed25519 public key is 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


class Envelope(BaseModel):
    """A signed broadcast. ``payload`` is a phase-specific dict (:func:`btard_wire.payloads.parse_payload`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: int = Field(PROTOCOL_VERSION)
    run: str = Field(min_length=1, max_length=64)
    step: int = Field(ge=0)
    phase: str = Field(min_length=1, max_length=32)
    sender: str = Field(pattern=r"^[0-9a-f]{40}$")
    nonce: str = Field(pattern=r"^[0-9a-f]{32}$")
    payload: dict[str, Any]
    signature: str = ""

    def signing_bytes(self) -> bytes:
        body = self.model_dump(exclude={"signature"})
        return canonical_json(body)

    def digest(self) -> str:
        """SHA-256 of the signed body: a stable id for evidence and replay detection."""
        return hashlib.sha256(self.signing_bytes()).hexdigest()


# ``json.dumps`` with these arguments builds a new encoder per call; one encoder gives the same bytes
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no whitespace, ASCII only, no NaN/inf: ``json.dumps(obj, sort_keys=True,
    separators=(",", ":"), ensure_ascii=True, allow_nan=False)`` as UTF-8 bytes."""
    return _CANONICAL.encode(obj).encode()


def sign_envelope_with_digest(identity: Identity, *, run: str, step: int, phase: str, payload: dict[str, Any],
                              nonce: str | None = None) -> tuple[Envelope, str]:
    """:func:`sign_envelope` and the new envelope's :meth:`Envelope.digest`, both from one serialisation
    of the signed body (the digest is the SHA-256 of the very bytes that were signed)."""
    unsigned = Envelope(v=PROTOCOL_VERSION, run=run, step=step, phase=phase, sender=identity.peer_id,
                        nonce=nonce or secrets.token_hex(16), payload=payload)
    body = unsigned.signing_bytes()
    signature = b64e(identity.sign(body))
    return unsigned.model_copy(update={"signature": signature}), hashlib.sha256(body).hexdigest()


def sign_envelope(identity: Identity, *, run: str, step: int, phase: str, payload: dict[str, Any],
                  nonce: str | None = None) -> Envelope:
    """A signed :class:`Envelope` of ``payload`` from ``identity`` (a random nonce unless given)."""
    return sign_envelope_with_digest(identity, run=run, step=step, phase=phase, payload=payload, nonce=nonce)[0]


def verify_envelope(envelope: Envelope, public_key_b64: str) -> None:
    """Raise :class:`ProtocolError` unless ``envelope`` is signed by the key and the key is the sender's."""
    if envelope.v != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {envelope.v}; this peer speaks {PROTOCOL_VERSION}",
                            code="version")
    raw = b64d(public_key_b64, what="public key")
    if peer_id_from_public_key(raw) != envelope.sender:
        raise ProtocolError("sender does not match the public key", code="sender")
    try:
        signature = b64d(envelope.signature, what="signature")
        load_public_key(public_key_b64).verify(signature, envelope.signing_bytes())
    except InvalidSignature:
        raise ProtocolError(f"bad signature on {envelope.phase} message from {envelope.sender[:8]}",
                            code="signature") from None


def decode_envelope(data: bytes | str, *, max_bytes: int = MAX_ENVELOPE_BYTES) -> Envelope:
    """Parse untrusted JSON into an Envelope; every failure is a :class:`ProtocolError` with a code and a
    reason (:mod:`btard_wire.json`). The version is checked by :func:`verify_envelope`."""
    return parse_model(Envelope, data, max_bytes=max_bytes, what="envelope", version=None)


class ReplayGuard:
    """Remembers (sender, nonce) pairs and signed digests it has accepted; a repeat is a replay."""

    def __init__(self) -> None:
        self._seen: set[tuple[str, str]] = set()

    def check_and_remember(self, envelope: Envelope) -> None:
        key = (envelope.sender, envelope.nonce)
        if key in self._seen:
            raise ProtocolError(f"replayed message (nonce {envelope.nonce[:8]}) from {envelope.sender[:8]}",
                                code="replay")
        self._seen.add(key)

    def forget_before(self, keep: set[tuple[str, str]]) -> None:
        self._seen &= keep
