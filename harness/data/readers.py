"""Readers for image/mask folders on disk: the official Oxford-IIIT Pet layout and `folder`.

Listing (`oxford_pet_files`, `folder_files`) returns, per split, (name, image path, mask path)
items plus the problems found while pairing them. `decode_split` turns items into uint8 arrays
at the experiment's size; a file that cannot be used becomes a `Problem` naming it, never a
silent drop. Whether a problem stops the run or is skipped is the caller's decision (`on_bad`).
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from harness.data import native
from harness.data.native import NativeMasks

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
    native: NativeMasks | None = None  # the masks at their stored sizes (raw values), where kept


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


def folder_files(root: Path) -> tuple[dict[str, list[Item]], list[Problem]]:
    """images/<stem>.* paired with masks/<stem>.* by stem.

    If root/test.txt lists stems, those are the test split; otherwise no test split is
    declared ('all') and the caller carves one deterministically. Images without a mask are
    problems of kind unmatched_stem.
    """
    images_dir, masks_dir = root / "images", root / "masks"
    images = {p.stem: p for p in _list_dir(images_dir) if p.suffix.lower() in IMAGE_SUFFIXES}
    masks = {p.stem: p for p in _list_dir(masks_dir) if p.suffix.lower() in IMAGE_SUFFIXES}
    if not images:
        raise DataError(f"{images_dir}: no images found")
    problems = [Problem("all", s, str(images[s]), "unmatched_stem", f"no mask for image stem '{s}' in {masks_dir}")
                for s in sorted(set(images) - set(masks))]
    pairs = [(s, images[s], masks[s]) for s in sorted(images) if s in masks]
    test_list = root / "test.txt"
    if test_list.is_file():
        test = set(_read_split_file(test_list))
        return {"trainval": [p for p in pairs if p[0] not in test],
                "test": [p for p in pairs if p[0] in test]}, problems
    return {"all": pairs}, problems


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


class _Bad(Exception):
    def __init__(self, kind: str, path: Path, detail: str):
        self.kind, self.path, self.detail = kind, path, detail


def _open_image(path: Path, kind: str, what: str):
    try:
        raw = path.read_bytes()
        im = Image.open(path)
        im.load()
        return raw, im
    except FileNotFoundError:
        raise _Bad(f"missing_{kind}", path, f"{what} not found") from None
    except OSError as err:  # truncated, zero-byte, not an image, unreadable
        raise _Bad(f"bad_{kind}", path, f"cannot decode {what} ({err})") from None


def _palette_to_index(m: Image.Image, palette: list, path: Path) -> Image.Image:
    """RGB-coded mask -> 'L' image of class indices; a colour outside the palette is a Problem."""
    rgb = np.asarray(m.convert("RGB"), np.int32)
    codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    table = {(r << 16) | (g << 8) | b: i for i, (r, g, b) in enumerate(palette)}
    out = np.full(codes.shape, 255, np.uint8)
    for code, index in table.items():
        out[codes == code] = index
    if (out == 255).any():
        extra = sorted({tuple(rgb[y, x]) for y, x in zip(*np.nonzero(out == 255))})[:5]
        raise _Bad("mask_values", path, f"mask colours {[list(map(int, c)) for c in extra]} are not in data.palette")
    return Image.fromarray(out, mode="L")


def _decode(item: Item, size: int, valid: tuple[int, ...] | None, palette: list | None = None,
            keep_native: bool = False):
    name, image_path, mask_path = item
    raw, im = _open_image(image_path, "image", f"image listed for '{name}'")
    with im:
        original = im.size
        rgb = im.convert("RGB")
        image = rgb.resize((size, size), Image.BILINEAR)
        thumb = rgb.resize((THUMB, THUMB), Image.BILINEAR)
    raw_mask, m = _open_image(mask_path, "mask", f"mask for '{name}'")
    with m:
        if palette:
            m = _palette_to_index(m, palette, mask_path)
        elif m.mode not in ("L", "P", "I", "1", "I;16"):
            raise _Bad("mask_mode", mask_path, f"mask must be single-channel, got mode {m.mode}")
        if m.size != original:  # resizing both would hide a mask drawn for another image
            raise _Bad("size_mismatch", mask_path, f"mask is {m.size[0]}x{m.size[1]} but its image "
                       f"{image_path.name} is {original[0]}x{original[1]}")
        mask = np.asarray(m.resize((size, size), Image.NEAREST)).astype(np.uint8)  # labels: never interpolate
        stored = native.encode(np.asarray(m).astype(np.uint8)) if keep_native else b""
    if valid is not None:
        extra = sorted(set(np.unique(mask).tolist()) - set(valid))
        if extra:
            raise _Bad("mask_values", mask_path, f"mask of '{name}' has values {extra}; expected only {list(valid)}")
    digest = hashlib.sha256(name.encode() + raw + raw_mask).digest()
    return np.asarray(image, np.uint8), mask, np.asarray(thumb, np.uint8), digest, stored


def decode_split(items: list[Item], size: int, split: str, valid: tuple[int, ...] | None = None,
                 palette: list | None = None, keep_native: bool = False) -> Decoded:
    """Decode and resize in threads (PIL releases the GIL). Unusable items become Problems.
    keep_native: also keep each mask at its stored size (Decoded.native), for test scoring."""
    def one(item):
        try:
            return _decode(item, size, valid, palette, keep_native)
        except _Bad as bad:
            return Problem(split, item[0], str(bad.path), bad.kind, bad.detail)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(tqdm(pool.map(one, items), total=len(items), desc=f"decode {split}", unit="img",
                            leave=False, disable=len(items) < 200))
    good = [(item[0], r) for item, r in zip(items, results) if not isinstance(r, Problem)]
    problems = [r for r in results if isinstance(r, Problem)]
    empty = (np.zeros((0, size, size, 3), np.uint8), np.zeros((0, size, size), np.uint8),
             np.zeros((0, THUMB, THUMB, 3), np.uint8))
    stack = [np.stack([r[i] for _, r in good]) if good else empty[i] for i in range(3)]
    digest = hashlib.sha256(b"".join(r[3] for _, r in good)).digest()
    stored = NativeMasks.from_png([r[4] for _, r in good]) if keep_native else None
    return Decoded(stack[0], stack[1], stack[2], [n for n, _ in good], digest, problems, stored)
