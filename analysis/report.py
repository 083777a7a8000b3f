"""Campaign comparison report: one self-contained HTML file (figures embedded), logged to MLflow.

    python -m analysis.report --campaign unet_vs_resnet34 [--out reports/unet_vs_resnet34.html]
    python -m analysis.report --experiment oxford_pet
    python -m analysis.report --campaign unet_vs_resnet34_full arch_by_augment_full   # pooled: augment becomes an axis

Reads MLflow only. Numbers come with their definition: test Dice per image (mean over images)
and dataset-level (micro), foreground rule as recorded in each run's params.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from analysis import plots, sections
from analysis.paired import (
    FOLD,
    METRICS,
    compare_axis,
    headline_metrics,
    load_scores,
    paired_frames,
    setting_labels,
    strata_of,
)
from analysis.runs import campaign_names, experiment_name, load_campaign, load_evaluation, load_history, log_report
from analysis.stats import FEW_RUNS, adjust_family, bootstrap_ci, compare_arms, decisive_p, evidence, run_contrast_t

DEFINITION = ("Dice = 2TP / (2TP + FP + FN) with prediction = sigmoid(logit) > threshold. <b>Per-image</b>: "
              "averaged over test images; <b>micro</b>: TP/FP/FN summed over every test pixel first. "
              "An image with empty truth and empty prediction scores 1. Foreground rule: {rule}. "
              "K-class runs (data.num_classes &ge; 3): prediction = argmax; test/dice = mean over classes of "
              "dataset-level per-class Dice, test/miou = mean IoU over classes, pixel_acc = share of pixels "
              "whose class is right; per-image Dice = mean over the classes present in truth or prediction.")


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plots.plt.close(fig)
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per arm: n runs, mean and 95% bootstrap CI over seeds of the test metrics, cost figures."""
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
    """'mean [low, high]' over runs: a t-interval below FEW_RUNS runs (a percentile bootstrap over so few
    values is far too narrow), else the bootstrap; one run is that run's value."""
    if 2 <= len(values) < FEW_RUNS:
        mean, low, high, _ = run_contrast_t([values.to_numpy()[:, None]], [1.0])
        return f"{mean:.4f} [{low:.4f}, {high:.4f}] t"
    mean, low, high = bootstrap_ci(values)
    return f"{mean:.4f} [{low:.4f}, {high:.4f}]"


def _threshold(group: pd.DataFrame) -> str:
    """The arm's probability threshold: the spec's, or the ones chosen on validation (eval.threshold: auto)."""
    chosen = group["eval/threshold"].dropna() if "eval/threshold" in group else pd.Series(dtype=float)
    if len(chosen):
        return f"chosen on val: {', '.join(f'{t:.2f}' for t in chosen)}"
    return ", ".join(sorted(group["eval.threshold"].dropna().astype(str).unique())) if "eval.threshold" in group \
        else "0.5"


def conclusion(a: str, b: str, result: dict, seeds, axis: str, scope: str = "", metric: str = "dice") -> str:
    """seeds: an int (the same count in every arm) or a text such as 'unet 3, resnet34_unet 1'.
    `result` may hold `seed_ci_low/high` (contrast_ci), given when every cell has >= 2 runs, and
    `n_folds` when runs come in folds. scope: what the comparison averages over, e.g. 'mean over
    augment=none, augment=flip'."""
    direction = "higher" if result["mean_diff"] > 0 else "lower"
    half = (result["ci_high"] - result["ci_low"]) / 2
    where = f"{axis}; {html.escape(scope)}" if scope else axis
    per = "per cell" if scope else "per arm"
    folds = f"{result['n_folds']} folds &times; " if "n_folds" in result else ""
    per = f"per fold {per}" if folds else per
    return (f"<b>{METRICS[metric]}</b>: <b>{html.escape(str(b))}</b> is {direction} than <b>{html.escape(str(a))}</b> "
            f"({where}) by {abs(result['mean_diff']):.4f} &plusmn; {half:.4f} per-image test {METRICS[metric]} (mean "
            f"paired difference, 95% bootstrap CI over images), Wilcoxon signed-rank p = {result['p_wilcoxon']:.3g} "
            f"over {result['n']} test images and {folds}{seeds} seed(s) {per}{_unbalanced(seeds)}; "
            f"rank-biserial r = {result['rank_biserial']:+.2f} ({result['b_better']} images better with "
            f"{html.escape(str(b))}, {result['a_better']} worse). {verdict(result)}")


