"""Campaign workers under faults, as a user meets them: a worker paused past `stale_after_s` and
continued (SIGSTOP / SIGCONT, on the journal and on PostgreSQL), and the queue's PostgreSQL stopped
for less and for more than the stale limit. Each ends with one FINISHED run per cell.

The MLflow store is SQLite here: the outages are the queue storage's (PostgreSQL), which is what
workers on several machines share; an MLflow tracking server's outage is MLflow's to ride out."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import EXPERIMENTS

pytestmark = pytest.mark.slow
ARCHS = ["unet", "resnet34_unet"]


class Campaign:
    """`python -m harness campaign` in a subprocess, its output read line by line as it comes."""

    def __init__(self, path: Path, tmp_path: Path, uri: str, *args: str):
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "NO_ALBUMENTATIONS_UPDATE": "1", "TQDM_DISABLE": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "harness", "campaign", str(path), *args], cwd=tmp_path,
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self.reader.start()

    @property
    def out(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 600) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if found := re.search(pattern, self.out):
                return found
            if self.proc.poll() is not None and not self.reader.is_alive():
                break
            time.sleep(0.2)
        raise AssertionError(f"no {pattern!r} in the campaign's output:\n{self.out[-4000:]}")

    def finish(self, timeout: float = 900) -> int:
        rc = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=30)
        return rc


def _spec(tmp_path: Path, name: str, stale_after_s: float, epochs: int) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "base": str(EXPERIMENTS / "debug.yaml"), "stale_after_s": stale_after_s,
        "matrix": {"model.arch": ARCHS},
        "set": {"train.epochs": epochs, "log_model": False, "model.base_width": 4, "data.synthetic_size": [32, 8]}}))
    return path


def _runs(uri: str, name: str) -> list:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("debug")
    return client.search_runs([experiment.experiment_id], f"tags.campaign = '{name}'") if experiment else []


def _store(uri: str, name: str) -> str:
    """The store as the issue asks to show it: each run's cell, status, epochs logged and fencing tags."""
    client = MlflowClient(uri)
    return "\n".join(f"  {r.data.tags['cell.model.arch']:<14} {r.info.run_id[:8]} {r.info.status:<9} "
                     f"epochs {len(client.get_metric_history(r.info.run_id, 'val/dice')):>2}  "
                     f"superseded_by={r.data.tags.get('superseded_by', '-')[:8]} "
                     f"self_fenced={'yes' if 'self_fenced' in r.data.tags else '-'}"
                     for r in sorted(_runs(uri, name),
                                     key=lambda r: (r.data.tags["cell.model.arch"], r.info.start_time)))


def _one_finished_run_per_cell(uri: str, name: str) -> list:
    runs = _runs(uri, name)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert sorted(r.data.tags["cell.model.arch"] for r in finished) == sorted(ARCHS), _store(uri, name)
    return runs


def _training(uri: str, name: str, n: int, epochs: int = 2, timeout: float = 600) -> list:
    """Wait until `n` runs of the campaign are RUNNING with `epochs` epochs logged."""
    client, deadline = MlflowClient(uri), time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = [r for r in _runs(uri, name) if r.info.status == "RUNNING"]
        started = [r for r in running if len(client.get_metric_history(r.info.run_id, "val/dice")) >= epochs]
        if len(started) >= n:
            return started
        time.sleep(0.5)
    raise AssertionError(f"{n} run(s) of {name} never reached epoch {epochs}:\n{_store(uri, name)}")


def _holder_pid(name: str, storage_url: str | None, cell_arch: str) -> tuple[str, int]:
    """The worker holding the cell (its name 'host:pid#i') and its pid, read from the queue."""
    from harness.sweeps.queue import CellQueue, storage_for_campaign

    queue = CellQueue(name, storage_for_campaign(name, storage_url), "test", 120)
    (trial,) = [t for t in queue.running() if f'"{cell_arch}"' in t.user_attrs["cell"]]
    worker = trial.user_attrs["worker"]
    return worker, int(worker.split(":")[-1].split("#")[0])


@pytest.fixture
def server():
    from pg import postgres_server

    with postgres_server(databases=("campaign",)) as url:
        if url is None:
            pytest.skip("PostgreSQL server binaries not found (.ci/run installs Debian's postgresql)")
        yield url


@pytest.mark.parametrize("queue", ["journal", "postgresql"])
def test_a_worker_paused_past_the_stale_limit_is_superseded(queue, tmp_path, monkeypatch, request, capsys):
    """Worker P is paused (SIGSTOP) mid-cell; the other worker, done with its own cell, hands P's on after
    stale_after_s and trains it in a new run; P is continued (SIGCONT), sees at once that its claim is
    lost, ends its run KILLED tagged superseded_by the run that finished the cell, and writes nothing more. The store
    holds one FINISHED run per cell."""
    storage = f"{request.getfixturevalue('server')}/campaign" if queue == "postgresql" else None
    monkeypatch.chdir(tmp_path)  # the journal lives under ./mlruns/optuna
    uri, name = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}", f"paused_{queue}"
    path = _spec(tmp_path, name, stale_after_s=5, epochs=60)
    campaign = Campaign(path, tmp_path, uri, "--workers", "2", *(["--storage", storage] if storage else []))
    paused_run = _training(uri, name, 2)[0]
    arch = paused_run.data.tags["cell.model.arch"]
    worker, pid = _holder_pid(name, storage, arch)
    os.kill(pid, signal.SIGSTOP)
    before = _store(uri, name)
    try:
        campaign.wait_for(rf"handed on arch={arch}: the claim of {re.escape(worker)} went stale")
        other = campaign.wait_for(rf"\[([^\]]+)\] finished \[\d/2\] arch={arch} (\w+)")
        during = _store(uri, name)
    finally:
        resumed_at = time.time()
        os.kill(pid, signal.SIGCONT)
    assert campaign.finish() == 0, campaign.out[-4000:]
    after = _store(uri, name)
    with capsys.disabled():
        print(f"\n[{queue}] paused {worker} on arch={arch}\nbefore the handover:\n{before}\n"
              f"handed on and finished by {other[1]}:\n{during}\nafter the paused worker was continued:\n{after}")
    runs = _one_finished_run_per_cell(uri, name)
    assert len(runs) == 3  # the two cells' runs, and the paused one
    paused = MlflowClient(uri).get_run(paused_run.info.run_id)
    assert paused.info.status == "KILLED" and paused.data.tags["superseded_by"] == other[2]  # the run that finished it
    assert "test/dice" not in paused.data.metrics  # no test written after the handover
    assert re.search(rf"\[{re.escape(worker)}\] stopped \[\d/2\] arch={arch}: lost its claim", campaign.out)
    folder = tmp_path / "mlruns" / "checkpoints" / paused_run.info.run_id
    written = {f.name: f.stat().st_mtime for f in folder.iterdir() if f.name != ".lock"}
    assert written and max(written.values()) < resumed_at, written  # no checkpoint write once continued


