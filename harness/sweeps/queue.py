"""The campaign queue: campaign cells handed out through an Optuna storage, the same storages studies
use: a journal file under mlruns/optuna/ (processes on one machine) or an RDB such as PostgreSQL
(many machines). With the study package (harness/sweeps/study/), the only module that imports optuna.

Each cell that still has to run is a fixed trial of the study `campaign:<name>`, enqueued WAITING
with the cell in its user attrs. A worker claims one by moving it to RUNNING through
`storage.set_trial_state_values`, which succeeds for exactly one caller on both storages, so a
cell is handed out once. Optuna's own heartbeat lives inside `study.optimize`, which campaigns do
not use, and the journal has none, so a claim carries its own: the holder writes the time into the
trial's `heartbeat` user attr every HEARTBEAT_S. A RUNNING claim whose heartbeat is older than
`stale_after` seconds is stale (its worker died): the first worker to see it fails it and enqueues
the cell again, and whoever claims that runs the cell, resuming its MLflow run from its checkpoint.

Two launchers enqueueing at once can leave a cell queued twice; a claim counts only if no
lower-numbered trial of the same cell is WAITING or RUNNING, so one runs at a time, and a worker
checks MLflow for a FINISHED run of its cell before it trains (as a single process always did),
so a cell queued again after it finished is not trained twice.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import optuna

from harness import paths
from harness.config.load import SpecError
from harness.engine.loop import FENCE

S = optuna.trial.TrialState
LIVE = (S.WAITING, S.RUNNING)  # a cell with one of these is queued or held
HEARTBEAT_S = 10.0
STALE_AFTER_S = 120.0  # 12 missed heartbeats: a busy machine delays a thread, it does not stop it


@dataclass(frozen=True)
class Claim:
    trial_id: int
    number: int
    cell: str  # the cell as sorted JSON, e.g. '{"model.arch": "unet", "seed": 0}'


def cell_key(cell: dict) -> str:
    return json.dumps(cell, sort_keys=True)


class StorageLost(RuntimeError):
    """The campaign's storage did not answer for stale_after seconds: this worker stops (its run, if
    any, stays resumable) and the same command, run again once the storage is back, goes on."""

    exit_code = 75  # EX_TEMPFAIL: try again later


def _transient(err: Exception) -> bool:
    """An error that a storage outage raises (a dropped or refused connection, a file system hiccup),
    as opposed to one that says something about the trial (finished, unknown)."""
    return (isinstance(err, (OSError, optuna.exceptions.StorageInternalError))  # RDBStorage wraps SQLAlchemy's
            or type(err).__module__.split(".")[0] in ("sqlalchemy", "psycopg", "psycopg2"))


def _retried(method):
    """Retry a queue operation through a storage outage, with backoff (0.5 s doubling to 8 s), for up
    to the queue's stale_after seconds; then StorageLost, naming the storage."""
    @functools.wraps(method)
    def retrying(self, *args, **kwargs):
        deadline, wait = time.monotonic() + self.stale_after, 0.5
        while True:
            try:
                return method(self, *args, **kwargs)
            except Exception as err:
                if not _transient(err):
                    raise
                if (left := deadline - time.monotonic()) <= 0:
                    raise StorageLost(f"storage {self.where}: no answer for {self.stale_after:.0f} s "
                                      f"({type(err).__name__}); run the same command again once it is back") from None
                time.sleep(min(wait, left))
                wait = min(2 * wait, 8.0)
    return retrying


def describe(storage) -> str:
    """Where a storage lives, for messages: its URL with the password hidden, or the journal's file."""
    if engine := getattr(storage, "engine", None):
        return engine.url.render_as_string(hide_password=True)
    return str(getattr(getattr(storage, "_backend", None), "_file_path", type(storage).__name__))


# A worker paused (SIGSTOP, a suspended machine) between a statement and its commit keeps its row locks:
# the other workers' stale sweeps and claims would wait on them for as long as it sleeps (seen: a study's
# live worker stuck failing the paused one's trial). PostgreSQL ends a session idle in a transaction this
# long, which frees the locks; the paused worker finds its connection gone when it wakes (pre-ping replaces
# it). Every transaction here is one Optuna call, milliseconds long.
IDLE_IN_TRANSACTION_S = 15


