"""Folder datasets as they ship: layouts, split folders and lists, and the file forms of masks and images."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from harness.data import DataError, DataSettings, build_data

H, W = 48, 64


def _truth(i: int) -> np.ndarray:
    """A (H, W) bool blob whose area varies with i."""
    y, x = np.mgrid[:H, :W]
    return ((x - W / 2) ** 2 / (10 + i) ** 2 + (y - H / 2) ** 2 / (8 + i % 5) ** 2) < 1


def _image(i: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(i).integers(0, 255, (H, W, 3), dtype=np.uint8))


def _write(folder, stems, *, images="images", mask_name="{}.png", mask_form=None):
    """images/<stem>.png and masks/<mask_name> for each stem; mask_form(bool mask) -> PIL image."""
    (folder / images).mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(exist_ok=True)
    form = mask_form or (lambda m: Image.fromarray(m.astype(np.uint8) * 255))
    for i, stem in enumerate(stems):
        _image(i).save(folder / images / f"{stem}.png")
        form(_truth(i)).save(folder / "masks" / mask_name.format(stem))


def _stems(n=10):
    return [f"s{i:02d}" for i in range(n)]


def test_carvana_layout_imgs_and_gif_masks_named_with_mask_suffix(tmp_path):
    def gif(m):  # Carvana's masks: palette GIFs with indices 0/1
        im = Image.fromarray(m.astype(np.uint8), mode="L").convert("P")
        im.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
        return im

    _write(tmp_path, _stems(), images="imgs", mask_name="{}_mask.gif", mask_form=gif)
    data = build_data(DataSettings("folder", root=str(tmp_path), image_size=32, val_fraction=0.2))
    assert len(data.train) + len(data.val) + len(data.test) == 10 and data.info["skipped"] == 0
    assert data.test.stored[0].shape == (H, W) and set(np.unique(data.test.stored[0])) == {0, 1}
    stem = int(data.test.names[0][1:])
    assert np.array_equal(data.test.stored[0].astype(bool), _truth(stem))


def test_both_images_folders_is_an_error_naming_both(tmp_path):
    _write(tmp_path, _stems(4))
    _write(tmp_path, _stems(4), images="imgs")
    with pytest.raises(DataError, match=r"images/ and imgs/.*data.images_dir"):
        build_data(DataSettings("folder", root=str(tmp_path), image_size=32))
    data = build_data(DataSettings("folder", root=str(tmp_path), image_size=32, images_dir="imgs"))
    assert data.info["n_train"] + data.info["n_val"] + data.info["n_test"] == 4


def test_explicit_mask_suffix_and_folders(tmp_path):
    _write(tmp_path, _stems(6), images="photos", mask_name="{}-gt.png")
    (tmp_path / "masks").rename(tmp_path / "labels")
    data = build_data(DataSettings("folder", root=str(tmp_path), image_size=32,
                                   images_dir="photos", masks_dir="labels", mask_suffix="-gt"))
    assert data.info["skipped"] == 0 and data.info["n_train"] + data.info["n_val"] + data.info["n_test"] == 6


def test_split_folders_are_used_as_given(tmp_path):
    for split, stems in (("train", _stems(8)), ("val", ["v0", "v1"]), ("test", ["t0", "t1", "t2"])):
        _write(tmp_path / split, stems)
    data = build_data(DataSettings("folder", root=str(tmp_path), image_size=32))
    assert data.val.names == ["v0", "v1"] and data.test.names == ["t0", "t1", "t2"] and len(data.train) == 8
    (tmp_path / "val").rename(tmp_path / "spare")  # no val split: carved from train, as without split folders
    data = build_data(DataSettings("folder", root=str(tmp_path), image_size=32, val_fraction=0.25))
    assert (len(data.train), len(data.val), data.test.names) == (6, 2, ["t0", "t1", "t2"])
    (tmp_path / "train").rename(tmp_path / "other")
    with pytest.raises(DataError, match="no train/"):
        build_data(DataSettings("folder", root=str(tmp_path), image_size=32))


def test_split_lists_at_the_root(tmp_path):
    _write(tmp_path, _stems(10))
    (tmp_path / "val.txt").write_text("s00\ns01\n")
    (tmp_path / "test.txt").write_text("s02\ns03\ns04\n")
    data = build_data(DataSettings("folder", root=str(tmp_path), image_size=32))
    assert data.val.names == ["s00", "s01"] and data.test.names == ["s02", "s03", "s04"]
    assert data.train.names == [f"s{i:02d}" for i in range(5, 10)]
    (tmp_path / "train.txt").write_text("s05\ns06\n")
    assert build_data(DataSettings("folder", root=str(tmp_path), image_size=32)).train.names == ["s05", "s06"]
    (tmp_path / "test.txt").write_text("s02\nghost\n")
    with pytest.raises(DataError, match="ghost"):
        build_data(DataSettings("folder", root=str(tmp_path), image_size=32))


def _jpeg(m, quality=90, rgb=False):
    buf = io.BytesIO()
    pixels = m.astype(np.uint8) * 255
    Image.fromarray(np.dstack([pixels] * 3) if rgb else pixels).save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue()))


def test_jpeg_masks_keep_their_true_foreground_fraction_and_are_reported_lossy(tmp_path):
    _write(tmp_path, _stems(12), mask_form=_jpeg)
    (tmp_path / "test.txt").write_text("s00\ns01\ns02\n")
    truth = np.mean([_truth(i).mean() for i in range(12)])
    data = build_data(DataSettings("folder", root=str(tmp_path), image_size=W))  # 64 px: resizing changes little
    stored = [data.test.stored[i] for i in range(3)]  # stored size: exact comparison
    got = np.mean([m.mean() for m in stored])
    want = np.mean([_truth(i).mean() for i in range(3)])
    assert abs(got - want) < 0.01 and not set(np.unique(stored[0])) - {0, 1}
    everything = np.concatenate([data.train.masks, data.val.masks, data.test.masks])
    assert abs(everything.mean() - truth) < 0.01
    assert data.audit["counts"]["lossy_masks"] == 12 and data.audit["lossy_masks"]["example_distinct_values"] > 2
    nonzero = build_data(DataSettings("folder", root=str(tmp_path), image_size=W,
                                      mask_threshold=0))  # the old rule, explicitly
    assert nonzero.test.stored[0].mean() > stored[0].mean()


def test_rgb_masks_with_equal_channels_read_as_gray_and_coloured_ones_need_a_palette(tmp_path):
    _write(tmp_path, _stems(6), mask_form=lambda m: _jpeg(m, rgb=True))  # Kvasir-SEG's form
    data = build_data(DataSettings("folder", root=str(tmp_path), image_size=32))
    assert data.info["skipped"] == 0 and data.audit["counts"]["conversions.mask_rgb_as_gray"] == 6
    red = np.zeros((H, W, 3), np.uint8)
    red[_truth(0)] = (200, 0, 0)
    Image.fromarray(red).save(tmp_path / "masks" / "s00.png")
    with pytest.raises(DataError, match=r"s00.png.*coloured.*data.palette"):
        build_data(DataSettings("folder", root=str(tmp_path), image_size=32))


@pytest.mark.parametrize("form", ["png16", "palette_png", "rgba_image", "gray_image", "cmyk_image"])
def test_other_file_forms_are_read_and_lossy_conversions_counted(form, tmp_path):
    _write(tmp_path, _stems(4), mask_form=(lambda m: Image.fromarray(m.astype(np.uint16) * 65535)) if form == "png16"
           else (lambda m: Image.fromarray(m.astype(np.uint8)).convert("P")) if form == "palette_png" else None)
    for i, stem in enumerate(_stems(4)):
        image = _image(i)
        if form == "rgba_image":
            image.putalpha(Image.fromarray(np.where(_truth(i), 255, 100).astype(np.uint8)))
            image.save(tmp_path / "images" / f"{stem}.png")
        elif form == "gray_image":
            image.convert("L").save(tmp_path / "images" / f"{stem}.png")
        elif form == "cmyk_image":
            (tmp_path / "images" / f"{stem}.png").unlink()
            image.convert("CMYK").save(tmp_path / "images" / f"{stem}.jpg")
    data = build_data(DataSettings("folder", root=str(tmp_path), image_size=32, val_fraction=0.25))
    assert data.info["skipped"] == 0
    masks = np.concatenate([data.train.masks, data.val.masks, data.test.masks])
    assert set(np.unique(masks)) == {0, 1}
    counted = {k for k in data.audit["counts"] if k.startswith("conversions.")}
    expected = {"png16": {"conversions.mask_16bit_scaled"}, "rgba_image": {"conversions.alpha_dropped"},
                "cmyk_image": {"conversions.cmyk_converted"}}.get(form, set())
    assert counted == expected


def test_the_audit_reports_a_folder_whose_files_are_all_unusable(tmp_path):
    red = np.zeros((H, W, 3), np.uint8)
    red[..., 0] = 200
    _write(tmp_path, _stems(5), mask_form=lambda m: Image.fromarray(red))
    out = subprocess.run([sys.executable, "-m", "harness", "audit", str(tmp_path), "--cache-dir", ""],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and "unusable: 5" in out.stdout and "coloured" in out.stdout
