"""Campaign comparison report: one self-contained HTML file (figures embedded), logged to MLflow.

    python -m analysis.report --campaign unet_vs_resnet34 [--out reports/unet_vs_resnet34.html]
    python -m analysis.report --experiment oxford_pet
    python -m analysis.report --campaign unet_vs_resnet34_full arch_by_augment_full   # pooled: augment becomes an axis

Reads MLflow only. Numbers come with their definition: test Dice per image (mean over images)
and dataset-level (micro), foreground rule as recorded in each run's params.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from analysis import plan, plan_report, plots, render, sections
from analysis.paired import (
    FOLD,
    compare_axis,
    headline_metrics,
    load_scores,
    paired_frames,
    setting_labels,
    strata_of,
)
from analysis.results import METRICS, Comparison, Conclusion, SeedCounts, SettingLine
from analysis.runs import (
    campaign_list,
    experiment_name,
    load_campaign,
    load_evaluation,
    load_history,
    log_report,
    margin_of,
)
from analysis.stats import adjust_family, compare_arms, summarize_arm


@dataclass(frozen=True)
class Report:
    """A rendered report: its HTML page and the sentences of its Conclusion (empty until a setting
    has finished runs of every arm), which the terminal prints as text; with other axes varied, the
    per-setting results of each metric, Holm-adjusted with the rest of the family."""

    title: str
    html: str
    conclusions: tuple[Conclusion | SettingLine, ...] = ()
    settings: dict = dataclasses.field(default_factory=dict)  # metric -> (within, gaps) SettingLines, adjusted

    def text(self) -> str:
        """The Conclusion as plain text, one sentence per line ("" when there is none)."""
        return "\n".join(line.text() for line in self.conclusions)


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per arm: n runs, mean and 95% CI over runs of the test metrics (stats.summarize_arm), cost figures."""
    rows = []
    for arm, group in runs.groupby("arm", sort=True):
        row = {"arm": arm, "n runs": len(group)}
        metrics = ["test/dice", "test/nsd", "test/hd95", "test/dice_micro", "test/iou"]
        if "test/miou" in group and group["test/miou"].notna().any():  # K-class runs: mIoU, no micro Dice
            metrics = ["test/dice", "test/miou", "test/pixel_acc"]
        for metric in (m for m in metrics if m in group and group[m].notna().all()):
            row[metric] = run_interval(group[metric])
        row["threshold"] = _threshold(group)
        for name, key, form in (("params", "model/num_params", "{:,.0f}"), ("run time (s)", "time/total_s", "{:.0f}"),
                                ("train img/s", "throughput/train_img_s", "{:.1f}")):
            if group[key].notna().any():  # evaluation runs have no training figures of their own
                row[name] = form.format(group[key].mean())
        rows.append(row)
    return pd.DataFrame(rows)


def run_interval(values: pd.Series) -> str:
    """'mean [low, high]' over runs (stats.summarize_arm), marked ' t' where the interval is a t."""
    arm = summarize_arm(values)
    return arm.text() + (" t" if arm.interval and arm.interval.method.startswith("t ") else "")


def _threshold(group: pd.DataFrame) -> str:
    """The arm's probability threshold: the spec's, or the ones chosen on validation (eval.threshold: auto)."""
    chosen = group["eval/threshold"].dropna() if "eval/threshold" in group else pd.Series(dtype=float)
    if len(chosen):
        return f"chosen on val: {', '.join(f'{t:.2f}' for t in chosen)}"
    return ", ".join(sorted(group["eval.threshold"].dropna().astype(str).unique())) if "eval.threshold" in group \
        else "0.5"


def conclusion(a: str, b: str, result: Comparison, seeds, axis: str, scope: str = "", metric: str = "dice") -> str:
    """The headline sentence (HTML) of `result`, B = b against A = a on `metric`. seeds: an int (the
    same count in every cell) or SeedCounts; scope: what the comparison averages over, e.g. 'mean
    over augment=none; augment=flip'."""
    return Conclusion(result.labelled(metric, a, b), axis, seeds, scope).html()


def verdict(result: Comparison) -> str:
    """The verdict sentence of `result` as plain text (see Comparison.evidence); ends with the raw and
    the Holm-adjusted p and the family size once stats.adjust_family has set them."""
    return render.sentence("verdict", result, markup=False)


