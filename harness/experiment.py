"""Run one experiment spec end to end: data -> model -> loop -> best-weights test -> artifacts.

This is the only place that reads the whole spec; components below it take plain arguments.
Everything that can fail on bad input (data, model build) happens before the MLflow run is
created, so a bad input leaves no half-made run behind.
"""

from __future__ import annotations

import csv
import functools
import json
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml

from harness import checkpoint, distributed, plots
from harness.augment import build_pipeline
from harness.data import build_data, make_loader
from harness.losses import get_loss
from harness.metrics import scores
from harness.models import count_parameters, create_model
from harness.provenance import environment, git_state
from harness.spec import ExperimentSpec, flatten
from harness.tracking import NullTracker
from harness.train import (StepConfig, build_optimizer, build_scheduler, evaluate, resolve_amp, select_device,
                           train_one_epoch)

DEFAULT_CACHE = "mlruns/cache"  # next to the default store and checkpoints
EpochCallback = Callable[[int, dict[str, float]], None]  # (epoch, metrics); may raise to stop (Optuna)


@dataclass
class RunResult:
    run_id: str
    history: list[dict[str, float]]
    test: dict[str, float]
    best_epoch: int
    best_val_dice: float


def seed_everything(seed: int, device: torch.device) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # speed over bitwise repeatability on GPU


@functools.lru_cache(maxsize=2)
def cached_data(dataset: str, **kwargs):
    """build_data, memoised per process: the trials of one study worker decode the data once.

    Arrays are never modified in place (splits copy on indexing, augmentation returns new arrays).
    """
    return build_data(dataset, **kwargs)


def _print_audit(report: dict) -> None:
    """One line when the audit found something; the full list is the run's audit.json."""
    c = report.get("counts", {})
    found = {k: c.get(k, 0) for k in ("problems", "empty_masks", "near_duplicates", "cross_split_duplicates")}
    if any(found.values()):
        print("data audit: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in found.items())
              + "  (details: audit.json in the run, or `make audit DATA=<root>`)", flush=True)


@dataclass
class _Parts:
    """What a run trains with; built before the MLflow run exists, so bad input creates no run."""

    data: object
    model: torch.nn.Module
    train_model: torch.nn.Module  # `model`, or its DistributedDataParallel wrapper under torchrun
    cfg: StepConfig
    pipeline: object
    loaders: dict
    loss_fn: Callable
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler


def _setup(spec: ExperimentSpec, device: torch.device, world: distributed.World) -> _Parts:
    d, t = spec.data, spec.train
    cache_dir = str(Path(d.cache_dir or DEFAULT_CACHE).resolve()) if d.cache else None
    data = cached_data(d.dataset, root=d.root, image_size=d.image_size, foreground=d.foreground,
                       val_fraction=d.val_fraction, limit=d.limit, synthetic_size=d.synthetic_size,
                       on_bad=d.on_bad, cache_dir=cache_dir, download=d.download)
    _print_audit(data.audit)
    model = create_model(spec.model.arch, upsample=spec.model.upsample, base_width=spec.model.base_width,
                         encoder_weights=spec.model.encoder_weights).to(device)
    cfg = StepConfig(device, resolve_amp(t.amp, device), t.channels_last)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    pin = device.type == "cuda"
    pipeline = build_pipeline(spec.augment, d.image_size)
    if pipeline is not None:
        pipeline.set_random_seed(spec.seed + world.rank)  # each rank augments its shard differently
    shard = {"rank": world.rank, "world": world.size, "num_workers": d.num_workers, "pin_memory": pin}
    loaders = {
        "train": make_loader(data.train, batch_size=t.batch_size, shuffle=True, pipeline=pipeline, seed=spec.seed,
                             drop_last=len(data.train) > t.batch_size * world.size, **shard),
        "val": make_loader(data.val, batch_size=t.batch_size, shuffle=False, **shard),
        "test": make_loader(data.test, batch_size=t.batch_size, shuffle=False, **shard),
    }
    if t.compile:  # in place: state_dict keys stay those of the plain model (checkpoints, MLflow)
        model.compile()
    train_model = model
    if world.size > 1:  # gradients all-reduced; BatchNorm statistics stay per process (as in plain DDP)
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = build_optimizer(t.optimizer, model.parameters(), lr=t.lr, weight_decay=t.weight_decay,
                                momentum=t.momentum)
    return _Parts(data, model, train_model, cfg, pipeline, loaders, get_loss(t.loss), optimizer,
                  build_scheduler(t.scheduler, optimizer, epochs=t.epochs),
                  torch.amp.GradScaler(device.type, enabled=cfg.amp_dtype == torch.float16))


