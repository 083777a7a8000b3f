"""How many runs a comparison needs: a plan from a pilot campaign.

    python -m analysis.plan --campaign unet_vs_resnet34_folds [--delta 0.01] [--power 0.8]
    make plan CAMPAIGN=<name> [DELTA=0.01] [POWER=0.8]

Reads a campaign's finished runs (several names pool, as in the report), estimates the components of
the paired per-image difference B - A (`estimate`), and predicts by simulation the power of the
harness's rule for "real" (`power`): the Wilcoxon test, the interval over images and the interval over
runs must all reject, after the family's correction. Then it prints, per headline metric, the minimal
detectable effect (MDE) for the current design, for more seeds per fold, more folds and 2x / 4x test
images, the cheapest design that detects `delta` (or that no number of runs can), and the same for
showing equivalence within +-delta when there is no difference (TOST at level 1 - 2 alpha).

The simulation is the rule with two documented shortcuts, checked against the rule itself (stats.
compare_arms on simulated campaigns with known components) in tests/test_analysis_plan.py: the image
interval is the t over images (the percentile bootstrap over 200+ images agrees with it), and the
family's Holm correction is taken as Bonferroni (alpha / family size), which Holm never does worse than.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy import stats

from analysis.results import ALPHA, METRICS

SIMS = 1000  # simulated campaigns per power figure: +-1.6 points at 80% power
MAX_SEEDS = 10  # the most seeds per fold a plan searches
DELTA = 0.01  # the effect to plan for when neither the user nor the campaign names one
MAX_FOLDS = 10  # the most folds the data allows by default: a tenth of trainval per validation fold


@dataclass(frozen=True)
class Components:
    """The paired difference B - A of one metric, as standard deviations in metric units.

    interaction_sd: the arm x image interaction (per-image differences around their mean: fixed by the
    test set, it never shrinks with runs); noise_sd: run x image noise of one run's score (shrinks with
    runs); seed_sd: one run's mean score around its fold's (seed-to-seed); fold_sd: the B - A of one
    fold around the mean over folds (split-to-split), 0 without folds. effect: the B - A observed."""

    metric: str
    interaction_sd: float
    noise_sd: float
    seed_sd: float
    fold_sd: float
    effect: float


@dataclass(frozen=True)
class Design:
    """folds x seeds per fold, per arm, on `images` test images; folds=0: no folds (runs are seeds)."""

    folds: int
    seeds: int
    images: int

    @property
    def runs(self) -> int:
        """Runs both arms train together."""
        return 2 * max(self.folds, 1) * self.seeds

    def label(self) -> str:
        seeds = f"{self.seeds} seed{'s' if self.seeds != 1 else ''}"
        grid = f"{self.folds} folds x {seeds}" if self.folds else seeds
        return f"{grid}, {self.images} images ({self.runs} runs)"


def _residual_var(x: np.ndarray) -> tuple[float, int]:
    """Run x image residual variance of a (runs, images) matrix (two-way, no replication), its df."""
    r = x - x.mean(axis=1, keepdims=True) - x.mean(axis=0, keepdims=True) + x.mean()
    df = (x.shape[0] - 1) * (x.shape[1] - 1)
    return (float((r * r).sum() / df) if df else 0.0), df


def _pooled(pairs: list[tuple[float, int]]) -> float:
    """A pooled variance from (variance, df) pairs; 0 when no df."""
    df = sum(d for _, d in pairs)
    return sum(v * d for v, d in pairs) / df if df else 0.0


def estimate(a: np.ndarray, b: np.ndarray, groups: tuple | None, metric: str) -> Components:
    """Components from the runs of two arms on the same images: a, b (runs, images); groups: each
    row's fold for a then b, or None. Method of moments, each floored at 0."""
    noise = _pooled([_residual_var(x) for x in (a, b) if len(x) > 1])
    n = a.shape[1]
    d = b.mean(axis=0) - a.mean(axis=0)
    interaction = max(0.0, float(d.var(ddof=1)) - noise * (1 / len(a) + 1 / len(b)))
    means = [x.mean(axis=1) for x in (a, b)]
    if groups is None:  # seeds only: run means spread around their arm's mean
        seed = _pooled([(float(m.var(ddof=1)), m.size - 1) for m in means if m.size > 1])
        return Components(metric, np.sqrt(interaction), np.sqrt(noise), np.sqrt(max(0.0, seed - noise / n)), 0.0,
                          float(d.mean()))
    folds = sorted(set(np.asarray(groups[0]).tolist()) & set(np.asarray(groups[1]).tolist()))
    within = [(float(m[g == f].var(ddof=1)), int((g == f).sum()) - 1) for m, g in zip(means, map(np.asarray, groups))
              for f in folds if (g == f).sum() > 1]
    seed = max(0.0, _pooled(within) - noise / n)
    per_fold = np.array([means[1][np.asarray(groups[1]) == f].mean() - means[0][np.asarray(groups[0]) == f].mean()
                         for f in folds])
    runs = np.mean([(np.asarray(g) == f).sum() for g in groups for f in folds])
    fold = max(0.0, float(per_fold.var(ddof=1)) - 2 * (seed + noise / n) / runs) if len(folds) > 1 else 0.0
    return Components(metric, np.sqrt(interaction), np.sqrt(noise), np.sqrt(seed), np.sqrt(fold), float(d.mean()))


