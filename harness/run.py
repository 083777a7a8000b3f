"""Run one experiment spec end to end: data -> model -> loop -> best-weights test -> artifacts.

This is the only place that reads the whole spec; components below it take plain arguments.
Everything that can fail on bad input (data, model build) happens before the MLflow run is
created, so a bad input leaves no half-made run behind.
"""

from __future__ import annotations

import functools
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from harness import outputs as artifacts
from harness.engine import checkpoint
from harness.engine import distributed
from harness.data.loaders import order_generator, start_epoch
from harness.metrics import per_image_scores
from harness.models import count_parameters
from harness.build import Parts, build_parts, freeze_encoder, seed_everything, spec_data
from harness.tracking.provenance import environment, git_state
from harness.config.load import ExperimentSpec, flatten
from harness.tracking.mlflow import NullTracker
from harness.engine.step import dtype_name, evaluate, planned_precision, select_device, train_one_epoch


class _StopRequest:
    """Set by the CLI's SIGINT/SIGTERM handler; the loop stops after the current epoch's checkpoint."""

    requested: str = ""


STOP = _StopRequest()
EpochCallback = Callable[[int, dict[str, float]], None]  # (epoch, metrics); may raise to stop (Optuna)


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
    (tracking.RUN_IDENTITY_TAGS). The data is read through the per-process memo, so the run that
    follows does not read it again."""
    identity = {"data.fingerprint": spec_data(spec).fingerprint}
    if precision := planned_precision(spec.train.amp, spec.train.device):
        identity["amp.dtype"] = precision
    return identity


def run_experiment(spec: ExperimentSpec, make_tracker, *, checkpoint_root: Path = Path("mlruns/checkpoints"),
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
    tags = {"spec_hash": spec.spec_hash(), "data.fingerprint": parts.data.fingerprint,
            "amp.dtype": dtype_name(parts.cfg.amp_dtype),
            **{f"data.{k}": v for k, v in parts.data.info.items()},
            **{f"data.audit.{k}": v for k, v in parts.data.audit.get("counts", {}).items()},
            **git_state(), **environment(device), "dist.world_size": world.size}
    tags["mlflow.source.git.commit"] = tags["git.commit"]
    tracker_cm = make_tracker(flatten(spec.to_dict()), tags) if world.is_main else NullTracker()
    with tracker_cm as tracker:  # under torchrun only rank 0 writes to MLflow and checkpoints
        folder = checkpoint_root / tracker.run_id if tracker.run_id != "none" else Path(tempfile.mkdtemp())
        folder = Path(distributed.broadcast(str(folder)))
        lock = checkpoint.hold_lock(folder) if world.is_main else None  # noqa: F841 (held until this process ends)
        artifacts.log_json(tracker, "audit.json", parts.data.audit)
        setup = time.perf_counter() - run_start  # data, model, loaders, MLflow run: before the first epoch
        history, best, best_epoch = _train(spec, parts, tracker, folder, on_epoch, world, resumable)
        result = _finish(spec, parts, tracker, folder, history, best, best_epoch, world)
        total = time.perf_counter() - run_start  # overhead = everything that is not an epoch (test included)
        tracker.log_metrics({"time/total_s": total, "time/overhead_s": total - sum(h["time/epoch_s"] for h in history),
                             "time/setup_s": setup}, step=len(history))
    if world.is_main:  # the run is FINISHED now: never resumed again, so only best.pt is worth its space
        checkpoint.drop_resume_state(folder)
    return result


def _train(spec: ExperimentSpec, p: Parts, tracker, folder: Path, on_epoch,
           world: distributed.World = distributed.World(), resumable: bool = True) -> tuple[list, float, int]:
    """The epoch loop. An epoch's metrics are logged to MLflow only once its checkpoint is on disk,
    by the background writer while the next epoch trains (a re-trained epoch after a resume keeps
    its first record); so a kill at any point loses at most the epoch not yet written, and on
    resume the steps the store missed are re-logged."""
    t = spec.train
    generator = order_generator(p.loaders["train"])
    history, best, best_epoch, stale, stop = [], -1.0, 0, 0, False
    logged_until = tracker.last_step("val/dice")  # > checkpoint epoch after a fallback to prev.pt
    state, messages = checkpoint.load_latest(folder)
    for message in messages:
        print(message, flush=True)
    if state is None:
        tracker.log_metrics({"model/num_params": count_parameters(p.model)}, step=0)
    else:
        history, best, best_epoch, stale, stop = _resume(p, state, generator, tracker, logged_until)
    writer, stopped_here = checkpoint.AsyncWriter(), False  # stopped_here: not a resumed run that had stopped
    upcoming = None  # the next epoch's loader iterator, once an epoch has started it
    try:
        for epoch in range(len(history) + 1, t.epochs + 1):
            if stop:
                break
            metrics, rng, upcoming = _epoch(spec, p, epoch, upcoming)
            history.append({"epoch": epoch, **metrics})
            improved = metrics["val/dice"] > best
            if improved:
                best, best_epoch, stale = metrics["val/dice"], epoch, 0
            else:
                stale += 1
            stop = stopped_here = bool(t.early_stopping_patience and stale >= t.early_stopping_patience)
            if world.is_main:  # only rank 0 writes and logs
                record = functools.partial(tracker.log_metrics, metrics, step=epoch) if epoch > logged_until else None
                _save(p, writer, folder, epoch, improved, history, best, best_epoch, stale, stop, rng, record,
                      resumable)
                print(f"epoch {epoch:>3}/{t.epochs}  train/loss {metrics['train/loss']:.4f}  val/loss "
                      f"{metrics['val/loss']:.4f}  val/dice {metrics['val/dice']:.4f}  "
                      f"{metrics['throughput/train_img_s']:.1f} img/s", flush=True)
            if on_epoch is not None:
                on_epoch(epoch, metrics)
            if STOP.requested:
                raise KeyboardInterrupt(f"{STOP.requested}: stopped after epoch {epoch}; its checkpoint is written "
                                        f"and the same command resumes from it")
    except BaseException:
        try:  # the last epoch's checkpoint and record still land before the error goes up
            writer.wait()
        except Exception as err:
            print(f"checkpoint write failed too: {type(err).__name__}: {err}", flush=True)
        raise
    writer.wait()
    distributed.barrier()  # no rank reads best.pt before rank 0 has written it
    if stopped_here:
        print(f"early stopping: val/dice has not improved for {stale} epochs (best {best:.4f} at {best_epoch})")
        tracker.set_tags({"early_stopped_epoch": len(history)})
    return history, best, best_epoch


def _resume(p: Parts, state: dict, generator: torch.Generator, tracker, logged_until: int) -> tuple:
    """Load a checkpoint's weights, optimizer, scheduler, scaler and RNG states into `p`, and
    log the epochs it holds that the store missed (killed between checkpoint and logging).
    Returns (history, best, best_epoch, stale, stop)."""
    p.model.load_state_dict(state["model"])
    p.optimizer.load_state_dict(state["optimizer"])
    if p.scheduler is not None:
        p.scheduler.load_state_dict(state["scheduler"])
    p.scaler.load_state_dict(state["scaler"])
    checkpoint.restore_rng(state["rng"], generator)
    for h in state["history"][max(logged_until, 0):]:
        tracker.log_metrics({k: v for k, v in h.items() if k != "epoch"}, step=h["epoch"])
    tracker.set_tags({"resumed_from_epoch": state["epoch"]})
    return state["history"], state["best"], state["best_epoch"], state["stale"], state["stop"]


def _epoch(spec: ExperimentSpec, p: Parts, epoch: int, batches=None) -> tuple[dict[str, float], dict, Any]:
    """Train one epoch, validate, step the scheduler.

    `batches`: this epoch's loader iterator if the previous epoch started it. Returns the
    epoch's metrics, the RNG state the next epoch starts from (taken before the next epoch's
    iterator draws its order, so a resume draws the same) and that iterator, or None. With
    worker processes it is started before validation, so the workers prepare the next epoch's
    first batches while this one validates: otherwise every epoch opened on idle workers (62 ms
    of a 1.4 s ResNet34-UNet epoch at batch 64 on an H100, and longer the larger the batch).
    """
    t, loader = spec.train, p.loaders["train"]
    start = time.perf_counter()
    lr = p.optimizer.param_groups[0]["lr"]
    if spec.model.encoder_freeze_epochs:
        freeze_encoder(p.model, epoch <= spec.model.encoder_freeze_epochs)
    if batches is None:
        batches = start_epoch(loader, epoch)
    train = train_one_epoch(p.train_model, batches, p.loss_fn, p.optimizer, p.scaler, p.cfg, grad_clip=t.grad_clip,
                            desc=f"epoch {epoch}/{t.epochs}", skip_nonfinite=t.on_nan == "skip_batch")
    rng = checkpoint.capture_rng(order_generator(loader))
    upcoming = start_epoch(loader, epoch + 1) if loader.num_workers and epoch < t.epochs else None
    val = evaluate(p.model, p.loaders["val"], p.loss_fn, p.cfg, threshold=spec.eval.threshold, prefix="val")
    metrics = {**train.metrics, **val.metrics, "lr": lr, "time/epoch_s": time.perf_counter() - start}
    if p.scheduler is not None:
        p.scheduler.step(metrics["val/dice"]) if t.scheduler == "plateau" else p.scheduler.step()
    return metrics, rng, upcoming


def _save(p: Parts, writer: checkpoint.AsyncWriter, folder: Path, epoch, improved, history, best, best_epoch,
          stale, stop, rng, then, last: bool = True) -> None:
    """last.pt (atomic, the previous one kept as prev.pt) and best.pt when val Dice improved, on the
    writer's thread; `rng` is the state the next epoch starts from (see `_epoch`)."""
    writer.submit(folder, {
        "epoch": epoch, "model": p.model.state_dict(), "optimizer": p.optimizer.state_dict(),
        "scheduler": p.scheduler.state_dict() if p.scheduler is not None else None,
        "scaler": p.scaler.state_dict(), "history": history, "best": best, "best_epoch": best_epoch,
        "stale": stale, "stop": stop, "rng": rng},
        best=improved, last=last, then=then)


