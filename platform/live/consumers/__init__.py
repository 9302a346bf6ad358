"""Websocket consumers: ``/ws/worker/`` for ``btard-worker`` (:mod:`.worker`) and ``/ws/live/`` for
browsers (:mod:`.browser`). Both are thin: parse, call a service, and turn live events (``live.events``,
routed by ``live.event_routing``) into what the other side understands (control-plane JSON for workers,
the apps' htmx out-of-band fragments for browsers)."""

from .browser import LiveConsumer
from .worker import WorkerConsumer

__all__ = ["LiveConsumer", "WorkerConsumer"]
