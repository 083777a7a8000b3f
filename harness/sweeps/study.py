"""Optuna studies over experiment specs. The one module that imports optuna.

Each trial is an ordinary experiment run (same loop, same MLflow record) nested under one
parent run per study. The parent holds the study's settings, a trials table, figures and the
best value and params; the best trial is also written as a ready-to-run experiment spec.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import optuna
import yaml

from harness import paths
from harness.config.load import flatten, load_spec
from harness.config.sweeps import StudySpec
from harness.run import run_experiment, run_identity
from harness.tracking import mlflow as tracking
from harness.tracking.base import Tracker, open_run

DONE = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
# A trial keeps its best weights in best.pt but does not export the model to MLflow: torch.export
# took 4-5 s per trial (UNet, ResNet34-UNet), most of a GPU trial's fixed cost. The best trial's
# generated spec leaves it out, so re-running it logs the model. A study's `set` can turn it back on.
TRIAL_DEFAULTS = ["log_model=false"]


class Pruned(optuna.TrialPruned):
    """Ends the trial's MLflow run KILLED, tagged PRUNED (tracking honours these attributes)."""

    run_status = "KILLED"
    run_tags = {"trial.state": "PRUNED"}


# Optuna 4.9 renamed the callback that retries a trial whose heartbeat went stale (the old name
# warns, and goes in 6.0); pyproject allows optuna >= 4.2, which has only the old name.
RetryStaleTrial = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) \
    or optuna.storages.RetryFailedTrialCallback


