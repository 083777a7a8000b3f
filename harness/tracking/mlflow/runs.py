"""The store and runs by id: the store's URI and its first-touch migration, experiments (created in
MLflow 3's model-training view), and the run queries and updates that studies, campaigns, resume
and the tools share."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_SOURCE_NAME

from harness import paths
from harness.tracking.provenance import source_name


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



# MLflow 3's UI opens an experiment in its GenAI view unless this tag says otherwise; the value is the
# model-training one (the bundled UI's ExperimentKind.CUSTOM_MODEL_DEVELOPMENT, checked in MLflow 3.17).
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def experiment_id_for(name: str, uri: str) -> str:
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



def runs_table_links(base_url: str) -> list[tuple[str, str]]:
    """(experiment name, URL of its runs table in the MLflow UI at `base_url`) for every experiment
    with runs. The route is the bundled UI's /experiments/:experimentId/runs (MLflow 3.17), and
    workflowType=machine_learning its model-training view: a fresh browser otherwise opens the GenAI
    one, whatever the experiment's kind (seen in headless Chromium)."""
    client = store_client()
    return [(e.name, f"{base_url.rstrip('/')}/#/experiments/{e.experiment_id}/runs?workflowType=machine_learning")
            for e in client.search_experiments(order_by=["name"])
            if client.search_runs([e.experiment_id], max_results=1)]


def run_params(run_id: str, tracking_uri: str | None = None) -> dict[str, str]:
    return MlflowClient(tracking_uri or default_tracking_uri()).get_run(run_id).data.params


def run_metrics(run_id: str, tracking_uri: str | None = None) -> dict[str, float]:
    """The run's latest value of each metric."""
    return MlflowClient(tracking_uri or default_tracking_uri()).get_run(run_id).data.metrics



# ----------------------------------------------------------------------------- runs by id (studies)


def store_client() -> MlflowClient:
    prepare_store(default_tracking_uri())
    return MlflowClient(default_tracking_uri())


def source_tags() -> dict[str, str]:
    """{'mlflow.source.name': 'harness experiment experiments/unet.yaml'}: what a new run says it came
    from (harness.tracking.provenance.source_name), or {} outside the harness command (MLflow's own)."""
    source = source_name()
    return {MLFLOW_SOURCE_NAME: source} if source else {}


def create_parent_run(experiment: str, name: str, params: dict[str, Any]) -> str:
    """A run that other runs nest under (an Optuna study). Returns its id; it stays RUNNING."""
    uri = default_tracking_uri()
    prepare_store(uri)
    client = MlflowClient(uri)
    run = client.create_run(experiment_id_for(experiment, uri), run_name=name,
                            tags={**source_tags(), "run.kind": "study"})
    for key, value in params.items():
        client.log_param(run.info.run_id, key, value)
    return run.info.run_id


def run_tags(run_id: str) -> dict[str, str]:
    return store_client().get_run(run_id).data.tags


def find_runs(experiment: str, tags: dict[str, str], status: str | None = None,
              where_set: dict[str, str] | None = None) -> list[str]:
    """Ids of runs in `experiment` carrying all `tags` (and `status`), newest first; FINISHED runs in the
    order they finished, so that the first is the one analysis counts when a cell finished twice
    (analysis.runs.one_run_per_cell). `where_set`: tags a run must match if it has them (runs made
    before the harness recorded one still count)."""
    client = store_client()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    clauses = [f"tags.`{k}` = '{v}'" for k, v in tags.items()]
    if status:
        clauses.append(f"attributes.status = '{status}'")
    order = ["attributes.end_time ASC", "attributes.run_id ASC"] if status == "FINISHED" else \
        ["attributes.start_time DESC"]
    runs = client.search_runs([found.experiment_id], " and ".join(clauses), order_by=order)
    return [r.info.run_id for r in runs if all(r.data.tags.get(k, v) == v for k, v in (where_set or {}).items())]


def run_status(run_id: str) -> str:
    return store_client().get_run(run_id).info.status


def reopen_run(run_id: str) -> None:
    store_client().update_run(run_id, status="RUNNING")


def end_run(run_id: str, status: str) -> None:
    store_client().set_terminated(run_id, status)


def set_run_tags(run_id: str, tags: dict[str, Any]) -> None:
    client = store_client()
    for key, value in tags.items():
        client.set_tag(run_id, key, str(value))


def log_run_metrics(run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    client = store_client()
    for key, value in metrics.items():
        client.log_metric(run_id, key, float(value), step=step)


def log_run_artifact(run_id: str, path: str | Path, folder: str | None = None) -> None:
    store_client().log_artifact(run_id, str(path), folder)


def run_artifact_text(run_id: str, path: str) -> str:
    """The text of one of a run's artifacts (e.g. its spec.yaml); FileNotFoundError naming it if absent."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = store_client().download_artifacts(run_id, path, tmp)
        except Exception as err:  # MlflowException (no such artifact), OSError
            raise FileNotFoundError(f"run {run_id} has no artifact {path!r} ({err})") from None
        return Path(local).read_text()



def run_experiment_name(run_id: str) -> str:
    client = store_client()
    return client.get_experiment(client.get_run(run_id).info.experiment_id).name
