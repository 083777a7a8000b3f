"""Command line: `python -m harness <command>`, one of the commands in COMMANDS below (`--help` lists them).

Exit status: 0 ok, 1 run failed, 2 bad input (spec, data, arguments), 130 interrupted.
"""

from __future__ import annotations

import argparse
import faulthandler
import signal
import sys

from harness.commands import STOP_NOW, Command, experiment, info, sweeps, trained
from harness.config.load import SpecError
from harness.progress import quiet_library_bars

EXAMPLES = """examples:
  python -m harness experiment experiments/quickstart.yaml
  python -m harness experiment experiments/unet.yaml data.root=../shared/data/oxford-pet-mini train.epochs=3
  python -m harness validate experiments/resnet34_unet.yaml train.lr=3e-4
  python -m harness audit ../shared/data/oxford-pet-128 --json audit.json
  python -m harness evaluate --run <run id> --data ../shared/data/oxford-pet-128
  python -m harness predict --run <run id> --input photo.jpg --output predictions/
"""

# Every command: its help, arguments, handler and Ctrl-C policy (harness/commands/), in --help's order.
COMMANDS: dict[str, Command] = {
    "experiment": experiment.EXPERIMENT,
    "validate": experiment.VALIDATE,
    "study": sweeps.STUDY,
    "campaign": sweeps.CAMPAIGN,
    "predict": trained.PREDICT,
    "evaluate": trained.EVALUATE,
    "register": trained.REGISTER,
    "audit": info.AUDIT,
    "models": info.MODELS,
    "links": info.LINKS,
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harness", description="Segmentation experiments tracked in MLflow.",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        command.arguments(sub.add_parser(name, help=command.help, description=command.description))
    return p


def _on_signal(ctrl_c: str):
    """The SIGINT/SIGTERM handler of a command whose Ctrl-C policy is `ctrl_c` (harness.commands).
    SIGTERM, and SIGINT under AFTER_EPOCH: the first finishes the epoch, writes its checkpoint, then
    stops (run KILLED); a second stops at once; the run resumes from the last completed epoch either
    way. SIGINT under STOP_NOW: stops at once."""
    def terminate(signum, frame):
        if signum == signal.SIGINT and ctrl_c == STOP_NOW:
            raise KeyboardInterrupt("interrupted")
        from harness.engine.loop import STOP

        if STOP.requested:
            raise KeyboardInterrupt(f"signal {signum} (second): stopping now")
        STOP.requested = signal.Signals(signum).name
        print(f"\n{signal.Signals(signum).name}: stopping after this epoch's checkpoint "
              f"(send it again to stop now)", file=sys.stderr, flush=True)
    return terminate


def _stacks_on_sigusr1() -> None:
    """`kill -USR1 <pid>` prints every thread's stack to stderr (a worker that seems stuck); only where
    stderr is a file (called in-process, as tests and notebooks do, it may not be)."""
    try:
        faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    except (AttributeError, ValueError, OSError):  # no SIGUSR1 (Windows); io.UnsupportedOperation: no fileno
        pass


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = COMMANDS[args.command]
    quiet_library_bars()
    _stacks_on_sigusr1()
    signal.signal(signal.SIGTERM, _on_signal(command.ctrl_c))
    signal.signal(signal.SIGINT, _on_signal(command.ctrl_c))
    try:
        return command.run(args)
    except SpecError as err:
        print(f"spec error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the run was marked KILLED", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
