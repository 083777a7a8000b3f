"""The file forms images and masks ship in, turned into RGB images and single-channel label masks.

Images: any mode PIL reads (RGB, RGBA, grayscale, palette, CMYK, 16-bit) becomes RGB; a conversion
that drops information (transparent alpha) is noted. Masks: grayscale, palette (GIF, PNG), 1-bit
and 16-bit masks are read as labels; an RGB(A) mask whose channels are equal (Kvasir-SEG's JPEGs,
up to JPEG noise) is read as its gray level; a truly coloured mask needs `data.palette`. Notes are
(kind, detail) pairs the audit counts: they never stop a run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

GRAY_TOLERANCE = 24  # channel spread (0-255) still read as gray: JPEG's chroma noise on a gray mask stays below
SINGLE = ("L", "P", "1", "I", "I;16", "I;16B", "I;16L")


class BadFile(Exception):
    """A file that cannot be used: kind (a Problem kind), path and detail."""

    def __init__(self, kind: str, path: Path, detail: str):
        super().__init__(detail)
        self.kind, self.path, self.detail = kind, path, detail


def to_rgb(im: Image.Image, notes: list) -> Image.Image:
    """Any image mode -> RGB, noting a transparent alpha channel (dropped) or a CMYK conversion."""
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        alpha = np.asarray(im.convert("RGBA"))[..., 3]
        if (alpha < 255).any():
            notes.append(("alpha_dropped", f"{(alpha < 255).mean():.1%} of pixels are transparent; alpha ignored"))
    elif im.mode == "CMYK":
        notes.append(("cmyk_converted", "CMYK image converted to RGB"))
    elif im.mode.startswith("I") or im.mode == "F":  # 16-bit or float grayscale: scale to 0-255
        arr = np.asarray(im, np.float64)
        top = arr.max() if arr.size else 0
        notes.append(("image_16bit", f"{im.mode} image scaled to 8 bits (max {top:g})"))
        return Image.fromarray((arr * (255 / top) if top > 0 else arr).clip(0, 255).astype(np.uint8)).convert("RGB")
    return im.convert("RGB")


def palette_to_index(m: Image.Image, palette: list, path: Path) -> np.ndarray:
    """RGB-coded mask -> (H, W) uint8 class indices; a colour outside the palette is a BadFile."""
    rgb = np.asarray(m.convert("RGB"), np.int32)
    codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    table = {(r << 16) | (g << 8) | b: i for i, (r, g, b) in enumerate(palette)}
    out = np.full(codes.shape, 255, np.uint8)
    for code, index in table.items():
        out[codes == code] = index
    if (out == 255).any():
        extra = sorted({tuple(rgb[y, x]) for y, x in zip(*np.nonzero(out == 255))})[:5]
        raise BadFile("mask_values", path, f"mask colours {[list(map(int, c)) for c in extra]} are not in data.palette")
    return out


def mask_array(m: Image.Image, palette: list | None, path: Path, notes: list) -> np.ndarray:
    """A mask file's labels as (H, W) uint8: palette colours -> indices; gray RGB(A) -> its gray
    level; 16-bit values above 255 scaled to 0-255 (noted); else the stored values."""
    if palette:
        return palette_to_index(m, palette, path)
    if m.mode in ("RGB", "RGBA", "LA"):
        rgb = np.asarray(m.convert("RGB"), np.int16)
        spread = int(max(np.abs(rgb[..., 0] - rgb[..., 1]).max(), np.abs(rgb[..., 0] - rgb[..., 2]).max()))
        if spread > GRAY_TOLERANCE:
            raise BadFile("mask_mode", path, f"mask must be single-channel, got mode {m.mode} with coloured pixels "
                          f"(channels differ by up to {spread}); give data.palette to map colours to classes")
        notes.append(("mask_rgb_as_gray", f"{m.mode} mask with equal channels (spread {spread}) read as gray"))
        return np.rint(rgb.mean(axis=-1)).astype(np.uint8)
    if m.mode not in SINGLE:
        raise BadFile("mask_mode", path, f"mask must be single-channel, got mode {m.mode}")
    arr = np.asarray(m)
    top = int(arr.max()) if arr.size else 0
    if top > 255:  # 16-bit masks: 0/65535 binary, or values past 8 bits; indices <= 255 pass unchanged
        notes.append(("mask_16bit_scaled", f"16-bit mask values up to {top} scaled to 0-255"))
        arr = arr.astype(np.int64) * 255 // top
    return arr.astype(np.uint8)
