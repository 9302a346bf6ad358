"""What this peer serves on the data plane: tensors published by ``(step, kind, key)``, and evidence by hash.

A published entry may be limited to given protocol peer ids (``allowed``) and carries an optional
small JSON ``info`` (the chunk hashes of a state) and the sender's signed ``header``. Requests for an
entry not published yet may wait for it, but only for steps next to the current one and on a bounded
number of slots (:data:`MAX_WAITING_KEYS`), so a stranger-named key never pins memory.

Evidence (kind :data:`EVIDENCE_KIND`, key = the SHA-256 hex of the bytes) is not published: it is
asked of an *evidence source* when a peer requests it (the worker answers from its protocol core's
``serve_tensor``, for members of the current group only; see :mod:`worker_client.worker.evidence`).
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from ..btard.tensors import tensor_to_bytes

MAX_WAITING_KEYS = 512  # (step, kind, key) slots requests may wait on at once
EVIDENCE_KIND = "evidence"

Slot = tuple[int, str, str]
# (sha256 hex, step, requesting protocol peer id) -> the bytes, or None (not held, or not for this peer)
EvidenceSource = Callable[[str, int, str], bytes | None]


@dataclass
class Entry:
    data: bytes
    numel: int
    allowed: frozenset[str] | None
    info: dict | None = None
    header: dict | None = None

    def body_for(self, peer: str | None) -> bytes:
        """The bytes served to ``peer`` (the same for every peer; a test subclass may fork them)."""
        return self.data

    def header_for(self, peer: str | None) -> dict | None:
        return self.header


def as_bytes(tensor: torch.Tensor | bytes) -> bytes:
    return tensor if isinstance(tensor, bytes) else tensor_to_bytes(tensor)


class Store:
    def __init__(self, *, max_wait: float):
        self.max_wait = max_wait
        self.entries: dict[Slot, Entry] = {}
        self.events: dict[Slot, asyncio.Event] = {}
        self.waiters: Counter = Counter()
        self.step: int | None = None  # the current step (set by forget_before)
        self.state_served: defaultdict[tuple[str, str], int] = defaultdict(int)  # (p2p id, state key) -> bytes
        self.evidence_source: EvidenceSource = lambda sha256, step, peer: None

    # --- publishing ---------------------------------------------------------------------------
    def put(self, step: int, kind: str, key: str, entry: Entry) -> None:
        k = (step, kind, key)
        self.entries[k] = entry
        event = self.events.get(k)
        if event is not None:
            event.set()

    def publish(self, step: int, kind: str, key: str, tensor: torch.Tensor | bytes, *,
                allowed: Iterable[str] | None = None, info: dict | None = None, header: dict | None = None) -> None:
        data = as_bytes(tensor)
        self.put(step, kind, key, Entry(data=data, numel=len(data) // 4,
                                        allowed=frozenset(allowed) if allowed is not None else None,
                                        info=info, header=header))

    def published(self, step: int, kind: str, key: str) -> bool:
        return (step, kind, key) in self.entries

    def unpublish(self, step: int, kind: str, key: str) -> None:
        self.entries.pop((step, kind, key), None)

    def clear(self) -> None:
        self.entries.clear()
        self.state_served.clear()

    def forget_before(self, step: int, *, keep_kinds: Iterable[str] = ("state",)) -> None:
        """``step`` is now the current step: drop what was published for steps before it (except
        ``keep_kinds``) and wake the requests waiting for those steps (they get ``not_found``)."""
        self.step = step
        keep = set(keep_kinds)
        for k in [k for k in self.entries if k[0] < step and k[1] not in keep]:
            del self.entries[k]
        for k in [k for k in self.events if k[1] != "state" and k[0] < step]:
            self.events.pop(k).set()

    def keep_states(self, keys: set[str]) -> None:
        """Drop every published state (and its serve counts) but those named ``keys``."""
        for k in [k for k in self.entries if k[1] == "state" and k[2] not in keys]:
            del self.entries[k]
        for k in [k for k in self.state_served if k[1] not in keys]:
            del self.state_served[k]

    def wake_all(self) -> None:
        for event in self.events.values():
            event.set()

    # --- looking up ---------------------------------------------------------------------------
    def evidence(self, sha256: str, step: int, peer: str | None) -> Entry | None:
        """Evidence with this hash for ``peer``, from the evidence source (never waited for)."""
        if peer is None:
            return None
        data = self.evidence_source(sha256, step, peer)
        if not data:
            return None
        return Entry(data=data, numel=len(data) // 4, allowed=None)

    def may_wait(self, k: Slot) -> bool:
        """Requests wait only for steps next to the current one, and on a bounded number of slots."""
        if len(self.events) >= MAX_WAITING_KEYS and k not in self.events:
            return False
        if self.step is None:
            return True
        step = k[0]
        if k[1] == "state":
            key = k[2]
            if not (key[:1] == "s" and key[1:].isdigit() and len(key) < 20):
                return False
            step = int(key[1:])
        return self.step - 1 <= step <= self.step + 1

    async def wait_entry(self, k: Slot, wait: float) -> Entry | None:
        entry = self.entries.get(k)
        if entry is not None or wait <= 0 or not self.may_wait(k):
            return entry
        event = self.events.setdefault(k, asyncio.Event())
        self.waiters[k] += 1
        try:
            await asyncio.wait_for(event.wait(), min(wait, self.max_wait))
        except TimeoutError:
            pass
        finally:
            self.waiters[k] -= 1
            if self.waiters[k] <= 0:
                del self.waiters[k]
                if self.events.get(k) is event:
                    del self.events[k]
        return self.entries.get(k)
