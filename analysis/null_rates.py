"""How often the interval over runs excludes 0 when there is no difference: the figures behind
`analysis.stats.FEW_RUNS` (below it the runs interval is a t, not a percentile bootstrap).

    python -m analysis.null_rates --runs 5 6 10 20 30 --sims 1000
    python -m analysis.null_rates --folds 5 --sims 200

Each simulated campaign has two arms with no true difference: per-image scores are the image's own
difficulty (uniform 0.6-0.95 over `IMAGES` test images) + a run effect (sd 0.01; with folds, a
split effect per fold, sd 0.01, that moves B - A, plus a seed effect, sd 0.003) + image noise (sd 0.02).
A 95% interval should exclude 0 in about 5% of them.
"""

from __future__ import annotations

import argparse

import numpy as np
from tqdm import tqdm

from analysis.intervals import contrast_draws, fold_contrast_draws, fold_contrast_t, percentile_interval, run_contrast_t
from analysis.results import excludes_zero

IMAGES = 200
SEEDS_PER_FOLD = 3


def null_runs(rng: np.random.Generator, runs: int) -> tuple[np.ndarray, np.ndarray]:
    """Two (runs, IMAGES) arms with run-to-run spread and no arm effect."""
    truth = rng.uniform(0.6, 0.95, IMAGES)
    return tuple(truth + rng.normal(0, 0.01, (runs, 1)) + rng.normal(0, 0.02, (runs, IMAGES)) for _ in range(2))


def null_folds(rng: np.random.Generator, folds: int, seeds: int = SEEDS_PER_FOLD):
    """(a, b, groups): arms of `folds` x `seeds` runs; each fold shifts B - A by a split effect of
    mean 0, so only resampling folds sees that the mean gap of these folds is luck."""
    truth, gaps = rng.uniform(0.6, 0.95, IMAGES), rng.normal(0, 0.01, folds)
    groups = np.repeat(np.arange(folds), seeds)
    noise = lambda: rng.normal(0, 0.003, (groups.size, 1)) + rng.normal(0, 0.02, (groups.size, IMAGES))  # noqa: E731
    return truth + noise(), truth + gaps[groups][:, None] + noise(), groups


def rates_over_runs(runs: int, sims: int, seed: int = 0) -> dict[str, float]:
    """Share of null campaigns whose runs interval excludes 0: percentile bootstrap vs Welch t."""
    rng, boot, t = np.random.default_rng(seed), 0, 0
    for sim in range(sims):
        a, b = null_runs(rng, runs)
        _, draws = contrast_draws([a, b], [-1.0, 1.0], n_boot=2_000, seed=sim)
        boot += excludes_zero(*percentile_interval(draws))
        t += excludes_zero(*run_contrast_t([a, b], [-1.0, 1.0])[1:3])
    return {"bootstrap over runs and images": boot / sims, "Welch t over run means": t / sims}


def rates_over_folds(folds: int, sims: int, seed: int = 0) -> dict[str, float]:
    """The same with runs in folds: the hierarchical bootstrap vs the t over fold means."""
    rng, boot, t = np.random.default_rng(seed), 0, 0
    for sim in range(sims):
        a, b, groups = null_folds(rng, folds)
        draws = fold_contrast_draws([a, b], [groups, groups], [-1.0, 1.0], n_boot=2_000, seed=sim)
        boot += excludes_zero(*percentile_interval(draws))
        t += excludes_zero(*fold_contrast_t([a, b], [groups, groups], [-1.0, 1.0])[1:3])
    return {"bootstrap over folds, seeds and images": boot / sims, "t over fold means": t / sims}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, nargs="*", default=[], help="runs per arm, one simulation set each")
    parser.add_argument("--folds", type=int, nargs="*", default=[], help=f"folds ({SEEDS_PER_FOLD} seeds each)")
    parser.add_argument("--sims", type=int, default=1000, help="null campaigns per setting (default 1000)")
    args = parser.parse_args(argv)
    if not args.runs and not args.folds:
        parser.error("give --runs and/or --folds")
    jobs = [("runs per arm", n, rates_over_runs) for n in args.runs] + \
           [("folds", n, rates_over_folds) for n in args.folds]
    for what, n, rates in tqdm(jobs, desc="settings", unit="setting", disable=None):
        figures = ", ".join(f"{name} {share:.1%}" for name, share in rates(n, args.sims).items())
        tqdm.write(f"{n} {what}, {args.sims} null campaigns: the 95% interval excludes 0 in: {figures}")


if __name__ == "__main__":
    main()
