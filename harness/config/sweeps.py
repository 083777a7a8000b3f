"""Plans over experiment specs: Optuna studies (a search space) and campaigns (a matrix).

Both are a base experiment spec, fixed dotted overrides (`set`) and axes of dotted fields.
Study example:

```yaml
base: ../unet.yaml              # the experiment spec every trial starts from
set: {train.epochs: 5}          # fixed dotted overrides for every trial
search_space:
  model.arch: {type: categorical, choices: [unet, resnet34_unet]}
  train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
n_trials: 20
```
Campaign example (every combination is one ordinary experiment run):

```yaml
base: ../unet.yaml
matrix: {model.arch: [unet, resnet34_unet], seed: [0, 1, 2]}
```
Every key of `set` and of the axes must name a field of the experiment spec, and every value
must be valid for it: both are checked by building the spec before anything runs.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from harness.config.catalog import PRUNERS, SAMPLERS
from harness.config.load import SpecError, error_field, line_of, load_spec, locate, read_yaml


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


class PlanSpec(BaseModel):
    """What studies and campaigns share: a name, a base experiment spec and fixed overrides."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$", description="plan name (Optuna, MLflow tags)")
    base: str = Field(..., description="experiment spec, relative to this file")
    set: dict[str, Any] = Field(default_factory=dict, description="fixed dotted overrides")
    tracking: str | None = Field(None, description="MLflow experiment; default: the base spec's")

    def overrides(self, values: dict[str, Any]) -> list[str]:
        """Dotted KEY=VALUE overrides for one trial or cell (JSON values parse as YAML)."""
        return [f"{k}={json.dumps(v)}" for k, v in {**self.set, **values}.items()]

    def axes(self) -> tuple[str, dict[str, list[Any]]]:
        """(section name, {dotted field: values that must all be valid})."""
        raise NotImplementedError


class SequentialSpec(BaseModel):
    """A campaign that may stop early: blocks (one cell of every arm at one value of `block`'s axes) run
    in order, fold-major within seed; after each block from `min_blocks` on, a look (analysis.
    sequential) decides each comparison 'real' or 'equivalent within +-delta' at a Lan-DeMets boundary,
    and the campaign stops once every comparison is decided, or at `max_blocks`."""

    model_config = ConfigDict(extra="forbid")
    delta: float = Field(gt=0, description="equivalence margin and the effect the design is powered for")
    block: list[str] = Field(default_factory=lambda: ["seed", "data.fold"], description="the axes of a block")
    max_blocks: int | None = Field(None, ge=2, description="the fixed design's blocks (default: every block)")
    min_blocks: int = Field(2, ge=2, description="the first look")
    spending: Literal["obrien_fleming", "pocock"] = "obrien_fleming"


