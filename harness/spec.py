"""Typed experiment specs: YAML files with `base:` inheritance and dotted command-line overrides.

A spec file holds only its differences from its `base:` (a path relative to the file). Files
are merged depth-first (child wins; dicts merge, lists and scalars replace), overrides are
applied last, and the result is validated by pydantic before any work starts. Every error is a
`SpecError` naming the file, the dotted field and, where YAML knows it, the line.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness.archs import BINARY_LOSSES, MULTICLASS_LOSSES, check_knobs
from harness.augment import PRESETS, validate_transforms


class SpecError(Exception):
    """A spec that cannot be used. `str()` is the message for the user; CLI exits 2."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSpec(_Section):
    arch: Literal["unet", "resnet34_unet", "unet_plus_plus"] = "unet"
    upsample: Literal["bilinear", "nearest", "transpose"] = "bilinear"
    base_width: int = Field(64, ge=4, le=256, description="channels of the first UNet stage (unet, unet_plus_plus)")
    padding_mode: Literal["zeros", "reflect"] = "zeros"
    downsample: Literal["maxpool", "strided_conv"] = "maxpool"
    activation: Literal["relu", "leaky_relu"] = "relu"
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout2d after each double conv")
    deep_supervision: bool = Field(False, description="unet_plus_plus: a head per nested level, loss averaged")
    decoder_widths: list[int] | None = Field(None, min_length=5, max_length=5,
                                             description="resnet34_unet decoder widths (default 256 128 64 32 16)")
    encoder_weights: Literal["none", "imagenet"] = "none"
    encoder_freeze_epochs: int = Field(0, ge=0, description="resnet34_unet + imagenet: train only the decoder first")

    @model_validator(mode="after")
    def _knobs_apply(self):
        check_knobs(self.arch, self.model_dump())
        if self.encoder_freeze_epochs and self.encoder_weights == "none":
            raise ValueError("model.encoder_freeze_epochs needs model.encoder_weights=imagenet (a random encoder "
                             "would stay random)")
        return self


class DataSpec(_Section):
    dataset: Literal["synthetic", "oxford_pet", "folder"] = "synthetic"
    root: str | None = Field(None, description="dataset folder; relative paths are relative to the spec file")
    image_size: int = Field(128, ge=16, le=2048)
    foreground: Literal["not_background", "pet_only"] = "not_background"
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    limit: int | None = Field(None, ge=1, description="cap on images per split, for quick runs")
    num_workers: int = Field(0, ge=0, le=64)
    synthetic_size: tuple[int, int] = Field((400, 100), description="synthetic trainval and test counts")
    on_bad: Literal["error", "skip"] = Field("error", description="unusable files: stop naming the file, or skip and count")
    cache: bool = Field(True, description="decode once into arrays on disk, keyed by the files' fingerprint")
    cache_dir: str | None = Field(None, description="cache folder (default: mlruns/cache); relative to the spec file")
    download: bool = Field(False, description="oxford_pet only: fetch the official archives via torchvision")
    num_classes: int = Field(2, ge=2, le=255, description="2 = binary (one logit, sigmoid); K >= 3: K-way softmax")
    target: Literal["binary", "trimap3"] = Field("binary", description="trimap3: pet/background/border as 3 classes")
    palette: list[tuple[int, int, int]] | None = Field(None, description="folder: RGB colour of each class in the masks")

    @model_validator(mode="after")
    def _root_needed(self):
        if self.dataset != "synthetic" and not self.root:
            raise ValueError(f"data.root is required for dataset '{self.dataset}'")
        if self.target == "trimap3" and (self.num_classes != 3 or self.dataset == "folder"):
            raise ValueError("data.target=trimap3 needs data.num_classes=3 and dataset oxford_pet or synthetic")
        if self.palette is not None and (self.dataset != "folder" or len(self.palette) != self.num_classes):
            raise ValueError(f"data.palette is for the folder dataset and needs one colour per class "
                             f"({self.num_classes}), got {len(self.palette)}")
        if self.num_classes > 2 and self.dataset == "oxford_pet" and self.target != "trimap3":
            raise ValueError("oxford_pet has 3 classes only as data.target=trimap3")
        return self


