"""Checkpoints that survive any crash, and the RNG state that makes a resumed run identical.

`last.pt` is written atomically (temporary file, then rename); the one it replaces is kept as
`prev.pt`, so a checkpoint damaged on disk still leaves one to fall back to. Everything is
stored as tensors and plain Python values, so loading uses `weights_only=True`.
"""

from __future__ import annotations

import fcntl
import os
import random
from pathlib import Path

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


def _transforms(pipeline):
    stack = [pipeline] if pipeline is not None else []
    while stack:
        t = stack.pop(0)
        yield t
        stack.extend(getattr(t, "transforms", []) or [])


def capture_rng(loader_generator: torch.Generator, pipeline=None) -> dict:
    """Every random state the next epoch depends on, as plain values and tensors."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, keys.tolist(), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
        "loader": loader_generator.get_state(),
        "augment": [(t.random_generator.bit_generator.state, t.py_random.getstate()) for t in _transforms(pipeline)],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict, loader_generator: torch.Generator, pipeline=None) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    loader_generator.set_state(state["loader"])
    for t, (np_state, py_state) in zip(_transforms(pipeline), state["augment"]):
        t.random_generator.bit_generator.state = np_state
        t.py_random.setstate(py_state)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def hold_lock(folder: Path):
    """Hold an exclusive lock on the run's folder for this process's lifetime (released on any
    death, SIGKILL included). Returns the open file; keep a reference to it."""
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / LOCK, "w")
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return handle


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
