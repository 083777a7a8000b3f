"""The experiment spec's schema: typed, validated sections (pydantic), and the spec hash.

Loading (files, `base:` inheritance, overrides, error messages) lives in `harness.config.load`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from harness.augment import PRESETS, validate_transforms
from harness.config.catalog import (
    ARCHS,
    BINARY_LOSSES,
    DATASETS,
    KNOBS,
    LOSSES,
    MULTICLASS_LOSSES,
    OPTIMIZERS,
    SCHEDULERS,
    check_knobs,
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _one_of(names) -> Any:
    """Literal type of the catalog's names, so the schema never lists a choice of its own."""
    return Literal[tuple(names)]


def _knob(name: str, **field) -> Any:
    """A model knob's field, with its default from the catalog."""
    return Field(KNOBS[name].default, **field)


WEIGHT_SUFFIXES = (".pth", ".pt")  # model.encoder_weights naming a file rather than none / imagenet


class ModelSpec(_Section):
    arch: _one_of(ARCHS) = "unet"
    upsample: _one_of(KNOBS["upsample"].choices) = _knob("upsample")
    base_width: int = _knob("base_width", ge=4, le=256, description="channels of the first UNet stage (unet, "
                            "unet_plus_plus)")
    padding_mode: _one_of(KNOBS["padding_mode"].choices) = _knob("padding_mode")
    downsample: _one_of(KNOBS["downsample"].choices) = _knob("downsample")
    activation: _one_of(KNOBS["activation"].choices) = _knob("activation")
    dropout: float = _knob("dropout", ge=0.0, lt=1.0, description="Dropout2d after each double conv")
    deep_supervision: bool = _knob("deep_supervision", description="unet_plus_plus: a head per nested level, loss "
                                   "averaged")
    decoder_widths: list[int] | None = _knob("decoder_widths", min_length=5, max_length=5,
                                             description="resnet34_unet decoder widths (default 256 128 64 32 16)")
    encoder_weights: str = _knob("encoder_weights", description="none, imagenet (torch hub cache), or a .pth file: "
                                 "a torchvision resnet34 state dict (relative to the spec file)")
    encoder_freeze_epochs: int = _knob("encoder_freeze_epochs", ge=0, description="resnet34_unet + imagenet: train "
                                       "only the decoder first")

    @field_validator("encoder_weights")
    @classmethod
    def _weights(cls, value: str) -> str:
        choices = KNOBS["encoder_weights"].choices
        if value not in choices and not value.endswith(WEIGHT_SUFFIXES):
            raise ValueError(f"unknown encoder_weights {value!r}; valid: {', '.join(choices)}, or a path to a "
                             f"{' or '.join(WEIGHT_SUFFIXES)} state dict")
        return value

    @model_validator(mode="after")
    def _knobs_apply(self):
        check_knobs(self.arch, self.model_dump())
        if self.encoder_freeze_epochs and self.encoder_weights == "none":
            raise ValueError("model.encoder_freeze_epochs needs pretrained model.encoder_weights (imagenet or a "
                             "file; a random encoder would stay random)")
        return self


