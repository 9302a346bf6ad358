"""The worker's side of checkpoints: deterministic state bytes, and an upload that waits for the group."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from torch import nn

from worker_client.checkpoint import (
    UploadRefused,
    http_base,
    is_checkpoint_step,
    state_bytes,
    state_digest,
    upload,
    upload_url,
)


def test_equal_models_give_equal_bytes_and_the_bytes_load_without_pickle():
    from safetensors.torch import load

    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    b = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    b.load_state_dict(a.state_dict())
    assert state_bytes(a) == state_bytes(b) and len(state_digest(state_bytes(a))) == 64
    loaded = load(state_bytes(a))
    assert set(loaded) == set(a.state_dict()) and torch.equal(loaded["0.weight"], a[0].weight)
    with torch.no_grad():
        b[0].weight[0, 0] += 1e-6
    assert state_digest(state_bytes(a)) != state_digest(state_bytes(b))


def test_checkpoint_steps_and_urls():
    assert [s for s in range(10) if is_checkpoint_step(s, 5)] == [4, 9]
    assert not any(is_checkpoint_step(s, 0) for s in range(10))
    assert http_base("wss://swarm.example:8443/ws/worker/") == "https://swarm.example:8443"
    assert upload_url("http://127.0.0.1:8000/", 3, 49) == "http://127.0.0.1:8000/api/runs/3/checkpoints/49/"


class _Site(BaseHTTPRequestHandler):
    answers: list[tuple[int, dict]] = []
    received: list[tuple[str, bytes]] = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((self.headers["Authorization"], body))
        status, payload = type(self).answers.pop(0)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def site():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Site)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Site.received = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_upload_retries_while_the_group_is_still_reporting(site):
    _Site.answers = [(409, {"code": "unconfirmed", "reason": "1 of 3"}), (201, {"ok": True, "step": 1})]
    out = upload(upload_url(site, 1, 1), "btard_ab_cd", b"bytes", wait=0.01)
    assert out == {"ok": True, "step": 1}
    assert [auth for auth, _ in _Site.received] == ["Bearer btard_ab_cd"] * 2 and _Site.received[0][1] == b"bytes"


def test_a_final_refusal_is_not_retried_and_says_why(site):
    _Site.answers = [(409, {"code": "mismatch", "reason": "only 1 of 3 members reported this state"})]
    with pytest.raises(UploadRefused) as refused:
        upload(upload_url(site, 1, 1), "t", b"x", wait=0.01)
    assert refused.value.code == "mismatch" and "only 1 of 3" in str(refused.value) and len(_Site.received) == 1
