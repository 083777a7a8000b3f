"""Every campaign in the store in one table: what was compared, under which settings, and is it real.

    python -m analysis.overview [--campaign NAME ...] [--out reports/overview]

Reads MLflow only. For each campaign (the `campaign` tag of finished runs) the compared axis is
the one `analysis.report` compares (model.arch when varied, else the first varied field). Each of
its levels is compared with the first level, pooled over the settings of the campaign's other axes
and, when there are several, within each setting: the same statistics and verdicts as the
campaign's report, one row per comparison, and whether the gap changes between settings (the
interaction). Written as Markdown (also printed), CSV and a forest plot (PNG).

Each arm's test score carries the same interval as the report's summary (`stats.summarize_arm`: a
t over runs below FEW_RUNS runs).

Multiplicity: every row the table prints is one family. A verdict "real" needs the adjusted p of
`Comparison.decisive_p` (the largest of the Wilcoxon p and the two intervals' p-values)
below 5% (Bonferroni's where a campaign declared a margin: "equivalent" shares the budget), so the
family-wise error is controlled at 5%; `p_raw`, `p_adjusted` and `family_size` stand beside every verdict.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import mlflow
import pandas as pd
from tqdm import tqdm

from analysis import plots
from analysis.paired import (
    METRICS,
    compare_axis,
    compared_runs,
    headline_metrics,
    load_scores,
    paired_frames,
    setting_labels,
    strata_of,
)
from analysis.results import Comparison
from analysis.runs import load_campaign, margin_of, tracking_uri
from analysis.stats import adjust_family, compare_arms, compare_gaps, summarize_arm


def campaigns_in_store(uri: str | None = None) -> list[str]:
    """Names of the campaigns with finished runs, oldest first."""
    mlflow.set_tracking_uri(tracking_uri(uri))
    raw = mlflow.search_runs(search_all_experiments=True, filter_string="attributes.status = 'FINISHED'")
    if raw.empty or "tags.campaign" not in raw:
        return []
    return list(dict.fromkeys(raw.sort_values("start_time")["tags.campaign"].dropna()))


def _stats(result: Comparison) -> dict:
    """A comparison's figures under the table's column names (NaN where it has no runs interval)."""
    runs = result.runs_interval
    return {"diff": result.mean_diff, "ci_low": result.images_interval.low, "ci_high": result.images_interval.high,
            "seed_ci_low": runs.low if runs else float("nan"), "seed_ci_high": runs.high if runs else float("nan"),
            "p_wilcoxon": result.p_wilcoxon, "p_raw": result.decisive_p,
            "p_improvement": result.improvement if result.improvement is not None else float("nan"),
            "p_improvement_low": result.improvement_interval.low if result.improvement_interval else float("nan"),
            "p_improvement_high": result.improvement_interval.high if result.improvement_interval else float("nan")}


def _arm(side: str, runs: pd.DataFrame, metric: str) -> dict:
    """An arm's run count and test `metric`: mean over its runs with the one per-arm interval
    (stats.summarize_arm; one run: its value)."""
    arm = summarize_arm(runs[f"test/{metric}"])
    low, high = (arm.interval.low, arm.interval.high) if arm.interval else (arm.mean, arm.mean)
    return {f"runs_{side}": len(runs), f"dice_{side}": arm.mean, f"dice_{side}_low": low, f"dice_{side}_high": high}


def _comparison_row(scope: dict, runs: pd.DataFrame, result: Comparison) -> dict:
    """One comparison: scope holds campaign, compared (the axis), setting; `runs` are the runs in
    its scope (both levels); `result` is compare_arms', labelled with its metric and arms. The dice_*
    columns hold the arms' test metric (the `metric` column says which)."""
    (a, b), axis, metric = result.arms, scope["compared"], result.metric
    return {"campaign": scope["campaign"], "compared": axis, "metric": METRICS[metric], "setting": scope["setting"],
            "A": a, "B": b,
            **_arm("a", runs[runs[axis] == a], metric), **_arm("b", runs[runs[axis] == b], metric), **_stats(result),
            "b_better": result.b_better, "n_images": result.n_images,
            "commits": " ".join(sorted(runs["git.commit"].dropna().str[:7].unique()))}