class TrainSpec(_Section):
    epochs: int = Field(10, ge=1, le=100_000)
    batch_size: int = Field(16, ge=1, le=4096)
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = "adamw"
    lr: float = Field(1e-3, gt=0.0, le=10.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="sgd and rmsprop only")
    scheduler: Literal["none", "cosine", "plateau"] = "cosine"
    loss: Literal["bce", "bce_with_logits", "dice", "bce_dice", "ce", "ce_dice"] = "bce_with_logits"
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    channels_last: bool = False
    grad_checkpointing: bool = Field(False, description="recompute block activations in the backward pass")
    compile: bool = Field(False, description="torch.compile the model; pays off on CUDA for long runs, not on CPU")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        "default", description="torch.compile mode; reduce-overhead replays CUDA graphs (launch-bound models)")
    grad_clip: float | None = Field(None, gt=0.0)
    early_stopping_patience: int | None = Field(None, ge=1)
    on_nan: Literal["fail", "skip_batch"] = Field("fail", description="a NaN/Inf loss fails the run, or skips the batch")
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"

    @field_validator("amp", mode="before")
    @classmethod
    def _yaml_off(cls, value):
        return "off" if value is False else value  # YAML 1.1 reads a bare `off` as false

    @model_validator(mode="after")
    def _mode_needs_compile(self):
        if self.compile_mode != "default" and not self.compile:
            raise ValueError(f"train.compile_mode={self.compile_mode} needs train.compile: true")
        return self


class EvalSpec(_Section):
    threshold: float = Field(0.5, gt=0.0, lt=1.0)


