"""Optuna studies: validated study specs, nested MLflow runs, resume, pruning, best spec, workers."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from harness.config.load import SpecError, load_spec
from harness.config.sweeps import load_study_spec
from harness.run import run_experiment
from harness.sweeps import study as study_module
from harness.sweeps.study import run_study
from harness.tracking.base import NullTracker

from conftest import DEPRECATIONS_ARE_ERRORS, EXPERIMENTS, run_main

pytestmark = DEPRECATIONS_ARE_ERRORS  # Optuna's and MLflow's deprecations fail these tests
DEBUG_STUDY = EXPERIMENTS / "studies" / "debug_study.yaml"
DEBUG_PARETO = EXPERIMENTS / "studies" / "debug_pareto.yaml"


@pytest.mark.parametrize("path", sorted((EXPERIMENTS / "studies").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_study_specs_load(path):
    spec, base = load_study_spec(path)
    assert base.is_file() and spec.search_space


BAD_STUDIES = {
    "unknown_field": ("search_space:\n  train.lrr: {type: float, low: 0.1, high: 1}\n",
                      ["train.lrr", "does not exist"]),
    "bad_choice": ("search_space:\n  model.arch: {type: categorical, choices: [unet, segformer]}\n",
                   ["model.arch", "segformer"]),
    "bad_bounds": ("search_space:\n  train.lr: {type: float, low: 1, high: 0.1}\n", ["low", "high"]),
    "bad_set": ("set: {train.epochz: 2}\nsearch_space:\n  train.lr: {type: float, low: 0.001, high: 0.1}\n",
                ["set", "train.epochz"]),
    "grid_needs_categorical": ("sampler: grid\nsearch_space:\n  train.lr: {type: float, low: 0.001, high: 0.1}\n",
                               ["grid", "categorical"]),
}


@pytest.mark.parametrize("case", sorted(BAD_STUDIES))
def test_bad_study_spec_names_the_field(case, tmp_path):
    text, words = BAD_STUDIES[case]
    path = tmp_path / "s.yaml"
    path.write_text(f"name: s\nbase: {EXPERIMENTS / 'debug.yaml'}\n{text}")
    with pytest.raises(SpecError) as info:
        load_study_spec(path)
    for word in words:
        assert word in str(info.value), str(info.value)


def _children(client, parent_id, experiment="debug"):
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]


def test_study_nests_trials_resumes_and_writes_best_spec(store, tmp_path):
    spec, base = load_study_spec(DEBUG_STUDY)
    study = run_study(spec, base, DEBUG_STUDY)
    client = MlflowClient(store)
    parent_id = study.user_attrs["mlflow_parent_run_id"]
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    names = {a.path for a in client.list_artifacts(parent_id)}
    assert {"trials.csv", "figures", "debug_study-best.yaml"} <= names
    assert "figures/optimization_history.png" in {a.path for a in client.list_artifacts(parent_id, "figures")}
    children = _children(client, parent_id)
    assert len(children) == 3 == len(study.trials)
    assert study.metric_names == ["val/dice"]  # optuna-dashboard's label, not "Objective 0"
    assert study.trials[0].params == {"model.base_width": 8, "train.lr": 0.01}  # the base spec: the baseline
    assert study.trials[0].user_attrs["baseline"] is True
    by_trial = {int(r.data.tags["optuna.trial"]): r for r in children}
    for trial in study.trials:
        assert by_trial[trial.number].data.tags["trial.state"] == trial.state.name
        assert trial.user_attrs["mlflow_run_id"] == by_trial[trial.number].info.run_id
        # A trial is never resumed (a retry is a new trial): best weights only, no per-epoch last.pt.
        folder = tmp_path / "mlruns" / "checkpoints" / trial.user_attrs["mlflow_run_id"]
        assert {f.name for f in folder.iterdir()} == {"best.pt", ".lock"}

    # The best trial as a spec reproduces its val Dice (CPU, same seed: deterministic).
    best_spec = load_spec(tmp_path / "experiments" / "generated" / "debug_study-best.yaml")
    rerun = run_experiment(best_spec, NullTracker, checkpoint_root=tmp_path / "ck")
    assert rerun.best_val_dice == pytest.approx(study.best_value, abs=1e-12)

    # Re-running resumes: one more trial to reach n_trials=4, not four new ones.
    spec4, _ = load_study_spec(DEBUG_STUDY, ["n_trials=4"])
    again = run_study(spec4, base, DEBUG_STUDY)
    assert len(again.trials) == 4
    assert len(_children(client, parent_id)) == 4
    assert client.get_run(parent_id).info.status == "FINISHED"


def test_pruned_trial_is_pruned_in_optuna_and_mlflow(store, monkeypatch):
    from harness.sweeps.study import storage as storage_module

    monkeypatch.setattr(storage_module, "pruner_for", lambda spec: optuna.pruners.ThresholdPruner(lower=1.01))
    spec, base = load_study_spec(DEBUG_STUDY, ["n_trials=1"])
    study = run_study(spec, base, DEBUG_STUDY)
    assert study.trials[0].state == optuna.trial.TrialState.PRUNED
    client = MlflowClient(store)
    (child,) = _children(client, study.user_attrs["mlflow_parent_run_id"])
    assert child.data.tags["trial.state"] == "PRUNED" and child.info.status == "KILLED"
    assert [m.step for m in client.get_metric_history(child.info.run_id, "val/dice")] == [1]


def test_trials_skip_model_export_unless_the_study_sets_it(store, tmp_path):
    # torch.export costs seconds per trial; a trial keeps best.pt and the best spec re-logs the model.
    path = tmp_path / "s.yaml"
    path.write_text(f"name: s\nbase: {EXPERIMENTS / 'debug.yaml'}\nset: {{train.epochs: 1}}\n"
                    "search_space:\n  train.lr: {type: float, low: 0.001, high: 0.01}\nn_trials: 1\npruner: none\n")
    spec, base = load_study_spec(path)
    study = run_study(spec, base, path)
    client = MlflowClient(store)
    (child,) = _children(client, study.user_attrs["mlflow_parent_run_id"])
    assert child.data.params["log_model"] == "False"
    assert "model" not in {a.path for a in client.list_artifacts(child.info.run_id)}
    assert load_spec(tmp_path / "experiments" / "generated" / "s-best.yaml").log_model  # base's default: true
    assert study_module.TRIAL_DEFAULTS + spec.overrides({}) == ["log_model=false", "train.epochs=1"]
    on, _ = load_study_spec(path, ["set={train.epochs: 1, log_model: true}"])
    assert load_spec(base, study_module.TRIAL_DEFAULTS + on.overrides({})).log_model  # the study's set wins


@pytest.mark.slow
def test_two_workers_share_one_study(store, tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "NO_ALBUMENTATIONS_UPDATE": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, "-m", "harness", "study", str(DEBUG_STUDY), "n_trials=4", "--workers", "2"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "mlruns" / "optuna" / "debug_study.journal")))
    study = optuna.load_study(study_name="debug_study", storage=storage)
    done = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(done) >= 4 and len(study.trials) <= 5  # MaxTrialsCallback may let one racing trial through
    client = MlflowClient(store)
    children = _children(client, study.user_attrs["mlflow_parent_run_id"])
    trial_numbers = [int(r.data.tags["optuna.trial"]) for r in children]
    assert sorted(trial_numbers) == sorted(t.number for t in study.trials)  # none lost, none duplicated


@pytest.fixture(scope="module")
def postgres():
    from pg import postgres_server

    with postgres_server() as url:
        if url is None:
            pytest.skip("PostgreSQL server binaries not found (.ci/run installs Debian's postgresql)")
        yield url


def _study_cli(args, cwd, uri, spec=DEBUG_STUDY, **popen):
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "NO_ALBUMENTATIONS_UPDATE": "1", "TQDM_DISABLE": "1"}
    return subprocess.Popen([sys.executable, "-m", "harness", "study", str(spec), *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


@pytest.mark.slow
def test_workers_share_a_postgresql_study_and_mlflow_store(postgres, tmp_path):
    storage, mlflow_uri = f"{postgres}/optuna", f"{postgres}/mlflow"
    proc = _study_cli(["n_trials=4", "sampler=tpe", "--workers", "2", "--storage", storage], tmp_path, mlflow_uri)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-4000:]
    study = optuna.load_study(study_name="debug_study", storage=storage)
    done = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(done) >= 4 and len(study.trials) <= 5, ([t.state.name for t in study.trials], out[-6000:])
    children = _children(MlflowClient(mlflow_uri), study.user_attrs["mlflow_parent_run_id"])
    assert sorted(int(r.data.tags["optuna.trial"]) for r in children) == sorted(t.number for t in study.trials)
    assert all(r.info.status in ("FINISHED", "KILLED") for r in children)
    # each worker sampled for parallel work: multivariate TPE with a constant liar
    assert {t.user_attrs.get("sampler") for t in study.trials} == {"TPESampler(multivariate, constant_liar)"}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*retried_trial_number is experimental")  # optuna marks the reader experimental
def test_killed_worker_trial_fails_by_heartbeat_and_is_retried(postgres, tmp_path):
    import signal
    import time

    storage, mlflow_uri = f"{postgres}/optuna", f"{postgres}/mlflow"
    # A debug trial of 2 epochs lasts under a second, so the 0.5 s poll below could miss both trials
    # (it failed 1 run in 5 at 3d357e6); 30 epochs keep a trial running for ~10 s. Epochs are not a study
    # override, hence a study file of its own.
    spec = tmp_path / "long_trials.yaml"
    study_file = yaml.safe_load(DEBUG_STUDY.read_text())
    study_file["base"] = str((DEBUG_STUDY.parent / study_file["base"]).resolve())
    study_file["set"]["train.epochs"] = 30
    spec.write_text(yaml.safe_dump(study_file))
    args = ["n_trials=2", "name=killed_study", "heartbeat_interval=1", "grace_period=3", "pruner=none",
            "--storage", storage]
    proc = _study_cli(args, tmp_path, mlflow_uri, spec, start_new_session=True)
    # One storage (one connection pool) for all the polling: a new one per poll leaves connections
    # open until garbage collection, and a slow machine ran the server out of them (CI, stop 10).
    polled = optuna.storages.RDBStorage(storage)
    deadline, running = time.monotonic() + 300, False
    while not running and time.monotonic() < deadline:  # wait for a trial that has reached its first epoch
        time.sleep(0.5)
        try:
            trials = optuna.load_study(study_name="killed_study", storage=polled).trials
        except KeyError:
            continue
        running = any(t.state == optuna.trial.TrialState.RUNNING and "mlflow_run_id" in t.user_attrs for t in trials)
    os.killpg(proc.pid, signal.SIGKILL)
    first_out, _ = proc.communicate(timeout=60)
    polled.engine.dispose()
    assert running, "no trial was seen RUNNING with an MLflow run within 300 s:\n" + first_out[-3000:]
    time.sleep(4)  # past the grace period: the trial's heartbeat is stale
    proc = _study_cli(args, tmp_path, mlflow_uri, spec)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-4000:]
    study = optuna.load_study(study_name="killed_study", storage=storage)
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) == 1
    retries = [t for t in study.trials
               if study_module.RetryStaleTrial.retried_trial_number(t) == failed[0].number]
    assert len(retries) == 1 and retries[0].params == failed[0].params
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) == 2
    client = MlflowClient(mlflow_uri)
    assert client.get_run(failed[0].user_attrs["mlflow_run_id"]).info.status == "FAILED"
    assert client.get_run(study.user_attrs["mlflow_parent_run_id"]).info.status == "FINISHED"


@pytest.mark.slow
def test_a_worker_paused_inside_a_transaction_does_not_block_the_others(postgres):
    """A worker stopped between a statement and its commit holds the trial's row lock, and another worker's
    stale sweep waits on it. The server ends a session idle in a transaction after IDLE_IN_TRANSACTION_S,
    so the sweep fails the trial, and the paused worker's next statement finds its session gone."""
    import threading

    import sqlalchemy

    from harness.sweeps.queue import IDLE_IN_TRANSACTION_S, rdb_storage

    url = f"{postgres}/optuna"
    paused, live = rdb_storage(url), rdb_storage(url)
    study = optuna.create_study(study_name="paused_in_transaction", storage=live)
    trial_id = study.ask()._trial_id
    held = paused.engine.connect()  # the paused worker's connection, with the harness's engine settings
    held.begin()
    held.execute(sqlalchemy.text("SELECT * FROM trials WHERE trial_id = :id FOR UPDATE"), {"id": trial_id})
    sweep = threading.Thread(target=live.set_trial_state_values, args=(trial_id, optuna.trial.TrialState.FAIL),
                             daemon=True)
    try:
        sweep.start()
        sweep.join(timeout=IDLE_IN_TRANSACTION_S + 120)  # a deadlock guard, not a speed check
        assert not sweep.is_alive(), "the live worker still waits on the paused worker's row lock"
        assert live.get_trial(trial_id).state == optuna.trial.TrialState.FAIL
        with pytest.raises(sqlalchemy.exc.DBAPIError, match="idle-in-transaction"):
            held.execute(sqlalchemy.text("SELECT 1"))
    finally:
        held.invalidate()
        held.close()
        paused.engine.dispose()
        live.engine.dispose()


