"""Datasets by short name (`synthetic`, `oxford_pet`, `folder`; see harness.data.kinds) -> train/val/test
arrays + loaders.

Images are decoded and resized once into uint8 arrays, cached on disk (harness.data.cache), and
audited (harness.data.audit); workers only augment. Batches are uint8 images (N, 3, H, W) and
float masks (N, 1, H, W) in {0, 1}; conversion to float and normalisation happen on the device
(see harness.models.Segmenter).
"""

from __future__ import annotations

import hashlib
from dataclasses import KW_ONLY, dataclass, field, replace
from pathlib import Path

import numpy as np

from harness.data import cache, readers, synthetic
from harness.data.audit import audit as run_audit
from harness.data.kinds import KINDS
from harness.data.loaders import LoaderSettings, SegDataset, make_loader
from harness.data.readers import DataError, Decoded
from harness.data.stored_size import StoredMasks

DATASETS = tuple(KINDS)
ON_BAD = ("error", "skip")


@dataclass(frozen=True)
class DataSettings:
    """Everything `build_data` reads: which data, how it is read, labelled and split. Frozen and
    hashable, so a memo can key on it (harness.build.cached_data); `palette` and `synthetic_size`
    are stored as tuples whatever sequence they are given as."""

    dataset: str  # a KINDS name: synthetic, oxford_pet, folder
    _: KW_ONLY
    root: str | None
    image_size: int
    foreground: str = "not_background"
    val_fraction: float = 0.1
    folds: tuple[int, int] | None = None  # (k, i): fold i of k validates, in place of val_fraction
    limit: int | None = None  # cap on images per split
    synthetic_size: tuple[int, int] = (400, 100)  # synthetic trainval and test counts
    synthetic_seed: int = 0
    on_bad: str = "error"  # 'error' raises naming the first unusable file; 'skip' drops and counts them
    cache_dir: str | None = None  # None: decode every time
    download: bool = False
    num_classes: int = 2
    target: str = "binary"
    palette: tuple[tuple[int, int, int], ...] | None = None  # folder: the RGB colour of each class
    images_dir: str | None = None  # folder layout (harness.data.readers.folder_files); None: detected
    masks_dir: str | None = None
    mask_suffix: str | None = None
    mask_threshold: float | None = None  # binary folder masks: foreground = value > it (default: half the max)
    require_splits: bool = True  # False (the audit): empty train or test splits instead of DataError

    def __post_init__(self):
        object.__setattr__(self, "synthetic_size", tuple(self.synthetic_size))
        if self.palette is not None:
            object.__setattr__(self, "palette", tuple(map(tuple, self.palette)))


@dataclass
class Split:
    images: np.ndarray  # (N, S, S, 3) uint8, at data.image_size
    masks: np.ndarray   # (N, S, S) uint8 labels: {0, 1}, or class indices
    names: list[str]
    stored: StoredMasks | None = None  # the same labels at each file's stored size (test splits on disk)

    def __len__(self) -> int:
        return len(self.names)

    def take(self, idx) -> "Split":
        idx = list(idx)
        return Split(np.ascontiguousarray(self.images[idx]), np.ascontiguousarray(self.masks[idx]),
                     [self.names[i] for i in idx], self.stored.take(idx) if self.stored is not None else None)


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


def _read_disk(s: DataSettings, path: Path) -> tuple[dict, list, str]:
    """Decoded splits (from the cache when warm), listing problems, and the cache entry path ('' if off)."""
    if not path.is_dir():
        raise DataError(f"{path}: data.root is not a directory")
    kind = KINDS[s.dataset]
    files, problems = kind.list_files(path, images_dir=s.images_dir, masks_dir=s.masks_dir, mask_suffix=s.mask_suffix)
    valid = kind.valid_values(s.num_classes)
    key = readers.stat_key(files)
    if s.palette:  # palette masks are cached as class indices, so the palette is part of the key
        key += "-p" + hashlib.sha1(str(s.palette).encode()).hexdigest()[:8]
    entry = cache.entry_dir(Path(s.cache_dir), s.dataset, key, s.image_size) if s.cache_dir else None
    loaded = cache.load(entry) if entry else None
    if loaded is not None:
        return loaded[0], problems, str(entry)
    decoded = {split: readers.decode_split(items, s.image_size, split, valid, s.palette,
                                           keep_stored=split in ("test", "all"))  # 'all': test is carved from it
               for split, items in files.items()}
    if entry:
        cache.save(entry, decoded, {"root": str(path.resolve()), "dataset": s.dataset, "image_size": s.image_size})
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


