"""Per-image test scores of a campaign, arranged for paired comparison: by the compared axis, by
the settings of the other axes and, when `data.fold` is varied, by fold.

Folds are not settings: two arms are compared over all folds together, and the intervals over runs
resample folds, then the seeds within each fold, then images (`analysis.stats.compare_arms` with
`groups`), so the split-to-split spread is counted, not averaged away.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from tqdm import tqdm

from analysis.results import METRICS
from analysis.runs import FOLD, load_per_image


def compare_axis(axes: list[str], requested: str | None = None) -> str:
    """The axis the paired comparison is about: `requested` when given (it must be one of the
    varied axes, else LookupError naming them), else model.arch when varied, else the first
    non-seed, non-fold axis."""
    varied = [a for a in axes if a != "seed"]
    if requested:
        if requested not in varied:
            raise LookupError(f"axis {requested!r} is not varied by this campaign; choose one of: {', '.join(varied)}")
        return requested
    if "model.arch" in varied:
        return "model.arch"
    rest = [a for a in varied if a != FOLD] or varied
    return rest[0] if rest else "model.arch"


def strata_of(axes: list[str], axis: str) -> list[str]:
    """The settings a comparison is made within: the varied axes other than `axis`, seed and fold."""
    return [a for a in axes if a not in ("seed", FOLD, axis)]


@dataclass
class Paired:
    """Per-image test scores (`metric`) of a campaign, split by the compared axis and the other axes' settings.

    wide: image x level, the score averaged over each level's runs (every setting); levels: the
    compared axis's values in matrix order; settings: labels of the combinations of the other
    varied axes ('augment=none'), in matrix order, [''] when there are none; cells: (setting, level) -> array
    (runs, images), columns in `wide`'s row order (what stats.compare_arms takes); groups: the same
    keys -> each row's fold (data.fold), only when folds are varied."""

    wide: pd.DataFrame
    levels: list
    settings: list[str]
    cells: dict
    groups: dict = field(default_factory=dict)
    metric: str = "dice"

    def arm(self, level) -> list[np.ndarray]:
        """One (runs, images) array per setting that every level has: a stratified arm."""
        return [self.cells[(s, level)] for s in self.complete_settings()]

    def arm_groups(self, level) -> list[np.ndarray] | None:
        """The folds of `arm(level)`'s rows, or None when folds are not varied."""
        return [self.groups[(s, level)] for s in self.complete_settings()] if self.groups else None

    def complete_settings(self) -> list[str]:
        return [s for s in self.settings if all((s, lvl) in self.cells for lvl in self.levels)]

    def compare(self, a, b) -> dict:
        """The keyword arguments of stats.compare_arms for level a against level b."""
        groups = (self.arm_groups(a) + self.arm_groups(b)) if self.groups else None
        return {"a": self.arm(a), "b": self.arm(b), "groups": groups}


def load_scores(runs: pd.DataFrame, uri: str | None) -> pd.DataFrame:
    """Every run's test_per_image.csv, stacked (one row per run and image)."""
    return pd.concat([load_per_image(r, uri) for r in tqdm(runs.run_id, desc="per-image test scores", unit="run",
                                                           leave=False, disable=None)], ignore_index=True)


def headline_metrics(scores: pd.DataFrame) -> list[str]:
    """The METRICS every run's per-image table has (NSD is absent from runs made before it existed)."""
    return [m for m in METRICS if m in scores and scores.groupby("run_id")[m].apply(lambda v: v.notna().all()).all()]


def paired_frames(runs: pd.DataFrame, axis: str, uri: str | None, strata: list[str] = (),
                  scores: pd.DataFrame | None = None, metric: str = "dice") -> Paired:
    """Split every run's per-image test `metric` (`scores`, else loaded) by `axis` and by `strata`,
    the other varied axes (seed and fold excluded), so that levels are compared within each setting.
    With `data.fold` varied, only the folds every level has are compared."""
    scores = load_scores(runs, uri) if scores is None else scores
    strata = [s for s in strata if s != FOLD]
    runs = compared_runs(runs, axis, strata)
    folds = FOLD in runs and runs[FOLD].nunique() > 1 and axis != FOLD
    per_image = scores.merge(runs[["run_id", axis, *strata]], on="run_id")
    per_image["setting"] = setting_labels(per_image, strata)
    levels = list(dict.fromkeys(runs[axis].dropna()))  # order of first run: the matrix's order
    settings = list(dict.fromkeys(setting_labels(runs, strata)))
    wide = per_image.pivot_table(index="name", columns=axis, values=metric, aggfunc="mean").dropna()
    cells, groups = {}, {}
    fold_of = runs.set_index("run_id")[FOLD] if folds else None
    for key, rows in per_image.groupby(["setting", axis], sort=False):
        table = rows.pivot_table(index="run_id", columns="name", values=metric).reindex(columns=wide.index)
        cells[key] = table.to_numpy()
        if folds:
            groups[key] = fold_of.reindex(table.index).to_numpy()
    return Paired(wide, levels, settings, cells, groups, metric)


def compared_runs(runs: pd.DataFrame, axis: str, strata: list[str]) -> pd.DataFrame:
    """The runs a comparison of `axis`'s levels uses: all of them, or with `data.fold` varied those
    of the folds every level has within their setting. A fold one arm lacks (a campaign stopped
    part-way) would compare that arm's split against the other's: folds differ."""
    strata = [s for s in strata if s != FOLD]
    if FOLD not in runs or axis == FOLD or runs[FOLD].isna().any():
        return runs
    label = setting_labels(runs, strata)
    levels_there = runs.groupby([label, runs[FOLD]])[axis].transform("nunique")
    return runs[levels_there == runs[axis].nunique()]


def setting_labels(frame: pd.DataFrame, strata: list[str]) -> pd.Series:
    """'augment=none, train.loss=bce' per row; '' when there are no other axes."""
    if not strata:
        return pd.Series("", index=frame.index)
    return frame[list(strata)].astype(str).apply(lambda r: ", ".join(f"{k}={v}" for k, v in r.items()), axis=1)