def verdict(result: dict) -> str:
    """A difference one lucky seed made is not real: see `evidence`. Ends with the raw and the
    Holm-adjusted p and the family size, once `adjust_family` has set them."""
    kind = evidence(result)
    family = (f" Holm-adjusted p = {result['p_holm']:.3g} (raw {decisive_p(result):.3g}) over a family of "
              f"{result['family_size']} comparisons." if "p_holm" in result else "")
    if kind == "none":
        return f"The difference is not distinguishable from 0 at the 5% level with this many images and seeds.{family}"
    if kind == "uncorrected only":
        return f"On its own the difference would be called real, but not after correcting for the comparisons " \
               f"printed with it.{family}"
    if kind == "one run":
        return ("The difference is significant at the 5% level and its CI excludes 0 over these images, for these "
                "trained models; with one run in an arm, seed-to-seed variation is not counted, so it is not shown "
                f"to be real for the settings: run more seeds.{family}")
    both = f"[{result['seed_ci_low']:+.4f}, {result['seed_ci_high']:+.4f}]"
    how = result.get("runs_interval", "bootstrap over runs and images")
    spread, more = (("split-to-split and seed-to-seed", "folds or seeds") if "n_folds" in result
                    else ("seed-to-seed", "seeds"))
    if kind == "real":
        return (f"The difference is significant at the 5% level and its CI excludes 0, also counting {spread} "
                f"variation (95% CI by {how}: {both}).{family}")
    return (f"Over these images the difference is significant, but counting {spread} variation too ({how}) "
            f"its 95% CI {both} includes 0: the training runs disagree too much to call it real; run more "
            f"{more}.{family}")


def _unbalanced(seeds) -> str:
    return "" if isinstance(seeds, int) else " (unequal: the arm with fewer seeds is noisier)"


def _seed_counts(runs: pd.DataFrame, cell_axes: list[str]):
    counts = runs.groupby(cell_axes, sort=False).size()
    if counts.nunique() == 1:
        return int(counts.iloc[0])
    return ", ".join(f"{' / '.join(map(str, k)) if isinstance(k, tuple) else k} {v}" for k, v in counts.items())


def _paired_section(paired: dict, comparisons: list, axis: str, seeds, strata: list[str]) -> list[str]:
    within = f" within each setting of {', '.join(strata)} (then averaged over settings)" if strata else ""
    parts = [f"<h2>Paired per-image comparison ({html.escape(axis)})</h2>"
             f"<p>Each point is one test image; its score is averaged over each arm's runs (seeds: {seeds}). "
             f"The table pairs images{html.escape(within)}, for every headline metric.</p>"]
    table = pd.DataFrame([{"metric": METRICS[m], "A": a, "B": b, **sections.rounded(r)} for m, a, b, r in comparisons])
    parts.append(table.to_html(index=False))
    for m, a, b, _ in comparisons:
        parts.append(_png(plots.paired_scatter(paired[m].wide.rename(columns=str), str(a), str(b),
                                               metric=f"test {METRICS[m]}")))
    return parts


