"""The catalog: every named component a spec can choose, in one place and without importing torch
(specs validate against it before any heavy import). The schema's allowed names come from here.

- ARCHS: each architecture's model file (`harness/models/<module>.py`), class and the knobs it
  takes. A new architecture is one model file plus one entry here (see README, "Extending").
- KNOBS: every model knob with its default and choices, written once. A knob left at its default
  is always fine; a non-default knob an architecture does not take is an error naming both, so a
  spec never records a setting that silently did nothing. base_width is the exception:
  resnet34_unet ignores it (its encoder fixes the widths), so campaigns and studies can switch
  model.arch on top of a UNet spec.
- LOSSES (name -> task), DATASETS (name -> what the kind supports), OPTIMIZERS, SCHEDULERS,
  SAMPLERS, PRUNERS: the names; the implementations live beside the code that runs them
  (harness.losses, harness.data.kinds, harness.build, harness.sweeps.study), and the contract tests
  check that both sides name the same set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Knob:
    default: Any
    choices: tuple | None = None  # None: any value the schema's type allows
    builds: bool = True  # passed to the model's constructor (False: read by the loop, not the model)


KNOBS: dict[str, Knob] = {
    "base_width": Knob(64),
    "upsample": Knob("bilinear", ("bilinear", "nearest", "transpose")),
    "padding_mode": Knob("zeros", ("zeros", "reflect")),
    "downsample": Knob("maxpool", ("maxpool", "strided_conv")),
    "activation": Knob("relu", ("relu", "leaky_relu")),
    "dropout": Knob(0.0),
    "deep_supervision": Knob(False),
    "decoder_widths": Knob(None),
    "encoder_weights": Knob("none", ("none", "imagenet")),
    "encoder_freeze_epochs": Knob(0, builds=False),
}
DEFAULTS = {name: knob.default for name, knob in KNOBS.items() if name != "base_width"}
ANY_ARCH = {"base_width"}  # accepted by every architecture; ignored by those it does not apply to


@dataclass(frozen=True)
class Arch:
    module: str  # harness/models/<module>.py
    cls: str  # the nn.Module class in it; its constructor takes out_channels, grad_checkpointing and `knobs`
    knobs: frozenset[str]


_CONV = frozenset({"upsample", "padding_mode", "activation", "dropout"})
ARCHS: dict[str, Arch] = {
    "unet": Arch("unet", "UNet", _CONV | {"base_width", "downsample"}),
    "unet_plus_plus": Arch("unet_plus_plus", "UNetPlusPlus", _CONV | {"base_width", "downsample", "deep_supervision"}),
    "resnet34_unet": Arch("resnet_unet", "ResNet34UNet",
                          _CONV | {"decoder_widths", "encoder_weights", "encoder_freeze_epochs"}),
}
ARCH_KNOBS = {name: arch.knobs - ANY_ARCH for name, arch in ARCHS.items()}

LOSSES = {"bce": "binary", "bce_with_logits": "binary", "bce_sigmoid_amp": "binary", "dice": "binary",
          "bce_dice": "binary", "ce": "multiclass", "ce_dice": "multiclass"}
BINARY_LOSSES = tuple(name for name, task in LOSSES.items() if task == "binary")
MULTICLASS_LOSSES = tuple(name for name, task in LOSSES.items() if task == "multiclass")


@dataclass(frozen=True)
class DatasetKind:
    on_disk: bool  # reads data.root (False: generated in memory)
    trimap3: bool  # has a trimap, so data.target=trimap3 applies
    free_classes: bool  # K >= 3 classes as plain labels (target binary); else only as trimap3
    palette: bool = False  # RGB masks mapped to classes through data.palette


DATASETS: dict[str, DatasetKind] = {
    "synthetic": DatasetKind(on_disk=False, trimap3=True, free_classes=True),
    "oxford_pet": DatasetKind(on_disk=True, trimap3=True, free_classes=False),
    "folder": DatasetKind(on_disk=True, trimap3=False, free_classes=True, palette=True),
}
ON_DISK = tuple(name for name, kind in DATASETS.items() if kind.on_disk)

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULERS = ("none", "cosine", "plateau")
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")


def check_knobs(arch: str, knobs: dict) -> None:
    """Raise ValueError for an unknown `arch` or a non-default knob that `arch` does not take."""
    if arch not in ARCHS:
        raise ValueError(f"unknown model '{arch}'; valid: {', '.join(sorted(ARCHS))}")
    for name, value in knobs.items():
        if name in DEFAULTS and name not in ARCH_KNOBS[arch] and value != DEFAULTS[name]:
            takers = sorted(a for a, k in ARCH_KNOBS.items() if name in k)
            raise ValueError(f"model.{name}={value!r} does not apply to model.arch={arch}; "
                             f"it applies to {', '.join(takers)}")
