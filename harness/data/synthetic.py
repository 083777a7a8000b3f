"""Procedural segmentation data: textured pets-like blobs among clutter, with trimap-style labels.

Deterministic: image i of a set is drawn from `np.random.default_rng([seed, split_id, i])`,
so any subset or order gives the same pixels. The task is hard enough to need several epochs:
foreground blobs carry a striped texture, clutter shapes share their colours but not their
texture, occluders cut the blobs, and the trimap has a border band (value 3) like the real one.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from scipy import ndimage

GENERATOR_VERSION = "synthetic-v1"  # bump when the pixels change, so fingerprints change too


def _smooth_noise(rng, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a random grid upsampled with bilinear zoom."""
    grid = rng.random((cells, cells))
    return np.clip(ndimage.zoom(grid, size / cells, order=1)[:size, :size], 0, 1)


def _blob(rng, size: int) -> np.ndarray:
    """Star-convex blob mask: r(theta) = r0 * (1 + sum_k a_k sin(k theta + phi_k))."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = rng.uniform(0.3, 0.7, 2) * size
    r0 = rng.uniform(0.18, 0.32) * size
    theta = np.arctan2(yy - cy, xx - cx)
    radius = np.full_like(theta, r0)
    for k in (2, 3, 5):
        radius += r0 * rng.uniform(0, 0.25) * np.sin(k * theta + rng.uniform(0, 2 * np.pi))
    return np.hypot(yy - cy, xx - cx) < radius


def _ellipse(rng, size: int, scale: tuple[float, float]) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = rng.uniform(0, 1, 2) * size
    ry, rx = rng.uniform(*scale, 2) * size
    angle = rng.uniform(0, np.pi)
    c, s = np.cos(angle), np.sin(angle)
    u, v = (xx - cx) * c + (yy - cy) * s, -(xx - cx) * s + (yy - cy) * c
    return (u / rx) ** 2 + (v / ry) ** 2 < 1


def make_sample(seed: int, split_id: int, index: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One (image uint8 (size, size, 3), trimap uint8 (size, size) in {1, 2, 3}) pair."""
    rng = np.random.default_rng([seed, split_id, index])
    palette = rng.uniform(40, 215, (3, 3))  # shared by pet and clutter: colour alone won't do
    bg = _smooth_noise(rng, size, 4)[..., None] * rng.uniform(60, 200, 3) + 30
    image = bg + rng.normal(0, 8, (size, size, 3))
    for _ in range(rng.integers(2, 6)):  # clutter: flat, noisy shapes in pet colours
        shape = _ellipse(rng, size, (0.05, 0.25))
        image[shape] = palette[rng.integers(0, 3)] + rng.normal(0, 10, (shape.sum(), 3))
    fg = _blob(rng, size)
    yy, xx = np.mgrid[0:size, 0:size]
    angle, period = rng.uniform(0, np.pi), rng.uniform(4, 9) * size / 64
    stripes = (np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period) > 0)[..., None]
    texture = np.where(stripes, palette[0], palette[1]) * _smooth_noise(rng, size, 3)[..., None] * 0.5
    texture += np.where(stripes, palette[0], palette[1]) * 0.5
    image[fg] = texture[fg] + rng.normal(0, 6, (fg.sum(), 3))
    if rng.random() < 0.6:  # occluder on top of the pet: the label follows what is visible
        occ = _ellipse(rng, size, (0.04, 0.12))
        image[occ] = palette[2]
        fg &= ~occ
    trimap = np.full((size, size), 2, np.uint8)
    trimap[fg] = 1
    band = max(1, size // 64)
    border = ndimage.binary_dilation(fg, iterations=band) & ~ndimage.binary_erosion(fg, iterations=band)
    trimap[border] = 3
    image = ndimage.gaussian_filter(image, sigma=(0.6, 0.6, 0))  # soften edges like a photo
    return np.clip(image, 0, 255).astype(np.uint8), trimap


def _make_range(seed: int, split_id: int, start: int, stop: int, size: int) -> list:
    return [make_sample(seed, split_id, i, size) for i in range(start, stop)]


def make_split(seed: int, split_id: int, count: int, size: int):
    """Arrays for one split: images (N, S, S, 3) uint8, trimaps (N, S, S) uint8, names.

    Large splits are drawn in parallel processes (about 25 ms per 256 px image on one core);
    each image has its own RNG, so the pixels do not depend on how the work is split."""
    workers = min(os.cpu_count() or 1, 16)
    if workers > 1 and count * size * size > 2**24:  # > ~250 images at 256 px: worth the start-up
        step = -(-count // (4 * workers))
        ranges = [(start, min(start + step, count)) for start in range(0, count, step)]
        context = multiprocessing.get_context("forkserver")  # never fork a process holding torch's threads
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            parts = pool.map(_make_range, *zip(*[(seed, split_id, a, b, size) for a, b in ranges]))
            pairs = [pair for part in parts for pair in part]
    else:
        pairs = _make_range(seed, split_id, 0, count, size)
    images = np.stack([p[0] for p in pairs])
    trimaps = np.stack([p[1] for p in pairs])
    names = [f"synthetic_{split_id}_{i:05d}" for i in range(count)]
    return images, trimaps, names


def fingerprint(seed: int, counts: tuple[int, int], size: int) -> str:
    blob = f"{GENERATOR_VERSION}:{seed}:{counts}:{size}".encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def k_class_mode(images: np.ndarray, trimaps: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """K-class variant of a split: the pet of image i is class 1 + i % (k - 1) (0 = background),
    and its pixels are tinted with that class's colour so the class is learnable from the image.
    Returns new images and (N, S, S) uint8 labels."""
    hues = np.linspace(0, 1, k - 1, endpoint=False)
    colours = np.stack([np.abs(((hues * 6 + o) % 6) - 3) - 1 for o in (0, 4, 2)], 1).clip(0, 1) * 255
    cls = 1 + np.arange(len(images)) % (k - 1)
    fg = trimaps != 2
    tint = colours[cls - 1][:, None, None, :]
    out = np.where(fg[..., None], 0.55 * images + 0.45 * tint, images).astype(np.uint8)
    return out, np.where(fg, cls[:, None, None], 0).astype(np.uint8)
