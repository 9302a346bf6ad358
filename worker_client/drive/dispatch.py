"""The one action dispatcher: a peer's actions, in order, against a :class:`Transport`.

The networked worker (:mod:`worker_client.worker`), the in-memory swarm
(:mod:`worker_client.transports.memory`) and ``benchmarks/step_overhead.py`` each implement the five
methods of :class:`Transport`; :func:`carry_out` (or :func:`carry_out_async` for a transport whose
methods may return awaitables) maps every action type to its method, so a new action type is added in
one place.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Any, Protocol

from btard_wire.envelope import Envelope

from ..btard.actions import Action, ComputeGradient, FetchTensor, Finish, PostEnvelope, SendTensor
from ..btard.state import StepResult


class Transport(Protocol):
    """A driver's side of the actions. A method may return an awaitable (awaited in order by
    :func:`carry_out_async`); :func:`carry_out` accepts only transports that return None."""

    def post(self, envelope: Envelope) -> Any:
        """Post a signed broadcast on the bulletin board."""

    def send_tensor(self, action: SendTensor) -> Any:
        """Send a gradient part or an aggregated part to ``action.to`` on a private channel."""

    def compute(self, request: ComputeGradient) -> Any:
        """Compute a gradient; hand it back with ``BtardPeer.on_gradient`` later."""

    def fetch(self, request: FetchTensor) -> Any:
        """Fetch evidence by its SHA-256 from one of its holders (``BtardPeer.on_tensor``)."""

    def finish(self, result: StepResult) -> Any:
        """The peer's step is over."""


def _call(action: Action, transport: Transport) -> Any:
    if isinstance(action, PostEnvelope):
        return transport.post(action.envelope)
    if isinstance(action, SendTensor):
        return transport.send_tensor(action)
    if isinstance(action, ComputeGradient):
        return transport.compute(action)
    if isinstance(action, FetchTensor):
        return transport.fetch(action)
    if isinstance(action, Finish):
        return transport.finish(action.result)
    raise TypeError(f"no transport method for action {type(action).__name__}")


def carry_out(actions: Iterable[Action], transport: Transport) -> None:
    """Carry out ``actions`` in order against a transport whose methods return None."""
    for action in actions:
        out = _call(action, transport)
        if out is not None and inspect.isawaitable(out):
            if inspect.iscoroutine(out):
                out.close()  # never awaited: close it rather than leak a warning
            raise TypeError(f"{type(transport).__name__} returned an awaitable: use carry_out_async")


async def carry_out_async(actions: Iterable[Action], transport: Transport) -> None:
    """Carry out ``actions`` in order; an awaitable a method returns is awaited before the next action."""
    for action in actions:
        out = _call(action, transport)
        if out is not None and inspect.isawaitable(out):
            await out
