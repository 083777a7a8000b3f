"""One epoch of training (`train_one_epoch`) and one pass of evaluation (`evaluate`); the epoch loop
that calls them is `harness.engine.loop`.

Everything here takes plain arguments; only `harness.run` reads the spec. Per-step host
syncs are avoided: the running loss stays on the device and is read every `SYNC_EVERY` steps
for the progress bar, and metrics are accumulated on the device and read once per evaluation.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from harness.engine import distributed
from harness.metrics import MetricAccumulator, summarise_counts
from harness.progress import progress

SYNC_EVERY = 10  # steps between progress-bar updates (each one is a host sync)


class NonFiniteLoss(FloatingPointError):
    """Training loss became NaN or Inf."""


@dataclass
class StepConfig:
    """How a batch is run: device placement, precision and memory format; and how its logits are read
    (classes, threshold)."""

    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    num_classes: int = 2  # 2: binary, float masks (N, 1, H, W); K >= 3: class indices (N, H, W) int64
    threshold: float = 0.5  # binary: a pixel is foreground where sigmoid(logit) > threshold

    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def to_device(self, images: torch.Tensor, masks: torch.Tensor):
        """uint8 (N, 3, H, W) and (N, 1, H, W) -> float images in [0, 1] and float masks (binary)
        or int64 class maps (N, H, W) (K classes), on device."""
        images = images.to(self.device, non_blocking=True).float().div_(255.0)
        masks = masks.to(self.device, non_blocking=True)
        masks = masks[:, 0].long() if self.num_classes > 2 else masks.float()
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, masks


@dataclass
class EpochStats:
    metrics: dict[str, float]
    counts: torch.Tensor | None = None  # (N, 4) per-image confusion counts (evaluate only)


@dataclass(frozen=True)
class Update:
    """How a training step updates the weights: the optimizer, the gradient scaler, gradient clipping,
    and whether a batch with a non-finite loss is skipped (train.on_nan=skip_batch) rather than fatal."""

    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    grad_clip: float | None = None
    skip_nonfinite: bool = False


def train_one_epoch(model: nn.Module, loader, loss_fn, update: Update, cfg: StepConfig, *,
                    desc: str = "train") -> EpochStats:
    """One pass over `loader`. Returns train/loss and throughput.

    A NaN/Inf loss raises NonFiniteLoss naming the step, unless `update.skip_nonfinite`: then that
    batch gets no update and is counted in train/skipped_batches (this costs one host sync per
    step, so it is opt-in); an epoch in which every batch was skipped still raises.
    """
    model.train()
    loss_sum = torch.zeros((), device=cfg.device)
    first_bad = torch.full((), -1, device=cfg.device)  # first non-finite step, tracked without a host sync
    seen = skipped = 0
    wait = 0.0  # host time blocked on the loader: the data pipeline's share of the epoch
    start = ready = time.perf_counter()
    bar = progress(loader, desc=desc, unit="batch", leave=False, dynamic_ncols=True)
    for step, (images, masks, _) in enumerate(bar, 1):
        wait += time.perf_counter() - ready
        images, masks = cfg.to_device(images, masks)
        with cfg.autocast():
            logits = model(images)
        loss = loss_fn(logits, masks)  # losses run in float32 outside autocast
        if update.skip_nonfinite and not torch.isfinite(loss):
            skipped += 1
            print(f"{desc}: non-finite loss ({loss.item()}) at step {step}: batch skipped", flush=True)
            ready = time.perf_counter()
            continue
        _step(model, loss, update)
        loss_sum += loss.detach() * images.shape[0]
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()), step, first_bad)
        seen += images.shape[0]
        if step % SYNC_EVERY == 0:
            mean = (loss_sum / seen).item()
            _check_finite(mean, desc, first_bad)
            bar.set_postfix(loss=f"{mean:.4f}", img_s=f"{seen / (time.perf_counter() - start):.1f}")
        ready = time.perf_counter()
    if cfg.device.type == "cuda":
        torch.cuda.synchronize(cfg.device)
    elapsed = time.perf_counter() - start
    if distributed.active():  # every rank reports the loss over all ranks' images
        totals = distributed.sum_(torch.stack([loss_sum.float(), torch.tensor(float(seen), device=cfg.device)]))
        loss_sum, seen = totals[0], int(totals[1].item())
    if skipped and not seen:
        raise NonFiniteLoss(f"non-finite training loss in every one of the {skipped} batches of {desc}")
    mean = (loss_sum / max(seen, 1)).item()
    _check_finite(mean, desc, first_bad)
    metrics = {"train/loss": mean, "throughput/train_img_s": seen / elapsed, "time/train_s": elapsed,
               "time/data_wait_frac": wait / elapsed}
    if update.skip_nonfinite:
        metrics["train/skipped_batches"] = float(skipped)
    return EpochStats(metrics)


def _step(model: nn.Module, loss: torch.Tensor, update: Update) -> None:
    """Backward and one optimizer step (through the gradient scaler, clipping if asked)."""
    update.optimizer.zero_grad(set_to_none=True)
    update.scaler.scale(loss).backward()
    if update.grad_clip:
        update.scaler.unscale_(update.optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), update.grad_clip)
    update.scaler.step(update.optimizer)
    update.scaler.update()


def _check_finite(value: float, desc: str, first_bad: torch.Tensor) -> None:
    if value != value or value in (float("inf"), float("-inf")):
        raise NonFiniteLoss(f"non-finite training loss ({value}) in {desc} at step {int(first_bad)}; "
                            f"lower train.lr, set train.grad_clip, or train.on_nan=skip_batch to skip such batches")


@torch.inference_mode()
def evaluate(model: nn.Module, loader, loss_fn, cfg: StepConfig, *, prefix: str = "val", watch=()) -> EpochStats:
    """Loss and Dice/IoU/accuracy over `loader` at the training size, keys '<prefix>/...', and the counts
    per image in order. Each of `watch` (KeptPredictions; harness.engine.stored_size.StoredSizeScorer, to
    score at the images' stored sizes) also sees every batch's logits: `update(logits, index)`."""
    model.eval()
    acc = MetricAccumulator(cfg.threshold, cfg.num_classes)
    loss_sum = torch.zeros((), device=cfg.device)
    seen = 0
    start = time.perf_counter()
    for images, masks, index in progress(loader, desc=prefix, unit="batch", leave=False, dynamic_ncols=True):
        images, masks = cfg.to_device(images, masks)
        with cfg.autocast():
            logits = model(images)
        loss_sum += loss_fn(logits, masks) * images.shape[0]
        acc.update(logits.float(), masks)
        for watcher in watch:
            watcher.update(logits, index)
        seen += images.shape[0]
    counts = distributed.interleave(acc.counts())  # every image, in split order, on every rank
    totals = distributed.sum_(torch.stack([loss_sum.float(), torch.tensor(float(seen), device=cfg.device)]))
    metrics = {f"{prefix}/{k}": v for k, v in summarise_counts(counts).items()}
    metrics[f"{prefix}/loss"] = (totals[0] / totals[1].clamp(min=1)).item()
    metrics[f"throughput/{prefix}_img_s"] = seen / (time.perf_counter() - start)
    return EpochStats(metrics, counts)


class KeptPredictions:
    """Watches `evaluate` and keeps every image's predicted mask at the training size on the CPU (one
    device-to-host copy per batch): binary, bool masks (sigmoid > cfg.threshold); K classes, uint8
    class maps. `result()`: (N, H, W) in split order, or None for an empty loader."""

    def __init__(self, cfg: StepConfig):
        self.cfg, self.kept = cfg, []

    def update(self, logits: torch.Tensor, index: torch.Tensor) -> None:
        self.kept.append(logits.argmax(1).to(torch.uint8).cpu() if self.cfg.num_classes > 2
                         else (torch.sigmoid(logits.float()[:, 0]) > self.cfg.threshold).cpu())

    def result(self) -> torch.Tensor | None:
        return distributed.interleave(torch.cat(self.kept)) if self.kept else None


THRESHOLD_GRID = tuple(round(0.05 * k, 2) for k in range(1, 20))  # 0.05, 0.10, ..., 0.95


@torch.inference_mode()
def choose_threshold(model: nn.Module, loader, cfg: StepConfig, grid=THRESHOLD_GRID) -> tuple[float, float]:
    """(threshold, mean per-image Dice there): the `grid` value with the best per-image Dice over
    `loader` (binary). Ties go to the value nearest 0.5, so a flat curve keeps the usual threshold."""
    model.eval()
    accumulators = [MetricAccumulator(t, 2) for t in grid]
    for images, masks, _ in progress(loader, desc="threshold", unit="batch", leave=False, dynamic_ncols=True):
        images, masks = cfg.to_device(images, masks)
        with cfg.autocast():
            logits = model(images).float()
        for acc in accumulators:
            acc.update(logits, masks)
    dice = [summarise_counts(distributed.interleave(acc.counts()))["dice"] for acc in accumulators]
    best = max(range(len(grid)), key=lambda i: (dice[i], -abs(grid[i] - 0.5)))
    return float(grid[best]), float(dice[best])


def freeze_encoder(model: nn.Module, frozen: bool) -> None:
    """encoder_freeze_epochs: the pretrained encoder gets no gradient (and no update) while frozen.
    `model` is a Segmenter whose net may offer `encoder_parameters()` (ResNet34-UNet does)."""
    for param in getattr(model.net, "encoder_parameters", lambda: [])():
        param.requires_grad_(not frozen)
