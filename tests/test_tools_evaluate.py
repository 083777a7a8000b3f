"""A trained run carried to new data: `harness evaluate`, `predict` without a logged model, and the
report over evaluation runs (make report EVALUATION=...)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from conftest import EXPERIMENTS, use_store

SIZES = [(40, 56), (64, 48), (33, 70), (50, 50)]


def _folder(root, n: int, seed: int):
    """A folder dataset of n images of mixed sizes with a declared test split (the last half)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = SIZES[i % len(SIZES)]
        y, x = np.mgrid[:h, :w]
        mask = ((x - w * rng.uniform(0.3, 0.7)) ** 2 + (y - h / 2) ** 2) < (min(h, w) * rng.uniform(0.2, 0.4)) ** 2
        image = rng.integers(0, 60, (h, w, 3), dtype=np.uint8) + mask[..., None].astype(np.uint8) * 150
        Image.fromarray(image).save(root / "images" / f"im{i:02d}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"im{i:02d}.png")
    (root / "test.txt").write_text("\n".join(f"im{i:02d}" for i in range(n // 2, n)) + "\n")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two runs (UNet and UNet++, log_model false) trained on one folder dataset, in a fresh store."""
    from harness.config.load import load_spec
    from harness.run import run_experiment
    from harness.tracking.base import open_run

    tmp = tmp_path_factory.mktemp("evaluate")
    mp = pytest.MonkeyPatch()
    use_store(tmp, mp)
    _folder(tmp / "train_data", 16, 0)
    _folder(tmp / "other", 12, 1)
    ids = []
    for arch in ("unet", "unet_plus_plus"):
        spec = load_spec(EXPERIMENTS / "debug.yaml", ["data.dataset=folder", f"data.root={tmp / 'train_data'}",
                                                      "train.epochs=1", "log_model=false", f"model.arch={arch}"])
        ids.append(run_experiment(spec, lambda p, t, s=spec: open_run(s.tracking, s.name, p, t)).run_id)
    yield tmp, ids
    mp.undo()


def test_evaluate_scores_a_run_on_new_data_as_its_test_and_skips_a_repeat(trained):
    from harness.tools.evaluate import evaluate_run

    tmp, (first, _) = trained
    result = evaluate_run(first, str(tmp / "other"))
    assert not result.skipped and {"test/dice", "test/nsd", "test/hd95"} <= set(result.metrics)
    client = MlflowClient()
    run = client.get_run(result.run_id)
    tags = run.data.tags
    assert tags["run.kind"] == "evaluation" and tags["source.run_id"] == first and tags["source.seed"] == "0"
    assert tags["source.model.arch"] == "unet" and tags["evaluation.dataset"] == "other"
    assert tags["evaluation.weights"].endswith("best.pt")  # log_model: false, so from best.pt
    assert client.get_experiment(run.info.experiment_id).name == "debug-evaluation"
    assert run.data.params["data.root"] == str(tmp / "other") and run.data.params["data.image_size"] == "32"
    [source_input] = run.inputs.dataset_inputs
    assert source_input.dataset.name == "other-test" and source_input.dataset.digest == tags["data.fingerprint"]
    assert '"images": 6' in source_input.dataset.profile
    rows = list(csv.DictReader(open(client.download_artifacts(result.run_id, "test_per_image.csv", str(tmp)))))
    assert [r["name"] for r in rows] == [f"im{i:02d}" for i in range(6, 12)]
    assert sorted((int(r["height"]), int(r["width"])) for r in rows) == sorted(SIZES + SIZES[2:])  # stored sizes
    assert abs(np.mean([float(r["dice"]) for r in rows]) - result.metrics["test/dice"]) < 1e-6
    assert "test_predictions.npz" in {a.path for a in client.list_artifacts(result.run_id)}
    again = evaluate_run(first, str(tmp / "other"))
    assert again.skipped and again.run_id == result.run_id


@pytest.mark.slow  # ~40 s: three CLI processes
def test_predict_and_evaluate_work_without_a_logged_model_through_the_cli(trained):
    tmp, (_, second) = trained
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "harness", *args], cwd=tmp, env=env, capture_output=True,
                              text=True, timeout=600)

    out = cli("predict", "--run", second, "--input", str(tmp / "other" / "images"), "--output", str(tmp / "pred"))
    assert out.returncode == 0, out.stderr
    assert "best.pt" in out.stdout and Image.open(tmp / "pred" / "im02_mask.png").size == (70, 33)
    out = cli("evaluate", "--run", second, "--data", str(tmp / "other"))
    assert out.returncode == 0 and "evaluation run" in out.stdout, out.stderr
    out = cli("evaluate", "--run", "0" * 32, "--data", str(tmp / "other"))
    assert out.returncode == 2 and "error:" in out.stderr


def test_the_report_compares_evaluation_runs_image_by_image(trained, capsys):
    from analysis.report import main
    from analysis.runs import load_evaluation
    from harness.tools.evaluate import evaluate_run

    tmp, ids = trained
    for run_id in ids:
        evaluate_run(run_id, str(tmp / "other"))  # the first is skipped if another test made it
    runs, axes = load_evaluation("other")
    assert sorted(runs["model.arch"]) == ["unet", "unet_plus_plus"] and axes == ["model.arch", "seed"]
    with pytest.raises(LookupError, match="make evaluate"):
        load_evaluation("nowhere")
    assert main(["--evaluation", "other", "--out", str(tmp / "eval.html"), "--no-log"]) == 0
    page = (tmp / "eval.html").read_text()
    assert "Evaluation on other" in page and "over 6 test images" in page


def test_register_gives_a_version_and_alias_logging_best_pt_first(trained):
    """A log_model: false run gets its best.pt logged as its LoggedModel (test metrics attached,
    status still FINISHED); a second registration reuses that model. Aliases, not stages."""
    import mlflow

    from harness.tools.register import register_run

    tmp, (_, second) = trained
    client = MlflowClient()
    before = client.get_run(second)
    done = register_run(second, "pets", "champion")
    assert done.logged_now and done.version == "1"
    after = client.get_run(second)
    assert after.info.status == "FINISHED" and after.outputs.model_outputs[-1].model_id == done.model_id
    assert len(client.get_metric_history(second, "test/dice")) == 1  # attached, not logged twice
    assert mlflow.get_logged_model(done.model_id).metrics[0].run_id == second
    linked = {m.key: m.value for m in mlflow.get_logged_model(done.model_id).metrics}
    assert linked["test/dice"] == pytest.approx(before.data.metrics["test/dice"])
    version = client.get_model_version_by_alias("pets", "champion")
    assert str(version.version) == "1" and done.model_id in version.source
    again = register_run(second, "pets")
    assert not again.logged_now and again.version == "2" and again.model_id == done.model_id
    loaded = mlflow.pyfunc.load_model("models:/pets@champion")
    out = loaded.predict(np.zeros((2, 3, 32, 32), np.float32))
    assert out.shape == (2, 1, 32, 32)
    with pytest.raises(LookupError, match="not in this store"):
        register_run("0" * 32, "pets")


def test_a_model_logged_under_the_old_name_still_serves_predict_evaluate_and_register(trained, tmp_path, monkeypatch,
                                                                                      capsys):
    """Runs logged before models were named (#42) called every LoggedModel 'model'. With no best.pt at
    hand, predict, evaluate and register find it, and runs:/<id>/model still loads it."""
    import mlflow
    import torch

    from harness import paths
    from harness.cli import main
    from harness.tools.trained import source_spec, trained_model
    from harness.tracking.mlflow import log_model_to_run

    tmp, (first, _) = trained
    spec = source_spec(first)
    model, _ = trained_model(first, spec)  # best.pt
    example = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model_id = log_model_to_run(first, model, example, "model")  # as every run was logged before #42
    monkeypatch.setattr(paths, "CHECKPOINTS", tmp_path / "elsewhere")  # so the logged model is what is read
    loaded, origin = trained_model(first, spec)
    assert origin == f"runs:/{first}/model"
    assert torch.allclose(loaded(example), model(example), atol=1e-5)
    old = mlflow.pytorch.load_model(f"runs:/{first}/model", map_location="cpu")
    assert torch.allclose(old(example), model(example), atol=1e-5)

    assert main(["predict", "--run", first, "--input", str(tmp / "other" / "images"),
                 "--output", str(tmp_path / "pred")]) == 0
    assert f"weights: runs:/{first}/model" in capsys.readouterr().out
    assert Image.open(tmp_path / "pred" / "im02_mask.png").size == (70, 33)
    assert main(["evaluate", "--run", first, "--data", str(tmp / "train_data")]) == 0
    [evaluation] = MlflowClient().search_runs(
        [MlflowClient().get_experiment_by_name("debug-evaluation").experiment_id],
        f"tags.`source.run_id` = '{first}' and tags.`evaluation.dataset` = 'train_data'")
    assert evaluation.data.tags["evaluation.weights"] == f"runs:/{first}/model"
    assert main(["register", "--run", first, "--name", "old-style"]) == 0
    assert f"model {model_id}" in capsys.readouterr().out  # its own model, not a second one logged
