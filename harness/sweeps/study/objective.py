"""A trial: the trial's experiment spec built from the sampled values, run through the shared loop
as an MLflow run nested under the study's parent run, and the objective values read from it."""

from __future__ import annotations

from pathlib import Path

import optuna

from harness.config.load import ExperimentSpec, flatten, load_spec
from harness.config.sweeps import StudySpec
from harness.engine.loop import FENCE, Superseded
from harness.run import RunResult, run_experiment
from harness.sweeps.study.storage import describe_sampler
from harness.tracking import mlflow as tracking
from harness.tracking.base import RunOptions, Tracker, open_run

# A trial keeps its best weights in best.pt but does not export the model to MLflow: torch.export
# took 4-5 s per trial (UNet, ResNet34-UNet), most of a GPU trial's fixed cost. The best trial's
# generated spec leaves it out, so re-running it logs the model. A study's `set` can turn it back on.
TRIAL_DEFAULTS = ["log_model=false"]
LATENCY = "model/latency_ms"


class Pruned(optuna.TrialPruned):
    """Ends the trial's MLflow run KILLED, tagged PRUNED (tracking honours these attributes)."""

    run_status = "KILLED"
    run_tags = {"trial.state": "PRUNED"}


def _suggest(trial: optuna.Trial, name: str, p):
    if p.type == "categorical":
        return trial.suggest_categorical(name, p.choices)
    if p.type == "int":
        return trial.suggest_int(name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
    return trial.suggest_float(name, p.low, p.high, step=p.step, log=p.log)


def baseline_params(spec: StudySpec, base: Path) -> tuple[dict, list[str]]:
    """The base spec's own values (after `set`) of the searched fields, to enqueue as trial 0, and
    a note for each that lies outside its search space (then nothing is enqueued)."""
    own = flatten(load_spec(base, TRIAL_DEFAULTS + spec.overrides({})).to_dict())
    params, outside = {}, []
    for name, p in spec.search_space.items():
        value = own[name]
        inside = value in p.choices if p.type == "categorical" else p.low <= value <= p.high
        params[name] = value
        if not inside:
            outside.append(f"{name}={value!r}")
    return params, outside


def _values(spec: StudySpec, result: RunResult, exp: ExperimentSpec) -> list[float]:
    """Each objective's value for a finished trial. Single objective: the metric's best epoch (as
    before). Several: epoch metrics at the run's best epoch (by val/dice), so that one trial's values
    describe one set of weights; model/* read from the run, model/latency_ms measured and logged."""
    if not spec.multi_objective:
        better = max if spec.direction == "maximize" else min
        return [better(h[spec.metric] for h in result.history)]
    at_best = result.history[result.best_epoch - 1]
    logged = tracking.run_metrics(result.run_id)
    values = []
    for name in spec.objectives:
        if name == LATENCY:
            from harness.tools.measure import inference_ms_per_image

            logged[name] = inference_ms_per_image(exp)
            tracking.log_run_metrics(result.run_id, {name: logged[name]})
        values.append(float(at_best[name] if name in at_best else logged[name]))
    return values


def make_objective(spec: StudySpec, base: Path, experiment: str, parent_run_id: str):
    """Objective: build the trial's experiment spec, run it, report the metric each epoch (single
    objective: the pruner reads it), return the objective value(s)."""

    def objective(trial: optuna.Trial):
        values = {k: _suggest(trial, k, p) for k, p in spec.search_space.items()}
        exp = load_spec(base, TRIAL_DEFAULTS + spec.overrides(values))
        exp.name = f"{spec.name}-trial-{trial.number:04d}"
        trial.set_user_attr("sampler", describe_sampler(trial.study.sampler))  # what this worker sampled with
        tags = {"optuna.study": spec.name, "optuna.trial": trial.number}
        made: list[Tracker] = []

        def make_tracker(params, run_tags):
            made.append(open_run(experiment, exp.name, params, {**run_tags, **tags},
                                 RunOptions(parent_run_id=parent_run_id, system_metrics=exp.log_system_metrics)))
            return made[-1]

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            try:
                report(epoch, metrics)
            except optuna.exceptions.UpdateFinishedTrialError:  # failed as stale since the epoch's fence check
                FENCE.check()  # raises Superseded: the run ends KILLED, tagged
                raise
            except optuna.exceptions.StorageInternalError:  # paused mid-report, its session ended by the server
                FENCE.check()  # failed as stale meanwhile: Superseded
                report(epoch, metrics)  # still this worker's (paused under grace_period): the server rolled it back

        def report(epoch: int, metrics: dict[str, float]) -> None:
            if epoch == 1:  # recorded early, so a trial whose worker is killed can still be traced
                trial.set_user_attr("mlflow_run_id", made[0].run_id)
            if spec.multi_objective:  # Optuna prunes single-objective studies only
                return
            trial.report(metrics[spec.metric], epoch)
            if trial.should_prune():
                raise Pruned(f"trial {trial.number} pruned at epoch {epoch} ({spec.metric}={metrics[spec.metric]:.4f})")

        state = "FAIL"
        FENCE.hold(lambda: trial_lost(trial))
        try:
            result = run_experiment(exp, make_tracker, on_epoch=on_epoch, resumable=False)  # a retry is a new trial
            state = "COMPLETE"
        except Pruned:
            state = "PRUNED"
            raise
        except Superseded as lost:  # failed as stale while this worker was away: its run ended KILLED, tagged
            objective.lost.add(trial.number)
            print(f"[trial {trial.number}] stopped: {lost}", flush=True)
            raise
        finally:
            FENCE.release()
            if made and made[0].run_id:
                if trial.number not in objective.lost:  # a trial failed as stale takes no more attributes
                    trial.set_user_attr("mlflow_run_id", made[0].run_id)
                tracking.set_run_tags(made[0].run_id, {"trial.state": state})
        found = _values(spec, result, exp)
        return found[0] if len(found) == 1 else found

    objective.lost = set()  # trials this worker lost (failed as stale while it was away)
    return objective


def trial_lost(trial: optuna.Trial) -> tuple[str, str] | None:
    """(who has the trial's work now, why) when `trial` is no longer RUNNING in the study: an RDB storage
    failed it as stale (no heartbeat for grace_period, e.g. its worker was suspended) and retried it as
    a new trial; None while it is still this worker's."""
    state = trial.study._storage.get_trial(trial._trial_id).state  # noqa: SLF001 (Optuna has no public reader)
    if state == optuna.trial.TrialState.RUNNING:
        return None
    retry = next((t.number for t in trial.study.get_trials(deepcopy=False)
                  if t.system_attrs.get("failed_trial") == trial.number), None)  # RetryFailedTrialCallback's mark
    by = f"trial {retry}" if retry is not None else "the study"
    return by, f"trial {trial.number} is {state.name} in the study (failed as stale); its work is {by}'s"
