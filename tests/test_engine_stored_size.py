"""Test scores at each image's stored resolution (harness.data.stored_size, harness.engine.stored_size)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from harness.boundary import boundary_scores
from harness.data import DataSettings, build_data, cache
from harness.engine.stored_size import StoredSizeScorer

SIZES = [(23, 37), (48, 64), (80, 50), (31, 31), (40, 17), (19, 57)]  # (H, W): mixed, mostly not square
S = 16


def _truth(h: int, w: int, i: int) -> np.ndarray:
    """A tilted ellipse, off centre: its outline does not fall on the 16 px grid."""
    y, x = np.mgrid[:h, :w]
    u, v = (x - w * (0.45 + 0.02 * i)) / (0.33 * w), (y - h * 0.55) / (0.3 * h)
    return ((u + 0.3 * v) ** 2 + v ** 2 < 1).astype(np.uint8)


def _folder(root):
    """A `folder` dataset of SIZES images with a declared test split (all of them)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, (h, w) in enumerate(SIZES * 2):
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"s{i:02d}.png")
        Image.fromarray(_truth(h, w, i) * 255).save(root / "masks" / f"s{i:02d}.png")
    (root / "test.txt").write_text("\n".join(f"s{i:02d}" for i in range(len(SIZES))) + "\n")


def _bilinear(small: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear upsampling written out (half-pixel centres, edge clamped: align_corners=False)."""
    def axis(n_out, n_in):
        src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(src).astype(int)
        return lo, np.minimum(lo + 1, n_in - 1), src - lo

    y0, y1, fy = axis(h, small.shape[0])
    x0, x1, fx = axis(w, small.shape[1])
    top = small[y0][:, x0] * (1 - fx) + small[y0][:, x1] * fx
    bottom = small[y1][:, x0] * (1 - fx) + small[y1][:, x1] * fx
    return top * (1 - fy[:, None]) + bottom * fy[:, None]


@pytest.fixture
def data(tmp_path):
    _folder(tmp_path / "d")
    return build_data(DataSettings("folder", root=str(tmp_path / "d"), image_size=S, cache_dir=str(tmp_path / "cache")))


def test_the_test_split_keeps_every_mask_at_its_stored_size_through_the_cache(data, tmp_path):
    assert data.test.stored is not None and data.train.stored is None and data.val.stored is None
    for i, name in enumerate(data.test.names):
        k = int(name[1:])
        assert data.test.stored[i].shape == SIZES[k % len(SIZES)]
        assert np.array_equal(data.test.stored[i], _truth(*SIZES[k % len(SIZES)], k))  # labels: {0, 1}
    [entry] = (tmp_path / "cache").iterdir()
    stored = cache.load(entry)[0]["test"].stored
    assert isinstance(stored.blob, np.memmap) and stored.blob.nbytes < sum(h * w for h, w in SIZES)  # compact
    again = build_data(DataSettings("folder", root=str(tmp_path / "d"), image_size=S,
                                    cache_dir=str(tmp_path / "cache")))
    assert all(np.array_equal(again.test.stored[i], data.test.stored[i]) for i in range(len(SIZES)))


def test_logits_that_are_exactly_the_downsized_mask_score_what_a_hand_computation_at_stored_size_gives(data):
    """At the training size this model is perfect (Dice 1). At stored size it is not: its
    prediction is the training-size mask upsampled, which misses the outline by up to a pixel of
    the 16 px grid. Its score there must be the one computed by hand from the stored masks."""
    small = data.test.masks.astype(np.float64) * 20 - 10  # logits: +10 inside the resized mask, -10 outside
    scorer = StoredSizeScorer(data.test.stored, threshold=0.5, num_classes=2, tolerance=1.0, device=torch.device("cpu"))
    scorer.update(torch.from_numpy(small[:, None]).float(), torch.arange(len(small)))
    got = scorer.result()
    expected_dice, expected_nsd = [], []
    for i in range(len(small)):
        truth = data.test.stored[i].astype(bool)
        pred = _bilinear(small[i], *truth.shape) > 0
        tp, fp, fn = (pred & truth).sum(), (pred & ~truth).sum(), (~pred & truth).sum()
        expected_dice.append(2 * tp / (2 * tp + fp + fn))
        expected_nsd.append(boundary_scores(pred, truth, 1.0)[0])
        assert got.counts[i].tolist() == [tp, fp, fn, (~pred & ~truth).sum()]
        assert got.sizes[i].tolist() == list(truth.shape)
    dice = 2 * got.counts[:, 0] / (2 * got.counts[:, 0] + got.counts[:, 1] + got.counts[:, 2])
    assert np.allclose(dice.numpy(), expected_dice, atol=1e-12)
    assert np.allclose(got.boundary["nsd"], expected_nsd, atol=1e-12)
    assert max(expected_dice) < 1.0 and np.mean(expected_dice) > 0.8  # imperfect, but close


def test_where_the_stored_size_is_the_training_size_both_scores_coincide():
    masks = (np.random.default_rng(0).random((3, 12, 12)) > 0.5).astype(np.uint8)
    logits = torch.from_numpy(masks[:, None] * 2.0 - 1)
    scorer = StoredSizeScorer(masks, threshold=0.5, num_classes=2, tolerance=2.0, device=torch.device("cpu"))
    scorer.update(logits, torch.arange(3))
    got = scorer.result()
    assert (got.counts[:, 1:3] == 0).all() and got.boundary["nsd"].tolist() == [1.0, 1.0, 1.0]


def test_k_class_logits_are_upsampled_per_class_then_argmaxed():
    truth = np.zeros((30, 20), np.uint8)
    truth[:, 10:] = 2
    logits = torch.zeros(1, 3, 4, 4)
    logits[0, 0, :, :2] = 5
    logits[0, 2, :, 2:] = 5
    scorer = StoredSizeScorer([truth], threshold=0.5, num_classes=3, tolerance=2.0, device=torch.device("cpu"))
    scorer.update(logits, torch.tensor([0]))
    got = scorer.result()
    assert got.boundary is None and got.sizes.tolist() == [[30, 20]]
    assert got.counts[0, :, 0].tolist() == [300, 0, 300]  # TP per class: both halves exactly right


def test_a_run_on_mixed_sizes_reports_stored_size_scores_and_keeps_the_training_size_ones(tmp_path):
    from mlflow.tracking import MlflowClient

    from harness.config.load import load_spec
    from harness.run import run_experiment
    from harness.tracking.base import RunOptions, open_run

    _folder(tmp_path / "d")
    spec = load_spec("experiments/debug.yaml", [f"data.root={tmp_path / 'd'}", "data.dataset=folder",
                                                f"data.image_size={S}", "train.epochs=1", "log_model=false",
                                                "data.val_fraction=0.3"])
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = run_experiment(spec, lambda params, tags: open_run("native", "mixed", params, tags,
                                                                RunOptions(tracking_uri=uri)),
                            checkpoint_root=tmp_path / "ckpt")

    client = MlflowClient(uri)
    metrics = client.get_run(result.run_id).data.metrics
    assert {"test/dice", "test_at_train_size/dice", "test/nsd"} <= set(metrics)
    rows = list(csv.DictReader(open(client.download_artifacts(result.run_id, "test_per_image.csv", str(tmp_path)))))
    assert sorted((int(r["height"]), int(r["width"])) for r in rows) == sorted(SIZES)
    assert abs(np.mean([float(r["dice"]) for r in rows]) - metrics["test/dice"]) < 1e-6
    assert abs(np.mean([float(r["dice_at_train_size"]) for r in rows]) - metrics["test_at_train_size/dice"]) < 1e-6