def build_data(s: DataSettings) -> DataBundle:
    """Load the dataset `s` names into train/val/test splits, audited.

    s.on_bad='error' raises DataError naming the first unusable file; 'skip' drops unusable files and
    counts them in info['skipped']. Masks are {0, 1} (num_classes 2) or class indices: target='trimap3'
    (pet, background, border), a `folder` of index masks (or RGB masks with a `palette`, one colour per
    class), or synthetic K-class. s.require_splits=False (the audit) returns empty train or test
    splits instead of raising DataError.
    """
    if s.dataset not in DATASETS:
        raise ValueError(f"unknown dataset '{s.dataset}'; valid: {', '.join(DATASETS)}")
    if s.on_bad not in ON_BAD:
        raise ValueError(f"unknown on_bad '{s.on_bad}'; valid: {', '.join(ON_BAD)}")
    kind = KINDS[s.dataset]
    decoded, listing, entry, fp = _decode_splits(s)
    problems = listing + [p for d in decoded.values() for p in d.problems]
    if problems and s.on_bad == "error":
        more = f" (and {len(problems) - 1} more unusable files)" if len(problems) > 1 else ""
        raise DataError(f"{problems[0]}{more}. `make audit DATA=<root>` lists them all; "
                        f"data.on_bad=skip trains without them")
    fg = {split: kind.foreground(d.masks, s.foreground, s.num_classes, s.target, s.mask_threshold)
          for split, d in decoded.items()}
    lossy_check = kind.thresholds_masks and s.num_classes == 2
    report = _audit_decoded(decoded, fg, listing, entry, f"{s.foreground}-t{s.mask_threshold}", lossy_check)

    def rule(raw):  # raw mask values -> training labels; the same for both resolutions
        return kind.labels(raw, s.foreground, s.num_classes, s.target, s.mask_threshold)

    labels = {split: rule(d.masks) for split, d in decoded.items()}
    decoded = {split: _labelled_stored(d, rule) for split, d in decoded.items()}
    if s.folds is not None and "val" in decoded:
        raise DataError(f"{s.root}: data.folds splits trainval into folds, but this dataset declares a val split")
    train, val, test = _split(decoded, labels, s.val_fraction, s.folds, kind.stratum)
    if (not len(train) or not len(test)) and s.require_splits:
        first = f" (first: {problems[0].path})" if problems else ""
        raise DataError(f"{s.root}: no usable images left in {'train' if not len(train) else 'test'} "
                        f"after skipping {len(problems)} unusable files{first}")
    if s.limit:
        train, val, test = (part.take(range(min(s.limit, len(part)))) for part in (train, val, test))
    return DataBundle(train, val, test, fp, _info(train, val, test, len(problems), s.num_classes), report)


def _decode_splits(s: DataSettings) -> tuple[dict[str, Decoded], list, str, str]:
    """(decoded splits, listing problems, cache entry path or '', data fingerprint)."""
    kind = KINDS[s.dataset]
    if not kind.on_disk:
        k_mode = s.num_classes if s.target == "binary" else 2
        fp = synthetic.fingerprint(s.synthetic_seed, s.synthetic_size, s.image_size)
        fp += f"-k{k_mode}" if k_mode > 2 else ""
        return _synthetic(s.synthetic_seed, s.synthetic_size, s.image_size, k_mode), [], "", fp
    decoded, problems, entry = _read_disk(s, kind.prepare_root(Path(s.root), s.download))
    fp = hashlib.sha256(b"".join(d.digest for d in decoded.values()) + f"{s.image_size}".encode()).hexdigest()[:16]
    return decoded, problems, entry, fp


def _info(train: Split, val: Split, test: Split, skipped: int, num_classes: int) -> dict:
    """The split sizes, the files skipped, and the training split's class (or foreground) fractions."""
    info = {"n_train": len(train), "n_val": len(val), "n_test": len(test), "skipped": skipped}
    if num_classes > 2:
        counts = np.bincount(train.masks.reshape(-1), minlength=num_classes)[:num_classes]
        info["class_fractions_train"] = " ".join(f"{c / max(counts.sum(), 1):.3f}" for c in counts)
    else:
        info["fg_fraction_train"] = round(float(train.masks.mean()), 4) if len(train) else 0.0
    return info


def _labelled_stored(d: Decoded, rule) -> Decoded:
    """`d` with its stored-size masks read through the labels rule (the same one as the training masks)."""
    if d.stored is None:
        return d
    return replace(d, stored=d.stored.with_transform(rule))


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
    splits = {s: Split(d.images, labels[s], d.names, d.stored) for s, d in decoded.items()}
    if "all" in splits:
        keep, test = _carve(splits["all"].names, val_fraction)
        splits |= {"trainval": splits["all"].take(keep), "test": splits.pop("all").take(test)}
    test, trainval = splits["test"], replace(splits["trainval"], stored=None)  # only test is scored at stored size
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


def _audit_decoded(decoded: dict, fg: dict, listing: list, entry: str, rule: str, lossy_check: bool = False) -> dict:
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


__all__ = ["DATASETS", "DataBundle", "DataError", "DataSettings", "LoaderSettings", "SegDataset", "Split",
           "build_data", "make_loader"]
