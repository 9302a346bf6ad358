"""The worker's typed inbox: what its one asyncio task (:meth:`Worker._main`) is fed besides the site's
messages (:mod:`btard_wire.control`). Side tasks (the data plane's receiver, gradient threads, evidence
fetches, the site connection) post these; :meth:`Worker._handle` matches on them."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TensorArrived:
    """A gradient part or an aggregated part another peer pushed to us, its size already checked."""

    step: int
    kind: str
    key: str
    sender: str
    data: bytes
    header: dict | None


@dataclass(frozen=True)
class GradientReady:
    """A gradient the protocol core asked for (``ComputeGradient``) was computed."""

    step: int
    request_id: str
    gradient: torch.Tensor


@dataclass(frozen=True)
class GradientFailed:
    """A gradient could not be computed (a missing snapshot, a task error); the deadline handles the rest."""

    message: str


@dataclass(frozen=True)
class EvidenceArrived:
    """Evidence the core asked for with ``FetchTensor``, fetched by its SHA-256 and verified."""

    step: int
    sha256: str
    data: bytes


@dataclass(frozen=True)
class SiteGone:
    """The control-plane connection task ended (refused, failed or cancelled)."""

    task: asyncio.Task


@dataclass(frozen=True)
class RunUnusable:
    """The site's run has settings this worker cannot train with; ``reason`` is the sentence."""

    reason: str


InboxItem = TensorArrived | GradientReady | GradientFailed | EvidenceArrived | SiteGone | RunUnusable
