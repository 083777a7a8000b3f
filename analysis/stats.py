"""Statistics for comparing arms: bootstrap intervals, paired per-image tests, and Holm's
correction over a family of comparisons.

Multiplicity: a verdict "real" needs three things at once (Wilcoxon p < alpha, the CI over images and,
the CI over runs and images excluding 0; with one run in an arm there is none, and the verdict is
"one run" at best): an intersection-union test, whose
p-value is the largest of the three (`decisive_p`; the CIs' p-values come from the same bootstrap
draws as the intervals). `adjust_family` applies Holm's step-down correction to those p-values over
every comparison printed together, so "real" controls the family-wise error at alpha.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

TIE = 1e-12  # |difference| at or below this is rounding: Dice differences on real images are far larger


ALPHA = 0.05


def bootstrap_p(draws: np.ndarray) -> float:
    """Two-sided p-value of 'the mean is 0' from bootstrap draws of it: twice the smaller tail share,
    with the +1 that keeps it valid for finite draws. p < 1 - level exactly when the percentile
    interval at that level excludes 0 (up to that +1)."""
    draws = np.asarray(draws, float)
    tail = min((draws <= 0).sum(), (draws >= 0).sum())
    return float(min(1.0, 2 * (tail + 1) / (draws.size + 1)))


def _mean_draws(values, n_boot: int = 10_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if x.size <= 1:
        return x, np.repeat(x, n_boot)
    rng = np.random.default_rng(seed)
    return x, x[rng.integers(0, x.size, (n_boot, x.size))].mean(axis=1)


def bootstrap_ci(values, level: float = 0.95, n_boot: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap of the mean. With one value the interval is that value."""
    x, means = _mean_draws(values, n_boot, seed)
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    alpha = (1 - level) / 2
    return float(x.mean()), float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values (same order as given): the i-th smallest of m is multiplied
    by m - i + 1, made non-decreasing, capped at 1. Rejecting where adjusted p < alpha controls the
    family-wise error rate at alpha under any dependence."""
    p = np.asarray(pvalues, float)
    order = np.argsort(p, kind="stable")
    scaled = np.maximum.accumulate(p[order] * (len(p) - np.arange(len(p))))
    out = np.empty_like(p)
    out[order] = np.minimum(scaled, 1.0)
    return out


def decisive_p(result: dict) -> float:
    """The p-value of the verdict "real" (an intersection-union test): the largest of the Wilcoxon p,
    the image bootstrap's and, where runs are resampled, the runs-and-images bootstrap's."""
    return max(result[k] for k in ("p_wilcoxon", "p_boot", "p_boot_runs") if k in result)


def adjust_family(results: list[dict]) -> None:
    """Holm over `results` (one family: the comparisons printed together): sets `p_holm` and
    `family_size` on each, which `evidence` then uses."""
    adjusted = holm([decisive_p(r) for r in results]) if results else []
    for r, p in zip(results, adjusted):
        r["p_holm"], r["family_size"] = float(p), len(results)


def paired_comparison(a, b, seed: int = 0) -> dict:
    """Compare paired scores b - a (same images): mean difference with bootstrap CI, Wilcoxon
    signed-rank p-value (two-sided, zero differences dropped) and the matched-pairs rank-biserial
    correlation r in [-1, 1] (positive: b tends to be higher). Differences within TIE are float
    rounding of averaged scores (two arms that trained the same model), not wins: they count as 0."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = b - a
    d[np.abs(d) <= TIE] = 0.0
    _, draws = _mean_draws(d, seed=seed)
    mean, low, high = bootstrap_ci(d, seed=seed) if d.size < 2 else \
        (float(d.mean()), float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975)))
    nonzero = d[d != 0]
    if nonzero.size == 0:
        p, r = 1.0, 0.0
    else:
        p = float(stats.wilcoxon(nonzero).pvalue)
        ranks = stats.rankdata(np.abs(nonzero))
        r = float((ranks[nonzero > 0].sum() - ranks[nonzero < 0].sum()) / ranks.sum())
    return {"n": int(d.size), "mean_diff": mean, "ci_low": low, "ci_high": high, "p_wilcoxon": p,
            "p_boot": bootstrap_p(draws) if d.size > 1 else 1.0,
            "rank_biserial": r, "b_better": int((d > 0).sum()), "a_better": int((d < 0).sum())}


def contrast_ci(cells, weights, level: float = 0.95, n_boot: int = 4_000, seed: int = 0) -> tuple[float, float, float]:
    """(point, low, high): the percentile interval of `contrast_draws`."""
    point, draws = contrast_draws(cells, weights, n_boot, seed)
    alpha = (1 - level) / 2
    return point, float(np.quantile(draws, alpha)), float(np.quantile(draws, 1 - alpha))


