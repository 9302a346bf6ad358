"""The transformer grid of issue 14: btard-sim on ``gpt-char`` with 16 peers, 7 Byzantine (not a test).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/transformer_grid.py \\
        --task gpt-char --steps 14 --ctx 32 --batch 8 --warmup 2 --attack-start 2 --validators 4 \\
        --out results/transformer/gpt-char-s14
    .venv/bin/python benchmarks/transformer_grid.py --plot results/transformer/gpt-char-s14

Runs the paired clean run (BTARD, no attack), then ALIE, IPM and sign flip against BTARD, the plain mean
and CenteredClip on a trusted server (the same seeds and attackers, btard-sim's baselines), then the
trusted-server mean without attack. One fresh process per run (so one run's memory is given back before
the next), one JSON file per run: the btard-sim summary plus the held-out loss (nats per byte,
``GptChar.metrics``) at every evaluation, the wall and CPU time, the load average and the peak RSS.
**Resumable**: a run whose JSON exists is skipped, so the same command continues an interrupted grid.
``--plot DIR`` draws the held-out loss curves of a grid (one panel per attack) to ``DIR/loss.png`` and
prints the table (final loss, gap to the clean run, bans, applied steps).

The sizes are the task's, except what the flags override for the time this machine allows (recorded in
every JSON under ``config``): ``--ctx`` (training and held-out windows; the model keeps the task's layers
and width, its position table shrinks to ``ctx`` rows), ``--batch`` (windows per peer and step),
``--warmup`` (learning-rate warm-up, in applied updates) and ``--total-steps`` (the cosine's end;
default ``--steps``). ``--trace`` also records, per step, whether it was applied, the norm of the applied
update, the parameter change, the cosine between the update and a clean reference gradient (fixed
probe batch), and the norm of AdamW's second moment: what the sign-flip analysis in docs/results.md reads.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ATTACKS = ("sign_flip", "ipm", "alie")
DEFENCES = ("btard", "mean", "centered_clip")
LM_TASKS = ("gpt-char", "gpt-char-small")


def default_runs() -> list[tuple[str, str]]:
    runs = [("none", "btard")] + [(a, "btard") for a in ATTACKS]
    runs += [(a, d) for d in DEFENCES[1:] for a in ATTACKS]
    return runs + [("none", "mean")]


def run_name(attack: str, aggregator: str, seed: int) -> str:
    return f"{attack}-{aggregator}-seed{seed}"


# --- one run (in its own process) -----------------------------------------------------------------------

def _configure_task(cfg: dict):
    """Apply the size overrides to the task class (this process only) and return it."""
    from worker_client.tasks import registry

    cls = registry.task_class(cfg["task"])
    if cfg.get("ctx"):
        cls.ctx = cfg["ctx"]
    if cfg.get("eval_windows"):
        cls.eval_windows = cfg["eval_windows"]
    if cfg.get("warmup") is not None:
        cls.warmup_steps = cfg["warmup"]
    cls.total_steps = cfg["total_steps"] if cfg.get("total_steps") is not None else cfg["steps"]
    cls.micro_batch = 0  # one peer's batch is small here: no accumulation
    return cls


def _cap_gradient_cache(run_simulation, cap: int) -> None:
    """btard-sim keeps up to 256 computed gradients (11 GB at 10.8M parameters): keep ``cap``."""
    from worker_client import sim

    models_cls = getattr(sim, "Models", None) or run_simulation.__globals__.get("_Models")
    if models_cls is None or getattr(models_cls, "_h5_capped", False):
        return
    original = models_cls.gradient

    def gradient(self, *a, **kw):
        g = original(self, *a, **kw)
        while len(self.cache) > cap:
            self.cache.popitem(last=False)
        return g

    models_cls.gradient = gradient
    models_cls._h5_capped = True


def _cap_decode_cache(entries: int) -> None:
    """The peers' shared decode cache keeps 4096 parts alive (about 11 GB of bytes at 10.8M parameters
    and 16 peers): clear it after ``entries`` (a pure cache keyed by the bytes object; correctness does
    not depend on it)."""
    from worker_client.btard import memo

    kw = getattr(memo.Memo.__init__, "__kwdefaults__", None)
    if kw and "decoded" in kw:
        kw["decoded"] = min(kw["decoded"], entries)


def _install_trace(run_simulation, task, trace: list[dict]) -> None:
    """Record every applied update (wraps the simulator's ``apply_flat_update``)."""
    import torch

    from worker_client.tasks import batch_gradient

    g = run_simulation.__globals__
    original = g["apply_flat_update"]
    probe = task.batch(123_456_789, 64)

    def apply(model, flat_grad, optimizer):
        before = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        ref = batch_gradient(task, model, *probe)[0]
        original(model, flat_grad, optimizer)
        after = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        v = [s["exp_avg_sq"] for s in optimizer.state.values() if "exp_avg_sq" in s]
        delta = after - before
        trace.append({
            "update": optimizer.param_groups[0]["step"],
            "grad_norm": float(flat_grad.norm()),
            "ref_norm": float(ref.norm()),
            "cos_ref": float(torch.dot(flat_grad, ref) / (flat_grad.norm() * ref.norm() + 1e-12)),
            "delta_norm": float(delta.norm()),
            # a positive value moves downhill on the probe batch
            "descent": float(-torch.dot(delta, ref) / (ref.norm() + 1e-12)),
            "v_sqrt_mean": float(math.sqrt(sum(float(t.sum()) for t in v) / max(1, sum(t.numel() for t in v))))
            if v else None,
        })

    g["apply_flat_update"] = apply


def _install_step_trace(steps: list[dict]) -> None:
    """Record every step's outcome and reason as the first honest peer to finish it saw it."""
    from worker_client.btard import attacks, protocol

    original = protocol.BtardPeer._finish
    seen: set[int] = set()

    def finish(self, outcome, reason):
        actions = original(self, outcome, reason)
        r = self._s.result
        if r is not None and r.step not in seen and not isinstance(self, attacks.Byzantine):
            seen.add(r.step)
            steps.append({"step": r.step, "outcome": r.outcome, "reason": r.reason[:160],
                          "group": len(self._s.ctx.group), "bans": [b.peer[:8] for b in r.bans],
                          "bound_failed": list(self._s.bound_failed)})
        return actions

    protocol.BtardPeer._finish = finish


def one_run(cfg: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    cls = _configure_task(cfg)
    from worker_client.sim import run_simulation

    _cap_gradient_cache(run_simulation, cfg.get("cache_cap", 24))
    _cap_decode_cache(cfg.get("decode_cap", 300))
    losses: list[float] = []
    original = cls.evaluate

    def evaluate(self, model, *, batch_size: int = 32) -> float:
        m = self.metrics(model, batch_size=batch_size)
        losses.append(m["loss"])
        return m["accuracy"]

    cls.evaluate = evaluate
    trace: list[dict] = []
    steps: list[dict] = []
    if cfg.get("trace"):
        _install_trace(run_simulation, cls(), trace)
    if (cfg.get("trace") or cfg.get("step_trace")) and cfg["aggregator"] == "btard":
        _install_step_trace(steps)
    protocol_params = dict(cfg.get("protocol_params") or {})
    load0, t0, c0 = os.getloadavg(), time.monotonic(), time.process_time()
    try:
        summary = run_simulation(task=cfg["task"], peers=cfg["peers"],
                                 byzantine=0 if cfg["attack"] == "none" else cfg["byzantine"],
                                 attack=cfg["attack"], attack_start=cfg["attack_start"],
                                 aggregator=cfg["aggregator"], steps=cfg["steps"], seed=cfg["seed"],
                                 eval_every=cfg["eval_every"], threads=1, tau=cfg["tau"],
                                 validators=cfg["validators"], batch_size=cfg["batch"],
                                 global_batch=cfg.get("global_batch", 0), protocol_params=protocol_params)
    finally:
        cls.evaluate = original
    summary["wall_seconds"] = time.monotonic() - t0
    summary["cpu_seconds"] = time.process_time() - c0
    summary["load_average"] = {"start": load0, "end": os.getloadavg()}
    summary["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    summary["loss_curve"] = [[step, loss] for (step, _), loss in zip(summary["accuracy_curve"], losses)]
    summary["final_loss"] = losses[-1] if losses else None
    summary["config"] = cfg
    import worker_client

    summary["code"] = {"worker_client": str(Path(worker_client.__file__).parent), "commit": cfg.get("commit")}
    if trace:
        summary["trace"] = trace
    if steps:
        summary["step_trace"] = steps
    return summary


# --- the grid -------------------------------------------------------------------------------------------

def _commit() -> str | None:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _number_or_name(value: str) -> float | str:
    """A ``--protocol-param`` value: a number (``aggregate_bound=4``) or a name (``tau_rule=spread``)."""
    try:
        return float(value)
    except ValueError:
        return value


def run_grid(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [tuple(r) for r in args.run] if args.run else default_runs()
    protocol_params = dict(kv.split("=", 1) for kv in args.protocol_param)
    protocol_params = {k: _number_or_name(v) for k, v in protocol_params.items()}
    # the JSON names the rule the run used even where the protocol's default chose it (runs before
    # 2026-12-01 have none: they ran with the then-default fixed tau)
    from worker_client.btard.state import ProtocolParams

    protocol_params.setdefault("tau_rule", ProtocolParams.tau_rule)
    for seed in args.seeds:
        for attack, aggregator in runs:
            path = out / f"{run_name(attack, aggregator, seed)}.json"
            if path.exists():
                print(f"skip {path.name} (done)", flush=True)
                continue
            cfg = {"task": args.task, "peers": args.peers, "byzantine": args.byzantine, "attack": attack,
                   "aggregator": aggregator, "steps": args.steps, "seed": seed, "attack_start": args.attack_start,
                   "eval_every": args.eval_every, "tau": args.tau, "validators": args.validators,
                   "batch": args.batch, "global_batch": args.global_batch, "ctx": args.ctx, "warmup": args.warmup,
                   "total_steps": args.total_steps, "eval_windows": args.eval_windows,
                   "cache_cap": args.cache_cap, "decode_cap": args.decode_cap, "trace": args.trace,
                   "step_trace": args.step_trace, "protocol_params": protocol_params,
                   "commit": os.environ.get("BTARD_CODE_COMMIT") or _commit()}
            tmp = path.with_suffix(".part")
            try:  # a second runner on the same directory takes the next run instead
                tmp.touch(exist_ok=False)
            except FileExistsError:
                print(f"skip {path.name} (running elsewhere: {tmp.name} exists)", flush=True)
                continue
            proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(cfg), "--to", str(tmp)], check=False)
            if proc.returncode != 0:
                tmp.unlink(missing_ok=True)
                print(f"FAILED {path.name} (exit {proc.returncode})", flush=True)
                continue
            tmp.rename(path)
            s = json.loads(path.read_text())
            print(json.dumps({"run": path.stem, "final_loss": s["final_loss"], "bans": len(s["bans"]),
                              "honest_banned": s["honest_banned"], "applied": s["applied_steps"],
                              "wall_s": round(s["wall_seconds"]), "load": s["load_average"]["end"][0]}), flush=True)
    return 0


# --- table and plot -------------------------------------------------------------------------------------

def load_grid(directory: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))}