class DataSpec(_Section):
    dataset: _one_of(DATASETS) = "synthetic"
    root: str | None = Field(None, description="dataset folder; relative paths are relative to the spec file")
    image_size: int = Field(128, ge=16, le=2048)
    foreground: Literal["not_background", "pet_only"] = "not_background"
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    folds: int | None = Field(None, ge=2, le=100, description="K: trainval split into K folds by name hash (by "
                              "breed for oxford_pet); fold data.fold is validation, in place of val_fraction")
    fold: int = Field(0, ge=0, description="with data.folds: which fold validates (0..K-1)")
    limit: int | None = Field(None, ge=1, description="cap on images per split, for quick runs")
    num_workers: int = Field(0, ge=0, le=64)
    synthetic_size: tuple[int, int] = Field((400, 100), description="synthetic trainval and test counts")
    on_bad: Literal["error", "skip"] = Field("error",
                                             description="unusable files: stop naming the file, or skip and count")
    cache: bool = Field(True, description="decode once into arrays on disk, keyed by the files' fingerprint")
    cache_dir: str | None = Field(None, description="cache folder (default: mlruns/cache); relative to the spec file")
    download: bool = Field(False, description="oxford_pet only: fetch the official archives via torchvision")
    num_classes: int = Field(2, ge=2, le=255, description="2 = binary (one logit, sigmoid); K >= 3: K-way softmax")
    target: Literal["binary", "trimap3"] = Field("binary", description="trimap3: pet/background/border as 3 classes")
    palette: list[tuple[int, int, int]] | None = Field(None,
                                                       description="folder: RGB colour of each class in the masks")
    images_dir: str | None = Field(None, description="folder: the images folder (default: images/ or imgs/)")
    masks_dir: str | None = Field(None, description="folder: the masks folder (default: masks/)")
    mask_suffix: str | None = Field(None, description="folder: mask name = <stem><suffix>.* (default: detected, "
                                    "'' or '_mask')")
    mask_threshold: float | None = Field(None, ge=0, description="folder, binary: foreground = mask value above "
                                         "this (default: half each mask's maximum)")

    @model_validator(mode="after")
    def _root_needed(self):
        kind = DATASETS[self.dataset]
        if self.fold and (self.folds is None or self.fold >= self.folds):
            raise ValueError(f"data.fold={self.fold} needs data.folds > {self.fold}")
        if kind.on_disk and not self.root:
            raise ValueError(f"data.root is required for dataset '{self.dataset}'")
        if self.target == "trimap3" and (self.num_classes != 3 or not kind.trimap3):
            with_trimap = " or ".join(sorted((n for n, k in DATASETS.items() if k.trimap3), reverse=True))
            raise ValueError(f"data.target=trimap3 needs data.num_classes=3 and dataset {with_trimap}")
        if self.palette is not None and (not kind.palette or len(self.palette) != self.num_classes):
            raise ValueError(f"data.palette is for the folder dataset and needs one colour per class "
                             f"({self.num_classes}), got {len(self.palette)}")
        layout = [f for f in ("images_dir", "masks_dir", "mask_suffix", "mask_threshold")
                  if getattr(self, f) is not None]
        if layout and self.dataset != "folder":
            raise ValueError(f"data.{layout[0]} is for the folder dataset, not {self.dataset}")
        if self.mask_threshold is not None and self.num_classes > 2:
            raise ValueError("data.mask_threshold is for binary masks (data.num_classes: 2), not class indices")
        if self.num_classes > 2 and not kind.free_classes and self.target != "trimap3":
            raise ValueError(f"{self.dataset} has 3 classes only as data.target=trimap3")
        return self


class TrainSpec(_Section):
    epochs: int = Field(10, ge=1, le=100_000)
    batch_size: int = Field(16, ge=1, le=4096)
    optimizer: _one_of(OPTIMIZERS) = "adamw"
    lr: float = Field(1e-3, gt=0.0, le=10.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="sgd and rmsprop only")
    scheduler: _one_of(SCHEDULERS) = "cosine"
    loss: _one_of(LOSSES) = Field(
        "bce_with_logits", description="bce: sigmoid then BCELoss, in float32; bce_sigmoid_amp: the sigmoid in the "
        "autocast dtype (a model ending in nn.Sigmoid under AMP); ce, ce_dice: K classes")
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    channels_last: bool = False
    grad_checkpointing: bool = Field(False, description="recompute block activations in the backward pass")
    compile: bool = Field(False, description="torch.compile the model; pays off on CUDA for long runs, not on CPU")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        "default", description="torch.compile mode; reduce-overhead replays CUDA graphs (launch-bound models)")
    grad_clip: float | None = Field(None, gt=0.0)
    early_stopping_patience: int | None = Field(None, ge=1)
    on_nan: Literal["fail", "skip_batch"] = Field("fail",
                                                  description="a NaN/Inf loss fails the run, or skips the batch")
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"

    @field_validator("amp", mode="before")
    @classmethod
    def _yaml_off(cls, value):
        return "off" if value is False else value  # YAML 1.1 reads a bare `off` as false

    @model_validator(mode="after")
    def _mode_needs_compile(self):
        if self.compile_mode != "default" and not self.compile:
            raise ValueError(f"train.compile_mode={self.compile_mode} needs train.compile: true")
        return self