def contrast_draws(cells, weights, n_boot: int = 4_000, seed: int = 0) -> tuple[float, np.ndarray]:
    """(mean, low, high) of the per-image contrast sum_k weights[k] * (cell k's mean over its
    runs), averaged over images, bootstrapping training runs *and* images. cells: arrays
    (runs, images), the same images in the same column order. Each draw resamples the runs of
    every cell (with replacement) and one set of images shared by all cells (paired).

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


def seed_and_image_ci(a, b, level: float = 0.95, n_boot: int = 4_000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high) of the mean per-image difference b - a, bootstrapping training runs
    *and* images: a is (runs of arm A, images), b is (runs of arm B, images). Unlike the
    per-image interval, which treats each arm's seed-averaged Dice as fixed, this one widens when
    training runs disagree, so it answers whether another set of seeds would likely agree. With
    one run per arm it is the image bootstrap."""
    return contrast_ci([a, b], [-1.0, 1.0], level=level, n_boot=n_boot, seed=seed)


def _strata(x) -> list[np.ndarray]:
    """An arm as a list of (runs, images) arrays, one per setting (a bare array: one setting)."""
    cells = x if isinstance(x, list) else [x]
    return [np.atleast_2d(np.asarray(c, float)) for c in cells]


def compare_arms(a, b, *, seed: int = 0, groups=None) -> dict:
    """paired_comparison of the arms' seed-averaged per-image scores, plus `seed_ci_low/high`
    (contrast_ci over runs and images) when every cell has two or more runs.

    a, b: (runs, images) arrays, or lists of them, one per setting of the campaign's other axes
    (the same settings in the same order for both arms). Then the comparison is stratified: each
    arm's per-image score is its mean over settings, and runs are resampled within their setting,
    so the difference between settings is not mistaken for seed-to-seed noise.

    groups: each row's fold, as arrays matching the cells of a then b (analysis.paired.Paired.compare).
    Then the interval over runs is hierarchical: folds, then runs within each fold, then images."""
    a, b = _strata(a), _strata(b)
    if len(a) != len(b):
        raise ValueError(f"arms cover different settings: {len(a)} vs {len(b)}")
    n = len(a)
    result = paired_comparison(np.mean([c.mean(axis=0) for c in a], axis=0),
                               np.mean([c.mean(axis=0) for c in b], axis=0), seed=seed)
    if min(len(c) for c in a + b) >= 2:
        _runs_and_images(result, a + b, [-1 / n] * n + [1 / n] * n, seed, groups)
    return result


# Below this many runs in a cell (or folds), a percentile bootstrap over runs understates their spread,
# so the runs interval is a t. Null campaigns (`python -m analysis.null_rates --runs 5 6 10 20 30
# --folds 5`, 1,000 each): the bootstrap over runs and images excluded 0 in 10.2% (5 runs per arm), 7.3%
# (6), 7.5% (10), 7.1% (20), 4.5% (30) of them, the Welch t in 4.5%, 3.7%, 4.7%, 6.5%, 3.9%; with 5
# folds x 3 seeds (200 campaigns) the bootstrap over folds, seeds and images in 11.0%, the t over fold
# means in 6.0% (4.75% of 400 in tests/test_multiplicity.py, whose verdict needs the images too).
FEW_RUNS = 20


def run_contrast_t(cells, weights, level: float = 0.95) -> tuple[float, float, float, float]:
    """(point, low, high, p) for sum_k weights[k] * (cell k's mean run score), from each run's mean
    over the images: a Welch t-interval and two-sided t-test with Welch-Satterthwaite degrees of
    freedom. Honest with as few as 2 runs per cell, where a percentile bootstrap over 2-4 values is
    far too narrow. cells: (runs, images) arrays, each with >= 2 runs."""
    means = [np.atleast_2d(np.asarray(c, float)).mean(axis=1) for c in cells]  # one value per run
    point = float(sum(w * m.mean() for w, m in zip(weights, means)))
    terms = np.array([w * w * m.var(ddof=1) / m.size for w, m in zip(weights, means)])
    se = float(np.sqrt(terms.sum()))
    if se == 0:
        return point, point, point, 1.0 if point == 0 else 0.0
    df = terms.sum() ** 2 / sum(t * t / (m.size - 1) for t, m in zip(terms, means))
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    return point, point - half, point + half, float(2 * stats.t.sf(abs(point) / se, df))


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


