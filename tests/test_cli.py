"""The command line as a table (harness.cli): every command's Ctrl-C policy, and its --help."""

from __future__ import annotations

import signal

import pytest


def test_each_command_declares_what_ctrl_c_does(monkeypatch):
    """Ctrl-C finishes the epoch only for the commands that train; every other command stops at once,
    whatever is imported (harness.run, here, once made every command wait for an epoch)."""
    import harness.run  # noqa: F401
    from harness.cli import COMMANDS, _on_signal
    from harness.commands import AFTER_EPOCH, STOP_NOW
    from harness.engine.loop import STOP

    assert {name for name, c in COMMANDS.items() if c.ctrl_c == AFTER_EPOCH} == {"experiment", "study", "campaign"}
    assert all(c.ctrl_c in (AFTER_EPOCH, STOP_NOW) for c in COMMANDS.values())
    monkeypatch.setattr(STOP, "requested", None)
    with pytest.raises(KeyboardInterrupt):
        _on_signal(STOP_NOW)(signal.SIGINT, None)
    assert STOP.requested is None
    _on_signal(STOP_NOW)(signal.SIGTERM, None)  # SIGTERM asks every command for a stop after the epoch
    assert STOP.requested == "SIGTERM"
    monkeypatch.setattr(STOP, "requested", None)
    _on_signal(AFTER_EPOCH)(signal.SIGINT, None)
    assert STOP.requested == "SIGINT"
    with pytest.raises(KeyboardInterrupt):  # a second one stops at once
        _on_signal(AFTER_EPOCH)(signal.SIGINT, None)
