"""Spec -> what a run trains with: data, model, loaders, loss, optimizer, scheduler, device, precision.

The short names in a spec (arch, loss, optimizer, scheduler, augmentation preset) are resolved
here through the catalog (`harness.config.catalog`) and the components' own tables; each
component takes plain arguments. The bench builds the parts it times through `build_parts` too,
so it measures what runs train.
"""

from __future__ import annotations

import functools
import importlib
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from harness import paths
from harness.augment import build_pipeline
from harness.config.catalog import ARCHS, KNOBS, OPTIMIZERS, SCHEDULERS, check_knobs
from harness.config.schema import ExperimentSpec
from harness.data import DataBundle, DataSettings, LoaderSettings, build_data, make_loader
from harness.engine import distributed
from harness.engine.loop import Parts
from harness.engine.step import StepConfig
from harness.losses import get_loss
from harness.models import Segmenter
from harness.models.unet_plus_plus import DEPTH as UNET_PLUS_PLUS_DEPTH


def seed_everything(seed: int, device: torch.device) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # speed over bitwise repeatability on GPU


@functools.lru_cache(maxsize=2)
def cached_data(settings: DataSettings) -> DataBundle:
    """build_data, memoised per process: the trials of one study worker decode the data once.

    Arrays are never modified in place (splits copy on indexing, augmentation returns new arrays).
    """
    return build_data(settings)


def spec_data(spec: ExperimentSpec) -> DataBundle:
    """The spec's data, decoded once per process (`cached_data`) through the on-disk cache."""
    return cached_data(data_settings(spec))


def data_settings(spec: ExperimentSpec) -> DataSettings:
    """What build_data reads, from the spec's data section (the cache folder resolved; None: no cache)."""
    d = spec.data
    return DataSettings(
        d.dataset, root=d.root, image_size=d.image_size, foreground=d.foreground, val_fraction=d.val_fraction,
        folds=(d.folds, d.fold) if d.folds else None, limit=d.limit, synthetic_size=d.synthetic_size,
        on_bad=d.on_bad, cache_dir=str(Path(d.cache_dir or paths.CACHE).resolve()) if d.cache else None,
        download=d.download, num_classes=d.num_classes, target=d.target, palette=d.palette,
        images_dir=d.images_dir, masks_dir=d.masks_dir, mask_suffix=d.mask_suffix, mask_threshold=d.mask_threshold)


def _print_audit(report: dict) -> None:
    """One line when the audit found something; the full list is the run's audit.json."""
    c = report.get("counts", {})
    found = {k: c.get(k, 0) for k in ("problems", "empty_masks", "near_duplicates", "cross_split_duplicates")}
    if any(found.values()):
        print("data audit: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in found.items())
              + "  (details: audit.json in the run, or `make audit DATA=<root>`)", flush=True)


def out_channels(num_classes: int) -> int:
    return num_classes if num_classes > 2 else 1  # binary keeps its single-logit head


def list_models() -> list[str]:
    return sorted(ARCHS)


def create_model(arch: str, *, out_channels: int = 1, grad_checkpointing: bool = False, **knobs) -> Segmenter:
    """Build a catalog architecture: `knobs` not given take the catalog's defaults, a knob the
    architecture does not take raises ValueError (unless at its default), as does an unknown name."""
    check_knobs(arch, knobs)
    if unknown := set(knobs) - set(KNOBS):
        raise ValueError(f"unknown model knob(s) {sorted(unknown)}; valid: {', '.join(KNOBS)}")
    entry = ARCHS[arch]
    values = {name: knobs.get(name, KNOBS[name].default) for name in sorted(entry.knobs) if KNOBS[name].builds}
    cls = getattr(importlib.import_module(f"harness.models.{entry.module}"), entry.cls)
    return Segmenter(cls(out_channels=out_channels, grad_checkpointing=grad_checkpointing, **values))


def model_name(spec: ExperimentSpec) -> str:
    """What the run's LoggedModel is called (the MLflow UI's Models tab, `runs:/<run id>/<name>`): the
    architecture, and its width where it takes one: 'unet-w32', 'unet_plus_plus-w16', 'resnet34_unet'."""
    arch = spec.model.arch
    return f"{arch}-w{spec.model.base_width}" if "base_width" in ARCHS[arch].knobs else arch


def build_model(spec: ExperimentSpec) -> nn.Module:
    """The spec's model: architecture, knobs and head size (see harness.config.catalog)."""
    m = spec.model.model_dump()
    knobs = {name: m[name] for name in ARCHS[m["arch"]].knobs}
    if knobs.get("decoder_widths") is not None:
        knobs["decoder_widths"] = tuple(knobs["decoder_widths"])
    return create_model(m["arch"], out_channels=out_channels(spec.data.num_classes),
                        grad_checkpointing=spec.train.grad_checkpointing, **knobs)


