"""A data plane that lies on purpose: Byzantine test behaviours serve one peer something else.

The hivemind ``FaultyAllReduceRunner`` pattern: the production :class:`~worker_client.net.DataPlane`
serves every peer the same bytes and header for a slot; :class:`FaultyDataPlane` adds
``publish(..., overrides={peer: tensor}, override_headers={peer: header})`` so a test can fork what
given peers receive (an equivocating sender) without that feature existing outside the tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch

from worker_client.net import DataPlane
from worker_client.net.store import Entry, Store, as_bytes


@dataclass
class ForkedEntry(Entry):
    overrides: dict[str, bytes] = field(default_factory=dict)
    override_headers: dict[str, dict] = field(default_factory=dict)

    def body_for(self, peer: str | None) -> bytes:
        return self.overrides.get(peer or "", self.data)

    def header_for(self, peer: str | None) -> dict | None:
        return self.override_headers.get(peer or "", self.header)


class FaultyStore(Store):
    def publish(self, step: int, kind: str, key: str, tensor: torch.Tensor | bytes, *,
                allowed: Iterable[str] | None = None, info: dict | None = None, header: dict | None = None,
                overrides: Mapping[str, torch.Tensor | bytes] | None = None,
                override_headers: Mapping[str, dict] | None = None) -> None:
        data = as_bytes(tensor)
        forked = {peer: as_bytes(other) for peer, other in (overrides or {}).items()}
        if any(len(other) != len(data) for other in forked.values()):
            raise ValueError("an override must have the size of the published tensor")
        self.put(step, kind, key, ForkedEntry(data=data, numel=len(data) // 4,
                                              allowed=frozenset(allowed) if allowed is not None else None,
                                              info=info, header=header, overrides=forked,
                                              override_headers=dict(override_headers or {})))


class FaultyDataPlane(DataPlane):
    """A :class:`DataPlane` whose ``publish`` can serve given peers a different tensor or header."""

    store_class = FaultyStore

    def publish(self, step: int, kind: str, key: str, tensor: torch.Tensor | bytes, *,
                allowed: Iterable[str] | None = None, info: dict | None = None, header: dict | None = None,
                overrides: Mapping[str, torch.Tensor | bytes] | None = None,
                override_headers: Mapping[str, dict] | None = None) -> None:
        self.store.publish(step, kind, key, tensor, allowed=allowed, info=info, header=header,
                           overrides=overrides, override_headers=override_headers)
