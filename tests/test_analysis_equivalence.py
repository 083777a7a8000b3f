"""Equivalence within a margin fixed in advance (a campaign's `delta:`): TOST over the image and the runs
intervals, one error budget with "real", and the margin carried from the spec through the record."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import yaml

from analysis.runs import margin_of
from analysis.stats import adjust_family, compare_arms, run_contrast_t, tost_p

from conftest import EXPERIMENTS


def _arms(shift: float, runs: int = 6, seed: int = 0, images: int = 200):
    rng = np.random.default_rng(seed)
    truth = rng.uniform(0.6, 0.9, images)
    return truth + rng.normal(0, 0.01, (runs, images)), truth + shift + rng.normal(0, 0.01, (runs, images))


def test_no_difference_is_shown_equivalent_and_a_large_one_real_not_equivalent():
    same = adjust_family([compare_arms(*_arms(0.0), margin=0.01)])[0]
    assert same.evidence == "equivalent" and same.verdict == "equivalent within ±0.01" and same.p_equivalence < 0.05
    far = adjust_family([compare_arms(*_arms(0.03), margin=0.01)])[0]
    assert far.evidence == "real" and not far.equivalent and far.p_equivalence > 0.5
    plain = adjust_family([compare_arms(*_arms(0.0))])[0]
    assert plain.margin is None and plain.evidence == "none"  # without a margin: as before


def test_tost_rejects_exactly_when_both_90_percent_intervals_lie_inside():
    for shift, margin in ((0.0, 0.01), (0.004, 0.006), (0.0, 0.003)):
        a, b = _arms(shift, runs=4)
        p = tost_p(b.mean(axis=0) - a.mean(axis=0), [a, b], [-1.0, 1.0], margin)
        _, low, high, _ = run_contrast_t([a, b], [-1.0, 1.0], level=0.90)
        d = b.mean(axis=0) - a.mean(axis=0)
        draws = np.random.default_rng(0).integers(0, d.size, (10_000, d.size))
        images = np.quantile(d[draws].mean(axis=1), [0.05, 0.95])
        inside = -margin < low and high < margin and -margin < images[0] and images[1] < margin
        assert (p < 0.05) == inside, (shift, margin, p)


def test_one_budget_a_family_tests_both_hypotheses_at_alpha_over_its_size():
    family = adjust_family([compare_arms(*_arms(0.0, seed=s), margin=0.01) for s in range(4)])
    for r in family:
        assert r.p_adjusted == pytest.approx(min(1.0, 4 * r.decisive_p))  # Bonferroni, not Holm, with a margin
        assert r.equivalent == (r.p_equivalence * 4 < 0.05)
    one_run = adjust_family([compare_arms(*(x[:1] for x in _arms(0.0)), margin=0.05)])[0]
    assert one_run.p_equivalence == 1.0 and one_run.evidence != "equivalent"  # retraining not counted


@pytest.mark.slow
def test_a_difference_at_the_margin_is_rarely_called_equivalent():
    """300 campaigns (4 runs per arm, 200 images) whose true B - A is exactly the margin: 'equivalent'
    in at most 5% of them, within 2 binomial standard errors."""
    said = [compare_arms(*_arms(0.01, runs=4, seed=s), margin=0.01).equivalent for s in range(300)]
    assert np.mean(said) <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / 300)


def test_the_margin_comes_from_the_campaign_and_a_command_line_one_is_post_hoc():
    runs = pd.DataFrame({"campaign.delta": ["0.01", "0.01", None]})
    assert margin_of(runs) == (0.01, False) and margin_of(runs, 0.01) == (0.01, False)
    assert margin_of(runs, 0.02) == (0.02, True) and margin_of(pd.DataFrame({"x": [1]})) == (None, False)
    with pytest.raises(LookupError, match="different equivalence margins"):
        margin_of(pd.DataFrame({"campaign.delta": ["0.01", "0.02"]}))


def test_a_campaign_declares_its_margin_and_every_run_records_it(store, tmp_path):
    from analysis.report import build_report
    from harness.config.sweeps import load_campaign_spec
    from harness.sweeps.campaign import run_campaign

    path = tmp_path / "eq.yaml"
    path.write_text(yaml.safe_dump({"name": "eq", "base": str(EXPERIMENTS / "debug.yaml"), "delta": 0.5,
                                    "matrix": {"model.arch": ["unet", "resnet34_unet"], "seed": [0, 1]},
                                    "set": {"train.epochs": 1, "log_model": False, "model.base_width": 4,
                                            "data.synthetic_size": [32, 8]}}))
    spec, base = load_campaign_spec(path)
    assert spec.delta == 0.5 and [r.status for r in run_campaign(spec, base)] == ["FINISHED"] * 4
    report = build_report(campaign="eq")
    first = report.conclusions[0].comparison
    assert first.margin == 0.5 and not first.margin_post_hoc and first.p_equivalence is not None
    assert "within ±0.5" in report.text() and "post hoc" not in report.text()
    assert "post hoc" in build_report(campaign="eq", delta=0.4).text()
    bad = path.with_name("bad.yaml")
    bad.write_text(path.read_text().replace("delta: 0.5", "delta: -1"))
    from harness.config.load import SpecError

    with pytest.raises(SpecError, match="delta"):
        load_campaign_spec(bad)


def test_a_sequential_campaign_stops_once_every_comparison_is_decided(store, tmp_path, capsys):
    """2 seeds x 2 folds (4 blocks of 2 runs): with a margin no Dice difference can reach (100), both
    comparisons are equivalent at the first look (2 blocks), so blocks 3-4 are NOT NEEDED; a re-run
    takes the same look from the record and trains nothing."""
    from harness.config.sweeps import load_campaign_spec
    from harness.sweeps.campaign import run_campaign

    path = tmp_path / "seq.yaml"
    path.write_text(yaml.safe_dump({
        "name": "seq", "base": str(EXPERIMENTS / "debug.yaml"),
        "sequential": {"delta": 100, "block": ["seed", "data.fold"], "min_blocks": 2},
        "matrix": {"seed": [0, 1], "data.fold": [0, 1], "model.arch": ["unet", "resnet34_unet"]},
        "set": {"train.epochs": 1, "log_model": False, "model.base_width": 4, "data.synthetic_size": [32, 8],
                "data.folds": 2}}, sort_keys=False))  # the matrix order: seed slowest
    spec, base = load_campaign_spec(path)
    assert spec.blocks() == [(0, 0), (0, 1), (1, 0), (1, 1)]
    results = run_campaign(spec, base)
    assert [r.status for r in results] == ["FINISHED"] * 4 + ["NOT NEEDED"] * 4
    out = capsys.readouterr().out
    assert "every comparison decided at look 2" in out and "equivalent within ±100" in out
    assert [r.status for r in run_campaign(spec, base)] == ["SKIPPED"] * 4 + ["NOT NEEDED"] * 4
    from analysis.sequential import main as sequential_main

    capsys.readouterr()
    assert sequential_main(["--replay", "seq"]) == 0  # the replay takes the campaign's own design
    replayed = capsys.readouterr().out
    assert "(the campaign's design)" in replayed and "delta 100, 4 blocks planned" in replayed
    assert "every comparison decided at look 2 of 4: 4 runs not needed" in replayed
    # a dry run of the stopped design lists the later blocks as not needed, not as work to do
    assert [r.status for r in run_campaign(spec, base, dry_run=True)] == ["SKIPPED"] * 4 + ["NOT NEEDED"] * 4
    from analysis.report import build_report

    report = build_report(campaign="seq")
    page = report.html
    assert "not adjusted for the sequential looks" in report.text()  # the terminal's conclusion says so too
    assert "<h2>Sequential design</h2>" in page and "Every comparison was decided at look 2" in page
    assert "not adjusted for the looks" in page and "equivalent within ±100" in page
    assert "interval at the look&#39;s level" in page or "interval at the look's level" in page
    assert "boundary over 4 blocks" in page  # the design's 4 blocks (max_blocks unset), as the campaign looked
    assert "&plusmn;100 (<code>make plan" in page  # the plan section plans for the declared margin
    from analysis.plan import plan_campaign

    assert {p.delta for p in plan_campaign("seq", None)} == {100.0}
    assert {p.delta for p in plan_campaign("seq", 0.02)} == {0.02}
    rows = {name: (d.folds, d.seeds) for name, d, *_ in plan_campaign("seq", None)[0].rows}
    assert rows["current"] == (2, 1) and rows["the campaign's design"] == (2, 2)  # 4 blocks over 2 folds
    assert "the campaign&#39;s design" in page or "the campaign's design" in page
    from harness.sweeps.campaign import print_status

    capsys.readouterr()
    print_status(spec, base, None)  # make campaign-status: the cells, then where the design stands
    status = capsys.readouterr().out
    assert "4 finished, 4 not needed" in status
    assert "2 of 4 blocks complete; stopped at look 2; dice resnet34_unet vs unet: equivalent within ±100" in status


TWO_AXES = {"augment": ["none", "flip"], "model.arch": ["unet", "resnet34_unet"]}


@pytest.mark.parametrize("sequential, extra, words", [({"delta": 0.01, "block": ["data.fold"]}, {}, "block"),
                                                       ({"delta": 0.01, "max_blocks": 9}, {}, "exceeds"),
                                                       ({"delta": -1}, {}, "delta"),
                                                       ({"delta": 0.01}, TWO_AXES,
                                                        "one axis besides"),
                                                       ({"delta": 0.01, "max_blocks": 9}, {"augment": ["none"]},
                                                        "exceeds")])  # a one-value axis is no second arm axis
def test_a_sequential_design_that_cannot_work_is_refused(tmp_path, sequential, extra, words):
    """Among them a second compared axis: the looks test the arms only, the report would test more."""
    from harness.config.load import SpecError
    from harness.config.sweeps import load_campaign_spec

    path = tmp_path / "bad.yaml"
    matrix = {"seed": [0, 1], "data.fold": [0, 1], "model.arch": ["unet"], **extra}
    path.write_text(yaml.safe_dump({"name": "bad", "base": str(EXPERIMENTS / "debug.yaml"), "sequential": sequential,
                                    "matrix": matrix, "set": {"data.folds": 2}}))
    with pytest.raises(SpecError, match=words) as exc:
        load_campaign_spec(path)
    # the error names the field (sequential.*, or the matrix for the arms) and its line, even from a
    # check of the whole campaign
    where, field = re.search(r"bad.yaml:(\d+): field '([\w.]+)'", str(exc.value)).groups()
    assert field == "matrix" if words == "one axis besides" else field.startswith("sequential")
    if "." in field:  # the key's line, or its value's first line when the value is a block below it
        lines = [n + 1 for n, line in enumerate(path.read_text().splitlines())
                 if line.strip().startswith(field.split(".")[-1] + ":")]
        assert int(where) - lines[0] in (0, 1)
