"""Measurements behind `make bench`, each on its own: FLOPs and saved activations of one training
step, the seconds a checkpoint costs, the dataset's cold- and warm-cache build times, inference
latency (a study objective), stored-size scoring and system metrics' cost."""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from harness.build import data_settings
from harness.config.catalog import DATASETS
from harness.data import DataSettings, build_data
from harness.engine import checkpoint
from harness.engine.step import StepConfig


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work, so a wall-clock interval covers it (no-op elsewhere)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def flops_per_image(model, images: torch.Tensor, cfg: StepConfig) -> float:
    """Forward + backward FLOPs of one training step, per image (torch.utils.flop_counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    x, _ = cfg.to_device(images, torch.zeros(1, 1, 1, 1, dtype=torch.uint8))
    with FlopCounterMode(display=False) as counter:
        with cfg.autocast():
            out = model(x)
        out.float().mean().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / images.shape[0]


def saved_activation_mib(model, images: torch.Tensor, cfg: StepConfig) -> float:
    """MiB of tensors the forward pass keeps for the backward pass, per batch: the activation
    memory that train.grad_checkpointing trades for recomputation (device-independent)."""
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    x, _ = cfg.to_device(images, torch.zeros(1, 1, 1, 1, dtype=torch.uint8))
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), cfg.autocast():
        out = model(x)
    out.float().mean().backward()
    model.zero_grad(set_to_none=True)
    return total[0] / 2**20


def data_times(spec) -> dict:
    """Seconds to build the dataset with an empty cache (decode) and again from it (load)."""
    with tempfile.TemporaryDirectory() as cache:
        settings = replace(data_settings(spec), cache_dir=cache)
        start = time.perf_counter()
        data = build_data(settings)
        cold = time.perf_counter() - start
        warm = None
        if DATASETS[settings.dataset].on_disk:  # generated data is never cached: a second build would only cost time
            start = time.perf_counter()
            build_data(settings)
            warm = time.perf_counter() - start
    return {"data": data, "cold_cache_s": round(cold, 2),
            "warm_cache_s": round(warm, 2) if warm is not None else None}


def checkpoint_times(model: torch.nn.Module, optimizer) -> tuple[float, float]:
    """(s for a synchronous write of last.pt, s the loop is blocked by the background writer)."""
    with tempfile.TemporaryDirectory() as tmp:
        state = {"epoch": 1, "model": model.state_dict(), "optimizer": optimizer.state_dict()}
        start = time.perf_counter()
        checkpoint.save_last(state, Path(tmp))
        sync_s = time.perf_counter() - start
        writer = checkpoint.AsyncWriter()
        for _ in range(2):  # the second epoch's copy reuses the first's host buffers, as every later one does
            start = time.perf_counter()
            writer.submit(Path(tmp), state, best=True)
            block_s = time.perf_counter() - start
            writer.wait()
    return sync_s, block_s


def scoring_ms(root: str, image_size: int, tolerance: float = 2.0) -> dict:
    """ms per test image of stored-size scoring (harness.engine.stored_size): the whole scorer (upsample,
    threshold, counts, NSD + HD95) and its boundary part alone, on `root`'s test split (oxford_pet
    layout). The logits are the training-size masks with noise, so outlines are realistic."""
    from harness.boundary import boundary_per_image
    from harness.engine.stored_size import StoredSizeScorer

    data = build_data(DataSettings("oxford_pet", root=root, image_size=image_size))
    test = data.test
    noise = torch.randn(len(test), 1, image_size, image_size, generator=torch.Generator().manual_seed(0))
    logits = torch.from_numpy(test.masks[:, None].astype("float32")) * 4 - 2 + noise
    scorer = StoredSizeScorer(test.stored, threshold=0.5, num_classes=2, tolerance=tolerance,
                              device=torch.device("cpu"))
    start = time.perf_counter()
    for lo in range(0, len(test), 32):
        scorer.update(logits[lo:lo + 32], torch.arange(lo, min(lo + 32, len(test))))
    scorer.result()
    whole = time.perf_counter() - start
    preds = [(torch.nn.functional.interpolate(logits[i:i + 1], size=test.stored[i].shape, mode="bilinear")[0, 0] > 0)
             .numpy() for i in range(len(test))]
    truths = [test.stored[i] > 0 for i in range(len(test))]
    start = time.perf_counter()
    boundary_per_image(preds, truths, tolerance)
    boundary = time.perf_counter() - start
    n = len(test)
    return {"images": n, "image_size": image_size, "scorer_s": round(whole, 2),
            "scorer_ms_per_image": round(1e3 * whole / n, 2), "boundary_ms_per_image": round(1e3 * boundary / n, 2)}


def inference_ms_per_image(spec, batch: int = 8, repeats: int = 10) -> float:
    """Milliseconds per image of inference for the spec's model at its image size: batch `batch`, on
    the spec's device in the precision `amp` resolves to there, the fastest of `repeats` timed batches
    after 2 warm-ups (the minimum: other work on the machine only ever adds time). The weights are
    random: latency does not depend on their values."""
    from harness.build import build_model, resolve_amp, select_device

    device = select_device(spec.train.device)
    model = build_model(spec).to(device).eval()
    amp = resolve_amp(spec.train.amp, device)
    size = spec.data.image_size
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    times = []
    with torch.inference_mode(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        for i in range(repeats + 2):
            sync(device)
            start = time.perf_counter()
            model(x)
            sync(device)
            if i >= 2:
                times.append(time.perf_counter() - start)
    return 1e3 * min(times) / batch


def system_metrics_cost(interval_s: float = 10.0) -> dict:
    """What log_system_metrics costs: seconds per sample (in a throwaway SQLite store) and the
    fraction of one core that is at MLflow's sampling interval; an epoch pays that fraction."""
    from harness.tracking.mlflow.tracker import system_metrics_sample_s

    with tempfile.TemporaryDirectory() as tmp:
        per = system_metrics_sample_s(f"sqlite:///{tmp}/mlflow.db")
    return {"sample_ms": round(1e3 * per, 2), "interval_s": interval_s,
            "share_of_one_core_pct": round(100 * per / interval_s, 3)}


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="ms per test image of stored-size scoring and of NSD/HD95; "
                                                 "with --system-metrics, the cost of MLflow's system metrics")
    parser.add_argument("root", nargs="?", help="an oxford_pet layout, e.g. ../shared/data/oxford-pet-mini")
    parser.add_argument("--image-size", type=int, default=128, help="training size the logits are at")
    parser.add_argument("--system-metrics", action="store_true", help="measure one system-metrics sample instead")
    args = parser.parse_args()
    if args.system_metrics:
        print(system_metrics_cost())
    elif args.root:
        print(scoring_ms(args.root, args.image_size))
    else:
        parser.error("give a dataset root, or --system-metrics")
