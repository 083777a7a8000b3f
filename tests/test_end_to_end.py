"""A tiny CPU run through the CLI: one FINISHED MLflow run with every metric and artifact; predict."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from harness.config.load import load_spec

from conftest import EXPERIMENTS

EPOCH_KEYS = {"train/loss", "val/loss", "val/dice", "val/dice_micro", "val/iou", "val/iou_micro", "val/pixel_acc",
              "lr", "time/epoch_s", "throughput/train_img_s"}
FINAL_KEYS = {"test/dice", "test/dice_micro", "test/iou", "test/iou_micro", "test/pixel_acc", "model/num_params",
              "test/nsd", "test/hd95",
              "time/total_s", "time/overhead_s", "time/setup_s", "time/test_s"}
TAG_KEYS = {"spec_hash", "git.commit", "git.dirty", "data.fingerprint", "device", "env.torch", "env.harness",
            "data.skipped", "data.audit.empty_masks", "data.audit.near_duplicates", "data.audit.cross_split_duplicates"}
SECRET = "planted-secret-7f3a9c"
ARTIFACTS = {"spec.yaml", "learning_curves.png", "val_predictions.png", "test_per_image.csv", "audit.json"}


def _cli(args, cwd, uri, log=None):
    """`python -m harness <args>`; its output captured, or with `log` (a path) both streams written there."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "NO_ALBUMENTATIONS_UPDATE": "1",
           "AWS_SECRET_ACCESS_KEY": SECRET, "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"}
    if log is None:
        return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=600)
    with open(log, "w") as out:
        return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, env=env, stdout=out,
                              stderr=subprocess.STDOUT, timeout=600)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """The debug spec through the CLI as `> run.log 2>&1` would run it: both streams to one file."""
    tmp = tmp_path_factory.mktemp("e2e")
    uri = f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}"
    proc = _cli(["experiment", str(EXPERIMENTS / "debug.yaml"), "train.epochs=4"], tmp, uri, log=tmp / "run.log")
    assert proc.returncode == 0, (tmp / "run.log").read_text()[-6000:]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("debug").experiment_id])
    assert len(runs) == 1
    return tmp, uri, client, runs[0]


def test_a_log_file_holds_plain_lines(finished_run):
    """Progress bars redraw with carriage returns only on a terminal; in a file every line is whole,
    and one per epoch says how training went."""
    tmp, _, _, run = finished_run
    log = (tmp / "run.log").read_bytes()
    assert b"\r" not in log
    lines = log.decode().splitlines()
    assert [line.split()[1] for line in lines if line.startswith("epoch ")] == ["1/4", "2/4", "3/4", "4/4"]
    assert any(line.startswith(f"run {run.info.run_id} FINISHED") for line in lines)


def test_run_is_finished_with_every_metric(finished_run):
    _, _, client, run = finished_run
    assert run.info.status == "FINISHED"
    assert EPOCH_KEYS | FINAL_KEYS <= set(run.data.metrics)
    for key in EPOCH_KEYS:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert steps == [1, 2, 3, 4], key  # one step per epoch, none duplicated or missing


def test_learning_happens(finished_run):
    _, _, client, run = finished_run
    dice = [m.value for m in client.get_metric_history(run.info.run_id, "val/dice")]
    assert dice[-1] > dice[0]


def test_params_are_the_flattened_spec(finished_run):
    _, _, _, run = finished_run
    params = run.data.params
    assert params["model.arch"] == "unet" and params["train.epochs"] == "4" and params["data.image_size"] == "32"
    assert TAG_KEYS <= set(run.data.tags)


