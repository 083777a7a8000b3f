"""Data: the synthetic generator, the official Oxford-IIIT Pet layout, the folder layout, augmentation."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from harness.augment import build_pipeline
from harness.data import DataError, DataSettings, LoaderSettings, SegDataset, build_data, make_loader

from conftest import EXPERIMENTS, require_pet_mini, write_pet_layout


def test_synthetic_is_deterministic_and_labelled():
    a = build_data(DataSettings("synthetic", root=None, image_size=32, synthetic_size=(40, 10)))
    b = build_data(DataSettings("synthetic", root=None, image_size=32, synthetic_size=(40, 10)))
    assert np.array_equal(a.train.images, b.train.images) and a.fingerprint == b.fingerprint
    assert a.train.images.shape == (36, 32, 32, 3) and a.train.images.dtype == np.uint8
    assert set(np.unique(a.train.masks)) == {0, 1}
    assert 0.05 < a.train.masks.mean() < 0.6
    c = build_data(DataSettings("synthetic", root=None, image_size=32, synthetic_size=(40, 10), synthetic_seed=1))
    assert not np.array_equal(a.train.images, c.train.images) and a.fingerprint != c.fingerprint


def test_foreground_rule_changes_masks():
    pet = build_data(DataSettings("synthetic", root=None, image_size=32, synthetic_size=(20, 5), foreground="pet_only"))
    nb = build_data(DataSettings("synthetic", root=None, image_size=32, synthetic_size=(20, 5),
                                 foreground="not_background"))
    assert pet.train.masks.sum() < nb.train.masks.sum()  # the border band counts only under not_background
    assert (pet.train.masks <= nb.train.masks).all()


def test_oxford_pet_mini_reads_official_layout():
    root = require_pet_mini()
    data = build_data(DataSettings("oxford_pet", root=str(root), image_size=64, val_fraction=0.1))
    assert (len(data.train), len(data.val), len(data.test)) == (540, 60, 200)
    assert data.train.images.shape[1:] == (64, 64, 3)
    assert not set(data.train.names) & set(data.val.names)
    assert not set(data.train.names + data.val.names) & set(data.test.names)
    assert 0.2 < data.train.masks.mean() < 0.8
    again = build_data(DataSettings("oxford_pet", root=str(root), image_size=64, val_fraction=0.1, limit=5))
    assert set(again.val.names) <= set(data.val.names)  # the val carve depends on names only
    assert len(again.train) == 5


def test_oxford_layout_fixture_and_rules(tmp_path):
    write_pet_layout(tmp_path, [f"cat_{i}" for i in range(10)], n_test=2)
    nb = build_data(DataSettings("oxford_pet", root=str(tmp_path), image_size=16))
    pet = build_data(DataSettings("oxford_pet", root=str(tmp_path), image_size=16, foreground="pet_only"))
    assert len(nb.test) == 2 and len(nb.train) + len(nb.val) == 8
    assert nb.train.masks.sum() > pet.train.masks.sum() > 0


def test_bad_trimap_value_names_the_image(tmp_path):
    write_pet_layout(tmp_path, [f"dog_{i}" for i in range(4)], n_test=2, trimap_value=7)
    with pytest.raises(DataError, match=r"dog_\d.*\[7\]"):
        build_data(DataSettings("oxford_pet", root=str(tmp_path), image_size=16))


def test_missing_image_names_the_file(tmp_path):
    write_pet_layout(tmp_path, [f"dog_{i}" for i in range(4)], n_test=2)
    (tmp_path / "images" / "dog_1.jpg").unlink()
    with pytest.raises(DataError, match="dog_1.jpg"):
        build_data(DataSettings("oxford_pet", root=str(tmp_path), image_size=16))


def test_folder_layout_pairs_by_stem(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(12):
        Image.fromarray(np.full((10, 10, 3), i * 10, np.uint8)).save(tmp_path / "images" / f"s{i}.png")
        mask = np.zeros((10, 10), np.uint8)
        mask[: i % 5 + 1] = 255
        Image.fromarray(mask).save(tmp_path / "masks" / f"s{i}.png")
    data = build_data(DataSettings("folder", root=str(tmp_path), image_size=10, val_fraction=0.2))
    assert len(data.train) + len(data.val) + len(data.test) == 12
    assert set(np.unique(data.train.masks)) <= {0, 1}
    (tmp_path / "images" / "orphan.png").write_bytes((tmp_path / "images" / "s0.png").read_bytes())
    with pytest.raises(DataError, match="orphan"):
        build_data(DataSettings("folder", root=str(tmp_path), image_size=10))


def test_augmentation_moves_image_and_mask_together():
    data = build_data(DataSettings("synthetic", root=None, image_size=32, synthetic_size=(20, 5)))
    pipeline = build_pipeline([{"name": "HorizontalFlip", "p": 1.0}], 32)
    image, mask, _ = SegDataset(data.train, pipeline)[0]
    assert np.array_equal(image.permute(1, 2, 0).numpy(), data.train.images[0][:, ::-1])
    assert np.array_equal(mask[0].numpy(), data.train.masks[0][:, ::-1])


@pytest.mark.parametrize("preset", ["none", "flip", "crop_flip", "color", "elastic"])
def test_presets_keep_shapes_and_labels(preset):
    data = build_data(DataSettings("synthetic", root=None, image_size=32, synthetic_size=(20, 5)))
    loader = make_loader(data.train, LoaderSettings(batch_size=4), shuffle=True, pipeline=build_pipeline(preset, 32))
    images, masks, _ = next(iter(loader))
    assert images.shape == (4, 3, 32, 32) and images.dtype.is_floating_point is False
    assert masks.shape == (4, 1, 32, 32) and set(masks.unique().tolist()) <= {0, 1}


def test_folds_are_disjoint_cover_trainval_are_stable_and_balanced_by_breed():
    from harness.data import fold_of
    from harness.data.kinds import KINDS

    rng = np.random.default_rng(0)
    breeds = ["Abyssinian", "Bengal", "american_bulldog", "pug", "yorkshire_terrier"]
    names = [f"{b}_{i}" for b in breeds for i in rng.choice(300, int(rng.integers(11, 40)), replace=False)]
    stratum = KINDS["oxford_pet"].stratum
    assert stratum("american_bulldog_12") == "american_bulldog"
    folds = fold_of(names, 5, stratum)
    assert sorted(set(folds)) == [0, 1, 2, 3, 4]  # every name in exactly one fold: disjoint and covering
    for breed in breeds:
        sizes = np.bincount([f for n, f in zip(names, folds) if stratum(n) == breed], minlength=5)
        assert sizes.max() - sizes.min() <= 1, breed  # balanced by breed within one image
    shuffled = list(rng.permutation(len(names)))
    again = fold_of([names[i] for i in shuffled], 5, stratum)  # another order (or machine): the same folds
    assert [folds[i] for i in shuffled] == again


def test_a_fold_validates_and_the_rest_trains(tmp_path):
    from harness.config.load import SpecError, load_spec

    root = write_pet_layout(tmp_path / "pet", [f"{b}_{i}" for b in ("Bengal", "pug") for i in range(10)] + ["pug_99"])
    splits = [build_data(DataSettings("oxford_pet", root=str(root), image_size=16, folds=(5, i))) for i in range(5)]
    vals = [set(s.val.names) for s in splits]
    assert all(not (a & b) for i, a in enumerate(vals) for b in vals[i + 1:])  # disjoint validation folds
    assert set().union(*vals) == set(splits[0].train.names) | vals[0]  # together they are trainval
    assert all(s.test.names == ["pug_99"] for s in splits)  # the test split is untouched
    assert all(sum(n.startswith("Bengal") for n in v) == 2 for v in vals)  # 10 Bengals over 5 folds
    base = load_spec(EXPERIMENTS / "debug.yaml")
    assert load_spec(EXPERIMENTS / "debug.yaml", ["data.folds=5", "data.fold=0"]).spec_hash() != base.spec_hash()
    with pytest.raises(SpecError, match="data.fold=5 needs data.folds > 5"):
        load_spec(EXPERIMENTS / "debug.yaml", ["data.folds=5", "data.fold=5"])
