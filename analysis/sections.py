"""Report sections that appear only when a campaign has the data for them: worst-k images,
the BCE vs BCEWithLogits comparison (train.loss axis), the augmentation ablation (augment axis)
and the compared axis within each setting of the others ('under which settings').

Each function takes the tidy runs table and returns HTML fragments; figures go through `png`.
"""

from __future__ import annotations

import html
from typing import Callable

import pandas as pd

from analysis import plots
from analysis.runs import FOLD, campaign_names, load_campaign, load_history, load_per_image, load_predictions
from analysis.stats import FEW_RUNS, VERDICTS, adjust_family, bootstrap_ci, compare_arms, compare_gaps, evidence

WORST_K = 6
SPIKE = 1.10  # an epoch whose train/loss exceeds the previous epoch's by 10% counts as a spike


def _replicate_keys(runs: pd.DataFrame) -> list[str]:
    """What tells a cell's runs apart: the seed, and the fold when the runs have one."""
    return ["seed", FOLD] if FOLD in runs and runs[FOLD].notna().all() else ["seed"]


def _runs_for_seed(runs: pd.DataFrame, axis: str, levels: list) -> dict:
    """One run per level, all with the same seed (and fold): the lowest that every level has."""
    keys = _replicate_keys(runs)
    common = set.intersection(*(set(runs.loc[runs[axis] == lvl, keys].itertuples(index=False, name=None))
                                for lvl in levels))
    if not common:
        return {}
    pick = min(common)
    chosen = pd.Series(list(runs[keys].itertuples(index=False, name=None)), index=runs.index).map(pick.__eq__)
    return {lvl: runs[(runs[axis] == lvl) & chosen].iloc[0] for lvl in levels}


def worst_images(runs: pd.DataFrame, axis: str, levels: list, uri: str | None, png: Callable) -> list[str]:
    """Per level: its WORST_K test images by Dice (one seed), with every level's prediction."""
    chosen = _runs_for_seed(runs, axis, levels)
    preds = {lvl: load_predictions(row.run_id, uri) for lvl, row in chosen.items()}
    if not chosen or any(p is None for p in preds.values()):
        return ["<h2>Worst test images</h2><p>Not available: these runs did not log test_predictions.npz.</p>"]
    dice = {lvl: load_per_image(row.run_id, uri).set_index("name")["dice"] for lvl, row in chosen.items()}
    first = next(iter(chosen.values()))
    which = ", ".join(f"{'fold' if key == FOLD else key} {int(first[key])}" for key in _replicate_keys(runs))
    parts = [f"<h2>Worst test images per arm ({html.escape(axis)})</h2><p>{which.capitalize()}. For each arm, its "
             f"{WORST_K} lowest per-image test Dice; every row shows the image, its truth and each arm's "
             "prediction on that same image (at the threshold its run was tested at: see the summary per arm).</p>"]
    for lvl in levels:
        ref = preds[lvl]
        rows = ref["worst"][:WORST_K]
        names = [ref["names"][i] for i in rows]
        by_arm, scores = {}, {}
        for other, p in preds.items():
            index = {n: i for i, n in enumerate(p["names"])}
            by_arm[str(other)] = p["pred"][[index[n] for n in names]]
            scores[str(other)] = [float(dice[other][n]) for n in names]
        parts.append(f"<h3>Worst for {html.escape(str(lvl))}</h3>")
        parts.append(png(plots.worst_k_grid(ref["worst_images"][:WORST_K], ref["truth"][rows], by_arm, names, scores)))
    return parts


def _fmt_ci(values) -> str:
    mean, low, high = bootstrap_ci(values)
    return f"{mean:.4f} [{low:.4f}, {high:.4f}]"