class CampaignSpec(PlanSpec):
    matrix: dict[str, list[Any]] = Field(default_factory=dict, description="dotted field -> values; the product is run")
    variants: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="named sets of dotted overrides: an axis 'variant' crossed with the matrix")
    stale_after_s: float = Field(120.0, gt=0, description="a worker's claim on a cell without a heartbeat this long "
                                 "is stale: the cell is handed to another worker, which resumes its run")
    delta: float | None = Field(None, gt=0, description="equivalence margin in metric units, fixed before any "
                                "result: reports also say 'equivalent within +-delta' (TOST); tag campaign.delta")
    sequential: SequentialSpec | None = Field(None, description="stop once the verdicts are settled (looks in block "
                                              "order)")

    @model_validator(mode="after")
    def _non_empty(self):
        if not (self.matrix or self.variants) or any(not v for v in self.matrix.values()):
            raise ValueError("matrix: give a matrix (fields with non-empty lists of values) and/or variants")
        if "variant" in self.matrix:
            raise ValueError("matrix: 'variant' is the name of the variants axis; it cannot be a matrix field")
        if self.sequential is not None:
            self._check_sequential()
        return self

    def _check_sequential(self) -> None:
        seq = self.sequential
        if seq.block not in (["seed"], ["seed", "data.fold"]):
            raise ValueError(f"sequential.block must be [seed] or [seed, data.fold], not {seq.block}")
        missing = [a for a in seq.block if a not in self.matrix]
        if missing or ("data.fold" in self.matrix and "data.fold" not in seq.block):
            raise ValueError(f"sequential.block {seq.block} must name the matrix's replicate axes (seed, and "
                             f"data.fold when varied); the matrix has {list(self.matrix)}")
        if "data.fold" in seq.block and len(self.matrix["data.fold"]) < 2:
            raise ValueError("sequential.block has data.fold: every look needs two or more folds")
        if seq.max_blocks is not None and seq.max_blocks > len(self.blocks()):
            raise ValueError(f"sequential.max_blocks {seq.max_blocks} exceeds the {len(self.blocks())} blocks "
                             "the matrix has")
        if seq.min_blocks > len(self.blocks()[:seq.max_blocks]):
            raise ValueError("sequential.min_blocks exceeds the blocks the design runs")
        if self.delta is not None and self.delta != seq.delta:
            raise ValueError(f"delta {self.delta} and sequential.delta {seq.delta} differ: give one")
        if self.variants:
            raise ValueError("variants: a sequential campaign takes a matrix, not variants")
        arms = [a for a, values in self.matrix.items() if a not in seq.block and len(values) > 1]
        if len(arms) != 1:  # its looks test the arms' comparisons only: other axes would widen the report's family
            raise ValueError(f"matrix: a sequential campaign varies one axis besides {seq.block} (its arms); "
                             f"this matrix varies {arms or 'none'}")

    def blocks(self) -> list[tuple]:
        """The sequential design's blocks in look order: (seed, fold) fold-major within seed, or (seed,)."""
        axes = self.sequential.block if self.sequential else ["seed"]
        return list(itertools.product(*(self.matrix[a] for a in axes)))

    def last_block(self) -> int:
        """The sequential design's last block: max_blocks, else every block."""
        return self.sequential.max_blocks or len(self.blocks())

    def block_of(self, cell: dict) -> int:
        """The 1-based block of a cell."""
        return self.blocks().index(tuple(cell[a] for a in self.sequential.block)) + 1

    def margin(self) -> float | None:
        """The equivalence margin: `delta`, or the sequential design's."""
        return self.delta if self.delta is not None else (self.sequential.delta if self.sequential else None)

    def overrides(self, values: dict[str, Any]) -> list[str]:
        values = dict(values)
        variant = self.variants.get(values.pop("variant", None), {})
        return super().overrides({**variant, **values})

    def axes(self):
        return "matrix", self.matrix

    def axis_names(self) -> list[str]:
        return (["variant"] if self.variants else []) + list(self.matrix)

    def cells(self) -> list[dict[str, Any]]:
        """Every combination of variant and matrix values, in a stable order (first axis slowest)."""
        keys = list(self.matrix)
        combos = [dict(zip(keys, combo)) for combo in itertools.product(*(self.matrix[k] for k in keys))]
        if not self.variants:
            return combos
        return [{"variant": name, **combo} for name in self.variants for combo in combos]


# Objectives a study may name besides the epoch metrics (val/*, train/*): read once per trial.
# model/latency_ms: ms per image of inference at the trial's image size (batch 8, its device and
# precision, random weights: latency does not depend on them), measured after the trial trains.
ONCE_PER_TRIAL = ("model/num_params", "model/latency_ms")
Direction = Literal["maximize", "minimize"]


class BestRule(BaseModel):
    """Which trial of a multi-objective study's Pareto front is exported as the best spec: the best
    `metric` among the front's trials within every limit (a minimised objective at most its
    limit, a maximised one at least it), e.g. the best val/dice within 5M parameters."""

    model_config = ConfigDict(extra="forbid")
    metric: str
    limits: dict[str, float] = Field(default_factory=dict)


