"""Run figures written as PNG files: learning curves and a prediction grid."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def run_history_figure(history: list[dict[str, float]], path: Path) -> Path:
    """history: one dict of metrics per epoch (keys like 'train/loss', 'val/dice')."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_score) = plt.subplots(1, 2, figsize=(10, 3.8))
    for key in ("train/loss", "val/loss"):
        ax_loss.plot(epochs, [h[key] for h in history], marker="o", label=key)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    for key in ("val/dice", "val/dice_micro", "val/iou", "val/miou"):
        if key in history[0]:
            ax_score.plot(epochs, [h[key] for h in history], marker="o", label=key)
    ax_score.set(xlabel="epoch", ylabel="score", title="Validation", ylim=(0, 1))
    for ax in (ax_loss, ax_score):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# tab10's colours: class k of a K-class map is drawn in COLOURS[k % 10]
COLOURS = np.array([(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
                    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)], np.uint8)
CAPTION = 14  # pixels of the caption strip above each row


def colour_mask(mask: np.ndarray, num_classes: int = 2) -> np.ndarray:
    """(H, W) labels -> (H, W, 3) uint8: binary 0/1 as black/white, K classes in COLOURS."""
    if num_classes <= 2:
        return np.repeat((mask.astype(bool) * 255).astype(np.uint8)[..., None], 3, axis=2)
    return COLOURS[mask.astype(np.int64) % len(COLOURS)]


def prediction_grid(images: np.ndarray, truths: np.ndarray, preds: np.ndarray, titles: list[str],
                    path: Path, num_classes: int = 2) -> Path:
    """Rows of image | truth | prediction at native resolution, each under a caption with its name.
    images (N, H, W, 3) uint8; masks (N, H, W) in {0, 1}, or class indices 0..K-1 (COLOURS).
    Drawn with PIL, not matplotlib: pixel-exact, and ~10 ms instead of ~0.3 s per run."""
    from PIL import Image, ImageDraw

    n, h, w = images.shape[:3]
    gap = 4
    grid = np.full((n * (h + CAPTION + gap), 3 * w + 2 * gap, 3), 255, np.uint8)
    for i in range(n):
        top = i * (h + CAPTION + gap) + CAPTION
        for j, panel in enumerate((images[i], colour_mask(truths[i], num_classes), colour_mask(preds[i], num_classes))):
            grid[top:top + h, j * (w + gap):j * (w + gap) + w] = panel
    picture = Image.fromarray(grid)
    draw = ImageDraw.Draw(picture)
    for i, title in enumerate(titles):
        draw.text((1, i * (h + CAPTION + gap) + 1), f"{title}: image | truth | prediction", fill=(0, 0, 0))
    picture.save(path)
    return path