def storage_for(spec: StudySpec, override: str | None = None):
    """Default: a journal file under mlruns/optuna/. RDB URLs get heartbeats and one retry."""
    url = override or spec.storage
    if not url:
        path = paths.journal(spec.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    if url.startswith(("sqlite", "postgresql", "mysql")):
        return optuna.storages.RDBStorage(
            url, heartbeat_interval=spec.heartbeat_interval, grace_period=spec.grace_period,
            failed_trial_callback=RetryStaleTrial(max_retry=1))
    raise ValueError(f"unsupported storage '{url}': use sqlite:///..., postgresql://... or leave it empty")


# Each catalog name (harness.config.catalog.SAMPLERS, PRUNERS) -> how to build it from the study spec.
SAMPLERS = {
    "tpe": lambda spec, seed: optuna.samplers.TPESampler(seed=seed, n_startup_trials=5),
    "random": lambda spec, seed: optuna.samplers.RandomSampler(seed=seed),
    "grid": lambda spec, seed: optuna.samplers.GridSampler({k: p.choices for k, p in spec.search_space.items()},
                                                           seed=seed),
}
# Trials report val metrics at steps 1, 2, ... (epochs); both pruners may first stop a trial at
# step `prune_after + 1`. Early val Dice is noisy and favours fast starters (high lr, no crops),
# so a study that compares slow-starting settings wants a larger prune_after.
PRUNERS = {
    "median": lambda spec: optuna.pruners.MedianPruner(n_startup_trials=spec.pruner_startup_trials,
                                                       n_warmup_steps=spec.prune_after + 1),
    "hyperband": lambda spec: optuna.pruners.HyperbandPruner(min_resource=spec.prune_after + 1),
    "none": lambda spec: optuna.pruners.NopPruner(),
}


def _sampler(spec: StudySpec, worker: int):
    return SAMPLERS[spec.sampler](spec, spec.seed + worker)  # parallel workers must not draw the same sequence


def _pruner(spec: StudySpec):
    return PRUNERS[spec.pruner](spec)


def open_study(spec: StudySpec, storage, worker: int = 0) -> optuna.Study:
    return optuna.create_study(study_name=spec.name, storage=storage, load_if_exists=True,
                               direction=spec.direction, sampler=_sampler(spec, worker), pruner=_pruner(spec))


def _suggest(trial: optuna.Trial, name: str, p):
    if p.type == "categorical":
        return trial.suggest_categorical(name, p.choices)
    if p.type == "int":
        return trial.suggest_int(name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
    return trial.suggest_float(name, p.low, p.high, step=p.step, log=p.log)


def make_objective(spec: StudySpec, base: Path, experiment: str, parent_run_id: str):
    """Objective: build the trial's experiment spec, run it, report the metric each epoch."""
    better = max if spec.direction == "maximize" else min

    def objective(trial: optuna.Trial) -> float:
        values = {k: _suggest(trial, k, p) for k, p in spec.search_space.items()}
        exp = load_spec(base, TRIAL_DEFAULTS + spec.overrides(values))
        exp.name = f"{spec.name}-trial-{trial.number:04d}"
        tags = {"optuna.study": spec.name, "optuna.trial": trial.number}
        made: list[Tracker] = []

        def make_tracker(params, run_tags):
            made.append(open_run(experiment, exp.name, params, {**run_tags, **tags},
                                 parent_run_id=parent_run_id, system_metrics=exp.log_system_metrics))
            return made[-1]

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            if epoch == 1:  # recorded early, so a trial whose worker is killed can still be traced
                trial.set_user_attr("mlflow_run_id", made[0].run_id)
            trial.report(metrics[spec.metric], epoch)
            if trial.should_prune():
                raise Pruned(f"trial {trial.number} pruned at epoch {epoch} ({spec.metric}={metrics[spec.metric]:.4f})")

        state = "FAIL"
        try:
            result = run_experiment(exp, make_tracker, on_epoch=on_epoch, resumable=False)  # a retry is a new trial
            state = "COMPLETE"
        except Pruned:
            state = "PRUNED"
            raise
        finally:
            if made and made[0].run_id:
                trial.set_user_attr("mlflow_run_id", made[0].run_id)
                tracking.set_run_tags(made[0].run_id, {"trial.state": state})
        return better(h[spec.metric] for h in result.history)

    return objective


def run_worker(spec: StudySpec, base: Path, storage, worker: int) -> None:
    """Optimise until the study holds n_trials finished (complete or pruned) trials."""
    study = open_study(spec, storage, worker)
    parent = study.user_attrs["mlflow_parent_run_id"]
    experiment = study.user_attrs["mlflow_experiment"]
    callbacks = [optuna.study.MaxTrialsCallback(spec.n_trials, states=DONE)] if spec.n_trials else []
    if spec.n_trials and sum(t.state in DONE for t in study.trials) >= spec.n_trials:
        return
    study.optimize(make_objective(spec, base, experiment, parent), n_trials=spec.n_trials, timeout=spec.timeout,
                   callbacks=callbacks, catch=(Exception,), gc_after_trial=True)


class StudyMismatch(ValueError):
    pass


def study_identity(spec: StudySpec, base: Path) -> dict[str, str]:
    """What every trial trains with on this machine, as run tags, unless a searched field decides it:
    the precision `amp` resolves to (amp.dtype) and the data's content (data.fingerprint)."""
    searched = set(spec.search_space)
    identity = run_identity(load_spec(base, spec.overrides({})))  # memoised: the trials do not read it again
    if {"train.amp", "train.device"} & searched:
        identity.pop("amp.dtype", None)
    if any(field.startswith("data.") for field in searched):
        identity.pop("data.fingerprint")
    return identity


def run_study(spec: StudySpec, base: Path, spec_path: Path, *, workers: int = 1, storage_url: str | None = None,
              worker_cmd: list[str] | None = None) -> optuna.Study:
    """Create or resume the study and its MLflow parent run, run the workers, then summarise."""
    identity = study_identity(spec, base)  # reads the data: a bad file stops here, before a study is made
    storage = storage_for(spec, storage_url)
    study = open_study(spec, storage)  # created once here, before any worker starts
    experiment = spec.tracking or load_spec(base).tracking
    if "mlflow_parent_run_id" not in study.user_attrs:
        params = {**flatten(spec.model_dump(mode="json")), "spec_path": str(spec_path)}
        parent = tracking.create_parent_run(experiment, spec.name, params)
        tracking.set_run_tags(parent, identity)
        study.set_user_attr("mlflow_parent_run_id", parent)
        study.set_user_attr("mlflow_experiment", experiment)
        study.set_user_attr("identity", identity)
    recorded = study.user_attrs.get("identity", {})
    if differ := [f"{k} {recorded[k]} (now {v})" for k, v in identity.items() if recorded.get(k, v) != v]:
        raise StudyMismatch(
            f"study '{spec.name}' cannot be continued here: its trials trained with {', '.join(differ)}, so the "
            "sampler and the pruner would compare trials across them (amp: auto is bf16 on one machine and "
            "float32 on another). Continue it where, and on the data, it began, or start a new study "
            "(name=<new name>).")
    parent = study.user_attrs["mlflow_parent_run_id"]
    tracking.reopen_run(parent)
    try:  # every path ends the parent run: FINISHED, or KILLED/FAILED with the error raised
        if workers > 1:
            procs = [subprocess.Popen([*worker_cmd, f"--worker-index={i}"]) for i in range(workers)]
            codes = [p.wait() for p in procs]
            if any(codes):
                print(f"warning: worker exit codes {codes}", file=sys.stderr)
        else:
            run_worker(spec, base, storage, 0)
        study = optuna.load_study(study_name=spec.name, storage=storage)
        close_failed_runs(study)
        summarise(study, spec, base, parent)
    except BaseException as err:
        tracking.set_run_tags(parent, {"error": f"{type(err).__name__}: {err}"[:5000]})
        tracking.end_run(parent, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    tracking.end_run(parent, "FINISHED")
    return study


def close_failed_runs(study: optuna.Study) -> None:
    """A worker killed mid-trial leaves its MLflow run RUNNING; once Optuna has failed the
    trial (heartbeat), end that run FAILED so no run stays RUNNING."""
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)):
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id and tracking.run_status(run_id) == "RUNNING":
            tracking.set_run_tags(run_id, {"trial.state": "FAIL", "error": "worker died (no heartbeat)"})
            tracking.end_run(run_id, "FAILED")


def summarise(study: optuna.Study, spec: StudySpec, base: Path, parent: str) -> Path | None:
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
        for path in _figures(study, out):
            tracking.log_run_artifact(parent, path, "figures")
    if S.COMPLETE not in states:
        print("no trial completed: no best spec written", file=sys.stderr)
        return None
    best = study.best_trial
    tracking.log_run_metrics(parent, {"best/value": best.value, "best/trial": best.number})
    tracking.set_run_tags(parent, {"best.trial": best.number,
                                   "best.mlflow_run_id": best.user_attrs.get("mlflow_run_id"),
                                   **{f"best.{k}": v for k, v in best.params.items()}})
    path = write_best_spec(spec, base, best)
    tracking.log_run_artifact(parent, path)
    print(f"best trial {best.number}: {spec.metric} = {best.value:.4f} with {best.params}\nwrote {path}")
    return path


def _figures(study: optuna.Study, out: Path) -> list[Path]:
    """Optimisation history, parameter importances, parallel coordinates (skipped when not computable)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    made = []
    for name, plot in (("optimization_history", ovm.plot_optimization_history),
                       ("param_importances", ovm.plot_param_importances),
                       ("parallel_coordinate", ovm.plot_parallel_coordinate)):
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
    header = (f"# Generated from study '{spec.name}': trial {best.number}, {spec.metric} = {best.value:.6f}.\n"
              f"# Reproduce: make experiment SPEC={path}\n")
    path.write_text(header + yaml.safe_dump(doc, sort_keys=False))
    load_spec(path)  # the generated spec must itself be valid
    return path
