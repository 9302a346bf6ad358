"""Fingerprint simulated runs: every envelope the board stored, in order, and the run summary.

A speed-up of the simulator or of the protocol core must not change a published bit: this prints, for
each cell, the SHA-256 of the board's log (every stored envelope's canonical JSON, in the order the
board stored it: commitments carry the parts' hashes, ``agg_result`` the aggregates' hashes and the
published distances, ``scalars`` the float64 scalars, reports, accusations and verdicts) and of the
run summary without its timings (accuracy curve, bans with their evidence digests, message and byte
counts). Run it from two checkouts (``PYTHONPATH=<checkout>``) and compare the lines::

    OMP_NUM_THREADS=1 PYTHONPATH=/tmp/base python benchmarks/sim_fingerprint.py --cells quick > base.txt
    OMP_NUM_THREADS=1 python benchmarks/sim_fingerprint.py --cells quick > new.txt
    diff base.txt new.txt
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time

# the attacks of the accusation, verdict and bound paths (8 peers, 2 attackers from step 2)
ATTACK_CELLS = ["wrong_aggregate", "lie_scalars", "forged_aggregate", "absorber", "equivocate", "withhold_part",
                "withhold_reveal", "late_eliminate", "free_rider_copy", "ride_recalc"]
# name -> run_simulation keyword arguments (16 peers of mnist5k-mlp unless said otherwise)
CELLS: dict[str, dict] = {
    "clean": {"steps": 40},
    "sign_flip3": {"byzantine": 3, "attack": "sign_flip", "attack_start": 5, "steps": 30},
    "alie7": {"byzantine": 7, "attack": "alie", "attack_start": 3, "steps": 20},
    "false_accuse2": {"byzantine": 2, "attack": "false_accuse", "steps": 12},
    "ipm7_spread": {"byzantine": 7, "attack": "ipm", "attack_start": 3, "steps": 15,
                    "protocol_params": {"tau_rule": "spread"}},
    "joiners": {"peers": 8, "joiners": 3, "byzantine_joiners": 1, "byzantine": 1, "attack": "sign_flip",
                "join_step": 3, "probation_steps": 2, "steps": 14},
    "non_iid_gb": {"peers": 8, "non_iid": 0.5, "global_batch": 256, "steps": 12},
    "shared_view": {"peers": 8, "byzantine": 2, "attack": "sign_flip", "mode": "shared_view", "steps": 10},
    **{a: {"peers": 8, "byzantine": 2, "attack": a, "attack_start": 2, "steps": 8} for a in ATTACK_CELLS},
}
GROUPS = {"quick": ["clean", "sign_flip3", "false_accuse2", "joiners"], "attacks": ATTACK_CELLS, "all": list(CELLS)}


def fingerprint(cell: dict) -> tuple[str, str, dict]:
    from worker_client.sim import run_simulation
    from worker_client.transports import memory

    log = hashlib.sha256()
    original = memory.BulletinBoard.post

    def recording_post(self, connection, envelope):
        stored = original(self, connection, envelope)
        if stored:
            log.update(envelope.model_dump_json().encode() + b"\n")
        return stored

    memory.BulletinBoard.post = recording_post
    try:
        out = run_simulation(**{"task": "mnist5k-mlp", "peers": 16, "eval_every": 5, **cell})
    finally:
        memory.BulletinBoard.post = original
    timings = {k: out.pop(k) for k in ("seconds_per_step", "cpu_seconds_per_step")}
    return log.hexdigest(), hashlib.sha256(json.dumps(out, sort_keys=True).encode()).hexdigest(), {
        **timings, "final_accuracy": out["final_accuracy"], "bans": len(out["bans"])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", default="quick", help=f"a group ({', '.join(GROUPS)}) or comma-separated cell names")
    ap.add_argument("--timings", action="store_true", help="also print each cell's CPU seconds per step (stderr)")
    args = ap.parse_args(argv)
    names = GROUPS.get(args.cells) or args.cells.split(",")
    for name in names:
        t0 = time.process_time()
        try:
            board, summary, info = fingerprint(CELLS[name])
        except Exception as exc:  # noqa: BLE001 - a cell that fails is part of the fingerprint too
            print(f"{name} error={type(exc).__name__}: {str(exc)[:120]}")
            continue
        print(f"{name} board={board[:16]} summary={summary[:16]} acc={info['final_accuracy']} bans={info['bans']}")
        sys.stdout.flush()
        if args.timings:
            print(f"{name}: {time.process_time() - t0:.2f} s CPU, {info['cpu_seconds_per_step']:.4f} s/step in the loop",
                  file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
