"""Settings that keep a GPU's gradients close enough to a CPU's for validation by recomputation.

A validator recomputes a peer's gradient on its own machine (CPU or GPU) and accuses the peer when the
two differ by more than ``recalc_rtol`` in relative L2 (docs/protocol.md, "Recomputation error"). On
CUDA, TF32 matrix products and convolutions (10-bit mantissa) would put the honest error near 1e-3 and
the non-deterministic cuBLAS/cuDNN algorithms would make two runs on one GPU differ; so a worker on
CUDA trains in full float32 with deterministic algorithms where torch has them (``warn_only``: an op
without one warns instead of failing). The CPU needs nothing: its kernels are deterministic for a
given thread count, and the thread count only changes the order of float32 sums.
"""

from __future__ import annotations

import os

import torch

# cuBLAS picks reproducible reductions only with a fixed workspace; read when the first handle is made,
# so it is set before the worker touches CUDA (https://docs.nvidia.com/cuda/cublas/#results-reproducibility).
CUBLAS_WORKSPACE = ":4096:8"


def configure_device(device: str) -> dict[str, object]:
    """Apply the reproducibility settings for training on ``device`` ("cpu", "cuda", "cuda:N") and return
    them (what the worker logs). On the CPU nothing is changed."""
    if not str(device).startswith("cuda"):
        return {"device": str(device)}
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False  # autotuning may pick another algorithm on every run
    torch.backends.cudnn.deterministic = True
    torch.set_float32_matmul_precision("highest")
    torch.use_deterministic_algorithms(True, warn_only=True)
    return device_settings(device)


def device_settings(device: str) -> dict[str, object]:
    """The settings that decide how reproducible a gradient on ``device`` is, as they are now."""
    return {"device": str(device), "allow_tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
            "allow_tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "cudnn_deterministic": torch.backends.cudnn.deterministic, "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
            "float32_matmul_precision": torch.get_float32_matmul_precision()}