def engine_settings(url: str) -> dict:
    """SQLAlchemy engine arguments for a shared RDB storage. Pre-ping: a connection the server dropped (a
    restart, an outage, the idle-in-transaction limit) is replaced, not used. PostgreSQL: a partition (packets
    dropped, nothing refused) fails in ~10 s rather than hangs, and the idle-in-transaction limit above. The
    URL's own parameters win (connect_args would override them): its `options` are kept, the limit added
    unless they set one."""
    engine: dict = {"pool_pre_ping": True}
    if url.startswith("postgresql"):
        from sqlalchemy.engine import make_url

        given = make_url(url).query
        defaults = {"connect_timeout": 10, "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
                    "keepalives_count": 3}
        args = {k: v for k, v in defaults.items() if k not in given}
        options = given.get("options", "")  # a tuple when the URL repeats it
        options = options if isinstance(options, str) else " ".join(options)
        if "idle_in_transaction_session_timeout" not in options:
            options = f"{options} -c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_S * 1000}".strip()
        engine["connect_args"] = {**args, "options": options}
    return engine


def rdb_storage(url: str, **kwargs):
    """optuna's RDBStorage at `url`, with `engine_settings(url)` (a caller's engine_kwargs added to them); a
    server that does not answer is a SpecError naming the storage (its password hidden) with the driver's
    first line, not a SQLAlchemy traceback."""
    try:
        engine = {**engine_settings(url), **kwargs.pop("engine_kwargs", {})}
        return optuna.storages.RDBStorage(url, engine_kwargs=engine, **kwargs)
    except Exception as err:  # sqlalchemy's OperationalError, a missing driver, a malformed URL
        from sqlalchemy.engine import make_url

        try:
            shown = make_url(url).render_as_string(hide_password=True)
        except Exception:
            shown = url.split("@")[-1]
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise SpecError(f"storage {shown}: cannot open it ({type(err).__name__}: {first})") from None


def storage_for_campaign(name: str, url: str | None = None):
    """The campaign's storage: `url` (sqlite/postgresql/mysql), else a journal file
    mlruns/optuna/campaign-<name>.journal."""
    if url:
        return rdb_storage(url)
    path = paths.OPTUNA / f"campaign-{name}.journal"
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


