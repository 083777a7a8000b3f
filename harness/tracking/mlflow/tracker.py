"""`MlflowTracker`, one run as the loop sees it (harness.tracking.base.Tracker), and `SplitDataset`,
a split as an MLflow dataset input."""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path
from typing import Any

import mlflow
import torch
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import LocalArtifactDatasetSource
from mlflow.entities import DatasetInput, InputTag, Metric, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
from sqlalchemy.exc import IntegrityError

from harness.tracking.base import ResumeMismatch, RunOptions, tag_differences
from harness.tracking.mlflow import models
from harness.tracking.mlflow.runs import default_tracking_uri, experiment_id_for, prepare_store, source_tags


def _check_same_run(run, tags: dict[str, Any]) -> None:
    """Refuse to continue `run` with `tags` that say it would train differently; checked before the
    run is reopened, so its record stays as it was."""
    if differ := tag_differences(run.data.tags, tags):
        raise ResumeMismatch(f"run {run.info.run_id} cannot be resumed here: it trained with {', '.join(differ)}; "
                             "a run is continued only as it began. Start a new run instead (experiment --restart).")


class MlflowTracker:
    """One MLflow run. As a context manager it ends the run FINISHED, KILLED or FAILED, never RUNNING.

    An exception marks the run FAILED and stores the traceback as `traceback.txt`; Ctrl-C
    (KeyboardInterrupt) and SIGTERM (converted to KeyboardInterrupt by the CLI) mark it KILLED.
    An exception may carry `run_status` ('KILLED', 'FINISHED') and `run_tags` to end the run
    deliberately, as a pruned Optuna trial does. `options` (harness.tracking.base.RunOptions): the run
    to reopen, the parent to nest under, the store, system metrics.
    """

    def __init__(self, experiment: str, run_name: str, params: dict[str, Any], tags: dict[str, Any],
                 options: RunOptions):
        self.experiment, self.run_name = experiment, run_name
        self.system_metrics = options.system_metrics
        self.params, self.tags = params, tags
        self.tracking_uri = options.tracking_uri or default_tracking_uri()
        self.parent_run_id = options.parent_run_id
        self.resume_id = options.run_id  # reopen this run (resume) instead of starting a new one
        self.run_id = ""

    def __enter__(self) -> "MlflowTracker":
        prepare_store(self.tracking_uri)
        mlflow.set_tracking_uri(self.tracking_uri)
        experiment_id = experiment_id_for(self.experiment, self.tracking_uri)
        if self.resume_id:
            _check_same_run(MlflowClient(self.tracking_uri).get_run(self.resume_id), self.tags)
            # MLflow continues the system metrics' steps after the run's last one (resume_logging)
            run = mlflow.start_run(run_id=self.resume_id, log_system_metrics=self.system_metrics)
        else:
            run = mlflow.start_run(experiment_id=experiment_id, run_name=self.run_name,
                                   parent_run_id=self.parent_run_id, log_system_metrics=self.system_metrics,
                                   tags={**source_tags(), **{k: str(v) for k, v in self.tags.items()}})
        self.run_id = run.info.run_id
        try:
            if self.resume_id:
                mlflow.set_tags({k: str(v) for k, v in self.tags.items()})
            else:
                mlflow.log_params(self.params)
            self._client = MlflowClient(self.tracking_uri)  # by run id: usable from the checkpoint writer's thread
        except BaseException as err:
            # __exit__ is not called when __enter__ raises: end the run here. Left open, MLflow's exit
            # hook would end it FINISHED (a Ctrl-C during setup once recorded a cell as done, untrained).
            self.__exit__(type(err), err, err.__traceback__)
            raise
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

    def log_metrics(self, metrics: dict[str, float], step: int, *, model_id: str | None = None,
                    dataset: tuple[str, str] | None = None) -> None:
        """Safe from any thread (the checkpoint writer logs epochs): by run id, not through MLflow's
        thread-local active run, which a fresh thread does not have. `model_id`: attach them to that
        LoggedModel too; `dataset`: (name, digest) of the dataset input they were measured on."""
        now = int(time.time() * 1000)
        on = {"dataset_name": dataset[0], "dataset_digest": dataset[1]} if dataset else {}
        batch = [Metric(k, float(v), now, step, model_id=model_id, **on) for k, v in metrics.items()]
        self._client.log_batch(self.run_id, metrics=batch, synchronous=True)

    def last_step(self, key: str) -> int:
        """Highest step logged for `key` in this run, or -1."""
        history = self._client.get_metric_history(self.run_id, key)
        return max((m.step for m in history), default=-1)

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        mlflow.log_artifact(str(path), artifact_path=folder)

    def set_tags(self, tags: dict[str, Any]) -> None:
        mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_dataset(self, name: str, digest: str, source: str, context: str, profile: dict) -> None:
        """One split as an MLflow dataset input (as mlflow.log_input logs it): the run's Datasets column."""
        log_split(self._client, self.run_id, SplitDataset(name, digest, source, profile), context)

    def log_model(self, model: torch.nn.Module, example: torch.Tensor, name: str, step: int = 0) -> str:
        """Log the model (weights of epoch `step`) as this run's LoggedModel called `name`, with any
        test/* metrics the run has attached to it (harness.tracking.mlflow.models). Returns its model id."""
        return models.log_model(self.run_id, model, example, name, step)


def system_metrics_sample_s(tracking_uri: str, samples: int = 20) -> float:
    """Seconds of work one system-metrics sample costs the process: what MLflow's monitor thread
    does each interval (read CPU, memory, disk, network and GPU counters, check the run is still
    RUNNING, log the batch), timed `samples` times in a throwaway run of the store at `tracking_uri`."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    client = MlflowClient(tracking_uri)
    run = client.create_run(client.create_experiment(f"system-metrics-cost-{time.time_ns()}"))
    monitor = SystemMetricsMonitor(run.info.run_id, tracking_uri=tracking_uri)
    start = time.perf_counter()
    for _ in range(samples):
        monitor.collect_metrics()
        client.get_run(run.info.run_id)
        monitor.publish_metrics(monitor.aggregate_metrics())
        monitor.mlflow_logger.flush()
    return (time.perf_counter() - start) / samples


def log_split(client: MlflowClient, run_id: str, dataset: SplitDataset, context: str, attempts: int = 3) -> None:
    """Link `dataset` to the run as an input with `context` ('train', 'val', 'test').

    MLflow's log_inputs looks the experiment's dataset up and inserts it if absent, with nothing
    to settle a tie: two runs of one experiment logging a new dataset at the same moment (two study
    or campaign workers starting together) both insert it, and the loser fails on the datasets key
    (IntegrityError). That failed a study's first trial in CI (stop 36). The dataset exists once
    the winner commits, so trying again links it."""
    # what mlflow.log_input builds (it has no client form, and needs the fluent active run)
    entry = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])
    for attempt in range(attempts):
        try:
            client.log_inputs(run_id, datasets=[entry])
            return
        except MlflowException as err:
            if not isinstance(err.__cause__, IntegrityError) or attempt == attempts - 1:
                raise


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


