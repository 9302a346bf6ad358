"""Summarise a py-spy raw profile of btard-sim (not a test): the share of each phase of the step loop and
the top self frames, as docs/performance.md ("Simulator speed") reports them.

    OMP_NUM_THREADS=1 nice -n 19 py-spy record -r 100 -f raw -o /tmp/sim.raw -- \\
        .venv/bin/btard-sim --task mnist5k-mlp --peers 16 --steps 300 --no-progress
    .venv/bin/python benchmarks/sim_profile.py /tmp/sim.raw --top 30

A sample counts for the first phase of ``PHASES`` (in order) whose pattern matches a frame of its stack
(inclusive time); samples outside ``run_btard`` are start-up and the final evaluation.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
from pathlib import Path

START_UP = "start-up and final evaluation (outside run_btard)"
PHASES = [  # (label, pattern on a frame "function (file:line)"), first match wins
    ("model gradients", r"^Models\.(batch|gradient) "),
    ("CenteredClip (hook_aggregate)", r"^.*\.hook_aggregate "),
    ("send_scalars", r"^Checks\.send_scalars "),
    ("report", r"^Checks\.report "),
    ("fixed point + bound", r"^Checks\.(fixed_point|aggregate_bound) "),
    ("check_part", r"^Checks\.check_part "),
    ("check_aggregate", r"^Checks\.check_aggregate "),
    ("signing (_sign)", r"^BtardPeer\._sign "),
    ("part bytes + commitment hashes", r"^(tensor_to_hashed_bytes|hashed_parts) "),
    ("finish (_finish)", r"^BtardPeer\._finish "),
    ("board.post", r"^BulletinBoard\.post "),
    ("on_broadcast bookkeeping", r"^BtardPeer\.(on_broadcast|_accept_envelope|_store) "),
    ("rest of _advance", r"^BtardPeer\._advance "),
    ("board (other)", r"^BulletinBoard\."),
    ("evaluate", r"^World\.(evaluate|tick) "),
    ("apply update", r"^apply_flat_update "),
    ("transport and the rest of the peers' handlers (run_step, call, on_part, begin_step, ...)",
     r"^MemorySwarm\.run_step "),
]
_PATTERNS = [(label, re.compile(rx)) for label, rx in PHASES]


def summarise(path: Path) -> tuple[int, collections.Counter, collections.Counter]:
    phases: collections.Counter = collections.Counter()
    leaves: collections.Counter = collections.Counter()
    total = 0
    with path.open() as fh:
        for line in fh:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            n = int(count)
            total += n
            frames = stack.split(";")
            if not any(f.startswith("run_btard ") for f in frames):
                label = START_UP
            else:
                label = next((lab for lab, rx in _PATTERNS if any(rx.match(f) for f in frames)),
                             "run_btard's own code" if frames[-1].startswith("run_btard ") else "other in the loop")
            phases[label] += n
            leaves[re.sub(r":\d+\)$", ")", frames[-1])] += n
    return total, phases, leaves


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("raw", type=Path, help="py-spy record -f raw output")
    ap.add_argument("--top", type=int, default=25, help="self frames to list")
    args = ap.parse_args(argv)
    total, phases, leaves = summarise(args.raw)
    loop = total - phases[START_UP]
    print(f"samples {total}; in the step loop {loop} ({100 * loop / max(1, total):.1f} %)")
    print(f"{'all':>7} {'loop':>7}  phase")
    for label, n in phases.most_common():
        share = "" if label == START_UP else f"{100 * n / max(1, loop):6.1f}%"
        print(f"{100 * n / total:6.1f}% {share:>7}  {label}")
    print("top self frames (share of all samples):")
    for frame, n in leaves.most_common(args.top):
        print(f"{100 * n / total:6.1f}%  {frame}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
