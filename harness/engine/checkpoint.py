"""Checkpoints that survive any crash, and the RNG state that makes a resumed run identical.

`last.pt` is written atomically (temporary file, then rename); the one it replaces is kept as
`prev.pt`, so a checkpoint damaged on disk still leaves one to fall back to. Everything is
stored as tensors and plain Python values, so loading uses `weights_only=True`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import threading
from pathlib import Path
from typing import Callable

import numpy as np
import torch

LAST, PREV, BEST, LOCK = "last.pt", "prev.pt", "best.pt", ".lock"


def save_atomic(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_last(state: dict, folder: Path) -> None:
    """Write last.pt; the previous last.pt becomes prev.pt (both renames are atomic)."""
    tmp = folder / (LAST + ".tmp")
    torch.save(state, tmp)
    if (folder / LAST).exists():
        os.replace(folder / LAST, folder / PREV)
    os.replace(tmp, folder / LAST)


class AsyncWriter:
    """Writes an epoch's checkpoints on a background thread, so the next epoch trains meanwhile.

    `submit` copies the state into host buffers (allocated once, reused every epoch; pinned for
    CUDA tensors) and returns; training may then change the live tensors. At most one write is in
    flight: `submit` first waits for the previous one. `then` runs on the writer thread once the
    files are in place; the loop logs the epoch there, so a logged epoch always has its checkpoint.
    An error on the thread (a full disk, say) is raised by the next `submit` or `wait`.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._buffers: dict[str, torch.Tensor] = {}
        self._from_cuda = False  # set by _to_host: some tensor was copied from a GPU

    def _to_host(self, obj, key: str):
        if isinstance(obj, torch.Tensor):
            buf = self._buffers.get(key)
            if buf is None or buf.shape != obj.shape or buf.dtype != obj.dtype:
                buf = torch.empty(obj.shape, dtype=obj.dtype, pin_memory=obj.is_cuda)
                self._buffers[key] = buf
            self._from_cuda |= obj.is_cuda
            return buf.copy_(obj.detach(), non_blocking=obj.is_cuda)
        if isinstance(obj, dict):  # new containers: the live ones (history, param groups) keep changing
            return {k: self._to_host(v, f"{key}/{k}") for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(self._to_host(v, f"{key}/{i}") for i, v in enumerate(obj))
        return obj

    def submit(self, folder: Path, state: dict, *, best: bool, last: bool = True,
               then: Callable[[], None] | None = None) -> None:
        """Write `state` as last.pt (unless not `last`) and its model and epoch as best.pt when
        `best`, then call `then`. With neither, only `then` runs, still after earlier writes."""
        self.wait()
        if not last:  # only what best.pt holds needs a copy
            state = {"model": state["model"], "epoch": state["epoch"]} if best else {}
        self._from_cuda = False
        host = self._to_host(state, "")
        if self._from_cuda:
            torch.cuda.synchronize()  # the non-blocking copies into pinned buffers have landed
        self._thread = threading.Thread(target=self._write, args=(folder, host, best, last, then),
                                        name="checkpoint-writer", daemon=True)
        self._thread.start()

    def _write(self, folder: Path, host: dict, best: bool, last: bool, then) -> None:
        try:
            if best:
                save_atomic({"model": host["model"], "epoch": host["epoch"]}, folder / BEST)
            if last:
                save_last(host, folder)
            if then is not None:
                then()
        except BaseException as err:  # handed to the training thread by wait()
            self._error = err

    def wait(self) -> None:
        """Block until the write in flight (if any) is on disk; raise its error, if it had one."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            try:
                raise err
            finally:
                del err  # no frame <-> traceback cycle keeping the run's frames (model, optimizer) alive


def drop_resume_state(folder: Path) -> None:
    """Delete last.pt and prev.pt of a FINISHED run: they serve only to resume it, and hold the
    optimizer state (ResNet34-UNet with AdamW: 0.29 GB each, against 0.1 GB for best.pt), so a
    campaign of 30 runs would otherwise keep ~18 GB. best.pt stays."""
    for name in (LAST, PREV):
        (folder / name).unlink(missing_ok=True)


def load_latest(folder: Path) -> tuple[dict | None, list[str]]:
    """(state, messages): the newest checkpoint that loads, trying last.pt then prev.pt."""
    messages = []
    for name in (LAST, PREV):
        path = folder / name
        if not path.exists():
            continue
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or "epoch" not in state:
                raise ValueError("not a harness checkpoint")
        except Exception as err:  # truncated, corrupt, foreign: say so, try the older one
            messages.append(f"checkpoint {path} is unreadable ({type(err).__name__}: {str(err)[:200]})")
            continue
        messages.append(f"resuming from {path} (epoch {state['epoch']})")
        return state, messages
    return None, messages


def capture_rng(loader_generator: torch.Generator) -> dict:
    """Every random state the next epoch depends on, as plain values and tensors. Augmentation
    needs none of its own: each sample is seeded from the loader's order generator (SeededSampler)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, keys.tolist(), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
        "loader": loader_generator.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict, loader_generator: torch.Generator) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    loader_generator.set_state(state["loader"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def hold_lock(folder: Path):
    """Hold an exclusive lock on the run's folder while the `with` block runs (released on leaving it,
    and on any death, SIGKILL included), so `is_active` tells other processes the run is live."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield


def is_active(folder: Path) -> bool:
    """True while another live process holds the run's lock."""
    if not (folder / LOCK).exists():
        return False
    with open(folder / LOCK) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False
