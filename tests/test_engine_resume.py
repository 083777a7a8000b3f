"""Resume after a crash: same MLflow run, no duplicated or missing steps, identical results on CPU."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from harness.config.load import load_spec
from harness.run import run_experiment
from harness.tracking.base import RunOptions
from harness.tracking.mlflow import MlflowTracker
from harness.tracking.store import find_resumable

from conftest import EXPERIMENTS

OVERRIDES = ["train.epochs=4", "augment=flip", "log_model=false"]


class Crash(KeyboardInterrupt):
    pass


def _run(store, root: Path, run_id=None, crash_at=None):
    spec = load_spec(EXPERIMENTS / "debug.yaml", OVERRIDES)

    def on_epoch(epoch, metrics):
        if epoch == crash_at:
            raise Crash(f"simulated crash after epoch {epoch}")

    make = lambda p, t: MlflowTracker(spec.tracking, spec.name, p, t,  # noqa: E731
                                      RunOptions(run_id=run_id, tracking_uri=store))
    return run_experiment(spec, make, checkpoint_root=root, on_epoch=on_epoch), spec


def _weights(path):
    return torch.load(path, weights_only=True)["model"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("straight")
    store = f"sqlite:///{tmp / 'mlflow.db'}"
    result, _ = _run(store, tmp / "ck")
    return result, _weights(tmp / "ck" / result.run_id / "best.pt")


def _resume_and_compare(store, root, uninterrupted):
    spec = load_spec(EXPERIMENTS / "debug.yaml", OVERRIDES)
    run_id = find_resumable(spec.tracking, spec.spec_hash(), root)
    assert run_id is not None
    result, _ = _run(store, root, run_id=run_id)
    expected, weights = uninterrupted
    assert result.run_id == run_id
    assert [h["val/dice"] for h in result.history] == [h["val/dice"] for h in expected.history]
    assert [h["train/loss"] for h in result.history] == [h["train/loss"] for h in expected.history]
    assert result.test == expected.test
    resumed = _weights(root / run_id / "best.pt")
    assert all(torch.equal(resumed[k], weights[k]) for k in weights)
    client = MlflowClient(store)
    assert client.get_run(run_id).info.status == "FINISHED"
    for key in ("val/dice", "train/loss", "lr"):
        assert [m.step for m in client.get_metric_history(run_id, key)] == [1, 2, 3, 4], key
    # The total counts every epoch of the run, not only the resumed process's; so the overhead
    # (this process's time outside epochs) stays positive.
    final = client.get_run(run_id).data.metrics
    epochs_s = sum(h["time/epoch_s"] for h in result.history)
    assert final["time/overhead_s"] > 0
    assert final["time/total_s"] == pytest.approx(epochs_s + final["time/overhead_s"])
    return run_id


def test_resume_after_interrupt_matches_uninterrupted_run(store, tmp_path, uninterrupted):
    with pytest.raises(Crash):
        _run(store, tmp_path / "ck", crash_at=2)
    _resume_and_compare(store, tmp_path / "ck", uninterrupted)


def test_corrupt_checkpoint_falls_back_to_previous(store, tmp_path, capsys, uninterrupted):
    with pytest.raises(Crash):
        _run(store, tmp_path / "ck", crash_at=3)
    (run_dir,) = (tmp_path / "ck").iterdir()
    last = run_dir / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 3])  # torn write
    _resume_and_compare(store, tmp_path / "ck", uninterrupted)
    out = capsys.readouterr().out
    assert f"checkpoint {last} is unreadable" in out and "prev.pt (epoch 2)" in out


@pytest.mark.slow  # 11 s on 2 cores: loader worker processes; resume without them stays in the default suite
def test_resume_with_loader_workers_trains_on_the_same_batches(store, tmp_path):
    # With workers, the next epoch's iterator (its order and augmentation seed) is drawn before
    # validation so that they prefetch; the checkpoint must hold the RNG state from before that
    # draw. The restarted workers' own RNG plays no part: each sample is seeded from the order's.
    spec = load_spec(EXPERIMENTS / "debug.yaml", ["train.epochs=3", "augment=crop_flip", "log_model=false",
                                                  "data.num_workers=2"])

    def make(run_id=None):
        return lambda p, t: MlflowTracker(spec.tracking, spec.name, p, t,
                                          RunOptions(run_id=run_id, tracking_uri=store))

    def crash(epoch, metrics):
        raise Crash(f"simulated crash after epoch {epoch}")

    straight = run_experiment(spec, make(), checkpoint_root=tmp_path / "straight")
    with pytest.raises(Crash):
        run_experiment(spec, make(), checkpoint_root=tmp_path / "ck", on_epoch=crash)
    run_id = find_resumable(spec.tracking, spec.spec_hash(), tmp_path / "ck")
    resumed = run_experiment(spec, make(run_id), checkpoint_root=tmp_path / "ck")
    assert [h["train/loss"] for h in resumed.history] == [h["train/loss"] for h in straight.history]
    assert resumed.test == straight.test


def test_resumed_run_that_had_early_stopped_does_not_announce_it_again(store, tmp_path, monkeypatch, capsys):
    from harness import run as experiment
    from harness.engine import loop

    spec = load_spec(EXPERIMENTS / "debug.yaml", ["train.epochs=6", "train.early_stopping_patience=2",
                                                  "log_model=false"])
    scripted = iter([0.5, 0.6, 0.55, 0.58])  # epochs 3 and 4 do not beat 0.6: stops after epoch 4
    real_evaluate, real_finish = loop.evaluate, experiment._finish

    def fake_evaluate(*args, prefix="val", **kwargs):
        stats = real_evaluate(*args, prefix=prefix, **kwargs)
        if prefix == "val":
            stats.metrics["val/dice"] = next(scripted)
        return stats

    def crash(*args, **kwargs):
        raise Crash("killed during the test evaluation")

    monkeypatch.setattr(loop, "evaluate", fake_evaluate)
    monkeypatch.setattr(experiment, "_finish", crash)
    make = lambda run_id: lambda p, t: MlflowTracker(spec.tracking, spec.name, p, t,  # noqa: E731
                                                     RunOptions(run_id=run_id, tracking_uri=store))
    with pytest.raises(Crash):
        run_experiment(spec, make(None), checkpoint_root=tmp_path)
    assert "early stopping: val/dice has not improved for 2 epochs" in capsys.readouterr().out
    monkeypatch.setattr(experiment, "_finish", real_finish)
    run_id = find_resumable(spec.tracking, spec.spec_hash(), tmp_path)
    result = run_experiment(spec, make(run_id), checkpoint_root=tmp_path)
    assert len(result.history) == 4 and result.run_id == run_id  # nothing re-trained
    assert "early stopping" not in capsys.readouterr().out
    assert MlflowClient(store).get_run(run_id).data.tags["early_stopped_epoch"] == "4"


def test_finished_run_is_not_resumed_and_keeps_only_best_weights(store, tmp_path):
    result, _ = _run(store, tmp_path / "ck")
    spec = load_spec(EXPERIMENTS / "debug.yaml", OVERRIDES)
    assert find_resumable(spec.tracking, spec.spec_hash(), tmp_path / "ck") is None
    # last.pt and prev.pt (the optimizer state, for resuming) are gone; the best weights stay
    assert sorted(p.name for p in (tmp_path / "ck" / result.run_id).glob("*.pt")) == ["best.pt"]


def test_interrupted_run_keeps_its_resume_checkpoints(store, tmp_path):
    with pytest.raises(Crash):
        _run(store, tmp_path / "ck", crash_at=2)
    (folder,) = (tmp_path / "ck").iterdir()
    assert {"best.pt", "last.pt", "prev.pt"} <= {p.name for p in folder.glob("*.pt")}


@pytest.mark.slow
def test_sigkill_then_same_command_resumes_the_same_run(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "NO_ALBUMENTATIONS_UPDATE": "1", "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-m", "harness", "experiment", str(EXPERIMENTS / "debug.yaml"), "train.epochs=6",
           "data.image_size=64", "data.synthetic_size=[160, 24]", "log_model=false"]

    def run(extra=(), tmp=tmp_path):
        uri = f"sqlite:///{tmp / 'mlruns' / 'mlflow.db'}"
        return subprocess.run([*cmd, *extra], cwd=tmp, env={**env, "MLFLOW_TRACKING_URI": uri},
                              capture_output=True, text=True, timeout=600)

    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    for line in proc.stdout:
        if line.startswith("epoch   2/6") or time.monotonic() > deadline:
            break
    time.sleep(0.5)  # now inside epoch 3
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    client = MlflowClient(store)
    (killed,) = client.search_runs([client.get_experiment_by_name("debug").experiment_id])
    assert killed.info.status == "RUNNING"  # SIGKILL cannot be caught: the next command finds it

    second = run()
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resuming unfinished run {killed.info.run_id}" in second.stdout
    runs = client.search_runs([client.get_experiment_by_name("debug").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    resumed = [m.value for m in sorted(client.get_metric_history(killed.info.run_id, "val/dice"), key=lambda m: m.step)]
    assert [m.step for m in client.get_metric_history(killed.info.run_id, "val/dice")] == [1, 2, 3, 4, 5, 6]

    (tmp_path / "straight").mkdir()
    straight = run(tmp=tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    other = MlflowClient(f"sqlite:///{tmp_path / 'straight' / 'mlruns' / 'mlflow.db'}")
    (ref,) = other.search_runs([other.get_experiment_by_name("debug").experiment_id])
    expected = [m.value for m in sorted(other.get_metric_history(ref.info.run_id, "val/dice"), key=lambda m: m.step)]
    assert resumed == expected

    third = run(["--restart"])  # on purpose: a new run, even though a finished one exists
    assert third.returncode == 0 and "resuming" not in third.stdout
    assert len(client.search_runs([client.get_experiment_by_name("debug").experiment_id])) == 2


def test_disk_full_during_checkpoint_write_keeps_previous_usable(store, tmp_path, monkeypatch, uninterrupted):
    import errno

    from harness.engine import checkpoint

    real_save = torch.save

    def save_or_fill_disk(obj, path, *args, **kwargs):
        if str(path).endswith("last.pt.tmp") and obj.get("epoch") == 3:
            with open(path, "wb") as f:  # a partial write, then the disk is full
                f.write(b"\x80\x02partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", save_or_fill_disk)
    with pytest.raises(OSError, match="No space left"):
        _run(store, tmp_path / "ck")
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    (run_dir,) = (tmp_path / "ck").iterdir()
    assert torch.load(run_dir / "last.pt", weights_only=True)["epoch"] == 2  # untouched by the failed write
    assert MlflowClient(store).get_run(run_dir.name).info.status == "FAILED"
    _resume_and_compare(store, tmp_path / "ck", uninterrupted)


def test_crash_during_validation_resumes_identically(store, tmp_path, monkeypatch, uninterrupted):
    from harness.engine import loop as experiment

    real_evaluate, calls = experiment.evaluate, []

    def evaluate_then_die(*args, prefix="val", **kwargs):
        calls.append(prefix)
        if calls.count("val") == 3:
            raise KeyboardInterrupt("killed during validation of epoch 3")
        return real_evaluate(*args, prefix=prefix, **kwargs)

    monkeypatch.setattr(experiment, "evaluate", evaluate_then_die)
    with pytest.raises(KeyboardInterrupt):
        _run(store, tmp_path / "ck")
    monkeypatch.setattr(experiment, "evaluate", real_evaluate)
    run_id = _resume_and_compare(store, tmp_path / "ck", uninterrupted)
    assert MlflowClient(store).get_run(run_id).data.tags["resumed_from_epoch"] == "2"


@pytest.mark.slow
@pytest.mark.parametrize("point", ["checkpoint_write", "validation"])
def test_sigkill_at_a_fault_point_then_resume_matches_uninterrupted(point, tmp_path, uninterrupted):
    """A real kill -9 inside torch.save of last.pt (epoch 3), or inside validation (epoch 3)."""
    store = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "NO_ALBUMENTATIONS_UPDATE": "1", "TQDM_DISABLE": "1"}
    cli = ["experiment", str(EXPERIMENTS / "debug.yaml"), *OVERRIDES]
    runner = Path(__file__).parent / "fault_runner.py"
    killed = subprocess.run([sys.executable, str(runner), point, "3", "--", *cli], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-2000:]
    assert "epoch   2/4" in killed.stdout and "epoch   4/4" not in killed.stdout  # epoch 3's line may be printed
    # before its checkpoint (written while epoch 4 trains) is on disk; its MLflow record is not: checked below
    (run_dir,) = (tmp_path / "mlruns" / "checkpoints").iterdir()
    if point == "checkpoint_write":
        assert (run_dir / "last.pt.tmp").stat().st_size > 0  # the torn write is on disk
    logged = MlflowClient(store).get_metric_history(run_dir.name, "val/dice")
    # An epoch is logged only once its checkpoint is written: never epoch 3; epoch 2's record may still have
    # been on its way (the writer's thread logs it after the write) when the kill landed, and the resume logs it.
    assert sorted(m.step for m in logged) in ([1], [1, 2])
    resumed = subprocess.run([sys.executable, "-m", "harness", *cli], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming unfinished run {run_dir.name}" in resumed.stdout
    assert "last.pt (epoch 2)" in resumed.stdout
    client = MlflowClient(store)
    expected, weights = uninterrupted
    for key in ("val/dice", "train/loss"):
        history = sorted(client.get_metric_history(run_dir.name, key), key=lambda m: m.step)
        assert [m.step for m in history] == [1, 2, 3, 4]
        assert [m.value for m in history] == [h[key] for h in expected.history]
    final = _weights(run_dir / "best.pt")
    assert all(torch.equal(final[k], weights[k]) for k in weights)
    assert client.get_run(run_dir.name).info.status == "FINISHED"


def test_a_run_is_continued_only_in_the_precision_it_began_in(store, tmp_path, capsys):
    # `amp: auto` is bf16 on a CPU with native bf16 and float32 on one without: a run killed on the one
    # machine must not be continued on the other, or its epochs would mix precisions under one tag.
    from harness.cli import main
    from harness.tracking.base import ResumeMismatch

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}  # main() installs its own
    root = tmp_path / "mlruns" / "checkpoints"  # where the CLI looks, from the store's folder
    with pytest.raises(Crash):
        _run(store, root, crash_at=1)
    spec = load_spec(EXPERIMENTS / "debug.yaml", OVERRIDES)
    client = MlflowClient(store)
    (killed,) = client.search_runs([client.get_experiment_by_name(spec.tracking).experiment_id])
    here = killed.data.tags["amp.dtype"]
    other = "bfloat16" if here != "bfloat16" else "float32"
    client.set_tag(killed.info.run_id, "amp.dtype", other)  # as if it began on the other kind of machine
    assert find_resumable(spec.tracking, spec.spec_hash(), root, {"amp.dtype": here}) is None
    assert find_resumable(spec.tracking, spec.spec_hash(), root, {"amp.dtype": other}) == killed.info.run_id
    assert find_resumable(spec.tracking, spec.spec_hash(), root) == killed.info.run_id  # precision not asked

    # Asked to continue it anyway, the tracker refuses before reopening the run: its record is untouched.
    with pytest.raises(ResumeMismatch, match=rf"amp.dtype {other} \(now {here}\)"):
        _run(store, root, run_id=killed.info.run_id)
    run = client.get_run(killed.info.run_id)
    assert run.info.status == "KILLED" and run.data.tags["amp.dtype"] == other
    assert "resumed_from_epoch" not in run.data.tags

    # The same command a user would re-run starts a new run, and says why it did not resume.
    try:
        assert main(["experiment", str(EXPERIMENTS / "debug.yaml"), *OVERRIDES]) == 0
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert f"not resuming unfinished run {killed.info.run_id}: it trained with amp.dtype {other} (now {here})" \
        in capsys.readouterr().out
    runs = {r.info.run_id: r for r in client.search_runs([run.info.experiment_id])}
    (new,) = set(runs) - {killed.info.run_id}
    assert runs[new].info.status == "FINISHED" and runs[new].data.tags["amp.dtype"] == here
    assert runs[killed.info.run_id].info.status == "KILLED"


def test_a_run_whose_data_changed_is_not_resumed(store, tmp_path, capsys):
    # The spec is the same, but an image was replaced after the run was killed: continuing it would
    # train its last epochs on other data than its first, under the new fingerprint alone.
    from harness.build import cached_data
    from harness.cli import main

    from conftest import write_pet_layout

    root = write_pet_layout(tmp_path / "pet", [f"pet_{i}" for i in range(10)], n_test=2, size=(32, 32))
    args = ["experiment", str(EXPERIMENTS / "debug.yaml"), "data.dataset=oxford_pet", f"data.root={root}",
            "train.epochs=3", "log_model=false", "data.val_fraction=0.25"]
    spec = load_spec(EXPERIMENTS / "debug.yaml", args[2:])

    def crash(epoch, metrics):
        raise Crash("killed after epoch 1")

    make = lambda p, t: MlflowTracker(spec.tracking, spec.name, p, t, RunOptions(tracking_uri=store))  # noqa: E731
    with pytest.raises(Crash):
        run_experiment(spec, make, checkpoint_root=tmp_path / "mlruns" / "checkpoints", on_epoch=crash)
    client = MlflowClient(store)
    (killed,) = client.search_runs([client.get_experiment_by_name(spec.tracking).experiment_id])
    (root / "images" / "pet_3.jpg").write_bytes((root / "images" / "pet_4.jpg").read_bytes())
    cached_data.cache_clear()  # the decoded data is memoised per process; the user's command is a new one

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}  # main() installs its own
    try:
        assert main(args) == 0
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    old_fp = killed.data.tags["data.fingerprint"]
    out = capsys.readouterr().out
    assert f"not resuming unfinished run {killed.info.run_id}: it trained with data.fingerprint {old_fp}" in out
    runs = {r.info.run_id: r for r in client.search_runs([killed.info.experiment_id])}
    (new,) = set(runs) - {killed.info.run_id}
    assert runs[new].info.status == "FINISHED" and runs[new].data.tags["data.fingerprint"] != old_fp
    assert "resumed_from_epoch" not in runs[new].data.tags
    assert runs[killed.info.run_id].info.status == "KILLED"
    assert runs[killed.info.run_id].data.tags["data.fingerprint"] == old_fp  # its record is as it was
