"""btard-sim on the small transformer (gpt-char-small): 16 peers, 7 Byzantine, BTARD vs mean (not a test).

    .venv/bin/python benchmarks/lm_sim_small.py --steps 100 --out var/lm-sim-small

Runs the paired clean run (BTARD, no attack) and, for each attack, BTARD and the plain mean, one process
each (torch threads 1), and records the held-out loss (nats per byte, ``GptChar.metrics``) at every
evaluation next to btard-sim's accuracy: btard-sim itself reports the held-out accuracy only, so this
script wraps the task's ``evaluate`` to keep the loss of the same evaluation. One JSON file per run
(the btard-sim summary plus ``loss_curve``, ``final_loss`` and ``wall_seconds``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def one_run(*, attack: str, aggregator: str, steps: int, seed: int, attack_start: int, eval_every: int,
            out: Path, tau: float = 1.0) -> dict:
    import torch

    torch.set_num_threads(1)
    from worker_client.sim import run_simulation
    from worker_client.tasks.lm import GptChar

    losses: list[float] = []
    original = GptChar.evaluate

    def evaluate(self, model, *, batch_size: int = 32) -> float:
        m = self.metrics(model, batch_size=batch_size)
        losses.append(m["loss"])
        return m["accuracy"]

    GptChar.evaluate = evaluate
    try:
        t0 = time.monotonic()
        summary = run_simulation(task="gpt-char-small", peers=16, byzantine=0 if attack == "none" else 7,
                                 attack=attack, attack_start=attack_start, aggregator=aggregator, steps=steps,
                                 seed=seed, eval_every=eval_every, threads=1, tau=tau)
        summary["wall_seconds"] = time.monotonic() - t0
    finally:
        GptChar.evaluate = original
    summary["loss_curve"] = [[step, loss] for (step, _), loss in zip(summary["accuracy_curve"], losses)]
    summary["final_loss"] = losses[-1] if losses else None
    out.write_text(json.dumps(summary, default=str))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--attack-start", type=int, default=10, help="after the task's warm-up (10 updates)")
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--tau", type=float, default=1.0, help="CenteredClip tau per part (btard-sim's default 1)")
    parser.add_argument("--out", default="var/lm-sim-small")
    parser.add_argument("--run", nargs=2, metavar=("ATTACK", "AGGREGATOR"), action="append",
                        help="only these (repeatable); default: none btard, then sign_flip and alie x btard, mean")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = args.run or [("none", "btard")] + [(a, g) for a in ("sign_flip", "alie") for g in ("btard", "mean")]
    for attack, aggregator in runs:
        s = one_run(attack=attack, aggregator=aggregator, steps=args.steps, seed=args.seed,
                    attack_start=args.attack_start, eval_every=args.eval_every, tau=args.tau,
                    out=out / f"{attack}-{aggregator}-tau{args.tau:g}-seed{args.seed}.json")
        print(json.dumps({"attack": attack, "aggregator": aggregator, "final_loss": s["final_loss"],
                          "final_accuracy": s["final_accuracy"], "bans": len(s.get("bans", [])),
                          "honest_banned": s.get("honest_banned"), "wall_seconds": round(s["wall_seconds"])}),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