def loss_stability(runs: pd.DataFrame, campaign: str | list[str] | None, uri: str | None, png: Callable) -> list[str]:
    """BCE on sigmoid vs BCEWithLogits: final Dice, and how each behaved under autocast."""
    failed = []  # per campaign: a pooled campaign without failures must not hide another's
    for name in campaign_names(campaign):
        try:
            failed.append(load_campaign(name, None, uri, status="FAILED")[0])
        except LookupError:
            pass
    failed = pd.concat(failed) if failed else None
    history = load_history(list(runs.run_id), uri, metrics=["train/loss", "train/skipped_batches"])
    history = runs[["run_id", "train.loss"]].merge(history, on="run_id")
    loss = history[history.metric == "train/loss"].sort_values(["run_id", "epoch"])
    spikes = loss.groupby("run_id")["value"].apply(lambda v: int((v.values[1:] > SPIKE * v.values[:-1]).sum()))
    rows = []
    for level, group in runs.groupby("train.loss", sort=False):
        ids = set(group.run_id)
        skipped = history[(history.metric == "train/skipped_batches") & history.run_id.isin(ids)]["value"].sum()
        n_failed = int((failed["train.loss"] == level).sum()) if failed is not None else 0
        rows.append({"train.loss": level, "autocast dtype": ", ".join(sorted(group["amp.dtype"].dropna().unique())),
                     "finished runs": len(group), "failed runs": n_failed, "skipped non-finite batches": int(skipped),
                     "train/loss spikes (>10% up), mean per run":
                         round(float(spikes[spikes.index.isin(ids)].mean()), 2),
                     "final train/loss": _fmt_ci(loss[loss.run_id.isin(ids)].groupby("run_id")["value"].last()),
                     "test/dice": _fmt_ci(group["test/dice"]), "test/dice_micro": _fmt_ci(group["test/dice_micro"])})
    loss = loss.rename(columns={"train.loss": "loss"})
    return ["<h2>BCE on sigmoid vs BCEWithLogits</h2><p>Losses are computed in float32 outside autocast, "
            "except bce_sigmoid_amp, whose sigmoid runs in the autocast dtype shown (as in a model ending in "
            "nn.Sigmoid); the model runs under that dtype. Stability: runs that failed (a NaN/Inf loss fails a "
            "run unless train.on_nan=skip_batch), batches skipped as non-finite, and epochs where the training "
            "loss rose by more than 10%. Dice: mean [95% bootstrap CI over seeds], per image and micro.</p>",
            pd.DataFrame(rows).to_html(index=False),
            png(plots.learning_curves(loss.assign(metric="train/loss"), arm="loss", metric="train/loss"))]


def ablation(runs: pd.DataFrame, axis: str, paired, png: Callable) -> list[str]:
    """Each level against the reference ('none' when present): paired per-image differences of
    test Dice. paired: analysis.paired.Paired of `axis`."""
    levels = paired.levels
    reference = "none" if "none" in levels else levels[0]
    results = {level: compare_arms(**paired.compare(reference, level)) for level in levels if level != reference}
    adjust_family(list(results.values()))  # this section's comparisons are one family
    rows = []
    for level, r in results.items():
        rows.append({"level": level, **_row(r),
                     "test/dice (runs)": _fmt_ci(runs.loc[runs[axis] == level, "test/dice"])})
    if not rows:
        return []
    table = pd.DataFrame(rows).sort_values("mean_diff", ascending=False)
    return [f"<h2>Ablation over {html.escape(axis)}</h2><p>Every level against <b>{html.escape(str(reference))}</b> "
            f"(reference test/dice {_fmt_ci(runs.loc[runs[axis] == reference, 'test/dice'])}): mean paired difference "
            "of per-image test Dice (averaged over seeds) with a 95% bootstrap CI over images, a Wilcoxon "
            "signed-rank p-value and, with two or more seeds per level, the CI that also resamples the runs "
            "(seed_ci_low/high); other varied axes are compared within each setting. Sorted by effect.</p>",
            table.to_html(index=False),
            png(plots.effect_forest(table, str(reference)))]


def rounded(result: dict) -> dict:
    """A comparison's floats to 4 significant figures for tables (p-values stay non-zero)."""
    return {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in result.items()}


def _row(result: dict, **keys) -> dict:
    shown = {k: v for k, v in result.items() if k != "runs_interval"}
    return {**keys, **rounded(shown), "verdict": VERDICTS[evidence(result)]}


def _interval(r: dict) -> str:
    low, high = (r["seed_ci_low"], r["seed_ci_high"]) if "seed_ci_low" in r else (r["ci_low"], r["ci_high"])
    which = r.get("runs_interval", "runs and images") if "seed_ci_low" in r else "images"
    which = {"t over run means": "run means, t", "bootstrap over runs and images": "runs and images"}.get(which, which)
    return f"{r['mean_diff']:+.4f} [{low:+.4f}, {high:+.4f}] (95% CI over {which})"


