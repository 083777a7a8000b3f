"""Intervals over folds, then seeds, then images (analysis.stats with groups; analysis.paired)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from analysis.paired import Paired, compare_axis, compared_runs, paired_frames
from analysis.report import conclusion
from analysis.runs import _with_arms
from analysis.sections import _runs_for_seed
from analysis.stats import FEW_RUNS, compare_arms, fold_contrast_t

IMAGES = 120


def _arms(fold_gaps, seeds=3, seed_noise=0.002, seed=0):
    """(a, b, groups): arms of len(fold_gaps) folds x `seeds` runs; B - A in fold f is fold_gaps[f]
    (a split effect), plus small seed-to-seed and image noise."""
    rng = np.random.default_rng(seed)
    truth = rng.uniform(0.6, 0.95, IMAGES)
    a, b, folds = [], [], []
    for f, gap in enumerate(fold_gaps):
        for _ in range(seeds):
            a.append(truth + rng.normal(0, seed_noise) + rng.normal(0, 0.01, IMAGES))
            b.append(truth + gap + rng.normal(0, seed_noise) + rng.normal(0, 0.01, IMAGES))
            folds.append(f)
    folds = np.array(folds)
    return np.array(a), np.array(b), folds


def test_a_split_effect_is_counted_by_resampling_folds():
    """Folds disagree on the sign of B - A: resampling folds sees it; treating folds as fixed strata
    (runs resampled within each fold) does not, and would call a 0.01 mean gap real."""
    a, b, folds = _arms([0.05, -0.03, 0.04, -0.02, 0.01])
    hier = compare_arms(a, b, groups=[folds, folds])
    assert hier.runs_interval.method == "t over fold means" and hier.n_folds == 5
    assert hier.runs_interval.low < 0 < hier.runs_interval.high
    by_fold = [folds == f for f in range(5)]
    strata = compare_arms([a[m] for m in by_fold], [b[m] for m in by_fold])
    assert strata.runs_interval.low > 0  # the narrower, wrong answer for "would another split agree?"


def test_a_gap_every_fold_agrees_on_is_shown():
    a, b, folds = _arms([0.03, 0.028, 0.032, 0.031, 0.029])
    hier = compare_arms(a, b, groups=[folds, folds])
    assert hier.runs_interval.low > 0 and hier.p_runs < 0.01


def test_from_few_runs_folds_on_the_interval_is_the_bootstrap_over_folds_seeds_and_images():
    gaps = np.random.default_rng(3).normal(0.03, 0.004, FEW_RUNS)
    a, b, folds = _arms(gaps, seeds=2)
    result = compare_arms(a, b, groups=[folds, folds])
    assert result.runs_interval.method == "bootstrap over folds, seeds and images" and result.n_folds == FEW_RUNS
    assert result.runs_interval.low > 0


def test_below_few_runs_folds_the_interval_is_a_t_over_fold_means():
    a, b, folds = _arms([0.05, -0.01, 0.02])
    result = compare_arms(a, b, groups=[folds, folds])
    assert result.runs_interval.method == "t over fold means" and result.n_folds == 3
    per_fold = [b[folds == f].mean() - a[folds == f].mean() for f in range(3)]
    half = sps.t.ppf(0.975, 2) * np.std(per_fold, ddof=1) / np.sqrt(3)
    assert result.runs_interval.low == pytest.approx(np.mean(per_fold) - half)
    assert result.runs_interval.high == pytest.approx(np.mean(per_fold) + half)
    point, *_ = fold_contrast_t([a, b], [folds, folds], [-1.0, 1.0])
    assert point == pytest.approx(np.mean(per_fold))


def test_paired_frames_group_runs_by_fold_and_the_conclusion_names_folds_seeds_and_images():
    rows, scores = [], []
    for fold in range(5):
        for seed in range(2):
            for arch, shift in (("unet", 0.0), ("resnet34_unet", 0.02)):
                run = f"{arch}-{fold}-{seed}"
                rows.append({"run_id": run, "model.arch": arch, "data.fold": fold, "seed": seed})
                scores += [{"run_id": run, "name": f"img{i}", "dice": 0.8 + shift + 0.001 * ((i * 7 + fold) % 5)}
                           for i in range(30)]
    runs, scores = pd.DataFrame(rows), pd.DataFrame(scores)
    assert compare_axis(["model.arch", "data.fold", "seed"]) == "model.arch"
    assert compare_axis(["data.fold", "augment", "seed"]) == "augment"  # folds are replicates, not the question
    paired = paired_frames(runs, "model.arch", None, ["data.fold"], scores)
    assert isinstance(paired, Paired) and paired.settings == [""]  # the fold is not a setting
    assert sorted(paired.groups[("", "unet")].tolist()) == sorted([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    result = compare_arms(**paired.compare("unet", "resnet34_unet"))
    assert result.n_folds == 5 and result.mean_diff == pytest.approx(0.02)
    text = conclusion("unet", "resnet34_unet", result, 2, "model.arch")
    assert "over 30 test images and 5 folds &times; 2 seed(s) per fold per arm" in text
    assert "also counting split-to-split and seed-to-seed variation (95% CI by t over fold means" in text


def test_folds_are_replicates_in_the_arms_and_the_worst_images_pair_one_fold_and_seed():
    # unet's rows start at fold 1, resnet34_unet's at fold 0: a pick by seed alone would pair two folds.
    cells = [("unet", 1, 0), ("unet", 0, 1), ("unet", 0, 0), ("resnet34_unet", 0, 0), ("resnet34_unet", 1, 0)]
    raw = pd.DataFrame({"run_id": [f"r{i}" for i in range(len(cells))], "status": "FINISHED", "start_time": 0,
                        "params.model.arch": [a for a, _, _ in cells],
                        "params.data.fold": [str(f) for _, f, _ in cells],
                        "params.seed": [str(s) for *_, s in cells]})
    runs = _with_arms(raw, ["seed", "data.fold", "model.arch"])
    assert sorted(runs["arm"].unique()) == ["resnet34_unet", "unet"]  # not '0 / unet', '1 / unet', ...
    chosen = _runs_for_seed(runs, "model.arch", ["unet", "resnet34_unet"])
    assert {(row["seed"], row["data.fold"]) for row in chosen.values()} == {(0, "0")}
    assert [row.run_id for row in chosen.values()] == ["r2", "r3"]


def test_a_fold_one_arm_lacks_is_left_out_of_the_comparison():
    # A campaign stopped part-way: unet has folds 0 and 1, resnet34_unet fold 0 only.
    rows = [("a0", "unet", 0), ("a1", "unet", 1), ("b0", "resnet34_unet", 0)]
    runs = pd.DataFrame([{"run_id": r, "model.arch": a, "data.fold": f, "seed": 0} for r, a, f in rows])
    scores = pd.DataFrame([{"run_id": r, "name": f"img{i}", "dice": 0.5 + 0.4 * (r == "a1")}
                           for r, *_ in rows for i in range(10)])
    assert list(compared_runs(runs, "model.arch", [])["run_id"]) == ["a0", "b0"]
    paired = paired_frames(runs, "model.arch", None, [], scores)
    assert paired.cells[("", "unet")].shape == (1, 10)  # fold 1's 0.9 would have made unet look better
    assert compare_arms(**paired.compare("unet", "resnet34_unet")).mean_diff == pytest.approx(0.0)