def _gap_row(scope: dict, first: str, result: Comparison) -> dict:
    """Does B - A change from the first setting to scope's setting? `result` is compare_gaps', labelled."""
    return {"campaign": scope["campaign"], "compared": scope["compared"], "metric": METRICS[result.metric],
            "setting": f"change of the gap: {first} -> {scope['setting']}",
            "A": result.arms[0], "B": result.arms[1], **_stats(result), "n_images": result.n_images}


def _settle(pairs: list[tuple[dict, Comparison]]) -> list[dict]:
    """Holm (Bonferroni with a margin) over the comparisons of `pairs` (row, its Comparison) as one
    family: each row with its p_adjusted, family_size and verdict."""
    adjusted = adjust_family([result for _, result in pairs])
    return [{**row, "p_adjusted": r.p_adjusted, "family_size": r.family_size, "verdict": r.verdict}
            for (row, _), r in zip(pairs, adjusted)]


def _folds(paired, keys) -> list | None:
    """The folds of the cells `keys`, when runs come in folds (hierarchical intervals), else None."""
    return [paired.groups[k] for k in keys] if paired.groups else None


def campaign_rows(campaign: str, uri: str | None = None) -> list[dict]:
    """The campaign's rows, its comparisons Holm-adjusted as one family (campaign_pairs)."""
    return _settle(campaign_pairs(campaign, uri))


def campaign_pairs(campaign: str, uri: str | None = None) -> list[tuple[dict, Comparison]]:
    """The campaign's comparisons, each as (table row, Comparison) (see the module docstring), for each
    headline metric (Dice, and NSD where every run has it), then, with several settings, whether the
    B - A gap changes from the first setting to each other one (an interaction, as in the report);
    [] while no setting has finished runs of two levels. Per-image scores are averaged over each arm's seeds, as in the
    report; with data.fold varied, the intervals over runs resample folds, then seeds, then images."""
    runs, axes = load_campaign(campaign, uri=uri)
    axis = compare_axis(axes)
    strata = strata_of(axes, axis)
    runs = compared_runs(runs, axis, strata)  # the run counts and scores shown are the compared runs'
    scores = load_scores(runs, uri)
    labels = setting_labels(runs, strata)
    margin, _ = margin_of(runs)  # the campaign's own (spec `delta:`): the overview takes no post hoc margin
    rows = []
    for metric in headline_metrics(scores):
        paired = paired_frames(runs, axis, uri, strata, scores, metric)
        settings, cells = paired.complete_settings(), paired.cells
        if len(paired.levels) < 2 or not settings:
            break
        pooled = f"pooled over {len(settings)} settings" if len(settings) > 1 else (settings[0] or "-")
        scopes = [(pooled, settings)] + ([(s, [s]) for s in settings] if len(settings) > 1 else [])

        a, *others = paired.levels
        for b in others:
            for name, chosen in scopes:
                keys = [(s, a) for s in chosen] + [(s, b) for s in chosen]
                result = compare_arms([cells[k] for k in keys[:len(chosen)]], [cells[k] for k in keys[len(chosen):]],
                                      groups=_folds(paired, keys), margin=margin,
                                      improvement=True).labelled(metric, a, b)
                scope = {"campaign": campaign, "compared": axis, "setting": name}
                rows.append((_comparison_row(scope, runs[labels.isin(chosen)], result), result))
            first = settings[0]
            for s in settings[1:]:
                keys = [(first, a), (first, b), (s, a), (s, b)]
                result = compare_gaps(*(cells[k] for k in keys), groups=_folds(paired, keys)).labelled(metric, a, b)
                rows.append((_gap_row({"campaign": campaign, "compared": axis, "setting": s}, first, result), result))
    return rows


def overview_table(campaigns: list[str] | None = None, uri: str | None = None) -> pd.DataFrame:
    """The rows of `campaigns` (default: every campaign in the store) as one frame; the counts
    are nullable integers, NA on the gap rows."""
    names = campaigns_in_store(uri) if campaigns is None else campaigns
    pairs = [pair for name in tqdm(names, desc="campaigns", unit="campaign", leave=False, disable=None)
             for pair in campaign_pairs(name, uri)]
    table = pd.DataFrame(_settle(pairs))  # every comparison the table prints is one family (Holm)
    return table.astype({c: "Int64" for c in ("runs_a", "runs_b", "b_better") if c in table})


