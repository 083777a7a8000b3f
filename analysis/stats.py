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
