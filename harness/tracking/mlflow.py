"""The MLflow backend: the one module in harness that imports mlflow. The training loop sees only
the small `Tracker` interface (harness.tracking.base); runs are opened through `base.open_run`.

Default store: SQLite at `mlruns/mlflow.db` with artifacts under `mlruns/artifacts/`, relative
to the working directory (harness.paths); `MLFLOW_TRACKING_URI` overrides it.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
import traceback
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import LocalArtifactDatasetSource
from mlflow.entities import Metric, RunStatus
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec

from harness import paths
from harness.tracking.base import ResumeMismatch, identity_differences

MODEL_NAME = "model"


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{paths.DATABASE.resolve()}"


_PREPARED: set[str] = set()


def prepare_store(uri: str) -> None:
    """Create or migrate a SQLite store once, under a file lock.

    Two processes opening a new store at once race in MLflow's schema migration (seen here:
    alembic "expected to match one row" and a dead run); the lock serialises that first touch.
    """
    if uri in _PREPARED or not uri.startswith("sqlite:///"):
        return
    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.parent / (db.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        MlflowClient(uri).search_experiments(max_results=1)
    _PREPARED.add(uri)


def _check_same_run(run, tags: dict[str, Any]) -> None:
    """Refuse to continue `run` with `tags` that say it would train differently; checked before the
    run is reopened, so its record stays as it was."""
    if differ := identity_differences(run.data.tags, tags):
        raise ResumeMismatch(f"run {run.info.run_id} cannot be resumed here: it trained with {', '.join(differ)}; "
                             "a run is continued only as it began. Start a new run instead (experiment --restart).")


class MlflowTracker:
    """One MLflow run. As a context manager it ends the run FINISHED, KILLED or FAILED, never RUNNING.

    An exception marks the run FAILED and stores the traceback as `traceback.txt`; Ctrl-C
    (KeyboardInterrupt) and SIGTERM (converted to KeyboardInterrupt by the CLI) mark it KILLED.
    An exception may carry `run_status` ('KILLED', 'FINISHED') and `run_tags` to end the run
    deliberately, as a pruned Optuna trial does. `parent_run_id` nests the run under another.
    """

    def __init__(self, experiment: str, run_name: str, params: dict[str, Any], tags: dict[str, Any],
                 tracking_uri: str | None = None, parent_run_id: str | None = None, run_id: str | None = None):
        self.experiment, self.run_name = experiment, run_name
        self.params, self.tags = params, tags
        self.tracking_uri = tracking_uri or default_tracking_uri()
        self.parent_run_id = parent_run_id
        self.resume_id = run_id  # reopen this run (resume) instead of starting a new one
        self.run_id = ""

    def __enter__(self) -> "MlflowTracker":
        prepare_store(self.tracking_uri)
        mlflow.set_tracking_uri(self.tracking_uri)
        experiment_id = _experiment_id(self.experiment, self.tracking_uri)
        if self.resume_id:
            _check_same_run(MlflowClient(self.tracking_uri).get_run(self.resume_id), self.tags)
            run = mlflow.start_run(run_id=self.resume_id)
            mlflow.set_tags({k: str(v) for k, v in self.tags.items()})
        else:
            run = mlflow.start_run(experiment_id=experiment_id, run_name=self.run_name,
                                   parent_run_id=self.parent_run_id,
                                   tags={k: str(v) for k, v in self.tags.items()})
            mlflow.log_params(self.params)
        self.run_id = run.info.run_id
        self._client = MlflowClient(self.tracking_uri)  # by run id: usable from the checkpoint writer's thread
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED))
            return False
        if getattr(exc, "run_status", None):
            mlflow.set_tags(getattr(exc, "run_tags", {}))
            mlflow.end_run(exc.run_status)
            return False
        if issubclass(exc_type, KeyboardInterrupt):
            status = RunStatus.KILLED
        else:
            status = RunStatus.FAILED
            try:
                mlflow.log_text("".join(traceback.format_exception(exc_type, exc, tb)), "traceback.txt")
                mlflow.set_tag("error", f"{exc_type.__name__}: {exc}"[:5000])
            except Exception:  # the store itself may be what failed; still end the run
                pass
        mlflow.end_run(RunStatus.to_string(status))
        return False

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Safe from any thread (the checkpoint writer logs epochs): by run id, not through MLflow's
        thread-local active run, which a fresh thread does not have."""
        now = int(time.time() * 1000)
        self._client.log_batch(
            self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()], synchronous=True)

    def last_step(self, key: str) -> int:
        """Highest step logged for `key` in this run, or -1."""
        history = self._client.get_metric_history(self.run_id, key)
        return max((m.step for m in history), default=-1)

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        mlflow.log_artifact(str(path), artifact_path=folder)

    def set_tags(self, tags: dict[str, Any]) -> None:
        mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_dataset(self, name: str, digest: str, source: str, context: str, profile: dict) -> None:
        """One split as an MLflow dataset input (mlflow.log_input): the run's Datasets column."""
        mlflow.log_input(SplitDataset(name, digest, source, profile), context=context)

    def log_model(self, model: torch.nn.Module, example: torch.Tensor) -> None:
        """Log with torch.export ('pt2', MLflow 3's default off Databricks: no pickle on load).

        The signature marks batch, height and width as dynamic (-1), so the exported program
        accepts any size; the example needs batch > 1 for the batch dim to stay dynamic.
        """
        model = model.eval().cpu()
        example = example.cpu().float()
        with torch.no_grad():
            output = model(example)
        signature = ModelSignature(
            # Unnamed specs: a named input makes pyfunc pass a dict, which the torch flavor refuses.
            inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, -1, -1))]),
            outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, output.shape[1], -1, -1))]),
        )
        # Requirements are known exactly; letting MLflow infer them re-imports the model in a
        # subprocess, which cost ~15 s per run (measured with cProfile on the debug spec).
        requirements = [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"]
        mlflow.pytorch.log_model(model, name=MODEL_NAME, signature=signature, input_example=example.numpy(),
                                 serialization_format="pt2", pip_requirements=requirements)


class SplitDataset(MetaDataset):
    """A split as MLflow records it: name, digest (the data fingerprint), source (the root) and a
    profile of counts. MetaDataset carries no profile of its own; this adds one."""

    def __init__(self, name: str, digest: str, source: str, profile: dict):
        super().__init__(source=LocalArtifactDatasetSource(source), name=name, digest=digest)
        self._profile = profile

    @property
    def profile(self) -> dict:
        return self._profile

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self._profile)}


