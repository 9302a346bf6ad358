"""What a withholding last MPRNG revealer gains (security review, finding 14; not a test).

    .venv/bin/python benchmarks/reveal_dodger.py            # n = 6, m = 2 and n = 16, m = 2
    .venv/bin/python benchmarks/reveal_dodger.py --json

A reveal missing at the site's close of ``mprng_reveal`` is silence (issue 13): r_t is combined from the
other members' reveals, so the last revealer, having seen them, picks between two draws (with or without
its value). The ``reveal_dodger`` behaviour withholds exactly when the draw with its value makes a
validator check it. Two measurements:

- the draw alone (torch-free, ``btard_wire``): ``q``, the chance a given contributor is a target, and the
  dodger's chance of being checked, ``q**2`` instead of ``q``; per withheld step it escapes a check it
  would have got with probability ``1 - q``; the expected steps to its ban under the consecutive silence
  count alone and under the sliding window (``REVEAL_WITHHOLD_LIMIT`` withheld reveals within
  ``REVEAL_WINDOW`` steps, ``btard_wire.board.next_withheld_steps``), and the chance a *paced* dodger is
  checked: one that withholds only while its window holds fewer than the limit - 1 (so it keeps its key);
- the behaviour in the in-memory swarm (``tests/protocol/_swarm.py``): steps withheld, checks escaped,
  the step and kind of its ban (``withheld_reveal``: the window; ``silence``: ``SILENCE_LIMIT`` consecutive
  silent steps), honest bans and honest disagreement (both must be 0).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from btard_wire.board import REVEAL_WINDOW, REVEAL_WITHHOLD_LIMIT, SILENCE_LIMIT, next_withheld_steps
from btard_wire.randomness import combine_reveals, draw_validators


def draw_rates(n: int, m: int, trials: int) -> dict:
    group = [f"p{i:02d}" for i in range(n)]
    dodger = group[1]
    targeted = checked = paced_checked = paced_withheld = 0
    window: list[int] = []
    for step in range(trials):
        xs = [secrets.token_bytes(32) for _ in group]
        with_mine = dodger in draw_validators(combine_reveals(xs), group=group, targets=group, m=m).values()
        without = [x for p, x in zip(group, xs) if p != dodger]
        checked_without = with_mine and dodger in draw_validators(combine_reveals(without), group=group,
                                                                  targets=group, m=m).values()
        targeted += with_mine
        checked += checked_without  # it withholds when targeted: checked only if the other draw checks it too
        # (not targeted: it reveals and is not checked)
        paced = with_mine and len(window) < REVEAL_WITHHOLD_LIMIT - 1  # withholds only while it keeps its key
        paced_withheld += paced
        paced_checked += checked_without if paced else with_mine
        window = next_withheld_steps(window, step=step, withheld=paced)
    q = targeted / trials
    return {"n": n, "m": m, "trials": trials, "q_targeted": q, "p_checked_dodging": checked / trials,
            "q_squared": q * q, "p_escape_per_withheld_step": 1 - checked / max(1, targeted),
            "expected_steps_to_silence_ban": sum(q ** -k for k in range(1, SILENCE_LIMIT + 1)) if q else None,
            "expected_steps_to_window_ban": REVEAL_WITHHOLD_LIMIT / q if q else None,
            "paced_p_checked": paced_checked / trials, "paced_withheld_fraction": paced_withheld / trials,
            "window": [REVEAL_WITHHOLD_LIMIT, REVEAL_WINDOW]}


def swarm_run(n: int, m: int, steps: int, seed: int) -> dict:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    from tests.protocol._swarm import Swarm
    from worker_client.btard import protocol as P

    swarm = Swarm(n=n, attack="reveal_dodger", byzantine=(1,), attack_start=0, seed=seed,
                  params=P.ProtocolParams(tau=1.0, validators=m))
    dodger = swarm.ids[1]
    disagreements = 0
    banned_at = None
    for _ in range(steps):
        results = swarm.step()
        honest = [p for p in results if p in swarm.honest]
        updates = [results[p].update for p in honest]
        if (len({results[p].r for p in honest}) != 1 or len({results[p].outcome for p in honest}) != 1
                or not all(u is None and updates[0] is None or (u is not None and updates[0] is not None
                                                                 and torch.equal(u, updates[0])) for u in updates)):
            disagreements += 1
        if dodger in swarm.board.banned:
            banned_at = swarm.step_no - 1
            break
    peer = swarm.peers[dodger]
    ran = swarm.step_no
    return {"n": n, "m": m, "seed": seed, "steps": ran, "withheld": len(peer.dodged), "escaped": len(peer.escaped),
            "banned_at": banned_at, "ban_kind": swarm.board.banned[dodger].kind if banned_at is not None else None,
            "honest_banned": sorted(p[:8] for p in swarm.board.banned if p != dodger),
            "honest_disagreements": disagreements,
            "honest_applied": sum(1 for r in swarm.history for p, x in r.items() if p in swarm.honest
                                  and x.outcome == "applied") // max(1, len(swarm.honest))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20000)
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = {"draw": [draw_rates(n, m, args.trials) for n, m in ((6, 2), (16, 2))],
            "swarm": [swarm_run(6, 2, args.steps, s) for s in range(args.seeds)]}
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    for r in rows["draw"]:
        print(f"draw n={r['n']} m={r['m']}: q={r['q_targeted']:.3f} checked while dodging={r['p_checked_dodging']:.3f} "
              f"(q^2={r['q_squared']:.3f}); escape per withheld step={r['p_escape_per_withheld_step']:.3f}; "
              f"expected steps to the ban: consecutive count {r['expected_steps_to_silence_ban']:.0f}, "
              f"window {r['expected_steps_to_window_ban']:.0f}; paced dodger (keeps its key) checked="
              f"{r['paced_p_checked']:.3f}, withholds in {r['paced_withheld_fraction']:.3f} of the steps")
    for r in rows["swarm"]:
        print(f"swarm n={r['n']} m={r['m']} seed={r['seed']}: {r['steps']} steps, withheld {r['withheld']}, "
              f"escaped {r['escaped']}, banned at {r['banned_at']} ({r['ban_kind']}), honest banned "
              f"{r['honest_banned']}, honest disagreements {r['honest_disagreements']}, "
              f"steps applied {r['honest_applied']}")


if __name__ == "__main__":
    main()
