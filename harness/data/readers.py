"""Readers for image/mask folders on disk: the official Oxford-IIIT Pet layout and `folder`.

Listing (`oxford_pet_files`, `folder_files`) returns, per split, (name, image path, mask path)
items plus the problems found while pairing them. `decode_split` turns items into uint8 arrays
at the experiment's size; a file that cannot be used becomes a `Problem` naming it, never a
silent drop. Whether a problem stops the run or is skipped is the caller's decision (`on_bad`).
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from harness.data import forms, stored_size
from harness.data.forms import BadFile
from harness.data.stored_size import StoredMasks
from harness.progress import progress

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
THUMB = 32  # near-duplicate thumbnails: 32x32 bilinear, compared by MSE on 0-255 RGB
Item = tuple[str, Path, Path]


class DataError(Exception):
    """A dataset that cannot be read; the message names the file."""


@dataclass(frozen=True)
class Problem:
    """One unusable entry. kind: missing_image, missing_mask, bad_image, bad_mask, mask_mode,
    mask_values, size_mismatch or unmatched_stem."""

    split: str
    name: str
    path: str
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.path}: {self.detail}"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Decoded:
    """A decoded split: only the usable items, in listing order."""

    images: np.ndarray  # (N, S, S, 3) uint8
    masks: np.ndarray   # (N, S, S) uint8, raw label values as stored in the files
    thumbs: np.ndarray  # (N, 32, 32, 3) uint8, from the original-resolution image
    names: list[str]
    digest: bytes       # sha256 over the bytes of every file read: the content fingerprint
    problems: list[Problem]
    stored: StoredMasks | None = None  # the masks at their stored sizes (raw values), where kept
    notes: list[Problem] = field(default_factory=list)  # conversions of usable files (harness.data.forms)


def _read_split_file(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: split file not found (expected the official Oxford-IIIT Pet layout)")
    try:
        text = path.read_text()
    except OSError as err:
        raise DataError(f"{path}: cannot read split file ({err.strerror or err})") from None
    names = [ln.split()[0] for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if not names:
        raise DataError(f"{path}: split file lists no images")
    return names


def _list_dir(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found")
    try:
        return sorted(folder.iterdir())
    except OSError as err:  # PermissionError on an unreadable directory
        raise DataError(f"{folder}: cannot list directory ({err.strerror or err})") from None


def oxford_pet_files(root: Path) -> tuple[dict[str, list[Item]], list[Problem]]:
    """{'trainval': [(name, image, trimap)], 'test': [...]} from the official layout."""
    for folder in (root / "images", root / "annotations" / "trimaps"):
        _list_dir(folder)  # a missing or unreadable folder is one clear error, not N missing files
    out = {}
    for split in ("trainval", "test"):
        names = _read_split_file(root / "annotations" / f"{split}.txt")
        out[split] = [(n, root / "images" / f"{n}.jpg", root / "annotations" / "trimaps" / f"{n}.png") for n in names]
    return out, []


IMAGE_DIRS, MASK_DIRS, SPLIT_DIRS = ("images", "imgs"), ("masks",), ("train", "val", "test")
MASK_SUFFIXES = (*IMAGE_SUFFIXES, ".gif")  # Carvana's masks are palette GIFs


def folder_files(root: Path, images_dir: str | None = None, masks_dir: str | None = None,
                 mask_suffix: str | None = None) -> tuple[dict[str, list[Item]], list[Problem]]:
    """A folder dataset as it ships, as {split: [(name, image, mask)]} plus the pairing problems.

    Layouts: split folders train/ (required), val/ and test/ under root, each holding the images and
    masks folders; or the two folders at root, with optional split lists train.txt, val.txt,
    test.txt (stems, one per line). Splits: 'trainval' (+ 'val' when declared) and 'test'; with no
    test split declared, 'all', from which the caller carves test. Images folder: images/ or imgs/
    (or `images_dir`); masks: masks/ (or `masks_dir`), named <stem>.* or <stem>_mask.* (detected, or
    `mask_suffix`). An image without its mask is a problem of kind unmatched_stem."""
    found = [s for s in SPLIT_DIRS if (root / s).is_dir()]
    if found:
        if "train" not in found:
            raise DataError(f"{root}: split folders {', '.join(f + '/' for f in found)} but no train/")
        out, problems = {}, []
        for split in found:
            pairs, more = _pair_folder(root / split, split, images_dir, masks_dir, mask_suffix)
            out[{"train": "trainval"}.get(split, split)] = pairs
            problems += more
        return _all_unless_test(out), problems
    pairs, problems = _pair_folder(root, "all", images_dir, masks_dir, mask_suffix)
    lists = {s: set(_read_split_file(root / f"{s}.txt")) for s in SPLIT_DIRS if (root / f"{s}.txt").is_file()}
    if not lists:
        return {"all": pairs}, problems
    known = {p[0] for p in pairs}
    problems += [Problem(s, n, str(root / f"{s}.txt"), "missing_image", f"{s}.txt lists '{n}', which has no "
                         f"image and mask pair") for s, names in lists.items() for n in sorted(names - known)]
    declared = set().union(*(names for s, names in lists.items() if s != "train"))
    out = {"trainval": [p for p in pairs if (p[0] in lists["train"] if "train" in lists else p[0] not in declared)]}
    out |= {s: [p for p in pairs if p[0] in lists[s]] for s in ("val", "test") if s in lists}
    return _all_unless_test(out), problems


def _all_unless_test(splits: dict) -> dict:
    """Without a declared test split, trainval is 'all': the caller carves test from it first."""
    if "test" not in splits:
        splits["all"] = splits.pop("trainval")
    return splits


def _pick(folder: Path, given: str | None, candidates: tuple[str, ...], field: str) -> Path:
    if given:
        if not (folder / given).is_dir():
            raise DataError(f"{folder / given}: folder not found (data.{field})")
        return folder / given
    there = [c for c in candidates if (folder / c).is_dir()]
    if len(there) > 1:
        raise DataError(f"{folder}: both {' and '.join(c + '/' for c in there)} exist; set data.{field} to choose")
    if not there:
        raise DataError(f"{folder}: no {' or '.join(c + '/' for c in candidates)} folder (or set data.{field})")
    return folder / there[0]


def _pair_folder(folder: Path, split: str, images_dir, masks_dir, mask_suffix) -> tuple[list[Item], list[Problem]]:
    """(stem, image, mask) for every image of one folder's images and masks folders, by stem."""
    images_at, masks_at = _pick(folder, images_dir, IMAGE_DIRS, "images_dir"), _pick(folder, masks_dir, MASK_DIRS,
                                                                                     "masks_dir")
    images = {p.stem: p for p in _list_dir(images_at) if p.suffix.lower() in IMAGE_SUFFIXES}
    masks = {p.stem: p for p in _list_dir(masks_at) if p.suffix.lower() in MASK_SUFFIXES}
    if not images:
        raise DataError(f"{images_at}: no images found ({', '.join(IMAGE_SUFFIXES)})")
    if mask_suffix is None:  # <stem>_mask.* (Carvana, Pytorch-UNet) when more images pair that way
        mask_suffix = "_mask" if sum(f"{s}_mask" in masks for s in images) > sum(s in masks for s in images) else ""
    problems = [Problem(split, s, str(images[s]), "unmatched_stem", f"no mask '{s}{mask_suffix}.*' for image "
                        f"stem '{s}' in {masks_at}") for s in sorted(images) if f"{s}{mask_suffix}" not in masks]
    return [(s, images[s], masks[f"{s}{mask_suffix}"]) for s in sorted(images) if f"{s}{mask_suffix}" in masks], \
        problems


