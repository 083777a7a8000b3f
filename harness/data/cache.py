"""On-disk dataset cache: each split decoded and resized once into .npy arrays, memory-mapped later.

Key = the files' names, sizes and mtimes (`readers.stat_key`) + dataset kind + image size +
CACHE_VERSION, so editing, adding or removing a file makes a new entry and never serves stale
pixels. Masks are stored as the raw label values from the files; the foreground rule (or
multi-class target) is applied after loading, a vectorised compare, so one entry serves every
rule and cannot hand a run masks made under another rule. The splits a test set comes from also
keep their masks at the stored size (PNG bytes + offsets), which the test metrics are scored on.
An entry is written to a temporary folder and renamed into place, so a crash or a concurrent
builder never leaves half an entry.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from harness.data.readers import Decoded, Problem
from harness.data.stored_size import StoredMasks

CACHE_VERSION = 3  # 2: test masks kept at their stored sizes (harness.data.stored_size); 3: conversion notes
ARRAYS = ("images", "masks", "thumbs")
STORED_ARRAYS = ("blob", "offsets")  # on disk as <split>_native_<a>.npy: the v3 format keeps its file names


def entry_dir(cache_dir: Path, dataset: str, key: str, image_size: int) -> Path:
    return Path(cache_dir) / f"{dataset}-{image_size}px-{key}-v{CACHE_VERSION}"


def load(entry: Path) -> tuple[dict[str, Decoded], dict] | None:
    """The cached splits (arrays memory-mapped, read-only) and the entry's metadata, or None."""
    meta_path = entry / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        splits = {}
        for split, info in meta["splits"].items():
            arrays = [np.load(entry / f"{split}_{a}.npy", mmap_mode="r") for a in ARRAYS]
            problems = [Problem(**p) for p in info["problems"]]
            stored = None
            if info.get("native"):
                stored = StoredMasks(*(np.load(entry / f"{split}_native_{a}.npy", mmap_mode="r")
                                       for a in STORED_ARRAYS))
            notes = [Problem(**p) for p in info.get("notes", [])]
            splits[split] = Decoded(*arrays, info["names"], bytes.fromhex(info["digest"]), problems, stored, notes)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # unreadable entry: rebuild it rather than fail the run
    return splits, meta


def save(entry: Path, splits: dict[str, Decoded], extra: dict) -> None:
    """Write `splits` atomically under `entry` (tmp folder + rename); a lost race is harmless."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        meta = {"version": CACHE_VERSION, **extra, "splits": {}}
        for split, d in splits.items():
            for a in ARRAYS:
                np.save(tmp / f"{split}_{a}.npy", getattr(d, a))
            if d.stored is not None:
                for a in STORED_ARRAYS:
                    np.save(tmp / f"{split}_native_{a}.npy", getattr(d.stored, a))
            meta["splits"][split] = {"names": d.names, "digest": d.digest.hex(), "native": d.stored is not None,
                                     "problems": [p.to_dict() for p in d.problems],
                                     "notes": [p.to_dict() for p in d.notes]}
        (tmp / "meta.json").write_text(json.dumps(meta))
        os.rename(tmp, entry)
    except OSError:
        pass  # entry already there (another process won), or the disk is full: the run goes on uncached
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(entry: Path, name: str, payload: dict) -> None:
    """Add a small derived result (e.g. the audit) to an existing entry, atomically."""
    if not entry.is_dir():
        return
    tmp = entry / f".{name}.tmp{os.getpid()}"
    try:
        tmp.write_text(json.dumps(payload))
        os.replace(tmp, entry / name)
    except OSError:
        tmp.unlink(missing_ok=True)


def read_json(entry: Path, name: str) -> dict | None:
    try:
        return json.loads((entry / name).read_text())
    except (OSError, ValueError):
        return None
