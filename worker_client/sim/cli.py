"""``btard-sim``: the command line of :func:`worker_client.sim.run_simulation`."""

from __future__ import annotations

import argparse
import json
import sys

from ..btard.aggregators import AGGREGATORS
from ..btard.attacks import ATTACKS
from .run import MODES, run_simulation

DESCRIPTION = "btard-sim: simulate a swarm on one machine, honest and Byzantine peers, BTARD or a baseline rule."
EPILOG = """\
    btard-sim --task mnist5k-mlp --peers 16 --byzantine 7 --attack alie --attack-start 50 \\
              --aggregator btard --steps 300 --seed 0 --json out.json

BTARD runs in the worker's mode (board echo, phases closed by the board, the site's group order,
probation for --joiners); --mode shared_view runs the earlier simulator for comparison."""


def _kv(text: str) -> tuple[str, float]:
    key, _, value = text.partition("=")
    if not key or not value:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: value must be a number") from None


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="btard-sim", description=DESCRIPTION, epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="mnist5k-mlp")
    ap.add_argument("--peers", type=int, default=16)
    ap.add_argument("--byzantine", type=int, default=0)
    ap.add_argument("--attack", default="none", help=f"none or one of: {', '.join(ATTACKS)}")
    ap.add_argument("--attack-start", type=int, default=0)
    ap.add_argument("--attack-every", type=int, default=1)
    ap.add_argument("--attack-param", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                    help="attack parameter, e.g. eps=100 for ipm (repeatable)")
    ap.add_argument("--aggregator", default="btard",
                    help=f"btard, kardam (asynchronous baseline) or one of: {', '.join(AGGREGATORS)}")
    ap.add_argument("--mode", default="worker", choices=MODES,
                    help="btard only: worker (default: what a deployment runs) or shared_view (the earlier simulator)")
    ap.add_argument("--joiners", type=int, default=0,
                    help="btard only: peers that join at --join-step as candidates and go through probation")
    ap.add_argument("--byzantine-joiners", type=int, default=0, help="how many of the joiners run --attack")
    ap.add_argument("--join-step", type=int, default=10)
    ap.add_argument("--probation-steps", type=int, default=5, help="counted probation steps before promotion")
    ap.add_argument("--non-iid", type=float, default=0.0, metavar="ALPHA",
                    help="label-skewed shards, Dirichlet(ALPHA) per class (e.g. 0.5); 0: every peer samples "
                         "the whole training set")
    ap.add_argument("--staleness", type=int, default=0,
                    help="kardam only: an honest worker computes on the model of up to this many rounds ago")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tau", type=float, default=1.0, help="CenteredClip tau per part")
    ap.add_argument("--tau-rule", default="spread", choices=["fixed", "spread"],
                    help="btard: spread (the default: --tau-spread x each part's majority-th published "
                         "distance in the step; --tau where that is 0) or fixed (--tau everywhere)")
    ap.add_argument("--tau-spread", type=float, default=None, help="the spread rule's constant (default 0.5)")
    ap.add_argument("--rule-f", type=int, default=None,
                    help="f told to a baseline rule that takes one (default: the true number of attackers)")
    ap.add_argument("--validators", type=int, default=2, help="validators per step (m)")
    ap.add_argument("--alarm-factor", type=int, default=None,
                    help="btard: a step after a recalculation ban draws this many times --validators "
                         "(default 2; 1: off)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--global-batch", type=int, default=0,
                    help="samples per step split across the group (keeps the step's batch when peers are banned)")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--json", dest="json_path", default=None)
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    kwargs = vars(args)
    kwargs["attack_params"] = {k: v for k, v in kwargs.pop("attack_param")}
    tau_rule, tau_spread = kwargs.pop("tau_rule"), kwargs.pop("tau_spread")
    protocol = {"tau_rule": tau_rule}
    if tau_spread is not None:
        protocol["tau_spread"] = tau_spread
    alarm = kwargs.pop("alarm_factor")
    if alarm is not None:
        protocol["alarm_factor"] = alarm
    if protocol:
        kwargs["protocol_params"] = protocol
    try:
        out = run_simulation(**kwargs)
    except ValueError as exc:
        print(f"btard-sim: {exc}", file=sys.stderr)
        return 2
    summary = {k: out[k] for k in ("final_accuracy", "honest_banned", "byzantine_banned", "last_ban_step",
                                   "applied_steps", "dropped_steps", "seconds_per_step")}
    if out.get("reverted_steps"):  # applied, then undone by the next step's recalculation ban
        summary["reverted_steps"] = out["reverted_steps"]
    if "ended_early" in out:
        summary["ended_early"] = out["ended_early"]
    if "probation" in out:
        summary["probation"] = {k: out["probation"][k]
                                for k in ("honest_promoted", "byzantine_promoted", "honest_failed_steps",
                                          "byzantine_failed_steps", "still_candidates") if k in out["probation"]}
    print(json.dumps(summary))
    return 0