def _finish(spec, p: Parts, tracker, folder: Path, history, best: float, best_epoch: int,
            world: distributed.World = distributed.World()) -> RunResult:
    """Test the best weights and log the artifacts."""
    p.model.load_state_dict(torch.load(folder / checkpoint.BEST, map_location=p.cfg.device, weights_only=True)["model"])
    start = time.perf_counter()
    test = evaluate(p.model, p.loaders["test"], p.loss_fn, p.cfg, threshold=spec.eval.threshold, prefix="test",
                    keep_predictions=True)
    test_metrics = {k: v for k, v in test.metrics.items() if k.startswith("test/")}
    if tracker.last_step("test/dice") < 0:  # a resumed run may have logged them before it died
        tracker.log_metrics({**test_metrics, "best/epoch": best_epoch, "best/val_dice": best,
                             "time/test_s": time.perf_counter() - start}, step=len(history))
    if world.is_main:
        artifacts.log_run_artifacts(tracker, spec, p.data, p.model, p.cfg, history, test.counts)
        artifacts.log_predictions(tracker, p.data.test, test.predictions.numpy(), per_image_scores(test.counts)["dice"])
    if world.is_main:
        print("test: " + "  ".join(f"{k} {v:.4f}" for k, v in test_metrics.items()), flush=True)
    return RunResult(tracker.run_id, history, test_metrics, best_epoch, best)
