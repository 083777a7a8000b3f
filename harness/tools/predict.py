"""Inference with a logged model: mask PNGs at each input's original size, plus colour overlays.

Binary models (one logit) write 0/255 masks; K-class models write class-index PNGs (0..K-1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from harness.data.readers import IMAGE_SUFFIXES
from harness.progress import progress


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
    """RGB image -> (H, W) uint8 mask at the image's own size: {0, 1}, or class indices for a
    K-class model (argmax).

    The model sees the image resized to the training size; logits are resized back
    bilinearly and thresholded there, which gives smoother edges than resizing a binary mask.
    """
    rgb = np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR), np.float32) / 255.0
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    logits = model(x)
    logits = F.interpolate(logits, size=(image.height, image.width), mode="bilinear", align_corners=False)
    if logits.shape[1] > 1:
        return logits[0].argmax(0).numpy().astype(np.uint8)
    return (torch.sigmoid(logits)[0, 0] > threshold).numpy().astype(np.uint8)


CLASS_COLOURS = np.array([(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
                          (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)], np.float32)


def class_overlay(image: Image.Image, labels: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """Tint every pixel with the colour of its class (colours cycle after 10 classes)."""
    rgb = np.asarray(image.convert("RGB"), np.float32)
    colours = CLASS_COLOURS[labels % len(CLASS_COLOURS)]
    return Image.fromarray((rgb * (1 - alpha) + colours * alpha).astype(np.uint8))


def overlay(image: Image.Image, mask: np.ndarray, colour=(255, 40, 40), alpha: float = 0.45) -> Image.Image:
    rgb = np.asarray(image.convert("RGB"), np.float32)
    tint = rgb * (1 - alpha) + np.array(colour, np.float32) * alpha
    return Image.fromarray(np.where(mask[..., None] > 0, tint, rgb).astype(np.uint8))


def predict_paths(model, inputs: list[Path], output: Path, *, size: int, threshold: float,
                  num_classes: int = 2) -> list[Path]:
    """Writes <stem>_mask.png (binary 0/255, or class indices) and <stem>_overlay.png per input;
    returns the mask paths."""
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for path in progress(inputs, desc="predict", unit="img", disable=len(inputs) < 10):
        with Image.open(path) as image:
            image.load()
            mask = predict_mask(model, image, size, threshold)
            multiclass = num_classes > 2
            Image.fromarray(mask if multiclass else mask * 255).save(output / f"{path.stem}_mask.png")
            tinted = class_overlay(image, mask) if multiclass else overlay(image, mask)
            tinted.save(output / f"{path.stem}_overlay.png")
        written.append(output / f"{path.stem}_mask.png")
    return written
