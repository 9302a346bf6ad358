"""Model checkpoints: the model state as safetensors bytes, their hash, and the upload to the site.

At a checkpoint step (``RunInfo.checkpoint_every``) every member reports the sha256 of its state in its
``StepReport``; honest peers hold bit-identical states, so their hashes agree. One member (the first of
the group by peer id) uploads the bytes over HTTP with its worker token. The site keeps the upload only
when a strict majority of the step's group reported the same hash, so no single peer can plant a model.
safetensors carries tensors and nothing else: loading one never runs code (no pickle).
"""

from __future__ import annotations

import hashlib
import json
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit, urlunsplit

import torch
from safetensors.torch import save

from btard_wire.errors import CodedError


def state_bytes(model: torch.nn.Module) -> bytes:
    """The model's parameters and buffers as safetensors bytes (deterministic for equal tensors)."""
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in model.state_dict().items()}
    return save(tensors, metadata={"format": "pt"})


def state_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_checkpoint_step(step: int, every: int) -> bool:
    return every > 0 and (step + 1) % every == 0


def upload_url(http_base: str, run_id: int, step: int) -> str:
    return f"{http_base.rstrip('/')}/api/runs/{run_id}/checkpoints/{step}/"


class UploadRefused(CodedError, RuntimeError):
    """The site refused a checkpoint upload: HTTP ``status``, the site's ``code`` and ``reason``."""

    def __init__(self, status: int, code: str, reason: str):
        super().__init__(code, reason)
        self.status, self.reason = status, reason

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.reason}"


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect would carry the ``Authorization`` header (the worker token) to wherever it points, turn
    the POST into a GET and report success for an upload that never happened: refuse every one."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise urllib.error.HTTPError(req.full_url, code, f"redirect to {newurl[:200]} refused: the token "
                                                         f"goes only to --server", headers, fp)


def no_redirect_opener() -> urllib.request.OpenerDirector:
    """An opener that follows no redirect (the checkpoint upload, doctor's site check)."""
    return urllib.request.build_opener(_RefuseRedirects)


def upload(url: str, token: str, data: bytes, *, attempts: int = 6, wait: float = 2.0,
           timeout: float = 60.0) -> dict:
    """POST ``data`` to ``url``. Retries while the site answers 409 ``unconfirmed`` (the group's reports
    are still arriving) and on network errors; any other refusal is final, and so is a redirect (never
    followed). Returns the site's JSON, which must say ``ok`` (and name the uploaded bytes' hash, when it
    names one): anything else raises :class:`UploadRefused`."""
    last: Exception | None = None
    opener = no_redirect_opener()
    for attempt in range(attempts):
        request = urllib.request.Request(url, data=data, method="POST", headers={
            "Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"})
        try:
            with opener.open(request, timeout=timeout) as response:  # noqa: S310 - the site's URL
                try:
                    body = json.loads(response.read(64 * 1024) or b"{}")
                except (ValueError, RecursionError):
                    body = None
            if not isinstance(body, dict) or body.get("ok") is not True or \
                    body.get("sha256", state_digest(data)) != state_digest(data):
                raise UploadRefused(response.status, "unexpected", "the site's answer does not confirm the upload")
            return body
        except urllib.error.HTTPError as exc:
            try:
                body = json.loads(exc.read(64 * 1024) or b"{}") if exc.fp is not None else {}
            except (ValueError, RecursionError):
                body = {}
            if not isinstance(body, dict):
                body = {}
            last = UploadRefused(exc.code, body.get("code", "http"), body.get("reason", exc.reason or ""))
            if not (exc.code == 409 and body.get("code") == "unconfirmed"):
                raise last from None
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        time.sleep(wait * (attempt + 1))
    raise last if last else RuntimeError("upload failed")


def http_base(server: str) -> str:
    """The site's HTTP origin for ``--server`` (``ws(s)://`` is mapped back to ``http(s)://``)."""
    parts = urlsplit(server if "://" in server else f"https://{server}")  # no scheme means https
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, "", "", ""))
