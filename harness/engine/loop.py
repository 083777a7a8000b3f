"""The epoch loop, top to bottom: for epoch -> train_one_epoch -> evaluate -> checkpoint -> tracker.log.

`train(parts, settings, tracker, folder)` runs it: `Parts` are the built objects (harness.build
makes them from a spec), `LoopSettings` the plain values it needs, `LoopState` what it carries from
one epoch to the next (history, best score and epoch, early-stopping count, stop flag), saved in
every last.pt and restored from it on resume. Testing the best weights and the run's artifacts
are `harness.run`'s. Nothing here reads a spec or talks to MLflow directly: the tracker is the
small interface of `harness.tracking.base`.

Crash safety: an epoch's metrics are logged only once its checkpoint is on disk, by the
background writer while the next epoch trains (a re-trained epoch after a resume keeps its first
record); so a kill at any point loses at most the epoch not yet written, and on resume the steps
the store missed are re-logged.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from harness.data.loaders import order_generator, start_epoch
from harness.engine import checkpoint, distributed
from harness.engine.step import StepConfig, Update, evaluate, freeze_encoder, train_one_epoch

EpochCallback = Callable[[int, dict[str, float]], None]  # (epoch, metrics); may raise to stop (Optuna)


class _StopRequest:
    """Set by the CLI's SIGINT/SIGTERM handler; the loop stops after the current epoch's checkpoint."""

    requested: str = ""


STOP = _StopRequest()


class Superseded(Exception):
    """This process no longer holds the claim on its campaign cell or study trial (handed on, failed as
    stale, finished elsewhere), or could not renew it (`by` "storage"): the run ends KILLED, tagged
    superseded_by (or self_fenced), and nothing more is written."""

    run_status = "KILLED"

    def __init__(self, reason: str, by: str):
        super().__init__(reason)
        self.by = by
        self.run_tags = {"self_fenced": reason} if by == "storage" else {"superseded_by": by}


class _Fence:
    """The claim this process trains under (a campaign cell, a study trial). `verify`, set by the
    claimant, asks the storage whether the claim is still this process's: (who has it now, why) when
    not, else None. A campaign's heartbeat thread also sets `lost` between checks. The loop checks at
    each epoch boundary, before it writes the epoch; the run before its test, its model and metrics,
    and its FINISHED status."""

    lost: str = ""
    by: str = ""
    verify = None  # Callable[[], tuple[str, str] | None] | None

    def check(self) -> None:
        # Asked twice at most: a session the server ended while this process slept (a SIGSTOP inside a
        # transaction: harness.sweeps.queue.IDLE_IN_TRANSACTION_S) fails once, and a new connection answers.
        for _ in range(2):
            if self.lost or self.verify is None:
                break
            try:
                if lost := self.verify():
                    self.by, self.lost = lost
                break
            except Exception:  # the storage does not answer: the heartbeat rides that out, or self-fences
                continue
        if self.lost:
            raise Superseded(self.lost, self.by)

    def hold(self, verify) -> None:
        self.lost = self.by = ""
        self.verify = verify

    def release(self) -> None:
        self.lost = self.by = ""
        self.verify = None


FENCE = _Fence()


@dataclass
class Parts:
    """What a run trains with; built before the MLflow run exists, so bad input creates no run."""

    data: Any  # harness.data.DataBundle: train/val/test splits
    model: torch.nn.Module
    train_model: torch.nn.Module  # `model`, or its DistributedDataParallel wrapper under torchrun
    cfg: StepConfig
    loaders: dict  # "train", "val", "test" -> DataLoader
    loss_fn: Callable
    optimizer: torch.optim.Optimizer
    scheduler: Any  # an LR scheduler, or None
    scaler: torch.amp.GradScaler


@dataclass(frozen=True)
class LoopSettings:
    """The plain values the loop takes from the spec (harness.run.loop_settings)."""

    epochs: int
    patience: int | None = None  # early stopping: epochs without a better val/dice
    grad_clip: float | None = None
    skip_nonfinite: bool = False  # train.on_nan=skip_batch
    freeze_encoder_epochs: int = 0
    plateau: bool = False  # the scheduler is ReduceLROnPlateau, stepped with val/dice
    resumable: bool = True  # False: only best.pt is written (no per-epoch last.pt with the optimizer)


@dataclass
class LoopState:
    """What the loop carries between epochs. `to_checkpoint` and `from_checkpoint` save and restore
    it with the parts' weights, optimizer, scheduler, scaler and the RNG state of the next epoch."""

    history: list[dict[str, float]] = field(default_factory=list)  # one dict of metrics per epoch
    best: float = -1.0  # best val/dice so far
    best_epoch: int = 0
    stale: int = 0  # epochs since val/dice last improved
    stop: bool = False  # early stopping decided; a resumed run that had stopped trains no more
    resumed_epochs: int = 0  # epochs restored from a checkpoint, trained by an earlier process

    @property
    def epoch(self) -> int:
        return len(self.history)

    def record(self, epoch: int, metrics: dict[str, float], patience: int | None) -> bool:
        """Add an epoch's metrics; returns whether val/dice improved (best.pt is then written)."""
        self.history.append({"epoch": epoch, **metrics})
        improved = metrics["val/dice"] > self.best
        if improved:
            self.best, self.best_epoch, self.stale = metrics["val/dice"], epoch, 0
        else:
            self.stale += 1
        self.stop = bool(patience and self.stale >= patience)
        return improved

    def to_checkpoint(self, p: Parts, rng: dict) -> dict:
        """The last.pt payload; `rng` is the state the next epoch starts from (see `run_epoch`)."""
        return {"epoch": self.epoch, "model": p.model.state_dict(), "optimizer": p.optimizer.state_dict(),
                "scheduler": p.scheduler.state_dict() if p.scheduler is not None else None,
                "scaler": p.scaler.state_dict(), "history": self.history, "best": self.best,
                "best_epoch": self.best_epoch, "stale": self.stale, "stop": self.stop, "rng": rng}
        # no deep copy here: the writer copies every container into its host buffers (AsyncWriter._to_host)

    @classmethod
    def from_checkpoint(cls, state: dict, p: Parts) -> "LoopState":
        """Load a checkpoint's weights, optimizer, scheduler, scaler and RNG states into `p`."""
        p.model.load_state_dict(state["model"])
        p.optimizer.load_state_dict(state["optimizer"])
        if p.scheduler is not None:
            p.scheduler.load_state_dict(state["scheduler"])
        p.scaler.load_state_dict(state["scaler"])
        checkpoint.restore_rng(state["rng"], order_generator(p.loaders["train"]))
        return cls(state["history"], state["best"], state["best_epoch"], state["stale"], state["stop"],
                   resumed_epochs=len(state["history"]))


