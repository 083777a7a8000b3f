"""Group-sequential looks (analysis.sequential): the spending boundaries against published values, and
the error rates of the stopping rule on simulated campaigns."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from analysis.sequential import Design
from analysis.sequential_simulation import MEASURED, simulate
from analysis.spending import boundaries, nominal_levels, spent


def test_obrien_fleming_boundaries_match_the_published_values():
    """Lan-DeMets O'Brien-Fleming type, two-sided symmetric alpha 0.05 (each side alpha / 2), K = 5
    equally spaced looks: 4.877, 3.357, 2.680, 2.290, 2.031 (gsDesign sfLDOF, test.type 2)."""
    c = boundaries([0.2, 0.4, 0.6, 0.8, 1.0])
    assert c == pytest.approx([4.877, 3.357, 2.680, 2.290, 2.031], abs=0.0015)


@pytest.mark.parametrize("spending", ["obrien_fleming", "pocock"])
def test_the_spending_function_spends_alpha_and_one_look_is_the_fixed_test(spending):
    assert spent(np.array([1.0]), spending=spending)[0] == pytest.approx(0.05)
    assert boundaries([1.0], spending=spending)[0] == pytest.approx(1.95996, abs=1e-4)
    levels = nominal_levels([0.25, 0.5, 0.75, 1.0], spending=spending)
    assert (levels < 0.05).all() and levels.sum() > 0.05 * 0.9  # the looks share, no look exceeds alpha
    if spending == "obrien_fleming":
        assert np.all(np.diff(levels) > 0)  # strict early, near alpha at the end


def test_a_block_is_one_fold_of_one_seed_fold_major():
    d = Design(folds=5, seeds=3, delta=0.01)
    assert [d.block(k) for k in (1, 5, 6, 15)] == [(0, 0), (0, 4), (1, 0), (2, 4)]
    assert d.looks()[0] == 2 and d.max_blocks == 15  # every look has at least 2 folds


@pytest.mark.slow
def test_the_stopping_rule_holds_its_error_rates():
    """300 simulated headline-shaped campaigns per row (the CLI's --n 2000 prints the figures in
    docs/results.md): false 'real' and false 'equivalent' at most 5% within 2 binomial sd, and the
    naive repeated looks above the corrected ones."""
    rows = dict(simulate(MEASURED, Design(5, 3, 0.01), sims=300, seed=1))
    share = {k: float(v.split("%")[0]) / 100 for k, v in rows.items() if "%" in v}
    bound = 0.05 + 2 * np.sqrt(0.05 * 0.95 / 300)
    assert share["false 'real' (no difference), any look or comparison"] <= bound
    assert share["false 'equivalent' (true difference = delta)"] <= bound
    assert share["the same, naive repeated looks at alpha / m"] > share[
        "false 'real' (no difference), any look or comparison"]
    assert share["power at 2 delta (per comparison)"] > 0.9
    assert rows["pass rule: each error rate's upper 95% end <= 6%"] in ("holds", "fails")


@pytest.mark.parametrize("argv", [["--simulate", "--n", "0"], ["--simulate", "--n", "-5"],
                                  ["--replay", "x", "--delta", "0"], ["--replay", "x", "--min-blocks", "1"],
                                  ["--replay", "x", "--min-blocks", "4", "--max-blocks", "3"]])
def test_bad_arguments_are_a_usage_error_before_any_work(argv, capsys):
    from analysis.sequential import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and "--n >= 1, --delta > 0" in capsys.readouterr().err


def test_each_comparison_spends_alpha_over_m_over_the_looks():
    """The levels of a family of m spend alpha / m per comparison over the looks (2..10 of 10 here):
    Brownian B-values under the null cross them 2.5% of the time at m = 2 (alpha's own levels halved
    would cross ~2.6%)."""
    rng = np.random.default_rng(0)
    t = np.arange(1, 11) / 10
    z = (rng.normal(size=(200_000, 10)) * np.sqrt(np.diff(t, prepend=0))).cumsum(axis=1) / np.sqrt(t)
    p = 2 * stats.norm.sf(np.abs(z[:, 1:]))
    crossed = (p < nominal_levels(t[1:], 0.05 / 2)).any(axis=1).mean()
    assert crossed == pytest.approx(0.025, abs=3 * np.sqrt(0.025 * 0.975 / 200_000))


def test_the_look_rule_is_scipys_tests_on_the_units():
    from analysis.sequential import unit_interval, unit_tests

    rng = np.random.default_rng(3)
    per_unit = rng.normal(0.02, 0.05, (4, 300)) + rng.normal(0, 0.004, (4, 1))  # 4 folds x 300 images
    p_real, p_tost = unit_tests(per_unit[None], delta=0.05)
    d, means = per_unit.mean(axis=0), per_unit.mean(axis=1)
    expected = max(stats.wilcoxon(d, method="approx").pvalue, stats.ttest_1samp(d, 0).pvalue,
                   stats.ttest_1samp(means, 0).pvalue)
    assert p_real[0] == pytest.approx(expected, rel=1e-9)
    tost = max(stats.ttest_1samp(x, -0.05, alternative="greater").pvalue for x in (d, means))
    tost = max(tost, *(stats.ttest_1samp(x, 0.05, alternative="less").pvalue for x in (d, means)))
    assert p_tost[0] == pytest.approx(tost, rel=1e-9)
    # the interval at a level excludes 0 exactly when both t's reject there; it is the wider of the two
    p_t = max(stats.ttest_1samp(d, 0).pvalue, stats.ttest_1samp(means, 0).pvalue)
    for level in (p_t * 0.9, p_t * 1.1):
        low, high = unit_interval(per_unit, level)
        assert (low > 0 or high < 0) == (p_t < level)
    ci = stats.ttest_1samp(means, 0).confidence_interval(0.95)
    assert unit_interval(per_unit, 0.05) == pytest.approx((ci.low, ci.high))  # 4 units: the wider one


def test_an_interval_no_wider_than_the_metrics_range_is_printed_and_a_wider_one_says_unbounded():
    """Two folds at an early look: a t on 1 df at the boundary's level (4.7e-08) gives +-30,000, which
    bounds nothing a [0, 1] metric's difference could be; the same runs at 0.05 give a real interval."""
    from analysis.sequential import Decision, unit_interval

    rng = np.random.default_rng(1)
    per_unit = rng.normal(-0.014, 0.05, (2, 500)) + np.array([[0.002], [-0.002]])
    early = Decision("dice", ("unet", "resnet34_unet"), "undecided", 2, 4.7e-8, 0.1,
                     interval=unit_interval(per_unit, 4.7e-8))
    assert early.interval[1] - early.interval[0] > 2 and early.interval_text() == "unbounded at this look"
    low, high = unit_interval(per_unit, 0.05)
    late = Decision("dice", ("unet", "resnet34_unet"), "undecided", 2, 0.05, 0.1, interval=(low, high))
    assert -1 < low < high < 1 and late.interval_text() == f"[{low:+.4f}, {high:+.4f}]"
    one_sided = Decision("dice", ("unet", "resnet34_unet"), "undecided", 2, 1e-4, 0.1, interval=(-1.7, 0.3))
    assert one_sided.interval_text() == "[-1.0000, +0.3000]"  # cut where a difference cannot go