def setting_results(paired) -> tuple[list, list]:
    """Under which settings, computed: (within, gaps). within: (setting, A, B, compare_arms result),
    each level of the compared axis against the first using only the runs of one setting of the
    other axes; gaps: (first setting, setting, B, compare_gaps result), whether that gap changes
    from the first setting to each other one (interaction). paired: report.Paired."""
    settings, (a, *others) = paired.complete_settings(), paired.levels
    cells, within, gaps = paired.cells, [], []

    def folds(*keys):  # each cell's folds, when runs come in folds (hierarchical intervals)
        return [paired.groups[k] for k in keys] if paired.groups else None

    for b in others:
        within += [(s, a, b, compare_arms(cells[(s, a)], cells[(s, b)], groups=folds((s, a), (s, b))))
                   for s in settings]
        first = settings[0]
        gaps += [(first, s, b, compare_gaps(cells[(first, a)], cells[(first, b)], cells[(s, a)], cells[(s, b)],
                                            groups=folds((first, a), (first, b), (s, a), (s, b))))
                 for s in settings[1:]]
    return within, gaps


def setting_tables(paired, results=None) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """setting_results (computed here unless given, e.g. after `adjust_family`) as (within table,
    gaps table, sentences)."""
    within, gap_results = results if results is not None else setting_results(paired)
    cells, rows, gaps, lines = paired.cells, [], [], []
    for b in paired.levels[1:]:
        for s, a, _, r in (w for w in within if w[2] == b):
            counts = {"n runs A": len(cells[(s, a)]), "n runs B": len(cells[(s, b)])}
            rows.append(_row(r, setting=s, A=a, B=b, **counts))
            lines.append(f"With {html.escape(s)}: {html.escape(str(b))} &minus; {html.escape(str(a))} = "
                         f"{_interval(r)}: {VERDICTS[evidence(r)]}.")
        for first, s, _, g in (x for x in gap_results if x[2] == b):
            gaps.append(_row(g, B=b, **{"from": first, "to": s}))
            said = {"real": "changes", "uncorrected only": "changes, but not after Holm's correction",
                    "images only": "changes over these images but not beyond seed noise",
                    "one run": "changes over these images (one run in a cell: seed noise not counted)",
                    "none": "shows no change"}[evidence(g)]
            lines.append(f"The {html.escape(str(b))} &minus; {html.escape(str(paired.levels[0]))} gap {said} from "
                         f"{html.escape(first)} to {html.escape(s)}: {_interval(g)}.")
    return pd.DataFrame(rows), pd.DataFrame(gaps), lines


def by_setting(paired, axis: str, png: Callable, results=None, metric: str = "Dice") -> tuple[list[str], list[str]]:
    """setting_tables as report HTML: (conclusion sentences, section HTML with a forest plot), for
    the per-image `metric` that `paired` holds."""
    table, gaps, lines = setting_tables(paired, results)
    lines = [f"{metric}: {line}" for line in lines]
    a, others = paired.levels[0], paired.levels[1:]
    forest = table.assign(level=table["setting"] + (" | " + table["B"].astype(str) if len(others) > 1 else ""))
    if "seed_ci_low" in forest:  # plot the wider, runs-and-images interval where there is one
        forest = forest.assign(ci_low=forest["seed_ci_low"].fillna(forest["ci_low"]),
                               ci_high=forest["seed_ci_high"].fillna(forest["ci_high"]))
    parts = [f"<h2>Under which settings ({html.escape(axis)} within each setting): {metric}</h2>"
             f"<p>Each level of {html.escape(axis)} against <b>{html.escape(str(a))}</b>, using only the runs of one "
             f"setting of the other axes: mean paired difference of per-image test {metric} (averaged over seeds), "
             "95% CI over images, Wilcoxon p and, with two or more seeds per cell, the CI over runs and images "
             f"(seed_ci_low/high: a t-interval over run means below {FEW_RUNS} runs per cell). Verdict 'real' needs p "
             "&lt; 0.05 and both CIs to exclude 0, and the Holm-adjusted p (p_holm, over the family_size "
             "comparisons the report prints) below 0.05.</p>",
             table.to_html(index=False),
             png(plots.effect_forest(forest, str(a), title=f"{metric} difference within each setting"))]
    if len(gaps):
        parts += ["<h3>Does the gap change with the setting? (interaction)</h3><p>Per image: (B &minus; A in "
                  "<i>to</i>) minus (B &minus; A in <i>from</i>), each averaged over seeds; the CI over runs and "
                  "images resamples the runs of all four cells. A gap that changes means the answer depends on "
                  "the setting.</p>", gaps.to_html(index=False)]
    return lines, parts
