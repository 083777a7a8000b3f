"""The power of the harness's rule for "real", by simulation, from the components of a paired difference.

The simulation is the rule with two documented shortcuts, checked against the rule itself (stats.
compare_arms on simulated campaigns with known components) in tests/test_analysis_plan.py: the image
interval is the t over images (the percentile bootstrap over 200+ images agrees with it), and the
family's Holm correction is taken as Bonferroni (alpha / family size), which Holm never does worse than.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from analysis.results import ALPHA

SIMS = 1000  # simulated campaigns per power figure: +-1.6 points at 80% power


@dataclass(frozen=True)
class Components:
    """The paired difference B - A of one metric, as standard deviations in metric units.

    interaction_sd: the arm x image interaction (per-image differences around their mean: fixed by the
    test set, it never shrinks with runs); noise_sd: run x image noise of one run's score (shrinks with
    runs); seed_sd: one run's mean score around its fold's (seed-to-seed); fold_sd: the B - A of one
    fold around the mean over folds (split-to-split), 0 without folds. effect: the B - A observed."""

    metric: str
    interaction_sd: float
    noise_sd: float
    seed_sd: float
    fold_sd: float
    effect: float


@dataclass(frozen=True)
class Design:
    """folds x seeds per fold, per arm, on `images` test images; folds=0: no folds (runs are seeds)."""

    folds: int
    seeds: int
    images: int

    @property
    def runs(self) -> int:
        """Runs both arms train together."""
        return 2 * max(self.folds, 1) * self.seeds

    def label(self) -> str:
        seeds = f"{self.seeds} seed{'s' if self.seeds != 1 else ''}"
        grid = f"{self.folds} folds x {seeds}" if self.folds else seeds
        return f"{grid}, {self.images} images ({self.runs} runs)"


def _simulate(c: Components, design: Design, delta: float, rng: np.random.Generator, sims: int):
    """(per-image differences (sims, images), the runs interval's values (sims, k)): k fold means of
    B - A, or with no folds the run means of A then B (k = 2 x seeds)."""
    n, s = design.images, design.seeds
    g = rng.normal(0.0, c.interaction_sd, (sims, n))
    if design.folds:
        f = design.folds
        eta = rng.normal(0.0, c.noise_sd * np.sqrt(2 / s), (sims, f, n))  # a fold's seeds: mean of B - A noise
        shift = rng.normal(0.0, c.fold_sd, (sims, f, 1)) + rng.normal(0.0, c.seed_sd * np.sqrt(2 / s), (sims, f, 1))
        per_fold = delta + g[:, None, :] + shift + eta  # (sims, folds, images)
        return per_fold.mean(axis=1), per_fold.mean(axis=2)
    noise = rng.normal(0.0, c.noise_sd / np.sqrt(n), (sims, 2, s))  # each run's image noise, averaged
    runs = rng.normal(0.0, c.seed_sd, (sims, 2, s)) + noise  # each run's mean around its arm's
    runs[:, 1] += delta + g.mean(axis=1, keepdims=True)
    # per image: the runs' noise, whose mean over images is the one in the run means (the tests share it)
    eps = rng.normal(0.0, c.noise_sd * np.sqrt(2 / s), (sims, n))
    eps += (noise[:, 1].mean(axis=1) - noise[:, 0].mean(axis=1))[:, None] - eps.mean(axis=1, keepdims=True)
    d = g - g.mean(axis=1, keepdims=True) + eps + (runs[:, 1].mean(axis=1) - runs[:, 0].mean(axis=1))[:, None] \
        - (noise[:, 1].mean(axis=1) - noise[:, 0].mean(axis=1))[:, None]
    return d, runs


def t_parts(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(mean, standard error, df) of the one-sample t over axis 1, per simulated campaign (axis 0)."""
    return values.mean(axis=1), values.std(axis=1, ddof=1) / np.sqrt(values.shape[1]), values.shape[1] - 1


def tost(mean, se, df, margin: float):
    """TOST's p, vectorized: the larger one-sided t p-value against -margin and +margin."""
    return np.maximum(stats.t.sf((mean + margin) / se, df), stats.t.sf((margin - mean) / se, df))


def _runs_test(values: np.ndarray, design: Design, level: float):
    """(low, high, p) of the runs interval per simulated campaign, as stats does below FEW_RUNS: a
    t over fold means (folds), or a Welch t over the run means of the two arms."""
    if design.folds:
        mean, se, df = t_parts(values)
    else:
        a, b = values[:, 0], values[:, 1]
        va, vb = a.var(axis=1, ddof=1) / a.shape[1], b.var(axis=1, ddof=1) / b.shape[1]
        mean, se = b.mean(axis=1) - a.mean(axis=1), np.sqrt(va + vb)
        df = (va + vb) ** 2 / (va ** 2 / (a.shape[1] - 1) + vb ** 2 / (b.shape[1] - 1))
    half = stats.t.ppf(0.5 + level / 2, df) * se
    return mean - half, mean + half, 2 * stats.t.sf(np.abs(mean) / se, df)


def power(c: Components, design: Design, delta: float, family: int = 1, seed: int = 0, sims: int = SIMS) -> float:
    """The share of simulated campaigns of `design` with true difference `delta` that the rule calls
    real: Wilcoxon, the image interval and the runs interval all at alpha / family."""
    alpha = ALPHA / family
    d, values = _simulate(c, design, delta, np.random.default_rng(seed), sims)
    p_wilcoxon = stats.wilcoxon(d, axis=1, method="approx").pvalue
    p_images = stats.ttest_1samp(d, 0.0, axis=1).pvalue
    _, _, p_runs = _runs_test(values, design, 1 - alpha)
    return float(np.mean(np.maximum.reduce([p_wilcoxon, p_images, p_runs]) < alpha))


def _widest_ends(c: Components, design: Design, family: int, seed: int, sims: int) -> np.ndarray:
    """Per simulated campaign with no true difference, the widest end (in absolute value) of its two
    intervals at level 1 - 2 alpha / family: TOST shows it equivalent within exactly the margins above it."""
    level = 1 - 2 * ALPHA / family
    d, values = _simulate(c, design, 0.0, np.random.default_rng(seed), sims)
    low_r, high_r, _ = _runs_test(values, design, level)
    mean, se, df = t_parts(d)
    return np.maximum.reduce([np.abs(mean) + stats.t.ppf(0.5 + level / 2, df) * se, -low_r, high_r])


def equivalence_power(c: Components, design: Design, margin: float, family: int = 1, seed: int = 0,
                      sims: int = SIMS) -> float:
    """The share of simulated campaigns with no true difference that TOST shows equivalent within
    +-margin: the interval over images and the runs interval, each at level 1 - 2 alpha / family
    (no Wilcoxon: it has no equivalence form)."""
    return float(np.mean(_widest_ends(c, design, family, seed, sims) < margin))


def equivalence_margin(c: Components, design: Design, target: float = 0.8, family: int = 1, seed: int = 0,
                       sims: int = SIMS) -> float:
    """The equivalence analogue of the MDE: TOST (as `equivalence_power`, the same simulated campaigns)
    shows equivalence with probability >= `target` for any margin above this one when there is no
    difference: the order statistic of `_widest_ends` at `target`, one simulation, no search."""
    ends = np.sort(_widest_ends(c, design, family, seed, sims))
    return float(ends[max(0, int(np.ceil(target * sims)) - 1)])


def mde(c: Components, design: Design, target: float = 0.8, family: int = 1) -> float:
    """The smallest |B - A| detected with probability `target` (bisection on a log scale; the same
    simulated noise at every step, so power rises with the effect); inf beyond 1."""
    low, high = 1e-5, 1.0
    if power(c, design, high, family) < target:
        return float("inf")
    for _ in range(14):
        mid = np.sqrt(low * high)
        low, high = (mid, high) if power(c, design, mid, family) < target else (low, mid)
    return float(high)


def images_needed(c: Components, delta: float, target: float = 0.8, family: int = 1) -> int:
    """About how many test images detect `delta` with unlimited runs (the arm x image interaction
    alone): the t over images' sample size, ((z_(1 - alpha/2m) + z_power) sd / delta)^2."""
    z = stats.norm.ppf(1 - ALPHA / (2 * family)) + stats.norm.ppf(target)
    return int(np.ceil((z * c.interaction_sd / delta) ** 2))
