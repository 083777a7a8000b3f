"""The end of a study: its parent run gets the trials table, figures (with several objectives, the
Pareto front as a figure and a table) and the best trial, which is also written as a ready-to-run
experiment spec."""

from __future__ import annotations

import csv
import os
import sys
import tempfile
import warnings
from pathlib import Path

import optuna
import yaml

from harness import paths
from harness.config.load import load_spec
from harness.config.sweeps import BestRule, StudySpec
from harness.tracking import mlflow as tracking


def summarise_study(study: optuna.Study, spec: StudySpec, base: Path, parent: str) -> Path | None:
    """Log the trials table, figures and best result to the parent run; write the best spec."""
    states = [t.state for t in study.trials]
    S = optuna.trial.TrialState
    tracking.log_run_metrics(parent, {"trials/complete": states.count(S.COMPLETE),
                                      "trials/pruned": states.count(S.PRUNED),
                                      "trials/failed": states.count(S.FAIL)})
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        study.trials_dataframe().to_csv(out / "trials.csv", index=False)
        tracking.log_run_artifact(parent, out / "trials.csv")
        if spec.multi_objective and S.COMPLETE in states:
            tracking.log_run_artifact(parent, pareto_table(study, spec, out / "pareto_front.csv"))
        for path in _figures(study, spec, out):
            tracking.log_run_artifact(parent, path, "figures")
    if S.COMPLETE not in states:
        print("no trial completed: no best spec written", file=sys.stderr)
        return None
    best = best_trial(study, spec)
    if best is None:
        print(f"no trial on the Pareto front meets best.limits {spec.best.limits}: no best spec written",
              file=sys.stderr)
        return None
    values = dict(zip(spec.objectives, best.values))
    tracking.log_run_metrics(parent, {"best/trial": best.number, "best/value": best.values[0],
                                      **{f"best/{k}": v for k, v in values.items()}})
    tracking.set_run_tags(parent, {"best.trial": best.number,
                                   "best.mlflow_run_id": best.user_attrs.get("mlflow_run_id"),
                                   **{f"best.{k}": v for k, v in best.params.items()}})
    path = write_best_spec(spec, base, best)
    tracking.log_run_artifact(parent, path)
    shown = ", ".join(f"{k} = {v:.4g}" for k, v in values.items())
    print(f"best trial {best.number}: {shown} with {best.params}\nwrote {path}")
    return path


def best_trial(study: optuna.Study, spec: StudySpec) -> optuna.trial.FrozenTrial | None:
    """Single objective: Optuna's best trial. Several: `spec.best`'s rule over the Pareto front
    (default: the front's best first objective); None when no front trial is within the limits."""
    if not spec.multi_objective:
        return study.best_trial
    rule = spec.best or BestRule(metric=spec.objectives[0])
    index = {name: i for i, name in enumerate(spec.objectives)}
    sign = {name: 1 if d == "maximize" else -1 for name, d in zip(spec.objectives, spec.objective_directions)}
    within = [t for t in study.best_trials
              if all(sign[k] * t.values[index[k]] >= sign[k] * limit for k, limit in rule.limits.items())]
    return max(within, key=lambda t: (sign[rule.metric] * t.values[index[rule.metric]], -t.number), default=None)


def pareto_table(study: optuna.Study, spec: StudySpec, path: Path) -> Path:
    """pareto_front.csv: one row per trial on the front, its objective values, params and MLflow run."""
    front = sorted(study.best_trials, key=lambda t: t.number)
    names = sorted({k for t in front for k in t.params})
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trial", *spec.objectives, *names, "mlflow_run_id"])
        for t in front:
            writer.writerow([t.number, *t.values, *(t.params.get(k) for k in names), t.user_attrs.get("mlflow_run_id")])
    return path


def _figures(study: optuna.Study, spec: StudySpec, out: Path) -> list[Path]:
    """Single objective: optimisation history, parameter importances, parallel coordinates. Several:
    the Pareto front (2 or 3 objectives). Each skipped when not computable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    plots = ((("pareto_front", lambda s: ovm.plot_pareto_front(s, target_names=spec.objectives)),)
             if spec.multi_objective else
             (("optimization_history", ovm.plot_optimization_history),
              ("param_importances", ovm.plot_param_importances),
              ("parallel_coordinate", ovm.plot_parallel_coordinate)))
    made = []
    for name, plot in plots:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = plot(study)
            fig = (ax if hasattr(ax, "figure") else ax.flat[0]).figure
            fig.set_size_inches(8, 5)
            fig.tight_layout()
            fig.savefig(out / f"{name}.png", dpi=90)
            plt.close(fig)
            made.append(out / f"{name}.png")
        except (ValueError, RuntimeError, ZeroDivisionError) as err:  # e.g. importances need 2+ complete trials
            print(f"figure {name} skipped: {err}", file=sys.stderr)
    return made


def _unflatten(flat: dict) -> dict:
    nested: dict = {}
    for key, value in flat.items():
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def write_best_spec(spec: StudySpec, base: Path, best: optuna.trial.FrozenTrial) -> Path:
    """experiments/generated/<study>-best.yaml: base spec + fixed overrides + best params."""
    paths.GENERATED.mkdir(parents=True, exist_ok=True)
    path = paths.GENERATED / f"{spec.name}-best.yaml"
    doc = {"base": os.path.relpath(base, path.parent.resolve()), "name": f"{spec.name}-best",
           **_unflatten({**spec.set, **best.params})}
    values = ", ".join(f"{k} = {v:.6f}" for k, v in zip(spec.objectives, best.values))
    rule = f" (best: {spec.best.metric} within {spec.best.limits})" if spec.multi_objective and spec.best else ""
    header = (f"# Generated from study '{spec.name}': trial {best.number}, {values}{rule}.\n"
              f"# Reproduce: make experiment SPEC={path}\n")
    path.write_text(header + yaml.safe_dump(doc, sort_keys=False))
    load_spec(path)  # the generated spec must itself be valid
    return path
