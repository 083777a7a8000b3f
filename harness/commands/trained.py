"""Commands on a trained run's model: `predict` (masks and overlays), `evaluate` (score it on another
labelled dataset), `register` (a version in the MLflow model registry)."""

from __future__ import annotations

from pathlib import Path

from harness.commands import STOP_NOW, Command, bad_input
from harness.config.catalog import ON_DISK

FINISHED_RUN = "MLflow run id of a finished training run"


def _predict_arguments(parser) -> None:
    parser.add_argument("--run", required=True, help="MLflow run id whose model to use")
    parser.add_argument("--input", required=True, type=Path, help="an image file or a folder of images")
    parser.add_argument("--output", required=True, type=Path,
                        help="folder for <stem>_mask.png and <stem>_overlay.png")
    parser.add_argument("--threshold", type=float, default=None,
                        help="default: the run's eval.threshold (with auto: the one it chose, metric eval/threshold)")


def _predict(args) -> int:
    from harness.tools.predict import list_inputs, predict_paths
    from harness.tools.trained import run_threshold, source_spec, trained_model

    try:
        inputs = list_inputs(args.input)
        spec = source_spec(args.run)
        model, origin = trained_model(args.run, spec)  # best.pt, or the logged model
    except (LookupError, FileNotFoundError) as err:
        return bad_input(err)
    threshold = args.threshold if args.threshold is not None else run_threshold(args.run, spec)
    written = predict_paths(model, inputs, args.output, size=spec.data.image_size, threshold=threshold,
                            num_classes=spec.data.num_classes)
    print(f"wrote {len(written)} mask(s) and overlay(s) to {args.output} (weights: {origin})")
    return 0


def _evaluate_arguments(parser) -> None:
    parser.add_argument("--run", required=True, help=FINISHED_RUN)
    parser.add_argument("--data", required=True,
                        help="dataset root (official Oxford-IIIT Pet layout, or a folder dataset)")
    parser.add_argument("--dataset", choices=ON_DISK, default=None, help="layout (default: the run's)")
    parser.add_argument("--split", choices=("test", "val", "train"), default="test",
                        help="which split (default test)")


def _evaluate(args) -> int:
    from harness.data import DataError
    from harness.tools.evaluate import evaluate_run

    try:
        result = evaluate_run(args.run, args.data, args.dataset, args.split)
    except (DataError, LookupError, FileNotFoundError) as err:
        return bad_input(err)
    if not result.skipped:
        print("  ".join(f"{k} {v:.4f}" for k, v in result.metrics.items()))
        print(f"evaluation run {result.run_id} FINISHED")
    return 0


def _register_arguments(parser) -> None:
    parser.add_argument("--run", required=True, help=FINISHED_RUN)
    parser.add_argument("--name", required=True, help="registered model name (created if new)")
    parser.add_argument("--alias", default=None, help="alias for the new version, e.g. champion (default: none)")


def _register(args) -> int:
    from harness.tools.register import register_run

    try:
        done = register_run(args.run, args.name, args.alias)
    except (LookupError, FileNotFoundError) as err:
        return bad_input(err)
    alias = f", alias {args.alias}" if args.alias else ""
    how = " (logged from best.pt first)" if done.logged_now else ""
    print(f"registered {args.name} version {done.version}{alias}: model {done.model_id}{how}")
    return 0


PREDICT = Command("write masks and overlays with a logged model", _predict_arguments, _predict, STOP_NOW)
EVALUATE = Command("score a trained run on another labelled dataset (an evaluation run)", _evaluate_arguments,
                   _evaluate, STOP_NOW,
                   description="Score a trained run's best weights (best.pt, or its logged model) on a split of "
                               "another labelled dataset, with the run's image size, foreground rule and classes, "
                               "and log an evaluation run (tag run.kind=evaluation) in <experiment>-evaluation. "
                               "The same run, data and split again is skipped.")
REGISTER = Command("register a finished run's model in the MLflow model registry", _register_arguments, _register,
                   STOP_NOW,
                   description="Make a finished run's model a new version of a registered model, and point an "
                               "alias at it (models:/<name>@<alias>). A run trained with log_model: false has its "
                               "best.pt logged as its model first.")
