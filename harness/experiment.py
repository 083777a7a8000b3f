"""Run one experiment spec end to end: data -> model -> loop -> best-weights test -> artifacts.

This is the only place that reads the whole spec; components below it take plain arguments.
Everything that can fail on bad input (data, model build) happens before the MLflow run is
created, so a bad input leaves no half-made run behind.
"""

from __future__ import annotations

import csv
import functools
import os
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml

from harness import plots
from harness.augment import build_pipeline
from harness.data import build_data, make_loader
from harness.losses import get_loss
from harness.metrics import scores
from harness.models import count_parameters, create_model
from harness.provenance import environment, git_state
from harness.spec import ExperimentSpec, flatten
from harness.train import (StepConfig, build_optimizer, build_scheduler, evaluate, resolve_amp, select_device,
                           train_one_epoch)

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


def _save_atomic(obj, path: Path) -> None:
    """Write then rename, so a crash never leaves a truncated checkpoint."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def run_experiment(spec: ExperimentSpec, make_tracker, *, checkpoint_root: Path = Path("mlruns/checkpoints"),
                   on_epoch: EpochCallback | None = None) -> RunResult:
    """Train and test `spec`. `make_tracker(params, tags)` returns a context-managed Tracker."""
    run_start = time.perf_counter()
    device = select_device(spec.train.device)
    seed_everything(spec.seed, device)
    d, t = spec.data, spec.train
    data = cached_data(d.dataset, root=d.root, image_size=d.image_size, foreground=d.foreground,
                      val_fraction=d.val_fraction, limit=d.limit, synthetic_size=d.synthetic_size)
    model = create_model(spec.model.arch, upsample=spec.model.upsample, base_width=spec.model.base_width,
                         encoder_weights=spec.model.encoder_weights).to(device)
    cfg = StepConfig(device, resolve_amp(t.amp, device), t.channels_last)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    pin = device.type == "cuda"
    pipeline = build_pipeline(spec.augment, d.image_size)
    if pipeline is not None:
        pipeline.set_random_seed(spec.seed)
    loaders = {
        "train": make_loader(data.train, batch_size=t.batch_size, shuffle=True, pipeline=pipeline,
                             num_workers=d.num_workers, seed=spec.seed, pin_memory=pin, drop_last=len(data.train) > t.batch_size),
        "val": make_loader(data.val, batch_size=t.batch_size, shuffle=False, num_workers=d.num_workers, pin_memory=pin),
        "test": make_loader(data.test, batch_size=t.batch_size, shuffle=False, num_workers=d.num_workers, pin_memory=pin),
    }
    loss_fn = get_loss(t.loss)
    optimizer = build_optimizer(t.optimizer, model.parameters(), lr=t.lr, weight_decay=t.weight_decay, momentum=t.momentum)
    scheduler = build_scheduler(t.scheduler, optimizer, epochs=t.epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp_dtype == torch.float16)

    tags = {"spec_hash": spec.spec_hash(), "data.fingerprint": data.fingerprint,
            "amp.dtype": str(cfg.amp_dtype).replace("torch.", "") if cfg.amp_dtype else "float32",
            **{f"data.{k}": v for k, v in data.info.items()}, **git_state(), **environment(device)}
    tags["mlflow.source.git.commit"] = tags["git.commit"]
    with make_tracker(flatten(spec.to_dict()), tags) as tracker:
        ckpt_dir = checkpoint_root / tracker.run_id if tracker.run_id != "none" else Path(tempfile.mkdtemp())
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        tracker.log_metrics({"model/num_params": count_parameters(model)}, step=0)
        history, best, best_epoch, stale = [], -1.0, 0, 0
        for epoch in range(1, t.epochs + 1):
            start = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            train = train_one_epoch(model, loaders["train"], loss_fn, optimizer, scaler, cfg,
                                    grad_clip=t.grad_clip, desc=f"epoch {epoch}/{t.epochs}")
            val = evaluate(model, loaders["val"], loss_fn, cfg, threshold=spec.eval.threshold, prefix="val")
            metrics = {**train.metrics, **val.metrics, "lr": lr, "time/epoch_s": time.perf_counter() - start}
            if scheduler is not None:
                scheduler.step(metrics["val/dice"]) if t.scheduler == "plateau" else scheduler.step()
            tracker.log_metrics(metrics, step=epoch)
            history.append({"epoch": epoch, **metrics})
            print(f"epoch {epoch:>3}/{t.epochs}  train/loss {metrics['train/loss']:.4f}  val/loss {metrics['val/loss']:.4f}"
                  f"  val/dice {metrics['val/dice']:.4f}  {metrics['throughput/train_img_s']:.1f} img/s", flush=True)
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                     "best_val_dice": max(best, metrics["val/dice"])}
            _save_atomic(state, ckpt_dir / "last.pt")
            if metrics["val/dice"] > best:
                best, best_epoch, stale = metrics["val/dice"], epoch, 0
                _save_atomic(state, ckpt_dir / "best.pt")
            else:
                stale += 1
            if on_epoch is not None:
                on_epoch(epoch, metrics)
            if t.early_stopping_patience and stale >= t.early_stopping_patience:
                print(f"early stopping: val/dice has not improved for {stale} epochs (best {best:.4f} at {best_epoch})")
                tracker.set_tags({"early_stopped_epoch": epoch})
                break

        best_state = torch.load(ckpt_dir / "best.pt", map_location=device, weights_only=True)
        model.load_state_dict(best_state["model"])
        test = evaluate(model, loaders["test"], loss_fn, cfg, threshold=spec.eval.threshold, prefix="test")
        test_metrics = {k: v for k, v in test.metrics.items() if k.startswith("test/")}
        tracker.log_metrics({**test_metrics, "best/epoch": best_epoch, "best/val_dice": best}, step=len(history))
        _log_artifacts(tracker, spec, data, model, cfg, history, test.counts)
        total = time.perf_counter() - run_start  # fixed cost = everything that is not an epoch
        tracker.log_metrics({"time/total_s": total, "time/overhead_s": total - sum(h["time/epoch_s"] for h in history)},
                            step=len(history))
        print("test: " + "  ".join(f"{k} {v:.4f}" for k, v in test_metrics.items()), flush=True)
        return RunResult(tracker.run_id, history, test_metrics, best_epoch, best)


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
