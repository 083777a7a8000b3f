"""Statistics for comparing arms: bootstrap intervals and paired per-image tests."""

from __future__ import annotations

import numpy as np
from scipy import stats


def bootstrap_ci(values, level: float = 0.95, n_boot: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap of the mean. With one value the interval is that value."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    if x.size == 1:
        return float(x[0]), float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, (n_boot, x.size))].mean(axis=1)
    alpha = (1 - level) / 2
    return float(x.mean()), float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def paired_comparison(a, b, seed: int = 0) -> dict:
    """Compare paired scores b - a (same images): mean difference with bootstrap CI, Wilcoxon
    signed-rank p-value (two-sided, zero differences dropped) and the matched-pairs rank-biserial
    correlation r in [-1, 1] (positive: b tends to be higher)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = b - a
    mean, low, high = bootstrap_ci(d, seed=seed)
    nonzero = d[d != 0]
    if nonzero.size == 0:
        p, r = 1.0, 0.0
    else:
        p = float(stats.wilcoxon(nonzero).pvalue)
        ranks = stats.rankdata(np.abs(nonzero))
        r = float((ranks[nonzero > 0].sum() - ranks[nonzero < 0].sum()) / ranks.sum())
    return {"n": int(d.size), "mean_diff": mean, "ci_low": low, "ci_high": high, "p_wilcoxon": p,
            "rank_biserial": r, "b_better": int((d > 0).sum()), "a_better": int((d < 0).sum())}


def seed_and_image_ci(a, b, level: float = 0.95, n_boot: int = 4_000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high) of the mean per-image difference b - a, bootstrapping training runs
    *and* images: a is (runs of arm A, images), b is (runs of arm B, images), the same images in
    the same column order. Each draw resamples the runs of each arm (with replacement) and one
    set of images for both arms (paired). Unlike the per-image interval, which treats each arm's
    seed-averaged Dice as fixed, this one widens when training runs disagree, so it answers
    whether another set of seeds would likely agree. With one run per arm it is the image bootstrap."""
    a, b = np.atleast_2d(np.asarray(a, float)), np.atleast_2d(np.asarray(b, float))
    if a.shape[1] != b.shape[1] or a.shape[1] == 0:
        raise ValueError(f"both arms need the same images: {a.shape} vs {b.shape}")
    rng = np.random.default_rng(seed)
    n_img, draws = a.shape[1], []
    for start in range(0, n_boot, 500):  # chunks bound memory: (500, images) indices per draw set
        k = min(500, n_boot - start)
        images = rng.integers(0, n_img, (k, n_img))
        arm_mean = [m[rng.integers(0, m.shape[0], (k, m.shape[0]))].mean(axis=1) for m in (a, b)]  # (k, images)
        diff = np.take_along_axis(arm_mean[1] - arm_mean[0], images, axis=1)
        draws.append(diff.mean(axis=1))
    draws = np.concatenate(draws)
    alpha = (1 - level) / 2
    return (float((b.mean(axis=0) - a.mean(axis=0)).mean()), float(np.quantile(draws, alpha)),
            float(np.quantile(draws, 1 - alpha)))


def compare_arms(a, b, seed: int = 0) -> dict:
    """paired_comparison of the arms' seed-averaged per-image scores, plus `seed_ci_low/high`
    (seed_and_image_ci) when both arms have two or more runs. a, b: (runs, images) arrays."""
    a, b = np.atleast_2d(np.asarray(a, float)), np.atleast_2d(np.asarray(b, float))
    result = paired_comparison(a.mean(axis=0), b.mean(axis=0), seed=seed)
    if min(len(a), len(b)) >= 2:
        _, result["seed_ci_low"], result["seed_ci_high"] = seed_and_image_ci(a, b, seed=seed)
    return result