def drop_causes(s: dict) -> str:
    """Dropped steps by cause (from ``--trace``), split at the last ban: 'ban b, bound x+y, other o'."""
    steps = s.get("step_trace")
    if not steps:
        return "-"
    last = s.get("last_ban_step") or -1
    bans = sum(1 for t in steps if t["outcome"] != "applied" and t["bans"])
    bound = [t for t in steps if t["outcome"] != "applied" and not t["bans"] and t["bound_failed"]]
    other = sum(1 for t in steps if t["outcome"] != "applied" and not t["bans"] and not t["bound_failed"])
    before = sum(1 for t in bound if t["step"] <= last)
    undone = s.get("reverted_steps") or []
    return (f"ban {bans}, bound {before}+{len(bound) - before}, other {other}"
            + (f", undone {len(undone)} ({', '.join(map(str, undone))})" if undone else ""))


def _loss_at(run: dict, step: int) -> float | None:
    """The run's held-out loss at ``step`` (its final loss where it ended there), None if not evaluated."""
    if run["config"]["steps"] == step:
        return run["final_loss"]
    return next((loss for s, loss in run.get("loss_curve", []) if s == step), None)


def _loss_at_updates(run: dict, updates: int) -> float | None:
    """The clean run's held-out loss after ``updates`` applied updates, interpolated linearly between its
    evaluations (a clean run applies every step, so its step ``k`` is its ``k``-th update)."""
    curve = sorted(run.get("loss_curve", []))
    for (s0, l0), (s1, l1) in itertools.pairwise(curve):
        if s0 <= updates <= s1:
            return l0 + (l1 - l0) * (updates - s0) / max(1, s1 - s0)
    return None


