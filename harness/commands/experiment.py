"""`experiment` (train and test one spec, resuming its unfinished run) and `validate` (check a spec)."""

from __future__ import annotations

import sys

from harness import paths
from harness.commands import AFTER_EPOCH, STOP_NOW, Command, bad_input, spec_arguments
from harness.config.load import load_spec

OVERRIDES = "dotted overrides applied after the file, e.g. train.lr=3e-4 data.image_size=96"


def _experiment_arguments(parser) -> None:
    spec_arguments(parser, "experiment YAML (may name a base: spec)", OVERRIDES)
    parser.add_argument("--restart", action="store_true",
                        help="start a new run even if an unfinished run of the same spec could be resumed")


def _experiment(args) -> int:
    spec = load_spec(args.spec, args.overrides)  # validate before importing torch-heavy modules
    from harness.data import DataError
    from harness.engine import distributed
    from harness.models import WeightsUnavailable
    from harness.run import run_experiment
    from harness.tracking.base import ResumeMismatch, RunOptions, open_run
    from harness.tracking.mlflow import default_tracking_uri

    try:
        resume = None if args.restart else _resumable(spec)

        def make_tracker(params, tags):
            return open_run(spec.tracking, spec.name, params, tags,
                            RunOptions(run_id=resume, system_metrics=spec.log_system_metrics))

        result = run_experiment(spec, make_tracker)
    except (DataError, WeightsUnavailable, ResumeMismatch) as err:
        return bad_input(err)
    except Exception as err:  # the tracker has already marked the run FAILED with its traceback
        print(f"run failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    finally:
        distributed.shutdown()
    if result.run_id != "none":  # under torchrun, ranks other than 0 have no run
        print(f"run {result.run_id} FINISHED in experiment '{spec.tracking}' ({default_tracking_uri()})")
    return 0


def _resumable(spec) -> str | None:
    """The unfinished run of this spec to resume: one that trained in the precision and on the data
    it would train with here (`run_identity`)."""
    from harness.run import run_identity
    from harness.tracking.store import pick_resumable

    if resume := pick_resumable(spec.tracking, spec.spec_hash(), paths.CHECKPOINTS, run_identity(spec)):
        print(f"resuming unfinished run {resume} of this spec (use --restart to start over)", flush=True)
    return resume


def _validate(args) -> int:
    import yaml

    spec = load_spec(args.spec, args.overrides)
    print(yaml.safe_dump(spec.to_dict(), sort_keys=False), end="")
    print(f"# spec hash {spec.spec_hash()}", file=sys.stderr)
    return 0


_TRAIN = ("train and test one spec, logging a run to MLflow; re-running the same command after a crash resumes the "
          "unfinished run from its last checkpoint (when it began in the same precision and on the same data)")
_CHECK = "check a spec (with overrides) and print the resolved YAML"
EXPERIMENT = Command(_TRAIN, _experiment_arguments, _experiment, AFTER_EPOCH, description=_TRAIN)
VALIDATE = Command(_CHECK, lambda parser: spec_arguments(parser, "experiment YAML (may name a base: spec)", OVERRIDES),
                   _validate, STOP_NOW, description=_CHECK)
