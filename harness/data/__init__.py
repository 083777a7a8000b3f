"""Datasets by short name (`synthetic`, `oxford_pet`, `folder`) -> train/val/test arrays + loaders.

Images are decoded and resized once into uint8 arrays; workers only augment. Batches are
uint8 images (N, 3, H, W) and float masks (N, 1, H, W) in {0, 1}; conversion to float and
normalisation happen on the device (see harness.models.Segmenter).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from harness.data import readers, synthetic
from harness.data.readers import DataError

DATASETS = ("synthetic", "oxford_pet", "folder")
FOREGROUND_RULES = {
    "not_background": lambda t: t != 2,  # pet + border band
    "pet_only": lambda t: t == 1,
}


@dataclass
class Split:
    images: np.ndarray  # (N, H, W, 3) uint8
    masks: np.ndarray   # (N, H, W) uint8 in {0, 1}
    names: list[str]

    def __len__(self) -> int:
        return len(self.names)

    def take(self, idx) -> "Split":
        idx = list(idx)
        return Split(self.images[idx], self.masks[idx], [self.names[i] for i in idx])


@dataclass
class DataBundle:
    train: Split
    val: Split
    test: Split
    fingerprint: str
    info: dict = field(default_factory=dict)


def _carve(names: list[str], fraction: float) -> tuple[list[int], list[int]]:
    """Deterministic hold-out: the first round(fraction * N) names by sha1 go to the second part.

    Depends only on the names, so it is stable across seeds, machines and subsets.
    """
    order = sorted(range(len(names)), key=lambda i: hashlib.sha1(names[i].encode()).hexdigest())
    k = max(1, round(fraction * len(names)))
    return sorted(order[k:]), sorted(order[:k])


def _binarise(trimaps: np.ndarray, names: list[str], rule: str, source: str) -> np.ndarray:
    if source == "folder":
        return (trimaps > 0).astype(np.uint8)  # folder masks: any nonzero pixel is foreground
    bad = ~np.isin(trimaps, (1, 2, 3)).all(axis=(1, 2))
    if bad.any():
        i = int(np.argmax(bad))
        values = sorted(set(np.unique(trimaps[i]).tolist()) - {1, 2, 3})
        raise DataError(f"trimap of '{names[i]}' has values {values}; expected only 1 (pet), 2 (background), 3 (border)")
    return FOREGROUND_RULES[rule](trimaps).astype(np.uint8)


def build_data(dataset: str, *, root: str | None, image_size: int, foreground: str = "not_background",
               val_fraction: float = 0.1, limit: int | None = None, synthetic_size=(400, 100),
               synthetic_seed: int = 0) -> DataBundle:
    """Load a dataset by name into train/val/test splits. Raises DataError naming the file."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset '{dataset}'; valid: {', '.join(DATASETS)}")
    if dataset == "synthetic":
        n_trainval, n_test = synthetic_size
        raw = {
            "trainval": synthetic.make_split(synthetic_seed, 0, n_trainval, image_size),
            "test": synthetic.make_split(synthetic_seed, 1, n_test, image_size),
        }
        fp = synthetic.fingerprint(synthetic_seed, synthetic_size, image_size)
    else:
        path = Path(root)
        if not path.is_dir():
            raise DataError(f"{path}: data.root is not a directory")
        files = readers.oxford_pet_files(path) if dataset == "oxford_pet" else readers.folder_files(path)
        if "all" in files:  # folder layout without a declared test split
            keep, test = _carve([n for n, _, _ in files["all"]], val_fraction)
            files = {"trainval": [files["all"][i] for i in keep], "test": [files["all"][i] for i in test]}
        raw, digests = {}, []
        for split, items in files.items():
            images, masks, digest = readers.decode_split(items, image_size, split)
            raw[split] = (images, masks, [n for n, _, _ in items])
            digests.append(digest)
        fp = hashlib.sha256(b"".join(digests) + f"{image_size}".encode()).hexdigest()[:16]
    splits = {}
    for name, (images, trimaps, names) in raw.items():
        splits[name] = Split(images, _binarise(trimaps, names, foreground, dataset), names)
    train_idx, val_idx = _carve(splits["trainval"].names, val_fraction)
    train, val, test = splits["trainval"].take(train_idx), splits["trainval"].take(val_idx), splits["test"]
    if limit:
        train, val, test = (s.take(range(min(limit, len(s)))) for s in (train, val, test))
    info = {"n_train": len(train), "n_val": len(val), "n_test": len(test),
            "fg_fraction_train": round(float(train.masks.mean()), 4)}
    return DataBundle(train, val, test, fp, info)


class SegDataset(Dataset):
    """Index -> (image uint8 (3, H, W), mask uint8 (1, H, W), index). Augments if a pipeline is given."""

    def __init__(self, split: Split, pipeline=None):
        self.split, self.pipeline = split, pipeline

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        image, mask = self.split.images[i], self.split.masks[i]
        if self.pipeline is not None:
            out = self.pipeline(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        mask = torch.from_numpy(np.ascontiguousarray(mask))[None]
        return image, mask, i


def _seed_worker(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    seed = info.seed % 2**31  # torch gives each worker base_seed + id, derived from the loader generator
    np.random.seed(seed)
    pipeline = getattr(info.dataset, "pipeline", None)
    if pipeline is not None:  # albumentations does not reseed per worker on its own
        pipeline.set_random_seed(seed)


def make_loader(split: Split, *, batch_size: int, shuffle: bool, pipeline=None, num_workers: int = 0,
                seed: int = 0, pin_memory: bool = False, drop_last: bool = False) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        SegDataset(split, pipeline), batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
        num_workers=num_workers, pin_memory=pin_memory, generator=generator,
        worker_init_fn=_seed_worker if num_workers else None,
        persistent_workers=num_workers > 0,
    )


__all__ = ["DATASETS", "DataBundle", "DataError", "Split", "build_data", "make_loader"]
