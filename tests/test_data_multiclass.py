"""K-class segmentation: data (trimap3, folder indices, palette, synthetic K-class), losses,
metrics, specs, variant campaigns, and a 3-class trimap run end to end on the mini set."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from harness.config.load import SpecError, load_spec
from harness.config.sweeps import load_campaign_spec
from harness.data import DataError, DataSettings, build_data
from harness.losses import get_loss
from harness.metrics import confusion_multiclass, summarise_multiclass

from conftest import EXPERIMENTS, require_pet_mini, write_pet_layout


def test_trimap3_keeps_all_three_classes(tmp_path):
    write_pet_layout(tmp_path, [f"cat_{i}" for i in range(6)], n_test=2)
    data = build_data(DataSettings("oxford_pet", root=str(tmp_path), image_size=24, num_classes=3, target="trimap3"))
    assert set(np.unique(data.train.masks)) == {0, 1, 2}  # pet, background, border


def _folder(root, masks: dict, rgb: bool = False):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for stem, mask in masks.items():
        Image.fromarray(np.full((8, 8, 3), 99, np.uint8)).save(root / "images" / f"{stem}.png")
        Image.fromarray(mask.astype(np.uint8), mode="RGB" if rgb else "L").save(root / "masks" / f"{stem}.png")
    return root


def test_folder_class_index_masks_and_out_of_range_values(tmp_path):
    labels = np.arange(64).reshape(8, 8) % 4
    root = _folder(tmp_path / "ok", {s: labels for s in "abcde"})
    data = build_data(DataSettings("folder", root=str(root), image_size=8, num_classes=4, val_fraction=0.2))
    assert set(np.unique(data.train.masks)) == {0, 1, 2, 3}
    with pytest.raises(DataError, match=r"masks/a.png: mask of .a. has values \[3\]"):
        build_data(DataSettings("folder", root=str(root), image_size=8, num_classes=3))


def test_folder_palette_masks_map_to_class_indices(tmp_path):
    palette = [(0, 0, 0), (255, 0, 0), (0, 255, 0)]
    labels = np.arange(64).reshape(8, 8) % 3
    rgb = np.array(palette, np.uint8)[labels]
    root = _folder(tmp_path / "p", {s: rgb for s in "abcd"}, rgb=True)
    data = build_data(DataSettings("folder", root=str(root), image_size=8, num_classes=3, palette=palette,
                                   val_fraction=0.25))
    assert np.array_equal(data.test.masks[0], labels)
    rgb[0, 0] = (1, 2, 3)
    Image.fromarray(rgb).save(root / "masks" / "b.png")
    with pytest.raises(DataError, match=r"b.png: mask colours \[\[1, 2, 3\]\] are not in data.palette"):
        build_data(DataSettings("folder", root=str(root), image_size=8, num_classes=3, palette=palette))


def test_synthetic_k_class_mode():
    data = build_data(DataSettings("synthetic", root=None, image_size=32, synthetic_size=(30, 10), num_classes=5))
    assert set(np.unique(data.train.masks)) == {0, 1, 2, 3, 4}
    binary = build_data(DataSettings("synthetic", root=None, image_size=32, synthetic_size=(30, 10)))
    assert data.fingerprint != binary.fingerprint


def test_multiclass_metrics_on_known_counts():
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 0, 0, :] = 5  # top row predicted class 0
    logits[0, 1, 1, :] = 5  # bottom row predicted class 1
    target = torch.tensor([[[0, 0], [1, 2]]])
    counts = confusion_multiclass(logits, target)
    assert counts[0].tolist() == [[2, 0, 0], [1, 1, 0], [0, 0, 1]]
    m = summarise_multiclass(counts)
    assert m["pixel_acc"] == pytest.approx(0.75)
    assert m["dice_class/0"] == 1.0 and m["dice_class/1"] == pytest.approx(2 / 3) and m["dice_class/2"] == 0.0
    assert m["dice"] == pytest.approx((1 + 2 / 3 + 0) / 3) and m["miou"] == pytest.approx((1 + 0.5 + 0) / 3)


@pytest.mark.parametrize("name", ["ce", "ce_dice"])
def test_multiclass_losses_and_deep_supervision_average(name):
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.randint(0, 3, (2, 8, 8))
    single = get_loss(name)(logits, target)
    deep = get_loss(name, heads=2, channels=3)(torch.cat([logits, logits * 0], 1), target)
    assert deep.item() == pytest.approx((single.item() + get_loss(name)(logits * 0, target).item()) / 2, rel=1e-5)
    assert get_loss(name, heads=2, channels=3)(logits, target).item() == pytest.approx(single.item())  # eval: one head


@pytest.mark.parametrize("text,words", [
    ("data: {target: trimap3}\n", ["data", "trimap3", "num_classes=3"]),
    ("data: {num_classes: 3, target: trimap3}\n", ["train.loss=bce_with_logits", "ce, ce_dice"]),
    ("data: {num_classes: 4}\ntrain: {loss: bce}\n", ["train.loss=bce", "4 classes"]),
    ("train: {loss: ce}\n", ["train.loss=ce", "binary"]),
    ("data: {palette: [[0, 0, 0]]}\n", ["data.palette", "folder"]),
])
def test_task_mismatches_are_spec_errors(text, words, tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    for word in words:
        assert word in str(info.value), str(info.value)


def test_variants_campaign_crosses_named_overrides_with_the_matrix():
    spec, base = load_campaign_spec(EXPERIMENTS / "campaigns" / "unet_variants.yaml")
    cells = spec.cells()
    assert len(cells) == len(spec.variants) * 3 and cells[0] == {"variant": "unet", "seed": 0}
    exp = load_spec(base, spec.overrides({"variant": "unet_plus_plus_deep_supervision", "seed": 1}))
    assert exp.model.arch == "unet_plus_plus" and exp.model.deep_supervision and exp.seed == 1
    assert spec.axis_names() == ["variant", "seed"]


def test_bad_variant_names_the_variant(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(f"name: c\nbase: {EXPERIMENTS / 'debug.yaml'}\nvariants:\n  odd: {{model.downsample: strided}}\n")
    with pytest.raises(SpecError, match=r"(?s)c.yaml:4: variant 'odd'.*model.downsample"):
        load_campaign_spec(path)


@pytest.mark.slow  # 45 s on a 2-core CPU without native bf16
def test_trimap3_run_end_to_end_on_the_mini_set_then_predict(tmp_path):
    root = require_pet_mini()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}",
           "NO_ALBUMENTATIONS_UPDATE": "1", "TQDM_DISABLE": "1"}
    cli = [sys.executable, "-m", "harness"]
    run = subprocess.run([*cli, "experiment", str(EXPERIMENTS / "variants" / "trimap3_multiclass.yaml"),
                          f"data.root={root}", "data.limit=48", "data.image_size=64", "train.epochs=1",
                          "model.base_width=8", "log_model=true"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    (r,) = client.search_runs([client.get_experiment_by_name("oxford_pet").experiment_id])
    assert r.info.status == "FINISHED" and r.data.params["data.target"] == "trimap3"
    for key in ("test/miou", "test/pixel_acc", "test/dice_class/0", "test/dice_class/2", "test/iou_class/1"):
        assert key in r.data.metrics, key
    image = sorted((root / "images").iterdir())[0]
    pred = subprocess.run([*cli, "predict", "--run", r.info.run_id, "--input", str(image), "--output", "out"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert pred.returncode == 0, pred.stderr[-3000:]
    mask = np.asarray(Image.open(tmp_path / "out" / f"{image.stem}_mask.png"))
    assert mask.shape == Image.open(image).size[::-1] and set(np.unique(mask)) <= {0, 1, 2}
    assert (tmp_path / "out" / f"{image.stem}_overlay.png").is_file()
