"""Report sections that appear only when a campaign has the data for them: worst-k images,
the BCE vs BCEWithLogits comparison (train.loss axis), the augmentation ablation (augment axis)
and the compared axis within each setting of the others ('under which settings').

Each section is computed here from typed results (`analysis.stats`) and rendered by its template in
`analysis/templates/sections/`; figures go through `png` (render.figure in the report).
"""

from __future__ import annotations

from typing import Callable

import pandas as pd

from analysis import plots, render
from analysis.results import Comparison, SettingLine
from analysis.runs import FOLD, campaign_list, load_campaign, load_history, load_per_image, load_predictions
from analysis.stats import adjust_family, compare_arms, compare_gaps, summarize_arm

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
        return [render.fragment("sections/worst.html.j2", available=False)]
    dice = {lvl: load_per_image(row.run_id, uri).set_index("name")["dice"] for lvl, row in chosen.items()}
    first = next(iter(chosen.values()))
    which = ", ".join(f"{'fold' if key == FOLD else key} {int(first[key])}" for key in _replicate_keys(runs))
    grids = []
    for lvl in levels:
        ref = preds[lvl]
        rows = ref["worst"][:WORST_K]
        names = [ref["names"][i] for i in rows]
        by_arm, scores = {}, {}
        for other, p in preds.items():
            index = {n: i for i, n in enumerate(p["names"])}
            by_arm[str(other)] = p["pred"][[index[n] for n in names]]
            scores[str(other)] = [float(dice[other][n]) for n in names]
        grids.append((lvl, png(plots.worst_k_grid(ref["worst_images"][:WORST_K], ref["truth"][rows], by_arm, names,
                                                  scores))))
    return [render.fragment("sections/worst.html.j2", available=True, axis=axis, which=which.capitalize(), k=WORST_K,
                            grids=grids)]


def _fmt_ci(values) -> str:
    """An arm's runs as 'mean [low, high]': the one interval per arm (stats.summarize_arm)."""
    return summarize_arm(values).text()


def loss_stability(runs: pd.DataFrame, campaign: str | list[str] | None, uri: str | None, png: Callable) -> list[str]:
    """BCE on sigmoid vs BCEWithLogits: final Dice, and how each behaved under autocast."""
    failed = []  # per campaign: a pooled campaign without failures must not hide another's
    for name in campaign_list(campaign):
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
    figure = png(plots.learning_curves(loss.assign(metric="train/loss"), arm="loss", metric="train/loss"))
    return [render.fragment("sections/loss.html.j2", table=render.html_table(pd.DataFrame(rows), index=False),
                            figure=figure)]


def ablation(runs: pd.DataFrame, axis: str, paired, png: Callable) -> list[str]:
    """Each level against the reference ('none' when present): paired per-image differences of
    test Dice. paired: analysis.paired.Paired of `axis`."""
    levels = paired.levels
    reference = "none" if "none" in levels else levels[0]
    levels = [level for level in levels if level != reference]
    compared = [compare_arms(**paired.compare(reference, level), improvement=True) for level in levels]
    results = dict(zip(levels, adjust_family(compared)))  # one family
    rows = [{"level": level, **_row(r), "test/dice (runs)": _fmt_ci(runs.loc[runs[axis] == level, "test/dice"])}
            for level, r in results.items()]
    if not rows:
        return []
    table = pd.DataFrame(rows).sort_values("mean_diff", ascending=False)
    return [render.fragment("sections/ablation.html.j2", axis=axis, reference=reference,
                            reference_dice=_fmt_ci(runs.loc[runs[axis] == reference, "test/dice"]),
                            table=render.html_table(table, index=False),
                            figure=png(plots.effect_forest(table, str(reference))))]


def rounded(result: Comparison, method: bool = False) -> dict:
    """A comparison's table columns (Comparison.row), floats to 4 significant figures (p-values stay
    non-zero)."""
    return {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in result.row(method).items()}


def _row(result: Comparison, **keys) -> dict:
    return {**keys, **rounded(result), "verdict": result.verdict}


def setting_results(paired, margin: float | None = None) -> tuple[list[SettingLine], list[SettingLine]]:
    """Under which settings, computed: (within, gaps). within: each level of the compared axis against
    the first, using only the runs of one setting of the other axes; gaps: whether that gap changes
    from the first setting to each other one (interaction). paired: analysis.paired.Paired; margin:
    the equivalence margin of the comparisons within settings, if any."""
    settings, (a, *others) = paired.complete_settings(), paired.levels
    cells, within, gaps = paired.cells, [], []

    def folds(*keys):  # each cell's folds, when runs come in folds (hierarchical intervals)
        return [paired.groups[k] for k in keys] if paired.groups else None

    for b in others:
        within += [SettingLine(compare_arms(cells[(s, a)], cells[(s, b)], groups=folds((s, a), (s, b)), margin=margin,
                                            improvement=True)
                               .labelled(paired.metric, a, b), s) for s in settings]
        first = settings[0]
        gaps += [SettingLine(compare_gaps(cells[(first, a)], cells[(first, b)], cells[(s, a)], cells[(s, b)],
                                          groups=folds((first, a), (first, b), (s, a), (s, b)))
                             .labelled(paired.metric, a, b), s, first) for s in settings[1:]]
    return within, gaps


def setting_tables(paired, results=None) -> tuple[pd.DataFrame, pd.DataFrame, list[SettingLine]]:
    """setting_results (computed here unless given, e.g. after `adjust_family`) as (within table,
    gaps table, the sentences in the order they are printed: each B, its settings, then its gaps)."""
    within, gap_results = results if results is not None else setting_results(paired)
    cells, rows, gaps, lines = paired.cells, [], [], []
    for b in paired.levels[1:]:
        for line in (w for w in within if w.comparison.arms[1] == b):
            a = line.comparison.arms[0]
            counts = {"n runs A": len(cells[(line.setting, a)]), "n runs B": len(cells[(line.setting, b)])}
            rows.append(_row(line.comparison, setting=line.setting, A=a, B=b, **counts))
            lines.append(line)
        for line in (x for x in gap_results if x.comparison.arms[1] == b):
            gaps.append(_row(line.comparison, B=b, **{"from": line.setting_from, "to": line.setting}))
            lines.append(line)
    return pd.DataFrame(rows), pd.DataFrame(gaps), lines


def by_setting(paired, axis: str, png: Callable, results=None, metric: str = "Dice") -> tuple[list[str], list[str]]:
    """setting_tables as report HTML: (conclusion sentences, section HTML with a forest plot), for
    the per-image `metric` (its name) that `paired` holds."""
    table, gaps, lines = setting_tables(paired, results)
    a, others = paired.levels[0], paired.levels[1:]
    forest = table.assign(level=table["setting"] + (" | " + table["B"].astype(str) if len(others) > 1 else ""))
    # plot each comparison's widest interval: over runs and images where runs are counted, else over images
    widest = [line.comparison.confidence_interval() for line in lines if not line.setting_from]
    forest = forest.assign(ci_low=[ci.low for ci in widest], ci_high=[ci.high for ci in widest])
    figure = png(plots.effect_forest(forest, str(a), title=f"{metric} difference within each setting"))
    part = render.fragment("sections/by_setting.html.j2", axis=axis, metric=metric, reference=a,
                           table=render.html_table(table, index=False), figure=figure,
                           gaps=render.html_table(gaps, index=False) if len(gaps) else None)
    return [line.html() for line in lines], [part]