def seed_counts(runs: pd.DataFrame, axis: str, cell_axes: list[str]) -> int | SeedCounts:
    """Runs per cell (`cell_axes`: the compared axis, the settings and the fold): an int when every
    cell has as many, else each level of `axis` with its fewest and most."""
    counts = runs.groupby(cell_axes, sort=False).size()
    if counts.nunique() == 1:
        return int(counts.iloc[0])
    by_level = counts.groupby(level=cell_axes.index(axis), sort=False) if len(cell_axes) > 1 else \
        counts.groupby(counts.index, sort=False)
    return SeedCounts(tuple((str(level), int(c.min()), int(c.max())) for level, c in by_level))


def _comparisons(paired: dict, axis: str, strata: list[str], seeds, margin=(None, False), sequential: bool = False):
    """(headline conclusions, per-setting lines of each metric): each metric, each level against the
    first and, with other axes, within each setting; adjusted as one family: every comparison the
    report prints together. margin: margin_of's (margin, post hoc); sequential: a sequential campaign's."""
    dice = paired["dice"]
    if not dice.complete_settings():  # none until a setting has every level
        return [], {}
    first, others = dice.levels[0], dice.levels[1:]
    heads = [compare_arms(**paired[m].compare(first, b), margin=margin[0], improvement=True).labelled(m, first, b)
             for m in paired for b in others]
    within = {m: sections.setting_results(p, margin[0]) for m, p in paired.items()} if strata else {}
    lines = [line for w, g in within.values() for line in w + g]
    settled = [dataclasses.replace(r, margin_post_hoc=margin[1] and r.margin is not None)
               for r in adjust_family(heads + [line.comparison for line in lines])]
    heads, adjusted = settled[:len(heads)], iter(settled[len(heads):])
    within = {m: tuple([dataclasses.replace(x, comparison=next(adjusted)) for x in part] for part in wg)
              for m, wg in within.items()}
    scope = ("mean over " + "; ".join(dice.complete_settings())) if strata else ""
    return [Conclusion(r, axis, seeds, scope, sequential) for r in heads], within


def _paired_section(paired: dict, conclusions: list[Conclusion], seeds, strata: list[str]) -> dict:
    n_folds = conclusions[0].comparison.n_folds  # the folds compared (those every arm has)
    per_arm = seeds if isinstance(seeds, int) else seeds.text()
    rows = [{"metric": c.metric_name, "A": c.comparison.arms[0], "B": c.comparison.arms[1],
             **sections.rounded(c.comparison, method=True)} for c in conclusions]
    scatters = [render.figure(plots.paired_scatter(paired[c.comparison.metric].wide.rename(columns=str),
                                                   *map(str, c.comparison.arms), metric=f"test {c.metric_name}"))
                for c in conclusions]
    return {"seeds": f"{per_arm} per fold, {n_folds} folds" if n_folds else per_arm, "strata": strata,
            "table": render.html_table(pd.DataFrame(rows), index=False), "scatters": scatters}


def _history(runs: pd.DataFrame, uri: str | None) -> pd.DataFrame:
    """Per-epoch val/dice and epoch time of each run (evaluation runs: their source runs'), in runs' order."""
    trained = runs["source_run_id"] if "source_run_id" in runs else runs.run_id
    history = load_history(list(trained), uri, metrics=["val/dice", "time/epoch_s"]).rename(
        columns={"run_id": "trained_id"})
    return runs[["run_id", "arm"]].assign(trained_id=list(trained)).merge(history, on="trained_id")


def _extra_sections(runs, axes: list[str], axis: str, context: dict) -> list:
    """The sections only some campaigns have data for: worst images, per-setting results, loss, ablations."""
    paired, within, uri, campaign = context["paired"], context["within"], context["uri"], context["campaign"]
    dice, strata, parts = paired["dice"], strata_of(axes, axis), []
    if context["conclusions"]:
        first = runs[setting_labels(runs, strata) == dice.complete_settings()[0]]  # one setting: same-seed runs
        parts += sections.worst_images(first, axis, dice.levels, uri, render.figure)
    for m, results in within.items():
        parts += sections.by_setting(paired[m], axis, render.figure, results, METRICS[m])[1]
    if "train.loss" in axes:
        parts += sections.loss_stability(runs, campaign, uri, render.figure)
    for other in ("train.loss", "augment"):  # the training-recipe axes, each level against its reference
        if other in axes:
            by = dice if axis == other else paired_frames(runs, other, uri, strata_of(axes, other), context["scores"])
            parts += sections.ablation(runs, other, by, render.figure)
    if context["conclusions"]:
        parts += _plan_section(paired, context["margin"], plan.declared_design(runs, uri))
    if context["design"]:
        parts += _sequential_section(runs, axes, context["uri"], context["design"])
    return parts


