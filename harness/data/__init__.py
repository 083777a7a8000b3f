"""Datasets by short name (`synthetic`, `oxford_pet`, `folder`; see harness.data.kinds) -> train/val/test
arrays + loaders.

Images are decoded and resized once into uint8 arrays, cached on disk (harness.data.cache), and
audited (harness.data.audit); workers only augment. Batches are uint8 images (N, 3, H, W) and
float masks (N, 1, H, W) in {0, 1}; conversion to float and normalisation happen on the device
(see harness.models.Segmenter).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from harness.data import cache, readers, synthetic
from harness.data.audit import audit as run_audit
from harness.data.kinds import KINDS
from harness.data.loaders import SegDataset, make_loader
from harness.data.native import NativeMasks
from harness.data.readers import DataError, Decoded

DATASETS = tuple(KINDS)
ON_BAD = ("error", "skip")


@dataclass
class Split:
    images: np.ndarray  # (N, S, S, 3) uint8, at data.image_size
    masks: np.ndarray   # (N, S, S) uint8 labels: {0, 1}, or class indices
    names: list[str]
    native: NativeMasks | None = None  # the same labels at each file's stored size (test splits on disk)

    def __len__(self) -> int:
        return len(self.names)

    def take(self, idx) -> "Split":
        idx = list(idx)
        return Split(np.ascontiguousarray(self.images[idx]), np.ascontiguousarray(self.masks[idx]),
                     [self.names[i] for i in idx], self.native.take(idx) if self.native is not None else None)


@dataclass
class DataBundle:
    train: Split
    val: Split
    test: Split
    fingerprint: str
    info: dict = field(default_factory=dict)
    audit: dict = field(default_factory=dict)


def _carve(names: list[str], fraction: float) -> tuple[list[int], list[int]]:
    """Deterministic hold-out: the first round(fraction * N) names by sha1 go to the second part.

    Depends only on the names, so it is stable across seeds, machines and subsets.
    """
    order = sorted(range(len(names)), key=lambda i: hashlib.sha1(names[i].encode()).hexdigest())
    k = max(1, round(fraction * len(names)))
    return sorted(order[k:]), sorted(order[:k])


TARGETS = ("binary", "trimap3")


def _read_disk(dataset: str, path: Path, image_size: int, cache_dir: str | None, num_classes: int,
               palette, layout: dict) -> tuple[dict, list, str]:
    """Decoded splits (from the cache when warm), listing problems, and the cache entry path ('' if off).
    layout: the folder kind's images_dir, masks_dir and mask_suffix (None: detected)."""
    if not path.is_dir():
        raise DataError(f"{path}: data.root is not a directory")
    kind = KINDS[dataset]
    files, problems = kind.list_files(path, **layout)
    valid = kind.valid_values(num_classes)
    key = readers.stat_key(files)
    if palette:  # palette masks are cached as class indices, so the palette is part of the key
        key += "-p" + hashlib.sha1(str(palette).encode()).hexdigest()[:8]
    entry = cache.entry_dir(Path(cache_dir), dataset, key, image_size) if cache_dir else None
    loaded = cache.load(entry) if entry else None
    if loaded is not None:
        return loaded[0], problems, str(entry)
    decoded = {split: readers.decode_split(items, image_size, split, valid, palette,
                                           keep_native=split in ("test", "all"))  # 'all': test is carved from it
               for split, items in files.items()}
    if entry:
        cache.save(entry, decoded, {"root": str(path.resolve()), "dataset": dataset, "image_size": image_size})
    return decoded, problems, str(entry or "")


