"""Aggregator throughput next to the machine's memory bandwidth measured in the same run.

    .venv/bin/python benchmarks/aggregators.py            # 16 x 0.7M shard and 16 x 11M stack
    .venv/bin/python benchmarks/aggregators.py --quick    # 16 x 0.7M only
    .venv/bin/python benchmarks/aggregators.py --cc-only  # CenteredClip as the protocol runs it vs the mean

For each rule: the best wall time over ``--repeats`` runs and GB/s = bytes of input / time, with the
ratio to a plain ``.sum()`` over the same tensor (a one-pass roofline). CenteredClip is also split
into its fixed cost (median start, Gram pass, final combine and distance passes) and its cost per
iteration, and compared with the textbook iteration (one mat-vec and one vec-mat over x per
iteration). Not a test: nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from worker_client.btard import aggregators as agg_module
from worker_client.btard.aggregators import AGGREGATORS, centered_clip_with_info

PARAMS = {
    "mean": {}, "median": {}, "trimmed_mean": {"f": 3}, "krum": {"f": 3},
    "multi_krum": {"f": 3, "m": 10}, "bulyan": {"f": 3}, "geometric_median": {},
    "centered_clip": {"tau": 1.0},
}


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def make_stack(n: int, d: int, attackers: int = 3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    center = torch.randn(d, generator=gen) / d ** 0.5 * 4           # honest norm ~4
    x = center + torch.randn(n, d, generator=gen) / d ** 0.5         # honest spread ~1
    x[:attackers] = -1000.0 * center                                  # sign-flip style outliers
    return x


def textbook_iteration(x: torch.Tensor, v: torch.Tensor, sq: torch.Tensor, tau: float) -> torch.Tensor:
    """One CenteredClip iteration the direct way: a mat-vec for the distances, a vec-mat to update."""
    xv = (x @ v).double()
    dist = (sq - 2 * xv + float(v.double() @ v.double())).clamp_min(0).sqrt()
    w = torch.clamp(tau / dist.clamp_min(1e-30), max=1.0) / x.shape[0]
    return v + (w.float() @ x) - float(w.sum()) * v


def with_threads(threads: int | None, fn):
    def run():
        previous = torch.get_num_threads()
        torch.set_num_threads(threads or previous)
        try:
            return fn()
        finally:
            torch.set_num_threads(previous)
    return run


def bench_shape(n: int, d: int, repeats: int, bandwidth: float, budget: float,
                previous: dict[str, float] | None) -> dict[str, float]:
    x = make_stack(n, d)
    gbytes = x.numel() * x.element_size() / 1e9
    threads = agg_module.AGGREGATOR_THREADS
    sum_time = best_time(with_threads(threads, lambda: x.sum()), repeats + 2)
    print(f"\n## {n} x {d:,} float32 ({gbytes * 1e3:.0f} MB); .sum() on it: {gbytes / sum_time:.2f} GB/s "
          f"(same threads as the rules)")
    print(f"{'rule':18s} {'time':>10s} {'GB/s':>8s} {'of .sum()':>10s} {'of big .sum()':>14s}")
    times: dict[str, float] = {}
    for name, fn in AGGREGATORS.items():
        if name not in PARAMS:
            continue  # pre-aggregation compositions: their inner rule is timed on its own
        if previous is not None and name in previous:
            projected = previous[name] * d / previous["__d"]
            if projected > budget:
                print(f"{name:18s} skipped: projected {projected:.1f} s from the smaller shape "
                      f"(budget {budget:.0f} s)")
                continue
        params = PARAMS[name]
        t = best_time(lambda fn=fn, params=params: fn(x, **params), repeats)
        times[name] = t
        print(f"{name:18s} {t * 1e3:8.1f}ms {gbytes / t:8.2f} {sum_time / t:10.1%} "
              f"{gbytes / t / bandwidth:14.1%}")
    times["__d"] = d

    # CenteredClip: fixed cost vs per-iteration cost, and the textbook iteration for comparison
    t1 = best_time(lambda: centered_clip_with_info(x, tau=1.0, eps=0.0, max_iters=1), repeats)
    t101 = best_time(lambda: centered_clip_with_info(x, tau=1.0, eps=0.0, max_iters=101), repeats)
    res = centered_clip_with_info(x, tau=1.0)
    per_iter = max(t101 - t1, 0.0) / 100
    v = x.median(dim=0).values if d <= 1_000_000 else x[3].clone()
    sq = (x.double() ** 2).sum(dim=1) if d <= 1_000_000 else torch.stack([(r.double() ** 2).sum() for r in x])
    tb = best_time(with_threads(threads, lambda: textbook_iteration(x, v, sq, 1.0)), repeats)
    print(f"centered_clip (tau=1): fixed cost {t1 * 1e3:.1f} ms (median start + Gram + combine + "
          f"distances), {per_iter * 1e6:.1f} us per iteration; converged in {res.iterations} iterations")
    v0 = agg_module.median(x)
    c = torch.full((n,), 1.0 / n, dtype=torch.float64)
    parts = {
        "input check": lambda: agg_module._check(x, "bench"),
        "median start": lambda: agg_module.median(x),
        "Gram pass": lambda: agg_module._centered_gram(x, v0),
        "combine (vec-mat)": lambda: agg_module._combine(x, v0, c),
        "exact distances": lambda: agg_module._exact_sq_distances(x, v0),
    }
    print("  fixed cost by part: " + ", ".join(
        f"{name} {best_time(with_threads(threads, fn), repeats) * 1e3:.1f} ms" for name, fn in parts.items()))
    print(f"  textbook iteration (mat-vec + vec-mat over x): {tb * 1e3:.1f} ms per iteration "
          f"= {2 * gbytes / tb:.2f} GB/s for its two passes "
          f"({res.iterations} iterations would take {res.iterations * tb * 1e3:.0f} ms)")
    return times


def protocol_centered_clip(n: int, d: int, repeats: int) -> None:
    """CenteredClip as the protocol runs it (``ProtocolParams``: medoid start, IRLS, its eps and tau) against
    ``mean`` on the same stack: CPU time (``thread_time``, so other jobs on a shared machine count less),
    the two interleaved ``repeats`` times, best and median, and the rule's passes timed the same way."""
    import statistics

    import numpy as np

    from worker_client.btard.state import ProtocolParams

    p = ProtocolParams()
    x = make_stack(n, d)
    threads = agg_module.AGGREGATOR_THREADS

    def cc():
        return centered_clip_with_info(x, tau=p.tau, eps=p.cc_eps, max_iters=p.cc_max_iters, init=p.cc_init,
                                       method=p.cc_method)

    row = agg_module.sample_medoid(x)
    c = np.full(n, 1.0 / n)
    fns = {
        "mean": lambda: agg_module.mean(x),
        "centered_clip": cc,
        "  medoid start": lambda: agg_module.sample_medoid(x),
        "  Gram pass": lambda: agg_module._centered_gram(x, x[row]),
        "  combine + exact distances": lambda: agg_module._combine_with_distances(x, x[row], c, center_row=row),
    }
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            run = with_threads(threads, fn)
            t0 = time.thread_time()
            run()
            times[name].append(time.thread_time() - t0)
    res = cc()
    best = {name: min(v) for name, v in times.items()}
    med = {name: statistics.median(v) for name, v in times.items()}
    print(f"\n## CenteredClip as the protocol runs it ({n} x {d:,}; init={p.cc_init}, method={p.cc_method}, "
          f"tau={p.tau}, eps={p.cc_eps}: {res.iterations} iterations), CPU time, {repeats} interleaved repeats")
    for name in fns:
        print(f"{name:28s} best {best[name] * 1e3:7.2f} ms  median {med[name] * 1e3:7.2f} ms  "
              f"x mean: {best[name] / best['mean']:.2f} (best) {med[name] / med['mean']:.2f} (median)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the 16 x 0.7M shard")
    parser.add_argument("--cc-only", action="store_true",
                        help="only CenteredClip as the protocol runs it against the mean (16 x 0.7M)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--agg-threads", default="1",
                        help="AGGREGATOR_THREADS for the rules: an integer, or 'torch' for torch's setting")
    parser.add_argument("--budget", type=float, default=30.0,
                        help="skip a rule at 11M when its projected time exceeds this many seconds")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    agg_module.AGGREGATOR_THREADS = None if args.agg_threads == "torch" else int(args.agg_threads)

    print(f"# aggregators benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}; rules run with "
          f"{agg_module.AGGREGATOR_THREADS or torch.get_num_threads()} thread(s)")
    try:
        print("load average (1/5/15 min): " + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    except OSError:
        pass

    def bandwidths() -> tuple[float, float]:
        big = torch.ones(16, 11_000_000)
        gb = big.numel() * 4 / 1e9
        return gb / best_time(lambda: big.sum(), 5), gb / best_time(with_threads(1, lambda: big.sum()), 5)

    if args.cc_only:
        protocol_centered_clip(16, 700_000, max(15, 5 * args.repeats))
        return
    bw_all, bw_one = bandwidths()
    bandwidth = bw_one if agg_module.AGGREGATOR_THREADS == 1 else bw_all
    print(f"memory bandwidth reference, .sum() over 704 MB: {bw_one:.2f} GB/s on 1 thread, "
          f"{bw_all:.2f} GB/s on {torch.get_num_threads()}; the 'of big .sum()' column uses "
          f"{bandwidth:.2f}")

    protocol_centered_clip(16, 700_000, max(15, 5 * args.repeats))
    small = bench_shape(16, 700_000, args.repeats, bandwidth, args.budget, None)
    if not args.quick:
        bench_shape(16, 11_000_000, max(1, args.repeats - 1), bandwidth, args.budget, small)


if __name__ == "__main__":
    main()