def run_experiment(spec: ExperimentSpec, make_tracker, *, checkpoint_root: Path = Path("mlruns/checkpoints"),
                   on_epoch: EpochCallback | None = None) -> RunResult:
    """Train and test `spec`. `make_tracker(params, tags)` returns a context-managed Tracker.

    If the tracker's run already has a checkpoint (a resumed run), training continues from it.
    """
    run_start = time.perf_counter()
    world = distributed.init(spec.train.device)
    device = select_device(spec.train.device)
    if device.type == "cuda" and world.size > 1:
        device = torch.device("cuda", world.local_rank)
    seed_everything(spec.seed, device)
    parts = _setup(spec, device, world)
    tags = {"spec_hash": spec.spec_hash(), "data.fingerprint": parts.data.fingerprint,
            "amp.dtype": str(parts.cfg.amp_dtype).replace("torch.", "") if parts.cfg.amp_dtype else "float32",
            **{f"data.{k}": v for k, v in parts.data.info.items()},
            **{f"data.audit.{k}": v for k, v in parts.data.audit.get("counts", {}).items()},
            **git_state(), **environment(device), "dist.world_size": world.size}
    tags["mlflow.source.git.commit"] = tags["git.commit"]
    tracker_cm = make_tracker(flatten(spec.to_dict()), tags) if world.is_main else NullTracker()
    with tracker_cm as tracker:  # under torchrun only rank 0 writes to MLflow and checkpoints
        folder = checkpoint_root / tracker.run_id if tracker.run_id != "none" else Path(tempfile.mkdtemp())
        folder = Path(distributed.broadcast(str(folder)))
        lock = checkpoint.hold_lock(folder) if world.is_main else None  # noqa: F841 (held until this process ends)
        _log_json(tracker, "audit.json", parts.data.audit)
        history, best, best_epoch = _train(spec, parts, tracker, folder, on_epoch, world)
        result = _finish(spec, parts, tracker, folder, history, best, best_epoch, world)
        total = time.perf_counter() - run_start  # fixed cost = everything that is not an epoch
        tracker.log_metrics({"time/total_s": total, "time/overhead_s": total - sum(h["time/epoch_s"] for h in history)},
                            step=len(history))
        return result


def _train(spec: ExperimentSpec, p: _Parts, tracker, folder: Path, on_epoch,
           world: distributed.World = distributed.World()) -> tuple[list, float, int]:
    """The epoch loop. The checkpoint is written before the epoch's metrics are logged, so a kill
    at any point loses at most the epoch in progress; on resume, steps the store missed are re-logged."""
    t = spec.train
    generator = p.loaders["train"].generator
    history, best, best_epoch, stale, stop = [], -1.0, 0, 0, False
    logged_until = tracker.last_step("val/dice")  # > checkpoint epoch after a fallback to prev.pt
    state, messages = checkpoint.load_latest(folder)
    for message in messages:
        print(message, flush=True)
    if state is None:
        tracker.log_metrics({"model/num_params": count_parameters(p.model)}, step=0)
    else:
        p.model.load_state_dict(state["model"])
        p.optimizer.load_state_dict(state["optimizer"])
        if p.scheduler is not None:
            p.scheduler.load_state_dict(state["scheduler"])
        p.scaler.load_state_dict(state["scaler"])
        checkpoint.restore_rng(state["rng"], generator, p.pipeline)
        history, best, best_epoch, stale, stop = (state["history"], state["best"], state["best_epoch"],
                                                  state["stale"], state["stop"])
        for h in history[max(logged_until, 0):]:  # killed between checkpoint and logging
            tracker.log_metrics({k: v for k, v in h.items() if k != "epoch"}, step=h["epoch"])
        tracker.set_tags({"resumed_from_epoch": state["epoch"]})
    for epoch in range(len(history) + 1, t.epochs + 1):
        if stop:
            break
        start = time.perf_counter()
        lr = p.optimizer.param_groups[0]["lr"]
        if hasattr(p.loaders["train"].sampler, "set_epoch"):  # DistributedSampler: a new order per epoch
            p.loaders["train"].sampler.set_epoch(epoch)
        train = train_one_epoch(p.train_model, p.loaders["train"], p.loss_fn, p.optimizer, p.scaler, p.cfg,
                                grad_clip=t.grad_clip, desc=f"epoch {epoch}/{t.epochs}",
                                skip_nonfinite=t.on_nan == "skip_batch")
        val = evaluate(p.model, p.loaders["val"], p.loss_fn, p.cfg, threshold=spec.eval.threshold, prefix="val")
        metrics = {**train.metrics, **val.metrics, "lr": lr, "time/epoch_s": time.perf_counter() - start}
        if p.scheduler is not None:
            p.scheduler.step(metrics["val/dice"]) if t.scheduler == "plateau" else p.scheduler.step()
        history.append({"epoch": epoch, **metrics})
        improved = metrics["val/dice"] > best
        if improved:
            best, best_epoch, stale = metrics["val/dice"], epoch, 0
        else:
            stale += 1
        stop = bool(t.early_stopping_patience and stale >= t.early_stopping_patience)
        if world.is_main:
            _save(p, folder, epoch, improved, history, best, best_epoch, stale, stop, generator)
        distributed.barrier()  # no rank reads best.pt before rank 0 has written it
        if epoch > logged_until:  # never a duplicate step; a re-trained epoch keeps its first record
            tracker.log_metrics(metrics, step=epoch)
        if world.is_main:
            print(f"epoch {epoch:>3}/{t.epochs}  train/loss {metrics['train/loss']:.4f}  val/loss {metrics['val/loss']:.4f}"
                  f"  val/dice {metrics['val/dice']:.4f}  {metrics['throughput/train_img_s']:.1f} img/s", flush=True)
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        if stop:
            print(f"early stopping: val/dice has not improved for {stale} epochs (best {best:.4f} at {best_epoch})")
            tracker.set_tags({"early_stopped_epoch": epoch})
    return history, best, best_epoch


