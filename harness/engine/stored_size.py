"""Test scores at each image's stored resolution: the headline `test/*` metrics.

The network sees images at the training size S x S. For each test image, its logits (C, S, S) are
upsampled on the device, bilinearly, to the size its mask has on disk (H, W), thresholded there
(binary: sigmoid > threshold; K classes: argmax) and compared with that stored mask, so runs at
different `data.image_size` are scored on the same truth, and none on a squashed copy of it.
Binary runs also get NSD and HD95 per image (harness.boundary) on the same stored-size masks.
Where the stored size is S x S already (the shared 128 px sets at image_size 128) the two coincide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from harness.boundary import boundary_scores
from harness.engine import distributed
from harness.engine.step import KeptPredictions, StepConfig, evaluate
from harness.metrics import MetricAccumulator, summarise_counts


@dataclass
class StoredSizeResult:
    counts: torch.Tensor      # (N, 4) binary or (N, K, 3) per-image confusion counts, split order
    sizes: torch.Tensor       # (N, 2) int64 (H, W) each image was scored at
    boundary: dict | None     # binary: {'nsd': (N,), 'hd95': (N,)} float arrays; K classes: None


class StoredSizeScorer:
    """Collects stored-size scores batch by batch during `harness.engine.step.evaluate`.

    `masks[i]` -> (H_i, W_i) uint8 labels of split image i (harness.data.stored_size.StoredMasks, or
    the training-size masks where no stored size is kept). Each rank scores the images its loader
    holds; `result()` gathers them in split order (distributed.interleave)."""

    def __init__(self, masks, *, threshold: float, num_classes: int, tolerance: float, device: torch.device):
        self.masks, self.num_classes, self.tolerance, self.device = masks, num_classes, tolerance, device
        self.cut = math.log(threshold / (1 - threshold))  # sigmoid(x) > t, without the sigmoid
        self.acc = MetricAccumulator(threshold, num_classes)
        self.sizes: list[tuple[int, int]] = []
        self.boundary: list[tuple[float, float]] = []

    def update(self, logits: torch.Tensor, index: torch.Tensor) -> None:
        """logits (B, C, S, S) of the split images `index` (B,)."""
        for j, i in enumerate(index.tolist()):
            truth = np.asarray(self.masks[i])
            x = logits[j:j + 1].float()
            if tuple(x.shape[-2:]) != truth.shape:
                x = F.interpolate(x, size=truth.shape, mode="bilinear", align_corners=False)
            target = torch.from_numpy(np.ascontiguousarray(truth)).to(self.device)
            self.sizes.append(truth.shape)
            if self.num_classes > 2:
                self.acc.update(x, target[None].long())
                continue
            self.acc.update(x, target[None, None].float())
            pred = (x[0, 0] > self.cut).cpu().numpy()
            self.boundary.append(boundary_scores(pred, truth > 0, self.tolerance))

    def result(self) -> StoredSizeResult:
        sizes = distributed.interleave(torch.tensor(self.sizes, dtype=torch.long).reshape(-1, 2))
        counts = distributed.interleave(self.acc.counts())
        if self.num_classes > 2:
            return StoredSizeResult(counts, sizes, None)
        both = distributed.interleave(torch.tensor(self.boundary, dtype=torch.float64).reshape(-1, 2)).numpy()
        return StoredSizeResult(counts, sizes, {"nsd": both[:, 0], "hd95": both[:, 1]})


@dataclass
class TestScores:
    metrics: dict[str, float]        # test/*: at stored size (NSD, HD95 for binary)
    at_train_size: dict[str, float]  # TRAIN_SIZE/*: the same split at data.image_size (with the loss)
    scored: StoredSizeResult
    counts: torch.Tensor             # training-size per-image counts
    predictions: torch.Tensor        # training-size thresholded masks (N, S, S)


TRAIN_SIZE = "test_at_train_size"  # the test scores on masks resized to data.image_size, kept for comparison


def score_split(model, loader, loss_fn, cfg: StepConfig, split, *, tolerance: float) -> TestScores:
    """Score `model` on `split` (harness.data.Split, loaded by `loader` in order) at `cfg.threshold`: at
    each image's stored size where the split keeps it (`split.stored`), else at the training size."""
    truth = split.stored if split.stored is not None else split.masks
    scorer = StoredSizeScorer(truth, threshold=cfg.threshold, num_classes=cfg.num_classes, tolerance=tolerance,
                          device=cfg.device)
    kept = KeptPredictions(cfg)
    stats = evaluate(model, loader, loss_fn, cfg, prefix="test", watch=(scorer, kept))
    scored = scorer.result()
    metrics = {f"test/{k}": v for k, v in summarise_counts(scored.counts).items()}
    if scored.boundary is not None:
        metrics |= {f"test/{k}": float(v.mean()) for k, v in scored.boundary.items()}
    small = {k.replace("test/", f"{TRAIN_SIZE}/", 1): v for k, v in stats.metrics.items() if k.startswith("test/")}
    return TestScores(metrics, small, scored, stats.counts, kept.result())
