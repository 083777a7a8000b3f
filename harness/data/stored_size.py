"""Masks at the size each file has on disk (ragged), kept for scoring test predictions there.

Training resizes every mask to `data.image_size` squared, which changes both its aspect and its
pixels; the test metrics are computed against these stored-size masks instead (see
harness.engine.stored_size). They are kept compactly: each mask PNG-encoded (lossless) into one flat
byte array with offsets, so a split of 500x375 trimaps costs a few KB per image rather than
187 KB, and decoded one at a time when scored.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image


def encode(mask: np.ndarray) -> bytes:
    """(H, W) uint8 raw label values -> PNG bytes (lossless)."""
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(mask, np.uint8), mode="L").save(out, format="PNG", compress_level=1)
    return out.getvalue()


class StoredMasks:
    """N masks of their own sizes. `masks[i]` -> (H_i, W_i) uint8: the raw values, or with a
    `transform` (the dataset kind's labels rule, set by harness.data.build_data) the labels."""

    def __init__(self, blob: np.ndarray, offsets: np.ndarray, transform: Callable | None = None):
        self.blob, self.offsets, self.transform = blob, np.asarray(offsets, np.int64), transform

    @classmethod
    def from_png(cls, encoded: list[bytes]) -> "StoredMasks":
        offsets = np.cumsum([0, *map(len, encoded)], dtype=np.int64)
        return cls(np.frombuffer(b"".join(encoded), np.uint8), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        raw = np.asarray(Image.open(io.BytesIO(self.blob[self.offsets[i]:self.offsets[i + 1]].tobytes())))
        return self.transform(raw) if self.transform else raw

    def take(self, idx) -> "StoredMasks":
        """The masks at `idx`, in that order (copies only their bytes)."""
        chunks = [self.blob[self.offsets[i]:self.offsets[i + 1]].tobytes() for i in idx]
        taken = StoredMasks.from_png(chunks)
        taken.transform = self.transform
        return taken

    def with_transform(self, transform: Callable) -> "StoredMasks":
        return StoredMasks(self.blob, self.offsets, transform)
