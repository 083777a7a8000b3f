"""NSD and HD95 on hand-made cases, the empty-mask conventions, and agreement with MONAI."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.boundary import boundary_per_image, boundary_scores, surface_distances


def _square(size=(40, 50), top=10, left=12, side=15):
    mask = np.zeros(size, bool)
    mask[top:top + side, left:left + side] = True
    return mask


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_a_square_shifted_by_k_pixels(k):
    truth, pred = _square(), _square(left=12 + k)
    d_pg, d_gp = surface_distances(pred, truth)
    assert max(d_pg.max(), d_gp.max()) == k  # the largest surface distance is the shift
    nsd, hd95 = boundary_scores(pred, truth, tolerance=k)
    assert hd95 <= k and nsd == 1.0
    nsd_tight, _ = boundary_scores(pred, truth, tolerance=k - 0.5)
    assert nsd_tight < 1.0  # some boundary pixels are exactly k away


def test_identical_masks_and_the_empty_conventions():
    square = _square()
    assert boundary_scores(square, square) == (1.0, 0.0)
    empty = np.zeros_like(square)
    assert boundary_scores(empty, empty) == (1.0, 0.0)
    diagonal = math.hypot(*square.shape)
    assert boundary_scores(empty, square) == (0.0, diagonal)
    assert boundary_scores(square, empty) == (0.0, diagonal)


def test_per_image_takes_masks_of_mixed_sizes():
    preds = [_square(), _square((30, 20), 5, 5, 8)]
    truths = [_square(left=14), _square((30, 20), 5, 5, 8)]
    out = boundary_per_image(preds, truths, tolerance=1)
    assert out["nsd"].shape == (2,) and out["nsd"][1] == 1.0 and out["hd95"][1] == 0.0
    assert out["nsd"][0] < 1.0 and out["hd95"][0] == pytest.approx(2.0)


def test_agrees_with_monai_on_random_masks():
    monai = pytest.importorskip("monai.metrics", reason="MONAI (dev extra) is the reference implementation")
    import torch
    from scipy import ndimage

    rng = np.random.default_rng(0)
    for trial in range(20):
        shape = (int(rng.integers(24, 64)), int(rng.integers(24, 64)))
        pred, truth = (ndimage.binary_opening(rng.random(shape) > 0.55, iterations=1) for _ in range(2))
        pred[0, 0] = truth[-1, -1] = True  # never empty
        tol = float(rng.integers(1, 4))
        nsd, hd95 = boundary_scores(pred, truth, tolerance=tol)
        as_onehot = [torch.from_numpy(np.stack([~m, m]))[None].float() for m in (pred, truth)]
        ref_nsd = monai.compute_surface_dice(*as_onehot, class_thresholds=[tol], include_background=False)
        ref_hd95 = monai.compute_hausdorff_distance(*as_onehot, include_background=False, percentile=95)
        assert nsd == pytest.approx(float(ref_nsd), abs=1e-6), trial
        assert hd95 == pytest.approx(float(ref_hd95), rel=1e-6), trial  # MONAI's quantile is float32