def build_report(campaign: str | list[str] | None = None, experiment: str | None = None, uri: str | None = None,
                 loaded: tuple[pd.DataFrame, list[str]] | None = None, axis: str | None = None,
                 title: str | None = None) -> str:
    """The report as an HTML string. Raises LookupError when there are no finished runs, or when
    `axis` (the field whose levels are compared; default: see compare_axis) is not varied.

    `loaded` is `load_campaign`'s result, when the caller already has it.
    """
    runs, axes = loaded or load_campaign(campaign, experiment, uri)
    axis = compare_axis(axes, axis)
    names = campaign_names(campaign)
    title = title or (f"Campaign{'s' * (len(names) > 1)} {' + '.join(names)}" if names else f"Experiment {experiment}")
    rules = ", ".join(sorted(runs["data.foreground"].dropna().unique())) or "unknown"
    trained = runs["source_run_id"] if "source_run_id" in runs else runs.run_id  # evaluation runs: their sources'
    history = load_history(list(trained), uri, metrics=["val/dice", "time/epoch_s"]).rename(
        columns={"run_id": "trained_id"})
    history = runs[["run_id", "arm"]].assign(trained_id=list(trained)).merge(history, on="trained_id")  # runs' order
    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<p>{len(runs)} finished runs; axes: {html.escape(', '.join(axes))}; compared: "
             f"<b>{html.escape(axis)}</b>; generated "
             f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.</p>",
             f'<p class="def">{DEFINITION.format(rule=html.escape(rules))}</p>', *provenance_notes(runs, axes)]

    strata = strata_of(axes, axis)
    scores = load_scores(runs, uri)
    metrics = headline_metrics(scores)
    paired = {m: paired_frames(runs, axis, uri, strata, scores, m) for m in metrics}
    dice = paired["dice"]
    folded = FOLD in axes and axis != FOLD
    levels, seeds = dice.levels, _seed_counts(runs, [axis, *strata] + [FOLD] * folded)
    comparisons = [(m, levels[0], b, compare_arms(**paired[m].compare(levels[0], b))) for m in metrics
                   for b in levels[1:] if dice.complete_settings()]  # none until a setting has every level
    within_results = {m: sections.setting_results(paired[m]) for m in metrics} if strata and comparisons else {}
    # One family: every comparison the report prints together (each metric: overall, per setting, interactions).
    adjust_family([r for *_, r in comparisons] + [r for w, g in within_results.values() for *_, r in w + g])
    within = {m: sections.by_setting(paired[m], axis, _png, res, METRICS[m]) for m, res in within_results.items()}
    if comparisons:
        scope = ("mean over " + "; ".join(dice.complete_settings())) if strata else ""
        lines = [conclusion(a, b, r, seeds, axis, scope, m) for m, a, b, r in comparisons]
        lines += [line for lines_, _ in within.values() for line in lines_]
        parts.append("<h2>Conclusion</h2>" + "".join(f"<p>{line}</p>" for line in lines))
    parts += [f"<h2>Summary per arm</h2><p>Mean over runs with a 95% CI over them: a t-interval (marked t) "
              f"below {FEW_RUNS} runs, else a bootstrap. test/dice and test/nsd: higher is better; test/hd95 (px): "
              f"lower. Scored at each test image's stored size.</p>",
              summary_table(runs).to_html(index=False, escape=True), _png(plots.summary_bars(runs))]
    # a fold's runs validate on that fold, so the band mixes val sets: say so rather than let it read as seed noise
    fold_note = "<p>Each run's val/dice is on its own fold's validation images.</p>" if folded else ""
    parts += ["<h2>Learning curves</h2>" + fold_note, _png(plots.learning_curves(history))]
    if comparisons:
        n_folds = comparisons[0][3].get("n_folds")  # the folds compared (those every arm has)
        per_arm = f"{seeds} per fold, {n_folds} folds" if n_folds else seeds
        parts += _paired_section(paired, comparisons, axis, per_arm, strata)
        first = runs[setting_labels(runs, strata) == dice.complete_settings()[0]]  # one setting: same-seed runs
        parts += sections.worst_images(first, axis, levels, uri, _png)
    for _, section in within.values():
        parts += section
    if "train.loss" in axes:
        parts += sections.loss_stability(runs, campaign, uri, _png)
    for other in ("train.loss", "augment"):  # the training-recipe axes, each level against its reference
        if other in axes:
            by = dice if axis == other else paired_frames(runs, other, uri, strata_of(axes, other), scores)
            parts += sections.ablation(runs, other, by, _png)
    parts += ["<h2>Time to Dice</h2><p>Validation Dice against cumulative training time.</p>",
              _png(plots.time_to_score(history))]
    parts.append("<h2>Runs</h2>" + runs.drop(columns=["arm", "start_time"]).to_html(index=False, na_rep=""))
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             # a wide table scrolls in its own box rather than widening the whole page
             "table{border-collapse:collapse;font-size:13px;display:block;overflow-x:auto;max-width:100%}"
             "td,th{border:1px solid #ccc;padding:3px 6px}"
             "img{max-width:100%}.def{background:#f4f4f4;padding:.6em;font-size:13px}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")


def provenance_notes(runs: pd.DataFrame, axes: list[str]) -> list[str]:
    """What the runs were tested on (their test dataset input: name and digest; the fingerprint tag
    for runs that predate inputs), then a paragraph for each of amp.dtype and data.fingerprint that
    load_campaign made an axis: runs in more than one precision, or on more than one version of the data."""
    named = runs.get("dataset.test", pd.Series(dtype=object)).notna()
    tested = ", ".join(f"{html.escape(str(name))} ({html.escape(str(digest))})" for name, digest in
                       runs[named][["dataset.test", "data.fingerprint"]].drop_duplicates().itertuples(index=False))
    older = (f"; {(~named).sum()} run(s) predate dataset inputs (their data.fingerprint tag is used)"
             if (~named).any() else "")
    notes = [f"<p>Tested on: {tested or 'unrecorded'} (name and digest of each run's MLflow dataset input){older}.</p>"]
    what = {"amp.dtype": ("Mixed precision", "autocast dtype", "as <code>amp: auto</code> does on machines with "
                          "and without native bf16"),
            "data.fingerprint": ("Data changed", "data fingerprint", "so the files under the same data settings "
                                 "changed between runs")}
    for tag, (title, noun, why) in what.items():
        if tag in axes:
            counts = ", ".join(f"{n} with {html.escape(str(v))}" for v, n in runs[tag].value_counts().items())
            notes.append(f"<p><b>{title}:</b> these runs trained with more than one {noun} ({counts}), {why}. "
                         f"<code>{tag}</code> is therefore an axis: every comparison below is made within one.</p>")
    return notes


def conclusion_text(page: str) -> str:
    """The report's Conclusion section as plain text, one paragraph per line ("" when the
    report has none, as before any setting has runs of every arm), for the terminal."""
    section = page.partition("<h2>Conclusion</h2>")[2].partition("<h2>")[0]
    paragraphs = re.findall(r"<p>(.*?)</p>", section, flags=re.S)
    return "\n".join(html.unescape(re.sub(r"<[^>]+>", "", p)) for p in paragraphs)


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
    args = p.parse_args(argv)
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
        page = build_report(args.campaign, args.experiment, loaded=(runs, axes), axis=axis, title=title)
    except LookupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    text = conclusion_text(page)
    print(text or "no conclusion yet: no setting has finished runs of every arm", end="\n\n")
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
