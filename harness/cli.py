"""Command line: `python -m harness experiment|validate|study|campaign|audit|evaluate|predict|models`.

Exit status: 0 ok, 1 run failed, 2 bad input (spec, data, arguments), 130 interrupted.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from harness import paths
from harness.config.catalog import ON_DISK
from harness.config.load import SpecError, load_spec

EXAMPLES = """examples:
  python -m harness experiment experiments/quickstart.yaml
  python -m harness experiment experiments/unet.yaml data.root=../shared/data/oxford-pet-mini train.epochs=3
  python -m harness validate experiments/resnet34_unet.yaml train.lr=3e-4
  python -m harness audit ../shared/data/oxford-pet-128 --json audit.json
  python -m harness evaluate --run <run id> --data ../shared/data/oxford-pet-128
  python -m harness predict --run <run id> --input photo.jpg --output predictions/
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harness", description="Segmentation experiments tracked in MLflow.",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (("experiment", "train and test one spec, logging a run to MLflow; re-running the same "
                                      "command after a crash resumes the unfinished run from its last checkpoint "
                                      "(when it began in the same precision and on the same data)"),
                       ("validate", "check a spec (with overrides) and print the resolved YAML")):
        s = sub.add_parser(name, help=text, description=text)
        s.add_argument("spec", type=Path, help="experiment YAML (may name a base: spec)")
        s.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                       help="dotted overrides applied after the file, e.g. train.lr=3e-4 data.image_size=96")
        if name == "experiment":
            s.add_argument("--restart", action="store_true",
                           help="start a new run even if an unfinished run of the same spec could be resumed")
    s = sub.add_parser("study", help="run or resume an Optuna study over an experiment spec",
                       description="Run or resume an Optuna study: every trial is an MLflow run nested under "
                                   "the study's parent run. Re-running the same command resumes up to n_trials.")
    s.add_argument("spec", type=Path, help="study YAML (base experiment spec + search_space)")
    s.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="study-level overrides, e.g. n_trials=4")
    s.add_argument("--workers", type=int, default=1, help="worker processes sharing the study (default 1)")
    s.add_argument("--storage", default=None, help="Optuna storage URL (default: journal file under mlruns/optuna/)")
    s.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    s = sub.add_parser("campaign", help="run every cell of a campaign matrix (finished cells are skipped)",
                       description="Run a matrix of experiments. Each cell is an ordinary run tagged with the "
                                   "campaign; cells already FINISHED with the same spec hash, on the same data "
                                   "and in the precision `amp` resolves to on this machine (tag amp.dtype), are "
                                   "skipped.")
    s.add_argument("spec", type=Path, help="campaign YAML (base experiment spec + matrix)")
    s.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="campaign-level overrides, e.g. name=x")
    s.add_argument("--dry-run", action="store_true",
                   help="train nothing: list each cell as SKIPPED (finished), TO RESUME or TO RUN, with the reason "
                        "a finished cell runs again (another precision or other data)")
    s.add_argument("--workers", type=int, default=1, help="worker processes claiming cells (default 1)")
    s.add_argument("--storage", default=None, help="Optuna storage the workers claim cells through (default: a "
                   "journal under mlruns/optuna/; postgresql://... for workers on several machines)")
    s.add_argument("--launcher", choices=("local", "slurm", "submitit-local"), default="local",
                   help="local processes, SLURM jobs (a submitit job array), or submitit's local executor")
    s.add_argument("--slurm", default="",
                   help="submitit parameters, e.g. partition=gpu,gpus_per_node=1,timeout_min=240")
    s.add_argument("--status", action="store_true", help="show each cell: finished, claimed (by whom), waiting, failed")
    s.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    s = sub.add_parser("predict", help="write masks and overlays with a logged model")
    s.add_argument("--run", required=True, help="MLflow run id whose model to use")
    s.add_argument("--input", required=True, type=Path, help="an image file or a folder of images")
    s.add_argument("--output", required=True, type=Path, help="folder for <stem>_mask.png and <stem>_overlay.png")
    s.add_argument("--threshold", type=float, default=None,
                   help="default: the run's eval.threshold (with auto: the one it chose, metric eval/threshold)")
    s = sub.add_parser("evaluate", help="score a trained run on another labelled dataset (an evaluation run)",
                       description="Score a trained run's best weights (best.pt, or its logged model) on a split of "
                                   "another labelled dataset, with the run's image size, foreground rule and classes, "
                                   "and log an evaluation run (tag run.kind=evaluation) in <experiment>-evaluation. "
                                   "The same run, data and split again is skipped.")
    s.add_argument("--run", required=True, help="MLflow run id of a finished training run")
    s.add_argument("--data", required=True, help="dataset root (official Oxford-IIIT Pet layout, or a folder dataset)")
    s.add_argument("--dataset", choices=ON_DISK, default=None, help="layout (default: the run's)")
    s.add_argument("--split", choices=("test", "val", "train"), default="test", help="which split (default test)")
    s = sub.add_parser("register", help="register a finished run's model in the MLflow model registry",
                       description="Make a finished run's model a new version of a registered model, and point an "
                                   "alias at it (models:/<name>@<alias>). A run trained with log_model: false has "
                                   "its best.pt logged as its model first.")
    s.add_argument("--run", required=True, help="MLflow run id of a finished training run")
    s.add_argument("--name", required=True, help="registered model name (created if new)")
    s.add_argument("--alias", default=None, help="alias for the new version, e.g. champion (default: none)")
    s = sub.add_parser("audit", help="check a dataset: unusable files, empty masks, near-duplicates across splits",
                       description="Audit a dataset folder (decoding it into the cache if needed) and print what "
                                   "is wrong with it. Exit 0 when every file is usable, 1 when some are not, "
                                   "2 when the folder cannot be read at all.")
    s.add_argument("root", type=Path, help="dataset folder (official Oxford-IIIT Pet layout, or images/ + masks/)")
    s.add_argument("--dataset", choices=ON_DISK, default=None,
                   help="layout (default: oxford_pet if annotations/trimaps exists, else folder)")
    s.add_argument("--image-size", type=int, default=128, help="decode size, as in data.image_size (default 128)")
    s.add_argument("--foreground", choices=("not_background", "pet_only"), default="not_background",
                   help="foreground rule used to find empty masks")
    s.add_argument("--cache-dir", default=str(paths.CACHE), help=f"dataset cache (default {paths.CACHE}); '' for none")
    s.add_argument("--json", type=Path, default=None, help="also write the full result as JSON here")
    s.add_argument("--limit", type=int, default=20, help="examples printed per finding (default 20)")
    sub.add_parser("models", help="list registered model names")
    s = sub.add_parser("links", help="print each experiment's runs-table link in the MLflow UI")
    s.add_argument("--url", default="http://127.0.0.1:5000", help="where the UI serves (default %(default)s)")
    return p


