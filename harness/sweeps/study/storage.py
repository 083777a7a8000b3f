"""Where a study lives and how it samples: the storage (a journal file, or an RDB with heartbeats),
the sampler and pruner named in the study spec, and the study itself with its objectives named."""

from __future__ import annotations

import optuna

from harness import paths
from harness.config.sweeps import StudySpec
from harness.sweeps.queue import rdb_storage

DONE = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)

# Optuna 4.9 renamed the callback that retries a trial whose heartbeat went stale, and its RDBStorage
# argument (failed_trial_callback -> heartbeat_stale_trial_callback; the old ones warn, and go in
# 6.0); pyproject allows optuna >= 4.2, which has only the old names.
RetryStaleTrial = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) \
    or optuna.storages.RetryFailedTrialCallback
STALE_ARGUMENT = ("heartbeat_stale_trial_callback" if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback")
                  else "failed_trial_callback")


def storage_for(spec: StudySpec, override: str | None = None):
    """Default: a journal file under mlruns/optuna/. RDB URLs get heartbeats and one retry."""
    url = override or spec.storage
    if not url:
        path = paths.journal(spec.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    if url.startswith(("sqlite", "postgresql", "mysql")):
        return rdb_storage(url, heartbeat_interval=spec.heartbeat_interval, grace_period=spec.grace_period,
                           **{STALE_ARGUMENT: RetryStaleTrial(max_retry=1)})
    raise ValueError(f"unsupported storage '{url}': use sqlite:///..., postgresql://... or leave it empty")


def _tpe(spec: StudySpec, seed: int, workers: int) -> optuna.samplers.TPESampler:
    """TPE; with several workers sharing the study, multivariate (it models the searched fields
    jointly, so a worker's guess takes the others' results as a whole) and constant_liar (a trial
    still running counts as a bad result, so workers that ask at once do not all sample next to
    the same promising point). Optuna 5 defaults to both for single-objective studies; they are set
    here so that multi-objective studies (multivariate off by default) and Optuna 4 get them too."""
    parallel = {"multivariate": True, "constant_liar": True} if workers > 1 else {}
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=5, **parallel)


# Each catalog name (harness.config.catalog.SAMPLERS, PRUNERS) -> how to build it from the study spec.
SAMPLERS = {
    "tpe": _tpe,
    "random": lambda spec, seed, workers: optuna.samplers.RandomSampler(seed=seed),
    "grid": lambda spec, seed, workers: optuna.samplers.GridSampler(
        {k: p.choices for k, p in spec.search_space.items()}, seed=seed),
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


def describe_sampler(sampler) -> str:
    """'TPESampler(multivariate, constant_liar)': the sampler class and the parallel settings it uses."""
    flags = [name for name in ("multivariate", "constant_liar") if getattr(sampler, f"_{name}", False)]
    return f"{type(sampler).__name__}({', '.join(flags)})"


def sampler_for(spec: StudySpec, worker: int = 0, workers: int = 1):
    return SAMPLERS[spec.sampler](spec, spec.seed + worker, workers)  # workers must not draw the same sequence


def pruner_for(spec: StudySpec):
    return PRUNERS[spec.pruner](spec)


def open_study(spec: StudySpec, storage, worker: int = 0, workers: int = 1) -> optuna.Study:
    """Create or load the study; its objectives carry their metric names (optuna-dashboard and
    trials.csv show val/dice, not 'Objective 0')."""
    study = optuna.create_study(study_name=spec.name, storage=storage, load_if_exists=True,
                                directions=spec.objective_directions, sampler=sampler_for(spec, worker, workers),
                                pruner=pruner_for(spec))
    if study.metric_names != spec.objectives:
        study.set_metric_names(spec.objectives)
    return study
