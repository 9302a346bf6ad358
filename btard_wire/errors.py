"""One shape for every error that crosses a boundary: a stable machine ``code`` and a human ``message``.

``code`` is what programs compare (error replies, close codes, HTTP mappings); ``str(error)`` is the
message for humans. The protocol's errors live here; the site's and the worker's own refusals
(``Rejected``, ``JoinRefused``, ``TokenRefused``, ``FatalSiteError``, ``UploadRefused``) subclass
:class:`CodedError` where they are defined.
"""

from __future__ import annotations


class CodedError(Exception):
    """An error with a stable ``code`` (a short string, or a websocket close code) and a ``message``."""

    def __init__(self, code: str | int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @classmethod
    def coded(cls, code: str, message: str) -> CodedError:
        """Build one from ``(code, message)`` whatever the subclass's own constructor looks like
        (:func:`btard_wire.json.load_object` raises through this)."""
        return cls(code, message)

    def __reduce__(self):  # keep code and message across pickling (multiprocessing, logging handlers)
        return _rebuild, (type(self), self.__dict__.copy(), str(self))


def _rebuild(cls: type[CodedError], state: dict, text: str) -> CodedError:
    error = cls.__new__(cls)
    Exception.__init__(error, text)
    error.__dict__.update(state)
    return error


class ProtocolError(CodedError, ValueError):
    """A message that must be rejected: malformed, wrongly signed, replayed or out of place.

    ``ProtocolError(message)`` carries the code ``"protocol"``; the JSON helper sets ``too_large``,
    ``malformed``, ``version`` or ``schema``.
    """

    def __init__(self, message: str, *, code: str = "protocol"):
        super().__init__(code, message)

    @classmethod
    def coded(cls, code: str, message: str) -> ProtocolError:
        return cls(message, code=code)


class ControlError(CodedError, ValueError):
    """A control-plane message (worker <-> site) that is refused; ``code`` goes into the ``error`` reply."""