def _simulate(c: Components, design: Design, delta: float, rng: np.random.Generator, sims: int):
    """(per-image differences (sims, images), the runs interval's values (sims, k)): k fold means of
    B - A, or with no folds the run means of A then B (k = 2 x seeds)."""
    n, s = design.images, design.seeds
    g = rng.normal(0.0, c.interaction_sd, (sims, n))
    if design.folds:
        f = design.folds
        eta = rng.normal(0.0, c.noise_sd * np.sqrt(2 / s), (sims, f, n))  # a fold's seeds: mean of B - A noise
        shift = rng.normal(0.0, c.fold_sd, (sims, f, 1)) + rng.normal(0.0, c.seed_sd * np.sqrt(2 / s), (sims, f, 1))
        per_fold = delta + g[:, None, :] + shift + eta  # (sims, folds, images)
        return per_fold.mean(axis=1), per_fold.mean(axis=2)
    noise = rng.normal(0.0, c.noise_sd / np.sqrt(n), (sims, 2, s))  # each run's image noise, averaged
    runs = rng.normal(0.0, c.seed_sd, (sims, 2, s)) + noise  # each run's mean around its arm's
    runs[:, 1] += delta + g.mean(axis=1, keepdims=True)
    # per image: the runs' noise, whose mean over images is the one in the run means (the tests share it)
    eps = rng.normal(0.0, c.noise_sd * np.sqrt(2 / s), (sims, n))
    eps += (noise[:, 1].mean(axis=1) - noise[:, 0].mean(axis=1))[:, None] - eps.mean(axis=1, keepdims=True)
    d = g - g.mean(axis=1, keepdims=True) + eps + (runs[:, 1].mean(axis=1) - runs[:, 0].mean(axis=1))[:, None] \
        - (noise[:, 1].mean(axis=1) - noise[:, 0].mean(axis=1))[:, None]
    return d, runs


