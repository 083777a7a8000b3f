"""Campaign workers under faults, as a user meets them: a worker paused past `stale_after_s` and
continued (SIGSTOP / SIGCONT, on the journal and on PostgreSQL), and the queue's PostgreSQL stopped
for less and for more than the stale limit. Each ends with one FINISHED run per cell.

The MLflow store is SQLite here: the outages are the queue storage's (PostgreSQL), which is what
workers on several machines share; an MLflow tracking server's outage is MLflow's to ride out."""

from __future__ import annotations

import os
import random
import re
import signal
import sqlite3
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
QUEUED = r"queued \d+ of"  # the launcher has set up the MLflow store: the test's client may open it now


class Campaign:
    """`python -m harness campaign` (or `command`) in a subprocess, its output read line by line as it comes."""

    def __init__(self, path: Path, tmp_path: Path, uri: str, *args: str, command: str = "campaign"):
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "NO_ALBUMENTATIONS_UPDATE": "1", "TQDM_DISABLE": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "harness", command, str(path), *args], cwd=tmp_path,
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


def _spec(tmp_path: Path, name: str, stale_after_s: float, epochs: int, matrix: dict | None = None) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "base": str(EXPERIMENTS / "debug.yaml"), "stale_after_s": stale_after_s,
        "matrix": matrix or {"model.arch": ARCHS},
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


def _one_finished_run_per_cell(uri: str, name: str, archs: list[str] = ARCHS) -> list:
    runs = _runs(uri, name)
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert sorted(r.data.tags["cell.model.arch"] for r in finished) == sorted(archs), _store(uri, name)
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


def _pause_between_store_writes(pid: int, uri: str, tries: int = 100) -> int:
    """SIGSTOP `pid` at a moment it holds no lock on the SQLite MLflow store at `uri`.

    SQLite locks the whole file, and nothing ends a sleeping holder's lock (PostgreSQL's queue sessions
    have idle_in_transaction_session_timeout): a worker stopped inside a store read or write blocks the
    others' writes, which fail after MLflow's 20 s busy timeout (docs/runs.md). Stopped at random, a
    process logging metrics held such a lock 15 times in 30. These tests are about the queue's handover, so
    the worker is stopped between its store calls: stopped, then continued and stopped again a moment
    later while an exclusive lock on the file cannot be had. Returns how many stops that took."""
    db = uri.removeprefix("sqlite:///")
    for attempt in range(1, tries + 1):
        os.kill(pid, signal.SIGSTOP)
        probe = sqlite3.connect(db, timeout=5)  # the running workers' transactions are short: wait them out
        try:
            probe.execute("BEGIN EXCLUSIVE")
            probe.rollback()
            return attempt
        except sqlite3.OperationalError:
            os.kill(pid, signal.SIGCONT)
            time.sleep(random.uniform(0.05, 0.3))
        finally:
            probe.close()
    raise AssertionError(f"worker {pid} held a lock on {db} each of {tries} times it was stopped")


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
    campaign.wait_for(QUEUED)
    paused_run = _training(uri, name, 2)[0]
    arch = paused_run.data.tags["cell.model.arch"]
    worker, pid = _holder_pid(name, storage, arch)
    stops = _pause_between_store_writes(pid, uri)
    client = MlflowClient(uri)
    epochs_at_pause = len(client.get_metric_history(paused_run.info.run_id, "val/dice"))
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
        print(f"\n[{queue}] paused {worker} on arch={arch} (stop {stops})\nbefore the handover:\n{before}\n"
              f"handed on and finished by {other[1]}:\n{during}\nafter the paused worker was continued:\n{after}")
    runs = _one_finished_run_per_cell(uri, name)
    assert len(runs) == 3  # the two cells' runs, and the paused one
    paused = MlflowClient(uri).get_run(paused_run.info.run_id)
    assert paused.info.status == "KILLED" and paused.data.tags["superseded_by"] == other[2]  # the run that finished it
    assert "test/dice" not in paused.data.metrics  # no test written after the handover
    assert re.search(rf"\[{re.escape(worker)}\] stopped \[\d/2\] arch={arch}: lost its claim", campaign.out)
    # No checkpoint write begun once continued: each epoch is logged after its checkpoint is written, so
    # at most the epoch whose write was under way at the pause lands after it, and no later one.
    logged = client.get_metric_history(paused_run.info.run_id, "val/dice")
    assert len(logged) <= epochs_at_pause + 1, (epochs_at_pause, len(logged))
    folder = tmp_path / "mlruns" / "checkpoints" / paused_run.info.run_id
    newer = [f.name for f in folder.iterdir() if f.name != ".lock" and f.stat().st_mtime > resumed_at + 5]
    assert not newer, newer  # nothing written in the folder a while after it was continued


