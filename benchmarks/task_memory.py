"""Peak RSS of one worker process holding a task's model state (not a test).

    .venv/bin/python benchmarks/task_memory.py                    # gpt-char (10.8M parameters)
    .venv/bin/python benchmarks/task_memory.py --task fashion-resnet --batch-size 32

Builds exactly what a networked worker holds for the run (:class:`worker_client.worker.model_state.ModelState`: the
model, the scratch model gradients are computed on, the optimizer, the flat snapshots kept for
validation), computes one gradient of a peer's batch, applies it (so the optimizer's moments exist) and
serialises the state a newcomer would download. Each stage runs in a fresh process so that the peak of
one stage is not hidden by an earlier one; prints ru_maxrss (peak resident set size) after each.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("import", "build", "gradient", "apply", "publish")


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def stage(task_name: str, until: str, batch_size: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from worker_client.worker.model_state import ModelState
    from worker_client.tasks import get_task

    task = get_task(task_name)
    task.data  # noqa: B018 - the worker loads the data set before its first step
    out = {"stage": until}
    if until != "import":
        state = ModelState(task, seed=0, lr=task.lr, device="cpu")
        state.snapshot(0)
        out.update(numel=state.numel, state_numel=state.state_numel)
        if until in ("gradient", "apply", "publish"):
            g, loss = state.gradient(0, seed=1, batch_size=batch_size)
            out["loss"] = loss
            if until in ("apply", "publish"):
                state.apply(g, 1)
                del g
            if until == "publish":
                blob = state.full_state().numpy().astype("<f4").tobytes()
                out["state_mib"] = len(blob) / 2**20
    out["peak_rss_mib"] = round(_peak_mib(), 1)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="gpt-char")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage:
        print(json.dumps(stage(args.task, args.stage, args.batch_size, args.threads)))
        return 0
    rows = []
    for name in STAGES:
        proc = subprocess.run([sys.executable, __file__, "--task", args.task, "--batch-size", str(args.batch_size),
                               "--threads", str(args.threads), "--stage", name],
                              capture_output=True, text=True, cwd=ROOT, check=True)
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    raise SystemExit(main())
