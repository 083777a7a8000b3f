"""Campaigns beyond one process: cells claimed through an Optuna storage, each handed out once, a
dead worker's cell handed on and its run resumed, workers as submitit jobs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from harness.sweeps.queue import CellQueue, cell_key, storage_for_campaign

from conftest import DEPRECATIONS_ARE_ERRORS, EXPERIMENTS, run_main

pytestmark = DEPRECATIONS_ARE_ERRORS
DEBUG_CAMPAIGN = EXPERIMENTS / "campaigns" / "debug_campaign.yaml"
CELLS = [{"seed": s} for s in range(3)]


@pytest.fixture
def journal(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return storage_for_campaign("c")


def test_each_cell_is_claimed_once_and_then_none_is_left(journal):
    a, b = CellQueue("c", journal, "a"), CellQueue("c", storage_for_campaign("c"), "b")  # two workers
    assert len(a.enqueue(CELLS)) == 3 and b.enqueue(CELLS) == []  # queued once
    claims = [a.claim(), b.claim(), a.claim()]
    assert sorted(c.cell for c in claims) == sorted(cell_key(c) for c in CELLS)
    assert a.claim() is None and b.claim() is None
    assert {t.user_attrs["worker"] for t in a.running()} == {"a", "b"}
    for claim in claims:
        a.finish(claim, 0.5, "run")
    assert not a.running() and [t.state.name for t in a.states().values()] == ["COMPLETE"] * 3


def test_a_cell_queued_twice_runs_once(journal):
    queue = CellQueue("c", journal, "a")
    queue.enqueue(CELLS[:1])
    queue.study.enqueue_trial({}, user_attrs={"cell": cell_key(CELLS[0])})  # a second launcher raced the first
    first = queue.claim()
    assert first is not None and queue.claim() is None  # the later copy lost to the earlier
    assert [t.user_attrs.get("duplicate") for t in queue.study.trials] == [None, True]


def test_a_stale_claim_is_handed_on_once_and_a_released_one_at_once(journal):
    dead, alive = CellQueue("c", journal, "dead", stale_after=0.2), CellQueue("c", journal, "alive", stale_after=0.2)
    dead.enqueue(CELLS[:2])
    held, other = dead.claim(), dead.claim()
    time.sleep(0.4)  # no heartbeat thread ran: both claims are stale now
    assert {t.number for t in alive.stale()} == {held.number, other.number}
    stale = [t for t in alive.stale() if t.number == held.number]
    assert alive.hand_on(stale[0]) and not alive.hand_on(stale[0])  # the second attempt finds it queued already
    again = alive.claim()
    assert again.cell == held.cell and again.number > held.number
    with alive.holding(again):  # a held claim keeps beating: it does not go stale
        time.sleep(0.4)
        assert again.number not in {t.number for t in alive.stale()}
    alive.release(again)  # Ctrl-C: queued again at once
    assert alive.claim().cell == held.cell


def _campaign_file(tmp_path: Path, **changes) -> Path:
    doc = yaml.safe_load(DEBUG_CAMPAIGN.read_text())
    doc["base"] = str((DEBUG_CAMPAIGN.parent / doc["base"]).resolve())
    doc.update(changes)
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _cli(args, tmp_path, uri, **popen):
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "NO_ALBUMENTATIONS_UPDATE": "1", "TQDM_DISABLE": "1"}
    return subprocess.Popen([sys.executable, "-m", "harness", "campaign", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def _one_finished_run_per_cell(uri: str, campaign: str, n: int) -> list:
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("debug").experiment_id], f"tags.campaign = '{campaign}'")
    assert len(runs) == n and {r.info.status for r in runs} == {"FINISHED"}
    assert len({r.data.tags["campaign.cell"] for r in runs}) == n  # one run per cell, none twice
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["local", "submitit-local"])
def test_two_workers_on_the_journal_run_each_cell_once(tmp_path, launcher):
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    proc = _cli([str(DEBUG_CAMPAIGN), "--workers", "2", "--launcher", launcher], tmp_path, uri)
    out, _ = proc.communicate(timeout=1200)
    assert proc.returncode == 0, out[-4000:]
    _one_finished_run_per_cell(uri, "debug_campaign", 4)
    logs = sorted((tmp_path / "mlruns" / "submitit").rglob("*_log.out"))  # submitit jobs print there
    assert len(logs) == (2 if launcher == "submitit-local" else 0)
    text = out + "".join(p.read_text() for p in logs)
    claimed = [line for line in text.splitlines() if "] claimed [" in line]
    assert len(claimed) == 4 and len({line.split("]")[0] for line in claimed}) == 2  # both workers worked
    if launcher == "submitit-local":
        assert "submitted 2 worker job(s)" in out


@pytest.fixture(scope="module")
def postgres():
    from pg import postgres_server

    with postgres_server(databases=("campaign", "mlflow")) as url:
        if url is None:
            pytest.skip("PostgreSQL server binaries not found (.ci/run installs Debian's postgresql)")
        yield url


@pytest.mark.slow
def test_two_workers_on_postgresql_run_each_cell_once(postgres, tmp_path):
    storage, uri = f"{postgres}/campaign", f"{postgres}/mlflow"
    proc = _cli([str(DEBUG_CAMPAIGN), "--workers", "2", "--storage", storage], tmp_path, uri)
    out, _ = proc.communicate(timeout=1200)
    assert proc.returncode == 0, out[-4000:]
    _one_finished_run_per_cell(uri, "debug_campaign", 4)
    status = _cli([str(DEBUG_CAMPAIGN), "--status", "--storage", storage], tmp_path, uri)
    assert "4 finished" in status.communicate(timeout=300)[0]


@pytest.mark.slow
def test_a_killed_workers_cell_is_resumed_in_its_run_by_the_other(tmp_path):
    """Worker A is SIGKILLed after its cell's first epoch; B, done with its own cell, sees A's claim
    go stale and resumes A's MLflow run from its checkpoint: every epoch is logged once."""
    # 30 epochs: a cell lasts long enough for the poll below to see it mid-run on a fast machine too
    path = _campaign_file(tmp_path, matrix={"seed": [0, 1]}, set={"train.epochs": 30, "log_model": False},
                          stale_after_s=6)
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    proc = _cli([str(path), "--workers", "2"], tmp_path, uri, start_new_session=True)
    queue = CellQueue("debug_campaign", storage_for_campaign_at(tmp_path), "test")
    while not queue._trials():  # queued: the launcher has set up the MLflow store (two processes must not)
        time.sleep(0.2)
    client, victim, deadline = MlflowClient(uri), None, time.monotonic() + 600
    while victim is None and time.monotonic() < deadline:
        time.sleep(0.5)
        for run in _runs(client):
            if run.info.status == "RUNNING" and client.get_metric_history(run.info.run_id, "val/dice"):
                held = [t for t in queue.running() if t.user_attrs["cell"] == run.data.tags["campaign.cell"]]
                if held and (tmp_path / "mlruns" / "checkpoints" / run.info.run_id / "last.pt").exists():
                    victim = (run, int(held[0].user_attrs["worker"].split(":")[1].split("#")[0]))
                    break
    assert victim is not None, "no cell reached its first epoch in 600 s"
    run, pid = victim
    os.kill(pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=1200)
    assert "went stale" in out, out[-4000:]
    runs = _one_finished_run_per_cell(uri, "debug_campaign", 2)
    resumed = next(r for r in runs if r.info.run_id == run.info.run_id)  # the same run finished the cell
    assert int(resumed.data.tags["resumed_from_epoch"]) >= 1
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val/dice")) == list(range(1, 31))


