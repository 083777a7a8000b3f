"""Optuna studies over experiment specs: the one package in harness that imports optuna.

Each trial is an ordinary experiment run (same loop, same MLflow record) nested under one parent
run per study. The parent holds the study's settings, a trials table, figures and the best trial,
which is also written as a ready-to-run experiment spec.

- storage.py: the storage (journal file or RDB with heartbeats), sampler, pruner, the study;
- objective.py: one trial (its spec, its run, its objective values) and the baseline trial;
- driver.py: the parent run, the workers, the identity check;
- summary.py: trials table, figures, Pareto front, the best trial and its spec.
"""

from harness.sweeps.study.driver import StudyMismatch, close_failed_runs, run_study, run_study_worker, study_identity
from harness.sweeps.study.objective import LATENCY, TRIAL_DEFAULTS, Pruned, baseline_params, make_objective
from harness.sweeps.study.storage import (
    DONE,
    PRUNERS,
    SAMPLERS,
    RetryStaleTrial,
    describe_sampler,
    open_study,
    pruner_for,
    sampler_for,
    storage_for,
)
from harness.sweeps.study.summary import best_trial, pareto_table, summarise_study, write_best_spec

__all__ = ["DONE", "LATENCY", "PRUNERS", "SAMPLERS", "TRIAL_DEFAULTS", "Pruned", "RetryStaleTrial", "StudyMismatch",
           "baseline_params", "best_trial", "close_failed_runs", "describe_sampler", "make_objective", "open_study",
           "pareto_table", "pruner_for", "run_study", "run_study_worker", "sampler_for", "storage_for",
           "study_identity", "summarise_study", "write_best_spec"]
