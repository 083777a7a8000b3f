"""Boundary metrics per image: normalised surface Dice (NSD) and the 95th-percentile Hausdorff
distance (HD95), in pixels, from Euclidean distance transforms (scipy.ndimage).

Definitions (as MONAI's `compute_surface_dice` and `compute_hausdorff_distance(percentile=95)`):
- A mask's boundary is its pixels that are not in its erosion by the 4-connected cross, so a
  one-pixel mask is all boundary.
- d(p, B) is the Euclidean distance from boundary pixel p to the nearest pixel of boundary B.
- NSD at tolerance t = (#{p in P: d(p, G) <= t} + #{g in G: d(g, P) <= t}) / (|P| + |G|), with P, G
  the predicted and true boundaries.
- HD95 = max(95th percentile of d(p, G) over p in P, 95th percentile of d(g, P) over g in G): the
  larger of the two directed percentiles (MONAI's definition; numpy's linear interpolation), not
  the percentile of both directions pooled.

Empty masks, following Metrics Reloaded: both empty gives NSD 1 and HD95 0; exactly one empty
gives NSD 0 and HD95 = the image diagonal, sqrt(H^2 + W^2), the largest distance the image allows.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

CROSS = ndimage.generate_binary_structure(2, 1)


def _boundary(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, CROSS, border_value=0)


def surface_distances(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distances from each predicted boundary pixel to the true boundary, and the reverse), for
    two non-empty (H, W) bool masks."""
    p, g = _boundary(pred), _boundary(truth)
    to_g = ndimage.distance_transform_edt(~g)  # at each pixel: distance to the nearest true boundary pixel
    to_p = ndimage.distance_transform_edt(~p)
    return to_g[p], to_p[g]


def boundary_scores(pred: np.ndarray, truth: np.ndarray, tolerance: float = 2.0) -> tuple[float, float]:
    """(NSD at `tolerance` pixels, HD95 in pixels) of one (H, W) bool prediction against its truth."""
    pred, truth = pred.astype(bool), truth.astype(bool)
    if not pred.any() and not truth.any():
        return 1.0, 0.0
    if not pred.any() or not truth.any():
        return 0.0, math.hypot(*pred.shape)
    d_pg, d_gp = surface_distances(pred, truth)
    nsd = ((d_pg <= tolerance).sum() + (d_gp <= tolerance).sum()) / (d_pg.size + d_gp.size)
    hd95 = max(np.percentile(d_pg, 95), np.percentile(d_gp, 95))
    return float(nsd), float(hd95)


def boundary_per_image(preds, truths, tolerance: float = 2.0) -> dict[str, np.ndarray]:
    """Per-image 'nsd' and 'hd95' (N,) for N bool masks: an (N, H, W) array or a list of (H, W)
    arrays of any sizes (each prediction the size of its truth)."""
    scores = np.array([boundary_scores(p, t, tolerance) for p, t in zip(preds, truths)], float).reshape(-1, 2)
    return {"nsd": scores[:, 0], "hd95": scores[:, 1]}
