"""The MLflow backend: the one package in harness that imports mlflow. The training loop sees only
the small `Tracker` interface (harness.tracking.base); runs are opened through `base.open_run`.

- tracker.py: `MlflowTracker` (one run, as the loop logs it) and the splits as dataset inputs;
- runs.py: the store and runs by id (queries and updates for studies, campaigns, resume, tools);
- models.py: the LoggedModel, its linked test metrics, the registry, loading a model back.

Default store: SQLite at `mlruns/mlflow.db` with artifacts under `mlruns/artifacts/`, relative
to the working directory (harness.paths); `MLFLOW_TRACKING_URI` overrides it.
"""

from harness.tracking.mlflow.models import (
    link_metrics,
    load_model,
    log_model_to_run,
    logged_model_id,
    logged_model_uri,
    register,
)
from harness.tracking.mlflow.runs import (
    EXPERIMENT_KIND,
    create_parent_run,
    default_tracking_uri,
    end_run,
    find_runs,
    log_run_artifact,
    log_run_metrics,
    prepare_store,
    reopen_run,
    run_artifact_text,
    run_experiment_name,
    run_metrics,
    run_params,
    run_status,
    run_tags,
    runs_table_links,
    set_run_tags,
    store_client,
)
from harness.tracking.mlflow.tracker import MlflowTracker, SplitDataset

__all__ = [
    "create_parent_run", "default_tracking_uri", "end_run", "EXPERIMENT_KIND", "find_runs",
    "link_metrics", "load_model", "log_model_to_run", "log_run_artifact", "log_run_metrics",
    "logged_model_id", "logged_model_uri", "MlflowTracker", "prepare_store", "register", "reopen_run",
    "run_artifact_text", "run_experiment_name", "run_metrics", "run_params", "run_status", "run_tags",
    "runs_table_links", "set_run_tags", "SplitDataset", "store_client",
]
