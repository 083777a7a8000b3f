"""Campaigns: a matrix of experiment runs, re-runnable until complete, never repeating work.

Every cell is an ordinary experiment run tagged `campaign`, `campaign.axes` and `cell.<field>`.
A cell whose spec hash already has a FINISHED run in the campaign, in the precision the cell
would train in here (`amp: auto` differs between machines) and on the data as it is now, is
skipped, and an interrupted cell resumes its run from its last checkpoint, so re-running a
campaign completes it. A failed cell does not stop the others; it is reported at the end.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from harness import paths
from harness.config.load import load_spec
from harness.config.sweeps import CampaignSpec
from harness.run import run_experiment, run_identity
from harness.tracking import store
from harness.tracking.base import Tracker, open_run


@dataclass
class CellResult:
    cell: dict
    status: str  # FINISHED (ran now) | SKIPPED (already finished) | FAILED | TO RUN, TO RESUME (dry run)
    run_id: str = ""
    test_dice: float | None = None
    error: str = ""


def _label(cell: dict) -> str:
    return ",".join(f"{k.split('.')[-1]}={v}" for k, v in cell.items())


def run_campaign(spec: CampaignSpec, base: Path, dry_run: bool = False) -> list[CellResult]:
    """Run every missing cell of the matrix. Returns one result per cell, in matrix order.
    `dry_run`: train nothing; each cell that would run is TO RUN (or TO RESUME, with the run id)."""
    experiment = spec.tracking or load_spec(base).tracking
    axes = ",".join(spec.axis_names())
    results = []
    cells = spec.cells()
    for i, cell in enumerate(cells, 1):
        exp = load_spec(base, spec.overrides(cell))
        exp.name = f"{spec.name}[{_label(cell)}]"
        tags = {"campaign": spec.name, "campaign.axes": axes, "campaign.cell": json.dumps(cell, sort_keys=True),
                **{f"cell.{k}": v for k, v in cell.items()}}
        made: list[Tracker] = []
        try:  # reading the data may fail (a bad file): the cell is FAILED, with no run made
            done, resume = _earlier_runs(experiment, spec.name, exp, f"[{i}/{len(cells)}] {exp.name}")
            if done or dry_run:
                results.append(CellResult(cell, "SKIPPED", done) if done else
                               CellResult(cell, "TO RESUME" if resume else "TO RUN", resume or ""))
                continue
            result = run_experiment(exp, _opener(experiment, exp, tags, resume, made))
            results.append(CellResult(cell, "FINISHED", result.run_id, result.test["test/dice"]))
        except KeyboardInterrupt:
            raise
        except Exception as err:  # recorded FAILED in MLflow by the tracker; keep going
            run_id = made[0].run_id if made else ""
            results.append(CellResult(cell, "FAILED", run_id, error=f"{type(err).__name__}: {err}"))
            print(f"    FAILED: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
    return results


def _opener(experiment: str, exp, tags: dict, resume: str | None, made: list[Tracker]):
    """run_experiment's make_tracker for the cell `exp`: opens its run (or reopens `resume`) with the
    cell's tags, and keeps the tracker in `made`, so a failure can still name the run."""
    def make_tracker(params, run_tags):
        made.append(open_run(experiment, exp.name, params, {**run_tags, **tags}, run_id=resume,
                             system_metrics=exp.log_system_metrics))
        return made[-1]
    return make_tracker


def _earlier_runs(experiment: str, campaign: str, exp, head: str) -> tuple[str | None, str | None]:
    """(the run that already finished this cell, or None; the interrupted run to resume, or None).

    A cell is its spec as trained here: a run counts only if it trained in the precision `amp`
    resolves to on this machine and on the data as it is now (`run_identity`)."""
    here = run_identity(exp)
    same = {"campaign": campaign, "spec_hash": exp.spec_hash()}
    if done := store.find_runs(experiment, same, "FINISHED", where_set=here):
        print(f"{head}: already finished as run {done[0]}, skipped", flush=True)
        return done[0], None
    if other := store.find_runs(experiment, same, "FINISHED"):
        head += (f": run {other[0]} finished it with {', '.join(store.identity_differences(other[0], here))}, "
                 "so the cell runs again; the report compares the two apart")
    resume = store.pick_resumable(experiment, exp.spec_hash(), paths.CHECKPOINTS, here)
    print(head + (f" (resuming run {resume})" if resume else ""), flush=True)
    return None, resume


def print_summary(spec: CampaignSpec, results: list[CellResult]) -> None:
    print(f"\ncampaign '{spec.name}': {len(results)} cells")
    for r in results:
        dice = f"test/dice {r.test_dice:.4f}" if r.test_dice is not None else ""
        print(f"  {r.status:<9} {_label(r.cell):<45} {r.run_id:<34} {dice}{r.error}")
    if planned := [r for r in results if r.status.startswith("TO ")]:
        print(f"dry run: {len(planned)} cell(s) would run, {len(results) - len(planned)} would not; nothing trained")
    failed = [r for r in results if r.status == "FAILED"]
    if failed:
        print(f"{len(failed)} cell(s) FAILED; re-run the same command to retry them (finished cells are skipped)")
