"""What a finished run leaves in MLflow besides metrics: the resolved spec, curves, a prediction
grid, per-image test scores, every test prediction (for reports) and the model."""

from __future__ import annotations

import csv
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml

from harness import figures
from harness.build import model_name
from harness.engine.loop import LoopState, Parts
from harness.engine.step import StepConfig
from harness.engine.stored_size import StoredSizeResult, TestScores
from harness.metrics import per_image_scores

WORST_K = 8


def log_json(tracker, name: str, payload: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text(json.dumps(payload, indent=1))
        tracker.log_artifact(path)


def split_input_name(dataset: str, root: str | None, split: str) -> str:
    """'<root folder name>-<split>' (the dataset kind for generated data): MLflow keeps one input per
    name and digest, so the splits need names of their own."""
    return f"{Path(root).name if root else dataset}-{split}"


def log_splits(tracker, data, dataset: str, root: str | None, splits=("train", "val", "test")) -> None:
    """Each split as an MLflow dataset input: name = split_input_name, digest = the data
    fingerprint, source = the root, context = the split, profile = its counts."""
    name = Path(root).name if root else dataset
    for split in splits:
        part = getattr(data, split)
        tracker.log_dataset(split_input_name(dataset, root, split), data.fingerprint, str(root or dataset), split,
                            {"images": len(part), "dataset": name, "kind": dataset,
                             "image_size": int(part.images.shape[1])})


def log_predictions(tracker, test, predictions: np.ndarray, dice) -> None:
    """test_predictions.npz: every test mask predicted and true (image order of test_per_image.csv;
    binary masks bit-packed, K-class maps as uint8), plus the pixels of this run's WORST_K images
    by Dice, so a report can show them beside another run's predictions without the dataset."""
    worst = np.argsort(np.asarray(dice), kind="stable")[:WORST_K]
    binary = predictions.dtype == bool
    masks = ({"pred_bits": np.packbits(predictions), "true_bits": np.packbits(test.masks.astype(bool))} if binary
             else {"pred": predictions.astype(np.uint8), "truth": test.masks.astype(np.uint8)})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "test_predictions.npz"
        np.savez_compressed(path, names=np.array(test.names), shape=np.array(predictions.shape), worst=worst,
                            worst_images=test.images[worst], **masks)
        tracker.log_artifact(path)


def _val_predictions(data, model, cfg: StepConfig, k: int) -> np.ndarray:
    images = torch.from_numpy(data.val.images[:k]).permute(0, 3, 1, 2)
    x, _ = cfg.to_device(images, torch.zeros(k, 1, 1, 1, dtype=torch.uint8))
    with torch.inference_mode(), cfg.autocast():
        logits = model.eval()(x).float()
    if cfg.num_classes > 2:
        return logits.argmax(1).cpu().numpy().astype(np.uint8)
    return (torch.sigmoid(logits)[:, 0] > cfg.threshold).cpu().numpy().astype(np.uint8)


def write_per_image(path: Path, names: list[str], scored: StoredSizeResult, train_size_counts: torch.Tensor) -> Path:
    """test_per_image.csv, one row per test image, scored at its stored size (height x width).
    Binary: name, dice, iou, tp, fp, fn, tn, fg_pixels, nsd, hd95, height, width, dice_at_train_size.
    K classes: name, dice, iou (means over the classes present), height, width, dice_at_train_size,
    then dice_<k> per class (empty if absent). `train_size_counts`: the same images' confusion counts
    at the training size (dice_at_train_size)."""
    counts = scored.counts
    per, small = per_image_scores(counts), per_image_scores(train_size_counts)["dice"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        if counts.ndim == 2:
            writer.writerow(["name", "dice", "iou", "tp", "fp", "fn", "tn", "fg_pixels", "nsd", "hd95",
                             "height", "width", "dice_at_train_size"])
            for i, name in enumerate(names):
                tp, fp, fn, tn = counts[i].tolist()
                h, w = scored.sizes[i].tolist()
                writer.writerow([name, f"{per['dice'][i]:.6f}", f"{per['iou'][i]:.6f}", tp, fp, fn, tn, tp + fn,
                                 f"{scored.boundary['nsd'][i]:.6f}", f"{scored.boundary['hd95'][i]:.6f}", h, w,
                                 f"{small[i]:.6f}"])
            return path
        k = counts.shape[1]
        writer.writerow(["name", "dice", "iou", "height", "width", "dice_at_train_size",
                         *(f"dice_{c}" for c in range(k))])
        for i, name in enumerate(names):
            tp, fp, fn = (counts[i, :, j].double() for j in range(3))
            cls = [f"{2 * a / (2 * a + b + c):.6f}" if a + b + c else "" for a, b, c in zip(tp, fp, fn)]
            h, w = scored.sizes[i].tolist()
            writer.writerow([name, f"{per['dice'][i]:.6f}", f"{per['iou'][i]:.6f}", h, w, f"{small[i]:.6f}", *cls])
    return path


def log_run_artifacts(tracker, spec, parts: Parts, state: LoopState, test: TestScores) -> str | None:
    """Resolved spec, curves, a validation prediction grid (at parts.cfg.threshold), per-image test
    scores and the model (the weights of the best epoch). Returns the logged model's id, or None
    (log_model: false)."""
    data, model, cfg = parts.data, parts.model, parts.cfg
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / "spec.yaml").write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))
        tracker.log_artifact(out / "spec.yaml")
        tracker.log_artifact(figures.run_history_figure(state.history, out / "learning_curves.png"))
        k = min(6, len(data.val))
        preds = _val_predictions(data, model, cfg, k)
        tracker.log_artifact(figures.prediction_grid(data.val.images[:k], data.val.masks[:k], preds,
                                                     data.val.names[:k], out / "val_predictions.png",
                                                     num_classes=cfg.num_classes))
        tracker.log_artifact(write_per_image(out / "test_per_image.csv", data.test.names, test.scored, test.counts))
    if not spec.log_model:
        return None
    example = torch.from_numpy(data.val.images[: min(2, len(data.val))]).permute(0, 3, 1, 2).float() / 255.0
    if example.shape[0] < 2:  # batch > 1 keeps the exported batch dimension dynamic
        example = example.repeat(2, 1, 1, 1)
    return tracker.log_model(model.float().to(memory_format=torch.contiguous_format), example,
                             model_name(spec), step=state.best_epoch)
