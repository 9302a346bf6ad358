"""Honest recomputation error: how far apart two honest machines' gradients of the same batch are (not a test).

    .venv/bin/python benchmarks/recalc_error.py                       # every built-in task
    .venv/bin/python benchmarks/recalc_error.py --tasks gpt-char-small --seeds 5 --json

For each task the parent builds the model from the run seed, trains it ``--warm-steps`` steps with the
task's own optimizer (so the parameters are not the initial ones), and writes the flat parameters to a
file. Then each configuration computes, in a fresh process, the gradient of the same batches (public seeds)
at those parameters the way a worker does (:func:`worker_client.tasks.batch_gradient`, micro-batches
included): the CPU with 1 thread (the reference), the CPU with 2 threads and, when CUDA is available, the
GPU with the worker's reproducibility settings (:func:`worker_client.tasks.device.configure_device`).
Each row reports, over the batches, the largest relative L2 error ``||g - g_ref|| / ||g_ref||`` of the
whole gradient and of the worst of 16 parts (a validator compares per part, the protocol's
``recalc_mismatch``, with the part's norm plus the aggregate's norm as the scale, so the per-part
figure is the one ``recalc_rtol`` has to cover).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("digits-mlp", "mnist5k-mlp", "fashion-cnn", "fashion-resnet", "gpt-char-small", "gpt-char")
PARTS = 16
SEED = 0


def _child(args: argparse.Namespace) -> None:
    """Compute the gradients of ``--batch-seeds`` at the parameters in ``--params``; save them to ``--out``."""
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)
    from worker_client.tasks import batch_gradient, get_task, load_flat_params
    from worker_client.tasks.device import configure_device

    configure_device(args.device)
    task = get_task(args.task)
    model = task.build_model(seed=SEED)
    load_flat_params(model, torch.load(args.params))
    model.to(args.device)
    params = list(model.parameters())
    grads = []
    t0 = time.perf_counter()
    for seed in args.batch_seeds:
        x, y = task.batch(seed, task.default_batch_size)
        g, _ = batch_gradient(task, model, x.to(args.device), y.to(args.device), params)
        grads.append(g.cpu())
    torch.save({"grads": grads, "seconds": (time.perf_counter() - t0) / len(args.batch_seeds)}, args.out)


def _warm_params(task_name: str, steps: int, path: Path) -> int:
    import torch

    torch.set_num_threads(1)
    from worker_client.tasks import batch_gradient, flatten_params, get_task, set_flat_grads

    task = get_task(task_name)
    model = task.build_model(seed=SEED)
    opt = task.make_optimizer(model.parameters())
    for step in range(steps):
        x, y = task.batch(10_000 + step, task.default_batch_size)
        g, _ = batch_gradient(task, model, x, y)
        set_flat_grads(model, g)
        opt.step()
    flat = flatten_params(model).clone()
    torch.save(flat, path)
    return flat.numel()


def _run_config(task: str, params: Path, out: Path, *, threads: int, device: str, seeds: list[int]) -> dict:
    import torch

    cmd = [sys.executable, __file__, "--child", "--task", task, "--params", str(params), "--out", str(out),
           "--threads", str(threads), "--device", device, "--batch-seeds", *map(str, seeds)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    return torch.load(out)


def _errors(ref: list, other: list) -> dict[str, float]:
    from worker_client.btard.protocol import part_bounds

    whole, worst_part = 0.0, 0.0
    for g0, g1 in zip(ref, other):
        whole = max(whole, float((g1 - g0).norm() / g0.norm().clamp_min(1e-30)))
        for a, b in part_bounds(g0.numel(), PARTS):
            norm = float(g0[a:b].norm())
            if norm > 0:
                worst_part = max(worst_part, float((g1[a:b] - g0[a:b]).norm()) / norm)
    return {"rel_l2": whole, "rel_l2_worst_part": worst_part,
            "bit_identical": all(bool((g0 == g1).all()) for g0, g1 in zip(ref, other))}


def measure(task: str, *, seeds: int, warm_steps: int) -> dict:
    import torch

    batch_seeds = [1000 + i for i in range(seeds)]
    with tempfile.TemporaryDirectory(prefix="recalc-") as tmp:
        params = Path(tmp) / "params.pt"
        numel = _warm_params(task, warm_steps, params)
        ref = _run_config(task, params, Path(tmp) / "cpu1.pt", threads=1, device="cpu", seeds=batch_seeds)
        row = {"task": task, "params": numel, "batches": seeds, "seconds_cpu1": ref["seconds"]}
        cpu2 = _run_config(task, params, Path(tmp) / "cpu2.pt", threads=2, device="cpu", seeds=batch_seeds)
        row["cpu2"] = _errors(ref["grads"], cpu2["grads"])
        if torch.cuda.is_available():
            gpu = _run_config(task, params, Path(tmp) / "cuda.pt", threads=1, device="cuda", seeds=batch_seeds)
            row["cuda"] = _errors(ref["grads"], gpu["grads"])
        else:
            row["cuda"] = None
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--seeds", type=int, default=3, help="batches per task (default: %(default)s)")
    parser.add_argument("--warm-steps", type=int, default=3, help="optimizer steps before measuring")
    parser.add_argument("--json", action="store_true", help="print one JSON object per task as well")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--task", help=argparse.SUPPRESS)
    parser.add_argument("--params", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--batch-seeds", type=int, nargs="*", default=[], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args)
        return 0
    import torch

    gpu = torch.cuda.is_available()
    print(f"honest recomputation error vs the CPU with 1 thread (torch {torch.__version__}; "
          f"{'CUDA: ' + torch.cuda.get_device_name(0) if gpu else 'no CUDA GPU here: no GPU column'})")
    header = "| task | parameters | CPU 2 threads: whole | CPU 2 threads: worst part |"
    header += " GPU: whole | GPU: worst part |" if gpu else ""
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    rows = []
    for task in args.tasks:
        row = measure(task, seeds=args.seeds, warm_steps=args.warm_steps)
        rows.append(row)
        c = row["cpu2"]
        line = f"| {task} | {row['params']:,} | {c['rel_l2']:.2e} | {c['rel_l2_worst_part']:.2e} |"
        if gpu:
            line += f" {row['cuda']['rel_l2']:.2e} | {row['cuda']['rel_l2_worst_part']:.2e} |"
        print(line, flush=True)
        if args.json:
            print(json.dumps(row), flush=True)
    worst = max(max(r["cpu2"]["rel_l2_worst_part"], (r["cuda"] or {}).get("rel_l2_worst_part", 0.0)) for r in rows)
    print(f"largest honest error (worst part, any task): {worst:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
