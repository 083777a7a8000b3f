"""Shared fixtures: an isolated MLflow store per test, and the shared data paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

REPO = Path(__file__).resolve().parent.parent
EXPERIMENTS = REPO / "experiments"
PET_MINI = (REPO.parent / "shared" / "data" / "oxford-pet-mini").resolve()


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh SQLite tracking store under tmp_path; the cwd moves there so mlruns/ lands there too."""
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    return uri


def require_pet_mini() -> Path:
    if not (PET_MINI / "annotations" / "trainval.txt").is_file():
        pytest.skip(f"Oxford-IIIT Pet mini set not found at {PET_MINI} (see shared/README.md)")
    return PET_MINI
