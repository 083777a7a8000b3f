"""Running a study: its MLflow parent run, the baseline trial, the workers (processes sharing the
storage), the identity check that keeps trials comparable, and the summary at the end."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import optuna

from harness.config.load import flatten, load_spec
from harness.config.sweeps import StudySpec
from harness.run import run_identity
from harness.sweeps.study.objective import baseline_params, make_objective
from harness.sweeps.study.storage import DONE, open_study, storage_for
from harness.sweeps.study.summary import summarise_study
from harness.tracking import mlflow as tracking
from harness.tracking.base import tag_differences


def run_study_worker(spec: StudySpec, base: Path, storage, worker: int, workers: int = 1) -> None:
    """Optimise until the study holds n_trials finished (complete or pruned) trials. `workers`: how
    many share the study (TPE samples for parallel workers when it is more than 1)."""
    study = open_study(spec, storage, worker, workers)
    parent = study.user_attrs["mlflow_parent_run_id"]
    experiment = study.user_attrs["mlflow_experiment"]
    callbacks = [optuna.study.MaxTrialsCallback(spec.n_trials, states=DONE)] if spec.n_trials else []
    objective, start = make_objective(spec, base, experiment, parent), time.monotonic()
    while not (spec.n_trials and sum(t.state in DONE for t in study.get_trials(deepcopy=False)) >= spec.n_trials):
        timeout = None if spec.timeout is None else max(0.0, spec.timeout - (time.monotonic() - start))
        try:
            study.optimize(objective, n_trials=spec.n_trials, timeout=timeout, callbacks=callbacks,
                           catch=(Exception,), gc_after_trial=True)
            return
        except ValueError:  # Optuna cannot tell a trial failed as stale meanwhile: go on with the next one
            if not objective.lost:
                raise
            objective.lost.clear()


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


def _enqueue_baseline(study: optuna.Study, spec: StudySpec, base: Path) -> None:
    """Trial 0 of a new study: the base spec as it is, so every study has its starting point scored."""
    if not spec.enqueue_baseline or study.trials:
        return
    params, outside = baseline_params(spec, base)
    if outside:
        print(f"baseline not enqueued: {', '.join(outside)} lies outside the search space", file=sys.stderr)
        return
    study.enqueue_trial(params, user_attrs={"baseline": True}, skip_if_exists=True)
    print(f"trial 0 is the baseline: {params}", flush=True)


def _parent_run(study: optuna.Study, spec: StudySpec, base: Path, spec_path: Path, identity: dict) -> str:
    """The study's MLflow parent run, made with the study; refuses a study whose trials trained
    differently (another precision or data)."""
    if "mlflow_parent_run_id" not in study.user_attrs:
        experiment = spec.tracking or load_spec(base).tracking
        params = {**flatten(spec.model_dump(mode="json")), "spec_path": str(spec_path)}
        parent = tracking.create_parent_run(experiment, spec.name, params)
        tracking.set_run_tags(parent, identity)
        study.set_user_attr("mlflow_parent_run_id", parent)
        study.set_user_attr("mlflow_experiment", experiment)
        study.set_user_attr("identity", identity)
    recorded = study.user_attrs.get("identity", {})
    if differ := tag_differences(recorded, identity):
        raise StudyMismatch(
            f"study '{spec.name}' cannot be continued here: its trials trained with {', '.join(differ)}, so the "
            "sampler and the pruner would compare trials across them (amp: auto is bf16 on one machine and "
            "float32 on another). Continue it where, and on the data, it began, or start a new study "
            "(name=<new name>).")
    return study.user_attrs["mlflow_parent_run_id"]


def run_study(spec: StudySpec, base: Path, spec_path: Path, *, workers: int = 1, storage_url: str | None = None,
              launch=None) -> optuna.Study:
    """Create or resume the study and its MLflow parent run, run the workers, then summarise: this
    process when `workers` is 1, else `launch(workers)` (harness.sweeps.launch.local_workers)."""
    if workers > 1 and launch is None:
        raise ValueError("more than one worker needs a launcher (harness.sweeps.launch.local_workers)")
    identity = study_identity(spec, base)  # reads the data: a bad file stops here, before a study is made
    storage = storage_for(spec, storage_url)
    study = open_study(spec, storage, workers=workers)  # created once here, before any worker starts
    parent = _parent_run(study, spec, base, spec_path, identity)
    _enqueue_baseline(study, spec, base)
    tracking.reopen_run(parent)
    try:  # every path ends the parent run: FINISHED, or KILLED/FAILED with the error raised
        if workers > 1:
            launch(workers)
        else:
            run_study_worker(spec, base, storage, 0)
        study = optuna.load_study(study_name=spec.name, storage=storage)
        close_failed_runs(study)
        summarise_study(study, spec, base, parent)
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
