"""Every shipped spec loads; bad specs fail with the file and field named, exit 2, no run."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from harness.config.load import ExperimentSpec, SpecError, flatten, load_spec, read_yaml

from conftest import EXPERIMENTS, REPO

# Experiment specs, recursively; studies/ and campaigns/ hold other kinds of spec, with their own
# contract tests in test_sweeps_study.py and test_analysis_campaign_report.py.
ALL_SPECS = sorted(p for p in EXPERIMENTS.rglob("*.yaml")
                   if p.relative_to(EXPERIMENTS).parts[0] not in ("studies", "campaigns"))


def test_specs_exist():
    names = {p.relative_to(EXPERIMENTS).as_posix() for p in ALL_SPECS}
    required = {"base.yaml", "quickstart.yaml", "debug.yaml", "unet.yaml", "resnet34_unet.yaml",
                "loss_bce.yaml", "loss_bce_with_logits.yaml"}
    assert required <= names
    assert {f"augment/{p}.yaml" for p in ("none", "flip", "crop_flip", "color", "elastic")} <= names


@pytest.mark.parametrize("path", ALL_SPECS, ids=lambda p: p.relative_to(EXPERIMENTS).as_posix())
def test_every_spec_loads(path):
    spec = load_spec(path)
    assert isinstance(spec, ExperimentSpec)
    if spec.data.root:
        assert Path(spec.data.root).is_absolute()


def test_child_holds_only_differences():
    unet, resnet = load_spec(EXPERIMENTS / "unet.yaml"), load_spec(EXPERIMENTS / "resnet34_unet.yaml")
    diff = {k for k, v in flatten(unet.to_dict()).items() if flatten(resnet.to_dict())[k] != v}
    assert diff == {"name", "model.arch"}


def test_base_names_every_field_at_its_default():
    """base.yaml is the reference a user reads: every field, nothing stale, values = the defaults."""
    base = flatten(load_spec(EXPERIMENTS / "base.yaml").to_dict())
    written = flatten(read_yaml(EXPERIMENTS / "base.yaml")[0])
    defaults = flatten(ExperimentSpec().to_dict())
    assert set(written) == set(defaults)
    assert {k: v for k, v in base.items() if k != "name"} == {k: v for k, v in defaults.items() if k != "name"}


def _choices(model: type[BaseModel], prefix: str = ""):
    """(dotted field, its Literal values) for every field typed with a Literal, nested models included."""
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _choices(ann, f"{prefix}{name}.")
            continue
        values, todo = [], [ann]
        while todo:  # Literal[...] | None, Optional[Literal[...]], ...
            a = todo.pop()
            if typing.get_origin(a) is typing.Literal:
                values += typing.get_args(a)
            else:
                todo += typing.get_args(a)
        if values:
            yield f"{prefix}{name}", values


def _base_comments() -> dict[str, str]:
    """Dotted key -> the comment on its line in base.yaml (two-space indents)."""
    stack, comments = [], {}
    for line in (EXPERIMENTS / "base.yaml").read_text().splitlines():
        code, _, comment = line.partition("#")
        if ":" not in code:
            continue
        depth = (len(code) - len(code.lstrip())) // 2
        stack = stack[:depth] + [code.strip().split(":")[0]]
        comments[".".join(stack)] = comment
    return comments


def test_base_comments_list_every_choice():
    """base.yaml's comments are the menu a user reads: a value added to a Literal (as
    bce_sigmoid_amp once was) must appear there too, not only in the schema."""
    comments, choices = _base_comments(), dict(_choices(ExperimentSpec))
    assert len(choices) >= 15  # the walk found the Literal fields
    stale = {key: [v for v in values if not re.search(rf"(?<![\w-]){re.escape(str(v))}(?![\w-])",
                                                        comments.get(key, ""))]
             for key, values in choices.items()}
    assert {k: v for k, v in stale.items() if v} == {}


def test_spec_reference_has_a_row_per_field():
    reference = (REPO / "docs" / "spec.md").read_text()
    assert [k for k in flatten(ExperimentSpec().to_dict()) if f"| `{k}` |" not in reference] == []
    assert "docs/spec.md" in (REPO / "README.md").read_text()


def test_compile_mode_needs_compile_and_keeps_old_hashes():
    with pytest.raises(SpecError, match="compile_mode=reduce-overhead needs train.compile"):
        load_spec(EXPERIMENTS / "debug.yaml", ["train.compile_mode=reduce-overhead"])
    spec = load_spec(EXPERIMENTS / "debug.yaml", ["train.compile=true"])
    d = spec.to_dict()
    d["data"] = {k: v for k, v in d["data"].items() if k not in ("cache", "cache_dir", "download")}
    del d["log_system_metrics"]  # how a run is watched: never part of the hash
    del d["train"]["compile_mode"]  # the hash runs recorded before the field existed
    del d["eval"]["nsd_tolerance"]  # added later still, left out at its default likewise
    del d["data"]["folds"], d["data"]["fold"]  # and the folds
    for key in ("images_dir", "masks_dir", "mask_suffix", "mask_threshold"):  # and the folder layout fields
        del d["data"][key]
    assert spec.spec_hash() == hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
    graphs = load_spec(EXPERIMENTS / "debug.yaml", ["train.compile=true", "train.compile_mode=reduce-overhead"])
    assert graphs.spec_hash() != spec.spec_hash()


def test_overrides_are_typed_and_applied():
    spec = load_spec(EXPERIMENTS / "debug.yaml", ["train.lr=3e-4", "model.arch=resnet34_unet", "train.grad_clip=1"])
    assert spec.train.lr == 3e-4 and spec.model.arch == "resnet34_unet" and spec.train.grad_clip == 1.0


def test_bare_off_means_off(tmp_path):
    (tmp_path / "s.yaml").write_text("train:\n  amp: off\n")
    assert load_spec(tmp_path / "s.yaml").train.amp == "off"
    assert load_spec(EXPERIMENTS / "debug.yaml", ["train.amp=off"]).train.amp == "off"


def test_spec_hash_tracks_content():
    a = load_spec(EXPERIMENTS / "debug.yaml")
    assert a.spec_hash() == load_spec(EXPERIMENTS / "debug.yaml").spec_hash()
    assert a.spec_hash() != load_spec(EXPERIMENTS / "debug.yaml", ["seed=1"]).spec_hash()


def test_data_root_is_relative_to_the_spec_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "base.yaml").write_text("data: {dataset: folder, root: mydata}\n")
    (tmp_path / "sub" / "child.yaml").write_text("base: ../base.yaml\nname: child\n")
    spec = load_spec(tmp_path / "sub" / "child.yaml")
    assert spec.data.root == str((tmp_path / "mydata").resolve())


BAD = {
    # case: (yaml text, extra overrides, words the message must contain)
    "unknown_top_key": ("epochz: 3\n", [], ["epochz", "unknown field", ":1"]),
    "unknown_nested_key": ("train:\n  lr: 0.1\n  lrate: 0.1\n", [], ["train.lrate", ":3", "epochs"]),
    "wrong_type": ("train: {epochs: many}\n", [], ["train.epochs", "integer"]),
    "unknown_arch": ("model: {arch: segformer}\n", [], ["model.arch", "unet", "resnet34_unet"]),
    "unknown_loss": ("train: {loss: focal}\n", [], ["train.loss", "bce_with_logits"]),
    "negative_lr": ("train: {lr: -0.1}\n", [], ["train.lr", "greater than 0"]),
    "unknown_transform": ("augment:\n  - {name: HorizontalFlipp}\n", [], ["augment", "HorizontalFlipp"]),
    "unknown_transform_arg": ("augment:\n  - {name: HorizontalFlip, prob: 0.5}\n", [], ["augment", "prob"]),
    "bad_transform_value": ("augment:\n  - {name: HorizontalFlip, p: 2}\n", [], ["augment", "less than or equal to 1"]),
    "unknown_preset": ("augment: mixup\n", [], ["augment", "flip", "crop_flip"]),
    "bad_yaml": ("train: {epochs: 3\n", [], ["invalid YAML", ":2"]),
    "empty_file": ("", [], ["empty"]),
    "not_a_mapping": ("- 1\n- 2\n", [], ["mapping"]),
    "missing_base": ("base: nowhere.yaml\n", [], ["base", "not found"]),
    "override_unknown_field": ("name: x\n", ["train.lrr=1"], ["train.lrr", "does not exist", "lr"]),
    "override_bad_value": ("name: x\n", ["train.amp=fp8"], ["train.amp", "bf16"]),
    "root_missing": ("data: {dataset: oxford_pet}\n", [], ["data.root", "required"]),
}


def test_base_cycle_is_reported(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(SpecError, match="cycle"):
        load_spec(tmp_path / "a.yaml")


def test_error_points_at_the_file_that_sets_the_field(tmp_path):
    (tmp_path / "base.yaml").write_text("name: b\ntrain:\n  epochs: -1\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nname: c\n")
    with pytest.raises(SpecError, match=r"base\.yaml:3: field 'train\.epochs'"):
        load_spec(tmp_path / "child.yaml")


@pytest.mark.parametrize("case", ["unknown_nested_key", "unknown_arch", "negative_lr", "unknown_transform_arg"])
def test_cli_exits_2_and_creates_no_run(case, tmp_path):
    text, _, words = BAD[case]
    spec = tmp_path / "bad.yaml"
    spec.write_text(text)
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}", "PATH": "/usr/bin:/bin",
           "NO_ALBUMENTATIONS_UPDATE": "1"}
    proc = subprocess.run([sys.executable, "-m", "harness", "experiment", str(spec)], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert words[0] in proc.stderr and str(spec) in proc.stderr
    assert not (tmp_path / "store").exists() and not (tmp_path / "mlruns").exists()


def test_cli_help_mentions_overrides():
    proc = subprocess.run([sys.executable, "-m", "harness", "experiment", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "KEY=VALUE" in proc.stdout


HEAVY = ("torch", "albumentations", "mlflow", "pandas", "optuna", "cv2", "submitit")


@pytest.mark.parametrize("name", ["quickstart.yaml", "unet.yaml"])
def test_validate_of_a_preset_spec_imports_nothing_heavy(name):
    """`validate` checks a spec naming an augment preset without torch, albumentations, mlflow or
    pandas: a fresh interpreter runs the command and lists what it imported."""
    code = ("import sys\nfrom harness.cli import main\nassert main(['validate', sys.argv[1]]) == 0\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))")
    proc = subprocess.run([sys.executable, "-c", code, str(EXPERIMENTS / name)], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "NO_ALBUMENTATIONS_UPDATE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "# spec hash" in proc.stderr
    assert proc.stdout.splitlines()[-1] == "[]"