class CellQueue:
    """The cells of one campaign in an Optuna storage. `worker` names this process in claims."""

    def __init__(self, campaign: str, storage, worker: str, stale_after: float = STALE_AFTER_S):
        self.storage, self.worker, self.stale_after, self.where = storage, worker, stale_after, describe(storage)
        self.beat_s = min(HEARTBEAT_S, stale_after / 4)
        self.study = optuna.create_study(study_name=f"campaign:{campaign}", storage=storage, load_if_exists=True,
                                         direction="maximize")  # the value is the cell's test/dice

    def _trials(self, states=None) -> list[optuna.trial.FrozenTrial]:
        return [t for t in self.study.get_trials(deepcopy=False, states=states) if "cell" in t.user_attrs]

    @_retried
    def enqueue(self, cells: list[dict], orders: list[int] | None = None) -> list[str]:
        """Queue each cell (one that has no FINISHED run) not already WAITING or RUNNING; returns those queued.
        `orders`: each cell's place in the claim order (default: its position); a cell queued again
        (released, handed on) keeps its place, so a sequential campaign's early blocks stay first."""
        queued = self._live_cells()
        orders = orders if orders is not None else list(range(len(cells)))
        added = [(cell_key(c), o) for c, o in zip(cells, orders) if cell_key(c) not in queued]
        for key, order in added:
            self.study.enqueue_trial({}, user_attrs={"cell": key, "order": order})
        return [key for key, _ in added]

    def _live_cells(self) -> set[str]:
        """The cells queued or held now."""
        return {t.user_attrs["cell"] for t in self._trials(LIVE)}

    def _requeue(self, trial: optuna.trial.FrozenTrial) -> None:
        self.study.enqueue_trial({}, user_attrs={"cell": trial.user_attrs["cell"], "handed_on_from": trial.number,
                                                 "order": trial.user_attrs.get("order", 0)})

    @_retried
    def claim(self) -> Claim | None:
        """Claim the first WAITING cell (by its order, then trial number), or None when none is waiting. A
        claim that lost to a lower-numbered trial of the same cell (a cell queued twice) is failed and the
        next one tried; so is one taken out of the queue meanwhile (a sequential campaign's stop)."""
        for trial in sorted(self._trials((S.WAITING,)), key=lambda t: (t.user_attrs.get("order", 0), t.number)):
            trial_id = trial._trial_id  # FrozenTrial's storage id (Optuna exposes no public name for it)
            try:
                if not self.storage.set_trial_state_values(trial_id, S.RUNNING):
                    continue  # another worker claimed it first
                self._beat(trial_id)
                self.storage.set_trial_user_attr(trial_id, "worker", self.worker)
                key = trial.user_attrs["cell"]
                if any(t.user_attrs["cell"] == key and t.number < trial.number for t in self._trials(LIVE)):
                    self.storage.set_trial_user_attr(trial_id, "duplicate", True)
                    self.storage.set_trial_state_values(trial_id, S.FAIL)
                    continue
            except optuna.exceptions.UpdateFinishedTrialError:  # dropped or failed by another worker meanwhile
                continue
            return Claim(trial_id, trial.number, key)
        return None

    def _beat(self, trial_id: int) -> None:
        self.storage.set_trial_user_attr(trial_id, "heartbeat", time.time())

    @contextmanager
    def holding(self, claim: Claim):
        """Keep `claim`'s heartbeat fresh (a daemon thread) while the cell runs."""
        stop = threading.Event()
        FENCE.hold(lambda: self._lost(claim))  # also asked at the loop's safe points, not only at heartbeats

        def beat():  # every beat_s; while the storage fails, every second, so the first beat back is prompt
            failing_since = None
            while not stop.wait(self.beat_s if failing_since is None else min(1.0, self.beat_s)):
                try:
                    if lost := self._lost(claim):
                        FENCE.by, FENCE.lost = lost
                        return
                    self._beat(claim.trial_id)
                    failing_since = None
                except Exception as err:  # a storage outage: ridden out for stale_after seconds
                    failing_since = failing_since or time.time()
                    if time.time() - failing_since > self.stale_after:
                        FENCE.by, FENCE.lost = "storage", (
                            f"storage {self.where}: could not renew its claim for {self.stale_after:.0f} s "
                            f"({type(err).__name__}); the run stays resumable: run the same command again once "
                            "the storage is back")
                        return

        thread = threading.Thread(target=beat, daemon=True, name="cell-heartbeat")
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=60)  # a heartbeat stuck on a dead connection is a daemon: not waited for
            FENCE.release()  # the fence is this claim's: a later run in this process is not fenced

    def _lost(self, claim: Claim) -> tuple[str, str] | None:
        """(who has the cell now, why) when `claim` is no longer this worker's RUNNING trial, else None."""
        trial = self.storage.get_trial(claim.trial_id)
        if trial.state == S.RUNNING and trial.user_attrs.get("worker") == self.worker:
            return None
        later = sorted((t for t in self._trials() if t.user_attrs["cell"] == claim.cell and t.number > claim.number),
                       key=lambda t: (t.state != S.COMPLETE, t.number))  # the run that finished it, else who holds it
        if trial.state == S.COMPLETE:
            by = trial.user_attrs.get("mlflow_run_id") or "another worker"
        elif later and later[0].state == S.COMPLETE and later[0].user_attrs.get("mlflow_run_id"):
            by = later[0].user_attrs["mlflow_run_id"]
        else:
            by = next((t.user_attrs["worker"] for t in later if t.state in LIVE and t.user_attrs.get("worker")),
                      "the queue")
        why = ("finished elsewhere" if trial.state == S.COMPLETE else
               "handed on: its claim went stale" if trial.user_attrs.get("stale") else
               "not needed: the sequential campaign stopped before its block" if trial.user_attrs.get("not_needed")
               else f"now {trial.state.name}")
        return by, f"lost its claim on {claim.cell} ({why}; now held by {by})"

    @_retried
    def finish(self, claim: Claim, dice: float | None, run_id: str) -> None:
        """COMPLETE with the cell's test/dice, or FAIL (dice None). A claim lost meanwhile (the cell was
        found finished by another worker after a pause) is left as the queue has it."""
        state, values = (S.FAIL, None) if dice is None else (S.COMPLETE, [dice])
        try:
            self.storage.set_trial_user_attr(claim.trial_id, "mlflow_run_id", run_id)
            self.storage.set_trial_state_values(claim.trial_id, state, values)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass

    @_retried
    def release(self, claim: Claim) -> None:
        """Give a claim back (Ctrl-C): FAIL it and queue its cell again, for the next worker (unless it is
        queued or not needed already: a retry after the FAIL landed finds it failed)."""
        try:
            self.storage.set_trial_user_attr(claim.trial_id, "released", True)
            self.storage.set_trial_state_values(claim.trial_id, S.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass
        trial = self.storage.get_trial(claim.trial_id)
        finished_or_dropped = trial.state == S.COMPLETE or trial.user_attrs.get("not_needed")
        if not finished_or_dropped and claim.cell not in self._live_cells():
            self._requeue(trial)

    @_retried
    def stale(self) -> list[optuna.trial.FrozenTrial]:
        """RUNNING claims whose heartbeat is older than stale_after seconds and one beat: the margin lets a
        holder that rode out an outage of up to stale_after seconds beat again before it is handed on."""
        now, limit = time.time(), self.stale_after + self.beat_s
        return [t for t in self._trials((S.RUNNING,)) if now - t.user_attrs.get("heartbeat", 0) > limit]

    @_retried
    def hand_on(self, trial: optuna.trial.FrozenTrial) -> bool:
        """Fail a stale claim and queue its cell again; False when another worker did it first."""
        try:
            self.storage.set_trial_user_attr(trial._trial_id, "stale", True)
            self.storage.set_trial_state_values(trial._trial_id, S.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:  # handed on already (maybe by this call, retried)
            if self.storage.get_trial(trial._trial_id).state == S.COMPLETE:
                return False  # finished after all
        if trial.user_attrs.get("not_needed") or trial.user_attrs["cell"] in self._live_cells():
            return False  # not needed (a stopped sequential campaign), or queued again already
        self._requeue(trial)
        return True

    @_retried
    def drop(self, cells: list[str]) -> int:
        """Take `cells` (keys) out of the queue (a sequential campaign stopped before their block): their
        WAITING trials are failed and marked not_needed; a RUNNING one is marked so that it is not
        handed on, and may finish. Returns the number taken out."""
        dropped, wanted = 0, set(cells)
        for t in self._trials(LIVE):
            if t.user_attrs["cell"] not in wanted:
                continue
            try:
                self.storage.set_trial_user_attr(t._trial_id, "not_needed", True)
                # read again: a cell claimed since the list was read runs on (it cannot change a decision)
                if self.storage.get_trial(t._trial_id).state == S.WAITING:
                    dropped += bool(self.storage.set_trial_state_values(t._trial_id, S.FAIL))
            except optuna.exceptions.UpdateFinishedTrialError:  # claimed and finished meanwhile
                pass
        return dropped

    @_retried
    def running(self) -> list[optuna.trial.FrozenTrial]:
        return self._trials((S.RUNNING,))

    def states(self) -> dict[str, optuna.trial.FrozenTrial]:
        """Each cell's latest trial (by number): what campaign-status shows."""
        latest: dict[str, optuna.trial.FrozenTrial] = {}
        for t in sorted(self._trials(), key=lambda t: t.number):
            latest[t.user_attrs["cell"]] = t
        return latest