def fold_contrast_t(cells, groups, weights, level: float = 0.95) -> tuple[float, float, float, float]:
    """(point, low, high, p): a t-interval over the K per-fold contrasts (each fold's runs averaged
    first), K - 1 degrees of freedom; for fewer than FEW_RUNS folds, where a bootstrap over K values
    is too narrow (a 5-fold campaign gets this one)."""
    cells = [np.atleast_2d(np.asarray(c, float)).mean(axis=1) for c in cells]  # one value per run
    folds = shared_folds(groups)
    per_fold = np.array([sum(w * m[np.asarray(g) == f].mean() for w, m, g in zip(weights, cells, groups))
                         for f in folds])
    point, se = float(per_fold.mean()), float(per_fold.std(ddof=1) / np.sqrt(len(folds)))
    if se == 0:
        return point, point, point, 1.0 if point == 0 else 0.0
    half = float(stats.t.ppf(0.5 + level / 2, len(folds) - 1)) * se
    return point, point - half, point + half, float(2 * stats.t.sf(abs(point) / se, len(folds) - 1))


def _by_folds(result: dict, cells, weights, seed: int, groups) -> None:
    """_runs_and_images when runs come in folds: FEW_RUNS or more folds, the hierarchical bootstrap;
    fewer, the t-interval over per-fold contrasts."""
    k = len(shared_folds(groups))
    result["n_folds"] = k
    if k < FEW_RUNS:
        _, low, high, p = fold_contrast_t(cells, groups, weights)
        result.update(seed_ci_low=low, seed_ci_high=high, p_boot_runs=p, runs_interval="t over fold means")
        return
    draws = fold_contrast_draws(cells, groups, weights, seed=seed)
    result["seed_ci_low"], result["seed_ci_high"] = float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))
    result["p_boot_runs"], result["runs_interval"] = bootstrap_p(draws), "bootstrap over folds, seeds and images"


def _runs_and_images(result: dict, cells, weights, seed: int, groups=None) -> None:
    """The interval that counts the runs (`seed_ci_low/high`) and its p-value (`p_boot_runs`): with
    FEW_RUNS or more runs in every cell, the bootstrap over runs and images; with fewer, the Welch
    t-interval over run means (`run_contrast_t`), and `runs_interval` says which. With `groups`
    (each row's fold) and two or more folds: `_by_folds`."""
    if groups is not None and len(shared_folds(groups)) >= 2:
        _by_folds(result, cells, weights, seed, groups)
        return
    if min(np.atleast_2d(c).shape[0] for c in cells) < FEW_RUNS:
        _, low, high, p = run_contrast_t(cells, weights)
        result.update(seed_ci_low=low, seed_ci_high=high, p_boot_runs=p, runs_interval="t over run means")
        return
    _, draws = contrast_draws(cells, weights, seed=seed)
    result["seed_ci_low"], result["seed_ci_high"] = float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))
    result["p_boot_runs"], result["runs_interval"] = bootstrap_p(draws), "bootstrap over runs and images"


def compare_gaps(a1, b1, a2, b2, *, seed: int = 0, groups=None) -> dict:
    """Does the B - A gap change between two settings (an interaction)? Each argument is a
    (runs, images) array of one cell, the same images throughout. paired_comparison of the
    per-image gaps (gap 2 - gap 1 as `mean_diff`), plus `seed_ci_low/high` over runs and images
    when every cell has two or more runs (with `groups`, each cell's folds: hierarchical)."""
    cells = [np.atleast_2d(np.asarray(c, float)) for c in (a1, b1, a2, b2)]
    gap1, gap2 = (cells[1].mean(axis=0) - cells[0].mean(axis=0)), (cells[3].mean(axis=0) - cells[2].mean(axis=0))
    result = paired_comparison(gap1, gap2, seed=seed)
    if min(len(c) for c in cells) >= 2:
        _runs_and_images(result, cells, [1.0, -1.0, -1.0, 1.0], seed, groups)
    return result


VERDICTS = {"real": "real", "uncorrected only": "not shown after Holm's correction",
            "images only": "not shown: runs disagree", "one run": "over images only: one run in an arm",
            "none": "no difference shown"}
"""The words reports use for each `evidence` kind."""


def excludes_zero(low: float, high: float) -> bool:
    return low > 0 or high < 0


def evidence(result: dict) -> str:
    """How strong a paired_comparison / compare_arms result is. 'real': Wilcoxon p < 0.05, the CI
    over images excludes 0 and, where there are seeds to count (`seed_ci_low/high`), so does the CI
    over runs and images; 'images only': all but the last; 'none': not even over images. Where
    `adjust_family` has set `p_holm`, 'real' needs it below ALPHA too, else it is 'uncorrected only'.
    'one run': everything but the CI over runs, which one run in an arm cannot give: the two trained
    models differ over these images, but what a retraining would change is not counted."""
    if not (result["p_wilcoxon"] < 0.05 and excludes_zero(result["ci_low"], result["ci_high"])):
        return "none"
    if "seed_ci_low" in result and not excludes_zero(result["seed_ci_low"], result["seed_ci_high"]):
        return "images only"
    if result.get("p_holm", 0.0) >= ALPHA:
        return "uncorrected only"
    return "real" if "seed_ci_low" in result else "one run"
