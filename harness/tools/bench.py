"""Benchmark of the harness's loop against a minimal hand-written loop: `make bench [SPEC=...]`.

For each registered model at the spec's data, size, batch and workers, and for each precision
setting, it measures (after one warm-up epoch; the median of --repeats timed epochs):

- harness epoch: `train_one_epoch` (the experiments' function, real DataLoader) + logging the
  epoch's metrics to MLflow (a temporary SQLite store) -> train images/s, data-wait share. As
  in the experiment loop, each epoch is followed by validation, during which the loader's
  workers already prepare the next epoch's first batches (validation is not timed);
- minimal epoch: the same model, optimizer, device and precision over the same batches already
  collated into tensors, with no tracking, no progress bar, no loader -> the ratio between them;
- evaluation images/s, peak memory (CUDA), MLflow ms per epoch, checkpoint write seconds and
  the seconds the loop blocks on one (the copy to host buffers; the write runs on a thread);
- the activation memory a training step keeps for backward (MiB per batch, any device): what
  train.grad_checkpointing saves;
- the dataset's cold-cache (decode) and warm-cache (load) times;
- FLOPs per image (torch.utils.flop_counter) and achieved TFLOP/s, with the share of the
  device's peak on known GPUs.

A benchmark, not a test: it asserts nothing. Prints a table and saves JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from harness import paths
from harness.build import Parts, build_parts, compile_model, dtype_name, list_models, resolve_amp, select_device
from harness.config.load import SpecError, load_spec
from harness.data import LoaderSettings, make_loader
from harness.data.loaders import start_epoch
from harness.engine.step import StepConfig, Update, evaluate, train_one_epoch
from harness.models import count_parameters
from harness.tools.measure import checkpoint_times, data_times, flops_per_image, saved_activation_mib, sync
from harness.tracking.base import RunOptions, open_run

SETTINGS = ("off", "auto", "bf16", "bf16+channels_last", "auto+compile")
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0}  # dense bf16 tensor core


def minimal_epoch(model, batches, optimizer, cfg: StepConfig, loss_fn) -> float:
    """The reference: nothing but transfer, forward, loss, backward and step. Returns seconds."""
    model.train()
    sync(cfg.device)
    start = time.perf_counter()
    for images, masks in batches:
        x = images.to(cfg.device, non_blocking=True).float().div_(255.0)
        y = masks.to(cfg.device, non_blocking=True)
        y = y[:, 0].long() if cfg.num_classes > 2 else y.float()
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(cfg.device.type, dtype=cfg.amp_dtype or torch.float32, enabled=cfg.amp_dtype is not None):
            logits = model(x)
        loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(cfg.device)
    return time.perf_counter() - start


def _training_parts(spec, data, device: torch.device, setting: str) -> Parts:
    """What an experiment builds (parts.build_parts), at a precision `setting`."""
    spec = spec.model_copy(deep=True)
    t = spec.train
    if setting == "bf16+channels_last":
        t.amp, t.channels_last = "bf16", True
    else:  # auto+compile: auto, with the model compiled by bench_one after its FLOPs are counted
        t.amp = setting.removesuffix("+compile")
        t.channels_last = t.amp == "auto" and resolve_amp("auto", device) is not None  # what amp: auto gets
    t.compile_mode, t.compile = "default", False  # bench_one compiles (in the caller's mode), after counting FLOPs
    torch.manual_seed(spec.seed)
    return build_parts(spec, device, data=data)


def profile_epoch(spec, data, *, device: torch.device, setting: str, out: Path) -> dict:
    """Where a training step's time goes: one profiled harness epoch of spec.model.arch after a warm-up
    epoch. Prints the ops with the most device (or CPU) self time, saves a Chrome trace (gzip) beside
    the JSON, and returns the device-busy share of the epoch (low = launch- or data-bound)."""
    from torch.profiler import ProfilerActivity, profile

    arch = spec.model.arch
    p = _training_parts(spec, data, device, setting)
    loader, update = p.loaders["train"], Update(p.optimizer, p.scaler)
    if setting.endswith("+compile"):  # _training_parts leaves compiling to the caller; the warm-up pays for it
        compile_model(p.model, spec.train.compile_mode)
    train_one_epoch(p.model, loader, p.loss_fn, update, p.cfg, desc="warm-up")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        train_one_epoch(p.model, loader, p.loss_fn, update, p.cfg, desc=f"profile {arch}")
        wall_us = (time.perf_counter() - start) * 1e6
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    averages = prof.key_averages()
    print(f"\nprofile: {arch} {setting}, one epoch of {len(loader)} steps; top ops by {key}")
    print(averages.table(sort_by=key, row_limit=18, max_name_column_width=60))
    kernels = [e for e in averages if e.device_type == torch.autograd.DeviceType.CUDA]  # not the ops that launch them
    busy_us = sum(e.self_device_time_total for e in kernels) if device.type == "cuda" else None
    out.parent.mkdir(parents=True, exist_ok=True)
    trace = out.with_name(f"trace-{arch}-{setting}.json.gz")
    prof.export_chrome_trace(str(trace))  # gzipped by torch, from the suffix
    summary = {"arch": arch, "setting": setting, "steps": len(loader), "epoch_ms": round(wall_us / 1e3, 1),
               "device_busy_share": round(busy_us / wall_us, 3) if busy_us is not None else None, "trace": str(trace)}
    print(f"profile summary: {summary}")
    return summary


def _tracker(tmp: str):
    return open_run("bench", "bench", {}, {}, RunOptions(tracking_uri=f"sqlite:///{tmp}/mlflow.db"))


@dataclass
class Epochs:
    """What the timed epochs of one model x precision measured, one value per epoch."""

    harness_s: list[float] = field(default_factory=list)  # train_one_epoch + logging its metrics
    minimal_s: list[float] = field(default_factory=list)  # minimal_epoch over the same batches
    waits: list[float] = field(default_factory=list)  # share of the harness epoch blocked on the loader
    log_s: list[float] = field(default_factory=list)  # logging the epoch's metrics to MLflow
    eval_rates: list[float] = field(default_factory=list)  # validation images/s


def timed_epochs(p: Parts, batches: list, tracker, *, repeats: int, desc: str, lr: float) -> Epochs:
    """One warm-up epoch (autotune, allocator, workers), then `repeats` harness epochs, each followed by
    validation and by a minimal epoch over `batches`: interleaved, so drifting clocks hit both alike."""
    loader, update, out = p.loaders["train"], Update(p.optimizer, p.scaler), Epochs()
    train_one_epoch(p.model, loader, p.loss_fn, update, p.cfg, desc="warm-up")
    upcoming = start_epoch(loader, 1) if loader.num_workers else None
    evaluate(p.model, p.loaders["val"], p.loss_fn, p.cfg)
    minimal_epoch(p.model, batches, p.optimizer, p.cfg, p.loss_fn)
    if p.cfg.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(p.cfg.device)
    for epoch in range(1, repeats + 1):
        start = time.perf_counter()
        stats = train_one_epoch(p.model, upcoming if upcoming is not None else start_epoch(loader, epoch), p.loss_fn,
                                update, p.cfg, desc=desc)
        logged = time.perf_counter()
        tracker.log_metrics({**stats.metrics, "lr": lr}, step=epoch)
        out.log_s.append(time.perf_counter() - logged)
        out.harness_s.append(time.perf_counter() - start)
        out.waits.append(stats.metrics["time/data_wait_frac"])
        # As the loop does: the workers start on the next epoch while this one validates.
        upcoming = start_epoch(loader, epoch + 1) if loader.num_workers else None
        out.eval_rates.append(evaluate(p.model, p.loaders["val"], p.loss_fn, p.cfg).metrics["throughput/val_img_s"])
        out.minimal_s.append(minimal_epoch(p.model, batches, p.optimizer, p.cfg, p.loss_fn))
    return out


def bench_one(setting: str, spec, data, *, device: torch.device, repeats: int, tracker) -> dict:
    """One model (spec.model.arch) x precision: harness vs minimal epochs (interleaved), eval, MLflow,
    checkpoint, FLOPs."""
    t, d = spec.train, spec.data
    p = _training_parts(spec, data, device, setting)
    model, cfg = p.model, p.cfg
    pin = device.type == "cuda"
    plain = make_loader(data.train, LoaderSettings(t.batch_size), shuffle=True, drop_last=True)
    batches = [(x.pin_memory() if pin else x, y.pin_memory() if pin else y) for x, y, _ in plain]
    flops = flops_per_image(model, batches[0][0][:2], cfg)  # eager: FLOPs are counted on the uncompiled model
    activations = saved_activation_mib(model, batches[0][0], cfg)
    if setting.endswith("+compile"):  # the warm-up epoch pays the compile time
        compile_model(model, t.compile_mode)
    e = timed_epochs(p, batches, tracker, repeats=repeats, desc=f"{spec.model.arch} {setting}", lr=t.lr)
    n_train = len(p.loaders["train"]) * t.batch_size
    ckpt_s, block_s = checkpoint_times(model, p.optimizer)
    harness, minimal = statistics.median(e.harness_s), statistics.median(e.minimal_s)
    achieved = flops * n_train / minimal / 1e12
    peak = next((v for k,
                 v in PEAK_TFLOPS.items() if device.type == "cuda" and k in torch.cuda.get_device_name(device)), None)
    return {
        "arch": spec.model.arch, "setting": setting, "amp_dtype": dtype_name(cfg.amp_dtype),
        "channels_last": cfg.channels_last, "compile_mode": t.compile_mode if setting.endswith("+compile") else None,
        "params": count_parameters(model), "image_size": d.image_size,
        "batch_size": t.batch_size, "num_workers": d.num_workers, "augment": str(spec.augment), "device": str(device),
        "images_per_epoch": n_train, "train_img_s": round(n_train / harness,
                                                          1), "minimal_img_s": round(n_train / minimal, 1),
        "harness_over_minimal": round(harness / minimal, 3), "data_wait_frac": round(statistics.median(e.waits), 4),
        "eval_img_s": round(statistics.median(e.eval_rates), 1),
        "mlflow_ms_per_epoch": round(1000 * statistics.median(e.log_s), 1),
        "mlflow_share": round(statistics.median(e.log_s) / harness, 4), "checkpoint_s": round(ckpt_s, 2),
        "checkpoint_block_s": round(block_s, 3),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
        "saved_activations_mib": round(activations, 1), "grad_checkpointing": spec.train.grad_checkpointing,
        "gflop_per_image": round(flops / 1e9, 2), "achieved_tflops": round(achieved, 3),
        "peak_share": round(achieved / peak, 3) if peak else None,
        "harness_epoch_s": [round(v, 3) for v in e.harness_s], "minimal_epoch_s": [round(v, 3) for v in e.minimal_s],
    }


COLUMNS = [("arch", 15, "arch"), ("setting", 19, "setting"), ("train_img_s", 8, "img/s"),
           ("minimal_img_s", 11, "min img/s"), ("harness_over_minimal", 7, "ratio"), ("data_wait_frac", 7, "wait"),
           ("eval_img_s", 8, "eval/s"), ("mlflow_ms_per_epoch", 11, "mlflow ms"), ("checkpoint_s", 8, "ckpt s"),
           ("checkpoint_block_s", 9, "blocks s"), ("peak_mem_gib", 6, "GiB"), ("saved_activations_mib", 10, "act MiB"),
           ("gflop_per_image", 10, "GFLOP/im"), ("achieved_tflops", 9, "TFLOP/s"), ("peak_share", 6, "peak")]


def table(rows: list[dict]) -> str:
    lines = ["".join(f"{title:>{w}}" if i > 1 else f"{title:<{w}}" for i, (_, w, title) in enumerate(COLUMNS))]
    for r in rows:
        lines.append("".join(f"{'-' if r[k] is None else r[k]:>{w}}" if i > 1 else f"{r[k]:<{w}}"
                             for i, (k, w, _) in enumerate(COLUMNS)))
    return "\n".join(lines)


def _bench_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="columns: img/s = harness train epoch incl. MLflow logging; ratio = harness / minimal epoch time; "
               "wait = share of the harness epoch blocked on the data loader; ckpt s = synchronous write of model + "
               "optimizer; blocks s = what the loop waits for per checkpoint (the copy to host buffers)")
    p.add_argument("--spec", type=Path, default=Path("experiments/base.yaml"),
                   help="experiment spec (data, size, batch)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="spec overrides, e.g. data.num_workers=2")
    p.add_argument("--archs", nargs="+", default=None, choices=list_models(),
                   help="default: every registered model that takes the spec's model knobs")
    p.add_argument("--settings", nargs="+", default=["off", "auto"], choices=SETTINGS,
                   help="precision: off = float32; auto = what amp: auto picks here (bf16 + channels_last on CUDA and "
                        "on CPUs with native bf16, else float32); auto+compile = auto with torch.compile in "
                        "train.compile_mode (give train.compile=true train.compile_mode=reduce-overhead for CUDA "
                        "graphs)")
    p.add_argument("--repeats", type=int, default=3, help="timed epochs per setting (median reported)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=paths.BENCH)
    p.add_argument("--profile", action="store_true",
                   help="also profile one epoch of the first model at the last setting (table + Chrome trace)")
    return p


def _variants(args) -> list:
    """The spec once per architecture asked for that takes the spec's model knobs (the others skipped)."""
    variants = {}
    for arch in args.archs or list_models():
        try:
            variants[arch] = load_spec(args.spec, [*args.overrides, f"model.arch={arch}"])
        except SpecError as err:
            print(f"skipping {arch}: {str(err).splitlines()[-1].strip()}")
    return list(variants.values())


