"""Typed statistical results (analysis.results) and where scipy computes the same number as the
hand-written statistics once did (analysis.stats)."""

from __future__ import annotations

import ast
import dataclasses

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from analysis import results, stats
from analysis.report import seed_counts
from analysis.results import Conclusion, SeedCounts

from conftest import REPO


def _arms(runs=3, shift=0.02, seed=0):
    rng = np.random.default_rng(seed)
    truth = rng.uniform(0.6, 0.9, 80)
    return truth + rng.normal(0, 0.01, (runs, 80)), truth + shift + rng.normal(0, 0.01, (runs, 80))


def test_a_comparison_is_frozen_and_says_which_interval_counts_the_runs():
    a, b = _arms()
    r = stats.compare_arms(a, b)
    assert r.runs == (3, 3) and r.n_images == 80 and r.runs_interval.method == "t over run means"
    assert r.images_interval.method == "bootstrap over images" and r.family_size is None and r.p_holm is None
    assert r.confidence_interval() is r.runs_interval and r.evidence == "real" and r.verdict == "real"
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.mean_diff = 0.0
    one = stats.compare_arms(a[:1], b[:1])
    assert one.runs_interval is None and one.p_runs is None and one.confidence_interval() is one.images_interval
    assert one.evidence == "one run"
    assert set(r.row()) >= {"seed_ci_low", "seed_ci_high", "p_boot_runs"} and "seed_ci_low" not in one.row()


def test_adjusting_a_family_returns_new_objects_and_leaves_the_old_ones():
    family = [stats.compare_arms(*_arms(seed=s)) for s in range(3)]
    adjusted = stats.adjust_family(family)
    assert all(r.p_holm is None for r in family)  # untouched
    assert [r.family_size for r in adjusted] == [3, 3, 3]
    assert [r.p_holm for r in adjusted] == pytest.approx(list(stats.holm([r.decisive_p for r in family])))
    assert [dataclasses.replace(r, p_holm=None, family_size=None) for r in adjusted] == family


def test_one_alpha():
    """No literal 0.05 / 0.95 / 0.025 / 0.975 in the analysis code: every level comes from results.ALPHA
    (simulated image difficulties drawn from uniform(0.6, 0.95) are data, not a level)."""
    assert results.ALPHA == stats.ALPHA == 0.05 and results.LEVEL == 1 - results.ALPHA
    offenders = []
    for path in (REPO / "analysis").rglob("*.py"):
        tree = ast.parse(path.read_text())
        data = {id(arg) for node in ast.walk(tree) if isinstance(node, ast.Call)
                and getattr(node.func, "attr", "") == "uniform" for arg in node.args}
        offenders += [f"{path.relative_to(REPO)}:{node.lineno}" for node in ast.walk(tree)
                      if isinstance(node, ast.Constant) and node.value in (0.05, 0.95, 0.025, 0.975)
                      and id(node) not in data and path.name != "results.py"]
    assert offenders == []


def test_scipy_t_intervals_equal_the_hand_written_ones():
    """The one-sample t (an arm over its runs; a contrast over fold means) is scipy's ttest_1samp: the
    same numbers as the formula it replaced, to 1e-12."""
    values = np.array([0.8512, 0.8476, 0.8601, 0.8433, 0.8555])
    mean, low, high, p = stats.t_interval(values)
    se = values.std(ddof=1) / np.sqrt(values.size)
    half = sps.t.ppf(0.975, values.size - 1) * se
    assert (low, high) == pytest.approx((values.mean() - half, values.mean() + half), abs=1e-12)
    assert p == pytest.approx(2 * sps.t.sf(values.mean() / se, values.size - 1), abs=1e-12)
    # ...and the Welch t of a single cell with weight 1 (what the report's summary used before)
    _, w_low, w_high, w_p = stats.run_contrast_t([values[:, None]], [1.0])
    assert (low, high, p) == pytest.approx((w_low, w_high, w_p), abs=1e-12)
    arm = stats.summarize_arm(values)
    assert (arm.mean, arm.interval.low, arm.interval.high) == pytest.approx((mean, low, high), abs=1e-12)
    draws = np.random.default_rng(0).normal(size=4000)
    assert stats.percentile_interval(draws) == pytest.approx(tuple(np.quantile(draws, [0.025, 0.975])), abs=1e-12)


def test_an_arm_of_many_runs_is_bootstrapped_and_one_run_has_no_interval():
    many = np.random.default_rng(1).normal(0.85, 0.01, stats.FEW_RUNS)
    assert stats.summarize_arm(many).interval.method == "bootstrap over runs"
    one = stats.summarize_arm([0.8])
    assert one.interval is None and one.text() == "0.8000 [0.8000, 0.8000]"


def test_unequal_seeds_per_fold_are_counted_per_arm():
    """A partial campaign: unet has 2 seeds on fold 0 and 1 on folds 1-2; resnet34_unet 1 everywhere."""
    rows = [("unet", 0, 0), ("unet", 0, 1), ("unet", 1, 0), ("unet", 2, 0),
            ("resnet34_unet", 0, 0), ("resnet34_unet", 1, 0), ("resnet34_unet", 2, 0)]
    runs = pd.DataFrame([{"model.arch": a, "data.fold": f, "seed": s} for a, f, s in rows])
    seeds = seed_counts(runs, "model.arch", ["model.arch", "data.fold"])
    assert seeds == SeedCounts((("unet", 1, 2), ("resnet34_unet", 1, 1)))
    a, b = _arms()
    r = dataclasses.replace(stats.compare_arms(a, b), n_folds=3).labelled("dice", "unet", "resnet34_unet")
    text = Conclusion(r, "model.arch", seeds).text()
    assert "over 80 test images and 3 folds × unet 1-2, resnet34_unet 1 seed(s) per fold per arm (unequal" in text
    assert seed_counts(runs[runs.seed == 0], "model.arch", ["model.arch", "data.fold"]) == 1
