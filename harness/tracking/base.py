"""What the loop and the sweeps see of a tracking backend: the `Tracker` interface, `NullTracker`,
and `open_run`, the one place a run's tracker is made.

The MLflow backend is `harness.tracking.mlflow` (the only package in harness that imports mlflow);
the run queries that resume, campaigns and studies share are `harness.tracking.store`. A new
backend implements `Tracker` and is returned by `open_run` (README, "Extending").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

# What a resumed run must share with the process continuing it: the spec, the precision `amp: auto`
# resolved to (bf16 on one machine, float32 on another; the spec hash says only `auto`) and the
# data's content (a file edited since the run began changes the fingerprint, not the spec).
RUN_IDENTITY_TAGS = ("spec_hash", "amp.dtype", "data.fingerprint")


class ResumeMismatch(ValueError):
    """A run asked to be continued with tags that say it would train differently."""


class Tracker(Protocol):
    """One tracked run. As a context manager it opens the run and ends it FINISHED, KILLED or
    FAILED (never left RUNNING). Safe to log from the checkpoint writer's thread."""

    run_id: str

    def __enter__(self) -> "Tracker": ...
    def __exit__(self, exc_type, exc, tb) -> bool: ...
    # model_id: also attach them to that logged model; dataset: (name, digest) they were measured on
    def log_metrics(self, metrics: dict[str, float], step: int, *, model_id: str | None = None,
                    dataset: tuple[str, str] | None = None) -> None: ...
    def log_artifact(self, path: str | Path, folder: str | None = None) -> None: ...
    # torch.nn.Module, example batch (N, 3, H, W), `name` what it is (harness.build.model_name), `step`
    # the epoch of the weights. Returns the model's id (None where nothing is recorded).
    def log_model(self, model, example, name: str, step: int = 0) -> str | None: ...
    def set_tags(self, tags: dict[str, Any]) -> None: ...
    def last_step(self, key: str) -> int: ...  # highest step logged for `key`, or -1
    def log_dataset(self, name: str, digest: str, source: str, context: str, profile: dict) -> None: ...


class NullTracker:
    """Tracker that records nothing (benchmarks, the minimal-loop comparison, ranks other than 0)."""

    run_id = "none"

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self) -> "NullTracker":
        return self

    def __exit__(self, *exc) -> bool:
        return False

    def log_metrics(self, metrics, step, *, model_id=None, dataset=None):
        pass

    def log_artifact(self, path, folder=None):
        pass

    def log_model(self, model, example, name, step=0):
        return None

    def set_tags(self, tags):
        pass

    def log_dataset(self, name, digest, source, context, profile):
        pass

    def last_step(self, key):
        return -1


def tag_differences(run_tags: dict[str, str], tags: dict[str, Any]) -> list[str]:
    """'amp.dtype bfloat16 (now float32)' for each RUN_IDENTITY_TAGS value a run's tags `run_tags` have
    and `tags` change."""
    return [f"{key} {run_tags[key]} (now {tags[key]})" for key in RUN_IDENTITY_TAGS
            if key in run_tags and key in tags and str(tags[key]) != run_tags[key]]


@dataclass(frozen=True)
class RunOptions:
    """Where and how `open_run` opens a run, beyond its experiment, name, params and tags."""

    run_id: str | None = None  # reopen this existing run (resume) instead of starting a new one
    parent_run_id: str | None = None  # nest the new run under this one
    tracking_uri: str | None = None  # default: the store's
    system_metrics: bool = False  # sample CPU, memory, disk (and GPU) into the run while it is open


def open_run(experiment: str, run_name: str, params: dict[str, Any], tags: dict[str, Any],
             options: RunOptions = RunOptions()) -> Tracker:
    """The tracker of one run, not yet entered: a new run in `experiment`, nested under
    `options.parent_run_id` if given, or the existing run `options.run_id` reopened (resume). With
    `options.system_metrics`, a resumed run continues the samples' steps."""
    from harness.tracking.mlflow import MlflowTracker

    return MlflowTracker(experiment, run_name, params, tags, options)
