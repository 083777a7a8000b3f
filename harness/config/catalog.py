"""Which model knobs each architecture takes, and which losses fit which task, without importing
torch (specs validate with these tables before any heavy import).

A knob left at its default is always fine; a non-default knob an architecture does not take is
an error naming both, so a spec never records a setting that silently did nothing. base_width
is the exception: resnet34_unet ignores it (its encoder fixes the widths), so campaigns and
studies can switch model.arch on top of a UNet spec.
"""

from __future__ import annotations

BINARY_LOSSES = ("bce", "bce_with_logits", "bce_sigmoid_amp", "dice", "bce_dice")
MULTICLASS_LOSSES = ("ce", "ce_dice")
DEFAULTS = {"upsample": "bilinear", "padding_mode": "zeros", "downsample": "maxpool", "activation": "relu",
            "dropout": 0.0, "deep_supervision": False, "decoder_widths": None, "encoder_weights": "none",
            "encoder_freeze_epochs": 0}
_CONV = {"upsample", "padding_mode", "activation", "dropout"}
ARCH_KNOBS = {
    "unet": _CONV | {"downsample"},
    "unet_plus_plus": _CONV | {"downsample", "deep_supervision"},
    "resnet34_unet": _CONV | {"decoder_widths", "encoder_weights", "encoder_freeze_epochs"},
}


def check_knobs(arch: str, knobs: dict) -> None:
    """Raise ValueError for a non-default knob that `arch` does not take."""
    if arch not in ARCH_KNOBS:
        raise ValueError(f"unknown model '{arch}'; valid: {', '.join(sorted(ARCH_KNOBS))}")
    for name, value in knobs.items():
        if name in DEFAULTS and name not in ARCH_KNOBS[arch] and value != DEFAULTS[name]:
            takers = sorted(a for a, k in ARCH_KNOBS.items() if name in k)
            raise ValueError(f"model.{name}={value!r} does not apply to model.arch={arch}; "
                             f"it applies to {', '.join(takers)}")