def stat_key(files: dict[str, list[Item]]) -> str:
    """Cheap identity of the files (names, sizes, mtimes): the cache key. Any edit changes it."""
    h = hashlib.sha256()
    for split in sorted(files):
        for name, image, mask in files[split]:
            h.update(f"{split}/{name}".encode())
            for path in (image, mask):
                try:
                    st = path.stat()
                    h.update(f"|{path.name}|{st.st_size}|{st.st_mtime_ns}".encode())
                except OSError:
                    h.update(f"|{path.name}|missing".encode())
    return h.hexdigest()[:16]


def _open_image(path: Path, kind: str, what: str):
    try:
        raw = path.read_bytes()
        im = Image.open(path)
        im.load()
        return raw, im
    except FileNotFoundError:
        raise BadFile(f"missing_{kind}", path, f"{what} not found") from None
    except OSError as err:  # truncated, zero-byte, not an image, unreadable
        raise BadFile(f"bad_{kind}", path, f"cannot decode {what} ({err})") from None


def _decode(item: Item, size: int, valid: tuple[int, ...] | None, palette: list | None = None,
            keep_stored: bool = False):
    """One item -> (image (S, S, 3), mask (S, S), thumb, digest, stored-size mask PNG or b'', notes),
    notes being (path, kind, detail) of conversions (harness.data.forms)."""
    name, image_path, mask_path = item
    image_notes, mask_notes = [], []
    raw, im = _open_image(image_path, "image", f"image listed for '{name}'")
    with im:
        original = im.size
        rgb = forms.to_rgb(im, image_notes)
        image = rgb.resize((size, size), Image.BILINEAR)
        thumb = rgb.resize((THUMB, THUMB), Image.BILINEAR)
    raw_mask, m = _open_image(mask_path, "mask", f"mask for '{name}'")
    with m:
        if m.size != original:  # resizing both would hide a mask drawn for another image
            raise BadFile("size_mismatch", mask_path, f"mask is {m.size[0]}x{m.size[1]} but its image "
                       f"{image_path.name} is {original[0]}x{original[1]}")
        labels = forms.mask_array(m, palette, mask_path, mask_notes)
    mask = np.asarray(Image.fromarray(labels, mode="L").resize((size, size), Image.NEAREST))  # never interpolate
    stored = stored_size.encode(labels) if keep_stored else b""
    if valid is not None:
        extra = sorted(set(np.unique(mask).tolist()) - set(valid))
        if extra:
            raise BadFile("mask_values", mask_path, f"mask of '{name}' has values {extra}; expected only {list(valid)}")
    digest = hashlib.sha256(name.encode() + raw + raw_mask).digest()
    notes = [(image_path, *n) for n in image_notes] + [(mask_path, *n) for n in mask_notes]
    return np.asarray(image, np.uint8), mask, np.asarray(thumb, np.uint8), digest, stored, notes


