"""Simulation benchmark of the A/B statistics (issue 7 acceptance): false positives and power.

Prints two tables:
1. H0 true (no difference), AR(1) errors, each experiment reviewed at `looks` equally spaced sizes
   and stopped at the first significant look: the always-valid sequential test vs naive repeated
   iid tests (Welch; paired t for shadow traffic), with the 99% Clopper-Pearson upper bound.
2. Power for a planted 1-point direction-accuracy lift (51% vs 50%) at several sample sizes.

Usage:
    .venv/bin/python benchmarks/sim_ab_stats.py                 # 2,000 experiments per row
    .venv/bin/python benchmarks/sim_ab_stats.py --experiments 500 --quick
"""

from __future__ import annotations

import argparse
import time

from pipelines.review.simulate import SimResult, simulate


def _fmt(x: float) -> str:
    return "   -  " if x != x else f"{100 * x:5.1f}%"


def _null_table(experiments: int, n: int, quick: bool) -> None:
    rhos = [0.3] if quick else [0.0, 0.3, 0.6]
    look_counts = [20] if quick else [20, 100]
    print(f"\nH0 true: false-positive rate over {experiments} experiments, n = {n} per arm, alpha = 5%")
    print(
        f"{'scenario':<10} {'traffic':<7} {'rho':>4} {'looks':>5} | {'sequential':>10} {'99% up':>7} | "
        f"{'Welch any':>9} {'pair-t any':>10} {'Welch last':>10} {'HAC last':>8} | {'s':>5}"
    )
    for scenario in ("gaussian", "direction"):
        for paired in (True, False):
            for rho in rhos:
                for looks in look_counts:
                    t0 = time.perf_counter()
                    r = simulate(scenario, paired=paired, experiments=experiments, n=n, looks=looks, rho=rho)
                    print(
                        f"{scenario:<10} {'shadow' if paired else 'split':<7} {rho:4.1f} {r.looks:5d} | "
                        f"{_fmt(r.sequential_rate):>10} {_fmt(r.binomial_upper(r.sequential_rate)):>7} | "
                        f"{_fmt(r.naive_any_look_rate):>9} {_fmt(r.naive_paired_any_look_rate):>10} "
                        f"{_fmt(r.naive_last_look_rate):>10} {_fmt(r.hac_last_look_rate):>8} | "
                        f"{time.perf_counter() - t0:5.1f}"
                    )


def _power_row(r: SimResult, elapsed: float) -> str:
    return (
        f"{'shadow' if r.paired else 'split':<7} {r.n:>7d} {r.looks:>5d} {r.experiments:>6d} | "
        f"{_fmt(r.sequential_rate):>10} {_fmt(r.hac_last_look_rate):>13} {_fmt(r.naive_any_look_rate):>9} | "
        f"{elapsed:5.1f}"
    )


def _power_table(experiments: int, quick: bool) -> None:
    print("\nPower: challenger 51% vs champion 50% direction accuracy, AR(1) rho = 0.3 latent errors,")
    print("shadow arms share 80% of their latent error (similar models agree), plan_n = 10,000")
    print(
        f"{'traffic':<7} {'n/arm':>7} {'looks':>5} {'exps':>6} | {'sequential':>10} "
        f"{'HAC fixed-n':>13} {'Welch any':>9} | {'s':>5}"
    )
    rows = [(True, 10_000), (True, 20_000), (True, 40_000)]
    if not quick:
        rows += [(True, 80_000), (False, 40_000), (False, 100_000)]
    for paired, n in rows:
        t0 = time.perf_counter()
        r = simulate(
            "direction", paired=paired, experiments=experiments, n=n, looks=20, effect=0.01, block=50
        )
        print(_power_row(r, time.perf_counter() - t0))


def main() -> None:
    """Parse arguments and print both tables."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiments", type=int, default=2000, help="experiments per H0 row")
    ap.add_argument("--power-experiments", type=int, default=500, help="experiments per power row")
    ap.add_argument("--n", type=int, default=4000, help="rows per arm at the last look (H0 table)")
    ap.add_argument("--quick", action="store_true", help="rho 0.3, 20 looks and small power rows only")
    args = ap.parse_args()
    _null_table(args.experiments, args.n, args.quick)
    _power_table(args.power_experiments, args.quick)


if __name__ == "__main__":
    main()