@pytest.mark.slow
def test_make_study_debug_end_to_end(tmp_path):
    from conftest import REPO

    if not (REPO / ".venv" / ".installed").exists():
        pytest.skip("`make install` has not been run: no .venv to run make targets with")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}", "TQDM_DISABLE": "1"}
    proc = subprocess.run(["make", "-f", str(REPO / "Makefile"), "study", f"SPEC={DEBUG_STUDY}"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "best trial" in proc.stdout and (tmp_path / "experiments" / "generated" / "debug_study-best.yaml").exists()
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "mlruns" / "optuna" / "debug_study.journal")))
    study = optuna.load_study(study_name="debug_study", storage=storage)
    assert len(study.trials) == 3
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    assert client.get_run(study.user_attrs["mlflow_parent_run_id"]).info.status == "FINISHED"


@pytest.mark.parametrize("prune_after", [0, 3])
def test_median_pruner_waits_prune_after_epochs(prune_after):
    """A trial far below the median is stopped at epoch prune_after + 1, never before."""
    spec, _ = load_study_spec(DEBUG_STUDY, [f"prune_after={prune_after}", "pruner_startup_trials=1"])
    study = optuna.create_study(direction="maximize", pruner=study_module.pruner_for(spec))
    good = study.ask()
    for epoch in range(1, 6):
        good.report(0.9, epoch)
    study.tell(good, 0.9)
    bad = study.ask()
    stopped_at = None
    for epoch in range(1, 6):
        bad.report(0.1, epoch)
        if bad.should_prune():
            stopped_at = epoch
            break
    assert stopped_at == prune_after + 1


