"""harness.progress: tqdm's bar on a terminal; in a log, a plain line at most every LOG_INTERVAL_S."""

from __future__ import annotations

import io
import time

from tqdm import tqdm

from harness import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_bar_is_tqdms_own():
    out = Terminal()
    bar = progress.progress(range(3), desc="train", file=out)
    assert type(bar) is tqdm
    list(bar)
    assert "\r" in out.getvalue()  # redrawn in place, as always


def test_in_a_log_a_bar_is_a_plain_line_at_most_every_interval(monkeypatch):
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.2)
    out = io.StringIO()
    start = time.monotonic()
    bar = progress.progress(range(12), desc="train", unit="batch", leave=False, file=out)
    assert isinstance(bar, progress.LogBar)
    for i in bar:
        time.sleep(0.05)
        bar.set_postfix(loss=f"{i:.4f}")
    elapsed = time.monotonic() - start
    text = out.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and "\x1b" not in text and text.endswith("\n")
    assert 1 <= len(lines) <= elapsed / 0.2 + 1
    assert all(line.startswith("train: ") and "/12 [" in line and "batch/s, loss=" in line for line in lines)
    counts = [int(line.split()[2].split("/")[0]) for line in lines]
    assert counts == sorted(counts) and counts[0] > 0  # each line says how far it got, never "0/12"


def test_in_a_log_a_short_bar_writes_nothing_and_a_long_one_closes_with_its_total(monkeypatch):
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.1)
    out = io.StringIO()
    list(progress.progress(range(1000), desc="quick", file=out))
    assert out.getvalue() == ""
    for _ in progress.progress(iter(range(4)), desc="decode", unit="img", file=out):  # no total, leave=True
        time.sleep(0.06)
    lines = out.getvalue().splitlines()
    assert lines and lines[-1].startswith("decode: 4 [") and all("%" not in line for line in lines)