class EvalSpec(_Section):
    threshold: float | Literal["auto"] = Field(0.5, description="probability threshold; auto: the one of "
                                              "0.05, 0.10, ..., 0.95 with the best val Dice at the best epoch")
    nsd_tolerance: float = Field(2.0, gt=0.0, le=1000.0, description="pixels: boundary within this of the truth's "
                                 "counts for test/nsd (binary)")

    @field_validator("threshold")
    @classmethod
    def _in_range(cls, value):
        if value != "auto" and not 0.0 < value < 1.0:
            raise ValueError(f"must be greater than 0 and less than 1, or auto; got {value}")
        return value


# Fields added after runs were recorded: left out of the hash at their defaults, so those runs still
# count as the same spec (campaigns skip them, resume finds them). A value a field did not exist for.
ADDED_LATER = (("train", "compile_mode", "default"), ("eval", "nsd_tolerance", 2.0), ("data", "folds", None),
               ("data", "fold", 0), ("data", "images_dir", None), ("data", "masks_dir", None),
               ("data", "mask_suffix", None), ("data", "mask_threshold", None))


class ExperimentSpec(_Section):
    name: str = "experiment"
    seed: int = Field(0, ge=0, le=2**32 - 1)  # numpy's seed is 32-bit: a larger one fails only after the run starts
    tracking: str = Field("segmentation", description="MLflow experiment name")
    log_model: bool = Field(True, description="log the best model to MLflow (torch.export: seconds per run)")
    log_system_metrics: bool = Field(True, description="MLflow system metrics (CPU, memory, disk; GPU with "
                                     "nvidia-ml-py) every 10 s; not part of the spec hash")
    model: ModelSpec = ModelSpec()
    data: DataSpec = DataSpec()
    augment: str | list[dict[str, Any]] = Field(
        "none", description=f"a preset ({', '.join(PRESETS)}) or a list of albumentations transforms"
    )
    train: TrainSpec = TrainSpec()
    eval: EvalSpec = EvalSpec()

    @field_validator("augment")
    @classmethod
    def _check_augment(cls, value):
        if isinstance(value, str):
            if value not in PRESETS:
                raise ValueError(f"unknown augment preset '{value}'; valid: {', '.join(PRESETS)}")
            return value
        validate_transforms(value)
        return value

    @model_validator(mode="after")
    def _loss_fits_task(self):
        if self.eval.threshold == "auto" and self.data.num_classes > 2:
            raise ValueError("eval.threshold=auto is for binary segmentation; K classes take the argmax")
        multi = self.data.num_classes > 2
        valid = MULTICLASS_LOSSES if multi else BINARY_LOSSES
        if self.train.loss not in valid:
            kind = f"{self.data.num_classes} classes" if multi else "binary segmentation"
            raise ValueError(f"train.loss={self.train.loss} does not fit {kind}; valid: {', '.join(valid)}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def spec_hash(self) -> str:
        """Hash of the resolved spec: equal hashes mean the same experiment. Fields that cannot
        change a result (where the cache lives, whether it is used, downloading) are left out."""
        d = self.to_dict()
        del d["log_system_metrics"]  # how the run is watched, not what it trains
        d["data"] = {k: v for k, v in d["data"].items() if k not in ("cache", "cache_dir", "download")}
        for section, key, default in ADDED_LATER:  # at their defaults, earlier runs' hashes still match
            if d[section][key] == default:
                del d[section][key]
        blob = json.dumps(d, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 1}} -> {'train.lr': 1}; lists become JSON strings."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif isinstance(value, (list, tuple)):
            out[name] = json.dumps(value)
        else:
            out[name] = value
    return out
