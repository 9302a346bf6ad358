"""Wire robustness in the peer: invalid envelopes are rejected and change nothing, malformed parts are faults.

The schema-level fuzzing of envelopes and payloads lives in tests/wire/test_payloads.py."""

from __future__ import annotations

import struct

import pytest
import torch

from btard_wire.envelope import Identity, sign_envelope
from btard_wire.errors import ProtocolError
from worker_client.btard import protocol as P
from worker_client.btard.mprng import genesis_randomness, mprng_commitment

RUN = "wire-test"


def _group(n=4):
    ids = [Identity.from_seed(f"wire:{i}".encode()) for i in range(n)]
    keys = {i.peer_id: i.public_key_b64 for i in ids}
    return ids, keys


def _peer_in_commit_phase():
    ids, keys = _group()
    peer = P.BtardPeer(ids[0], P.ProtocolParams(validators=0))
    ctx = P.StepContext(run=RUN, step=3, group=[i.peer_id for i in ids], public_keys=keys,
                        r_prev=genesis_randomness(RUN), numel=16, model_ref=0)
    actions = peer.begin_step(ctx)
    assert any(isinstance(a, P.ComputeGradient) for a in actions)
    peer.on_gradient("own:3", torch.ones(16))
    return peer, ids


def _valid(ids, *, sender=1, run=RUN, step=3, phase="mprng_commit", payload=None, nonce=None):
    ident = ids[sender]
    if payload is None:
        payload = {"type": "mprng_commit",
                   "hash": mprng_commitment(b"\x01" * 32, run=run, step=step, sender=ident.peer_id)}
    return sign_envelope(ident, run=run, step=step, phase=phase, payload=payload, nonce=nonce)


def _snapshot(peer):
    s = peer._s
    return dict(s.board), dict(s.accusations), dict(s.verdicts), peer.waiting_for


def test_a_second_different_message_in_a_single_message_slot_is_refused_and_proves_equivocation():
    peer, ids = _peer_in_commit_phase()
    first = _valid(ids)
    peer.on_broadcast(first)
    slot = peer._s.board[("mprng_commit", ids[1].peer_id)]
    second = _valid(ids, payload={"type": "mprng_commit", "hash": "cd" * 32})
    actions = peer.on_broadcast(second)
    assert peer._s.board[("mprng_commit", ids[1].peer_id)] == slot  # the first one stays in the slot
    verdicts = [a.envelope.payload for a in actions if isinstance(a, P.PostEnvelope) and a.envelope.phase == "verdict"]
    assert len(verdicts) == 1 and verdicts[0]["guilty"] == ids[1].peer_id
    assert verdicts[0]["kind"] == "bad_broadcast" and "equivocation" in verdicts[0]["reason"]
    assert set(verdicts[0]["evidence"]) == {first.digest(), second.digest()}
    assert "equivocation" in peer.rejected[-1][1]


def test_a_valid_envelope_is_accepted_and_recorded():
    peer, ids = _peer_in_commit_phase()
    before = _snapshot(peer)
    peer.on_broadcast(_valid(ids))
    assert _snapshot(peer)[0] != before[0]
    assert not peer.rejected


@pytest.mark.parametrize("case", ["bad_signature", "wrong_run", "wrong_step", "wrong_phase", "replayed_nonce",
                                  "stranger", "same_message_again"])
def test_invalid_envelopes_are_rejected_without_changing_state(case):
    peer, ids = _peer_in_commit_phase()
    good = _valid(ids)
    if case == "bad_signature":
        env = good.model_copy(update={"signature": _valid(ids, sender=2).signature})
    elif case == "wrong_run":
        env = _valid(ids, run="other-run")
    elif case == "wrong_step":
        env = _valid(ids, step=7)
    elif case == "wrong_phase":
        env = _valid(ids, phase="commit")  # an mprng_commit payload under the commit phase
    elif case == "replayed_nonce":
        peer.on_broadcast(good)
        env = _valid(ids, nonce=good.nonce, payload={"type": "mprng_commit", "hash": "ab" * 32})
    elif case == "stranger":
        stranger = Identity.from_seed(b"stranger")
        env = sign_envelope(stranger, run=RUN, step=3, phase="mprng_commit", payload=good.payload)
    else:  # the same signed message once more (a resend or a refetch): not a second message
        peer.on_broadcast(good)
        env = good
    before = _snapshot(peer)
    rejected = len(peer.rejected)
    assert peer.on_broadcast(env) == []
    assert _snapshot(peer) == before
    assert len(peer.rejected) == rejected + 1


def test_a_message_for_the_next_step_is_kept_for_later_not_rejected():
    peer, ids = _peer_in_commit_phase()
    early = _valid(ids, step=4)
    assert peer.on_broadcast(early) == []
    assert not peer.rejected


@pytest.mark.parametrize("data,numel", [
    (struct.pack("<4f", 1.0, float("nan"), 2.0, 3.0), 4),
    (struct.pack("<2f", float("inf"), 1.0), 2),
    (b"\x00" * 15, 4),
    (b"\x00" * 20, 4),
    (b"", 1),
])
def test_tensor_decoding_rejects_nan_inf_and_wrong_sizes(data, numel):
    with pytest.raises(ProtocolError):
        P.decode_tensor(data, numel)


def test_decoding_keeps_huge_finite_values():
    data = struct.pack("<3f", 3e38, 3e38, -1.0)
    t = P.decode_tensor(data, 3)
    assert t.tolist()[2] == -1.0 and torch.isfinite(t).all()


def test_a_malformed_part_from_a_peer_is_a_fault_not_a_crash():
    peer, ids = _peer_in_commit_phase()
    # peer 1 commits to the hash of a NaN part, then sends exactly that part: provable malformed_part
    nan_part = struct.pack("<4f", float("nan"), 0.0, 0.0, 0.0)
    import hashlib
    hashes = [hashlib.sha256(nan_part).hexdigest()] * 4
    for i in (1, 2, 3):
        peer.on_broadcast(sign_envelope(ids[i], run=RUN, step=3, phase="commit",
                                        payload={"type": "commit", "hashes": hashes}))
    actions = peer.on_part(ids[1].peer_id, 0, nan_part)
    accusations = [a for a in actions if isinstance(a, P.PostEnvelope) and a.envelope.phase == "accuse"]
    assert accusations and accusations[0].envelope.payload["kind"] == "malformed_part"
    # wrong-size garbage without a signature is simply not attributable: recorded, ignored
    assert peer.on_part(ids[2].peer_id, 0, b"\x01\x02\x03") == []
    assert peer.rejected