def test_prune_after_must_not_be_negative():
    with pytest.raises(SpecError, match="prune_after"):
        load_study_spec(DEBUG_STUDY, ["prune_after=-1"])


def test_study_is_continued_only_as_it_began(store, tmp_path, capsys):
    # TPE and the pruner compare trials: trials in bf16 (one machine's `amp: auto`) and in float32
    # (another's), or on two versions of the data, must not meet in one study.

    from harness.sweeps.study import StudyMismatch, study_identity

    spec, base = load_study_spec(DEBUG_STUDY, ["n_trials=1"])
    study = run_study(spec, base, DEBUG_STUDY)
    identity = study.user_attrs["identity"]
    here = identity["amp.dtype"]
    client = MlflowClient(store)
    parent_id = study.user_attrs["mlflow_parent_run_id"]
    tags = client.get_run(parent_id).data.tags
    assert here in ("float32", "bfloat16") and tags["amp.dtype"] == here
    assert tags["data.fingerprint"] == identity["data.fingerprint"] == _children(client, parent_id)[0].data.tags[
        "data.fingerprint"]
    other = "bfloat16" if here != "bfloat16" else "float32"
    storage = study_module.storage_for(spec)
    optuna.load_study(study_name=spec.name, storage=storage).set_user_attr("identity", {**identity, "amp.dtype": other})

    more, _ = load_study_spec(DEBUG_STUDY, ["n_trials=2"])
    with pytest.raises(StudyMismatch, match=rf"its trials trained with amp.dtype {other} \(now {here}\)"):
        run_study(more, base, DEBUG_STUDY)
    assert run_main(["study", str(DEBUG_STUDY), "n_trials=2"]) == 2
    assert "start a new study (name=<new name>)" in capsys.readouterr().err
    assert len(optuna.load_study(study_name=spec.name, storage=storage).trials) == 1
    assert client.get_run(parent_id).info.status == "FINISHED"  # not reopened
    assert len(_children(client, parent_id)) == 1
    stored = optuna.load_study(study_name=spec.name, storage=storage)
    stored.set_user_attr("identity", {**identity, "data.fingerprint": "x"})
    with pytest.raises(StudyMismatch, match=r"data.fingerprint x \(now "):
        run_study(more, base, DEBUG_STUDY)

    # A study that searches train.amp (or a data field) compares those on purpose: nothing to hold it to.
    path = tmp_path / "amp_study.yaml"
    path.write_text(f"name: amp_study\nbase: {EXPERIMENTS / 'debug.yaml'}\nn_trials: 1\nsearch_space:\n"
                    "  train.amp: {type: categorical, choices: [off, auto]}\n"
                    "  data.image_size: {type: categorical, choices: [32, 48]}\n")
    assert study_identity(*load_study_spec(path)) == {}