def train(p: Parts, s: LoopSettings, tracker, folder: Path, on_epoch: EpochCallback | None = None,
          world: distributed.World = distributed.ONE) -> LoopState:
    """Train from the newest checkpoint in `folder` (or from scratch) to `s.epochs` or an early stop.
    Only rank 0 writes checkpoints and logs. Returns the final state; best.pt holds the best weights."""
    logged_until = tracker.last_step("val/dice")  # > checkpoint epoch after a fallback to prev.pt
    state = _resume(p, tracker, folder, logged_until)
    writer, stopped_here = checkpoint.AsyncWriter(), False  # stopped_here: not a resumed run that had stopped
    upcoming = None  # the next epoch's loader iterator, once an epoch has started it
    try:
        for epoch in range(state.epoch + 1, s.epochs + 1):
            if state.stop:
                break
            metrics, rng, upcoming = run_epoch(p, s, epoch, upcoming)
            improved = state.record(epoch, metrics, s.patience)
            stopped_here = state.stop
            FENCE.check()  # a lost claim: write nothing more, not even this epoch
            if world.is_main:
                log = functools.partial(tracker.log_metrics, metrics, step=epoch) if epoch > logged_until else None
                writer.submit(folder, state.to_checkpoint(p, rng), best=improved, last=s.resumable, then=log)
                print(f"epoch {epoch:>3}/{s.epochs}  train/loss {metrics['train/loss']:.4f}  val/loss "
                      f"{metrics['val/loss']:.4f}  val/dice {metrics['val/dice']:.4f}  "
                      f"{metrics['throughput/train_img_s']:.1f} img/s", flush=True)
            if on_epoch is not None:
                on_epoch(epoch, metrics)
            if STOP.requested:
                raise KeyboardInterrupt(f"{STOP.requested}: stopped after epoch {epoch}; its checkpoint is written "
                                        f"and the same command resumes from it")
    except BaseException:
        try:  # the last epoch's checkpoint and record still land before the error goes up
            writer.wait()
        except Exception as err:
            print(f"checkpoint write failed too: {type(err).__name__}: {err}", flush=True)
        raise
    writer.wait()
    distributed.barrier()  # no rank reads best.pt before rank 0 has written it
    if stopped_here:
        print(f"early stopping: val/dice has not improved for {state.stale} epochs "
              f"(best {state.best:.4f} at {state.best_epoch})")
        tracker.set_tags({"early_stopped_epoch": state.epoch})
    return state


