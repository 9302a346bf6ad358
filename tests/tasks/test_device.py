"""A worker on CUDA trains without TF32 and with deterministic algorithms (no GPU needed to check the
settings: they are torch flags and one environment variable)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

PROBE = """
import json, os, torch
torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True
torch.backends.cudnn.benchmark = True
from worker_client.tasks.device import configure_device
before = configure_device("cpu")
print(json.dumps({"cpu": before, "cpu_tf32": torch.backends.cuda.matmul.allow_tf32,
                  "cuda": configure_device(%r)}))
"""


def _probe(device: str, env: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"} | (env or {})
    out = subprocess.run([sys.executable, "-c", PROBE % device], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_it_turns_tf32_off_and_deterministic_algorithms_on_for_cuda(device):
    got = _probe(device)["cuda"]
    assert got["allow_tf32_matmul"] is False and got["allow_tf32_cudnn"] is False
    assert got["deterministic_algorithms"] is True and got["cudnn_deterministic"] is True
    assert got["cudnn_benchmark"] is False and got["float32_matmul_precision"] == "highest"
    assert got["cublas_workspace_config"] == ":4096:8"


def test_it_keeps_a_workspace_config_the_user_set():
    assert _probe("cuda", {"CUBLAS_WORKSPACE_CONFIG": ":16:8"})["cuda"]["cublas_workspace_config"] == ":16:8"


def test_it_changes_nothing_on_the_cpu():
    got = _probe("cuda")
    assert got["cpu"] == {"device": "cpu"} and got["cpu_tf32"] is True


def test_the_worker_applies_the_settings_for_the_device_it_picked(monkeypatch):
    from btard_wire.envelope import Identity
    from worker_client.tasks import device as device_mod
    from worker_client.worker import worker as worker_mod

    seen = []

    class Stop(Exception):
        pass

    def record(device):
        seen.append(device)
        raise Stop

    monkeypatch.setattr(worker_mod, "pick_device", lambda requested: "cuda")
    monkeypatch.setattr(device_mod, "configure_device", record)
    worker = worker_mod.Worker(worker_mod.WorkerConfig(server="http://127.0.0.1:9", token="t",
                                                       identity=Identity.from_seed(b"device-test")))
    with pytest.raises(Stop):
        asyncio.run(worker.run())
    assert seen == ["cuda"]


def test_cuda_without_a_gpu_is_refused_with_a_sentence(monkeypatch):
    from worker_client.worker import worker as worker_mod

    monkeypatch.setattr(worker_mod.torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="no CUDA GPU is visible"):
        worker_mod.pick_device("cuda")
    assert worker_mod.pick_device(None) == "cpu"