def test_a_queue_outage_under_the_stale_limit_is_ridden_out(server, tmp_path, monkeypatch, capsys):
    """PostgreSQL (the queue) stopped for 10 s while two workers train, stale_after_s 40: heartbeats and
    claims are retried; both cells finish in their first run, none KILLED."""
    monkeypatch.chdir(tmp_path)
    uri, name = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}", "short_outage"
    path = _spec(tmp_path, name, stale_after_s=40, epochs=60)
    campaign = Campaign(path, tmp_path, uri, "--workers", "2", "--storage", f"{server}/campaign")
    _training(uri, name, 2)
    server.stop()
    time.sleep(10)
    server.start()
    assert campaign.finish() == 0, campaign.out[-4000:]
    with capsys.disabled():
        print(f"\n[outage 10 s, stale_after_s 40]\n{_store(uri, name)}")
    runs = _one_finished_run_per_cell(uri, name)
    assert len(runs) == 2 and "error" not in campaign.out.lower(), campaign.out[-4000:]


def test_a_queue_outage_past_the_stale_limit_stops_workers_and_the_rerun_completes(server, tmp_path, monkeypatch,
                                                                                   capsys):
    """PostgreSQL stopped for longer than stale_after_s (6 s): each worker stops itself at its next epoch
    boundary with one line naming the storage and exit 75, its run KILLED and resumable; once the
    server is back, the same command resumes both runs to FINISHED: one run per cell."""
    monkeypatch.chdir(tmp_path)
    uri, name = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}", "long_outage"
    storage = f"{server}/campaign"
    path = _spec(tmp_path, name, stale_after_s=6, epochs=60)
    campaign = Campaign(path, tmp_path, uri, "--workers", "2", "--storage", storage)
    first = _training(uri, name, 2)
    server.stop()
    try:
        campaign.finish(timeout=300)
        stopped = _store(uri, name)
    finally:
        server.start()
    lines = [line for line in campaign.lines if "could not renew its claim" in line]
    assert len(lines) == 2, campaign.out[-4000:]  # one line per worker
    assert all(line.startswith("error: [") and storage in line for line in lines), lines
    assert campaign.out.count("Traceback") == 0, campaign.out[-4000:]
    assert "warning: worker exit codes [75, 75]" in campaign.out, campaign.out[-4000:]
    assert {r.info.status for r in _runs(uri, name)} == {"KILLED"}
    again = Campaign(path, tmp_path, uri, "--workers", "2", "--storage", storage)
    assert again.finish() == 0, again.out[-4000:]
    with capsys.disabled():
        print(f"\n[outage past stale_after_s 6]\nworkers stopped:\n{lines[0]}{lines[1]}{stopped}\n"
              f"after the same command again:\n{_store(uri, name)}")
    runs = _one_finished_run_per_cell(uri, name)
    assert sorted(r.info.run_id for r in runs) == sorted(r.info.run_id for r in first)  # resumed, not new
    assert all(f"resuming run {r.info.run_id}" in again.out for r in first), again.out[-4000:]


def test_a_sigterm_to_the_launcher_reaches_its_workers_and_the_rerun_resumes(tmp_path, monkeypatch):
    """A batch system's SIGTERM goes to the launcher only: it passes it on, each worker ends its run
    KILLED after the epoch's checkpoint, the summary lists the cells KILLED (resumable), and the same
    command resumes both runs to FINISHED."""
    monkeypatch.chdir(tmp_path)
    uri, name = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}", "sigterm"
    path = _spec(tmp_path, name, stale_after_s=30, epochs=60)
    campaign = Campaign(path, tmp_path, uri, "--workers", "2")
    first = _training(uri, name, 2)
    campaign.proc.send_signal(signal.SIGTERM)
    assert campaign.finish(timeout=300) == 1, campaign.out[-4000:]
    assert campaign.out.count("KILLED") >= 2 and "2 cell(s) stopped; the same command resumes them" in campaign.out
    assert {r.info.status for r in _runs(uri, name)} == {"KILLED"}
    again = Campaign(path, tmp_path, uri, "--workers", "2")
    assert again.finish() == 0, again.out[-4000:]
    runs = _one_finished_run_per_cell(uri, name)
    assert sorted(r.info.run_id for r in runs) == sorted(r.info.run_id for r in first)  # resumed, not new
