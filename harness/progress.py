"""Progress bars that suit where stderr goes.

On a terminal, `progress(...)` is tqdm's bar, redrawn in place. Anywhere else (`> run.log 2>&1`, a
campaign worker's log, CI, a SLURM job's .err file) a redrawn bar is a stream of carriage returns,
so there each bar is a plain line at most every `LOG_INTERVAL_S` seconds, and none for a bar that
ends sooner (the loop's own one line per epoch says what happened):

    train:  45% 15/33 [00:30<00:36,  0.50batch/s, loss=0.1234, img_s=8.0]
"""

from __future__ import annotations

import os
import sys
import time

from tqdm import tqdm

LOG_INTERVAL_S = 30.0  # at most one line per bar this often, when stderr is not a terminal
LOG_FORMAT = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
LOG_FORMAT_NO_TOTAL = "{desc}: {n_fmt} [{elapsed}, {rate_fmt}{postfix}]"


def on_terminal(stream=None) -> bool:
    """Whether `stream` (default: stderr, where tqdm writes) is a terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


class _Lines:
    """A file for tqdm to write to that turns each redraw ('\\r' + text + padding) into one line, and
    drops what only moves or clears the cursor (the closing '\\r', '\\n' and blank padding)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").replace("\x1b[A", "").strip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


class LogBar(tqdm):
    """tqdm for a log: a line once `LOG_INTERVAL_S` have passed since the bar began or last wrote one,
    whatever refreshes it (an update, set_postfix); a closing line (leave=True) only after an earlier
    one; nothing for clearing. No monitor thread (it only refreshes)."""

    monitor_interval = 0

    def __init__(self, iterable=None, **kwargs):
        self._shown, self._wrote, self._closing = time.monotonic(), False, False
        total = kwargs.get("total", len(iterable) if hasattr(iterable, "__len__") else None)
        kwargs.update(file=_Lines(kwargs.get("file") or sys.stderr), mininterval=LOG_INTERVAL_S,
                      maxinterval=LOG_INTERVAL_S, dynamic_ncols=False, ncols=None,
                      bar_format=LOG_FORMAT if total else LOG_FORMAT_NO_TOTAL)
        super().__init__(iterable, **kwargs)

    def display(self, msg=None, pos=None):
        now = time.monotonic()
        due = self._wrote if self._closing else now - self._shown >= LOG_INTERVAL_S
        if msg is not None or not due:  # msg: '' clears the bar, which a log never needs
            return False
        self._shown, self._wrote = now, True
        return super().display(pos=0)

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        super().set_postfix(ordered_dict, refresh=False, **kwargs)  # the next line shows it

    def close(self):
        self._closing = True
        super().close()


def quiet_library_bars() -> None:
    """Where stderr is not a terminal, turn off the bars a library draws itself (MLflow's artifact
    downloads, when predict or evaluate loads a logged model), which no LogBar can reach."""
    if not on_terminal():
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def progress(iterable=None, **kwargs) -> tqdm:
    """`tqdm(iterable, **kwargs)` on a terminal, a LogBar elsewhere (see the module's docstring)."""
    bar = tqdm if on_terminal(kwargs.get("file")) else LogBar
    return bar(iterable, **kwargs)
