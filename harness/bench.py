"""Throughput benchmark of the harness's own loop: `python -m harness.bench` (or `make bench`).

For each model and precision setting it times `train_one_epoch` and `evaluate` (the functions
the experiments use) on in-memory synthetic data, after one warm-up epoch, and prints images/s
and peak device memory. A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from harness.data import Split, make_loader
from harness.data.synthetic import make_split
from harness.losses import get_loss
from harness.models import count_parameters, create_model, list_models
from harness.train import StepConfig, evaluate, select_device, train_one_epoch

SETTINGS = {"fp32": (None, False), "bf16": (torch.bfloat16, False), "bf16+channels_last": (torch.bfloat16, True)}


def bench_one(arch: str, setting: str, split: Split, *, batch_size: int, device: torch.device,
              base_width: int, epochs: int) -> dict:
    dtype, channels_last = SETTINGS[setting]
    torch.manual_seed(0)
    model = create_model(arch, base_width=base_width).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    cfg = StepConfig(device, dtype, channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    loss_fn = get_loss("bce_with_logits")
    loader = make_loader(split, batch_size=batch_size, shuffle=True, pin_memory=device.type == "cuda",
                         num_workers=2 if device.type == "cuda" else 0, drop_last=True)
    train_one_epoch(model, loader, loss_fn, opt, scaler, cfg, desc="warm-up")  # cudnn autotune, allocator
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    train = [train_one_epoch(model, loader, loss_fn, opt, scaler, cfg, desc=f"{arch} {setting}") for _ in range(epochs)]
    train_s = time.perf_counter() - start
    val = evaluate(model, loader, loss_fn, cfg)
    return {
        "arch": arch, "setting": setting, "params": count_parameters(model), "batch_size": batch_size,
        "image_size": split.images.shape[1], "device": str(device),
        "train_img_s": round(epochs * (len(loader) * batch_size) / train_s, 1),
        "eval_img_s": round(val.metrics["throughput/val_img_s"], 1),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
        "last_train_loss": round(train[-1].metrics["train/loss"], 4),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archs", nargs="+", default=list_models(), choices=list_models())
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--images", type=int, default=256, help="synthetic images per epoch")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=2, help="timed epochs after one warm-up epoch")
    p.add_argument("--base-width", type=int, default=64, help="UNet base width")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=Path("bench/throughput.json"))
    args = p.parse_args(argv)
    device = select_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    images, trimaps, names = make_split(0, 0, args.images, args.image_size)
    split = Split(images, (trimaps != 2).astype("uint8"), names)
    rows = [bench_one(a, s, split, batch_size=args.batch_size, device=device, base_width=args.base_width,
                      epochs=args.epochs) for a in args.archs for s in args.settings]
    header = f"{'arch':<15}{'setting':<20}{'params':>11}{'train img/s':>13}{'eval img/s':>12}{'peak GiB':>10}"
    print(f"\ndevice {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"torch {torch.__version__}, {args.image_size}px, batch {args.batch_size}\n{header}")
    for r in rows:
        print(f"{r['arch']:<15}{r['setting']:<20}{r['params']:>11,}{r['train_img_s']:>13}{r['eval_img_s']:>12}"
              f"{r['peak_mem_gib'] if r['peak_mem_gib'] is not None else '-':>10}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