def _sequential_section(runs: pd.DataFrame, axes: list[str], uri: str | None, design: dict) -> list:
    """A sequential campaign's decisions, look by look (analysis.sequential.replay of the record), each
    with the look, the boundary, its p and the interval the design justifies there."""
    from analysis import sequential

    r = sequential.replay(runs, axes, design["delta"], design.get("max_blocks"), uri, design["spending"],
                          design["min_blocks"])
    design = {**design, "max_blocks": r.planned}  # the caller's dict stays as recorded
    # An undecided comparison shows its last look: its p for "real" and TOST's, against the boundary.
    rows = [{"metric": METRICS.get(d.metric, d.metric), "A": d.arms[0], "B": d.arms[1], "decision": d.verdict,
             "look (blocks)": d.look, "level (boundary)": float(f"{d.level:.4g}"), "p": float(f"{d.p:.4g}"),
             "p equivalence (TOST)": "" if d.p_equivalence is None else float(f"{d.p_equivalence:.4g}"),
             "interval at the look's level": d.interval_text()}
            for d in [*r.decisions, *r.pending]]
    table = render.html_table(pd.DataFrame(rows), index=False) if rows else "<p>No look taken yet.</p>"
    return [render.fragment("sections/sequential.html.j2", design=design, family=r.family, recorded=r.recorded,
                            stopped=r.stopped, stop=r.stop, table=render.Markup(table))]


def _plan_section(paired: dict, delta: float | None, declared: tuple | None = None) -> list:
    """How many runs the comparison needs (analysis.plan) to detect `delta` (the campaign's margin; None:
    the plan's default), with the campaign's declared design as a row; nothing while an arm has a single
    run (no seed-to-seed spread to plan from)."""
    try:
        plans = plan.plan_paired(paired, delta=delta, declared=declared)
    except LookupError:
        return []
    return [plan_report.section(plans, render.figure)]


def build_report(campaign: str | list[str] | None = None, experiment: str | None = None, uri: str | None = None,
                 loaded: tuple[pd.DataFrame, list[str]] | None = None, axis: str | None = None,
                 title: str | None = None, *, delta: float | None = None) -> Report:
    """The report. Raises LookupError when there are no finished runs, or when `axis` (the field
    whose levels are compared; default: see compare_axis) is not varied. `loaded` is
    `load_campaign`'s result, when the caller already has it. delta: an equivalence margin given on
    the command line (post hoc unless the campaign declared it); by default the campaign's own."""
    runs, axes = loaded or load_campaign(campaign, experiment, uri)
    axis = compare_axis(axes, axis)
    names = campaign_list(campaign)
    title = title or (f"Campaign{'s' * (len(names) > 1)} {' + '.join(names)}" if names else f"Experiment {experiment}")
    strata, scores = strata_of(axes, axis), load_scores(runs, uri)
    paired = {m: paired_frames(runs, axis, uri, strata, scores, m) for m in headline_metrics(scores)}
    folded = FOLD in axes and axis != FOLD
    seeds = seed_counts(runs, axis, [axis, *strata] + [FOLD] * folded)
    margin = margin_of(runs, delta)
    from analysis.sequential import recorded_design

    design = recorded_design(runs)  # a sequential campaign's, None for a fixed one
    conclusions, within = _comparisons(paired, axis, strata, seeds, margin, design is not None)
    context = {"paired": paired, "within": within, "uri": uri, "campaign": campaign, "scores": scores,
               "conclusions": conclusions, "margin": margin[0], "design": design}
    lines = [*conclusions, *(line for m, results in within.items()
                             for line in sections.setting_tables(paired[m], results)[2])]
    history = _history(runs, uri)
    page = render.page(
        "report.html.j2", title=title, n_runs=len(runs), axes=axes, axis=axis,
        generated=f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M}",
        rules=", ".join(sorted(runs["data.foreground"].dropna().unique())) or "unknown",
        **provenance(runs, axes), conclusions=lines,
        summary=render.html_table(summary_table(runs), index=False, escape=True),
        summary_figure=render.figure(plots.summary_bars(runs)), folded=folded,
        curves=render.figure(plots.learning_curves(history)),
        paired=_paired_section(paired, conclusions, seeds, strata) if conclusions else None,
        sections=_extra_sections(runs, axes, axis, context), time_figure=render.figure(plots.time_to_score(history)),
        runs_table=render.html_table(runs.drop(columns=["arm", "start_time"]), index=False, na_rep=""))
    return Report(title, page, tuple(lines), within)


