"""`study` (an Optuna study over a spec) and `campaign` (a matrix of runs). Each re-runs its own
command line, with the hidden --worker-index, for its local workers (harness.sweeps.launch)."""

from __future__ import annotations

import argparse
import sys

from harness.commands import AFTER_EPOCH, Command, bad_input, spec_arguments


def _at_least_one(text: str) -> int:
    """--workers: a whole number of at least 1 (argparse turns the ValueError into exit 2 naming it)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: give 1 or more workers")
    return value


def _worker_arguments(parser, workers_help: str, storage_help: str) -> None:
    parser.add_argument("--workers", type=_at_least_one, default=1, help=workers_help)
    parser.add_argument("--storage", default=None, help=storage_help)
    parser.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)


def _study_arguments(parser) -> None:
    spec_arguments(parser, "study YAML (base experiment spec + search_space)",
                   "study-level overrides, e.g. n_trials=4")
    _worker_arguments(parser, "worker processes sharing the study (default 1)",
                      "Optuna storage URL (default: journal file under mlruns/optuna/)")


def _study(args) -> int:
    from harness.config.sweeps import load_study_spec

    spec, base = load_study_spec(args.spec, args.overrides)
    from harness.data import DataError
    from harness.sweeps.launch import local_workers
    from harness.sweeps.study import StudyMismatch, run_study, run_study_worker, storage_for

    if args.worker_index is not None:
        run_study_worker(spec, base, storage_for(spec, args.storage), args.worker_index, args.workers)
        return 0
    try:
        study = run_study(spec, base, args.spec.resolve(), workers=args.workers, storage_url=args.storage,
                          launch=local_workers("study", args.spec, args.overrides, args.storage))
    except (StudyMismatch, DataError) as err:
        return bad_input(err)
    print(f"study '{spec.name}': {len(study.trials)} trials in storage")
    return 0


def _campaign_arguments(parser) -> None:
    spec_arguments(parser, "campaign YAML (base experiment spec + matrix)", "campaign-level overrides, e.g. name=x")
    parser.add_argument("--dry-run", action="store_true",
                        help="train nothing: list each cell as SKIPPED (finished), TO RESUME or TO RUN, with the "
                             "reason a finished cell runs again (another precision or other data)")
    _worker_arguments(parser, "worker processes claiming cells (default 1)",
                      "Optuna storage the workers claim cells through (default: a journal under mlruns/optuna/; "
                      "postgresql://... for workers on several machines)")
    parser.add_argument("--launcher", choices=("local", "slurm", "submitit-local"), default="local",
                        help="local processes, SLURM jobs (a submitit job array), or submitit's local executor")
    parser.add_argument("--slurm", default="",
                        help="submitit parameters, e.g. partition=gpu,gpus_per_node=1,timeout_min=240")
    parser.add_argument("--status", action="store_true",
                        help="show each cell: finished, claimed (by whom), waiting, failed")


def _campaign(args) -> int:
    from harness.config.sweeps import load_campaign_spec

    spec, base = load_campaign_spec(args.spec, args.overrides)
    from harness.sweeps.queue import StorageLost

    try:
        return _run_campaign(args, spec, base)
    except StorageLost as err:  # one line naming the storage; the same command goes on once it is back
        print(f"error: {err}", file=sys.stderr, flush=True)
        return err.exit_code


def _run_campaign(args, spec, base) -> int:
    from harness.sweeps import campaign
    from harness.sweeps.launch import local_workers, submitit_workers

    if args.worker_index is not None:
        campaign.run_campaign_worker(spec, base, args.storage, args.worker_index)
        return 0
    if args.status:
        campaign.print_status(spec, base, args.storage)
        return 0
    launch = None
    if args.launcher != "local":
        launch = submitit_workers(args.spec.resolve(), args.overrides, args.storage, args.launcher, args.slurm)
    elif args.workers > 1:
        launch = local_workers("campaign", args.spec, args.overrides, args.storage)
    results = campaign.run_campaign(spec, base, dry_run=args.dry_run, workers=args.workers,
                                    storage_url=args.storage, launch=launch)
    if not results and not args.dry_run:  # SLURM: the jobs run on their own
        print(f"make campaign-status SPEC={args.spec} shows their progress")
        return 0
    campaign.print_summary(spec, results)
    return 1 if any(r.status in ("FAILED", "KILLED") for r in results) else 0


STUDY = Command("run or resume an Optuna study over an experiment spec", _study_arguments, _study, AFTER_EPOCH,
                description="Run or resume an Optuna study: every trial is an MLflow run nested under the study's "
                            "parent run. Re-running the same command resumes up to n_trials.")
CAMPAIGN = Command("run every cell of a campaign matrix (finished cells are skipped)", _campaign_arguments,
                   _campaign, AFTER_EPOCH,
                   description="Run a matrix of experiments. Each cell is an ordinary run tagged with the campaign; "
                               "cells already FINISHED with the same spec hash, on the same data and in the "
                               "precision `amp` resolves to on this machine (tag amp.dtype), are skipped.")
