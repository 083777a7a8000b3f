"""Statistics for comparing arms: arm summaries, paired per-image tests, the runs interval of a
comparison, equivalence (TOST), the probability of improvement, and Holm's correction over a family of
comparisons. Results are the frozen dataclasses of `analysis.results`; the intervals they are built
from (bootstrap and t, of a mean or of a weighted contrast of cells) are `analysis.intervals`, re-exported.

Hand-written only where no library computes the same quantity: the hierarchical bootstrap over
folds, runs and images, the Welch t over weighted contrasts of several cells, Holm's step-down (scipy
has none). One-sample t intervals and the Wilcoxon test are scipy's.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import stats

from analysis.intervals import (
    bootstrap_ci,
    bootstrap_p,
    contrast_ci,
    contrast_draws,
    fold_contrast_draws,
    fold_contrast_t,
    fold_contrasts,
    mean_draws,
    n_folds,
    percentile_interval,
    run_contrast_t,
    seed_and_image_ci,
    shared_folds,
    t_interval,
    welch_parts,
)
from analysis.results import ALPHA, LEVEL, VERDICTS, ArmSummary, Comparison, Interval, excludes_zero

__all__ = ["ALPHA", "FEW_RUNS", "VERDICTS", "ArmSummary", "Comparison", "Interval", "adjust_family", "bootstrap_ci",
           "bootstrap_p", "compare_arms", "compare_gaps", "contrast_ci", "contrast_draws", "excludes_zero",
           "fold_contrast_draws", "fold_contrast_t", "holm", "paired_comparison", "run_contrast_t",
           "seed_and_image_ci", "shared_folds", "summarize_arm", "t_interval", "tost_p", "welch_parts",
           "improvement_share", "bias_corrected_interval"]

TIE = 1e-12  # |difference| at or below this is rounding: Dice differences on real images are far larger

# Below this many runs in a cell (or folds), a percentile bootstrap over runs understates their spread,
# so the runs interval is a t. Null campaigns (`python -m analysis.null_rates --runs 5 6 10 20 30
# --folds 5`, 1,000 each): the bootstrap over runs and images excluded 0 in 10.2% (5 runs per arm), 7.3%
# (6), 7.5% (10), 7.1% (20), 4.5% (30) of them, the Welch t in 4.5%, 3.7%, 4.7%, 6.5%, 3.9%; with 5
# folds x 3 seeds (200 campaigns) the bootstrap over folds, seeds and images in 11.0%, the t over fold
# means in 6.0% (4.75% of 400 in tests/test_analysis_multiplicity.py, whose verdict needs the images too).
FEW_RUNS = 20


def summarize_arm(values) -> ArmSummary:
    """An arm's runs (one score each, NaN dropped) as ArmSummary: the one interval per arm that every
    table prints (report, overview, notebooks)."""
    x = np.asarray(values, float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return ArmSummary(0, float("nan"), None)
    if x.size == 1:
        return ArmSummary(1, float(x[0]), None)
    if x.size < FEW_RUNS:
        mean, low, high, _ = t_interval(x)
        return ArmSummary(int(x.size), mean, Interval(low, high, "t over run means"))
    mean, low, high = bootstrap_ci(x)
    return ArmSummary(int(x.size), mean, Interval(low, high, "bootstrap over runs"))


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values (same order as given): the i-th smallest of m is multiplied
    by m - i + 1, made non-decreasing, capped at 1. Rejecting where adjusted p < alpha controls the
    family-wise error rate at alpha under any dependence. (scipy has no Holm; statsmodels is not a
    dependency for these lines.)"""
    p = np.asarray(pvalues, float)
    order = np.argsort(p, kind="stable")
    scaled = np.maximum.accumulate(p[order] * (len(p) - np.arange(len(p))))
    out = np.empty_like(p)
    out[order] = np.minimum(scaled, 1.0)
    return out


def adjust_family(results: list[Comparison]) -> list[Comparison]:
    """Holm over `results` (one family: the comparisons printed together): copies with `p_holm` and
    `family_size` set, in the same order."""
    adjusted = holm([r.decisive_p for r in results]) if results else []
    return [dataclasses.replace(r, p_holm=float(p), family_size=len(results)) for r, p in zip(results, adjusted)]


