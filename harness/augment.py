"""Augmentation pipelines from spec data: a preset name or a list of albumentations transforms.

Spec form of a transform: `{name: HorizontalFlip, p: 0.5}`; every other key is an argument of the
albumentations class. Pipelines run on uint8 HWC images and HW masks together.

albumentations (and with it torch) is imported only to check or build transforms, never for a
preset name: `validate` of a spec that names a preset imports neither.
"""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING, Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check at import

if TYPE_CHECKING:
    import albumentations as A


def _presets(size: int) -> dict[str, list[dict[str, Any]]]:
    """Named pipelines. Size-dependent transforms get the experiment's image size."""
    return {
        "none": [],
        "flip": [{"name": "HorizontalFlip", "p": 0.5}],
        "crop_flip": [
            {"name": "RandomResizedCrop", "size": [size, size], "scale": [0.5, 1.0], "p": 1.0},
            {"name": "HorizontalFlip", "p": 0.5},
        ],
        "color": [
            {"name": "HorizontalFlip", "p": 0.5},
            {"name": "ColorJitter", "brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "hue": 0.05, "p": 0.8},
        ],
        "elastic": [
            {"name": "HorizontalFlip", "p": 0.5},
            {"name": "ElasticTransform", "alpha": 30.0, "sigma": 6.0, "p": 0.5},
        ],
    }


PRESETS = tuple(_presets(64))


def expand(augment: str | list[dict[str, Any]], image_size: int) -> list[dict[str, Any]]:
    """Preset name or explicit list -> explicit list of transform dicts."""
    if isinstance(augment, str):
        return _presets(image_size)[augment]
    return augment


def _build_one(item: dict[str, Any]) -> A.BasicTransform:
    import albumentations as A

    if not isinstance(item, dict) or "name" not in item:
        raise ValueError(f"each augment item needs a 'name' (an albumentations class), got {item!r}")
    kwargs = {k: v for k, v in item.items() if k != "name"}
    name = item["name"]
    cls = getattr(A, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, A.BasicTransform)):
        raise ValueError(f"unknown albumentations transform '{name}' (names are class names, e.g. HorizontalFlip)")
    if isinstance(kwargs.get("size"), list):
        kwargs["size"] = tuple(kwargs["size"])
    try:
        # strict=True turns albumentations' "unknown argument" warning into an error.
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            return cls(**kwargs, strict=True)
    except Exception as err:  # pydantic ValidationError, TypeError, UserWarning
        raise ValueError(f"transform '{name}': {_one_line(err)}") from None


def _one_line(err: Exception) -> str:
    """Condense albumentations/pydantic errors: drop the 'N validation errors' and URL lines."""
    lines = [ln.strip() for ln in str(err).splitlines()]
    keep = [ln for ln in lines if ln and "validation error" not in ln and "errors.pydantic.dev" not in ln]
    return "; ".join(keep) or repr(err)


def validate_transforms(items: list[dict[str, Any]]) -> None:
    """Raise ValueError naming the first bad transform or argument."""
    for item in items:
        _build_one(item)


def build_pipeline(augment: str | list[dict[str, Any]], image_size: int) -> A.Compose | None:
    """Compose applied to `image` (uint8 HWC) and `mask` (uint8 HW) together; None if empty."""
    import albumentations as A

    items = expand(augment, image_size)
    if not items:
        return None
    return A.Compose([_build_one(i) for i in items], strict=True)