def test_pareto_study_exports_the_front_and_the_best_dice_within_the_budget(store, tmp_path):
    """Three objectives (val Dice, parameters, latency): no pruner, the front as a table and a figure
    on the parent run, and the best spec is the rule's trial (best Dice within 200k parameters)."""
    spec, base = load_study_spec(DEBUG_PARETO)
    assert spec.pruner == "none" and spec.multi_objective
    study = run_study(spec, base, DEBUG_PARETO)
    assert study.metric_names == ["val/dice", "model/num_params", "model/latency_ms"]
    assert len(study.trials) == 4 and all(len(t.values) == 3 for t in study.trials)
    assert study.trials[0].params == {"model.base_width": 8, "train.lr": 0.01}  # the baseline
    client = MlflowClient(store)
    parent_id = study.user_attrs["mlflow_parent_run_id"]
    for trial in study.trials:  # each value is what the trial's run recorded
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert trial.values[1] == run.data.metrics["model/num_params"]
        assert trial.values[2] == pytest.approx(run.data.metrics["model/latency_ms"]) and trial.values[2] > 0
    front = list(csv.DictReader(open(client.download_artifacts(parent_id, "pareto_front.csv", str(tmp_path)))))
    assert sorted(int(r["trial"]) for r in front) == sorted(t.number for t in study.best_trials)
    assert "figures/pareto_front.png" in {a.path for a in client.list_artifacts(parent_id, "figures")}
    within = [t for t in study.best_trials if t.values[1] <= 200_000]
    chosen = max(within, key=lambda t: t.values[0])
    tags = client.get_run(parent_id).data.tags
    assert tags["best.trial"] == str(chosen.number)
    best_spec = load_spec(tmp_path / "experiments" / "generated" / "debug_pareto-best.yaml")
    assert best_spec.model.base_width == chosen.params["model.base_width"]


