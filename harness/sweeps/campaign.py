"""Campaigns: a matrix of experiment runs, re-runnable until complete, never repeating work.

Every cell is an ordinary experiment run tagged `campaign`, `campaign.axes` and `cell.<field>`.
A cell whose spec hash already has a FINISHED run in the campaign, in the precision the cell
would train in here (`amp: auto` differs between machines) and on the data as it is now, is
skipped, and an interrupted cell resumes its run from its last checkpoint, so re-running a
campaign completes it. A failed cell does not stop the others; it is reported at the end.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from harness import paths
from harness.config.load import load_spec
from harness.config.sweeps import CampaignSpec
from harness.engine.loop import STOP, Superseded
from harness.run import run_experiment, run_identity
from harness.sweeps.queue import CellQueue, StorageLost, cell_key, storage_for_campaign
from harness.tracking import store
from harness.tracking.base import RunOptions, Tracker, open_run
from harness.tracking.mlflow import run_metrics


@dataclass
class CellResult:
    cell: dict
    status: str  # FINISHED (ran now) | SKIPPED (already finished) | FAILED | KILLED (stopped; resumable)
    #              | TO RUN, TO RESUME (dry run)
    #              | NOT NEEDED (a sequential campaign stopped before its block)
    run_id: str = ""
    test_dice: float | None = None
    error: str = ""


def _label(cell: dict) -> str:
    return ",".join(f"{k.split('.')[-1]}={v}" for k, v in cell.items())


def _cell_spec(spec: CampaignSpec, base: Path, cell: dict):
    exp = load_spec(base, spec.overrides(cell))
    exp.name = f"{spec.name}[{_label(cell)}]"
    return exp


def run_campaign(spec: CampaignSpec, base: Path, dry_run: bool = False, *, workers: int = 1,
                 storage_url: str | None = None, launch=None) -> list[CellResult]:
    """Run every missing cell of the matrix. Returns one result per cell, in matrix order.

    Cells without a FINISHED run are queued in the campaign's Optuna storage (harness.sweeps.queue:
    a journal under mlruns/optuna/, or `storage_url`), then `workers` workers claim and run them, each
    cell handed out once: this process when 1, else `launch(workers)`, which starts them and returns
    True once they have stopped, or False when they run on their own (SLURM): then [] is returned.
    `dry_run`: train and queue nothing; a cell that would run is TO RUN (or TO RESUME, with the run id)."""
    experiment = spec.tracking or load_spec(base).tracking
    # The queue's storage first: one that cannot be opened is a one-line error before anything is read.
    storage = None if dry_run else storage_for_campaign(spec.name, storage_url)
    cells, results, todo = spec.cells(), {}, []
    for i, cell in enumerate(cells, 1):
        if _not_needed(spec, cell):
            results[i] = CellResult(cell, "NOT NEEDED")  # past the design's last block: never queued
            continue
        try:  # reading the data may fail (a bad file): the cell is FAILED, with no run made
            done, resume = _earlier_runs(experiment, spec.name, _cell_spec(spec, base, cell),
                                         f"[{i}/{len(cells)}] {spec.name}[{_label(cell)}]")
        except Exception as err:
            results[i] = CellResult(cell, "FAILED", error=f"{type(err).__name__}: {err}")
            print(f"    FAILED: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
            continue
        if done or dry_run:
            results[i] = (CellResult(cell, "SKIPPED", done) if done else
                          CellResult(cell, "TO RESUME" if resume else "TO RUN", resume or ""))
        else:
            todo.append(cell)
    if dry_run and spec.sequential:  # a design the record has stopped trains no later block
        try:
            verdict = look(spec)
        except RuntimeError as err:  # the listing still prints; it says why it could not look
            print(f"no look taken: {err}", file=sys.stderr, flush=True)
            verdict = None
        results = {i: CellResult(r.cell, "NOT NEEDED") if r.status.startswith("TO ") and _not_needed(
            spec, r.cell, verdict) else r for i, r in results.items()}
    if dry_run or not todo:
        return [results[i] for i in range(1, len(cells) + 1)]
    queue = CellQueue(spec.name, storage, worker_name(0), spec.stale_after_s)
    verdict = look(spec)  # a sequential campaign's looks on the record so far; None for a fixed design
    if verdict and verdict["stop"]:
        todo = []  # the record already stops it (a re-run): nothing more is trained
    # Workers claim in this order (a cell queued again keeps its place): a sequential campaign's blocks
    # in look order, so its early looks are not held up by later blocks.
    orders = [spec.block_of(c) if verdict else cells.index(c) for c in todo]
    queued = queue.enqueue(todo, orders)
    print(f"queued {len(queued)} of {len(todo)} cell(s) to run in campaign:{spec.name} "
          f"({storage_url or paths.OPTUNA / f'campaign-{spec.name}.journal'}); {workers} worker(s)", flush=True)
    ran = {}
    if todo and launch is not None:
        if not launch(workers):
            return []
    elif todo and workers == 1:
        ran = work(spec, base, queue)
    elif todo:
        raise ValueError("more than one worker needs a launcher (harness.sweeps.launch)")
    if todo and verdict:
        verdict = look(spec)
    stop = verdict["look"] if verdict and verdict["stop"] else None
    return [results.get(i) or ran.get(cell_key(cell)) or _recorded(experiment, spec, base, cell, stop)
            for i, cell in enumerate(cells, 1)]


def _not_needed(spec: CampaignSpec, cell: dict, verdict: dict | None = None) -> bool:
    """A sequential campaign's cell that is never trained: past its last block, or past the look
    `verdict` (look()'s) stopped it at."""
    if spec.sequential is None:
        return False
    block = spec.block_of(cell)
    return block > spec.last_block() or bool(verdict and verdict["stop"] and block > verdict["look"])


def look(spec: CampaignSpec) -> dict | None:
    """A sequential campaign's looks on the record so far (python -m analysis.sequential --look: a pure
    function of the FINISHED runs, never of this process's state): {stop, look, recorded, decisions}.
    Look k is taken once blocks 1..k have all FINISHED, whichever worker ran them, so with workers
    the looks are still taken in block order. None for a campaign that is not sequential."""
    if (seq := spec.sequential) is None:
        return None
    blocks = spec.blocks()[: spec.last_block()]
    out = subprocess.run([sys.executable, "-m", "analysis.sequential", "--look", spec.name, "--delta", str(seq.delta),
                          "--max-blocks", str(len(blocks)), "--spending", seq.spending, "--min-blocks",
                          str(seq.min_blocks), "--blocks", json.dumps(blocks),
                          "--per-block", str(len(spec.cells()) // len(spec.blocks()))],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"a look at campaign {spec.name} failed: {out.stderr.strip()[-500:]}")
    try:
        verdict = json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError) as err:  # no line, or not JSON: the same failure, said the same way
        raise RuntimeError(f"a look at campaign {spec.name} printed no verdict: {out.stdout.strip()[-300:]!r}") from err
    verdict["stop"] = verdict["stop"] or verdict["recorded"] >= len(blocks)  # the last look ends it anyway
    return verdict


def _decision(d: dict) -> str:
    """One decision of a look (analysis.sequential --look's JSON) as '<metric> B vs A: <verdict>'."""
    return f"{d['metric']} {d['arms'][1]} vs {d['arms'][0]}: {d['verdict']}"


def _print_look(spec: CampaignSpec, verdict: dict, who: str) -> None:
    for d in verdict["decisions"]:
        print(f"[{who}] look {d['look']}: {_decision(d)} (p {d['p']:.3g} < {d['level']:.3g})", flush=True)
    for d in verdict.get("pending", []):  # an undecided look says so: its verdict is the p and boundary it missed
        print(f"[{who}] {_decision(d)}", flush=True)
    if verdict["stop"]:
        last = spec.last_block()
        print(f"[{who}] campaign {spec.name}: " + (f"every comparison decided at look {verdict['look']}: stopping "
              f"({last - verdict['look']} block(s) not needed)" if verdict["look"] < last else
              f"the last look ({last}) is taken"), flush=True)


def _after_cell(spec: CampaignSpec, queue: CellQueue, seen: dict) -> None:
    """A sequential campaign after a cell finished: take the looks the record now allows and print their
    new decisions; once a look stops the campaign, the WAITING cells of later blocks leave the queue
    (NOT NEEDED). Cells other workers hold may finish; they change no decision (look k reads blocks
    1..k only). `seen`: this worker's last look printed, and whether it has stopped."""
    try:
        verdict = look(spec)
    except RuntimeError as err:  # a look that failed (the store busy, a signal) is taken after the next cell
        print(f"[{queue.worker}] {err}; looking again after the next cell", flush=True)
        return
    if verdict["look"] > seen["look"] or verdict["stop"] and not seen["stopped"]:
        new = dict(verdict, decisions=[d for d in verdict["decisions"] if d["look"] > seen["look"]])
        _print_look(spec, new, queue.worker)
        seen["look"] = verdict["look"]
    if verdict["stop"] and not seen["stopped"]:
        seen["stopped"] = True
        if dropped := queue.drop([cell_key(c) for c in spec.cells() if spec.block_of(c) > verdict["look"]]):
            print(f"[{queue.worker}] {dropped} queued cell(s) not needed", flush=True)


def worker_name(index: int) -> str:
    return f"{socket.gethostname()}:{os.getpid()}#{index}"


def run_campaign_worker(spec: CampaignSpec, base: Path, storage_url: str | None, index: int) -> dict[str, CellResult]:
    """One worker process (--worker-index, a SLURM array task): claim and run cells until none is left."""
    queue = CellQueue(spec.name, storage_for_campaign(spec.name, storage_url), worker_name(index), spec.stale_after_s)
    return work(spec, base, queue)


def print_status(spec: CampaignSpec, base: Path, storage_url: str | None) -> None:
    """Each cell: FINISHED (its run), RUNNING (the worker holding it, its last heartbeat), WAITING,
    FAILED, NOT NEEDED (a sequential campaign stopped first) or not queued; read from MLflow and the
    campaign's storage."""
    experiment = spec.tracking or load_spec(base).tracking
    queue = CellQueue(spec.name, storage_for_campaign(spec.name, storage_url), worker_name(0), spec.stale_after_s)
    latest, now, stale = queue.states(), time.time(), {t.number for t in queue.stale()}
    try:
        verdict = look(spec)
    except RuntimeError as err:  # the look failed: the cells still print, the design line says why
        verdict = str(err)
    counts: dict[str, int] = {}
    for i, cell in enumerate(spec.cells(), 1):
        exp = _cell_spec(spec, base, cell)
        done = store.find_runs(experiment, {"campaign": spec.name, "spec_hash": exp.spec_hash()}, "FINISHED")
        trial = latest.get(cell_key(cell))
        state = "FINISHED" if done else (trial.state.name if trial else "NOT QUEUED")
        state = {"COMPLETE": "FINISHED", "FAIL": "FAILED"}.get(state, state)
        dropped = bool(trial and trial.user_attrs.get("not_needed"))
        if state in ("WAITING", "FAILED", "NOT QUEUED") and (dropped or _not_needed(
                spec, cell, verdict if isinstance(verdict, dict) else None)):
            state = "NOT NEEDED"  # a sequential campaign stopped before its block, or it is past the design
        if state == "RUNNING":
            state = "STALE" if trial.number in stale else "RUNNING"  # the queue's own rule (with its margin)
        where = done[0] if done else (f"{trial.user_attrs.get('worker', '')} heartbeat "
                                      f"{now - trial.user_attrs.get('heartbeat', now):.0f} s ago"
                                      if trial and trial.state.name == "RUNNING" else "")
        counts[state] = counts.get(state, 0) + 1
        print(f"  {f'[{i}/{len(spec.cells())}]':>9} {state:<10} {_label(cell):<45} {where}")
    print(f"campaign '{spec.name}': " + ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())))
    if spec.sequential:
        print(_sequential_status(spec, verdict))


def _sequential_status(spec: CampaignSpec, verdict: dict | str) -> str:
    """Where a sequential campaign stands: complete blocks, the looks taken and their decisions
    (`verdict`: look()'s, or why it failed)."""
    seq, last = spec.sequential, spec.last_block()
    head = f"sequential ({seq.spending}, delta +-{seq.delta:g}, at most {last} blocks): "
    if isinstance(verdict, str):
        return head + verdict
    done = f"{verdict['recorded']} of {last} blocks complete; "  # look() counts blocks 1..last only
    if not verdict["look"]:
        return head + done + f"the first look is taken after block {seq.min_blocks}"
    decided = "; ".join(f"{_decision(d)} at look {d['look']}" for d in verdict["decisions"]) or \
        "no comparison decided yet"
    state = f"stopped at look {verdict['look']}" if verdict["stop"] else f"looked at block {verdict['look']}"
    return head + done + f"{state}; {decided}"


def work(spec: CampaignSpec, base: Path, queue: CellQueue, poll_s: float = 2.0) -> dict[str, CellResult]:
    """Claim and run cells until none is waiting or held; hand on the cells of workers whose claim
    went stale (they died), so their runs resume here. Returns this worker's results by cell key."""
    experiment = spec.tracking or load_spec(base).tracking
    cells = {cell_key(c): (i, c) for i, c in enumerate(spec.cells(), 1)}
    who, ran, seen = queue.worker, {}, {"look": 0, "stopped": False}
    while True:
        if STOP.requested:  # a signal between cells: claim nothing more
            raise KeyboardInterrupt(f"{STOP.requested}: stopped between cells")
        claim = queue.claim()
        if claim is None:
            handed = [t for t in queue.stale() if queue.hand_on(t)]
            for t in handed:
                print(f"[{who}] handed on {_label(json.loads(t.user_attrs['cell']))}: the claim of "
                      f"{t.user_attrs.get('worker', '?')} went stale (no heartbeat for {queue.stale_after:.0f} s)",
                      flush=True)
            if not handed and not queue.running():
                return ran
            time.sleep(0 if handed else poll_s)
            continue
        i, cell = cells[claim.cell]
        print(f"[{who}] claimed [{i}/{len(cells)}] {_label(cell)}", flush=True)
        try:
            with queue.holding(claim):
                result = _run_cell(spec, base, experiment, cell, f"[{i}/{len(cells)}]")
        except Superseded as lost:  # the run ended KILLED, tagged; the cell is someone else's, or the storage is gone
            if lost.by == "storage":
                raise StorageLost(f"[{who}] stopped [{i}/{len(cells)}] {_label(cell)}: {lost}") from None
            print(f"[{who}] stopped [{i}/{len(cells)}] {_label(cell)}: {lost}", flush=True)
            continue
        except KeyboardInterrupt:
            queue.release(claim)  # queued again at once: the next worker resumes its run
            raise
        queue.finish(claim, result.test_dice if result.status != "FAILED" else None, result.run_id)
        ran[claim.cell] = result
        print(f"[{who}] {result.status.lower()} [{i}/{len(cells)}] {_label(cell)} {result.run_id}", flush=True)
        if spec.sequential is not None and result.status != "FAILED":
            _after_cell(spec, queue, seen)


def _run_cell(spec: CampaignSpec, base: Path, experiment: str, cell: dict, head: str) -> CellResult:
    """Train one claimed cell: skipped if it FINISHED meanwhile, its interrupted run resumed if any."""
    exp = _cell_spec(spec, base, cell)
    tags = {"campaign": spec.name, "campaign.axes": ",".join(spec.axis_names()),
            "campaign.cell": json.dumps(cell, sort_keys=True), **{f"cell.{k}": v for k, v in cell.items()},
            **({"campaign.delta": spec.margin()} if spec.margin() is not None else {}),
            **({"campaign.sequential": _design(spec)} if spec.sequential else {})}
    made: list[Tracker] = []
    try:
        done, resume = _earlier_runs(experiment, spec.name, exp, f"{head} {exp.name}")
        if done:
            return CellResult(cell, "SKIPPED", done, run_metrics(done).get("test/dice"))
        result = run_experiment(exp, _opener(experiment, exp, tags, resume, made))
        return CellResult(cell, "FINISHED", result.run_id, result.test["test/dice"])
    except (KeyboardInterrupt, Superseded):
        raise
    except Exception as err:  # recorded FAILED in MLflow by the tracker; keep going
        print(f"    FAILED: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        return CellResult(cell, "FAILED", made[0].run_id if made else "", error=f"{type(err).__name__}: {err}")


def _design(spec: CampaignSpec) -> str:
    """The sequential design as recorded on each run (tag campaign.sequential), max_blocks resolved: the
    report redraws the looks from it, at the boundaries the campaign used; with folds in its blocks, their
    count (`make plan` reads max_blocks as folds x seeds)."""
    design = {**spec.sequential.model_dump(mode="json"), "max_blocks": spec.last_block()}
    if "data.fold" in spec.sequential.block:
        design["folds"] = len(spec.matrix["data.fold"])
    return json.dumps(design, separators=(",", ":"))


def _recorded(experiment: str, spec: CampaignSpec, base: Path, cell: dict, stop: int | None = None) -> CellResult:
    """A cell another worker ran: FINISHED with its run, NOT NEEDED (a block after the look `stop` at
    which a sequential campaign stopped), KILLED (its run was stopped and can be resumed), or FAILED."""
    exp = _cell_spec(spec, base, cell)
    done = store.find_runs(experiment, {"campaign": spec.name, "spec_hash": exp.spec_hash()}, "FINISHED",
                           where_set=run_identity(exp))
    if done:
        return CellResult(cell, "FINISHED", done[0], run_metrics(done[0]).get("test/dice"))
    if stop is not None and spec.block_of(cell) > stop:
        return CellResult(cell, "NOT NEEDED")
    if killed := store.find_runs(experiment, {"campaign": spec.name, "spec_hash": exp.spec_hash()}, "KILLED"):
        return CellResult(cell, "KILLED", killed[-1], error="stopped (Ctrl-C, SIGTERM, or the storage gone); "
                                                            "the same command resumes it")
    return CellResult(cell, "FAILED", error="no FINISHED run after the workers stopped (see their output)")


def _opener(experiment: str, exp, tags: dict, resume: str | None, made: list[Tracker]):
    """run_experiment's make_tracker for the cell `exp`: opens its run (or reopens `resume`) with the
    cell's tags, and keeps the tracker in `made`, so a failure can still name the run."""
    def make_tracker(params, run_tags):
        made.append(open_run(experiment, exp.name, params, {**run_tags, **tags},
                             RunOptions(run_id=resume, system_metrics=exp.log_system_metrics)))
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
        head += (f": run {other[0]} finished it with {', '.join(store.run_differences(other[0], here))}, "
                 "so the cell runs again; the report compares the two apart")
    resume = store.pick_resumable(experiment, exp.spec_hash(), paths.CHECKPOINTS, here)
    print(head + (f" (resuming run {resume})" if resume else ""), flush=True)
    return None, resume


def print_summary(spec: CampaignSpec, results: list[CellResult]) -> None:
    print(f"\ncampaign '{spec.name}': {len(results)} cells")
    for r in results:
        dice = f"test/dice {r.test_dice:.4f}" if r.test_dice is not None else ""
        print(f"  {r.status:<10} {_label(r.cell):<45} {r.run_id:<34} {dice}{r.error}")
    if planned := [r for r in results if r.status.startswith("TO ")]:
        print(f"dry run: {len(planned)} cell(s) would run, {len(results) - len(planned)} would not; nothing trained")
    failed = [r for r in results if r.status == "FAILED"]
    if failed:
        print(f"{len(failed)} cell(s) FAILED; re-run the same command to retry them (finished cells are skipped)")
    if killed := [r for r in results if r.status == "KILLED"]:
        print(f"{len(killed)} cell(s) stopped; the same command resumes them")
