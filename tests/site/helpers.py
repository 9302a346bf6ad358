"""Small builders shared by site tests."""

from __future__ import annotations

from btard_wire.envelope import sign_envelope


def envelope(identity, run, *, step=None, phase="commit", payload=None, nonce=None):
    payload = payload if payload is not None else {"hashes": ["00" * 32]}
    if "type" not in payload:  # the site checks every payload against its phase's schema
        payload = {"type": phase, **payload}
    return sign_envelope(identity, run=str(run.id), step=run.current_step if step is None else step, phase=phase,
                         payload=payload, nonce=nonce)


def verdict(identity, run, *, guilty, step=None, kind="part_mismatch", nonce=None):
    return envelope(identity, run, step=step, phase="verdict", nonce=nonce,
                    payload={"type": "verdict", "guilty": guilty, "accuser": identity.peer_id, "accused": guilty,
                             "kind": kind, "evidence": ["ab" * 32], "reason": "part does not match commitment"})
