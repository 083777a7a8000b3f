"""Study specs: an experiment spec plus a search space, validated before any trial runs.

```yaml
base: ../unet.yaml              # the experiment spec every trial starts from
set: {train.epochs: 5}          # fixed dotted overrides for every trial
search_space:
  model.arch: {type: categorical, choices: [unet, resnet34_unet]}
  train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
n_trials: 20
```
Every key of `set` and `search_space` must name a field of the experiment spec, and every
choice and bound must be a valid value for it: both are checked by building the spec.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from harness.spec import SpecError, line_of, load_spec, read_yaml


class Param(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _complete(self):
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs a non-empty 'choices' list")
        elif self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"{self.type} needs 'low' < 'high'")
        elif self.log and self.low <= 0:
            raise ValueError("log scale needs 'low' > 0")
        return self

    def probe_values(self) -> list[Any]:
        """Values that must all make a valid experiment spec."""
        if self.type == "categorical":
            return list(self.choices)
        cast = int if self.type == "int" else float
        return [cast(self.low), cast(self.high)]


class StudySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$", description="study name (Optuna and MLflow)")
    base: str = Field(..., description="experiment spec, relative to this file")
    set: dict[str, Any] = Field(default_factory=dict, description="fixed dotted overrides")
    search_space: dict[str, Param]
    n_trials: int | None = Field(20, ge=1)
    timeout: float | None = Field(None, gt=0, description="seconds, per invocation")
    metric: str = "val/dice"
    direction: Literal["maximize", "minimize"] = "maximize"
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    pruner: Literal["median", "hyperband", "none"] = "median"
    seed: int = Field(0, ge=0)
    storage: str | None = Field(None, description="Optuna storage URL; default: a journal file under mlruns/optuna/")
    tracking: str | None = Field(None, description="MLflow experiment; default: the base spec's")
    heartbeat_interval: int = Field(10, ge=1, description="seconds between trial heartbeats (RDB storages)")
    grace_period: int = Field(30, ge=2, description="a RUNNING trial silent this long is failed and retried")

    @model_validator(mode="after")
    def _stop_rule(self):
        if self.n_trials is None and self.timeout is None:
            raise ValueError("give n_trials, timeout or both")
        if self.sampler == "grid" and any(p.type != "categorical" for p in self.search_space.values()):
            raise ValueError("sampler 'grid' needs every search_space entry to be categorical")
        return self

    def overrides(self, values: dict[str, Any]) -> list[str]:
        """Dotted KEY=VALUE overrides for one trial (JSON values parse as YAML)."""
        return [f"{k}={json.dumps(v)}" for k, v in {**self.set, **values}.items()]


def load_study_spec(path: str | Path, overrides: list[str] = ()) -> tuple[StudySpec, Path]:
    """Validate a study spec and check its fields against the base experiment spec.

    Returns the spec and the resolved path of its base experiment spec. Raises SpecError.
    """
    path = Path(path).resolve()
    data, node = read_yaml(path)
    for item in overrides:  # study-level overrides: n_trials=4, sampler=random, ...
        key, _, raw = item.partition("=")
        data[key.strip()] = yaml.safe_load(raw)
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as err:
        lines = [f"{path}:{line_of(node, tuple(str(k) for k in e['loc'][:1]))}: field "
                 f"'{'.'.join(str(k) for k in e['loc']) or '(study)'}': {e['msg']}" for e in err.errors()]
        raise SpecError("invalid study spec\n  " + "\n  ".join(lines)) from None
    base = (path.parent / spec.base).resolve()
    if not base.is_file():
        raise SpecError(f"{path}:{line_of(node, ('base',))}: field 'base': experiment spec not found: {base}")
    root = spec.set.get("data.root")
    if isinstance(root, str) and not Path(root).is_absolute():  # relative to the study file
        spec.set["data.root"] = str((path.parent / root).resolve())
    try:
        load_spec(base, spec.overrides({}))
    except SpecError as err:
        raise SpecError(f"{path}:{line_of(node, ('set',))}: field 'set': {err}") from None
    for key, param in spec.search_space.items():
        for value in param.probe_values():
            try:
                load_spec(base, spec.overrides({key: value}))
            except SpecError as err:
                raise SpecError(f"{path}:{line_of(node, ('search_space', key))}: search_space '{key}' "
                                f"(value {value!r}): {err}") from None
    return spec, base
