"""The benchmark runs and records every figure it promises (no timing assertions: it is not a test of speed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from harness.tools.bench import main

from conftest import EXPERIMENTS, REPO

KEYS = {"saved_activations_mib", "train_img_s", "minimal_img_s", "harness_over_minimal", "data_wait_frac",
        "eval_img_s", "mlflow_ms_per_epoch", "checkpoint_s", "checkpoint_block_s", "gflop_per_image",
        "achieved_tflops", "cold_cache_s", "warm_cache_s", "peak_mem_gib"}


@pytest.mark.parametrize("task", [[], ["data.num_classes=3", "data.target=trimap3", "train.loss=ce"]])
def test_bench_writes_every_figure(task, tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["--spec", str(EXPERIMENTS / "debug.yaml"), "data.synthetic_size=[24, 8]", *task, "--archs", "unet",
                 "--settings", "off", "--repeats", "1", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert KEYS <= set(row) and row["arch"] == "unet" and row["amp_dtype"] == "float32"
    assert row["train_img_s"] > 0 and row["minimal_img_s"] > 0 and 0 <= row["data_wait_frac"] < 1
    assert row["gflop_per_image"] > 0 and len(row["harness_epoch_s"]) == 1
    assert "min img/s" in capsys.readouterr().out


def test_bench_profile_prints_top_ops_and_saves_a_trace(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["--spec", str(EXPERIMENTS / "debug.yaml"), "data.synthetic_size=[24, 8]", "--archs", "unet",
                 "--settings", "off", "--repeats", "1", "--profile", "--out", str(out)]) == 0
    profile = json.loads(out.read_text())["profile"]
    assert profile["arch"] == "unet" and profile["steps"] == 2 and profile["epoch_ms"] > 0
    assert (tmp_path / "trace-unet-off.json.gz").stat().st_size > 0
    assert "aten::" in capsys.readouterr().out  # the op table


@pytest.mark.slow
def test_bench_auto_compile_setting_runs(tmp_path):
    out = tmp_path / "b.json"
    assert main(["--spec", str(EXPERIMENTS / "debug.yaml"), "data.synthetic_size=[24, 8]", "train.compile=true",
                 "train.compile_mode=reduce-overhead", "--archs", "unet", "--settings", "auto+compile",
                 "--repeats", "1", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["setting"] == "auto+compile" and row["train_img_s"] > 0
    assert row["compile_mode"] == "reduce-overhead"


def test_bench_profile_of_a_compile_setting_profiles_a_compiled_model(tmp_path, monkeypatch):
    """`--profile` with `auto+compile` last must profile the compiled model, not an eager one.
    compile_model is replaced by a recorder: this checks who gets compiled, not inductor."""
    import harness.tools.bench as bench

    compiled = []
    monkeypatch.setattr(bench, "compile_model", lambda model, mode="default": compiled.append(mode))
    assert main(["--spec", str(EXPERIMENTS / "debug.yaml"), "data.synthetic_size=[24, 8]", "--archs", "unet",
                 "--settings", "auto+compile", "--repeats", "1", "--profile", "--out", str(tmp_path / "b.json")]) == 0
    assert compiled == ["default", "default"]  # the benched model, then the profiled one (before: only the first)


@pytest.mark.slow
def test_gpu_check_script_runs_its_steps_on_cpu(tmp_path):
    """.gpu/check.sh is what a scarce GPU session runs in one call; a bench CLI change that breaks
    it (as argument order once did) must show up here, not there. Two of its steps, on CPU."""
    steps = ["b128_float32_upsample", "b128_bf16_upsample_profile"]
    env = {**os.environ, "PY": sys.executable, "SKIP_INSTALL": "1", "OUT": str(tmp_path), "DEADLINE": "500",
           "STEPS": " ".join(steps), "ARGS": "--device cpu --repeats 1",
           "SET": "data.dataset=synthetic data.synthetic_size=[16,8] data.image_size=32 train.batch_size=8 "
                  "data.num_workers=0"}
    done = subprocess.run(["bash", str(REPO / ".gpu" / "check.sh")], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.stem for p in tmp_path.glob("*.json")) == sorted(steps)
    for name in steps:
        (row,) = json.loads((tmp_path / f"{name}.json").read_text())["rows"]
        assert row["arch"] == "resnet34_unet" and row["train_img_s"] > 0
        assert f"{name:32s} batch    8" in done.stdout  # the summary line
    assert json.loads((tmp_path / f"{steps[1]}.json").read_text())["profile"]["steps"] > 0
