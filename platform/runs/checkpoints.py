"""Checkpoints: a worker uploads the model state of a checkpoint step; the site keeps it only when a
strict majority of that step's group reported the same state hash (``StepReport.state_sha256``).

Honest peers hold bit-identical states, so one honest upload suffices and no single peer, Byzantine or
not, can plant a model. The bytes are safetensors (tensors only, never unpickled); they are parsed and
checked for finite floats before anything is written. Writes emit ``CheckpointStored``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from django.conf import settings
from django.db import transaction
from live.bus import emit
from live.events import CheckpointStored
from safetensors import SafetensorError, deserialize

from .models import Checkpoint, Peer, Run, StepRecord, StepReportRecord
from .services import Rejected


def checkpoint_file(run: Run, step: int, sha256: str) -> Path:
    return Path(settings.CHECKPOINT_DIR) / f"run{run.pk}" / f"step{step:08d}-{sha256[:16]}.safetensors"


# Floating-point dtypes of safetensors as (numpy dtype, exponent mask): numpy reads F16/F32/F64 itself; for
# BF16 and the F8 formats (no numpy dtype) a value is NaN or infinite when its exponent bits are all ones.
_FLOAT_DTYPES = {"F16": (np.float16, None), "F32": (np.float32, None), "F64": (np.float64, None),
                 "BF16": (np.uint16, 0x7F80), "F8_E5M2": (np.uint8, 0x7C), "F8_E4M3": (np.uint8, 0x7F)}


def _validate_safetensors(data: bytes) -> int:
    """Parse ``data`` as safetensors with finite floating-point tensors; return the tensor count.

    numpy over safetensors' own parser (what ``safetensors.numpy.load`` does), so the site checks
    checkpoints without torch (``tests/test_layering.py``); integer and bool tensors need no check."""
    try:
        tensors = deserialize(data)
    except (SafetensorError, ValueError, RuntimeError, TypeError) as exc:
        raise Rejected("format", f"not a safetensors file: {str(exc)[:200]}") from None
    if not tensors:
        raise Rejected("format", "the safetensors file holds no tensors")
    for name, view in tensors:
        dtype, mask = _FLOAT_DTYPES.get(view["dtype"], (None, None))
        if dtype is None:
            continue
        values = np.frombuffer(view["data"], dtype=dtype)
        finite = np.isfinite(values).all() if mask is None else not ((values & mask) == mask).any()
        if not finite:
            raise Rejected("not_finite", f"tensor {name!r} holds NaN or infinite values")
    return len(tensors)


def confirmations(record: StepRecord, sha256: str) -> int:
    """How many members of the step's group reported ``sha256`` as their state after the step."""
    reports = StepReportRecord.objects.filter(step_record=record, peer__peer_id__in=record.members,
                                              outcome="applied")
    return sum(1 for r in reports.only("details") if (r.details or {}).get("state_sha256") == sha256)


def check_uploader(*, token, run_id: int, step: int) -> tuple[Run, StepRecord, Peer]:
    """Who may upload the checkpoint of ``step``: the peer of ``token`` whose key is in that step's group
    (F12: looked up by the key in the group, not by the newest key that used the token). Checked before a
    byte of the upload is read (F9). Raises :class:`Rejected` (``no_run``, ``not_checkpoint_step``,
    ``banned``, ``not_in_group``)."""
    run = Run.objects.filter(pk=run_id).first()
    if run is None:
        raise Rejected("no_run", f"no run {run_id}")
    every = run.checkpoint_every
    if every <= 0 or (step + 1) % every:
        raise Rejected("not_checkpoint_step", f"step {step} is not a checkpoint step of this run "
                                              f"(every {every} steps)")
    record = StepRecord.objects.filter(run=run, step=step).first()
    members = list(record.members) if record is not None else []
    peer = (Peer.objects.filter(run=run, token=token, peer_id__in=members).exclude(role="banned")
            .order_by("-id").first())
    if peer is None and Peer.objects.filter(run=run, token=token, role="banned").exists():
        raise Rejected("banned", "this worker's key is banned in this run")
    if record is None or peer is None:
        raise Rejected("not_in_group", f"this worker was not in the group of step {step}")
    return run, record, peer


def store_checkpoint(*, token, run_id: int, step: int, data: bytes) -> Checkpoint:
    """Store the upload of ``token``'s peer for ``step``. Raises :class:`Rejected` with a code:
    ``no_run``, ``not_checkpoint_step``, ``not_in_group``, ``banned``, ``too_large``, ``format``,
    ``not_finite``, ``unconfirmed`` (retry: reports still arriving) or ``mismatch`` (the group reported
    another state)."""
    run, record, peer = check_uploader(token=token, run_id=run_id, step=step)
    if len(data) > settings.CHECKPOINT_MAX_BYTES:
        raise Rejected("too_large", f"{len(data)} bytes; this site takes checkpoints up to "
                                    f"{settings.CHECKPOINT_MAX_BYTES} bytes (CHECKPOINT_MAX_BYTES)")
    existing = Checkpoint.objects.filter(run=run, step=step).first()
    sha256 = hashlib.sha256(data).hexdigest()
    if existing is not None:
        if existing.sha256 == sha256:
            return existing
        raise Rejected("mismatch", f"step {step} already has a confirmed checkpoint with another hash")
    _validate_safetensors(data)
    confirmed = confirmations(record, sha256)
    if confirmed * 2 <= len(record.members):
        reported = StepReportRecord.objects.filter(step_record=record, peer__peer_id__in=record.members).count()
        if reported < len(record.members) and record.finished_at is None:
            raise Rejected("unconfirmed", f"{confirmed} of {len(record.members)} members reported this state so "
                                          f"far; retry when the group has reported")
        raise Rejected("mismatch", f"only {confirmed} of {len(record.members)} members reported this state "
                                   f"(sha256 {sha256[:16]}...); a strict majority is needed")
    path = checkpoint_file(run, step, sha256)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    tmp.write_bytes(data)
    tmp.replace(path)
    with transaction.atomic():
        checkpoint = Checkpoint.objects.create(run=run, step=step, sha256=sha256, size=len(data), path=str(path),
                                               uploaded_by=peer, confirmations=confirmed,
                                               group_size=len(record.members))
        stale = list(Checkpoint.objects.filter(run=run).order_by("-step")[settings.CHECKPOINTS_KEPT:])
        Checkpoint.objects.filter(pk__in=[c.pk for c in stale]).delete()
        emit(CheckpointStored(run_id=run.id, step=step, sha256=sha256, size=len(data), peer_id=peer.peer_id))
    for old in stale:
        Path(old.path).unlink(missing_ok=True)
    return checkpoint


def latest_checkpoint(run: Run) -> Checkpoint | None:
    return Checkpoint.objects.filter(run=run).order_by("-step").first()