def _synthetic(seed: int, sizes: tuple[int, int], image_size: int, k_classes: int) -> dict[str, Decoded]:
    """Raw trimaps (1/2/3), or with k_classes >= 3 the K-class mode's labels (0..K-1)."""
    out = {}
    step = max(1, image_size // readers.THUMB)
    for split_id, (split, count) in enumerate(zip(("trainval", "test"), sizes)):
        images, trimaps, names = synthetic.make_split(seed, split_id, count, image_size)
        if k_classes > 2:
            images, trimaps = synthetic.k_class_mode(images, trimaps, k_classes)
        out[split] = Decoded(images, trimaps, images[:, ::step, ::step], names, b"", [])
    return out


def build_data(dataset: str, *, root: str | None, image_size: int, foreground: str = "not_background",
               val_fraction: float = 0.1, folds: tuple[int, int] | None = None, limit: int | None = None,
               synthetic_size=(400, 100),
               synthetic_seed: int = 0, on_bad: str = "error", cache_dir: str | None = None,
               download: bool = False, num_classes: int = 2, target: str = "binary",
               palette: list | None = None, layout=None,
               mask_threshold: float | None = None, require_splits: bool = True) -> DataBundle:
    """Load a dataset by name into train/val/test splits, audited.

    on_bad='error' raises DataError naming the first unusable file; 'skip' drops unusable files
    and counts them in info['skipped']. cache_dir=None decodes every time. Masks are {0, 1}
    (num_classes 2) or class indices: target='trimap3' (pet, background, border), a `folder`
    of index masks (or RGB masks with a `palette`, one colour per class), or synthetic K-class.
    layout: images_dir / masks_dir / mask_suffix of a `folder` (harness.data.readers.folder_files), a
    dict or (key, value) pairs;
    mask_threshold: a binary `folder` mask's foreground is value > it (default: half each mask's max).
    require_splits=False (the audit) returns empty train or test splits instead of raising DataError.
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset '{dataset}'; valid: {', '.join(DATASETS)}")
    if on_bad not in ON_BAD:
        raise ValueError(f"unknown on_bad '{on_bad}'; valid: {', '.join(ON_BAD)}")
    entry, kind = "", KINDS[dataset]
    if not kind.on_disk:
        k_mode = num_classes if target == "binary" else 2
        decoded, problems = _synthetic(synthetic_seed, synthetic_size, image_size, k_mode), []
        fp = synthetic.fingerprint(synthetic_seed, synthetic_size, image_size) + (f"-k{k_mode}" if k_mode > 2 else "")
    else:
        path = kind.prepare_root(Path(root), download)
        decoded, problems, entry = _read_disk(dataset, path, image_size, cache_dir, num_classes, palette,
                                              dict(layout or ()))
        fp = hashlib.sha256(b"".join(d.digest for d in decoded.values()) + f"{image_size}".encode()).hexdigest()[:16]
    listing = problems
    problems = listing + [p for d in decoded.values() for p in d.problems]
    if problems and on_bad == "error":
        more = f" (and {len(problems) - 1} more unusable files)" if len(problems) > 1 else ""
        raise DataError(f"{problems[0]}{more}. `make audit DATA=<root>` lists them all; "
                        f"data.on_bad=skip trains without them")
    fg = {split: kind.foreground(d.masks, foreground, num_classes, target, mask_threshold)
          for split, d in decoded.items()}
    lossy_check = kind.thresholds_masks and num_classes == 2
    report = _audit(decoded, fg, listing, entry, f"{foreground}-t{mask_threshold}", lossy_check)

    def rule(raw):  # raw mask values -> training labels; the same for both resolutions
        return kind.labels(raw, foreground, num_classes, target, mask_threshold)

    labels = {split: rule(d.masks) for split, d in decoded.items()}
    decoded = {split: _labelled_native(d, rule) for split, d in decoded.items()}
    if folds is not None and "val" in decoded:
        raise DataError(f"{root}: data.folds splits trainval into folds, but this dataset declares a val split")
    train, val, test = _split(decoded, labels, val_fraction, folds, kind.stratum)
    if (not len(train) or not len(test)) and require_splits:
        first = f" (first: {problems[0].path})" if problems else ""
        raise DataError(f"{root}: no usable images left in {'train' if not len(train) else 'test'} "
                        f"after skipping {len(problems)} unusable files{first}")
    if limit:
        train, val, test = (s.take(range(min(limit, len(s)))) for s in (train, val, test))
    info = {"n_train": len(train), "n_val": len(val), "n_test": len(test), "skipped": len(problems)}
    if num_classes > 2:
        counts = np.bincount(train.masks.reshape(-1), minlength=num_classes)[:num_classes]
        info["class_fractions_train"] = " ".join(f"{c / max(counts.sum(), 1):.3f}" for c in counts)
    else:
        info["fg_fraction_train"] = round(float(train.masks.mean()), 4) if len(train) else 0.0
    return DataBundle(train, val, test, fp, info, report)


def _labelled_native(d: Decoded, rule) -> Decoded:
    """`d` with its stored-size masks read through the labels rule (the same one as the training masks)."""
    if d.native is None:
        return d
    return replace(d, native=d.native.with_transform(rule))


def fold_of(names: list[str], k: int, stratum=lambda name: "") -> list[int]:
    """Each name's fold in 0..k-1: within each stratum (oxford_pet: the breed), names in sha1 order are
    dealt round-robin, so every fold holds each stratum's images to within one. Depends only on the
    names: the same folds for every seed, machine and subset."""
    folds, groups = [0] * len(names), {}
    for i, name in enumerate(names):
        groups.setdefault(stratum(name), []).append(i)
    for members in groups.values():
        for rank, i in enumerate(sorted(members, key=lambda i: hashlib.sha1(names[i].encode()).hexdigest())):
            folds[i] = rank % k
    return folds


def _split(decoded: dict, labels: dict, val_fraction: float, folds: tuple[int, int] | None = None,
           stratum=lambda name: "") -> tuple[Split, Split, Split]:
    """(train, val, test). A declared val split (val/ folder, val.txt) is used as given; otherwise val
    is carved from trainval by name hash, or is fold i of data.folds. A layout with no declared test
    split ('all') has its test split carved the same way first."""
    splits = {s: Split(d.images, labels[s], d.names, d.native) for s, d in decoded.items()}
    if "all" in splits:
        keep, test = _carve(splits["all"].names, val_fraction)
        splits |= {"trainval": splits["all"].take(keep), "test": splits.pop("all").take(test)}
    test, trainval = splits["test"], replace(splits["trainval"], native=None)  # only test is scored at stored size
    if "val" in splits:
        train_idx, val = range(len(trainval)), splits["val"]
        return trainval.take(train_idx), val.take(range(len(val))), test.take(range(len(test)))
    if folds is None:
        train_idx, val_idx = _carve(trainval.names, val_fraction)
    else:  # (k, i): fold i of k is validation, the other folds train; test is untouched
        k, i = folds
        assigned = fold_of(trainval.names, k, stratum)
        train_idx = [j for j, f in enumerate(assigned) if f != i]
        val_idx = [j for j, f in enumerate(assigned) if f == i]
    return trainval.take(train_idx), trainval.take(val_idx), test.take(range(len(test)))


def _audit(decoded: dict, fg: dict, listing: list, entry: str, rule: str, lossy_check: bool = False) -> dict:
    """The audit of these splits (read from the cache entry when computed before) plus the
    listing problems, which are not part of the entry (an unmatched stem has no cached pixels)."""
    name = f"audit-{rule}.json"
    report = cache.read_json(Path(entry), name) if entry else None
    if report is None:
        report = run_audit(decoded, fg, lossy_check=lossy_check)
        if entry:
            cache.write_json(Path(entry), name, report)
    report["problems"] = [p.to_dict() for p in listing] + report["problems"]
    report["counts"]["problems"] = len(report["problems"])
    for p in listing:
        key = f"problems.{p.kind}"
        report["counts"][key] = report["counts"].get(key, 0) + 1
    return report


__all__ = ["DATASETS", "DataBundle", "DataError", "SegDataset", "Split", "build_data", "make_loader"]