def _save(p: _Parts, folder: Path, epoch, improved, history, best, best_epoch, stale, stop, generator) -> None:
    """best.pt when val Dice improved, then last.pt (atomic, the previous one kept as prev.pt)."""
    if improved:
        checkpoint.save_atomic({"model": p.model.state_dict(), "epoch": epoch}, folder / checkpoint.BEST)
    checkpoint.save_last({
        "epoch": epoch, "model": p.model.state_dict(), "optimizer": p.optimizer.state_dict(),
        "scheduler": p.scheduler.state_dict() if p.scheduler is not None else None,
        "scaler": p.scaler.state_dict(), "history": history, "best": best, "best_epoch": best_epoch,
        "stale": stale, "stop": stop, "rng": checkpoint.capture_rng(generator, p.pipeline)}, folder)


def _finish(spec, p: _Parts, tracker, folder: Path, history, best: float, best_epoch: int,
            world: distributed.World = distributed.World()) -> RunResult:
    """Test the best weights and log the artifacts."""
    p.model.load_state_dict(torch.load(folder / checkpoint.BEST, map_location=p.cfg.device, weights_only=True)["model"])
    test = evaluate(p.model, p.loaders["test"], p.loss_fn, p.cfg, threshold=spec.eval.threshold, prefix="test",
                    keep_predictions=True)
    test_metrics = {k: v for k, v in test.metrics.items() if k.startswith("test/")}
    if tracker.last_step("test/dice") < 0:  # a resumed run may have logged them before it died
        tracker.log_metrics({**test_metrics, "best/epoch": best_epoch, "best/val_dice": best}, step=len(history))
    if world.is_main:
        _log_artifacts(tracker, spec, p.data, p.model, p.cfg, history, test.counts)
        _log_predictions(tracker, p.data.test, test.predictions.numpy(), scores(test.counts)["dice"])
    if world.is_main:
        print("test: " + "  ".join(f"{k} {v:.4f}" for k, v in test_metrics.items()), flush=True)
    return RunResult(tracker.run_id, history, test_metrics, best_epoch, best)


WORST_K = 8


def _log_predictions(tracker, test, predictions: np.ndarray, dice) -> None:
    """test_predictions.npz: every test mask predicted and true (bit-packed, image order of
    test_per_image.csv), plus the pixels of this run's WORST_K images by Dice, so a report can
    show them next to another run's predictions without reading the dataset."""
    worst = np.argsort(np.asarray(dice), kind="stable")[:WORST_K]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "test_predictions.npz"
        np.savez_compressed(path, names=np.array(test.names), shape=np.array(predictions.shape),
                            pred_bits=np.packbits(predictions.astype(bool)),
                            true_bits=np.packbits(test.masks.astype(bool)), worst=worst,
                            worst_images=test.images[worst])
        tracker.log_artifact(path)


def _log_json(tracker, name: str, payload: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text(json.dumps(payload, indent=1))
        tracker.log_artifact(path)


def _log_artifacts(tracker, spec, data, model, cfg: StepConfig, history, counts) -> None:
    """Resolved spec, curves, a validation prediction grid, per-image test scores and the model."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / "spec.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
        tracker.log_artifact(out / "spec.yaml")
        tracker.log_artifact(plots.learning_curves(history, out / "learning_curves.png"))

        k = min(6, len(data.val))
        images = torch.from_numpy(data.val.images[:k]).permute(0, 3, 1, 2)
        x, _ = cfg.to_device(images, torch.zeros(k, 1, 1, 1))
        with torch.inference_mode(), cfg.autocast():
            probs = torch.sigmoid(model.eval()(x).float())
        preds = (probs[:, 0] > spec.eval.threshold).cpu().numpy().astype(np.uint8)
        tracker.log_artifact(plots.prediction_grid(data.val.images[:k], data.val.masks[:k], preds,
                                                   data.val.names[:k], out / "val_predictions.png"))

        per = scores(counts)
        with open(out / "test_per_image.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["name", "dice", "iou", "tp", "fp", "fn", "tn", "fg_pixels"])
            for i, name in enumerate(data.test.names):
                tp, fp, fn, tn = counts[i].tolist()
                writer.writerow([name, f"{per['dice'][i]:.6f}", f"{per['iou'][i]:.6f}", tp, fp, fn, tn, tp + fn])
        tracker.log_artifact(out / "test_per_image.csv")
    if not spec.log_model:
        return
    example = torch.from_numpy(data.val.images[: min(2, len(data.val))]).permute(0, 3, 1, 2).float() / 255.0
    if example.shape[0] < 2:  # batch > 1 keeps the exported batch dimension dynamic
        example = example.repeat(2, 1, 1, 1)
    tracker.log_model(model.float().to(memory_format=torch.contiguous_format), example)
