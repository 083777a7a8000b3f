"""The MLflow side of a run as MLflow users expect it: system metrics (on by default, off with
log_system_metrics: false, continued by a resumed run) and the spec hash they leave alone."""

from __future__ import annotations

import time

import pandas as pd
from mlflow.tracking import MlflowClient

from harness.config.load import load_spec
from harness.tracking.base import RunOptions, open_run

from conftest import DEPRECATIONS_ARE_ERRORS, EXPERIMENTS

pytestmark = DEPRECATIONS_ARE_ERRORS

CPU = "system/cpu_utilization_percentage"


def _open_for(uri: str, seconds: float, system_metrics: bool, run_id: str | None = None) -> str:
    options = RunOptions(run_id=run_id, tracking_uri=uri, system_metrics=system_metrics)
    with open_run("sys", "r", {"a": 1}, {}, options) as t:
        time.sleep(seconds)
    return t.run_id


def test_system_metrics_are_sampled_and_a_resumed_run_continues_their_steps(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = _open_for(uri, 2.0, True)
    client = MlflowClient(uri)
    first = [m.step for m in client.get_metric_history(run_id, CPU)]
    assert first and first == list(range(len(first)))
    _open_for(uri, 2.0, True, run_id=run_id)  # the resumed run: same run, steps carry on
    steps = [m.step for m in client.get_metric_history(run_id, CPU)]
    assert len(steps) > len(first) and sorted(steps) == list(range(len(steps)))  # none repeated
    assert client.get_run(run_id).info.status == "FINISHED"
    off = _open_for(uri, 1.5, False)
    assert not [k for k in client.get_run(off).data.metrics if k.startswith("system/")]


def test_log_system_metrics_is_top_level_and_not_part_of_the_spec_hash():
    on = load_spec(EXPERIMENTS / "debug.yaml")
    off = load_spec(EXPERIMENTS / "debug.yaml", ["log_system_metrics=false"])
    assert on.log_system_metrics and not off.log_system_metrics
    assert on.spec_hash() == off.spec_hash()
    assert on.spec_hash() != load_spec(EXPERIMENTS / "debug.yaml", ["log_model=false"]).spec_hash()


def test_analysis_reads_the_data_from_the_runs_dataset_inputs_with_the_tag_as_fallback(tmp_path):
    """A run's test input (name, digest) is its data; a run made before inputs keeps its tag."""
    import mlflow
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource

    from analysis.runs import load_evaluation, load_runs

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("inputs")
    tags = {"data.fingerprint": "old-tag", "run.kind": "evaluation", "evaluation.split": "test", "source.run_id": "s"}
    with mlflow.start_run(tags={**tags, "data.fingerprint": "stale"}) as new:
        mlflow.log_params({"model.arch": "unet", "seed": 0})
        mlflow.log_input(MetaDataset(LocalArtifactDatasetSource("/data/pets"), name="pets-test", digest="d1g3st"),
                         context="test")
    with mlflow.start_run(tags=tags) as old:
        mlflow.log_params({"model.arch": "unet", "seed": 1})
    runs = load_runs("inputs", uri).set_index("run_id")
    assert runs.loc[new.info.run_id, "data.fingerprint"] == "d1g3st"  # the input, not the tag
    assert runs.loc[new.info.run_id, "dataset.test"] == "pets-test"
    assert runs.loc[old.info.run_id, "data.fingerprint"] == "old-tag"
    assert pd.isna(runs.loc[old.info.run_id, "dataset.test"])
    found, _ = load_evaluation("pets", uri)  # by the input's name '<folder>-<split>'
    assert list(found["run_id"]) == [new.info.run_id]
    assert list(load_evaluation("d1g3st", uri)[0]["run_id"]) == [new.info.run_id]
    assert list(load_evaluation("old-tag", uri)[0]["run_id"]) == [old.info.run_id]  # the tag, for older runs


def test_one_system_metrics_sample_costs_time_and_logs_a_step(tmp_path):
    from harness.tracking.mlflow.tracker import system_metrics_sample_s

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert system_metrics_sample_s(uri, samples=2) > 0
    [run] = MlflowClient(uri).search_runs([e.experiment_id for e in MlflowClient(uri).search_experiments()])
    assert [m.step for m in MlflowClient(uri).get_metric_history(run.info.run_id, CPU)] == [0, 1]


def test_ui_links_open_each_experiments_runs_table_in_the_model_training_view(store):
    from harness.tracking.mlflow import runs_table_links

    with open_run("linked", "r", {}, {}):
        pass
    [(name, url)] = runs_table_links("http://127.0.0.1:5000/")
    experiment = MlflowClient(store).get_experiment_by_name("linked")
    assert name == "linked" and experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert url == f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning"


def test_runs_logging_one_new_dataset_at_once_all_get_it(tmp_path):
    """MLflow inserts a new dataset without settling ties; the run that loses the race retries
    (harness.tracking.mlflow.tracker.log_split). Without the retry some of these runs fail."""
    import threading

    from harness.tracking.mlflow.tracker import SplitDataset, log_split

    uri = f"sqlite:///{tmp_path}/race.db"
    client, errors, runs = MlflowClient(uri), [], []
    for round_ in range(5):
        experiment = client.create_experiment(f"race-{round_}", artifact_location=str(tmp_path / f"a{round_}"))
        group = [client.create_run(experiment).info.run_id for _ in range(4)]
        barrier = threading.Barrier(len(group))

        def log(run_id, barrier=barrier):
            own = MlflowClient(uri)  # one client per worker, as two processes would have
            barrier.wait()
            try:
                log_split(own, run_id, SplitDataset("pets/test", "abc123", "/data/pets", {"images": 3}), "test")
            except Exception as err:  # noqa: BLE001 - collected and asserted below
                errors.append(err)

        threads = [threading.Thread(target=log, args=(r,)) for r in group]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        runs += group
    assert not errors, errors[:2]
    for run_id in runs:
        (entry,) = client.get_run(run_id).inputs.dataset_inputs
        assert (entry.dataset.name, entry.dataset.digest) == ("pets/test", "abc123")
        assert {t.key: t.value for t in entry.tags}["mlflow.data.context"] == "test"


def test_a_ctrl_c_while_the_run_opens_ends_it_killed_not_finished(tmp_path, monkeypatch):
    """A second SIGTERM landed while a campaign cell's run was being set up (after start_run, in
    log_params): __exit__ never ran, and MLflow's exit hook later ended the run FINISHED, so the
    cell read as done with nothing trained. The run must end KILLED and leave no active run."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mlflow, "log_params", interrupted)
    options = RunOptions(tracking_uri=uri, system_metrics=False)
    tracker = open_run("sys", "r", {"a": 1}, {}, options)
    try:
        with tracker:
            raise AssertionError("the body must not run")
    except KeyboardInterrupt:
        pass
    assert mlflow.active_run() is None
    runs = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("sys").experiment_id])
    assert [r.info.status for r in runs] == ["KILLED"]
