"""Run the harness CLI with a fault that SIGKILLs the process at a chosen point (tests only).

usage: python tests/fault_runner.py checkpoint_write|validation EPOCH -- <harness cli args>
  checkpoint_write: half of last.pt.tmp of EPOCH is on disk when the process dies;
  validation: the process dies after the first validation batch of EPOCH.
"""

from __future__ import annotations

import io
import os
import signal
import sys

import torch

from harness.engine import loop as experiment


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def kill_in_checkpoint_write(epoch: int) -> None:
    real = torch.save

    def save(obj, path, *args, **kwargs):
        if str(path).endswith("last.pt.tmp") and obj.get("epoch") == epoch:
            buffer = io.BytesIO()
            real(obj, buffer, *args, **kwargs)
            with open(path, "wb") as f:
                f.write(buffer.getvalue()[: buffer.tell() // 2])
                f.flush()
                os.fsync(f.fileno())
            die()
        return real(obj, path, *args, **kwargs)

    torch.save = save


class _DieAfterFirstBatch:
    def __init__(self, loader):
        self.loader = loader

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i == 1:
                die()
            yield batch


def kill_in_validation(epoch: int) -> None:
    real, seen = experiment.evaluate, [0]

    def evaluate(model, loader, *args, prefix="val", **kwargs):
        if prefix == "val":
            seen[0] += 1
            if seen[0] == epoch:
                loader = _DieAfterFirstBatch(loader)
        return real(model, loader, *args, prefix=prefix, **kwargs)

    experiment.evaluate = evaluate


if __name__ == "__main__":
    point, epoch, sep, *cli = sys.argv[1:]
    assert sep == "--", __doc__
    {"checkpoint_write": kill_in_checkpoint_write, "validation": kill_in_validation}[point](int(epoch))
    from harness.cli import main

    sys.exit(main(cli))