def test_multi_objective_study_refuses_a_pruner_and_checks_its_objectives(tmp_path):
    with pytest.raises(SpecError, match="Optuna does not prune multi-objective studies"):
        load_study_spec(DEBUG_PARETO, ["pruner=median"])
    with pytest.raises(SpecError, match="one direction per metric"):
        load_study_spec(DEBUG_PARETO, ["directions=[maximize]"])
    with pytest.raises(SpecError, match="test/dice"):
        load_study_spec(DEBUG_PARETO, ["metrics=[test/dice, model/num_params, model/latency_ms]"])
    with pytest.raises(SpecError, match="is not an objective"):
        load_study_spec(DEBUG_PARETO, ["best={metric: val/iou}"])


def test_parallel_workers_sample_with_multivariate_tpe_and_a_constant_liar():
    spec, _ = load_study_spec(DEBUG_STUDY, ["sampler=tpe"])
    shared = study_module.sampler_for(spec, 1, 2)
    assert shared._multivariate is True and shared._constant_liar is True  # set, not left to the version's defaults
    assert study_module.describe_sampler(shared) == "TPESampler(multivariate, constant_liar)"


def test_the_baseline_is_left_out_when_the_base_spec_lies_outside_the_space(store, tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(f"name: s\nbase: {EXPERIMENTS / 'debug.yaml'}\nset: {{train.epochs: 1}}\nn_trials: 1\n"
                    "pruner: none\nsearch_space:\n  train.lr: {type: float, low: 0.1, high: 0.5}\n")
    spec, base = load_study_spec(path)
    assert study_module.baseline_params(spec, base) == ({"train.lr": 0.01}, ["train.lr=0.01"])
    study = run_study(spec, base, path)
    assert "baseline not enqueued: train.lr=0.01" in capsys.readouterr().err
    assert 0.1 <= study.trials[0].params["train.lr"] <= 0.5
    off, _ = load_study_spec(DEBUG_STUDY, ["enqueue_baseline=false"])
    assert not off.enqueue_baseline


@pytest.mark.filterwarnings("ignore:.*RetryHeartbeatStaleTrialCallback is experimental")
def test_a_trial_failed_as_stale_meanwhile_stops_and_its_run_ends_killed(store, monkeypatch, capsys):
    """A worker away past the grace period (suspended, partitioned) finds its trial failed as stale and
    retried by another: at its next epoch boundary it stops, ends its MLflow run KILLED tagged
    superseded_by the retry, writes nothing more, and goes on with the study. The store then holds one
    FINISHED run per COMPLETE trial."""
    from harness.engine import loop
    from harness.sweeps.study.storage import RetryStaleTrial, storage_for

    spec, base = load_study_spec(DEBUG_STUDY, ["n_trials=2"])
    real, failed = loop.run_epoch, []

    def run_epoch(p, s, epoch, upcoming):
        if epoch == 2 and not failed:  # what fail_stale_trials does on another worker, once the heartbeat is old
            study = optuna.load_study(study_name=spec.name, storage=storage_for(spec))
            (trial,) = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
            study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
            RetryStaleTrial(max_retry=1)(study, study._storage.get_trial(trial._trial_id))
            failed.append(trial.number)
        return real(p, s, epoch, upcoming)

    monkeypatch.setattr(loop, "run_epoch", run_epoch)
    study = run_study(spec, base, DEBUG_STUDY)
    states = [t.state.name for t in study.trials]
    assert states == ["FAIL", "COMPLETE", "COMPLETE"] and failed == [0]
    assert study.trials[1].system_attrs["failed_trial"] == 0  # the retry
    client = MlflowClient(store)
    runs = {int(r.data.tags["optuna.trial"]): r for r in _children(client, study.user_attrs["mlflow_parent_run_id"])}
    lost = runs[0]
    assert lost.info.status == "KILLED" and lost.data.tags["superseded_by"] == "trial 1"
    assert [m.step for m in client.get_metric_history(lost.info.run_id, "val/dice")] == [1]  # epoch 2 not written
    assert "test/dice" not in lost.data.metrics
    assert [runs[n].info.status for n in (1, 2)] == ["FINISHED", "FINISHED"]
    assert "[trial 0] stopped: trial 0 is FAIL in the study (failed as stale)" in capsys.readouterr().out