class ExperimentSpec(_Section):
    name: str = "experiment"
    seed: int = Field(0, ge=0)
    tracking: str = Field("segmentation", description="MLflow experiment name")
    log_model: bool = Field(True, description="log the best model to MLflow (torch.export: seconds per run)")
    model: ModelSpec = ModelSpec()
    data: DataSpec = DataSpec()
    augment: str | list[dict[str, Any]] = Field(
        "none", description=f"a preset ({', '.join(PRESETS)}) or a list of albumentations transforms"
    )
    train: TrainSpec = TrainSpec()
    eval: EvalSpec = EvalSpec()

    @field_validator("augment")
    @classmethod
    def _check_augment(cls, value):
        if isinstance(value, str):
            if value not in PRESETS:
                raise ValueError(f"unknown augment preset '{value}'; valid: {', '.join(PRESETS)}")
            return value
        validate_transforms(value)
        return value

    @model_validator(mode="after")
    def _loss_fits_task(self):
        multi = self.data.num_classes > 2
        valid = MULTICLASS_LOSSES if multi else BINARY_LOSSES
        if self.train.loss not in valid:
            kind = f"{self.data.num_classes} classes" if multi else "binary segmentation"
            raise ValueError(f"train.loss={self.train.loss} does not fit {kind}; valid: {', '.join(valid)}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def spec_hash(self) -> str:
        """Hash of the resolved spec: equal hashes mean the same experiment. Fields that cannot
        change a result (where the cache lives, whether it is used, downloading) are left out."""
        d = self.to_dict()
        d["data"] = {k: v for k, v in d["data"].items() if k not in ("cache", "cache_dir", "download")}
        if d["train"]["compile_mode"] == "default":  # added later: at its default, earlier runs' hashes still match
            del d["train"]["compile_mode"]
        blob = json.dumps(d, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# ----------------------------------------------------------------------------- loading


def read_yaml(path: Path) -> tuple[dict, yaml.Node | None]:
    """Parse a spec file with `safe_load`, and keep the node tree to find lines for errors."""
    if not path.is_file():
        raise SpecError(f"{path}: spec file not found")
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise SpecError(f"{path}{where}: invalid YAML: {getattr(err, 'problem', err)}") from None
    if data is None:
        raise SpecError(f"{path}: spec file is empty")
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a spec must be a mapping of sections, got {type(data).__name__}")
    return data, node


def _merge(base: dict, child: dict) -> dict:
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _load_chain(path: Path, seen: tuple[Path, ...] = ()) -> tuple[dict, list[tuple[Path, Any]]]:
    """Merge `path` with its `base:` chain. Returns the dict and [(file, yaml node)], child first."""
    path = path.resolve()
    if path in seen:
        cycle = " -> ".join(str(p) for p in (*seen, path))
        raise SpecError(f"{path}: base: cycle: {cycle}")
    data, node = read_yaml(path)
    chain = [(path, node)]
    base = data.pop("base", None)
    if base is None:
        return data, chain
    if not isinstance(base, str):
        raise SpecError(f"{path}:{line_of(node, ('base',))}: field 'base' must be a path string")
    base_path = (path.parent / base).resolve()
    if not base_path.is_file():
        raise SpecError(f"{path}:{line_of(node, ('base',))}: field 'base': file not found: {base_path}")
    parent, parent_chain = _load_chain(base_path, (*seen, path))
    return _merge(parent, data), chain + parent_chain


def line_of(node, keys: tuple) -> str:
    """1-based line of a dotted key in a composed YAML mapping, or '?'."""
    for key in keys:
        if not isinstance(node, yaml.MappingNode):
            return "?"
        for knode, vnode in node.value:
            if knode.value == str(key):
                node = vnode
                break
        else:
            return "?"
    return str(node.start_mark.line + 1)


def _locate(chain, keys: tuple) -> str:
    """'file:line' of the nearest file in the chain that sets `keys` (or a prefix of them)."""
    for depth in range(len(keys), 0, -1):
        for path, node in chain:
            line = line_of(node, keys[:depth])
            if line != "?":
                return f"{path}:{line}"
    return str(chain[0][0])


def parse_override(item: str) -> tuple[list[str], Any]:
    """'train.lr=1e-3' -> (['train', 'lr'], 0.001). Values are parsed as YAML scalars/lists."""
    if "=" not in item:
        raise SpecError(f"override '{item}': expected KEY=VALUE, e.g. train.lr=3e-4")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def _apply_override(data: dict, keys: list[str], value: Any, item: str) -> None:
    model: type[BaseModel] | None = ExperimentSpec
    node = data
    for i, key in enumerate(keys):
        fields = model.model_fields if model is not None else {}
        if key not in fields:
            where = ".".join(keys[:i]) or "top level"
            dotted = ".".join(keys[: i + 1])
            raise SpecError(f"override '{item}': field '{dotted}' does not exist; "
                            f"valid fields at {where}: {', '.join(fields)}")
        annotation = fields[key].annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        if i == len(keys) - 1:
            node[key] = value
        else:
            if model is None:
                raise SpecError(f"override '{item}': '{'.'.join(keys[: i + 1])}' is not a section")
            node = node.setdefault(key, {})


def load_spec(path: str | Path, overrides: list[str] = ()) -> ExperimentSpec:
    """Load, merge, override and validate a spec. Raises SpecError with file, field and line."""
    path = Path(path)
    data, chain = _load_chain(path)
    for item in overrides:
        keys, value = parse_override(item)
        _apply_override(data, keys, value, item)
    _resolve_paths(data, chain, overrides)
    try:
        spec = ExperimentSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(_format_errors(err, chain)) from None
    _check_write_paths(spec, chain)
    return spec


PATH_FIELDS = ("root", "cache_dir")
SOURCE_TREE = Path(__file__).resolve().parent.parent
PROTECTED = tuple(SOURCE_TREE / d for d in ("harness", "analysis", "experiments", "tests", ".git"))


def _resolve_paths(data: dict, chain, overrides) -> None:
    """Paths in specs are relative to the file that names them, not to the working directory;
    an override's path is relative to the working directory, as on any command line."""
    section = data.get("data")
    if not isinstance(section, dict):
        return
    for key in PATH_FIELDS:
        value = section.get(key)
        if isinstance(value, str) and not Path(value).is_absolute():
            from_override = any(o.split("=", 1)[0].strip() == f"data.{key}" for o in overrides)
            anchor = Path.cwd() if from_override else _defining_file(chain, ("data", key)).parent
            section[key] = str((anchor / value).resolve())


def _check_write_paths(spec: "ExperimentSpec", chain) -> None:
    """Folders a run writes into (the cache; the root when downloading) must not be source code."""
    writes = {"cache_dir": spec.data.cache_dir if spec.data.cache else None,
              "root": spec.data.root if spec.data.download else None}
    for key, value in writes.items():
        if value is None:
            continue
        path = Path(value).resolve()
        for protected in PROTECTED:
            if path == protected or protected in path.parents:
                raise SpecError(f"{_locate(chain, ('data', key))}: field 'data.{key}': {path} is inside the "
                                f"source tree ({protected}); a run writes there. Use a folder such as mlruns/cache")


def _defining_file(chain, keys) -> Path:
    for path, node in chain:
        if line_of(node, keys) != "?":
            return path
    return chain[0][0]


def _format_errors(err: ValidationError, chain) -> str:
    lines = []
    for e in err.errors():
        keys = tuple(str(k) for k in e["loc"])
        field = ".".join(keys) or "(spec)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            parent = _section_fields(keys[:-1])
            msg = f"unknown field; valid fields here: {', '.join(parent)}" if parent else "unknown field"
        lines.append(f"{_locate(chain, keys)}: field '{field}': {msg}")
    return "invalid spec\n  " + "\n  ".join(lines)


def _section_fields(keys: tuple) -> list[str]:
    model: Any = ExperimentSpec
    for key in keys:
        field = getattr(model, "model_fields", {}).get(key)
        if field is None:
            return []
        model = field.annotation
    return list(getattr(model, "model_fields", {}))


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 1}} -> {'train.lr': 1}; lists become JSON strings."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif isinstance(value, (list, tuple)):
            out[name] = json.dumps(value)
        else:
            out[name] = value
    return out