def storage_for_campaign_at(folder: Path):
    import optuna

    path = folder / "mlruns" / "optuna" / "campaign-debug_campaign.journal"
    while not path.exists():
        time.sleep(0.2)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def _runs(client):
    experiment = client.get_experiment_by_name("debug")
    return client.search_runs([experiment.experiment_id]) if experiment else []


def test_dry_run_still_lists_and_queues_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert run_main(["campaign", str(DEBUG_CAMPAIGN), "--dry-run"]) == 0
    assert "dry run: 4 cell(s) would run" in capsys.readouterr().out
    assert not (tmp_path / "mlruns" / "optuna").exists()
    assert json.loads(cell_key({"b": 1, "a": 2})) == {"a": 2, "b": 1}


def test_a_claim_lost_is_seen_by_its_holder(journal):
    """The token of a claim is its trial: handed on (failed as stale) or finished elsewhere, the holder's
    next heartbeat sees it, names who has the cell now, and stops beating."""
    a, b = CellQueue("c", journal, "a", stale_after=0.01), CellQueue("c", storage_for_campaign("c"), "b", 0.01)
    a.enqueue(CELLS[:1])
    claim = a.claim()
    assert a._lost(claim) is None
    time.sleep(0.05)
    assert [b.hand_on(t) for t in b.stale()] == [True]
    assert b.claim() is not None
    by, why = a._lost(claim)
    assert by == "b" and "handed on: its claim went stale" in why