def test_artifacts(finished_run):
    _, _, client, run = finished_run
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert ARTIFACTS <= names
    local = Path(client.download_artifacts(run.info.run_id, "test_per_image.csv"))
    rows = list(csv.DictReader(local.open()))
    assert len(rows) == int(run.data.tags["data.n_test"])
    mean = np.mean([float(r["dice"]) for r in rows])
    assert mean == pytest.approx(run.data.metrics["test/dice"], abs=1e-5)
    for key in ("nsd", "hd95"):  # boundary scores per image; their means are the logged metrics
        assert np.mean([float(r[key]) for r in rows]) == pytest.approx(run.data.metrics[f"test/{key}"], abs=1e-5)
    assert all(0.0 <= float(r["nsd"]) <= 1.0 for r in rows)
    logged_spec = load_spec(client.download_artifacts(run.info.run_id, "spec.yaml"))
    assert logged_spec.spec_hash() == run.data.tags["spec_hash"]
    png = Image.open(client.download_artifacts(run.info.run_id, "val_predictions.png"))
    assert png.width > 100 and png.height > 100
    audit = json.loads(Path(client.download_artifacts(run.info.run_id, "audit.json")).read_text())
    assert audit["counts"]["images"] == sum(int(run.data.tags[f"data.n_{s}"]) for s in ("train", "val", "test"))
    assert str(audit["counts"]["near_duplicates"]) == run.data.tags["data.audit.near_duplicates"]


def test_no_secret_environment_variable_is_recorded(finished_run):
    tmp, _, _, run = finished_run
    assert SECRET not in repr(run.data.params) + repr(run.data.tags)
    for path in (tmp / "mlruns").rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_predict_round_trip(finished_run, tmp_path):
    """From another folder, so without the run's best.pt: the logged model, downloaded (and MLflow's
    download bar is off, as stderr is no terminal)."""
    _, uri, _, run = finished_run
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (45, 70, 3), dtype=np.uint8)).save(inputs / "a.png")
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(inputs / "b.jpg")
    proc = _cli(["predict", "--run", run.info.run_id, "--input", str(inputs), "--output", str(tmp_path / "out")],
                tmp_path, uri)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"weights: runs:/{run.info.run_id}/unet-w8" in proc.stdout and "\r" not in proc.stderr
    for stem, size in (("a", (70, 45)), ("b", (32, 32))):
        mask = Image.open(tmp_path / "out" / f"{stem}_mask.png")
        assert mask.size == size
        assert set(np.unique(np.asarray(mask))) <= {0, 255}
        assert Image.open(tmp_path / "out" / f"{stem}_overlay.png").size == size


def test_run_logs_system_metrics_and_its_model_carries_the_test_metrics(finished_run):
    """log_system_metrics defaults on (sampled each second here); the LoggedModel holds the run's
    test/* values against the test split's dataset input, and the run's own history has each once."""
    import mlflow

    _, uri, client, run = finished_run
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(run.data.metrics)
    mlflow.set_tracking_uri(uri)
    [model] = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    assert model.source_run_id == run.info.run_id and model.name == "unet-w8"  # architecture and width
    linked = {m.key: m for m in model.metrics}
    for key in ("test/dice", "test/nsd", "test/hd95"):
        assert linked[key].value == pytest.approx(run.data.metrics[key])
        assert len(client.get_metric_history(run.info.run_id, key)) == 1
    test_input = next(i.dataset for i in run.inputs.dataset_inputs if i.tags[0].value == "test")
    assert (linked["test/dice"].dataset_name, linked["test/dice"].dataset_digest) == (test_input.name,
                                                                                     test_input.digest)
    best = int(run.data.metrics["best/epoch"])  # the weights' epoch: its val/dice is the model's too
    assert linked["val/dice"].step == best and model.tags["epoch"] == str(best)
    assert linked["model/num_params"].value == run.data.metrics["model/num_params"]
    assert not [k for k in linked if k.startswith(("system/", "train/"))]  # only what describes the model


def test_logged_model_serves_through_pyfunc(finished_run):
    import mlflow

    _, uri, _, run = finished_run
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/unet-w8")  # the model's name (harness.build)
    out = model.predict(np.random.default_rng(0).random((1, 3, 40, 56), dtype=np.float32))
    assert out.shape == (1, 1, 40, 56) and np.isfinite(out).all()


def test_the_run_names_its_command_and_its_model_loads_by_name_without_best_pt(finished_run, tmp_path, monkeypatch):
    """mlflow.source.name is the harness command (not '__main__.py'); with no best.pt at hand
    (another machine's store), predict and evaluate load the LoggedModel, found by its name."""
    import mlflow

    from harness import paths
    from harness.tools.trained import source_spec, trained_model

    _, uri, _, run = finished_run
    assert run.data.tags["mlflow.source.name"] == f"harness experiment {EXPERIMENTS / 'debug.yaml'} train.epochs=4"
    mlflow.set_tracking_uri(uri)
    [logged] = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list")
    assert logged.tags["mlflow.source.name"] == run.data.tags["mlflow.source.name"]  # the Models tab's "Logged from"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setattr(paths, "CHECKPOINTS", tmp_path)  # no best.pt here
    model, origin = trained_model(run.info.run_id, source_spec(run.info.run_id))
    assert origin == f"runs:/{run.info.run_id}/unet-w8"
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 1, 32, 32)