def _resume(p: Parts, tracker, folder: Path, logged_until: int) -> LoopState:
    """The state to continue from: a fresh one, or the newest readable checkpoint's, logging the
    epochs it holds that the store missed (killed between checkpoint and logging)."""
    saved, messages = checkpoint.load_latest(folder)
    for message in messages:
        print(message, flush=True)
    if saved is None:
        tracker.log_metrics({"model/num_params": sum(q.numel() for q in p.model.parameters())}, step=0)
        return LoopState()
    state = LoopState.from_checkpoint(saved, p)
    for h in state.history[max(logged_until, 0):]:
        tracker.log_metrics({k: v for k, v in h.items() if k != "epoch"}, step=h["epoch"])
    tracker.set_tags({"resumed_from_epoch": saved["epoch"]})
    return state


def run_epoch(p: Parts, s: LoopSettings, epoch: int, batches=None) -> tuple[dict[str, float], dict, Any]:
    """Train one epoch, validate, step the scheduler.

    `batches`: this epoch's loader iterator if the previous epoch started it. Returns the
    epoch's metrics, the RNG state the next epoch starts from (taken before the next epoch's
    iterator draws its order, so a resume draws the same) and that iterator, or None. With
    worker processes it is started before validation, so the workers prepare the next epoch's
    first batches while this one validates: otherwise every epoch opened on idle workers (62 ms
    of a 1.4 s ResNet34-UNet epoch at batch 64 on an H100, and longer the larger the batch).
    """
    loader = p.loaders["train"]
    start = time.perf_counter()
    lr = p.optimizer.param_groups[0]["lr"]
    if s.freeze_encoder_epochs:
        freeze_encoder(p.model, epoch <= s.freeze_encoder_epochs)
    if batches is None:
        batches = start_epoch(loader, epoch)
    update = Update(p.optimizer, p.scaler, s.grad_clip, s.skip_nonfinite)
    train_stats = train_one_epoch(p.train_model, batches, p.loss_fn, update, p.cfg, desc=f"epoch {epoch}/{s.epochs}")
    rng = checkpoint.capture_rng(order_generator(loader))
    upcoming = start_epoch(loader, epoch + 1) if loader.num_workers and epoch < s.epochs else None
    val = evaluate(p.model, p.loaders["val"], p.loss_fn, p.cfg, prefix="val")  # at p.cfg.threshold
    metrics = {**train_stats.metrics, **val.metrics, "lr": lr, "time/epoch_s": time.perf_counter() - start}
    if p.scheduler is not None:
        p.scheduler.step(metrics["val/dice"]) if s.plateau else p.scheduler.step()
    return metrics, rng, upcoming
