"""analysis.plan: the components it estimates from a pilot, and the power it predicts, checked against
the harness's own rule (stats.compare_arms) on simulated campaigns with known components."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from analysis.plan import MetricPlan, estimate
from analysis.power import Components, Design, equivalence_power, images_needed, mde, power
from analysis.stats import compare_arms

HEADLINE = Components("dice", interaction_sd=0.04, noise_sd=0.05, seed_sd=0.004, fold_sd=0.003, effect=0.0)


def campaign(c: Components, d: Design, delta: float, rng: np.random.Generator):
    """(a, b, groups): per-run per-image scores of two arms with components `c` and true B - A `delta`."""
    n = d.images
    base, g = rng.uniform(0.6, 0.95, n), rng.normal(0, c.interaction_sd, n)
    a, b, folds = [], [], []
    for f in range(max(d.folds, 1)):
        u = rng.normal(0, c.fold_sd) if d.folds else 0.0
        for _ in range(d.seeds):
            a.append(base + rng.normal(0, c.seed_sd) + rng.normal(0, c.noise_sd, n))
            b.append(base + delta + g + u + rng.normal(0, c.seed_sd) + rng.normal(0, c.noise_sd, n))
            folds.append(f)
    folds = np.array(folds)
    return np.array(a), np.array(b), ([folds, folds] if d.folds else None)


def test_the_components_of_a_pilot_are_recovered():
    a, b, groups = campaign(HEADLINE, Design(5, 3, 400), 0.01, np.random.default_rng(0))
    c = estimate(a, b, groups, "dice")
    assert c.interaction_sd == pytest.approx(0.04, rel=0.1) and c.noise_sd == pytest.approx(0.05, rel=0.05)
    assert c.seed_sd == pytest.approx(0.004, rel=0.5) and c.fold_sd < 0.01
    assert c.effect == pytest.approx(0.01, abs=0.006)
    seeds = estimate(*campaign(HEADLINE, Design(0, 6, 400), 0.0, np.random.default_rng(1))[:2], None, "dice")
    assert seeds.fold_sd == 0 and seeds.noise_sd == pytest.approx(0.05, rel=0.05)


@pytest.mark.slow
@pytest.mark.parametrize("design", [Design(5, 3, 200), Design(0, 4, 200)], ids=["5 folds x 3 seeds", "4 seeds"])
def test_predicted_power_matches_the_rule_within_5_points(design):
    """At three effect sizes, power(...) against the share of 800 simulated campaigns that
    stats.compare_arms (bootstrap image interval, Wilcoxon, t over fold or run means) calls real
    (binomial sd of that share: at most 1.8 points)."""
    for k, delta in enumerate((0.004, 0.008, 0.012)):
        said = [compare_arms(a, b, groups=g).evidence == "real"
                for a, b, g in (campaign(HEADLINE, design, delta, np.random.default_rng(1000 * k + r))
                                for r in range(800))]
        assert abs(power(HEADLINE, design, delta, sims=4000) - np.mean(said)) <= 0.05, delta


def test_more_runs_or_images_never_raise_the_minimal_detectable_effect():
    now = mde(HEADLINE, Design(5, 3, 200))
    assert 0.003 < now < 0.03
    assert mde(HEADLINE, Design(5, 6, 200)) <= now and mde(HEADLINE, Design(10, 3, 200)) <= now
    assert mde(HEADLINE, Design(5, 3, 800)) < now
    # With no true difference the rule says "real" in about 6% of these campaigns, not 5%: the t over fold
    # means treats the test set as fixed and the image tests the runs (analysis.null_rates measured 6.0%).
    assert power(HEADLINE, Design(5, 3, 200), 0.0) < 0.08 < power(HEADLINE, Design(5, 3, 200), now)


def test_the_smallest_equivalence_margin_is_where_tost_reaches_the_power():
    """The margin per design is the equivalence analogue of the MDE: TOST's power (same simulated
    campaigns) crosses the target there, and more runs or images never widen it."""
    from analysis.power import equivalence_margin

    design = Design(5, 3, 200)
    margin = equivalence_margin(HEADLINE, design)
    assert 0.002 < margin < 0.05
    assert equivalence_power(HEADLINE, design, margin * 1.001) >= 0.8 > equivalence_power(HEADLINE, design,
                                                                                           margin * 0.98)
    assert equivalence_margin(HEADLINE, Design(10, 3, 200)) <= margin
    assert equivalence_margin(HEADLINE, Design(5, 3, 800)) < margin


def test_the_test_set_limit_is_said_with_the_images_that_would_lift_it():
    """0.005 Dice over 200 images with an arm x image sd of 0.05: unlimited runs leave the image interval at
    about +-0.007, so no number of runs detects it; about 800 images would."""
    c = Components("dice", 0.05, 0.03, 0.003, 0.002, 0.0)
    needed = images_needed(c, 0.005)
    assert 700 < needed < 900
    limit = 2.80 * 0.05 / np.sqrt(200)
    plan = MetricPlan(c, ("unet", "resnet34_unet"), Design(5, 3, 200), 1, 0.005, 0.8, (("current", None, 0.02, 0.03),),
                      None, limit, needed, 0.0, None)
    assert plan.sentence() == (f"Dice: the test set limits this comparison: with 200 test images no number of runs "
                               f"detects 0.005 (even unlimited runs detect {limit:.4f} at 80% power); about "
                               f"{needed:,} images would.")


def test_equivalence_needs_both_intervals_inside_the_margin():
    quiet = Components("dice", 0.01, 0.01, 0.001, 0.001, 0.0)
    assert equivalence_power(quiet, Design(5, 3, 200), 0.01) > 0.9
    assert equivalence_power(HEADLINE, Design(2, 1, 200), 0.01) < 0.2  # 2 folds: the t over 1 df is wide
    assert equivalence_power(quiet, Design(5, 3, 200), 0.001) < 0.05


def test_out_of_reach_names_the_largest_design_searched():
    """With no design found, the sentences name the caps the search ran to, not a vague 'the caps'."""
    noisy = Components("nsd", 0.07, 0.07, 0.02, 0.0, 0.0)
    plan = MetricPlan(noisy, ("unet", "resnet34_unet"), Design(5, 3, 200), 2, 0.01, 0.8,
                      (("current", None, 0.04, 0.05),), None, 0.001, 500, 0.0, None, max_folds=8)
    assert plan.sentence() == "NSD: no design up to 8 folds x 10 seeds on 200 test images detects 0.01 with 80% power."
    assert plan.equivalence_sentence().endswith(
        "0% power now; 80% is out of reach of every design up to 8 folds x 10 seeds on 200 test images.")


def test_power_curve_ticks_are_few_round_values_inside_the_range():
    from analysis.plan_report import _ticks

    assert _ticks(0.0025, 0.027) == [0.005, 0.01, 0.02]
    many = _ticks(1e-4, 1.0)
    assert len(many) <= 6 and all(1e-4 <= t <= 1.0 for t in many)


def test_a_small_pilot_says_what_it_cannot_estimate():
    """One seed per fold (a sequential campaign's first look): the seed spread is not separable from the
    fold spread, and 2 folds give a rough figure; the headline's 5 x 3 needs no such warning."""
    rng = np.random.default_rng(0)
    truth = Components("dice", 0.04, 0.04, 0.01, 0.0, 0.0)
    a, b, groups = campaign(truth, Design(2, 1, 400), 0.0, rng)
    pilot = estimate(a, b, groups, "dice")
    assert pilot.seed_sd == 0.0  # not estimable: no fold has two seeds

    def plan(design):
        return MetricPlan(pilot, ("unet", "resnet34_unet"), design, 2, 0.005, 0.8, (("current", design, 0.02, 0.03),),
                          None, 0.001, 500, 0.0, None)

    small = plan(Design(2, 1, 400)).caveat()
    assert "one seed per fold" in small and "2 folds" in small
    assert "one seed per fold" not in plan(Design(2, 3, 400)).caveat()
    assert plan(Design(5, 3, 400)).caveat() == ""
    assert "2 runs per arm" in plan(Design(0, 2, 400)).caveat()
    flat = replace(pilot, seed_sd=0.0, fold_sd=0.0)  # two folds that happened to agree
    assert "came out 0" in replace(plan(Design(2, 1, 400)), components=flat).caveat()
    assert Design(2, 1, 400).label() == "2 folds x 1 seed, 400 images (4 runs)"


def _tagged(*designs, campaign=("c",)):
    import json

    import pandas as pd

    return pd.DataFrame({"run_id": [f"r{i}" for i in range(len(designs))],
                         "campaign": [campaign[i % len(campaign)] for i in range(len(designs))],
                         "campaign.sequential": [json.dumps(d) if d else None for d in designs]})


@pytest.mark.parametrize("designs, campaigns, expected", [
    ([None, None], ("c",), None),  # a fixed campaign records no grid
    ([{"block": ["seed"], "max_blocks": 6}], ("c",), (0, 6)),
    ([{"block": ["seed", "data.fold"], "max_blocks": 9, "folds": 3}] * 2, ("c",), (3, 3)),
    ([{"block": ["seed", "data.fold"], "max_blocks": 3, "folds": 5}], ("c",), None),  # under one seed of folds
    ([{"block": ["seed", "data.fold"], "max_blocks": 7, "folds": 5}], ("c",), None),  # no whole number of seeds
    ([{"block": ["seed", "data.fold"], "max_blocks": None}], ("c",), None),  # an early record: unresolved
    ([{"block": ["seed"], "max_blocks": 6}, {"block": ["seed"], "max_blocks": 4}], ("c",), None),  # edited
    ([{"block": ["seed"], "max_blocks": 6}, None], ("c", "d"), None),  # pooled with another campaign
])
def test_the_declared_design_is_read_only_where_the_record_says_it(designs, campaigns, expected):
    from analysis.plan import declared_design

    assert declared_design(_tagged(*designs, campaign=campaigns)) == expected


def test_a_design_recorded_before_its_fold_count_reads_the_runs_data_folds(monkeypatch):
    """Tags written before `folds` was recorded: data.folds of a run that carries the tag."""
    from types import SimpleNamespace

    import mlflow.tracking

    from analysis.plan import declared_design

    asked = []

    class Client:
        def __init__(self, uri):
            pass

        def get_run(self, run_id):
            asked.append(run_id)
            return SimpleNamespace(data=SimpleNamespace(params={"data.folds": "5"}))

    monkeypatch.setattr(mlflow.tracking, "MlflowClient", Client)
    runs = _tagged(None, {"block": ["seed", "data.fold"], "max_blocks": 10})
    assert declared_design(runs, "sqlite://") == (5, 2) and asked == ["r1"]
