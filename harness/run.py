"""Run one experiment spec end to end: read the data, build, resume, train, test the best weights,
leave the artifacts.

This is the only engine-side module that reads the whole spec; the loop (`harness.engine.loop`)
and the components below it take plain arguments. Everything that can fail on bad input (data,
model build) happens before the MLflow run is created, so a bad input leaves no half-made run.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from harness import outputs, paths
from harness.build import build_parts, dtype_name, planned_precision, seed_everything, select_device, spec_data
from harness.config.catalog import KNOBS
from harness.config.load import ExperimentSpec, flatten
from harness.engine import checkpoint, distributed
from harness.engine.loop import FENCE, EpochCallback, LoopSettings, LoopState, Parts, train
from harness.engine.step import choose_threshold
from harness.engine.stored_size import score_split
from harness.metrics import per_image_scores
from harness.tracking.base import NullTracker
from harness.tracking.provenance import environment, git_state


@dataclass
class RunResult:
    run_id: str
    history: list[dict[str, float]]
    test: dict[str, float]
    best_epoch: int
    best_val_dice: float


def run_identity(spec: ExperimentSpec) -> dict[str, str]:
    """What a run of `spec` trains with here beyond the spec, as the tags it will carry: the data's
    content (data.fingerprint) and the precision `amp` resolves to on this machine (amp.dtype; absent
    when the device is). An earlier run counts as this spec's only if it has the same
    (harness.tracking.base.RUN_IDENTITY_TAGS). The data is read through the per-process memo, so the run that
    follows does not read it again."""
    identity = {"data.fingerprint": spec_data(spec).fingerprint}
    if precision := planned_precision(spec.train.amp, spec.train.device):
        identity["amp.dtype"] = precision
    return identity


def run_experiment(spec: ExperimentSpec, make_tracker, *, checkpoint_root: Path = paths.CHECKPOINTS,
                   on_epoch: EpochCallback | None = None, resumable: bool = True) -> RunResult:
    """Train and test `spec`. `make_tracker(params, tags)` returns a context-managed Tracker.

    If the tracker's run already has a checkpoint (a resumed run), training continues from it.
    `resumable=False` (Optuna trials, which are retried as new trials, never resumed) writes
    only best.pt: no per-epoch last.pt with the optimizer state. Once the run has finished, its
    last.pt and prev.pt are deleted too; best.pt stays.
    """
    run_start = time.perf_counter()
    world = distributed.init(spec.train.device)
    device = select_device(spec.train.device)
    if device.type == "cuda" and world.size > 1:
        device = torch.device("cuda", world.local_rank)
    seed_everything(spec.seed, device)
    parts = build_parts(spec, device, world)
    tags = _start_tags(spec, parts, world)
    tracker_cm = make_tracker(flatten(spec.to_dict()), tags) if world.is_main else NullTracker()
    with contextlib.ExitStack() as lock:  # the checkpoint lock, released only once the run has ended
        with tracker_cm as tracker:  # under torchrun only rank 0 writes to MLflow and checkpoints
            folder = checkpoint_root / tracker.run_id if tracker.run_id != "none" else Path(tempfile.mkdtemp())
            folder = Path(distributed.broadcast(str(folder)))
            if world.is_main:
                lock.enter_context(checkpoint.hold_lock(folder))
            outputs.log_json(tracker, "audit.json", parts.data.audit)
            if tracker.last_step("time/epoch_s") < 0:  # a new run (a resumed one logged its inputs before)
                outputs.log_splits(tracker, parts.data, spec.data.dataset, spec.data.root)
            setup = time.perf_counter() - run_start  # data, model, loaders, MLflow run: before the first epoch
            state = train(parts, loop_settings(spec, resumable), tracker, folder, on_epoch, world)
            result = _finish(spec, parts, tracker, folder, state, world)
            process_s = time.perf_counter() - run_start
            # A resumed run's total adds the epochs earlier processes trained (not their setup, nor the
            # time lost to the interruption); overhead = this process's time outside epochs (test included).
            earlier_s = sum(h["time/epoch_s"] for h in state.history[:state.resumed_epochs])
            here_s = sum(h["time/epoch_s"] for h in state.history[state.resumed_epochs:])
            tracker.log_metrics({"time/total_s": process_s + earlier_s, "time/overhead_s": process_s - here_s,
                                 "time/setup_s": setup}, step=state.epoch)
            FENCE.check()  # the last safe point before the run is ended FINISHED
        if world.is_main:  # the run is FINISHED now: never resumed again, so only best.pt is worth its space
            checkpoint.drop_resume_state(folder)
    return result


def _start_tags(spec: ExperimentSpec, parts: Parts, world: distributed.World) -> dict:
    """The tags a run of `spec` built into `parts` starts with: spec hash, data fingerprint, counts and
    audit, precision, git state, environment, world size, and the encoder weights file's hash."""
    device = parts.cfg.device
    tags = {"spec_hash": spec.spec_hash(), "data.fingerprint": parts.data.fingerprint,
            "amp.dtype": dtype_name(parts.cfg.amp_dtype),
            **{f"data.{k}": v for k, v in parts.data.info.items()},
            **{f"data.audit.{k}": v for k, v in parts.data.audit.get("counts", {}).items()},
            **git_state(), **environment(device), "dist.world_size": world.size}
    tags["mlflow.source.git.commit"] = tags["git.commit"]
    if weights := weights_file(spec):  # the file's content, not its path, says which encoder trained
        tags["model.encoder_weights.sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    return tags


def weights_file(spec: ExperimentSpec) -> Path | None:
    """The encoder weights file the spec names (model.encoder_weights: a .pth / .pt path), or None."""
    weights = spec.model.encoder_weights
    return Path(weights) if weights not in KNOBS["encoder_weights"].choices else None


def loop_settings(spec: ExperimentSpec, resumable: bool = True) -> LoopSettings:
    """What the epoch loop takes from the spec, as plain values (the validation threshold is the
    parts' StepConfig's: harness.build.val_threshold)."""
    t = spec.train
    return LoopSettings(epochs=t.epochs, patience=t.early_stopping_patience, grad_clip=t.grad_clip,
                        skip_nonfinite=t.on_nan == "skip_batch",
                        freeze_encoder_epochs=spec.model.encoder_freeze_epochs, plateau=t.scheduler == "plateau",
                        resumable=resumable)


def _finish(spec: ExperimentSpec, p: Parts, tracker, folder: Path, state: LoopState,
            world: distributed.World = distributed.ONE) -> RunResult:
    """Test the best weights (best.pt) and log the artifacts. The headline test/* metrics are scored
    at each test image's stored size (harness.engine.stored_size); the training-size ones are kept
    under test_at_train_size/."""
    p.model.load_state_dict(torch.load(folder / checkpoint.BEST, map_location=p.cfg.device, weights_only=True)["model"])
    chosen = {}
    if spec.eval.threshold == "auto":  # chosen on validation, with the best weights; test is scored there
        threshold, at = choose_threshold(p.model, p.loaders["val"], p.cfg)
        p = replace(p, cfg=replace(p.cfg, threshold=threshold))
        chosen = {"eval/threshold": threshold, "eval/val_dice_at_threshold": at}
        print(f"threshold {threshold:.2f}: val/dice {at:.4f} (chosen on validation)", flush=True)
    FENCE.check()  # before the test: a worker whose claim was lost writes no test metrics
    start = time.perf_counter()
    test = score_split(p.model, p.loaders["test"], p.loss_fn, p.cfg, p.data.test, tolerance=spec.eval.nsd_tolerance)
    test_metrics, test_s = test.metrics, time.perf_counter() - start
    unlogged = tracker.last_step("test/dice") < 0  # a resumed run may have logged them before it died
    model_id = None
    FENCE.check()  # and again before the model, the test metrics and the FINISHED status
    if world.is_main:  # the model first, so that the test metrics can be logged against it
        model_id = outputs.log_run_artifacts(tracker, spec, p, state, test)
        outputs.log_predictions(tracker, p.data.test, test.predictions.numpy(), per_image_scores(test.counts)["dice"])
    if unlogged:
        split = (outputs.split_input_name(spec.data.dataset, spec.data.root, "test"), p.data.fingerprint)
        tracker.log_metrics(test_metrics, step=state.epoch, model_id=model_id, dataset=split)
        tracker.log_metrics({**test.at_train_size, **chosen, "best/epoch": state.best_epoch,
                             "best/val_dice": state.best, "time/test_s": test_s}, step=state.epoch)
    if world.is_main:
        print("test: " + "  ".join(f"{k} {v:.4f}" for k, v in test_metrics.items()), flush=True)
    return RunResult(tracker.run_id, state.history, test_metrics, state.best_epoch, state.best)
