"""Data audit: what is wrong with a dataset before a model is trained on it.

Finds unusable files (the readers' Problems: decode failures, missing files, masks with
unexpected values or the wrong size, split lines naming no image, unmatched stems), masks with
no foreground, and near-duplicate images, flagging the pairs that straddle trainval and test
(a test image with a twin in trainval is not unseen). Near-duplicates are found by comparing
32x32 bilinear thumbnails of the original images: mean squared error below 15 on 0-255 RGB.
"""

from __future__ import annotations

import numpy as np

from harness.data.kinds import lossy_masks

DUPLICATE_MSE = 15.0


def near_duplicates(thumbs: np.ndarray, threshold: float = DUPLICATE_MSE,
                    chunk: int = 1024) -> list[tuple[int, int, float]]:
    """Pairs (i, j, mse) with i < j and mse < threshold. thumbs: (N, h, w, 3) uint8.

    All pairs via ||a||^2 + ||b||^2 - 2ab in float64 chunks: 7,349 images take a few seconds.
    """
    x = thumbs.reshape(len(thumbs), int(np.prod(thumbs.shape[1:]))).astype(np.float64)  # -1 fails for 0 images
    dim = x.shape[1]
    sq = (x * x).sum(1)
    pairs = []
    for start in range(0, len(x), chunk):
        block = x[start:start + chunk]
        mse = (sq[start:start + chunk, None] + sq[None, :] - 2.0 * block @ x.T) / dim
        rows, cols = np.nonzero(mse < threshold)
        for r, c in zip(rows.tolist(), cols.tolist()):
            i = start + r
            if c > i:
                pairs.append((i, c, max(float(mse[r, c]), 0.0)))
    return pairs


def audit(splits: dict, foreground_masks: dict[str, np.ndarray], lossy_check: bool = False) -> dict:
    """Summary of `splits` ({split: readers.Decoded}); foreground_masks: {split: (N, H, W) bool-ish}.
    lossy_check (binary `folder` masks): count masks whose values are not exactly {0, v}, as a
    lossy encoding (JPEG) leaves them; they are split at half their maximum (kinds.binary_foreground).

    Returns JSON-ready counts plus the named findings. A split with no usable file is counted, never a crash.
    """
    problems = [p.to_dict() for d in splits.values() for p in d.problems]
    notes = [p.to_dict() for d in splits.values() for p in getattr(d, "notes", [])]
    empty = {split: [d.names[i] for i in np.flatnonzero(~_any_per_image(foreground_masks[split], len(d.names)))]
             for split, d in splits.items()}
    order = [(split, name) for split, d in splits.items() for name in d.names]
    thumbs = np.concatenate([d.thumbs for d in splits.values()]) if order else np.zeros((0, 32, 32, 3), np.uint8)
    dups = [{"a": order[i][1], "a_split": order[i][0], "b": order[j][1], "b_split": order[j][0], "mse": round(m, 2)}
            for i, j, m in near_duplicates(np.asarray(thumbs))]
    cross = [d for d in dups if d["a_split"] != d["b_split"] and "test" in (d["a_split"], d["b_split"])]
    counts = {"images": len(order), "problems": len(problems), **_by_kind(problems, "problems"),
              "empty_masks": sum(len(v) for v in empty.values()), "near_duplicates": len(dups),
              "cross_split_duplicates": len(cross), **_by_kind(notes, "conversions")}
    result = {"counts": counts, "problems": problems, "empty_masks": empty, "near_duplicates": dups,
              "conversions": notes}
    if lossy_check:
        result["lossy_masks"] = _lossy(splits)
        counts["lossy_masks"] = result["lossy_masks"]["count"]
    return result


def _any_per_image(masks: np.ndarray, n: int) -> np.ndarray:
    return np.asarray(masks).reshape(n, -1).any(1) if n else np.zeros(0, bool)  # reshape(0, -1) raises


def _by_kind(rows: list[dict], prefix: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for row in rows:
        out[f"{prefix}.{row['kind']}"] = out.get(f"{prefix}.{row['kind']}", 0) + 1
    return out


def _lossy(splits: dict) -> dict:
    """Masks whose values are not exactly {0, v}: the count, one example and its distinct-value count."""
    found = [(split, d.names[i], d.masks[i]) for split, d in splits.items() if len(d.names)
             for i in np.flatnonzero(lossy_masks(np.asarray(d.masks)))]
    if not found:
        return {"count": 0}
    split, name, mask = found[0]
    return {"count": len(found), "example": name, "example_split": split,
            "example_distinct_values": int(len(np.unique(mask)))}


def format_audit(result: dict, limit: int = 10) -> str:
    """Readable text for the terminal: counts, then up to `limit` examples of each finding."""
    c = result["counts"]
    lines = [f"images read: {c['images']}   unusable: {c['problems']}   empty masks: {c['empty_masks']}   "
             f"near-duplicate pairs: {c['near_duplicates']} ({c['cross_split_duplicates']} across splits with test)"]
    lossy = result.get("lossy_masks", {})
    if lossy.get("count"):
        lines.append(f"  warning: {lossy['count']} lossy masks (values not exactly {{0, v}}, e.g. {lossy['example']} "
                     f"with {lossy['example_distinct_values']} distinct values): foreground = above half the mask's "
                     f"maximum, or set data.mask_threshold")
    for key in sorted(k for k in c if k.startswith("conversions.")):
        example = next(n for n in result["conversions"] if f"conversions.{n['kind']}" == key)
        lines.append(f"  converted [{key.split('.', 1)[1]}] {c[key]} files, e.g. {example['path']}: "
                     f"{example['detail']}")
    for p in result["problems"][:limit]:
        lines.append(f"  unusable [{p['kind']}] {p['path']}: {p['detail']}")
    for split, names in result["empty_masks"].items():
        if names:
            lines.append(f"  empty masks in {split} ({len(names)}): {' '.join(names[:limit])}"
                         + (" ..." if len(names) > limit else ""))
    dups = sorted(result["near_duplicates"], key=lambda d: d["a_split"] == d["b_split"])  # cross-split first
    for d in dups[:limit]:
        flag = "  <- across splits" if d["a_split"] != d["b_split"] else ""
        lines.append(f"  near-duplicate {d['a']} ({d['a_split']}) ~ {d['b']} ({d['b_split']})  mse {d['mse']}{flag}")
    if len(result["near_duplicates"]) > limit:
        lines.append(f"  ... and {len(result['near_duplicates']) - limit} more pairs (see audit.json)")
    return "\n".join(lines)
