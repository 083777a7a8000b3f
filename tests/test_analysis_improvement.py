"""The probability of improvement per image: the share of test images on which B's run-averaged
score beats A's (ties half), with an interval from the hierarchical resampling of the other intervals."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.stats import compare_arms, improvement_share


def test_the_share_counts_images_and_ties_count_half():
    a = np.array([[0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, 0.5]])
    b = np.array([[0.6, 0.4, 0.5, 0.7], [0.6, 0.4, 0.5, 0.7]])  # better on 2, worse on 1, tied on 1
    share, draws = improvement_share([a, b], [-1.0, 1.0], n_boot=200)
    assert share == pytest.approx(2.5 / 4) and draws.shape == (200,) and ((0 <= draws) & (draws <= 1)).all()


@pytest.mark.parametrize("folds", [False, True], ids=["seeds", "folds x seeds"])
def test_its_interval_holds_the_share_and_counts_the_runs(folds):
    rng = np.random.default_rng(0)
    truth = rng.uniform(0.6, 0.9, 200)
    a, b = truth + rng.normal(0, 0.01, (10, 200)), truth + 0.02 + rng.normal(0, 0.01, (10, 200))
    groups = [np.repeat(np.arange(5), 2)] * 2 if folds else None
    r = compare_arms(a, b, groups=groups, improvement=True)
    assert r.improvement > 0.9 and r.improvement_interval.low <= r.improvement <= r.improvement_interval.high
    assert r.improvement_interval.method.startswith("bootstrap over folds" if folds else "bootstrap over runs")
    null = compare_arms(a, truth + rng.normal(0, 0.01, (10, 200)), groups=groups, improvement=True)
    assert null.improvement_interval.low < 0.5 < null.improvement_interval.high
    assert compare_arms(a, b).improvement is None  # only when asked: simulations skip its bootstrap