def readable(table: pd.DataFrame) -> pd.DataFrame:
    """The table for reading: intervals as '[low, high]', counts as 'k of n', rounded figures."""
    def interval(low, high):
        return [f"[{lo:+.4f}, {hi:+.4f}]" if pd.notna(lo) else "" for lo, hi in zip(table[low], table[high])]

    def dice(side):
        return [f"{m:.4f} [{lo:.4f}, {hi:.4f}]" if pd.notna(m) else "" for m, lo, hi in
                zip(table[f"dice_{side}"], table[f"dice_{side}_low"], table[f"dice_{side}_high"])]

    comparison = table["runs_a"].notna()
    seeds = interval("seed_ci_low", "seed_ci_high")
    return pd.DataFrame({
        "campaign": table["campaign"], "compared": table["compared"], "metric": table["metric"],
        "setting": table["setting"],
        "A": table["A"], "B": table["B"],
        "runs": [f"{x:.0f} / {y:.0f}" if ok else "" for x, y, ok in zip(table["runs_a"], table["runs_b"], comparison)],
        "test score A": dice("a"), "test score B": dice("b"), "B - A": [f"{d:+.4f}" for d in table["diff"]],
        "CI over images": interval("ci_low", "ci_high"),
        "CI over runs and images": [s or ("one run in an arm" if ok else "one run in a cell")
                                    for s, ok in zip(seeds, comparison)],
        "Wilcoxon p": [f"{p:.2g}" for p in table["p_wilcoxon"]],
        "p (raw)": [f"{p:.2g}" for p in table["p_raw"]], "p (adjusted)": [f"{p:.2g}" for p in table["p_adjusted"]],
        "family": table["family_size"],
        "images better with B": [f"{k:.0f} of {n:.0f}" if ok else "" for k, n, ok in
                                 zip(table["b_better"], table["n_images"], comparison)],
        "P(B > A) per image": [f"{p:.0%} [{lo:.0%}, {hi:.0%}]" if pd.notna(p) else "" for p, lo, hi in
                               zip(table["p_improvement"], table["p_improvement_low"], table["p_improvement_high"])],
        "verdict": table["verdict"], "commits": table["commits"].fillna("")})


def forest(table: pd.DataFrame):
    """Every comparison row (not the gap changes) as a forest plot: B - A with the CI over runs and
    images where every arm has two or more runs, else the CI over images."""
    rows = table[table["runs_a"].notna()]
    frame = pd.DataFrame({"level": rows["campaign"] + " | " + rows["metric"] + " | " + rows["setting"].replace("-", "")
                                   + " | " + rows["B"].astype(str) + " vs " + rows["A"].astype(str),
                          "mean_diff": rows["diff"], "ci_low": rows["seed_ci_low"].fillna(rows["ci_low"]),
                          "ci_high": rows["seed_ci_high"].fillna(rows["ci_high"])})
    return plots.effect_forest(frame.iloc[::-1], "A", title="B - A, every campaign (first row at the top)")


def markdown(table: pd.DataFrame) -> str:
    """A GitHub Markdown table (pandas' to_markdown needs tabulate, which is not a dependency)."""
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(str(v).replace("|",
                                               "\\|") for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="One table over every campaign in the MLflow store: each comparison "
                                            "of the compared axis, pooled and within each setting, with its verdict.")
    p.add_argument("--campaign", nargs="+", metavar="NAME", help="only these campaigns (default: every one)")
    p.add_argument("--out", type=Path, default=Path("reports/overview"),
                   help="path without suffix: <out>.md, <out>.csv and <out>.png (forest plot) are written "
                        "(default reports/overview)")
    args = p.parse_args(argv)
    known = campaigns_in_store()
    unknown = sorted(set(args.campaign or ()) - set(known))
    if unknown or not known:
        print(f"error: no finished runs for campaign(s) {', '.join(unknown) or '(any)'} in {tracking_uri()}; "
              f"campaigns there: {', '.join(known) or 'none'}", file=sys.stderr)
        return 2
    table = overview_table(args.campaign or known)
    rows = not table.empty
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = markdown(readable(table)) if rows else "no campaign has finished runs of two levels in one setting yet"
    args.out.with_suffix(".md").write_text(text + "\n")
    table.to_csv(args.out.with_suffix(".csv"), index=False)
    written = [args.out.with_suffix(".md"), args.out.with_suffix(".csv")]
    if rows:
        forest(table).savefig(args.out.with_suffix(".png"), dpi=90, bbox_inches="tight")
        written.append(args.out.with_suffix(".png"))
    print(text, end="\n\n")
    print("wrote " + ", ".join(map(str, written)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
