"""Site hardening shared by the views (docs/threat-model.md, "Site"): the real client address behind a
configured trusted proxy, fixed-window throttles, lookalike usernames, request body limits before anything
is read, and the production Content-Security-Policy."""

from __future__ import annotations

import ipaddress
import unicodedata

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone


# --- client address ----------------------------------------------------------------------------------
def _networks(entries) -> list:
    out = []
    for entry in entries:
        try:
            out.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            continue
    return out


def _is_trusted(address: str, networks) -> bool:
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return False
    return any(ip in net for net in networks)


def client_address(request) -> str:
    """The address of the client that sent ``request``.

    ``X-Forwarded-For`` counts only when the direct peer (``REMOTE_ADDR``) is one of
    ``BTARD_TRUSTED_PROXIES``; then the address is the right-most entry of the header that is not itself
    a trusted proxy (each proxy appends the address it saw, so the entries left of it are the client's
    claims). Without a trusted proxy the header is ignored: anyone can write it.
    """
    remote = request.META.get("REMOTE_ADDR") or "unknown"
    networks = _networks(getattr(settings, "TRUSTED_PROXIES", []))
    if not networks or not _is_trusted(remote, networks):
        return remote
    forwarded = [part.strip() for part in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if part.strip()]
    for address in reversed(forwarded):
        if not _is_trusted(address, networks):
            try:
                return str(ipaddress.ip_address(address))
            except ValueError:
                return remote  # a garbled entry added by the proxy chain: fall back to the proxy itself
    return remote


# --- throttles -----------------------------------------------------------------------------------------
def throttle(scope: str, key: str, *, limit: int, window: int) -> int | None:
    """Count one attempt of ``key`` in ``scope``; return the seconds to wait when it is over ``limit`` per
    ``window`` seconds (fixed window, in the cache: Redis in production), else ``None``."""
    now = int(timezone.now().timestamp())
    bucket = now // window
    import hashlib

    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:32]  # never raw input in a key
    name = f"throttle:{scope}:{digest}:{bucket}"
    cache.add(name, 0, timeout=window)
    try:
        count = cache.incr(name)
    except ValueError:  # expired between add and incr
        cache.set(name, 1, timeout=window)
        count = 1
    return window - now % window if count > limit else None


def throttled(request, scope: str, *, account: str | None, limit_address: int, limit_account: int,
              window: int) -> int | None:
    """One attempt per address and (when given) per account; the longer wait if either is over."""
    waits = [throttle(f"{scope}:addr", client_address(request), limit=limit_address, window=window)]
    if account:
        waits.append(throttle(f"{scope}:acct", skeleton(account), limit=limit_account, window=window))
    waits = [w for w in waits if w is not None]
    return max(waits) if waits else None


# --- lookalike usernames --------------------------------------------------------------------------------
# Letters of other scripts that look like Latin ones (a subset of Unicode's confusables.txt: the ones
# NFKC leaves alone), mapped to the Latin letter they imitate.
CONFUSABLES = str.maketrans({
    "а": "a", "в": "b", "с": "c", "ԁ": "d", "е": "e", "һ": "h", "і": "i", "ј": "j", "к": "k", "ӏ": "l",
    "м": "m", "н": "h", "о": "o", "р": "p", "ԛ": "q", "ѕ": "s", "т": "t", "у": "y", "х": "x", "ԝ": "w",
    "ё": "e", "ї": "i", "ɑ": "a", "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v",
    "ο": "o", "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "ω": "w", "ℓ": "l", "ı": "i", "ȷ": "j",
    "0": "o", "1": "l", "|": "l", "_": "", "-": "", ".": "", "@": "", "+": "",
})


def skeleton(name: str) -> str:
    """A username's skeleton: NFKC, case folded, lookalike letters mapped to Latin ones, marks and
    separators dropped. Two names with one skeleton look alike (``admin``, ``аdmin``, ``ADMlN``)."""
    text = unicodedata.normalize("NFKC", name).casefold()
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return text.translate(CONFUSABLES).replace("l", "i").replace("rn", "m")


def lookalike_of(name: str, existing) -> str | None:
    """The first name of ``existing`` that looks like ``name`` (same skeleton), or ``None``."""
    target = skeleton(name)
    for other in existing:
        if skeleton(other) == target:
            return other
    return None


