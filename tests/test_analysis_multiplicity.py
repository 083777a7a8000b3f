"""Holm's correction, and that a family of null comparisons rarely yields a verdict "real"."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.null_rates import null_folds
from analysis.stats import adjust_family, compare_arms, holm


def test_holm_on_a_textbook_example():
    # m = 4: sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5]) == pytest.approx([0.5]) and holm([0.3, 0.9]) == pytest.approx([0.6, 0.9])


def _null_arm(rng, images: np.ndarray, runs: int = 3) -> np.ndarray:
    """(runs, images) per-image Dice: the images' own difficulty + a run effect + noise, no arm effect."""
    return np.clip(images + rng.normal(0, 0.01, (runs, 1)) + rng.normal(0, 0.03, (runs, images.size)), 0, 1)


@pytest.mark.slow
def test_a_family_of_20_null_comparisons_rarely_says_real():
    """200 simulated families of 20 comparisons with no true difference (3 runs per arm, 40 images):
    uncorrected, some family says "real" far more often than 5%; after Holm, at most 5% of families do."""
    rng = np.random.default_rng(0)
    families_with_real, families_with_real_uncorrected = 0, 0
    for _ in range(200):
        results = []
        for _ in range(20):
            images = rng.uniform(0.6, 0.95, 40)
            results.append(compare_arms(_null_arm(rng, images), _null_arm(rng, images)))
        families_with_real_uncorrected += any(r.evidence == "real" for r in results)
        results = adjust_family(results)
        families_with_real += any(r.evidence == "real" for r in results)
    assert families_with_real / 200 <= 0.05
    assert families_with_real_uncorrected / 200 > 0.05  # the correction is what holds the rate down


def test_a_large_real_difference_survives_the_correction():
    rng = np.random.default_rng(1)
    images = rng.uniform(0.6, 0.9, 200)
    results = [compare_arms(_null_arm(rng, images, 4), _null_arm(rng, images, 4) + 0.05) for _ in range(3)]
    results = adjust_family(results)
    assert all(r.evidence == "real" and r.family_size == 3 and r.p_holm < 0.05 for r in results)


def test_one_run_per_arm_is_never_called_real():
    # Two trained models that differ over every image: significant, also after Holm, but with one
    # run per arm nothing says what a retraining would change.
    rng = np.random.default_rng(2)
    images = rng.uniform(0.6, 0.9, 200)
    results = [compare_arms(_null_arm(rng, images, 1), _null_arm(rng, images, 1) + 0.05)]
    results = adjust_family(results)
    assert results[0].p_holm < 0.05 and results[0].runs_interval is None
    assert results[0].evidence == "one run"


@pytest.mark.slow
def test_a_five_fold_campaign_with_no_difference_says_real_at_the_nominal_rate():
    """400 null campaigns of 5 folds x 3 seeds whose folds move B - A by a split effect of mean 0:
    the verdict 'real' (alone, a family of 1) in 5% of them, within 2 Monte Carlo standard errors.
    The percentile bootstrap over 5 folds said it in 11% (`python -m analysis.null_rates --folds 5`);
    the t over fold means is what holds the rate down."""
    rng, sims = np.random.default_rng(0), 400
    said_real = 0
    for _ in range(sims):
        a, b, groups = null_folds(rng, 5)
        result = compare_arms(a, b, groups=[groups, groups])
        assert result.runs_interval.method == "t over fold means"
        said_real += result.evidence == "real"
    assert said_real / sims <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / sims)


def test_null_rates_prints_each_intervals_false_positive_share(capsys):
    from analysis.null_rates import main

    main(["--runs", "3", "--folds", "2", "--sims", "4"])
    out = capsys.readouterr().out
    assert "3 runs per arm, 4 null campaigns" in out and "Welch t over run means" in out
    assert "2 folds, 4 null campaigns" in out and "t over fold means" in out
    with pytest.raises(SystemExit):
        main([])


def test_recorded_verdicts_reread_from_their_intervals_and_adjusted_per_family(capsys):
    import pandas as pd

    from analysis.recorded import RECORDED, main, reread

    cells = pd.read_csv(RECORDED)
    # a transcription check on docs/results.md: the old rule said "real" exactly where the interval excluded 0
    excludes = (cells["high"] < 0) | (cells["low"] > 0)
    assert list(cells.loc[excludes, "old_verdict"].unique()) == ["real"]
    assert "real" not in set(cells.loc[~excludes, "old_verdict"])
    # by hand: an interval whose end sits at 0 gives p = 0.05; Holm in a family of 2 doubles the smaller p
    toy = pd.DataFrame({"campaign": ["a", "a", "b"], "estimate": [-1.0, -3.0, 1.0],
                        "low": [-1.0 - 1.959964, -3.0 - 1.959964, 0.0], "high": [-1.0 + 1.959964, -3.0 + 1.959964, 2.0],
                        "old_verdict": ["not shown", "real", "not shown"]})
    out = reread(toy)
    assert out["p"].round(4).tolist() == [0.3173, 0.0027, 0.05]
    assert out["p_holm_campaign"].round(4).tolist() == [0.3173, 0.0054, 0.05]
    assert out["campaign_family"].tolist() == [2, 2, 1] and out["p_holm"].round(4).tolist() == [0.3173, 0.0081, 0.1]
    assert out["new_verdict"].tolist() == ["not shown", "real", "not shown"]
    main([])
    assert "called real at 5% each; under Holm" in capsys.readouterr().out