# MLflow 3's UI opens an experiment in its GenAI view unless this tag says otherwise; the value is the
# model-training one (the bundled UI's ExperimentKind.CUSTOM_MODEL_DEVELOPMENT, checked in MLflow 3.17).
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def _experiment_id(name: str, uri: str) -> str:
    """The experiment's id, created (with EXPERIMENT_KIND) if absent; an experiment made before the
    harness set the kind gets it now."""
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(name)
    if found is not None:
        if EXPERIMENT_KIND[0] not in found.tags:
            client.set_experiment_tag(found.experiment_id, *EXPERIMENT_KIND)
        return found.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location, tags=dict([EXPERIMENT_KIND]))
    except Exception:  # another process created it first
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


# ----------------------------------------------------------------------------- reading back


def load_model(run_id: str, tracking_uri: str | None = None) -> torch.nn.Module:
    """The model logged by `MlflowTracker.log_model` for a run."""
    mlflow.set_tracking_uri(tracking_uri or default_tracking_uri())
    return mlflow.pytorch.load_model(f"runs:/{run_id}/{MODEL_NAME}", map_location="cpu")


def run_params(run_id: str, tracking_uri: str | None = None) -> dict[str, str]:
    return MlflowClient(tracking_uri or default_tracking_uri()).get_run(run_id).data.params


def run_metrics(run_id: str, tracking_uri: str | None = None) -> dict[str, float]:
    """The run's latest value of each metric."""
    return MlflowClient(tracking_uri or default_tracking_uri()).get_run(run_id).data.metrics


# ----------------------------------------------------------------------------- runs by id (studies)


def _client() -> MlflowClient:
    prepare_store(default_tracking_uri())
    return MlflowClient(default_tracking_uri())


def create_parent_run(experiment: str, name: str, params: dict[str, Any]) -> str:
    """A run that other runs nest under (an Optuna study). Returns its id; it stays RUNNING."""
    uri = default_tracking_uri()
    prepare_store(uri)
    client = MlflowClient(uri)
    run = client.create_run(_experiment_id(experiment, uri), run_name=name, tags={"run.kind": "study"})
    for key, value in params.items():
        client.log_param(run.info.run_id, key, value)
    return run.info.run_id


def run_tags(run_id: str) -> dict[str, str]:
    return _client().get_run(run_id).data.tags


def find_runs(experiment: str, tags: dict[str, str], status: str | None = None,
              where_set: dict[str, str] | None = None) -> list[str]:
    """Ids of runs in `experiment` carrying all `tags` (and `status`), newest first. `where_set`:
    tags a run must match if it has them (runs made before the harness recorded one still count)."""
    client = _client()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    clauses = [f"tags.`{k}` = '{v}'" for k, v in tags.items()]
    if status:
        clauses.append(f"attributes.status = '{status}'")
    runs = client.search_runs([found.experiment_id], " and ".join(clauses), order_by=["attributes.start_time DESC"])
    return [r.info.run_id for r in runs if all(r.data.tags.get(k, v) == v for k, v in (where_set or {}).items())]


def run_status(run_id: str) -> str:
    return _client().get_run(run_id).info.status


def reopen_run(run_id: str) -> None:
    _client().update_run(run_id, status="RUNNING")


def end_run(run_id: str, status: str) -> None:
    _client().set_terminated(run_id, status)


def set_run_tags(run_id: str, tags: dict[str, Any]) -> None:
    client = _client()
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value))


def log_run_metrics(run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    client = _client()
    for key, value in metrics.items():
        client.log_metric(run_id, key, float(value), step=step)


def log_run_artifact(run_id: str, path: str | Path, folder: str | None = None) -> None:
    _client().log_artifact(run_id, str(path), folder)


def run_artifact_text(run_id: str, path: str) -> str:
    """The text of one of a run's artifacts (e.g. its spec.yaml); FileNotFoundError naming it if absent."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = _client().download_artifacts(run_id, path, tmp)
        except Exception as err:  # MlflowException (no such artifact), OSError
            raise FileNotFoundError(f"run {run_id} has no artifact {path!r} ({err})") from None
        return Path(local).read_text()


def has_logged_model(run_id: str) -> bool:
    """Whether the run logged a model (log_model: true), as an MLflow 3 LoggedModel output."""
    outputs = _client().get_run(run_id).outputs
    return bool(outputs and outputs.model_outputs)


def run_experiment_name(run_id: str) -> str:
    client = _client()
    return client.get_experiment(client.get_run(run_id).info.experiment_id).name