def test_a_queue_outage_under_the_stale_limit_is_ridden_out(server, tmp_path, monkeypatch, capsys):
    """PostgreSQL (the queue) stopped for 10 s while two workers train, stale_after_s 40: heartbeats and
    claims are retried; both cells finish in their first run, none KILLED."""
    monkeypatch.chdir(tmp_path)
    uri, name = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}", "short_outage"
    path = _spec(tmp_path, name, stale_after_s=40, epochs=60)
    campaign = Campaign(path, tmp_path, uri, "--workers", "2", "--storage", f"{server}/campaign")
    campaign.wait_for(QUEUED)
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
    # Two UNet cells (seeds 0 and 1), alike in speed: both have most of their 60 epochs left when the
    # outage starts, so neither finishes inside the ~10 s it takes to notice. (With a UNet beside a
    # ResNet34-UNet the UNet ran far ahead, so 200 epochs were set, and their rerun outlasted the 900 s
    # wait in CI.)
    path = _spec(tmp_path, name, stale_after_s=6, epochs=60, matrix={"model.arch": ["unet"], "seed": [0, 1]})
    campaign = Campaign(path, tmp_path, uri, "--workers", "2", "--storage", storage)
    campaign.wait_for(QUEUED)
    first = _training(uri, name, 2)
    client = MlflowClient(uri)
    left = [60 - len(client.get_metric_history(r.info.run_id, "val/dice")) for r in first]
    assert min(left) > 30, f"epochs left when the outage starts: {left}; the cells are too short for this machine"
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
    runs = _one_finished_run_per_cell(uri, name, ["unet", "unet"])
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
    campaign.wait_for(QUEUED)
    first = _training(uri, name, 2)
    campaign.proc.send_signal(signal.SIGTERM)
    assert campaign.finish(timeout=300) == 1, campaign.out[-4000:]
    assert campaign.out.count("KILLED") >= 2 and "2 cell(s) stopped; the same command resumes them" in campaign.out
    assert {r.info.status for r in _runs(uri, name)} == {"KILLED"}
    again = Campaign(path, tmp_path, uri, "--workers", "2")
    assert again.finish() == 0, again.out[-4000:]
    runs = _one_finished_run_per_cell(uri, name)
    assert sorted(r.info.run_id for r in runs) == sorted(r.info.run_id for r in first)  # resumed, not new


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (the launcher's local workers)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _ended(proc: subprocess.Popen, timeout: float) -> bool:
    try:
        proc.wait(timeout=timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


def _stacks_then_kill(proc: subprocess.Popen, workers: list[int], reader: threading.Thread) -> None:
    """A hung launcher: each live worker prints its threads' stacks (SIGUSR1, harness.cli's faulthandler)
    into the output, then all stop."""
    for pid in workers:
        try:
            os.kill(pid, signal.SIGUSR1)
        except ProcessLookupError:
            pass
    time.sleep(3)
    for pid in [*workers, proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=60)
    reader.join(timeout=30)


def test_a_study_worker_paused_past_the_grace_period_is_superseded(server, tmp_path, capsys):
    """Two study workers on PostgreSQL (heartbeat 1 s, grace 4 s); one is paused mid-trial. The other
    fails its trial as stale and runs the retry; continued, the paused worker stops that trial's run
    KILLED, tagged superseded_by the retry, and goes on: n_trials DONE, one FINISHED run per COMPLETE trial."""
    import optuna

    study_file = yaml.safe_load((EXPERIMENTS / "studies" / "debug_study.yaml").read_text())
    study_file["base"] = str(EXPERIMENTS / "debug.yaml")
    study_file["set"]["train.epochs"] = 40
    spec = tmp_path / "paused_study.yaml"
    spec.write_text(yaml.safe_dump(study_file))
    storage, uri = f"{server}/campaign", f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    study_cli = Campaign(spec, tmp_path, uri, "n_trials=3", "pruner=none", "heartbeat_interval=1", "grace_period=4",
                         "--workers", "2", "--storage", storage, command="study")
    proc = study_cli.proc
    polled = optuna.storages.RDBStorage(storage)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:  # both workers inside a trial, past its first epoch
        time.sleep(0.5)
        try:
            trials = optuna.load_study(study_name="debug_study", storage=polled).trials
        except KeyError:
            continue
        if sum(t.state.name == "RUNNING" and "mlflow_run_id" in t.user_attrs for t in trials) == 2:
            break
    workers = _children(proc.pid)
    assert len(workers) == 2
    stops = _pause_between_store_writes(workers[0], uri)
    retried = False
    try:
        while time.monotonic() < deadline:  # the other worker failed the paused trial as stale and retried it
            time.sleep(0.5)
            study = optuna.load_study(study_name="debug_study", storage=polled)
            failed = [t for t in study.trials if t.state.name == "FAIL"]
            retry = [t for t in study.trials if failed and t.system_attrs.get("failed_trial") == failed[0].number]
            if retried := bool(retry and retry[0].state.name == "COMPLETE"):
                break
    finally:
        resumed_at = time.time()
        os.kill(workers[0], signal.SIGCONT)
    if not retried or not _ended(proc, 600):
        _stacks_then_kill(proc, workers, study_cli.reader)
        states = [(t.number, t.state.name) for t in optuna.load_study(study_name="debug_study", storage=polled).trials]
        pytest.fail(f"{'no retry COMPLETE while paused' if not retried else 'the study did not end'}; trials "
                    f"{states}; output (with each worker's stacks):\n{study_cli.out[-12000:]}")
    study_cli.finish(timeout=60)
    out = study_cli.out
    assert proc.returncode == 0, out[-4000:]
    study = optuna.load_study(study_name="debug_study", storage=polled)
    polled.engine.dispose()
    (lost,) = [t for t in study.trials if t.state.name == "FAIL"]
    (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == lost.number]
    # n_trials or one more: a worker that resumes optimize while another's last trial runs may start one
    # (MaxTrialsCallback counts finished trials, as with any parallel Optuna workers)
    assert sum(t.state.name == "COMPLETE" for t in study.trials) >= 3
    client = MlflowClient(uri)
    run = client.get_run(lost.user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED" and run.data.tags["superseded_by"] == f"trial {retry.number}"
    assert f"[trial {lost.number}] stopped: trial {lost.number} is FAIL in the study (failed as stale)" in out
    logged = client.get_metric_history(run.info.run_id, "val/dice")
    assert max(m.timestamp for m in logged) / 1000 < resumed_at  # nothing logged once it was continued
    children = client.search_runs([run.info.experiment_id], "tags.`optuna.study` = 'debug_study'")
    finished = [r for r in children if r.info.status == "FINISHED" and "mlflow.parentRunId" in r.data.tags]
    complete = {t.user_attrs["mlflow_run_id"] for t in study.trials if t.state.name == "COMPLETE"}
    assert {r.info.run_id for r in finished} == complete  # one FINISHED run per COMPLETE trial
    with capsys.disabled():
        print(f"\n[study] trial {lost.number} (paused at stop {stops}): run {run.info.run_id[:8]} {run.info.status} "
              f"superseded_by={run.data.tags['superseded_by']}, {len(logged)} epochs; retried as trial "
              f"{retry.number} ({retry.state.name}); states {[t.state.name for t in study.trials]}")
