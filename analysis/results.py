"""The typed results of `analysis.stats`: `Comparison` for two arms (or a gap between settings),
`ArmSummary` for one arm's runs, `Interval` for an interval with the method that made it. Every
renderer (the HTML report, the terminal conclusion, `make overview`, the notebooks) reads these.

Multiplicity: a verdict "real" needs three things at once (Wilcoxon p < ALPHA, the CI over images
and the CI over runs and images excluding 0; with one run in an arm there is no runs interval, and
the verdict is "one run" at best): an intersection-union test, whose p-value is the largest of the
three (`Comparison.decisive_p`; the CIs' p-values come from the same draws as the intervals).
`adjust_family` applies Holm's step-down correction to those p-values over every comparison printed
together (Bonferroni's where a margin is declared: "equivalent" then shares the budget) and returns
adjusted copies, so "real" controls the family-wise error at ALPHA.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

ALPHA = 0.05  # the one significance level: tests, intervals (1 - ALPHA) and the family-wise error
LEVEL = 1 - ALPHA


Method = Literal["bootstrap over images", "t over run means", "bootstrap over runs and images",
                 "t over fold means", "bootstrap over folds, seeds and images", "bootstrap over runs", "one run"]
Evidence = Literal["real", "uncorrected only", "images only", "one run", "none", "equivalent"]

VERDICTS: dict[str, str] = {"real": "real", "uncorrected only": "not shown after the family's correction",
                            "images only": "not shown: runs disagree",
                            "one run": "over images only: one run in an arm", "none": "no difference shown",
                            "equivalent": "equivalent within the margin"}
"""The words reports use for each `Evidence` kind."""


def excludes_zero(low: float, high: float) -> bool:
    return low > 0 or high < 0


@dataclass(frozen=True)
class Interval:
    """A two-sided interval at `level` around an estimate, and how it was made."""

    low: float
    high: float
    method: Method
    level: float = LEVEL

    def excludes_zero(self) -> bool:
        return excludes_zero(self.low, self.high)

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


@dataclass(frozen=True)
class ArmSummary:
    """One arm's score over its runs: `n_runs` values, their mean and, with two or more runs, a 95%
    interval over them (a t below FEW_RUNS runs, else a percentile bootstrap); None with one run."""

    n_runs: int
    mean: float
    interval: Interval | None

    def text(self) -> str:
        """'mean [low, high]' (4 decimals); one run is its own interval, '[x, x]', as tables always printed it."""
        low, high = (self.interval.low, self.interval.high) if self.interval else (self.mean, self.mean)
        return f"{self.mean:.4f} [{low:.4f}, {high:.4f}]"


@dataclass(frozen=True)
class Comparison:
    """B - A over paired test images (or, for a gap, (B2 - A2) - (B1 - A1)).

    n_images: images paired; mean_diff: the mean per-image difference of the run-averaged scores;
    images_interval: its percentile bootstrap CI over images, with p_images its two-sided p;
    p_wilcoxon: Wilcoxon signed-rank p (zero differences dropped); rank_biserial in [-1, 1] (positive:
    B tends to be higher), b_better / a_better images. runs_interval (and p_runs): the interval that
    also counts training runs, None when a cell has a single run; n_folds: folds compared when runs
    come in folds. runs: run counts per arm (A, B), or per cell for a gap (A1, B1, A2, B2).
    family_size and p_holm: set by `stats.adjust_family`, None before. metric and arms: labels callers
    may attach with `labelled`. margin: the equivalence margin (+-, metric units) when the campaign
    declared one (`delta:`; margin_post_hoc when it came from the command line instead), with
    p_equivalence the TOST p: the larger of the two intervals' (images; runs), so both must lie inside.

    One error budget for "real" and "equivalent": with a margin, each comparison carries two hypotheses
    (no difference; a difference of at least the margin) of which at most one is true, so over a family
    of m comparisons at most m of the 2m are true, and testing each at ALPHA / m (Bonferroni) keeps the
    chance of any wrong "real" or "equivalent" at ALPHA or less. Without a margin "real" uses Holm.

    improvement: the probability of improvement per image (the share of test images on which B's
    run-averaged score beats A's, ties half), with its bootstrap interval; None unless asked for."""

    n_images: int
    mean_diff: float
    images_interval: Interval
    p_wilcoxon: float
    p_images: float
    rank_biserial: float
    b_better: int
    a_better: int
    runs: tuple[int, ...] = ()
    runs_interval: Interval | None = None
    p_runs: float | None = None
    n_folds: int | None = None
    family_size: int | None = None
    p_holm: float | None = None
    metric: str = ""
    arms: tuple = ()
    margin: float | None = None
    p_equivalence: float | None = None
    margin_post_hoc: bool = False
    improvement: float | None = None
    improvement_interval: Interval | None = None

    @property
    def decisive_p(self) -> float:
        """The p-value of the verdict "real" (an intersection-union test): the largest of the Wilcoxon
        p, the image bootstrap's and, where runs are counted, the runs interval's."""
        return max(p for p in (self.p_wilcoxon, self.p_images, self.p_runs) if p is not None)

    @property
    def p_adjusted(self) -> float | None:
        """The family-adjusted p of "real": Holm's, or with a margin Bonferroni's (see the class); None
        before stats.adjust_family."""
        if self.family_size is None:
            return None
        return min(1.0, self.decisive_p * self.family_size) if self.margin is not None else self.p_holm

    @property
    def equivalent(self) -> bool:
        """Shown equivalent within +-margin: TOST's p below ALPHA / family size (1 before adjusting)."""
        if self.margin is None or self.p_equivalence is None:
            return False
        return self.p_equivalence * (self.family_size or 1) < ALPHA

    @property
    def evidence(self) -> Evidence:
        """`difference_evidence`, except that a comparison not shown to differ but shown equivalent
        within its margin is 'equivalent'."""
        kind = self.difference_evidence
        return "equivalent" if kind != "real" and self.equivalent else kind

    @property
    def difference_evidence(self) -> Evidence:
        """'real': Wilcoxon p < ALPHA, the CI over images excludes 0 and, where there are runs to count,
        so does the CI over runs and images; and, once `stats.adjust_family` has set p_holm, that is below
        ALPHA too (else 'uncorrected only'). 'images only': all but the runs interval. 'one run':
        everything but the runs interval, which one run in an arm cannot give: the trained models
        differ over these images, but what a retraining would change is not counted. 'none': not even
        over images."""
        if not (self.p_wilcoxon < ALPHA and self.images_interval.excludes_zero()):
            return "none"
        if self.runs_interval is not None and not self.runs_interval.excludes_zero():
            return "images only"
        if self.p_adjusted is not None and self.p_adjusted >= ALPHA:
            return "uncorrected only"
        return "real" if self.runs_interval is not None else "one run"

    @property
    def verdict(self) -> str:
        """The words for `evidence` (VERDICTS), with the margin where it is the verdict."""
        if self.evidence == "equivalent":
            return f"equivalent within ±{self.margin:g}" + (" (post hoc margin)" if self.margin_post_hoc else "")
        return VERDICTS[self.evidence]

    def confidence_interval(self) -> Interval:
        """The widest interval this comparison has: over runs and images where runs are counted, else
        over images."""
        return self.runs_interval or self.images_interval

    def labelled(self, metric: str, a, b) -> Comparison:
        """A copy that names its metric and arms."""
        return dataclasses.replace(self, metric=metric, arms=(a, b))

    def row(self, method: bool = False) -> dict:
        """The flat columns of the report's tables (names as they have always been printed): the runs
        interval's columns (and, with `method`, how it was made) only where there is one, the family's
        once adjusted."""
        out = {"n": self.n_images, "mean_diff": self.mean_diff, "ci_low": self.images_interval.low,
               "ci_high": self.images_interval.high, "p_wilcoxon": self.p_wilcoxon, "p_boot": self.p_images,
               "rank_biserial": self.rank_biserial, "b_better": self.b_better, "a_better": self.a_better}
        if self.n_folds is not None:
            out["n_folds"] = self.n_folds
        if self.runs_interval is not None:
            out.update(seed_ci_low=self.runs_interval.low, seed_ci_high=self.runs_interval.high,
                       p_boot_runs=self.p_runs)
            if method:
                out["runs_interval"] = self.runs_interval.method
        if self.p_holm is not None:
            out.update(p_holm=self.p_holm, family_size=self.family_size)
        if self.margin is not None:
            out.update(margin=self.margin, p_equivalence=self.p_equivalence)
        if self.improvement is not None:
            out.update(p_improvement=self.improvement, p_improvement_low=self.improvement_interval.low,
                       p_improvement_high=self.improvement_interval.high)
        return out


METRICS = {"dice": "Dice", "nsd": "NSD"}  # the headline per-image metrics, where every run has them


@dataclass(frozen=True)
class SeedCounts:
    """Runs per cell (a cell: one arm in one setting and fold) when arms or cells differ, as a
    partial campaign's do: per arm, its fewest and most. Equal counts are a plain int instead."""

    per_arm: tuple[tuple[str, int, int], ...]

    def text(self) -> str:
        """'unet 1-2, resnet34_unet 1'."""
        return ", ".join(f"{arm} {lo}" if lo == hi else f"{arm} {lo}-{hi}" for arm, lo, hi in self.per_arm)


class Sentence:
    """A result that reads as one sentence: the macro `macro` of templates/sentences.j2, rendered as
    HTML for the report or as plain text for the terminal and notebooks (analysis.render)."""

    macro: str
    comparison: Comparison

    @property
    def metric_name(self) -> str:
        return METRICS.get(self.comparison.metric, self.comparison.metric)

    def html(self) -> str:
        from analysis import render  # render imports this module: a lazy import keeps the two apart

        return render.sentence(self.macro, self)

    def text(self) -> str:
        from analysis import render

        return render.sentence(self.macro, self, markup=False)


@dataclass(frozen=True)
class Conclusion(Sentence):
    """A headline sentence: `comparison` (labelled with its metric and arms) of the compared `axis`;
    seeds: runs per cell, an int when every cell has as many, else SeedCounts; scope: what the
    comparison averages over ('mean over augment=none; augment=flip'), '' for one setting;
    sequential: a sequential campaign's (its intervals are then labelled not adjusted for the looks)."""

    comparison: Comparison
    axis: str
    seeds: int | SeedCounts
    scope: str = ""
    sequential: bool = False
    macro = "conclusion"


@dataclass(frozen=True)
class SettingLine(Sentence):
    """A sentence 'under which settings': `comparison` within `setting` (setting_from empty), or the
    change of the gap from `setting_from` to `setting` (an interaction)."""

    comparison: Comparison
    setting: str
    setting_from: str = ""

    @property
    def macro(self) -> str:
        return "gap" if self.setting_from else "within"
