"""torchrun with 2 CPU processes (gloo): one MLflow run, written by rank 0, with the same metrics as one process."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import EXPERIMENTS

ARGS = ["experiment", str(EXPERIMENTS / "debug.yaml"), "train.epochs=2", "log_model=false"]


def _run(cmd, cwd: Path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlruns' / 'mlflow.db'}",
           "NO_ALBUMENTATIONS_UPDATE": "1", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    cwd.mkdir()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("debug").experiment_id])
    assert len(runs) == 1  # rank 1 wrote nothing
    return client, runs[0], proc


@pytest.mark.slow
def test_torchrun_two_processes_matches_single_process_record(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not found next to the interpreter")
    client, ddp, proc = _run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "harness", *ARGS], tmp_path / "ddp")
    _, single, _ = _run([sys.executable, "-m", "harness", *ARGS], tmp_path / "single")
    assert ddp.info.status == "FINISHED" and ddp.data.tags["dist.world_size"] == "2"
    assert set(ddp.data.metrics) == set(single.data.metrics)
    for key in ("val/dice", "train/loss"):
        assert [m.step for m in client.get_metric_history(ddp.info.run_id, key)] == [1, 2]
    assert [p.name for p in (tmp_path / "ddp" / "mlruns" / "checkpoints").iterdir()] == [ddp.info.run_id]
    rows = list(csv.DictReader(open(client.download_artifacts(ddp.info.run_id, "test_per_image.csv"))))
    assert len(rows) == int(ddp.data.tags["data.n_test"])  # every test image scored once across both ranks
    mean = sum(float(r["dice"]) for r in rows) / len(rows)
    assert mean == pytest.approx(ddp.data.metrics["test/dice"], abs=1e-5)
    assert proc.stdout.count("test: ") == 1
