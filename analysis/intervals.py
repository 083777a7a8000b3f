"""Intervals and p-values for a mean and for weighted contrasts of cells: percentile bootstrap and t
intervals of one sample, and the contrast sum_k w_k * (cell k's mean) over (runs, images) cells with the
bootstrap over runs and images, over folds, seeds and images (hierarchical), the Welch t over run means
and the t over fold means. analysis.stats builds the comparisons from them.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from analysis.results import LEVEL


def bootstrap_p(draws: np.ndarray) -> float:
    """Two-sided p-value of 'the mean is 0' from bootstrap draws of it: twice the smaller tail share,
    with the +1 that keeps it valid for finite draws. p < 1 - level exactly when the percentile
    interval at that level excludes 0 (up to that +1)."""
    draws = np.asarray(draws, float)
    tail = min((draws <= 0).sum(), (draws >= 0).sum())
    return float(min(1.0, 2 * (tail + 1) / (draws.size + 1)))


def percentile_interval(draws: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The percentile interval of bootstrap draws at `level`."""
    tail = round((1 - level) / 2, 12)  # 0.025 exactly at 95%
    return float(np.quantile(draws, tail)), float(np.quantile(draws, 1 - tail))


def mean_draws(values, n_boot: int = 10_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(finite values, n_boot bootstrap means of them); one value is its own every draw."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if x.size <= 1:
        return x, np.repeat(x, n_boot)
    rng = np.random.default_rng(seed)
    return x, x[rng.integers(0, x.size, (n_boot, x.size))].mean(axis=1)


def bootstrap_ci(values, level: float = LEVEL, n_boot: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap of the mean. With one value the interval is that value."""
    x, means = mean_draws(values, n_boot, seed)
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    return (float(x.mean()), *percentile_interval(means, level))


def t_interval(values, level: float = LEVEL) -> tuple[float, float, float, float]:
    """(mean, low, high, p of 'mean is 0'): the one-sample t over `values` (scipy.stats.ttest_1samp);
    a zero spread gives the point itself and p 1 (mean 0) or 0."""
    x = np.asarray(values, float)
    mean = float(x.mean())
    if x.size < 2 or np.all(x == x[0]):
        return mean, mean, mean, 1.0 if mean == 0 else 0.0
    test = stats.ttest_1samp(x, 0.0)
    ci = test.confidence_interval(level)
    return mean, float(ci.low), float(ci.high), float(test.pvalue)


def contrast_ci(cells, weights, level: float = LEVEL, n_boot: int = 4_000, seed: int = 0) -> tuple[float, float, float]:
    """(point, low, high): the percentile interval of `contrast_draws`."""
    point, draws = contrast_draws(cells, weights, n_boot, seed)
    return (point, *percentile_interval(draws, level))


def contrast_draws(cells, weights, n_boot: int = 4_000, seed: int = 0) -> tuple[float, np.ndarray]:
    """(point, draws): the per-image contrast sum_k weights[k] * (cell k's mean over its runs),
    averaged over images, and n_boot bootstrap draws of it that resample training runs *and* images.
    cells: arrays (runs, images), the same images in the same column order. Each draw resamples the
    runs of every cell (with replacement) and one set of images shared by all cells (paired).

    Weights (-1, +1) give B - A (seed_and_image_ci); (+1, -1, -1, +1) over (A1, B1, A2, B2) give
    the change of the B - A gap from setting 1 to setting 2 (an interaction)."""
    cells = [np.atleast_2d(np.asarray(c, float)) for c in cells]
    if len(cells) != len(weights):
        raise ValueError(f"{len(cells)} cells but {len(weights)} weights")
    if len({c.shape[1] for c in cells}) != 1 or cells[0].shape[1] == 0:
        raise ValueError(f"every cell needs the same images: {[c.shape for c in cells]}")
    rng = np.random.default_rng(seed)
    n_img, draws = cells[0].shape[1], []
    for start in range(0, n_boot, 500):  # chunks bound memory: (500, images) indices per draw set
        k = min(500, n_boot - start)
        images = rng.integers(0, n_img, (k, n_img))
        per_image = sum(w * m[rng.integers(0, m.shape[0], (k, m.shape[0]))].mean(axis=1)  # (k, images)
                        for w, m in zip(weights, cells))
        draws.append(np.take_along_axis(per_image, images, axis=1).mean(axis=1))
    point = sum(w * m.mean(axis=0) for w, m in zip(weights, cells)).mean()
    return float(point), np.concatenate(draws)


def seed_and_image_ci(a, b, level: float = LEVEL, n_boot: int = 4_000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high) of the mean per-image difference b - a, bootstrapping training runs
    *and* images: a is (runs of arm A, images), b is (runs of arm B, images). Unlike the
    per-image interval, which treats each arm's seed-averaged Dice as fixed, this one widens when
    training runs disagree, so it answers whether another set of seeds would likely agree. With
    one run per arm it is the image bootstrap."""
    return contrast_ci([a, b], [-1.0, 1.0], level=level, n_boot=n_boot, seed=seed)


def run_contrast_t(cells, weights, level: float = LEVEL) -> tuple[float, float, float, float]:
    """(point, low, high, p) for sum_k weights[k] * (cell k's mean run score), from each run's mean
    over the images: a Welch t-interval and two-sided t-test with Welch-Satterthwaite degrees of
    freedom over any weighted contrast (scipy's Welch test covers only B - A of two samples). Honest
    with as few as 2 runs per cell, where a percentile bootstrap over 2-4 values is far too narrow.
    cells: (runs, images) arrays, each with >= 2 runs."""
    point, se, df = welch_parts(cells, weights)
    if se == 0:
        return point, point, point, 1.0 if point == 0 else 0.0
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    return point, point - half, point + half, float(2 * stats.t.sf(abs(point) / se, df))


def welch_parts(cells, weights) -> tuple[float, float, float]:
    """(point, standard error, Welch-Satterthwaite df) of sum_k weights[k] * (cell k's mean run score);
    df is nan when the standard error is 0."""
    means = [np.atleast_2d(np.asarray(c, float)).mean(axis=1) for c in cells]  # one value per run
    point = float(sum(w * m.mean() for w, m in zip(weights, means)))
    terms = np.array([w * w * m.var(ddof=1) / m.size for w, m in zip(weights, means)])
    se = float(np.sqrt(terms.sum()))
    if se == 0:
        return point, 0.0, float("nan")
    return point, se, float(terms.sum() ** 2 / sum(t * t / (m.size - 1) for t, m in zip(terms, means)))


def shared_folds(groups) -> list:
    """The folds every cell has runs in (each group: one cell's per-run fold labels), sorted."""
    return sorted(set.intersection(*(set(np.asarray(g).tolist()) for g in groups)))


def fold_contrast_draws(cells, groups, weights, n_boot: int = 4_000, seed: int = 0) -> np.ndarray:
    """Hierarchical bootstrap draws of the contrast (as contrast_draws): each draw resamples the
    folds (one set shared by every cell: fold f of one arm trained on the same split as fold f of
    the other), then each cell's runs within each drawn fold, then the images (shared)."""
    cells = [np.atleast_2d(np.asarray(c, float)) for c in cells]
    folds = shared_folds(groups)
    rows = [{f: np.flatnonzero(np.asarray(g) == f) for f in folds} for g in groups]
    rng, n_img = np.random.default_rng(seed), cells[0].shape[1]
    draws = np.empty(n_boot)
    for t in range(n_boot):
        picked = rng.choice(folds, len(folds))
        per_image = sum(w * c[np.concatenate([rng.choice(r[f], r[f].size) for f in picked])].mean(axis=0)
                        for w, c, r in zip(weights, cells, rows))
        draws[t] = per_image[rng.integers(0, n_img, n_img)].mean()
    return draws


def fold_contrast_t(cells, groups, weights, level: float = LEVEL) -> tuple[float, float, float, float]:
    """(point, low, high, p): the one-sample t over the K per-fold contrasts (each fold's runs
    averaged first), K - 1 degrees of freedom; for fewer than FEW_RUNS folds, where a bootstrap over
    K values is too narrow (a 5-fold campaign gets this one)."""
    return t_interval(fold_contrasts(cells, groups, weights), level)


def fold_contrasts(cells, groups, weights) -> np.ndarray:
    """The contrast in each fold every cell has, each cell's runs in that fold averaged first."""
    means = [np.atleast_2d(np.asarray(c, float)).mean(axis=1) for c in cells]  # one value per run
    return np.array([sum(w * m[np.asarray(g) == f].mean() for w, m, g in zip(weights, means, groups))
                     for f in shared_folds(groups)])


def n_folds(groups) -> int:
    """How many folds every cell has (0 without groups): two or more make the runs interval hierarchical."""
    return len(shared_folds(groups)) if groups is not None else 0
