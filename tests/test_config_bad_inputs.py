"""Bad input corpus: malformed specs and broken datasets each fail with the file (and field) named."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_config_specs import BAD

from harness.config.load import SpecError, load_spec
from harness.data import DataError, DataSettings, build_data

from conftest import REPO, write_pet_layout

# (yaml text, overrides, words the message must contain); merged below with test_config_specs.BAD.
MORE_SPECS = {
    "model_unknown_key": ("model: {depth: 5}\n", [], ["model.depth", "arch"]),
    "data_unknown_key": ("data: {size: 64}\n", [], ["data.size", "image_size"]),
    "eval_unknown_key": ("eval: {thresh: 0.5}\n", [], ["eval.thresh", "threshold"]),
    "batch_size_string": ("train: {batch_size: big}\n", [], ["train.batch_size", "integer"]),
    "lr_string": ("train: {lr: fast}\n", [], ["train.lr", "number"]),
    "channels_last_string": ("train: {channels_last: maybe}\n", [], ["train.channels_last", "boolean"]),
    "augment_int": ("augment: 3\n", [], ["augment"]),
    "model_list": ("model: [unet]\n", [], ["model"]),
    "epochs_zero": ("train: {epochs: 0}\n", [], ["train.epochs", "greater than or equal to 1"]),
    "image_size_tiny": ("data: {image_size: 8}\n", [], ["data.image_size", "16"]),
    "val_fraction_over_one": ("data: {val_fraction: 1.5}\n", [], ["data.val_fraction", "less than 1"]),
    "threshold_one": ("eval: {threshold: 1.0}\n", [], ["eval.threshold", "less than 1"]),
    "batch_size_negative": ("train: {batch_size: -4}\n", [], ["train.batch_size"]),
    "num_workers_negative": ("data: {num_workers: -1}\n", [], ["data.num_workers"]),
    "grad_clip_zero": ("train: {grad_clip: 0}\n", [], ["train.grad_clip", "greater than 0"]),
    "weight_decay_negative": ("train: {weight_decay: -0.1}\n", [], ["train.weight_decay"]),
    "unknown_optimizer": ("train: {optimizer: lion}\n", [], ["train.optimizer", "adamw", "rmsprop"]),
    "unknown_scheduler": ("train: {scheduler: step}\n", [], ["train.scheduler", "cosine", "plateau"]),
    "unknown_dataset": ("data: {dataset: coco}\n", [], ["data.dataset", "oxford_pet", "folder"]),
    "unknown_foreground": ("data: {foreground: pet}\n", [], ["data.foreground", "pet_only"]),
    "unknown_upsample": ("model: {upsample: bicubic}\n", [], ["model.upsample", "nearest", "transpose"]),
    "knob_for_another_arch": ("model: {arch: resnet34_unet, downsample: strided_conv}\n", [],
                              ["model", "does not apply to model.arch=resnet34_unet"]),
    "loss_for_another_task": ("data: {num_classes: 3, target: trimap3}\n", [], ["train.loss", "ce_dice"]),
    "unknown_weights": ("model: {encoder_weights: coco}\n", [], ["model.encoder_weights", "imagenet"]),
    "unknown_device": ("train: {device: tpu}\n", [], ["train.device", "cuda"]),
    "augment_item_without_name": ("augment:\n  - {p: 0.5}\n", [], ["augment", "name"]),
    "base_not_string": ("base: [a.yaml]\n", [], ["base", "path string"]),
    "override_without_equals": ("name: x\n", ["train.lr"], ["train.lr", "KEY=VALUE"]),
    "override_into_scalar": ("name: x\n", ["seed.value=1"], ["seed.value"]),
    "override_unknown_section": ("name: x\n", ["optim.lr=1"], ["optim", "does not exist"]),
    "seed_overflow": ("seed: 99999999999999999999\n", [], ["seed", "less than or equal to 4294967295"]),
    "seed_overflow_override": ("name: x\n", ["seed=4294967296"], ["seed", "less than or equal to"]),
    "alias_bomb": ("".join(f"{k}: &{k} [{', '.join([f'*{p}'] * 10 if p else ['x'] * 10)}]\n"
                           for p, k in zip(["", "a", "b", "c", "d"], "abcde")), [], ["aliases", "10,000", "refused"]),
    "alias_self_reference": ("a: &a [1, *a]\n", [], ["refers to itself", ":1"]),
}


SPECS = {**BAD, **MORE_SPECS}


def test_corpus_size():
    assert len(SPECS) >= 40 and len(BROKEN) >= 10


@pytest.mark.parametrize("case", sorted(SPECS))
def test_malformed_spec_is_named(case, tmp_path):
    text, overrides, words = SPECS[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_spec(path, overrides)
    message = str(info.value)
    if not overrides:
        assert str(path) in message
    for word in words:
        assert word in message, f"{word!r} not in: {message}"


def _corrupt_jpeg(root):
    path = root / "images" / "pet_1.jpg"
    path.write_bytes(path.read_bytes()[:40])
    return "pet_1.jpg"


def _zero_byte(root):
    (root / "images" / "pet_2.jpg").write_bytes(b"")
    return "pet_2.jpg"


def _missing_trimap(root):
    (root / "annotations" / "trimaps" / "pet_0.png").unlink()
    return "pet_0.png"


def _rgb_trimap(root):  # coloured: an RGB mask with equal channels would be read as gray
    Image.fromarray(np.dstack([np.full((20, 24), v, np.uint8) for v in (2, 1, 3)]) * 40).save(
        root / "annotations" / "trimaps" / "pet_1.png")
    return "pet_1.png"


def _unknown_values(root):
    tri = np.full((20, 24), 2, np.uint8)
    tri[0, 0] = 9
    Image.fromarray(tri).save(root / "annotations" / "trimaps" / "pet_3.png")
    return "pet_3"


def _size_mismatch(root):
    Image.fromarray(np.full((40, 40), 2, np.uint8)).save(root / "annotations" / "trimaps" / "pet_2.png")
    return "pet_2.png"


def _empty_split(root):
    (root / "annotations" / "trainval.txt").write_text("\n")
    return "trainval.txt"


def _split_names_no_file(root):
    with open(root / "annotations" / "trainval.txt", "a") as f:
        f.write("ghost_7 1 1 1\n")
    return "ghost_7.jpg"


def _missing_split_file(root):
    (root / "annotations" / "test.txt").unlink()
    return "test.txt"


def _root_is_a_file(root):
    (root / "annotations" / "trainval.txt").rename(root / "not_a_dir")
    return "not_a_dir"


def _unreadable_dir(root):
    (root / "annotations" / "trimaps").chmod(0)
    return "trimaps"


def _folder_unmatched_stems(root):
    (root / "masks" / "c.png").unlink()
    return "c.png"


def _folder_test_split_all_unusable(root):  # as Kvasir-SEG's coloured masks were for the whole folder
    (root / "test.txt").write_text("c\nd\n")
    for stem in "cd":
        Image.fromarray(np.dstack([np.eye(8, dtype=np.uint8) * 200, np.zeros((8, 8, 2), np.uint8)])).save(
            root / "masks" / f"{stem}.png")
    return "c.png"


# Files that are unusable on their own: skippable. The rest break the layout: always an error.
SKIPPABLE = {"corrupt_jpeg", "zero_byte", "missing_trimap", "rgb_trimap", "unknown_values", "size_mismatch",
             "split_names_no_file", "folder_unmatched_stems"}
BROKEN = {f.__name__.lstrip("_"): f for f in (_corrupt_jpeg, _zero_byte, _missing_trimap, _rgb_trimap, _unknown_values,
                                              _size_mismatch, _empty_split, _split_names_no_file, _missing_split_file,
                                              _root_is_a_file, _unreadable_dir, _folder_unmatched_stems,
                                              _folder_test_split_all_unusable)}


def _broken_dataset(case: str, parent: Path) -> tuple[str, Path, str]:
    """(dataset kind, root to read, the file name the message must carry)."""
    if case.startswith("folder"):
        root = parent / "folder"
        (root / "images").mkdir(parents=True)
        (root / "masks").mkdir()
        for i, stem in enumerate("abcd"):
            Image.fromarray(np.full((8, 8, 3), 50 * i, np.uint8)).save(root / "images" / f"{stem}.png")
            Image.fromarray(np.eye(8, dtype=np.uint8)).save(root / "masks" / f"{stem}.png")
        return "folder", root, BROKEN[case](root)
    root = write_pet_layout(parent / "pet", [f"pet_{i}" for i in range(5)])
    needle = BROKEN[case](root)
    return "oxford_pet", root / "not_a_dir" if case == "root_is_a_file" else root, needle


# Root reads any directory through two capabilities; without them it is held to the mode bits like
# anyone else, yet still owns (and so can read) its own home and the checkout in it. Dropping them,
# rather than becoming user nobody, works wherever the checkout lives (a 0700 folder included).
NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search"]


def _build_as_unprivileged(kind: str, root: Path, on_bad: str) -> str:
    """Root reads any directory, so the unreadable-directory case runs as root without the
    capabilities that bypass permissions (NO_DAC)."""
    code = ("import sys\nfrom harness.data import build_data, DataError, DataSettings\n"
            f"try:\n    build_data(DataSettings({kind!r}, root={str(root)!r}, image_size=16, on_bad={on_bad!r}))\n"
            "except DataError as e:\n    print(e); sys.exit(2)\n")
    out = subprocess.run([*NO_DAC, sys.executable, "-c", code],
                         capture_output=True, text=True, cwd="/", env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    if out.returncode != 2 and "setpriv:" in out.stderr:  # e.g. a container without CAP_SETPCAP
        pytest.skip(f"cannot drop root's file-permission capabilities here: {out.stderr.strip()[:200]}")
    assert out.returncode == 2, out.stdout + out.stderr
    return out.stdout


@pytest.fixture
def world_readable_tmp():
    """tmp_path lives under a root-only folder; the unprivileged reader needs a traversable one."""
    folder = Path(tempfile.mkdtemp(prefix="broken-data-"))
    folder.chmod(0o755)
    yield folder
    for path in folder.rglob("*"):
        if path.is_dir():
            path.chmod(0o755)
    shutil.rmtree(folder)


@pytest.mark.parametrize("on_bad", ["error", "skip"])
@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_dataset_names_the_file_or_is_skipped(case, on_bad, world_readable_tmp):
    kind, root, needle = _broken_dataset(case, world_readable_tmp)
    if case == "unreadable_dir" and os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot make a directory unreadable")
        message = _build_as_unprivileged(kind, root, on_bad)
        assert needle in message and "cannot list directory" in message, message
        return
    if on_bad == "skip" and case in SKIPPABLE:
        data = build_data(DataSettings(kind, root=str(root), image_size=16, on_bad="skip", val_fraction=0.3))
        assert data.info["skipped"] == 1 and data.audit["counts"]["problems"] == 1
        assert needle in data.audit["problems"][0]["path"]
        stem = needle.split(".")[0]
        assert stem not in data.train.names + data.val.names + data.test.names
        return
    with pytest.raises(DataError) as info:
        build_data(DataSettings(kind, root=str(root), image_size=16, on_bad=on_bad))
    assert needle in str(info.value), str(info.value)


def test_broken_dataset_leaves_the_cache_of_the_good_one_intact(tmp_path):
    root = write_pet_layout(tmp_path / "pet", [f"pet_{i}" for i in range(5)])
    cache_dir = tmp_path / "cache"
    good = build_data(DataSettings("oxford_pet", root=str(root), image_size=16, cache_dir=str(cache_dir)))
    (entry,) = list(cache_dir.iterdir())
    before = {p.name: p.read_bytes() for p in entry.iterdir()}
    _corrupt_jpeg(root)
    with pytest.raises(DataError, match="pet_1.jpg"):
        build_data(DataSettings("oxford_pet", root=str(root), image_size=16, cache_dir=str(cache_dir)))
    skipped = build_data(DataSettings("oxford_pet", root=str(root), image_size=16, cache_dir=str(cache_dir),
                                      on_bad="skip"))
    assert skipped.info["skipped"] == 1 and skipped.fingerprint != good.fingerprint
    assert {p.name: p.read_bytes() for p in entry.iterdir() if p.name in before} == before


def test_spec_files_are_read_with_safe_load(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(SpecError, match="invalid YAML"):
        load_spec(path)


def test_bad_sweep_and_weights_inputs_exit_2_with_one_line(tmp_path, capsys, monkeypatch):
    """#41's table: --workers 0, a storage that does not answer, a weights file that is not there, and one
    that is not a state dict: each a one-line error (exit 2 where the CLI sees it), never a traceback,
    never the advice to unpickle the file."""
    import pickle

    import torch

    from harness.cli import main
    from harness.models import WeightsUnavailable
    from harness.models.resnet_unet import _from_file

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    campaign = REPO / "experiments" / "campaigns" / "debug_campaign.yaml"
    with pytest.raises(SystemExit) as exit_:
        main(["campaign", str(campaign), "--workers", "0"])
    assert exit_.value.code == 2 and "--workers: 0: give 1 or more workers" in capsys.readouterr().err
    assert main(["campaign", str(campaign), "--storage", "postgresql://u:secret@127.0.0.1:9/db"]) == 2
    err = capsys.readouterr().err
    assert "storage postgresql://u:***@127.0.0.1:9/db: cannot open it" in err and "secret" not in err
    assert "Traceback" not in err
    assert main(["validate", str(REPO / "experiments" / "resnet34_unet.yaml"),
                 f"model.encoder_weights={tmp_path / 'missing.pth'}"]) == 2
    assert "field 'model.encoder_weights':" in capsys.readouterr().err
    torch.save({"conv1.weight": torch.zeros(1), "extra": pickle.PickleError("an object")}, tmp_path / "obj.pth")
    (tmp_path / "text.pth").write_text("not a checkpoint")
    for name in ("obj.pth", "text.pth"):
        with pytest.raises(WeightsUnavailable, match="not a state dict loadable with weights_only=True") as raised:
            _from_file(str(tmp_path / name))
        assert "weights_only=False" not in str(raised.value)


@pytest.mark.parametrize("kind, text, field", [
    ("campaign", "matrix:\n  variant: [a, b]\n  seed: [0]\n", "matrix"),
    ("campaign", "matrix:\n  seed: [0, 1]\nvariants:\n  a: {train.lr: 0.01}\n"
                 "sequential:\n  delta: 0.01\n  block: [seed]\n", "variants"),
    ("study", "search_space:\n  train.lr: {type: float, low: 0.001, high: 0.01}\nmetric: bogus\n", "metric"),
    ("study", "search_space:\n  train.lr: {type: float, low: 0.001, high: 0.01}\nn_trials: null\n", "n_trials"),
    ("study", "search_space:\n  train.lr: {type: float, low: 0.001, high: 0.01}\n"
              "metrics: [val/dice, model/num_params]\ndirections: [maximize, minimize]\n"
              "best: {metric: val/loss}\n", "best"),
])
def test_a_check_of_the_whole_plan_names_its_field_and_line(tmp_path, kind, text, field):
    """A campaign's or study's check across fields (pydantic's model validator: no location of its
    own) still says which field is wrong and where, not 'line 1'."""
    import re

    from harness.config.sweeps import load_campaign_spec, load_study_spec

    path = tmp_path / f"bad_{kind}.yaml"
    path.write_text(f"name: bad\nbase: {REPO / 'experiments' / 'debug.yaml'}\n{text}")
    with pytest.raises(SpecError) as exc:
        (load_campaign_spec if kind == "campaign" else load_study_spec)(path)
    where = re.search(rf"bad_{kind}.yaml:(\d+): field '([\w.]+)': (.*)", str(exc.value))
    assert where and where[2] == field and not where[3].startswith(f"{field}:")
    key_line = next(n + 1 for n, line in enumerate(text.splitlines()) if line.startswith(f"{field}:")) + 2
    assert int(where[1]) - key_line in (0, 1)  # the key's line, or its block value's first line