def test_a_worker_whose_claim_is_handed_on_stops_and_its_run_ends_killed(store, tmp_path, capsys):
    """A paused worker's cell was handed on and trained by another: when it wakes, its heartbeat sees the
    claim lost; it stops at the next epoch boundary, writes nothing more, ends its run KILLED tagged
    superseded_by, and says so in one line. One FINISHED run per cell remains."""
    import threading

    from harness.config.sweeps import load_campaign_spec
    from harness.sweeps.campaign import run_campaign

    path = tmp_path / "fence.yaml"
    path.write_text(yaml.safe_dump({"name": "fence", "base": str(EXPERIMENTS / "debug.yaml"), "stale_after_s": 0.4,
                                    "matrix": {"seed": [0]},
                                    "set": {"train.epochs": 30, "log_model": False, "model.base_width": 4,
                                            "data.synthetic_size": [32, 8]}}))
    spec, base = load_campaign_spec(path)
    other = CellQueue("fence", storage_for_campaign("fence"), "other", stale_after=0.4)

    def take_over():  # what another worker does once this one's claim is stale: fail it, queue the cell again
        for _ in range(600):
            running = other.running()
            if running:
                trial = running[0]
                other.storage.set_trial_user_attr(trial._trial_id, "stale", True)
                other.storage.set_trial_state_values(trial._trial_id, optuna_state().FAIL)
                other.study.enqueue_trial({}, user_attrs={"cell": trial.user_attrs["cell"]})
                return
            time.sleep(0.05)

    thread = threading.Thread(target=take_over)
    thread.start()
    results = run_campaign(spec, base)
    thread.join()
    out = capsys.readouterr().out
    assert "lost its claim" in out and "handed on: its claim went stale" in out
    client = MlflowClient()
    runs = client.search_runs([client.get_experiment_by_name("debug").experiment_id], "tags.campaign = 'fence'")
    killed = [r for r in runs if r.info.status == "KILLED"]
    assert len(killed) == 1 and "superseded_by" in killed[0].data.tags
    assert "test/dice" not in killed[0].data.metrics  # nothing written after the claim was lost
    assert [r.info.status for r in runs].count("FINISHED") == 1 and [r.status for r in results] == ["FINISHED"]
    assert killed[0].data.tags["superseded_by"] == "the queue"  # handed on, its cell waiting for a worker


def optuna_state():
    import optuna

    return optuna.trial.TrialState


def test_cells_not_needed_leave_the_queue_and_are_not_handed_on(journal):
    """A sequential campaign that stopped takes its later cells out of the queue: a WAITING one is
    failed (not_needed), a RUNNING one may finish but is not handed on when its claim goes stale."""
    queue = CellQueue("c", journal, "w0", stale_after=0.01)
    queue.enqueue(CELLS)
    held = queue.claim()
    assert queue.drop([cell_key(c) for c in CELLS[:2]]) == 1  # cell 0 is held: marked, not failed
    time.sleep(0.05)
    stale = [t for t in queue.stale() if t.number == held.number]
    assert stale and not queue.hand_on(stale[0])  # not queued again
    assert queue.claim().cell == cell_key(CELLS[2]) and queue.claim() is None
    latest = queue.states()
    assert latest[cell_key(CELLS[1])].user_attrs["not_needed"] and latest[cell_key(CELLS[1])].state.name == "FAIL"


@pytest.mark.slow
def test_a_sequential_campaign_runs_with_two_workers_and_looks_in_block_order(tmp_path):
    """2 seeds x 2 folds x 2 arms on two workers: blocks run in parallel, look 2 is taken once blocks 1-2
    have finished (whichever worker ran them) and, with a margin no Dice difference reaches, stops the
    campaign; queued cells of later blocks are NOT NEEDED and campaign-status says so."""
    doc = {"name": "seq2", "base": str(EXPERIMENTS / "debug.yaml"),
           "sequential": {"delta": 100, "block": ["seed", "data.fold"], "min_blocks": 2},
           "matrix": {"seed": [0, 1], "data.fold": [0, 1], "model.arch": ["unet", "resnet34_unet"]},
           "set": {"train.epochs": 1, "log_model": False, "model.base_width": 4, "data.synthetic_size": [32, 8],
                   "data.folds": 2}}
    path = tmp_path / "seq2.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    out, _ = _cli([str(path), "--workers", "2"], tmp_path, uri).communicate(timeout=1200)
    assert "every comparison decided at look 2" in out and "FAILED" not in out, out[-4000:]
    summary = out.split("campaign 'seq2': 8 cells")[1].splitlines()[1:9]
    statuses = [line.split()[0] for line in summary]
    assert statuses[:4] == ["FINISHED"] * 4, summary  # blocks 1-2
    assert set(statuses[4:]) <= {"FINISHED", "NOT"} and "NOT" in statuses[4:], summary  # in flight, or not needed
    status, _ = _cli([str(path), "--status"], tmp_path, uri).communicate(timeout=300)
    assert "not needed" in status and "stopped at look 2" in status, status
    again, _ = _cli([str(path)], tmp_path, uri).communicate(timeout=600)
    assert "queued 0 of 0" in again and "claimed" not in again, again[-3000:]  # the record stops it