def build_loss(spec: ExperimentSpec):
    """The spec's loss; with deep supervision, averaged over UNet++'s heads (one per nested level)."""
    heads = UNET_PLUS_PLUS_DEPTH if spec.model.deep_supervision else 1
    return get_loss(spec.train.loss, heads=heads, channels=out_channels(spec.data.num_classes))


def val_threshold(spec: ExperimentSpec) -> float:
    """The threshold validation scores epochs with: the spec's, or 0.5 when it is chosen after training."""
    return 0.5 if spec.eval.threshold == "auto" else spec.eval.threshold


def build_parts(spec: ExperimentSpec, device: torch.device, world: distributed.World = distributed.ONE,
                data=None) -> Parts:
    """The run's data, model, loaders, loss, optimizer, scheduler and scaler. The bench builds the
    parts it times here too (passing the `data` it decoded once), so it measures what runs train."""
    d, t = spec.data, spec.train
    if data is None:
        data = spec_data(spec)
        _print_audit(data.audit)
    model = build_model(spec).to(device)
    cfg = StepConfig(device, resolve_amp(t.amp, device), t.channels_last, d.num_classes, val_threshold(spec))
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    shard = LoaderSettings(t.batch_size, d.num_workers, pin_memory=device.type == "cuda", rank=world.rank,
                           world=world.size)
    loaders = {
        "train": make_loader(data.train, shard, shuffle=True, seed=spec.seed,
                             pipeline=build_pipeline(spec.augment, d.image_size),  # seeded per sample by the loader
                             drop_last=len(data.train) > t.batch_size * world.size),
        "val": make_loader(data.val, shard),
        "test": make_loader(data.test, shard),
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


# ----------------------------------------------------------------------------- device, precision, optimiser


def select_device(name: str = "auto") -> torch.device:
    """'auto' picks cuda, then mps, then cpu. An explicit device that is absent is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is available")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError("train.device=mps but MPS is not available")
    return torch.device(name)


def cpu_supports_bf16() -> bool:
    """True where the CPU has native bf16 (AVX512-BF16 / AMX); elsewhere bf16 autocast is slower."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """Spec 'amp' -> autocast dtype, or None for float32."""
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_supports_bf16():
        return torch.bfloat16
    return None


def dtype_name(dtype: torch.dtype | None) -> str:
    """The `amp.dtype` tag: 'bfloat16', 'float16', or 'float32' when there is no autocast."""
    return str(dtype).removeprefix("torch.") if dtype is not None else "float32"


def planned_precision(amp: str, device: str = "auto") -> str | None:
    """The `amp.dtype` a run of this spec would train in on this machine, before building it; None
    when the device is absent (the run itself then fails with that error). `amp: auto` is bf16
    on one machine and float32 on another, so what identifies a run's cell is the spec hash and
    this, not the spec hash alone."""
    try:
        return dtype_name(resolve_amp(amp, select_device(device)))
    except RuntimeError:
        return None


def compile_model(model: nn.Module, mode: str = "default") -> None:
    """torch.compile `model` in place, so its state_dict keys stay those of the plain model
    (checkpoints, MLflow). `reduce-overhead` also records CUDA graphs: one replay per step instead
    of ~1,000 kernel launches, for models too small to keep an H100 busy; a new input shape (the
    last, shorter validation batch) records one more graph. On CPU there are no graphs to record."""
    model.compile(mode=None if mode == "default" else mode)


def build_optimizer(name: str, params, *, lr: float, weight_decay: float, momentum: float = 0.9,
                    fused: bool = False):
    """`fused` (CUDA parameters only): Adam/AdamW update every parameter in one kernel. On an H100
    the default per-tensor (foreach) AdamW step of ResNet34-UNet took ~10% of the step's GPU time."""
    table = {
        "adam": lambda: torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused or None),
        "adamw": lambda: torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None),
        "sgd": lambda: torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum,
                                       nesterov=momentum > 0),
        "rmsprop": lambda: torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay, momentum=momentum),
    }
    if name not in table:
        raise ValueError(f"unknown optimizer '{name}'; valid: {', '.join(OPTIMIZERS)}")
    return table[name]()


def build_scheduler(name: str, optimizer, *, epochs: int):
    """Stepped once per epoch; 'plateau' is stepped with val Dice (mode max)."""
    if name == "none":
        return None
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    if name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=2)
    raise ValueError(f"unknown scheduler '{name}'; valid: {', '.join(SCHEDULERS)}")
