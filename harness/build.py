"""What a run trains with, built from its spec: data, model, loaders, loss, optimizer, scheduler.

The short names in a spec (arch, loss, optimizer, scheduler, augmentation preset) are resolved
here through the components' own tables; each component takes plain arguments. The bench builds
the parts it times through `build_parts` too, so it measures what runs train.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from harness.engine import distributed
from harness.config.catalog import DEFAULTS
from harness.augment import build_pipeline
from harness.data import build_data, make_loader
from harness.losses import get_loss
from harness.models import create_model
from harness.models.unet_plus_plus import DEPTH as UNET_PLUS_PLUS_DEPTH
from harness.config.schema import ExperimentSpec
from harness.engine.step import StepConfig, build_optimizer, build_scheduler, compile_model, resolve_amp

DEFAULT_CACHE = "mlruns/cache"  # next to the default store and checkpoints


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


def spec_data(spec: ExperimentSpec):
    """The spec's data, decoded once per process (`cached_data`) through the on-disk cache."""
    d = spec.data
    cache_dir = str(Path(d.cache_dir or DEFAULT_CACHE).resolve()) if d.cache else None
    return cached_data(d.dataset, cache_dir=cache_dir, **data_kwargs(spec))


def _print_audit(report: dict) -> None:
    """One line when the audit found something; the full list is the run's audit.json."""
    c = report.get("counts", {})
    found = {k: c.get(k, 0) for k in ("problems", "empty_masks", "near_duplicates", "cross_split_duplicates")}
    if any(found.values()):
        print("data audit: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in found.items())
              + "  (details: audit.json in the run, or `make audit DATA=<root>`)", flush=True)


def out_channels(num_classes: int) -> int:
    return num_classes if num_classes > 2 else 1  # binary keeps its single-logit head


def build_model(spec: ExperimentSpec) -> torch.nn.Module:
    """The spec's model: architecture, knobs and head size (see harness.archs)."""
    m = spec.model.model_dump()
    knobs = {k: m[k] for k in DEFAULTS if k != "encoder_freeze_epochs"}
    if knobs["decoder_widths"] is not None:
        knobs["decoder_widths"] = tuple(knobs["decoder_widths"])
    return create_model(m["arch"], out_channels=out_channels(spec.data.num_classes), base_width=m["base_width"],
                        grad_checkpointing=spec.train.grad_checkpointing, **knobs)


def build_loss(spec: ExperimentSpec):
    """The spec's loss; with deep supervision, averaged over UNet++'s heads (one per nested level)."""
    heads = UNET_PLUS_PLUS_DEPTH if spec.model.deep_supervision else 1
    return get_loss(spec.train.loss, heads=heads, channels=out_channels(spec.data.num_classes))


def data_kwargs(spec: ExperimentSpec) -> dict:
    """build_data's arguments from the spec, except the cache folder."""
    d = spec.data
    return dict(root=d.root, image_size=d.image_size, foreground=d.foreground, val_fraction=d.val_fraction,
                limit=d.limit, synthetic_size=d.synthetic_size, on_bad=d.on_bad, download=d.download,
                num_classes=d.num_classes, target=d.target,
                palette=tuple(map(tuple, d.palette)) if d.palette else None)  # hashable for the lru_cache


def freeze_encoder(model: torch.nn.Module, frozen: bool) -> None:
    """encoder_freeze_epochs: the pretrained encoder gets no gradient (and no update) while frozen."""
    for param in getattr(model.net, "encoder_parameters", lambda: [])():
        param.requires_grad_(not frozen)


@dataclass
class Parts:
    """What a run trains with; built before the MLflow run exists, so bad input creates no run."""

    data: object
    model: torch.nn.Module
    train_model: torch.nn.Module  # `model`, or its DistributedDataParallel wrapper under torchrun
    cfg: StepConfig
    loaders: dict
    loss_fn: Callable
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler


def build_parts(spec: ExperimentSpec, device: torch.device, world: distributed.World = distributed.World(),
                data=None) -> Parts:
    """The run's data, model, loaders, loss, optimizer, scheduler and scaler. The bench builds the
    parts it times here too (passing the `data` it decoded once), so it measures what runs train."""
    d, t = spec.data, spec.train
    if data is None:
        data = spec_data(spec)
        _print_audit(data.audit)
    model = build_model(spec).to(device)
    cfg = StepConfig(device, resolve_amp(t.amp, device), t.channels_last, d.num_classes)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    pin = device.type == "cuda"
    shard = {"rank": world.rank, "world": world.size, "num_workers": d.num_workers, "pin_memory": pin}
    loaders = {
        "train": make_loader(data.train, batch_size=t.batch_size, shuffle=True, seed=spec.seed,
                             pipeline=build_pipeline(spec.augment, d.image_size),  # seeded per sample by the loader
                             drop_last=len(data.train) > t.batch_size * world.size, **shard),
        "val": make_loader(data.val, batch_size=t.batch_size, shuffle=False, **shard),
        "test": make_loader(data.test, batch_size=t.batch_size, shuffle=False, **shard),
    }
    if t.compile:
        compile_model(model, t.compile_mode)
    train_model = model
    if world.size > 1:  # gradients all-reduced; BatchNorm statistics stay per process (as in plain DDP)
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = build_optimizer(t.optimizer, model.parameters(), lr=t.lr, weight_decay=t.weight_decay,
                                momentum=t.momentum, fused=device.type == "cuda")
    return Parts(data, model, train_model, cfg, loaders, build_loss(spec), optimizer,
                  build_scheduler(t.scheduler, optimizer, epochs=t.epochs),
                  torch.amp.GradScaler(device.type, enabled=cfg.amp_dtype == torch.float16))