def main(argv=None) -> int:
    args = _bench_parser().parse_args(argv)
    spec = load_spec(args.spec, args.overrides)
    device = select_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    times = data_times(spec)
    data = times.pop("data")  # decoded once for every model: the spec's data settings are shared
    rows = []
    variants = _variants(args)
    with tempfile.TemporaryDirectory() as tmp, _tracker(tmp) as tracker:
        for variant in variants:
            for setting in args.settings:
                rows.append({**bench_one(setting, variant, data, device=device, repeats=args.repeats,
                                         tracker=tracker), **times})
    profiled = None
    if args.profile and variants:
        profiled = profile_epoch(variants[0], data, device=device, setting=args.settings[-1], out=args.out)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"\n{args.spec} on {device} ({name}), torch {torch.__version__}, {spec.data.dataset} "
          f"{spec.data.image_size}px, batch {spec.train.batch_size}, num_workers {spec.data.num_workers}, "
          f"{rows[0]['images_per_epoch']} images/epoch")
    if any(s.endswith("+compile") for s in args.settings):
        print(f"+compile: torch.compile mode {spec.train.compile_mode}")
    print(f"dataset: cold cache {times['cold_cache_s']} s, warm cache {times['warm_cache_s'] or '-'} s")
    print(table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"spec": str(args.spec), "overrides": args.overrides, "torch": torch.__version__,
                                    "device": name, "rows": rows, "profile": profiled}, indent=2))
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
