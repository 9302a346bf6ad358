"""Time btard-sim's steps one by one (not a test): CPU and wall per step, split into the protocol step
(``MemorySwarm.run_step``: gradients, the peers' work, the transport) and the loop's own work after it
(comparing the honest views, the optimizer), with the peak RSS.

    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python benchmarks/sim_step_time.py --task gpt-char --steps 3 \\
        --ctx 32 --batch 8 --warmup 2 --validators 4
    OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python benchmarks/sim_step_time.py --task mnist5k-mlp --steps 300

``--ctx``, ``--batch``, ``--warmup`` size the transformer as ``benchmarks/transformer_grid.py`` does (its
gradient and decode caches capped the same way). Prints one line per step and a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="mnist5k-mlp")
    ap.add_argument("--peers", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--validators", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--ctx", type=int, default=0)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--eval-windows", type=int, default=16)
    ap.add_argument("--quiet", action="store_true", help="only the summary")
    args = ap.parse_args(argv)
    c_start = time.process_time()
    import torch

    torch.set_num_threads(1)
    if args.task.startswith("gpt-char"):
        import transformer_grid as tg

        tg._configure_task({"task": args.task, "ctx": args.ctx, "eval_windows": args.eval_windows,
                            "warmup": args.warmup, "steps": args.steps})
    from worker_client.sim import run as sim_run
    from worker_client.transports import memory

    if args.task.startswith("gpt-char"):
        tg._cap_gradient_cache(sim_run.run_simulation, 24)
        tg._cap_decode_cache(300)
    steps: list[dict] = []
    original = memory.MemorySwarm.run_step
    marks: dict[str, float] = {}

    def run_step(self, contexts):
        c0, w0 = time.process_time(), time.perf_counter()
        if "c_end" in marks:  # the loop's own work since the last step ended
            steps[-1]["after_cpu"] = c0 - marks["c_end"]
        out = original(self, contexts)
        c1, w1 = time.process_time(), time.perf_counter()
        marks["c_end"] = c1
        row = {"step": len(steps), "cpu": c1 - c0, "wall": w1 - w0,
               "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "load": os.getloadavg()[0]}
        steps.append(row)
        if not args.quiet:
            print(json.dumps(row), flush=True)
        return out

    memory.MemorySwarm.run_step = run_step
    c0, w0 = time.process_time(), time.perf_counter()
    summary = sim_run.run_simulation(task=args.task, peers=args.peers, steps=args.steps, validators=args.validators,
                                     batch_size=args.batch, eval_every=0, threads=1)
    c1, w1 = time.process_time(), time.perf_counter()
    done = [s for s in steps if "after_cpu" in s]
    print(json.dumps({
        "task": args.task, "peers": args.peers, "steps": args.steps,
        "cpu_total": c1 - c_start, "cpu_run": c1 - c0, "wall_run": w1 - w0,
        "step_cpu": [round(s["cpu"], 3) for s in steps], "after_cpu": [round(s["after_cpu"], 3) for s in done],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "applied": summary["applied_steps"], "final_accuracy": summary["final_accuracy"],
        "load_end": os.getloadavg()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
