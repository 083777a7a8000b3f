"""Optuna studies -> tidy DataFrames and figures. The one analysis module that imports optuna."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import optuna
import pandas as pd
import seaborn as sns

from analysis.runs import load_history


def study_storage(storage: str) -> object:
    """A URL (sqlite:///, postgresql://) or a journal file path."""
    if "://" in storage:
        return storage
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(Path(storage))))


def load_study(name: str, storage: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=study_storage(storage))


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: number, state, value (the first objective), params_*, duration_s,
    mlflow_run_id; a study with named objectives also has Optuna's value_<name> (one objective) or
    values_<name> (several) columns."""
    frame = study.trials_dataframe(attrs=("number", "state", "value", "params", "duration", "user_attrs"))
    if "value" not in frame:  # named objectives: Optuna names the columns after them
        frame["value"] = frame[[c for c in frame if c.startswith(("value_", "values_"))][0]]
    frame["duration_s"] = frame.pop("duration").dt.total_seconds()
    return frame.rename(columns={"user_attrs_mlflow_run_id": "mlflow_run_id"})


def state_counts(trials: pd.DataFrame) -> pd.Series:
    return trials["state"].value_counts()


def history_figure(trials: pd.DataFrame, direction: str = "maximize"):
    """Completed trials' values and the running best."""
    done = trials[trials.state == "COMPLETE"].sort_values("number")
    best = done["value"].cummax() if direction == "maximize" else done["value"].cummin()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.scatter(done["number"], done["value"], label="trial")
    ax.plot(done["number"], best, color="C1", label="best so far")
    ax.set(xlabel="trial", ylabel="objective", title="Optimisation history")
    ax.legend()
    fig.tight_layout()
    return fig


def importances(study: optuna.Study) -> pd.Series:
    """fANOVA parameter importances (needs at least two completed trials)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pd.Series(optuna.importance.get_param_importances(study), name="importance")


def pruned_vs_complete_curves(trials: pd.DataFrame, uri: str | None = None, metric: str = "val/dice"):
    """Per-epoch curves of every trial with an MLflow run, coloured by its final state."""
    linked = trials.dropna(subset=["mlflow_run_id"])
    history = load_history(list(linked.mlflow_run_id), uri, metrics=[metric])
    history = history.merge(linked[["mlflow_run_id", "state", "number"]], left_on="run_id", right_on="mlflow_run_id")
    fig, ax = plt.subplots(figsize=(7, 4))
    sns.lineplot(data=history, x="epoch", y="value", hue="state", units="number", estimator=None, marker="o", ax=ax)
    ax.set(ylabel=metric, title=f"{metric} per epoch, by trial state")
    fig.tight_layout()
    return fig
