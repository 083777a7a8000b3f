"""The run queries that resume, campaigns and studies share: which earlier run of a spec finished
it, which unfinished one can be resumed, and why another cannot. Reads the store through
`harness.tracking.mlflow`; the tags compared are `base.RUN_IDENTITY_TAGS`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.engine.checkpoint import LAST, PREV, is_active
from harness.tracking import base
from harness.tracking.mlflow import find_runs, run_tags

__all__ = ["find_runs", "find_resumable", "pick_resumable", "run_differences"]


def run_differences(run_id: str, tags: dict[str, Any]) -> list[str]:
    """'amp.dtype bfloat16 (now float32)' for each RUN_IDENTITY_TAGS value run `run_id` has and `tags` change."""
    return base.tag_differences(run_tags(run_id), tags)


def find_resumable(experiment: str, spec_hash: str, checkpoint_root: Path,
                   where_set: dict[str, str] | None = None) -> str | None:
    """Newest unfinished run (RUNNING, KILLED, FAILED) of this spec hash that has a checkpoint
    and is not held by a live process; None if there is none. `where_set`: identity tags
    (RUN_IDENTITY_TAGS) the run must match where it has them, e.g. the precision it trained in."""
    for status in ("RUNNING", "KILLED", "FAILED"):
        for run_id in find_runs(experiment, {"spec_hash": spec_hash}, status, where_set=where_set):
            folder = checkpoint_root / run_id
            if ((folder / LAST).exists() or (folder / PREV).exists()) and not is_active(folder):
                return run_id
    return None


def pick_resumable(experiment: str, spec_hash: str, checkpoint_root: Path, identity: dict[str, str]) -> str | None:
    """find_resumable for a run with this `identity` (RUN_IDENTITY_TAGS); when only a run with
    another one could be resumed, say why it is not (a new run starts instead)."""
    if resume := find_resumable(experiment, spec_hash, checkpoint_root, identity):
        return resume
    if other := find_resumable(experiment, spec_hash, checkpoint_root):
        differ = ", ".join(run_differences(other, identity))
        print(f"not resuming unfinished run {other}: it trained with {differ}; starting a new run", flush=True)
    return None