def decode_split(items: list[Item], size: int, split: str, valid: tuple[int, ...] | None = None,
                 palette: list | None = None, keep_stored: bool = False) -> Decoded:
    """Decode and resize in threads (PIL releases the GIL). Unusable items become Problems.
    keep_stored: also keep each mask at its stored size (Decoded.stored), for test scoring."""
    def one(item):
        try:
            return _decode(item, size, valid, palette, keep_stored)
        except BadFile as bad:
            return Problem(split, item[0], str(bad.path), bad.kind, bad.detail)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(progress(pool.map(one, items), total=len(items), desc=f"decode {split}", unit="img",
                                leave=False, disable=len(items) < 200))
    good = [(item[0], r) for item, r in zip(items, results) if not isinstance(r, Problem)]
    problems = [r for r in results if isinstance(r, Problem)]
    empty = (np.zeros((0, size, size, 3), np.uint8), np.zeros((0, size, size), np.uint8),
             np.zeros((0, THUMB, THUMB, 3), np.uint8))
    stack = [np.stack([r[i] for _, r in good]) if good else empty[i] for i in range(3)]
    digest = hashlib.sha256(b"".join(r[3] for _, r in good)).digest()
    stored = StoredMasks.from_png([r[4] for _, r in good]) if keep_stored else None
    notes = [Problem(split, n, str(path), kind, detail) for n, r in good for path, kind, detail in r[5]]
    return Decoded(stack[0], stack[1], stack[2], [n for n, _ in good], digest, problems, stored, notes)
