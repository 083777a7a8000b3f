"""Run figures written as PNG files: learning curves and a prediction grid."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def learning_curves(history: list[dict[str, float]], path: Path) -> Path:
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


def prediction_grid(images: np.ndarray, truths: np.ndarray, preds: np.ndarray, titles: list[str],
                    path: Path, num_classes: int = 2) -> Path:
    """Rows of image | truth | prediction. images (N, H, W, 3) uint8; masks (N, H, W) in {0, 1},
    or class indices 0..K-1 (shown with one colour per class)."""
    vmax = 1 if num_classes <= 2 else num_classes - 1
    n = len(images)
    fig, axes = plt.subplots(n, 3, figsize=(6, 2 * n), squeeze=False)
    for i in range(n):
        for j, (panel, label) in enumerate(((images[i], "image"), (truths[i], "truth"), (preds[i], "prediction"))):
            ax = axes[i, j]
            cmap = ("gray" if num_classes <= 2 else "tab10") if panel.ndim == 2 else None
            ax.imshow(panel, cmap=cmap, vmin=0, vmax=vmax if panel.ndim == 2 else None, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(label)
        axes[i, 0].set_ylabel(titles[i], fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