def paired_comparison(a, b, seed: int = 0) -> Comparison:
    """Compare paired scores b - a (same images): mean difference with bootstrap CI, Wilcoxon
    signed-rank p-value (two-sided, zero differences dropped) and the matched-pairs rank-biserial
    correlation r in [-1, 1] (positive: b tends to be higher). Differences within TIE are float
    rounding of averaged scores (two arms that trained the same model), not wins: they count as 0."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = b - a
    d[np.abs(d) <= TIE] = 0.0
    _, draws = mean_draws(d, seed=seed)
    mean, low, high = bootstrap_ci(d, seed=seed) if d.size < 2 else (float(d.mean()), *percentile_interval(draws))
    nonzero = d[d != 0]
    if nonzero.size == 0:
        p, r = 1.0, 0.0
    else:
        p = float(stats.wilcoxon(nonzero).pvalue)
        ranks = stats.rankdata(np.abs(nonzero))
        r = float((ranks[nonzero > 0].sum() - ranks[nonzero < 0].sum()) / ranks.sum())
    return Comparison(n_images=int(d.size), mean_diff=mean,
                      images_interval=Interval(low, high, "bootstrap over images"), p_wilcoxon=p,
                      p_images=bootstrap_p(draws) if d.size > 1 else 1.0, rank_biserial=r,
                      b_better=int((d > 0).sum()), a_better=int((d < 0).sum()))


def _strata(x) -> list[np.ndarray]:
    """An arm as a list of (runs, images) arrays, one per setting (a bare array: one setting)."""
    cells = x if isinstance(x, list) else [x]
    return [np.atleast_2d(np.asarray(c, float)) for c in cells]


def compare_arms(a, b, *, seed: int = 0, groups=None, margin: float | None = None,
                 improvement: bool = False) -> Comparison:
    """paired_comparison of the arms' seed-averaged per-image scores, plus the runs interval (over
    runs and images) when every cell has two or more runs.

    a, b: (runs, images) arrays, or lists of them, one per setting of the campaign's other axes
    (the same settings in the same order for both arms). Then the comparison is stratified: each
    arm's per-image score is its mean over settings, and runs are resampled within their setting,
    so the difference between settings is not mistaken for seed-to-seed noise.

    groups: each row's fold, as arrays matching the cells of a then b (analysis.paired.Paired.compare).
    Then the interval over runs is hierarchical: folds, then runs within each fold, then images.

    margin: an equivalence margin; then p_equivalence is TOST's p (`tost_p`). improvement: also the
    probability of improvement per image with its interval (`improvement_share`)."""
    a, b = _strata(a), _strata(b)
    if len(a) != len(b):
        raise ValueError(f"arms cover different settings: {len(a)} vs {len(b)}")
    n = len(a)
    result = paired_comparison(np.mean([c.mean(axis=0) for c in a], axis=0),
                               np.mean([c.mean(axis=0) for c in b], axis=0), seed=seed)
    result = dataclasses.replace(result, runs=(sum(len(c) for c in a), sum(len(c) for c in b)))
    weights = [-1 / n] * n + [1 / n] * n
    if min(len(c) for c in a + b) >= 2:
        result = _runs_and_images(result, a + b, weights, seed, groups)
    if improvement:
        share, draws = improvement_share(a + b, weights, groups, seed=seed)
        method = "bootstrap over folds, seeds and images" if n_folds(groups) >= 2 else "bootstrap over runs and images"
        result = dataclasses.replace(result, improvement=share,
                                     improvement_interval=Interval(*bias_corrected_interval(draws, share), method))
    if margin is not None:
        d = np.mean([c.mean(axis=0) for c in b], axis=0) - np.mean([c.mean(axis=0) for c in a], axis=0)
        result = dataclasses.replace(result, margin=margin, p_equivalence=tost_p(d, a + b, weights, margin, groups,
                                                                                 seed))
    return result


def bias_corrected_interval(draws: np.ndarray, point: float, level: float = LEVEL) -> tuple[float, float]:
    """The bias-corrected percentile interval (Efron's BC): the percentiles shifted by z0, the normal
    quantile of the share of draws below the point (ties half). A share of signs averaged over
    resampled runs is pulled toward 0.5 (a run drawn twice adds noise), so the plain percentile
    interval would sit off the point."""
    below = (np.mean(draws < point) + 0.5 * np.mean(draws == point))
    z0 = stats.norm.ppf(np.clip(below, 1 / (draws.size + 1), 1 - 1 / (draws.size + 1)))
    z = stats.norm.ppf(0.5 + level / 2)
    low, high = stats.norm.cdf(2 * z0 - z), stats.norm.cdf(2 * z0 + z)
    return float(np.quantile(draws, low)), float(np.quantile(draws, high))


def _share(per_image: np.ndarray) -> np.ndarray:
    """The share of images (last axis) on which the contrast is positive, ties (within TIE) counting half."""
    return (per_image > TIE).mean(axis=-1) + 0.5 * (np.abs(per_image) <= TIE).mean(axis=-1)


def improvement_share(cells, weights, groups=None, n_boot: int = 2_000, seed: int = 0) -> tuple[float, np.ndarray]:
    """(share, draws): the probability of improvement per image, the share of test images on which the
    contrast of the run-averaged scores (B - A with weights -1/n, +1/n) is positive, ties counting
    half; and bootstrap draws of it resampling as the other intervals do: folds, then runs within each
    fold (with `groups`), or the runs of each cell, then the images (compare_arms gives their
    bias_corrected_interval). Per image, unlike rliable's probability of improvement, which compares
    runs."""
    cells = [np.atleast_2d(np.asarray(c, float)) for c in cells]
    point = float(_share(sum(w * c.mean(axis=0) for w, c in zip(weights, cells))))
    rng, n_img = np.random.default_rng(seed), cells[0].shape[1]
    folds = shared_folds(groups) if n_folds(groups) >= 2 else []
    rows = [{f: np.flatnonzero(np.asarray(g) == f) for f in folds} for g in groups] if folds else None
    draws = np.empty(n_boot)
    for t in range(n_boot):
        if rows:
            picked = rng.choice(folds, len(folds))
            chosen = [np.concatenate([rng.choice(r[f], r[f].size) for f in picked]) for r in rows]
        else:
            chosen = [rng.integers(0, len(c), len(c)) for c in cells]
        per_image = sum(w * c[i].mean(axis=0) for w, c, i in zip(weights, cells, chosen))
        draws[t] = _share(per_image[rng.integers(0, n_img, n_img)])
    return point, draws


def _tost_t(point: float, se: float, df: float, margin: float) -> float:
    """TOST's p for a t statistic: the larger of the two one-sided p-values against -margin and +margin."""
    if se == 0:
        return 0.0 if abs(point) < margin else 1.0
    return float(max(stats.t.sf((point + margin) / se, df), stats.t.sf((margin - point) / se, df)))


def _tost_draws(draws: np.ndarray, margin: float) -> float:
    """TOST's p from bootstrap draws (as bootstrap_p: with the +1)."""
    tail = max((draws <= -margin).sum(), (draws >= margin).sum())
    return float(min(1.0, (tail + 1) / (draws.size + 1)))


def tost_p(d, cells, weights, margin: float, groups=None, seed: int = 0) -> float:
    """Two one-sided tests that the difference lies within +-margin, an intersection-union over the
    two intervals the verdict "real" uses: over images (the bootstrap of the mean of `d`, the
    per-image differences) and over runs (the same method as the runs interval of `cells`). 1 with a
    single run in a cell: what a retraining would change is not counted. Wilcoxon has no equivalence
    form; the image bootstrap stands for it. p < alpha exactly when both (1 - 2 alpha) intervals lie
    inside +-margin."""
    images = _tost_draws(mean_draws(np.asarray(d, float), seed=seed)[1], margin)
    cells = [np.atleast_2d(np.asarray(c, float)) for c in cells]
    if min(len(c) for c in cells) < 2:
        return 1.0
    k = n_folds(groups)
    if 2 <= k < FEW_RUNS:
        per_fold = fold_contrasts(cells, groups, weights)
        runs = _tost_t(per_fold.mean(), per_fold.std(ddof=1) / np.sqrt(k), k - 1, margin)
    elif k >= 2:
        runs = _tost_draws(fold_contrast_draws(cells, groups, weights, seed=seed), margin)
    elif min(len(c) for c in cells) < FEW_RUNS:
        runs = _tost_t(*welch_parts(cells, weights), margin)
    else:
        runs = _tost_draws(contrast_draws(cells, weights, seed=seed)[1], margin)
    return max(images, runs)


def _runs_and_images(result: Comparison, cells, weights, seed: int, groups=None) -> Comparison:
    """`result` with the interval that counts the runs and its p-value: with `groups` (each row's
    fold) and two or more folds, over folds (a t over fold means below FEW_RUNS folds, else the
    hierarchical bootstrap); otherwise a Welch t over run means below FEW_RUNS runs in a cell, else
    the bootstrap over runs and images."""
    k = n_folds(groups)
    if k >= 2:
        result = dataclasses.replace(result, n_folds=k)
    if k >= 2 and k < FEW_RUNS:
        _, low, high, p = fold_contrast_t(cells, groups, weights)
        method = "t over fold means"
    elif k >= 2:
        draws = fold_contrast_draws(cells, groups, weights, seed=seed)
        method = "bootstrap over folds, seeds and images"
    elif min(np.atleast_2d(c).shape[0] for c in cells) < FEW_RUNS:
        _, low, high, p = run_contrast_t(cells, weights)
        method = "t over run means"
    else:
        draws = contrast_draws(cells, weights, seed=seed)[1]
        method = "bootstrap over runs and images"
    if method.startswith("bootstrap"):
        (low, high), p = percentile_interval(draws), bootstrap_p(draws)
    return dataclasses.replace(result, runs_interval=Interval(low, high, method), p_runs=p)


def compare_gaps(a1, b1, a2, b2, *, seed: int = 0, groups=None) -> Comparison:
    """Does the B - A gap change between two settings (an interaction)? Each argument is a
    (runs, images) array of one cell, the same images throughout. paired_comparison of the
    per-image gaps (gap 2 - gap 1 as `mean_diff`), plus the runs interval when every cell has two or
    more runs (with `groups`, each cell's folds: hierarchical)."""
    cells = [np.atleast_2d(np.asarray(c, float)) for c in (a1, b1, a2, b2)]
    gap1, gap2 = (cells[1].mean(axis=0) - cells[0].mean(axis=0)), (cells[3].mean(axis=0) - cells[2].mean(axis=0))
    result = dataclasses.replace(paired_comparison(gap1, gap2, seed=seed), runs=tuple(len(c) for c in cells))
    if min(len(c) for c in cells) >= 2:
        result = _runs_and_images(result, cells, [1.0, -1.0, -1.0, 1.0], seed, groups)
    return result