def test_queue_calls_ride_out_a_storage_outage_then_name_the_storage(journal, monkeypatch):
    """Claims and the other queue calls are retried with backoff while the storage fails (here: the
    journal file unreadable for a while); past stale_after seconds, one StorageLost names the storage."""
    from harness.sweeps.queue import StorageLost

    queue = CellQueue("c", journal, "w0", stale_after=3)
    queue.enqueue(CELLS)
    real, failures = journal.get_all_trials, [2]

    def flaky(*args, **kwargs):
        if failures[0]:
            failures[0] -= 1
            raise OSError("Input/output error")
        return real(*args, **kwargs)

    monkeypatch.setattr(journal, "get_all_trials", flaky)
    assert queue.claim().cell == cell_key(CELLS[0]) and failures == [0]  # two failures ridden out
    failures[0] = 10**6  # an outage that outlasts stale_after
    start = time.monotonic()
    with pytest.raises(StorageLost, match=r"campaign-c\.journal: no answer for 3 s \(OSError\)"):
        queue.claim()
    assert time.monotonic() - start >= 3


def test_claims_follow_the_order_and_a_cell_queued_again_keeps_its_place(journal):
    """Workers claim by the order given at enqueue (a sequential campaign's blocks), not by when a cell
    was queued: a released or handed-on cell goes back to its place. A retried hand-on whose FAIL had
    landed still queues the cell, and a trial dropped meanwhile is skipped by claim."""
    queue = CellQueue("c", journal, "w0", stale_after=0.01)
    queue.enqueue(CELLS, orders=[2, 0, 1])
    first = queue.claim()
    assert first.cell == cell_key(CELLS[1])
    queue.release(first)
    assert queue.claim().cell == cell_key(CELLS[1])  # back at its place, ahead of orders 1 and 2
    time.sleep(0.05)
    (held,) = queue.stale()
    journal.set_trial_state_values(held._trial_id, optuna_state().FAIL)  # the FAIL landed, the call was retried
    assert queue.hand_on(held) and queue.claim().cell == cell_key(CELLS[1])
    waiting = queue._trials((optuna_state().WAITING,))
    journal.set_trial_state_values(waiting[0]._trial_id, optuna_state().FAIL)  # dropped between list and claim
    monkey = queue._trials
    queue._trials = lambda states=None: waiting if states == (optuna_state().WAITING,) else monkey(states)
    assert queue.claim().cell == waiting[1].user_attrs["cell"]  # skipped, not a traceback


def test_an_undecided_look_is_printed_with_its_p_and_boundary(capsys):
    """A look that decides nothing still says so (the campaign log once showed nothing at such a look)."""
    from harness.sweeps.campaign import _print_look

    text = "undecided at look 2 (p 0.0151 for real, 1 for equivalence; boundary 5.39e-07)"
    pending = [{"metric": "dice", "arms": ["unet", "resnet34_unet"], "look": 2, "verdict": text}]
    _print_look(None, {"stop": False, "look": 2, "decisions": [], "pending": pending}, "w0")
    assert capsys.readouterr().out == f"[w0] dice resnet34_unet vs unet: {text}\n"


def test_postgresql_sessions_get_the_idle_limit_and_keep_the_urls_own_parameters():
    """Every RDB storage's PostgreSQL sessions end after IDLE_IN_TRANSACTION_S idle in a transaction; a
    URL's own options, connect_timeout and the like win over the harness's defaults (connect_args would
    otherwise override them silently)."""
    from harness.sweeps.queue import IDLE_IN_TRANSACTION_S, engine_settings

    limit = f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_S * 1000}"
    plain = engine_settings("postgresql://u@db/optuna")["connect_args"]
    assert plain["options"] == limit and plain["connect_timeout"] == 10
    own = engine_settings("postgresql://u@db/optuna?options=-csearch_path%3Dlab&connect_timeout=3")
    assert own["connect_args"]["options"] == f"-csearch_path=lab {limit}"
    assert "connect_timeout" not in own["connect_args"]  # the URL's 3 s stands
    theirs = engine_settings("postgresql://u@db/optuna?options=-c%20idle_in_transaction_session_timeout%3D0")
    assert theirs["connect_args"]["options"] == "-c idle_in_transaction_session_timeout=0"
    assert engine_settings("sqlite:///q.db") == {"pool_pre_ping": True}
