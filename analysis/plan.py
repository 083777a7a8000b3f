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

The power figures come from analysis.power (the rule simulated); the renderings from analysis.plan_report.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy import stats

from analysis.power import Components, Design, equivalence_margin, equivalence_power, images_needed, mde, power
from analysis.results import ALPHA, METRICS

MAX_SEEDS = 10  # the most seeds per fold a plan searches
DELTA = 0.01  # the effect to plan for when neither the user nor the campaign names one
MAX_FOLDS = 10  # the most folds the data allows by default: a tenth of trainval per validation fold


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


def designs(current: Design, max_folds: int, declared: tuple | None = None) -> list[tuple[str, Design]]:
    """The designs a plan compares: the current one, the campaign's declared (folds, seeds) when it has
    one and it differs (a sequential campaign's max_blocks, read as a fixed design), more seeds, more
    folds (capped), 2x and 4x images."""
    rows = [("current", current)]
    if declared and declared != (current.folds, current.seeds):
        rows.append(("the campaign's design", Design(*declared, current.images)))
    rows += [("2x seeds per fold" if current.folds else "2x seeds", replace(current, seeds=2 * current.seeds)),
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


def plan_comparison(a, b, groups, metric: str, settings: dict) -> MetricPlan:
    """A MetricPlan from the runs of two arms (a, b: (runs, images); groups: their folds, or None).
    settings: delta, power, family, max_folds, declared ((folds, seeds) the campaign declared, or None)."""
    c = estimate(a, b, groups, metric)
    delta, target, family, max_folds = (settings[k] for k in ("delta", "power", "family", "max_folds"))
    folds = len(set(np.asarray(groups[0]).tolist()) & set(np.asarray(groups[1]).tolist())) if groups else 0
    seeds = max(1, round(min(len(a), len(b)) / max(folds, 1)))
    current = Design(folds, seeds, a.shape[1])
    rows = tuple((name, d, mde(c, d, target, family), equivalence_margin(c, d, target, family))
                 for name, d in designs(current, max_folds, settings.get("declared")))
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
    return plan_paired(paired, delta, target, max_folds, declared_design(runs, uri))


def declared_design(runs, uri: str | None = None) -> tuple[int, int] | None:
    """(folds, seeds) a sequential campaign declared: its max_blocks over [seed, data.fold] blocks as
    folds x seeds, over [seed] as seeds (folds 0). Folds: the design tag's own, else (records made
    before the tag had it) the runs' data.folds param, which assumes the matrix lists every fold. None
    for a fixed campaign (it records no grid beyond its runs), pooled campaigns, runs whose designs
    differ, a design without max_blocks, or a max_blocks that is no whole number of seeds."""
    import json

    from mlflow.tracking import MlflowClient

    from analysis.runs import tracking_uri

    tags = runs["campaign.sequential"].dropna() if "campaign.sequential" in runs else []
    if not len(tags) or runs["campaign"].nunique() > 1:
        return None
    designs = [json.loads(t) for t in tags]
    if len({(tuple(d["block"]), d.get("max_blocks")) for d in designs}) > 1 or not designs[0].get("max_blocks"):
        return None
    blocks = int(designs[0]["max_blocks"])
    if "data.fold" not in designs[0]["block"]:
        return 0, blocks
    folds = next((int(d["folds"]) for d in designs if d.get("folds")), None)
    if folds is None:
        params = MlflowClient(tracking_uri(uri)).get_run(runs.loc[tags.index[0], "run_id"]).data.params
        folds = int(params.get("data.folds") or 0)
    return (folds, blocks // folds) if folds and blocks >= folds and blocks % folds == 0 else None


def plan_paired(paired: dict, delta: float | None, target: float = 0.8, max_folds: int = MAX_FOLDS,
                declared: tuple | None = None) -> list[MetricPlan]:
    """A MetricPlan per headline metric and compared level (against the first). paired: metric ->
    analysis.paired.Paired. With other axes varied, the first setting that has every level is the
    pilot. family: the comparisons the report prints together. delta None: DELTA. declared: the
    campaign's (folds, seeds), a row of its own (`designs`). LookupError while no
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
            settings_ = {"delta": delta, "power": target, "family": family, "max_folds": max_folds,
                         "declared": declared}
            plans.append(replace(plan_comparison(a_cells, b_cells, groups, metric, settings_), arms=(first, b)))
    return plans


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
    from analysis.plan_report import power_figure, table

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
