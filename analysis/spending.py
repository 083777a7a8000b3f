"""Lan & DeMets (1983) alpha-spending boundaries for group-sequential looks, two-sided and symmetric (each
side spends alpha / 2, gsDesign's convention: K = 5 equal looks at alpha 0.05 give 4.877, 3.357, 2.680,
2.290, 2.031), computed by the recursive numerical integration of Armitage, McPherson & Rowe (1969) on the
B-value scale (B_k = Z_k sqrt(t_k), independent normal increments). Spending functions per side: O'Brien-
Fleming type, 2 - 2 Phi(z_(1 - alpha/4) / sqrt(t)), and Pocock type, (alpha / 2) ln(1 + (e - 1) t).
Information fraction t_k = blocks at look k / max blocks (the planned design). A look compares p-values with
the boundary's nominal level 2 (1 - Phi(c_k)): the p scale. scipy and statsmodels have no spending
boundaries, hence this module; tests/test_analysis_sequential.py checks it against published values.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import stats

from analysis.results import ALPHA

Spending = Literal["obrien_fleming", "pocock"]


def spent(t: np.ndarray, alpha: float = ALPHA, spending: Spending = "obrien_fleming") -> np.ndarray:
    """Cumulative two-sided alpha spent by information fraction t (0 < t <= 1): each side spends half,
    by Lan-DeMets' O'Brien-Fleming-type function at one-sided alpha / 2, 2 - 2 Phi(z_(1 - alpha/4) /
    sqrt(t)) (gsDesign's sfLDOF, two-sided symmetric), or Pocock's, (alpha / 2) ln(1 + (e - 1) t)."""
    t = np.asarray(t, float)
    if spending == "obrien_fleming":
        return 2 * (2 - 2 * stats.norm.cdf(stats.norm.ppf(1 - alpha / 4) / np.sqrt(t)))
    if spending == "pocock":
        return alpha * np.log(1 + (np.e - 1) * t)
    raise ValueError(f"unknown spending function {spending!r}: obrien_fleming or pocock")


def boundaries(fractions, alpha: float = ALPHA, spending: Spending = "obrien_fleming",
               grid: int = 3201) -> np.ndarray:
    """Two-sided z boundaries c_1..c_K at the information fractions (increasing, the last 1): the
    probability of first crossing |Z| >= c_k at look k under the null is the alpha spent between looks
    k - 1 and k. Numerical integration of the B-value density on `grid` points over +-8 (t <= 1)."""
    t = np.asarray(fractions, float)
    if np.any(np.diff(t) <= 0) or not 0 < t[0] or t[-1] > 1:
        raise ValueError(f"information fractions must increase within (0, 1]: {t.tolist()}")
    x = np.linspace(-8, 8, grid)
    dx = x[1] - x[0]
    density = None  # of B_(k-1) on x, zero outside the continuation region; None before the first look
    increments = np.diff(spent(t, alpha, spending), prepend=0.0)
    out = []
    for k, tk in enumerate(t):
        step = tk - (t[k - 1] if k else 0.0)

        low, high = 0.0, 12.0
        for _ in range(60):  # bisection on c: the crossing probability falls as c rises
            c = (low + high) / 2
            low, high = (c, high) if _crossed(c, tk, step, density, x) > increments[k] else (low, c)
        c = (low + high) / 2
        out.append(c)
        moved = stats.norm.pdf(x, scale=np.sqrt(step)) if density is None else \
            stats.norm.pdf(x[:, None] - x[None, :], scale=np.sqrt(step)) @ density * dx
        inside = np.abs(x) < c * np.sqrt(tk)
        # the grid cell the boundary cuts keeps the share of it that lies inside (trapezoid-like)
        weight = np.clip((c * np.sqrt(tk) - np.abs(x)) / dx + 0.5, 0.0, 1.0)
        density = moved * np.where(inside, weight, 0.0) if k + 1 < len(t) else None
    return np.array(out)


def _crossed(c: float, tk: float, step: float, density: np.ndarray | None, x: np.ndarray) -> float:
    """P(first crossing |B| >= c sqrt(tk) at this look): the last normal increment integrated exactly
    from the density of the previous look's continuing B-values on the grid x (None: the first look)."""
    edge, sd = c * np.sqrt(tk), np.sqrt(step)
    if density is None:
        return float(2 * stats.norm.sf(edge / sd))
    tails = stats.norm.cdf((-edge - x) / sd) + stats.norm.sf((edge - x) / sd)
    return float((density * tails).sum() * (x[1] - x[0]))


def nominal_levels(fractions, alpha: float = ALPHA, spending: Spending = "obrien_fleming") -> np.ndarray:
    """The boundaries on the p scale: a two-sided p below level k rejects at look k."""
    return 2 * stats.norm.sf(boundaries(fractions, alpha, spending))
