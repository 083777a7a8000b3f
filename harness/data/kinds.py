"""Dataset kinds, one object each: how a kind finds its files, which raw mask values are valid,
and how raw masks become training labels (and what the audit calls foreground).

`KINDS` maps the names in `harness.config.catalog.DATASETS` (what specs may name, and what each
kind supports) to these objects; a contract test checks that both name the same set. A new kind
is one class here, one entry in KINDS and one in the catalog (README, "Extending").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.data import readers
from harness.data.readers import DataError

TRIMAP_VALUES = (1, 2, 3)  # 1 pet, 2 background, 3 border
FOREGROUND_RULES = {
    "not_background": lambda t: t != 2,  # pet + border band
    "pet_only": lambda t: t == 1,
}


class OxfordPet:
    """The official Oxford-IIIT Pet layout: images/, annotations/trimaps/, annotations/{trainval,test}.txt.
    Raw masks are trimaps (1 pet, 2 background, 3 border); data.foreground picks the binary rule."""

    on_disk = True
    thresholds_masks = False  # binary foreground by a value threshold (so lossy masks can mislead it)

    def list_files(self, root: Path, **layout):
        """layout: the folder kind's images_dir, masks_dir, mask_suffix (this layout is fixed)."""
        return readers.oxford_pet_files(root)

    def stratum(self, name: str) -> str:
        """What folds are balanced over: the breed, which the official names carry ('Bengal_12')."""
        return name.rsplit("_", 1)[0]

    def valid_values(self, num_classes: int) -> tuple | None:
        return TRIMAP_VALUES

    def foreground(self, raw: np.ndarray, rule: str, num_classes: int, target: str, threshold=None) -> np.ndarray:
        return FOREGROUND_RULES[rule](raw)

    def labels(self, raw: np.ndarray, rule: str, num_classes: int, target: str, threshold=None) -> np.ndarray:
        """{0, 1} by the foreground rule, or with target trimap3 0 pet, 1 background, 2 border."""
        if target == "trimap3":
            return (raw - 1).astype(np.uint8)
        return FOREGROUND_RULES[rule](raw).astype(np.uint8)

    def prepare_root(self, root: Path, download: bool) -> Path:
        return download_oxford_pet(root) if download else root


class Folder(OxfordPet):
    """images/ (or imgs/) + masks/ by stem, as datasets ship them (harness.data.readers.folder_files).
    Binary: foreground = value above half the mask's maximum (`binary_foreground`), or above
    data.mask_threshold; K classes: the mask values are the classes (0..K-1), or RGB colours mapped
    through data.palette."""

    thresholds_masks = True

    def list_files(self, root: Path, **layout):
        return readers.folder_files(root, **layout)

    def stratum(self, name: str) -> str:
        return ""  # no classes to balance folds over

    def valid_values(self, num_classes: int) -> tuple | None:
        return tuple(range(num_classes)) if num_classes > 2 else None

    def foreground(self, raw, rule, num_classes, target, threshold=None):
        return binary_foreground(raw, threshold) if num_classes == 2 else raw > 0

    def labels(self, raw, rule, num_classes, target, threshold=None):
        return raw.astype(np.uint8) if num_classes > 2 else binary_foreground(raw, threshold).astype(np.uint8)

    def prepare_root(self, root: Path, download: bool) -> Path:
        return root


class Synthetic(OxfordPet):
    """Generated in memory (harness.data.synthetic): raw trimaps like Oxford-IIIT Pet's, or with
    K >= 3 classes and target binary, K-class label maps read as a folder's."""

    on_disk = False
    thresholds_masks = False

    def stratum(self, name: str) -> str:
        return ""

    def _as_folder(self, num_classes: int, target: str) -> bool:
        return num_classes > 2 and target == "binary"

    def foreground(self, raw, rule, num_classes, target, threshold=None):
        if self._as_folder(num_classes, target):
            return Folder().foreground(raw, rule, num_classes, target)
        return super().foreground(raw, rule, num_classes, target)

    def labels(self, raw, rule, num_classes, target, threshold=None):
        if self._as_folder(num_classes, target):
            return Folder().labels(raw, rule, num_classes, target)
        return super().labels(raw, rule, num_classes, target)


def binary_foreground(raw: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Foreground of binary masks (..., H, W): value > threshold, or by default > half of each mask's
    own maximum. A clean {0, v} mask gives exactly its v pixels (as "nonzero" did); a lossy one (a
    JPEG's ringing around the edge, values 1..254) is split at the midpoint, not read as all
    foreground. Integer values: raw > max // 2 is raw > max / 2, without a wider dtype."""
    if threshold is not None:
        return raw > threshold
    return raw > raw.max(axis=(-2, -1), keepdims=True) // 2


def lossy_masks(raw: np.ndarray) -> np.ndarray:
    """(N,) bool: masks (N, H, W) whose values are not exactly {0, v} (the audit's lossy_masks)."""
    top = raw.max(axis=(-2, -1), keepdims=True)
    return ((raw != 0) & (raw != top)).reshape(len(raw), -1).any(axis=1)


KINDS = {"synthetic": Synthetic(), "oxford_pet": OxfordPet(), "folder": Folder()}


def download_oxford_pet(root: Path) -> Path:
    """The official layout under root, fetched through torchvision's OxfordIIITPet if absent."""
    for candidate in (root, root / "oxford-iiit-pet"):  # torchvision extracts into <root>/oxford-iiit-pet
        if (candidate / "annotations" / "trainval.txt").is_file():
            return candidate
    try:
        from torchvision.datasets import OxfordIIITPet

        for split in ("trainval", "test"):
            OxfordIIITPet(str(root), split=split, target_types="segmentation", download=True)
    except Exception as err:  # offline, disk full, moved archive: say what to do instead
        raise DataError(f"{root}: data.download could not fetch Oxford-IIIT Pet through torchvision ({err}). "
                        f"Download images.tar.gz and annotations.tar.gz from "
                        f"https://www.robots.ox.ac.uk/~vgg/data/pets/ and extract them into {root}") from None
    return root / "oxford-iiit-pet"