def t_parts(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(mean, standard error, df) of the one-sample t over axis 1, per simulated campaign (axis 0)."""
    return values.mean(axis=1), values.std(axis=1, ddof=1) / np.sqrt(values.shape[1]), values.shape[1] - 1


def tost(mean, se, df, margin: float):
    """TOST's p, vectorized: the larger one-sided t p-value against -margin and +margin."""
    return np.maximum(stats.t.sf((mean + margin) / se, df), stats.t.sf((margin - mean) / se, df))


def _runs_test(values: np.ndarray, design: Design, level: float):
    """(low, high, p) of the runs interval per simulated campaign, as stats does below FEW_RUNS: a
    t over fold means (folds), or a Welch t over the run means of the two arms."""
    if design.folds:
        mean, se, df = t_parts(values)
    else:
        a, b = values[:, 0], values[:, 1]
        va, vb = a.var(axis=1, ddof=1) / a.shape[1], b.var(axis=1, ddof=1) / b.shape[1]
        mean, se = b.mean(axis=1) - a.mean(axis=1), np.sqrt(va + vb)
        df = (va + vb) ** 2 / (va ** 2 / (a.shape[1] - 1) + vb ** 2 / (b.shape[1] - 1))
    half = stats.t.ppf(0.5 + level / 2, df) * se
    return mean - half, mean + half, 2 * stats.t.sf(np.abs(mean) / se, df)


def power(c: Components, design: Design, delta: float, family: int = 1, seed: int = 0, sims: int = SIMS) -> float:
    """The share of simulated campaigns of `design` with true difference `delta` that the rule calls
    real: Wilcoxon, the image interval and the runs interval all at alpha / family."""
    alpha = ALPHA / family
    d, values = _simulate(c, design, delta, np.random.default_rng(seed), sims)
    p_wilcoxon = stats.wilcoxon(d, axis=1, method="approx").pvalue
    p_images = stats.ttest_1samp(d, 0.0, axis=1).pvalue
    _, _, p_runs = _runs_test(values, design, 1 - alpha)
    return float(np.mean(np.maximum.reduce([p_wilcoxon, p_images, p_runs]) < alpha))


def _widest_ends(c: Components, design: Design, family: int, seed: int, sims: int) -> np.ndarray:
    """Per simulated campaign with no true difference, the widest end (in absolute value) of its two
    intervals at level 1 - 2 alpha / family: TOST shows it equivalent within exactly the margins above it."""
    level = 1 - 2 * ALPHA / family
    d, values = _simulate(c, design, 0.0, np.random.default_rng(seed), sims)
    low_r, high_r, _ = _runs_test(values, design, level)
    mean, se, df = t_parts(d)
    return np.maximum.reduce([np.abs(mean) + stats.t.ppf(0.5 + level / 2, df) * se, -low_r, high_r])


def equivalence_power(c: Components, design: Design, margin: float, family: int = 1, seed: int = 0,
                      sims: int = SIMS) -> float:
    """The share of simulated campaigns with no true difference that TOST shows equivalent within
    +-margin: the interval over images and the runs interval, each at level 1 - 2 alpha / family
    (no Wilcoxon: it has no equivalence form)."""
    return float(np.mean(_widest_ends(c, design, family, seed, sims) < margin))


def equivalence_margin(c: Components, design: Design, target: float = 0.8, family: int = 1, seed: int = 0,
                       sims: int = SIMS) -> float:
    """The equivalence analogue of the MDE: TOST (as `equivalence_power`, the same simulated campaigns)
    shows equivalence with probability >= `target` for any margin above this one when there is no
    difference: the order statistic of `_widest_ends` at `target`, one simulation, no search."""
    ends = np.sort(_widest_ends(c, design, family, seed, sims))
    return float(ends[max(0, int(np.ceil(target * sims)) - 1)])


def mde(c: Components, design: Design, target: float = 0.8, family: int = 1) -> float:
    """The smallest |B - A| detected with probability `target` (bisection on a log scale; the same
    simulated noise at every step, so power rises with the effect); inf beyond 1."""
    low, high = 1e-5, 1.0
    if power(c, design, high, family) < target:
        return float("inf")
    for _ in range(14):
        mid = np.sqrt(low * high)
        low, high = (mid, high) if power(c, design, mid, family) < target else (low, mid)
    return float(high)


def images_needed(c: Components, delta: float, target: float = 0.8, family: int = 1) -> int:
    """About how many test images detect `delta` with unlimited runs (the arm x image interaction
    alone): the t over images' sample size, ((z_(1 - alpha/2m) + z_power) sd / delta)^2."""
    z = stats.norm.ppf(1 - ALPHA / (2 * family)) + stats.norm.ppf(target)
    return int(np.ceil((z * c.interaction_sd / delta) ** 2))


def designs(current: Design, max_folds: int) -> list[tuple[str, Design]]:
    """The designs a plan compares: the current one, more seeds, more folds (capped), 2x and 4x images."""
    rows = [("current", current), ("2x seeds per fold" if current.folds else "2x seeds",
                                   replace(current, seeds=2 * current.seeds)),
            ("4x seeds per fold" if current.folds else "4x seeds", replace(current, seeds=4 * current.seeds))]
    if current.folds:
        rows += [(f"{f} folds", replace(current, folds=f)) for f in sorted({min(2 * current.folds, max_folds),
                                                                             max_folds}) if f > current.folds]
    return rows + [("2x test images", replace(current, images=2 * current.images)),
                   ("4x test images", replace(current, images=4 * current.images))]


def cheapest(c: Components, current: Design, delta: float, target: float, family: int, max_folds: int,
             equivalence: bool = False) -> Design | None:
    """The design with the fewest runs on the current test set that reaches `target` power at `delta`
    (detecting it, or with `equivalence` showing +-delta when there is no difference); None if none
    up to max_folds x MAX_SEEDS seeds does. Power rises with seeds, so each fold count bisects them."""
    def enough(d: Design) -> bool:
        p = equivalence_power(c, d, delta, family) if equivalence else power(c, d, delta, family)
        return p >= target

    found = []
    for f in (range(2, max_folds + 1) if current.folds else [0]):
        low, high = (0 if current.folds else 1), MAX_SEEDS  # seeds: low fails (or is no design), high is tried
        if not enough(Design(f, high, current.images)):
            continue
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (low, mid) if enough(Design(f, mid, current.images)) else (mid, high)
        found.append(Design(f, high, current.images))
    return min(found, key=lambda d: (d.runs, d.folds)) if found else None


@dataclass(frozen=True)
class MetricPlan:
    """A plan for one metric of one comparison: its components, the current design, the MDE and the
    smallest equivalence margin of each design in `rows` (name, design, mde, margin), the cheapest
    design that detects `delta` (None: none does up to the caps), the MDE no number of runs goes below
    on this test set and the images that would detect `delta`, and the same for equivalence within
    +-delta."""

    components: Components
    arms: tuple
    current: Design
    family: int
    delta: float
    target: float
    rows: tuple
    needed: Design | None
    runs_limit: float
    images_needed: int
    equivalence_now: float
    equivalence_needed: Design | None
    max_folds: int = MAX_FOLDS

    def caps(self) -> str:
        """The largest designs `needed` and `equivalence_needed` were searched over."""
        folds = f"{self.max_folds} folds x " if self.current.folds else ""
        return f"{folds}{MAX_SEEDS} seeds on {self.current.images:,} test images"

    def equivalence_sentence(self) -> str:
        """How likely TOST shows equivalence within +-delta when there is no difference, and what it needs."""
        needs = (f"needs {self.equivalence_needed.label()}" if self.equivalence_needed
                 else f"is out of reach of every design up to {self.caps()}")
        return (f"Equivalence within +-{self.delta:g} (TOST at level 1 - 2 alpha over images and over runs; no "
                f"Wilcoxon form) when there is no difference: {self.equivalence_now:.0%} power now; "
                f"{self.target:.0%} {needs}.")

    def caveat(self) -> str:
        """What the pilot is too small to estimate, in one sentence ("" when nothing): with one seed per
        fold the seed spread cannot be separated from the fold spread; with few folds (or runs per arm)
        the spread of run means rests on few degrees of freedom."""
        d, notes = self.current, []
        if d.folds and d.seeds == 1:
            notes.append("with one seed per fold the seed-to-seed spread cannot be told from the fold-to-fold one "
                         "(both are counted as fold spread, so more seeds per fold help more than the table says)")
        if 0 < d.folds < 5 or (not d.folds and d.seeds < 3):
            units = f"{d.folds} folds" if d.folds else f"{d.seeds} runs per arm"
            notes.append(f"the spread of run means rests on {units}, so every figure here is rough"
                         + (" (it came out 0 here: the MDEs of more folds or seeds are a floor, likely optimistic)"
                            if self.components.seed_sd == self.components.fold_sd == 0 else ""))
        return f"A small pilot: {'; '.join(notes)}. Plan again after more runs." if notes else ""

    def sentence(self) -> str:
        """What limits this comparison, in one sentence."""
        m, pct = METRICS.get(self.components.metric, self.components.metric), f"{self.target:.0%}"
        if self.delta <= self.runs_limit:
            return (f"{m}: the test set limits this comparison: with {self.current.images} test images no number "
                    f"of runs detects {self.delta:g} (even unlimited runs detect {self.runs_limit:.4f} at {pct} "
                    f"power); about {self.images_needed:,} images would.")
        if self.needed is None:
            return f"{m}: no design up to {self.caps()} detects {self.delta:g} with {pct} power."
        return (f"{m}: {self.needed.label()} detect {self.delta:g} with {pct} power; the current design's "
                f"MDE is {self.rows[0][2]:.4f}.")


def section(plans: list[MetricPlan], png) -> str:
    """The report's section: each plan's components, MDE table and sentences, and the power curves
    (png: a matplotlib figure -> what the page embeds)."""
    import pandas as pd

    from analysis import render

    shown = [{"title": f"{METRICS.get(p.components.metric, p.components.metric)}: {p.arms[1]} vs {p.arms[0]}",
              "components": p.components, "sentence": p.sentence(), "equivalence": p.equivalence_sentence(),
              "caveat": p.caveat(),
              "table": render.html_table(pd.DataFrame([{"design": name, "folds": d.folds, "seeds per fold": d.seeds,
                                                        "test images": d.images, "runs": d.runs,
                                                        "minimal detectable effect": round(m, 4),
                                                       "smallest equivalence margin": round(e, 4)}
                                                       for name, d, m, e in p.rows]), index=False)} for p in plans]
    return render.fragment("sections/plan.html.j2", plans=shown, family=plans[0].family, delta=f"{plans[0].delta:g}",
                           power_pct=f"{plans[0].target:.0%}", figure=png(power_figure(plans)))


def plan_comparison(a, b, groups, metric: str, settings: dict) -> MetricPlan:
    """A MetricPlan from the runs of two arms (a, b: (runs, images); groups: their folds, or None).
    settings: delta, power, family, max_folds."""
    c = estimate(a, b, groups, metric)
    delta, target, family, max_folds = (settings[k] for k in ("delta", "power", "family", "max_folds"))
    folds = len(set(np.asarray(groups[0]).tolist()) & set(np.asarray(groups[1]).tolist())) if groups else 0
    seeds = max(1, round(min(len(a), len(b)) / max(folds, 1)))
    current = Design(folds, seeds, a.shape[1])
    rows = tuple((name, d, mde(c, d, target, family), equivalence_margin(c, d, target, family))
                 for name, d in designs(current, max_folds))
    z = stats.norm.ppf(1 - ALPHA / (2 * family)) + stats.norm.ppf(target)
    return MetricPlan(c, (), current, family, delta, target, rows,
                      cheapest(c, current, delta, target, family, max_folds),
                      z * c.interaction_sd / np.sqrt(current.images), images_needed(c, delta, target, family),
                      equivalence_power(c, current, delta, family),
                      cheapest(c, current, delta, target, family, max_folds, equivalence=True), max_folds)


def plan_campaign(campaign, delta: float | None, target: float = 0.8, max_folds: int = MAX_FOLDS,
                  uri: str | None = None) -> list[MetricPlan]:
    """plan_paired over the campaign's finished runs (several names pool, as in the report). delta None:
    the margin the campaign declared (`delta:` or `sequential.delta`), else DELTA."""
    from analysis.paired import compare_axis, headline_metrics, load_scores, paired_frames, strata_of
    from analysis.runs import load_campaign, margin_of

    runs, axes = load_campaign(campaign, uri=uri)
    delta = delta or margin_of(runs)[0]
    axis = compare_axis(axes)
    strata = strata_of(axes, axis)
    scores = load_scores(runs, uri)
    paired = {m: paired_frames(runs, axis, uri, strata, scores, m) for m in headline_metrics(scores)}
    return plan_paired(paired, delta, target, max_folds)


def plan_paired(paired: dict, delta: float | None, target: float = 0.8,
                max_folds: int = MAX_FOLDS) -> list[MetricPlan]:
    """A MetricPlan per headline metric and compared level (against the first). paired: metric ->
    analysis.paired.Paired. With other axes varied, the first setting that has every level is the
    pilot. family: the comparisons the report prints together. delta None: DELTA. LookupError while no
    setting has two or more runs of two levels."""
    delta, plans = delta or DELTA, []
    for metric, p in paired.items():
        settings = p.complete_settings()
        if not settings or len(p.levels) < 2:
            raise LookupError("no setting has finished runs of two levels yet")
        n = len(settings)
        family = len(paired) * (len(p.levels) - 1) * (1 if n == 1 else 1 + n + n - 1)
        first, s = p.levels[0], settings[0]
        for b in p.levels[1:]:
            a_cells, b_cells = p.cells[(s, first)], p.cells[(s, b)]
            if min(len(a_cells), len(b_cells)) < 2:
                raise LookupError(f"a plan needs two or more runs per arm ({first}: {len(a_cells)}, "
                                  f"{b}: {len(b_cells)})")
            groups = (p.groups[(s, first)], p.groups[(s, b)]) if p.groups else None
            settings_ = {"delta": delta, "power": target, "family": family, "max_folds": max_folds}
            plans.append(replace(plan_comparison(a_cells, b_cells, groups, metric, settings_), arms=(first, b)))
    return plans


def table(plan: MetricPlan) -> list[str]:
    """The plan of one metric as Markdown lines: components, then each design's MDE."""
    c = plan.components
    name = METRICS.get(c.metric, c.metric)
    lines = [f"### {name}: {plan.arms[1]} - {plan.arms[0]} (observed {c.effect:+.4f}; family of {plan.family}, "
             f"power {plan.target:.0%})", "",
             f"Components (sd): arm x image {c.interaction_sd:.4f}, run x image {c.noise_sd:.4f}, "
             f"seed {c.seed_sd:.4f}, fold {c.fold_sd:.4f}.", "",
             "| design | runs | minimal detectable effect | smallest equivalence margin |", "|---|---|---|---|"]
    lines += [f"| {name}: {d.label()} | {d.runs} | {m:.4f} | {e:.4f} |" for name, d, m, e in plan.rows]
    return lines + ["", plan.sentence(), plan.equivalence_sentence(), *filter(None, [plan.caveat()]), ""]


def _ticks(low: float, high: float) -> list[float]:
    """Round values (1, 2, 5 x 10^k) between low and high > 0, at most about 6 of them."""
    values = [m * 10.0 ** k for k in range(int(np.floor(np.log10(low))), int(np.ceil(np.log10(high))) + 1)
              for m in (1, 2, 5)]
    inside = [v for v in values if low <= v <= high]
    return inside[:: max(1, -(-len(inside) // 6))]


def power_figure(plans: list[MetricPlan]):
    """Power against the true difference for each design of each plan (one panel per plan)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    fig, axes = plt.subplots(1, len(plans), figsize=(6 * len(plans), 4), squeeze=False)
    for ax, plan in zip(axes[0], plans):
        finite = [m for _, _, m, _ in plan.rows if np.isfinite(m)] or [plan.delta]
        grid = np.geomspace(min(finite) / 4, max(max(finite), plan.delta) * 2, 14)
        for name, d, *_ in plan.rows:
            ax.plot(grid, [power(plan.components, d, x, plan.family, sims=400) for x in grid], label=name)
        ax.axvline(plan.delta, color="grey", ls="--")
        ax.axhline(plan.target, color="grey", ls=":")
        ax.set(xscale="log", xlabel=f"true {plan.components.metric} difference", ylabel="power of 'real'",
               title=f"{plan.components.metric}: {plan.arms[1]} vs {plan.arms[0]}")
        # Plain labels at a few round values: over less than a decade a log axis labels its minor ticks
        # as 3x10^-2, 4x10^-2, ..., which overlap.
        ax.set_xticks(_ticks(grid[0], grid[-1]))
        ax.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="How many runs a comparison needs: the minimal detectable effect of "
                                            "the current and larger designs, from a campaign's finished runs.")
    p.add_argument("--campaign", nargs="+", required=True, help="campaign name(s); several pool, as in the report")
    p.add_argument("--delta", type=float, help="the effect to detect, and the equivalence margin (metric units; "
                   f"default: the campaign's declared margin, `delta:` or `sequential.delta`, else {DELTA})")
    p.add_argument("--power", type=float, default=0.8, help="target power (default %(default)s)")
    p.add_argument("--max-folds", type=int, default=MAX_FOLDS, help="the most folds the data allows "
                   "(default %(default)s: a tenth of trainval per validation fold)")
    p.add_argument("--out", type=Path, help="path without suffix for <out>.md and <out>.png "
                   "(default reports/plan-<name>)")
    args = p.parse_args(argv)
    if not 0 < args.power < 1 or (args.delta is not None and args.delta <= 0) or args.max_folds < 2:
        p.error("--power must be in (0, 1), --delta > 0, --max-folds >= 2")
    try:
        plans = plan_campaign(args.campaign, args.delta, args.power, args.max_folds)
    except LookupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = args.out or Path("reports") / f"plan-{'+'.join(args.campaign)}"
    text = "\n".join(line for plan in plans for line in table(plan))
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text + "\n")
    power_figure(plans).savefig(out.with_suffix(".png"), dpi=90)
    print(f"wrote {out.with_suffix('.md')}, {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
