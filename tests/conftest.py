"""Shared fixtures: an isolated MLflow store per test, and the shared data paths."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

REPO = Path(__file__).resolve().parent.parent
EXPERIMENTS = REPO / "experiments"
PET_MINI = (REPO.parent / "shared" / "data" / "oxford-pet-mini").resolve()


# MLflow and Optuna mark deprecated APIs with FutureWarning, attributed to the caller (stacklevel);
# DeprecationWarning attributed to harness code is ours too. A library's own internal deprecations
# (SQLAlchemy's, raised inside mlflow) are not attributed to us, so they stay warnings.
DEPRECATIONS_ARE_ERRORS = [pytest.mark.filterwarnings("error::FutureWarning"),
                           pytest.mark.filterwarnings("error::DeprecationWarning:harness")]


def run_main(argv: list[str]) -> int:
    """harness.cli.main(argv) in-process, with the SIGINT/SIGTERM handlers it installs put back after."""
    import signal

    from harness.cli import main

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return main(argv)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def use_store(folder: Path, monkeypatch) -> str:
    """Point MLflow at a fresh SQLite store under `folder` and move the cwd there (so mlruns/ lands
    there too); `monkeypatch` undoes both. Module-scoped fixtures pass a pytest.MonkeyPatch()."""
    uri = f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(folder)
    return uri


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh SQLite tracking store under tmp_path (use_store)."""
    return use_store(tmp_path, monkeypatch)


def require_pet_mini() -> Path:
    if not (PET_MINI / "annotations" / "trainval.txt").is_file():
        pytest.skip(f"Oxford-IIIT Pet mini set not found at {PET_MINI} (see shared/README.md)")
    return PET_MINI


def write_pet_layout(root: Path, names: list[str], n_test: int = 1, size=(24, 20), trimap_value=None) -> Path:
    """A tiny dataset in the official Oxford-IIIT Pet layout; the last `n_test` names are the test split."""
    (root / "images").mkdir(parents=True)
    (root / "annotations" / "trimaps").mkdir(parents=True)
    rng = np.random.default_rng(0)
    width, height = size
    for name in names:
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(root / "images" / f"{name}.jpg")
        tri = np.full((height, width), 2, np.uint8)
        tri[5:15, 6:18] = 1
        tri[5, 6:18] = 3
        if trimap_value is not None:
            tri[0, 0] = trimap_value
        Image.fromarray(tri).save(root / "annotations" / "trimaps" / f"{name}.png")
    (root / "annotations" / "trainval.txt").write_text("".join(f"{n} 1 1 1\n" for n in names[:-n_test]))
    (root / "annotations" / "test.txt").write_text("".join(f"{n} 1 1 1\n" for n in names[-n_test:]))
    return root