def provenance(runs: pd.DataFrame, axes: list[str]) -> dict:
    """What the runs were tested on (their test dataset input: name and digest; the fingerprint tag
    for runs that predate inputs: `older` counts them), then a note for each of amp.dtype and
    data.fingerprint that load_campaign made an axis: runs in more than one precision, or on more
    than one version of the data; and the extra FINISHED runs of a cell that load_campaign left out
    (analysis.runs.one_run_per_cell)."""
    named = runs.get("dataset.test", pd.Series(dtype=object)).notna()
    tested = ", ".join(f"{name} ({digest})" for name, digest in
                       runs[named][["dataset.test", "data.fingerprint"]].drop_duplicates().itertuples(index=False))
    notes = [{"tag": tag, "counts": ", ".join(f"{n} with {v}" for v, n in runs[tag].value_counts().items())}
             for tag in ("amp.dtype", "data.fingerprint") if tag in axes]
    return {"tested": tested, "older": int((~named).sum()), "axis_notes": notes,
            "extra_runs": runs.attrs.get("extra_runs", [])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Write a campaign comparison report (HTML) and log it to MLflow.")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--campaign", nargs="+", help="campaign name (the runs' `campaign` tag); several names pool "
                     "their runs as one campaign, the params they differ in becoming axes")
    who.add_argument("--experiment", help="MLflow experiment: every finished run, arms by model.arch")
    who.add_argument("--evaluation", metavar="DATASET", help="the evaluation runs (make evaluate) on one dataset, by "
                     "its folder name or data fingerprint: the source runs' arms compared image by image there")
    p.add_argument("--out", type=Path,
                   help="HTML file, or a folder (existing, or a path without suffix) to write <name>.html into "
                        "(default reports/<name>.html)")
    p.add_argument("--axis", help="the varied field whose levels are compared, within each setting of the others "
                                  "(default: model.arch when varied, else the first); the report is then "
                                  "<name>-by-<axis>.html")
    p.add_argument("--no-log", action="store_true", help="do not log the report to MLflow")
    p.add_argument("--delta", type=float, help="an equivalence margin (metric units) when the campaign declared "
                   "none (`delta:` in its spec): printed as post hoc")
    args = p.parse_args(argv)
    if args.delta is not None and args.delta <= 0:
        p.error("--delta must be > 0")
    name = ("+".join(args.campaign) if args.campaign else args.experiment or f"evaluation-{args.evaluation}") \
        + (f"-by-{args.axis}" if args.axis else "")
    out = args.out or Path("reports")
    if out.is_dir() or not out.suffix:  # a folder, existing or to be made
        out = out / f"{name}.html"
    try:
        if args.evaluation:
            runs, axes = load_evaluation(args.evaluation)
        else:
            runs, axes = load_campaign(args.campaign, args.experiment)
        axis = compare_axis(axes, args.axis)
        title = f"Evaluation on {args.evaluation} (test split)" if args.evaluation else None
        report = build_report(args.campaign, args.experiment, loaded=(runs, axes), axis=axis, title=title,
                              delta=args.delta)
    except LookupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report.html)
    if extra := runs.attrs.get("extra_runs"):
        print(f"warning: {len(extra)} extra FINISHED run(s) of a cell not counted (the first to finish counts): "
              + ", ".join(e["run_id"] for e in extra), file=sys.stderr)
    print(report.text() or "no conclusion yet: no setting has finished runs of every arm", end="\n\n")
    print(f"wrote {out}")
    if not args.no_log:
        experiment = args.experiment or experiment_name(runs.run_id.iloc[0])
        run_id = log_report(out, f"report-{name}", experiment,
                            {"report.of": " ".join(args.campaign or [args.experiment or args.evaluation]),
                             "report.axis": axis})
        print(f"logged to MLflow run {run_id} (experiment '{experiment}')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
