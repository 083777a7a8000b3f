"""Inference with a logged model: binary mask PNGs at each input's original size, plus overlays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from harness.data.readers import IMAGE_SUFFIXES


def list_inputs(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            return files
        raise FileNotFoundError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    raise FileNotFoundError(f"{path}: no such file or folder")


@torch.inference_mode()
def predict_mask(model: torch.nn.Module, image: Image.Image, size: int, threshold: float) -> np.ndarray:
    """RGB image -> (H, W) uint8 {0, 1} mask at the image's own size.

    The model sees the image resized to the training size; logits are resized back
    bilinearly and thresholded there, which gives smoother edges than resizing a binary mask.
    """
    rgb = np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR), np.float32) / 255.0
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    logits = model(x)
    logits = F.interpolate(logits, size=(image.height, image.width), mode="bilinear", align_corners=False)
    return (torch.sigmoid(logits)[0, 0] > threshold).numpy().astype(np.uint8)


def overlay(image: Image.Image, mask: np.ndarray, colour=(255, 40, 40), alpha: float = 0.45) -> Image.Image:
    rgb = np.asarray(image.convert("RGB"), np.float32)
    tint = rgb * (1 - alpha) + np.array(colour, np.float32) * alpha
    return Image.fromarray(np.where(mask[..., None] > 0, tint, rgb).astype(np.uint8))


def predict_paths(model, inputs: list[Path], output: Path, *, size: int, threshold: float) -> list[Path]:
    """Writes <stem>_mask.png (0/255) and <stem>_overlay.png per input; returns the mask paths."""
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for path in tqdm(inputs, desc="predict", unit="img", disable=len(inputs) < 10):
        with Image.open(path) as image:
            image.load()
            mask = predict_mask(model, image, size, threshold)
            Image.fromarray(mask * 255).save(output / f"{path.stem}_mask.png")
            overlay(image, mask).save(output / f"{path.stem}_overlay.png")
        written.append(output / f"{path.stem}_mask.png")
    return written
