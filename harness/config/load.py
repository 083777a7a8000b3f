"""Typed experiment specs: YAML files with `base:` inheritance and dotted command-line overrides.

A spec file holds only its differences from its `base:` (a path relative to the file). Files
are merged depth-first (child wins; dicts merge, lists and scalars replace), overrides are
applied last, and the result is validated by pydantic before any work starts. Every error is a
`SpecError` naming the file, the dotted field and, where YAML knows it, the line. The schema
itself (sections, defaults, cross-field rules, the spec hash) is `harness.config.schema`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from harness.config.schema import WEIGHT_SUFFIXES, ExperimentSpec, flatten  # noqa: F401 (flatten re-exported)


class SpecError(Exception):
    """A spec that cannot be used. `str()` is the message for the user; CLI exits 2."""


# ----------------------------------------------------------------------------- loading


def read_yaml(path: Path) -> tuple[dict, yaml.Node | None]:
    """Parse a spec file with `safe_load`, and keep the node tree to find lines for errors."""
    if not path.is_file():
        raise SpecError(f"{path}: spec file not found")
    text = path.read_text()
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)  # aliases stay shared nodes here: nothing expanded yet
        _check_expansion(path, node)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise SpecError(f"{path}{where}: invalid YAML: {getattr(err, 'problem', err)}") from None
    if data is None:
        raise SpecError(f"{path}: spec file is empty")
    if not isinstance(data, dict):
        raise SpecError(f"{path}: a spec must be a mapping of sections, got {type(data).__name__}")
    return data, node


MAX_NODES = 10_000  # a real spec has a few hundred; nested aliases ("billion laughs") reach millions


def _check_expansion(path: Path, root: yaml.Node | None) -> None:
    """SpecError if `root` would expand to more than MAX_NODES nodes or refers to itself. Counted
    on the composed tree, where an alias is one shared node, so a bomb is refused before expansion."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_:
            raise SpecError(f"{path}:{node.start_mark.line + 1}: a YAML alias refers to itself")
        open_.add(key)
        children = node.value if isinstance(node, yaml.SequenceNode) else \
            [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else []
        total = 1
        for child in children:
            total += size(child)
            if total > MAX_NODES:
                raise SpecError(f"{path}: YAML aliases expand this spec to more than {MAX_NODES:,} values; "
                                f"refused before expanding it (a spec needs a few hundred)")
        open_.discard(key)
        sizes[key] = total
        return total

    if root is not None:
        size(root)


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


def locate(chain, keys: tuple) -> str:
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
    _check_read_paths(spec, chain)
    return spec


PATH_FIELDS = (("data", "root"), ("data", "cache_dir"), ("model", "encoder_weights"))
SOURCE_TREE = Path(__file__).resolve().parents[2]
PROTECTED = tuple(SOURCE_TREE / d for d in ("harness", "analysis", "experiments", "tests", ".git"))


def _resolve_paths(data: dict, chain, overrides) -> None:
    """Paths in specs are relative to the file that names them, not to the working directory;
    an override's path is relative to the working directory, as on any command line. (A weights
    path is told from `none`/`imagenet` by its suffix, .pth or .pt.)"""
    for name, key in PATH_FIELDS:
        section = data.get(name)
        value = section.get(key) if isinstance(section, dict) else None
        if not isinstance(value, str) or Path(value).is_absolute():
            continue
        if name == "model" and not value.endswith(WEIGHT_SUFFIXES):
            continue
        from_override = any(o.split("=", 1)[0].strip() == f"{name}.{key}" for o in overrides)
        anchor = Path.cwd() if from_override else _defining_file(chain, (name, key)).parent
        section[key] = str((anchor / value).resolve())


def _check_read_paths(spec: "ExperimentSpec", chain) -> None:
    """A weights file the spec names must exist (and be a file) before anything runs."""
    weights = spec.model.encoder_weights
    if weights.endswith(WEIGHT_SUFFIXES) and not Path(weights).is_file():
        raise SpecError(f"{locate(chain, ('model', 'encoder_weights'))}: field 'model.encoder_weights': "
                        f"{weights} is not a file")


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
                raise SpecError(f"{locate(chain, ('data', key))}: field 'data.{key}': {path} is inside the "
                                f"source tree ({protected}); a run writes there. Use a folder such as mlruns/cache")


def _defining_file(chain, keys) -> Path:
    for path, node in chain:
        if line_of(node, keys) != "?":
            return path
    return chain[0][0]


def error_field(error: dict, fields) -> tuple[tuple, str]:
    """(keys, message) of one pydantic error. A check of the whole model has no loc: where its message
    starts with one of `fields` ('sequential.max_blocks 30 exceeds ...', or 'matrix: ...', the 'field: '
    then dropped), that field is its place."""
    keys, msg = tuple(str(k) for k in error["loc"]), error["msg"].removeprefix("Value error, ")
    named = None if keys else re.match(r"(\w+)((?:\.\w+)*)(: )?", msg)
    if named and named[1] in fields:
        keys, msg = (named[1], *named[2].split(".")[1:]), msg[named.end():] if named[3] else msg
    return keys, msg


def _format_errors(err: ValidationError, chain) -> str:
    lines = []
    for e in err.errors():
        keys, msg = error_field(e, ExperimentSpec.model_fields)
        field = ".".join(keys) or "(spec)"
        if e["type"] == "extra_forbidden":
            parent = _section_fields(keys[:-1])
            msg = f"unknown field; valid fields here: {', '.join(parent)}" if parent else "unknown field"
        lines.append(f"{locate(chain, keys)}: field '{field}': {msg}")
    return "invalid spec\n  " + "\n  ".join(lines)


def _section_fields(keys: tuple) -> list[str]:
    model: Any = ExperimentSpec
    for key in keys:
        field = getattr(model, "model_fields", {}).get(key)
        if field is None:
            return []
        model = field.annotation
    return list(getattr(model, "model_fields", {}))
