"""The coded errors of the runs services (a refused worker message, a refused join)."""

from __future__ import annotations

from btard_wire.errors import CodedError


class Rejected(CodedError):
    """A worker message the site refuses; nothing changed. ``code`` is stable, ``message`` for humans."""


class JoinRefused(CodedError):
    """The worker cannot join; the socket closes with ``close_code`` (also ``code``)."""

    def __init__(self, close_code: int, reason: str):
        super().__init__(close_code, reason)
        self.close_code = close_code
        self.reason = reason
