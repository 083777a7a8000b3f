"""Every default location the harness reads or writes, relative to the working directory (the
repository root under `make`). Changing one here moves it everywhere.

- STORE: the MLflow store (SQLite `mlflow.db`, artifacts under `artifacts/`); MLFLOW_TRACKING_URI
  overrides the database.
- CHECKPOINTS: one folder per run id (last.pt, prev.pt, best.pt, .lock).
- CACHE: decoded datasets (data.cache_dir overrides it).
- OPTUNA: study journals, `<study>.journal` (a study's `storage` overrides it).
- GENERATED: specs written by studies (`<study>-best.yaml`).
- BENCH: `make bench`'s JSON.
"""

from __future__ import annotations

from pathlib import Path

STORE = Path("mlruns")
DATABASE = STORE / "mlflow.db"
CHECKPOINTS = STORE / "checkpoints"
CACHE = STORE / "cache"
OPTUNA = STORE / "optuna"
GENERATED = Path("experiments/generated")
BENCH = Path("bench/bench.json")


def journal(study: str) -> Path:
    """The default Optuna journal of a study."""
    return OPTUNA / f"{study}.journal"