def test_cosine_schedule_lowers_lr_each_epoch(finished_run):
    _, _, client, run = finished_run
    lrs = [m.value for m in client.get_metric_history(run.info.run_id, "lr")]
    assert lrs[0] == pytest.approx(float(run.data.params["train.lr"]))
    assert all(b < a for a, b in zip(lrs, lrs[1:]))


def test_analysis_reads_the_run_without_harness(finished_run):
    _, uri, _, run = finished_run
    code = (
        "import sys; from analysis.runs import load_runs, load_history, load_per_image\n"
        f"runs = load_runs('debug', {uri!r})\n"
        "assert len(runs) == 1 and runs['model.arch'][0] == 'unet'\n"
        "hist = load_history(list(runs.run_id), " + repr(uri) + ")\n"
        "assert sorted(hist[hist.metric == 'val/dice'].epoch) == [1, 2, 3, 4]\n"
        "per = load_per_image(runs.run_id[0], " + repr(uri) + ")\n"
        "assert abs(per.dice.mean() - runs['test/dice'][0]) < 1e-5\n"
        "assert not any(m.startswith('harness') for m in sys.modules), 'analysis imported harness'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_prediction_grid_holds_the_exact_pixels(tmp_path):
    from harness import figures as plots

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 20, 24, 3), dtype=np.uint8)
    truths, preds = rng.integers(0, 2, (2, 20, 24)), rng.integers(0, 4, (2, 20, 24))
    grid = np.asarray(Image.open(plots.prediction_grid(images, truths, truths, ["a", "b"], tmp_path / "g.png")))
    row = 20 + plots.CAPTION + 4
    assert np.array_equal(grid[row + plots.CAPTION:row + plots.CAPTION + 20, :24], images[1])
    assert np.array_equal(grid[plots.CAPTION:plots.CAPTION + 20, 28:52, 0], truths[0] * 255)
    k = np.asarray(Image.open(plots.prediction_grid(images, preds, preds, ["a", "b"], tmp_path / "k.png",
                                                    num_classes=4)))
    assert np.array_equal(k[plots.CAPTION:plots.CAPTION + 20, 56:80], plots.COLOURS[preds[0]])


def test_run_keys_match_the_recorded_list(finished_run):
    """A finished run's param, tag, metric and artifact names are what users' queries and reports
    read: a refactor must not rename one. The list was recorded from a run before the code moved."""
    _, _, client, run = finished_run
    recorded = json.loads((Path(__file__).parent / "fixtures" / "run_keys_debug.json").read_text())

    def walk(path=None):
        found = []
        for f in client.list_artifacts(run.info.run_id, path):
            found += walk(f.path) if f.is_dir else [f.path]
        return found

    tags = {k for k in run.data.tags if not k.startswith("mlflow.") or k in ("mlflow.source.git.commit",
                                                                             "mlflow.source.name")}
    tags -= {"device.name", "env.cuda"}  # CUDA machines only
    assert sorted(run.data.params) == recorded["params"]
    assert sorted(tags) == [t for t in recorded["tags"] if t not in ("device.name", "env.cuda")]
    # system/* (MLflow's system metrics) depend on how many 1 s samples the run lasted: checked apart
    assert sorted(k for k in run.data.metrics if not k.startswith("system/")) == recorded["metrics"]
    assert sorted(a for a in walk() if not a.startswith("model/")) == recorded["artifacts"]


def test_experiment_opens_in_the_model_training_view_and_runs_log_their_splits(finished_run):
    """MLflow 3's UI reads mlflow.experimentKind (else the GenAI view); each split is a dataset input."""
    _, _, client, run = finished_run
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"train", "val", "test"}
    assert {d.digest for d in inputs.values()} == {run.data.tags["data.fingerprint"]}
    assert json.loads(inputs["test"].profile)["images"] == int(run.data.tags["data.n_test"])
