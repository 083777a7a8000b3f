"""What each command of `python -m harness` does: its arguments beside its handler, and what Ctrl-C
does to it. harness/cli.py holds the table of commands, the signal handlers and the exit status.

- experiment.py: experiment, validate;
- sweeps.py: study, campaign (and their hidden --worker-index workers);
- trained.py: predict, evaluate, register (a trained run's model);
- info.py: audit, models, links.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# What Ctrl-C (SIGINT) does to a command. SIGTERM always asks for a stop after the epoch.
STOP_NOW = "stop now"  # KeyboardInterrupt at once: the command trains nothing, there is no epoch to finish
AFTER_EPOCH = "after epoch"  # the epoch under way finishes and is checkpointed, then the run ends KILLED;
#                              a second Ctrl-C stops at once


@dataclass(frozen=True)
class Command:
    help: str  # one line in `python -m harness --help`
    arguments: Callable[[argparse.ArgumentParser], None]  # adds the command's arguments to its parser
    run: Callable[[argparse.Namespace], int]  # the handler; returns the exit status
    ctrl_c: str  # STOP_NOW or AFTER_EPOCH
    description: str | None = None  # the command's --help text, when it says more than `help`


def spec_arguments(parser: argparse.ArgumentParser, spec_help: str, overrides_help: str) -> None:
    """A spec file and KEY=VALUE overrides: the first arguments of experiment, validate, study, campaign."""
    parser.add_argument("spec", type=Path, help=spec_help)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=overrides_help)


def bad_input(err: Exception) -> int:
    """Exit status 2 for input the command cannot use (data, run id, file), named on stderr."""
    print(f"error: {err}", file=sys.stderr)
    return 2