def table(directory: Path) -> str:
    runs = load_grid(directory)
    lines = [("| run | held-out loss at its last step | vs clean BTARD at that step | attackers banned (last at step) | honest banned "
              "| applied steps | vs clean BTARD after as many updates | dropped (bound: before+after the last ban) | wall s "
              "| load (start-end) |"),
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, s in runs.items():
        seed = s["config"]["seed"]
        clean = runs.get(run_name("none", "btard", seed))
        # against the clean run at the same step: a shorter attacked run (same schedule, --total-steps)
        # is compared with the clean run's evaluation at its own last step
        ref = _loss_at(clean, s["config"]["steps"]) if clean else None
        loss = s["final_loss"]
        gap = f"{100 * (loss - ref) / ref:+.1f}%" if ref and loss is not None and math.isfinite(loss) else "-"
        # the same loss against the clean run after as many updates as this run applied: what is left once
        # the dropped steps' cost is taken out (the attackers' pull and the smaller group)
        same = _loss_at_updates(clean, s["applied_steps"]) if clean else None
        gap_updates = (f"{100 * (loss - same) / same:+.1f}%" if same and loss is not None and math.isfinite(loss)
                       else "-")
        byz = len(s["byzantine"])
        banned = (f"{s['byzantine_banned']}/{byz} ({s['last_ban_step']})" if s["config"]["aggregator"] == "btard"
                  and byz else "-")
        note = f" (diverged at {s['diverged_at']})" if "diverged_at" in s else ""
        lines.append(f"| {name} | {loss:.3f}{note} | {gap} | {banned} | {s['honest_banned']} | "
                     f"{s['applied_steps']}/{s['config']['steps']} | {gap_updates} | {drop_causes(s)} | {s['wall_seconds']:.0f} | "
                     f"{s['load_average']['start'][0]:.0f}-{s['load_average']['end'][0]:.0f} |")
    return "\n".join(lines)


def _tau_text(cfg: dict) -> str:
    """BTARD's tau as the run set it: the rule named in its protocol parameters, else the fixed ``tau``."""
    protocol = cfg.get("protocol_params") or {}
    if protocol.get("tau_rule", "fixed") != "fixed":
        return f"tau {protocol['tau_rule']} {protocol.get('tau_spread', 0.5):g}"
    return f"tau {cfg['tau']:g}"


def plot(directory: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = load_grid(directory)
    seeds = sorted({s["config"]["seed"] for s in runs.values()})
    present = {s["config"]["attack"] for s in runs.values()} - {"none"}
    # the fixed attacks in their usual order, then any other (adaptive) attack the directory holds
    attacks = [a for a in ATTACKS if a in present] + sorted(present - set(ATTACKS)) or list(ATTACKS)
    fig, axes = plt.subplots(len(seeds), len(attacks), figsize=(4.2 * len(attacks), 3.4 * len(seeds)),
                             squeeze=False, sharey=True)
    styles = {"btard": "C0", "mean": "C3", "centered_clip": "C2"}
    for row, seed in zip(axes, seeds):
        for ax, attack in zip(row, attacks):
            for ref, label, style in ((("none", "btard"), "clean (BTARD)", "k--"), (("none", "mean"), "clean (mean)",
                                                                                    "k:")):
                s = runs.get(run_name(*ref, seed))
                if s:
                    ax.plot(*zip(*s["loss_curve"]), style, label=label)
            for d in DEFENCES:
                s = runs.get(run_name(attack, d, seed))
                if s and s["loss_curve"]:
                    xs, ys = zip(*s["loss_curve"])
                    ax.plot(xs, [min(y, 8.0) for y in ys], color=styles[d], label=d)
            first = next(iter(runs.values()))["config"]
            ax.axvline(first["attack_start"], color="grey", lw=0.5)
            ax.set_title(f"{attack}, seed {seed}")
            ax.set_xlabel("step")
            ax.set_ylim(top=min(8.0, ax.get_ylim()[1]))
        row[0].set_ylabel("held-out loss (nats/byte, capped at 8)")
    axes[0][0].legend(fontsize=7)
    cfg = next(iter(runs.values()))["config"]
    fig.suptitle(f"{cfg['task']}, {cfg['peers']} peers, {cfg['byzantine']} Byzantine from step {cfg['attack_start']}\n"
                 f"ctx {cfg['ctx']}, {cfg['batch']} windows/peer, m={cfg['validators']}, {_tau_text(cfg)}, "
                 f"global batch {cfg.get('global_batch') or 'off'}", fontsize=8)
    fig.tight_layout()
    path = directory / "loss.png"
    fig.savefig(path, dpi=90)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="gpt-char", choices=LM_TASKS)
    ap.add_argument("--peers", type=int, default=16)
    ap.add_argument("--byzantine", type=int, default=7)
    ap.add_argument("--steps", type=int, default=14)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--attack-start", type=int, default=2)
    ap.add_argument("--eval-every", type=int, default=2)
    ap.add_argument("--eval-windows", type=int, default=256)
    ap.add_argument("--tau", type=float, default=1.0)
    ap.add_argument("--validators", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8, help="windows per peer and step")
    ap.add_argument("--global-batch", type=int, default=0)
    ap.add_argument("--ctx", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--total-steps", type=int, default=None, help="end of the cosine (default --steps)")
    ap.add_argument("--cache-cap", type=int, default=24, help="gradients the simulator keeps")
    ap.add_argument("--decode-cap", type=int, default=300, help="decoded parts the peers' shared cache keeps")
    ap.add_argument("--protocol-param", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--trace", action="store_true")
    ap.add_argument("--step-trace", action="store_true",
                    help="record only each step's outcome and reason (cheap; --trace also does this)")
    ap.add_argument("--run", nargs=2, action="append", metavar=("ATTACK", "AGGREGATOR"))
    ap.add_argument("--out", default="results/transformer/grid")
    ap.add_argument("--plot", metavar="DIR", help="draw DIR/loss.png and print the table; run nothing")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--to", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        Path(args.to).write_text(json.dumps(one_run(json.loads(args.one)), default=str))
        return 0
    if args.plot:
        print(table(Path(args.plot)))
        print(plot(Path(args.plot)))
        return 0
    return run_grid(args)


if __name__ == "__main__":
    sys.exit(main())