class StudySpec(PlanSpec):
    search_space: dict[str, Param]
    n_trials: int | None = Field(20, ge=1)
    timeout: float | None = Field(None, gt=0, description="seconds, per invocation")
    metric: str = "val/dice"
    direction: Direction = "maximize"
    metrics: list[str] | None = Field(None, description="several objectives (multi-objective); with directions")
    directions: list[Direction] | None = None
    best: BestRule | None = Field(None, description="multi-objective: the front's trial exported as the best spec")
    enqueue_baseline: bool = Field(True, description="trial 0 is the base spec's own values of the searched fields")
    sampler: Literal[SAMPLERS] = "tpe"
    pruner: Literal[PRUNERS] = "median"
    prune_after: int = Field(0, ge=0, description="epochs every trial completes before the pruner may stop it")
    pruner_startup_trials: int = Field(2, ge=0, description="median: trials that run unpruned before it prunes")
    seed: int = Field(0, ge=0)
    storage: str | None = Field(None, description="Optuna storage URL; default: a journal file under mlruns/optuna/")
    heartbeat_interval: int = Field(10, ge=1, description="seconds between trial heartbeats (RDB storages)")
    grace_period: int = Field(30, ge=2, description="a RUNNING trial silent this long is failed and retried")

    @property
    def objectives(self) -> list[str]:
        return self.metrics or [self.metric]

    @property
    def objective_directions(self) -> list[str]:
        return list(self.directions or [self.direction])

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @model_validator(mode="after")
    def _objectives(self):
        if (self.metrics is None) != (self.directions is None) or len(self.metrics or []) != len(self.directions or []):
            raise ValueError("metrics and directions go together, one direction per metric")
        if len(set(self.objectives)) != len(self.objectives):
            raise ValueError(f"metrics repeat a name: {self.objectives}")
        for name in self.objectives:
            if not (name.startswith(("val/", "train/")) or name in ONCE_PER_TRIAL):
                field = "metrics" if self.metrics else "metric"
                raise ValueError(f"{field}: objective {name!r}: an epoch metric (val/..., train/...) or one of "
                                 f"{', '.join(ONCE_PER_TRIAL)}")
        if self.multi_objective:
            if "pruner" not in self.model_fields_set:
                self.pruner = "none"
            elif self.pruner != "none":
                raise ValueError(f"pruner '{self.pruner}' with {len(self.objectives)} objectives: Optuna does not "
                                 "prune multi-objective studies (Trial.report takes one value); set pruner: none")
        if self.best is not None:
            named = [self.best.metric, *self.best.limits]
            if unknown := [n for n in named if n not in self.objectives]:
                raise ValueError(f"best: {', '.join(unknown)} is not an objective ({', '.join(self.objectives)})")
        return self

    @model_validator(mode="after")
    def _stop_rule(self):
        if self.n_trials is None and self.timeout is None:
            raise ValueError("n_trials: give n_trials, timeout or both")
        if self.sampler == "grid" and any(p.type != "categorical" for p in self.search_space.values()):
            raise ValueError("sampler 'grid' needs every search_space entry to be categorical")
        return self

    def axes(self):
        return "search_space", {k: p.probe_values() for k, p in self.search_space.items()}


def load_study_spec(path: str | Path, overrides: list[str] = ()) -> tuple[StudySpec, Path]:
    return load_plan(path, StudySpec, overrides)


def load_campaign_spec(path: str | Path, overrides: list[str] = ()) -> tuple[CampaignSpec, Path]:
    return load_plan(path, CampaignSpec, overrides)


def _error_line(path: Path, node, cls: type[PlanSpec], error: dict) -> str:
    """'file:line: field 'x.y': message' for one pydantic error (a whole-plan check: `error_field`)."""
    keys, msg = error_field(error, cls.model_fields)
    label = ".".join(keys) or cls.__name__.removesuffix("Spec").lower()
    return f"{locate([(path, node)], keys)}: field '{label}': {msg}"


def load_plan(path: str | Path, cls: type[PlanSpec], overrides: list[str] = ()):
    """Validate a plan and check its fields and values against the base experiment spec.

    Returns the plan and the resolved path of its base experiment spec. Raises SpecError.
    """
    path = Path(path).resolve()
    data, node = read_yaml(path)
    for item in overrides:  # plan-level overrides: n_trials=4, name=x, ...
        key, _, raw = item.partition("=")
        data[key.strip()] = yaml.safe_load(raw)
    try:
        spec = cls.model_validate(data)
    except ValidationError as err:
        lines = [_error_line(path, node, cls, e) for e in err.errors()]
        raise SpecError(f"invalid {cls.__name__.removesuffix('Spec').lower()} spec\n  " + "\n  ".join(lines)) from None
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
    for name in getattr(spec, "variants", {}):
        try:
            load_spec(base, spec.overrides({"variant": name}))
        except SpecError as err:
            raise SpecError(f"{path}:{line_of(node, ('variants', name))}: variant '{name}': {err}") from None
    section, axes = spec.axes()
    for key, values in axes.items():
        for value in values:
            try:
                load_spec(base, spec.overrides({key: value}))
            except SpecError as err:
                raise SpecError(f"{path}:{line_of(node, (section, key))}: {section} '{key}' "
                                f"(value {value!r}): {err}") from None
    return spec, base