def _terminate(signum, frame):
    """First SIGINT/SIGTERM: finish the epoch, write its checkpoint, then stop (run KILLED).
    A second one stops at once; the run resumes from the last completed epoch either way."""
    from harness.engine.loop import STOP

    if signum == signal.SIGINT and "harness.run" not in sys.modules:
        raise KeyboardInterrupt("interrupted")
    if STOP.requested:
        raise KeyboardInterrupt(f"signal {signum} (second): stopping now")
    STOP.requested = signal.Signals(signum).name
    print(f"\n{signal.Signals(signum).name}: stopping after this epoch's checkpoint "
          f"(send it again to stop now)", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    try:
        return _dispatch(args)
    except SpecError as err:
        print(f"spec error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the run was marked KILLED", file=sys.stderr)
        return 130


def _dispatch(args) -> int:
    if args.command == "models":
        from harness.build import list_models
        print("\n".join(list_models()))
        return 0
    if args.command == "links":
        from harness.tracking.mlflow import runs_table_links
        for name, url in runs_table_links(args.url):
            print(f"  {name:<32} {url}")
        return 0
    if args.command == "validate":
        import yaml
        spec = load_spec(args.spec, args.overrides)
        print(yaml.safe_dump(spec.to_dict(), sort_keys=False), end="")
        print(f"# spec hash {spec.spec_hash()}", file=sys.stderr)
        return 0
    if args.command == "experiment":
        return _experiment(args)
    if args.command == "study":
        return _study(args)
    if args.command == "campaign":
        return _campaign(args)
    if args.command == "audit":
        return _audit(args)
    if args.command == "evaluate":
        return _evaluate(args)
    if args.command == "register":
        return _register(args)
    return _predict(args)


def _register(args) -> int:
    from harness.tools.register import register_run

    try:
        done = register_run(args.run, args.name, args.alias)
    except (LookupError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    alias = f", alias {args.alias}" if args.alias else ""
    how = " (logged from best.pt first)" if done.logged_now else ""
    print(f"registered {args.name} version {done.version}{alias}: model {done.model_id}{how}")
    return 0


def _evaluate(args) -> int:
    from harness.data import DataError
    from harness.tools.evaluate import evaluate_run

    try:
        result = evaluate_run(args.run, args.data, args.dataset, args.split)
    except (DataError, LookupError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not result.skipped:
        print("  ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()))
        print(f"evaluation run {result.run_id} FINISHED")
    return 0


def _audit(args) -> int:
    import json

    from harness.data import DataError, build_data
    from harness.data.audit import format_audit

    kind = args.dataset or ("oxford_pet" if (args.root / "annotations" / "trimaps").is_dir() else "folder")
    try:
        data = build_data(kind, root=str(args.root), image_size=args.image_size, foreground=args.foreground,
                          on_bad="skip", cache_dir=str(Path(args.cache_dir).resolve()) if args.cache_dir else None,
                          require_splits=False)  # a folder whose files are all unusable is reported, not an error
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.root} ({kind}, {args.image_size}px, foreground={args.foreground}, fingerprint {data.fingerprint})")
    print(format_audit(data.audit, args.limit))
    if args.json:
        args.json.write_text(json.dumps(data.audit, indent=1))
        print(f"wrote {args.json}")
    return 1 if data.audit["counts"]["problems"] else 0


def _experiment(args) -> int:
    spec = load_spec(args.spec, args.overrides)  # validate before importing torch-heavy modules
    from harness.data import DataError
    from harness.engine import distributed
    from harness.models import WeightsUnavailable
    from harness.run import run_experiment
    from harness.tracking.base import ResumeMismatch, open_run
    from harness.tracking.mlflow import default_tracking_uri

    try:
        resume = None if args.restart else _resumable(spec)

        def make_tracker(params, tags):
            return open_run(spec.tracking, spec.name, params, tags, run_id=resume,
                            system_metrics=spec.log_system_metrics)

        result = run_experiment(spec, make_tracker)
    except (DataError, WeightsUnavailable, ResumeMismatch) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
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


def _study(args) -> int:
    from harness.config.sweeps import load_study_spec

    spec, base = load_study_spec(args.spec, args.overrides)
    from harness.data import DataError
    from harness.sweeps.study import StudyMismatch, run_study, run_worker, storage_for

    if args.worker_index is not None:
        run_worker(spec, base, storage_for(spec, args.storage), args.worker_index, args.workers)
        return 0
    cmd = [sys.executable, "-m", "harness", "study", str(args.spec), *args.overrides, f"--workers={args.workers}"]
    if args.storage:
        cmd += ["--storage", args.storage]
    try:
        study = run_study(spec, base, args.spec.resolve(), workers=args.workers, storage_url=args.storage,
                          worker_cmd=cmd)
    except (StudyMismatch, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"study '{spec.name}': {len(study.trials)} trials in storage")
    return 0


def _campaign(args) -> int:
    from harness.config.sweeps import load_campaign_spec

    spec, base = load_campaign_spec(args.spec, args.overrides)
    from harness.sweeps import campaign

    if args.worker_index is not None:
        campaign.run_worker(spec, base, args.storage, args.worker_index)
        return 0
    if args.status:
        campaign.print_status(spec, base, args.storage)
        return 0
    storage = ["--storage", args.storage] if args.storage else []
    launch = None
    if args.launcher != "local":
        from harness.sweeps.launch import submitit_workers
        launch = submitit_workers(args.spec.resolve(), args.overrides, args.storage, args.launcher, args.slurm)
    elif args.workers > 1:
        launch = campaign.local_processes([sys.executable, "-m", "harness", "campaign", str(args.spec),
                                           *args.overrides, *storage])
    results = campaign.run_campaign(spec, base, dry_run=args.dry_run, workers=args.workers,
                                    storage_url=args.storage, launch=launch)
    if not results and not args.dry_run:  # SLURM: the jobs run on their own
        print(f"make campaign-status SPEC={args.spec} shows their progress")
        return 0
    campaign.print_summary(spec, results)
    return 1 if any(r.status == "FAILED" for r in results) else 0


def _predict(args) -> int:
    from harness.tools.predict import list_inputs, predict_paths
    from harness.tools.trained import run_threshold, source_spec, trained_model

    try:
        inputs = list_inputs(args.input)
        spec = source_spec(args.run)
        model, origin = trained_model(args.run, spec)  # best.pt, or the logged model
    except (LookupError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    threshold = args.threshold if args.threshold is not None else run_threshold(args.run, spec)
    written = predict_paths(model, inputs, args.output, size=spec.data.image_size, threshold=threshold,
                            num_classes=spec.data.num_classes)
    print(f"wrote {len(written)} mask(s) and overlay(s) to {args.output} (weights: {origin})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
