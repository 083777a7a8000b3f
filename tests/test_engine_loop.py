"""The loop's guarantees: deterministic on CPU, early stopping, AMP resolution, channels_last."""

from __future__ import annotations

import pytest
import torch

from harness.build import build_parts, cpu_supports_bf16, resolve_amp, select_device
from harness.config.load import load_spec
from harness.run import run_experiment
from harness.tracking.base import NullTracker

from conftest import EXPERIMENTS


def _run(tmp_path, *overrides):
    spec = load_spec(EXPERIMENTS / "debug.yaml", list(overrides))
    return run_experiment(spec, NullTracker, checkpoint_root=tmp_path)


def test_same_seed_same_run_on_cpu(tmp_path):
    a = _run(tmp_path / "a", "train.epochs=2", "augment=flip")
    b = _run(tmp_path / "b", "train.epochs=2", "augment=flip")
    assert [h["val/dice"] for h in a.history] == [h["val/dice"] for h in b.history]
    assert [h["train/loss"] for h in a.history] == [h["train/loss"] for h in b.history]
    c = _run(tmp_path / "c", "train.epochs=2", "augment=flip", "seed=1")
    assert [h["train/loss"] for h in a.history] != [h["train/loss"] for h in c.history]


def test_results_do_not_depend_on_num_workers(tmp_path):
    # Each sample's augmentation is seeded from (epoch seed, index), not from a worker's RNG.
    a = _run(tmp_path / "a", "train.epochs=2", "augment=crop_flip")
    b = _run(tmp_path / "b", "train.epochs=2", "augment=crop_flip", "data.num_workers=2")
    assert [h["train/loss"] for h in a.history] == [h["train/loss"] for h in b.history]
    assert a.test == b.test


def test_early_stopping_stops_when_val_dice_stalls(tmp_path, monkeypatch):
    from harness.engine import loop as experiment

    scripted = iter([0.5, 0.6, 0.55, 0.58, 0.59, 0.7])
    real = experiment.evaluate

    def fake_evaluate(*args, prefix="val", **kwargs):
        stats = real(*args, prefix=prefix, **kwargs)
        if prefix == "val":
            stats.metrics["val/dice"] = next(scripted)
        return stats

    monkeypatch.setattr(experiment, "evaluate", fake_evaluate)
    result = _run(tmp_path, "train.epochs=6", "train.early_stopping_patience=3")
    assert len(result.history) == 5  # epochs 3, 4, 5 do not beat 0.6
    assert result.best_epoch == 2 and result.best_val_dice == 0.6


@pytest.mark.parametrize("overrides", [("train.channels_last=true", "train.amp=off"),
                                       ("train.amp=bf16", "train.loss=bce", "train.optimizer=sgd",
                                        "train.scheduler=plateau", "train.grad_clip=1.0")])
def test_variants_train_and_test(tmp_path, overrides):
    result = _run(tmp_path, "train.epochs=1", *overrides)
    assert 0.0 <= result.test["test/dice"] <= 1.0


def test_amp_resolution():
    cpu = torch.device("cpu")
    assert resolve_amp("off", cpu) is None
    assert resolve_amp("bf16", cpu) is torch.bfloat16
    assert resolve_amp("fp16", cpu) is torch.float16
    assert resolve_amp("auto", cpu) is (torch.bfloat16 if cpu_supports_bf16() else None)


def test_explicit_missing_device_is_an_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeError, match="no CUDA"):
        select_device("cuda")


def test_compile_mode_reaches_torch_compile(monkeypatch):
    """The spec's train.compile_mode is the mode the model is compiled with (no compile is run here)."""
    modes = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: modes.append(kw.get("mode")))
    for mode, expected in (("default", None), ("reduce-overhead", "reduce-overhead")):
        spec = load_spec(EXPERIMENTS / "debug.yaml", ["train.compile=true", f"train.compile_mode={mode}",
                                                      "data.synthetic_size=[24, 8]"])
        build_parts(spec, torch.device("cpu"))
        assert modes.pop() == expected


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_model_trains_and_keeps_plain_state_dict_keys(store, tmp_path, mode):
    """train.compile: true compiles in place; checkpoints keep the plain model's keys. On CPU,
    reduce-overhead has no CUDA graphs to record and must still train."""
    class Named(NullTracker):
        run_id = "compiled"

    spec = load_spec(EXPERIMENTS / "debug.yaml", ["train.epochs=1", "train.compile=true", "log_model=false",
                                                  f"train.compile_mode={mode}", "model.base_width=4",
                                                  "data.synthetic_size=[24, 8]"])
    result = run_experiment(spec, lambda p, t: Named(), checkpoint_root=tmp_path)
    assert 0 <= result.test["test/dice"] <= 1
    keys = torch.load(tmp_path / "compiled" / "best.pt", weights_only=True)["model"].keys()
    assert keys and not any("_orig_mod" in k for k in keys)


def test_threshold_auto_picks_the_best_grid_value_on_validation():
    """Logits put every foreground pixel at p = 0.27 and every background pixel at p = 0.22: only a
    threshold in between is perfect, and 0.25 is the one grid value there."""
    from harness.engine.step import StepConfig, choose_threshold

    masks = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    masks[:, :, 2:6, 2:6] = 1
    logits = torch.where(masks.bool(), torch.logit(torch.tensor(0.27)), torch.logit(torch.tensor(0.22))).float()

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return logits[: x.shape[0]]

    batches = [(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), masks, torch.arange(4))]
    threshold, dice = choose_threshold(Fixed(), batches, StepConfig(torch.device("cpu")))
    assert threshold == 0.25 and dice == pytest.approx(1.0)


def test_threshold_auto_is_logged_and_a_number_keeps_todays_record(store, tmp_path):
    from mlflow.tracking import MlflowClient

    from harness.tracking.base import RunOptions
    from harness.tracking.mlflow import MlflowTracker

    def run(*overrides):
        spec = load_spec(EXPERIMENTS / "debug.yaml", ["train.epochs=1", "log_model=false", *overrides])
        return run_experiment(spec, lambda p, t: MlflowTracker(spec.tracking, spec.name, p, t,
                                                               RunOptions(tracking_uri=store)),
                              checkpoint_root=tmp_path / "ck")

    auto = MlflowClient(store).get_run(run("eval.threshold=auto").run_id).data
    assert auto.params["eval.threshold"] == "auto"
    assert round(auto.metrics["eval/threshold"] / 0.05) * 0.05 == pytest.approx(auto.metrics["eval/threshold"])
    assert 0.05 <= auto.metrics["eval/threshold"] <= 0.95 and 0 <= auto.metrics["eval/val_dice_at_threshold"] <= 1
    fixed = MlflowClient(store).get_run(run("eval.threshold=0.5").run_id).data
    assert "eval/threshold" not in fixed.metrics


def test_the_fence_asks_again_when_its_first_answer_fails():
    """A worker woken from a pause inside a transaction finds its session ended by the server: the
    first question fails, the second (a new connection) says the claim was lost, and the fence stops
    the run before anything more is written. A storage that keeps failing stops nothing."""
    from harness.engine.loop import FENCE, Superseded

    answers = iter([ConnectionError("server closed the connection"), ("trial 2", "trial 1 is FAIL")])

    def verify():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    FENCE.hold(verify)
    try:
        with pytest.raises(Superseded, match="trial 1 is FAIL") as stopped:
            FENCE.check()
        assert stopped.value.run_tags == {"superseded_by": "trial 2"}
        FENCE.hold(lambda: 1 / 0)
        FENCE.check()  # no answer at all: training goes on (the heartbeat decides)
    finally:
        FENCE.release()
