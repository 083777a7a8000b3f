"""Readers for image/mask folders on disk: the official Oxford-IIIT Pet layout and `folder`.

Each reader returns, per split, the names and file paths; `decode_split` turns them into
uint8 arrays at the experiment's size and hashes the bytes it read (the data fingerprint).
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


class DataError(Exception):
    """A dataset that cannot be read; the message names the file."""


def _read_split_file(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path}: split file not found (expected the official Oxford-IIIT Pet layout)")
    names = [ln.split()[0] for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    if not names:
        raise DataError(f"{path}: split file lists no images")
    return names


def oxford_pet_files(root: Path) -> dict[str, list[tuple[str, Path, Path]]]:
    """{'trainval': [(name, image, trimap)], 'test': [...]} from the official layout."""
    out = {}
    for split in ("trainval", "test"):
        names = _read_split_file(root / "annotations" / f"{split}.txt")
        out[split] = [(n, root / "images" / f"{n}.jpg", root / "annotations" / "trimaps" / f"{n}.png") for n in names]
    return out


def folder_files(root: Path) -> dict[str, list[tuple[str, Path, Path]]]:
    """images/<stem>.* paired with masks/<stem>.png by stem.

    If root/test.txt lists stems, those are the test split; otherwise no test split is
    declared and the caller carves one deterministically.
    """
    images_dir, masks_dir = root / "images", root / "masks"
    for d in (images_dir, masks_dir):
        if not d.is_dir():
            raise DataError(f"{d}: folder not found (the folder layout is images/ + masks/)")
    images = {p.stem: p for p in sorted(images_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    masks = {p.stem: p for p in sorted(masks_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    missing = sorted(set(images) - set(masks))
    if missing:
        raise DataError(f"{masks_dir}: no mask for image stem(s) {', '.join(missing[:5])}"
                        + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    pairs = [(s, images[s], masks[s]) for s in sorted(images)]
    if not pairs:
        raise DataError(f"{images_dir}: no images found")
    test_list = root / "test.txt"
    if test_list.is_file():
        test = set(_read_split_file(test_list))
        return {"trainval": [p for p in pairs if p[0] not in test], "test": [p for p in pairs if p[0] in test]}
    return {"all": pairs}


def _decode(item: tuple[str, Path, Path], size: int) -> tuple[np.ndarray, np.ndarray, bytes]:
    name, image_path, mask_path = item
    digest = hashlib.sha256(name.encode())
    try:
        raw = image_path.read_bytes()
        digest.update(raw)
        with Image.open(image_path) as im:
            original = im.size
            image = im.convert("RGB").resize((size, size), Image.BILINEAR)
    except FileNotFoundError:
        raise DataError(f"{image_path}: image listed for '{name}' not found") from None
    except OSError as err:
        raise DataError(f"{image_path}: cannot decode image ({err})") from None
    try:
        digest.update(mask_path.read_bytes())
        with Image.open(mask_path) as m:
            if m.mode not in ("L", "P", "I", "1", "I;16"):
                raise DataError(f"{mask_path}: mask must be single-channel, got mode {m.mode}")
            if m.size != original:  # resizing both would hide a mask drawn for another image
                raise DataError(f"{mask_path}: mask is {m.size[0]}x{m.size[1]} but its image {image_path.name} "
                                f"is {original[0]}x{original[1]}")
            mask = m.resize((size, size), Image.NEAREST)  # labels: never interpolate
    except FileNotFoundError:
        raise DataError(f"{mask_path}: mask for '{name}' not found") from None
    except OSError as err:
        raise DataError(f"{mask_path}: cannot decode mask ({err})") from None
    return np.asarray(image, np.uint8), np.asarray(mask).astype(np.uint8), digest.digest()


def decode_split(items, size: int, desc: str) -> tuple[np.ndarray, np.ndarray, bytes]:
    """Decode and resize (threads: PIL releases the GIL). Returns images, raw masks, digest."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(tqdm(pool.map(lambda it: _decode(it, size), items), total=len(items),
                            desc=f"decode {desc}", unit="img", leave=False, disable=len(items) < 200))
    digest = hashlib.sha256(b"".join(r[2] for r in results)).digest()
    return np.stack([r[0] for r in results]), np.stack([r[1] for r in results]), digest