# --- request bodies -------------------------------------------------------------------------------------
class BodySizeLimit:
    """ASGI middleware: an HTTP request whose body is larger than its path's limit is answered 413 before
    any of it is read (by ``Content-Length``, or counted while a chunked body streams in), so a large
    body never reaches Django's buffers. Limits: ``BTARD_MAX_BODY_BYTES`` everywhere, the checkpoint
    upload's ``CHECKPOINT_MAX_BYTES`` on its own URL (its view reads it to a temporary file)."""

    def __init__(self, app):
        self.app = app

    @staticmethod
    def limit_for(path: str) -> int:
        import re

        if re.fullmatch(r"/api/runs/\d+/checkpoints/\d+/", path):
            return settings.CHECKPOINT_MAX_BYTES
        return settings.BTARD_MAX_BODY_BYTES

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http":
            return await self.app(scope, receive, send)
        limit = self.limit_for(scope.get("path", ""))
        for name, value in scope.get("headers", []):
            if name.lower() == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return await self._refuse(send, 400, b"bad Content-Length")
                if declared > limit:
                    return await self._refuse(send, 413, b"request body too large")
        seen = 0

        async def bounded_receive():
            nonlocal seen
            message = await receive()
            if message.get("type") == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge
            return message

        try:
            return await self.app(scope, bounded_receive, send)
        except BodyTooLarge:
            return await self._refuse(send, 413, b"request body too large")

    @staticmethod
    async def _refuse(send, status: int, text: bytes) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": text})


class BodyTooLarge(Exception):
    pass


# --- Content-Security-Policy ------------------------------------------------------------------------
def content_security_policy() -> str:
    """The production policy: everything from this site only (htmx and its websocket extension are
    served from /static/), websockets to this host, no inline script, no framing, no plugins."""
    return "; ".join([
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",  # htmx sets inline styles while swapping
        "img-src 'self' data:",
        "connect-src 'self'",  # CSP 3: 'self' also matches ws:// and wss:// to this host
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ])


class SecurityHeadersMiddleware:
    """Django middleware adding ``Content-Security-Policy`` and ``Permissions-Policy`` (production)."""

    def __init__(self, get_response):
        self.get_response = get_response
        self.policy = content_security_policy()

    def __call__(self, request):
        response = self.get_response(request)
        response.headers.setdefault("Content-Security-Policy", self.policy)
        response.headers.setdefault("Permissions-Policy", "camera=(), microphone=(), geolocation=(), payment=()")
        return response


def install_daphne_close_reasons() -> bool:
    """Daphne 4.2 drops the reason of a ``websocket.close`` (it sends the code only), so a worker never
    learns why it was refused (``KEY_BAN_ADVICE``, a revoked token's name). Send both (F14)."""
    try:
        from daphne.ws_protocol import WebSocketProtocol
    except ImportError:  # pragma: no cover - daphne is a dependency
        return False
    if getattr(WebSocketProtocol, "_btard_close_reasons", False):
        return True
    original = WebSocketProtocol.handle_reply

    def handle_reply(self, message):
        if message.get("type") == "websocket.close" and self.state != self.STATE_CONNECTING:
            code = message.get("code") or 1000
            reason = message.get("reason") or None
            if reason is not None and not (code == 1000 or 3000 <= code <= 4999):
                reason = None  # the websocket spec allows a reason with these codes only
            self.sendClose(code=code, reason=reason)
            return
        original(self, message)

    WebSocketProtocol.handle_reply = handle_reply
    WebSocketProtocol._btard_close_reasons = True
    return True


def install_daphne_body_limit() -> bool:
    """Refuse an over-long request body in Daphne itself, before it is buffered: Daphne (4.x) reads the
    whole body and queues all of it for the application at once, so a limit in the application alone
    comes too late for memory. The limit is :meth:`BodySizeLimit.limit_for` the request's path, checked
    against ``Content-Length`` when the headers are in and against the bytes received for a chunked body;
    the client gets ``413`` and the connection closes. Returns False when Daphne is not installed."""
    try:
        from daphne.http_protocol import WebRequest
    except ImportError:  # pragma: no cover - daphne is a dependency
        return False
    if getattr(WebRequest, "_btard_body_limit", False):
        return True
    original_got_length, original_chunk = WebRequest.gotLength, WebRequest.handleContentChunk

    def refuse(request) -> None:
        request._btard_refused = True
        transport = getattr(request.channel, "transport", None)
        if transport is not None:
            body = b"request body too large\n"
            transport.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: text/plain; charset=utf-8\r\n"
                            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
            transport.loseConnection()

    def got_length(self, length):
        raw_path = getattr(self.channel, "_path", b"") or b""
        path = raw_path.split(b"?", 1)[0].decode("latin-1")
        self._btard_limit = BodySizeLimit.limit_for(path)
        self._btard_seen = 0
        if length is not None and length > self._btard_limit:
            original_got_length(self, 0)
            refuse(self)
            return
        original_got_length(self, length)

    def handle_content_chunk(self, data):
        if getattr(self, "_btard_refused", False):
            return
        self._btard_seen = getattr(self, "_btard_seen", 0) + len(data)
        if self._btard_seen > getattr(self, "_btard_limit", settings.BTARD_MAX_BODY_BYTES):
            refuse(self)
            return
        original_chunk(self, data)

    WebRequest.gotLength = got_length
    WebRequest.handleContentChunk = handle_content_chunk
    WebRequest._btard_body_limit = True
    return True
