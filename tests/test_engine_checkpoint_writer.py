"""The background checkpoint writer: snapshot isolation, ordering, errors, buffer reuse."""

from __future__ import annotations

import errno

import pytest
import torch

from harness.engine import checkpoint


def _state(weight: torch.Tensor, epoch: int) -> dict:
    return {"epoch": epoch, "model": {"w": weight}, "history": [{"epoch": epoch}],
            "rng": {"torch": torch.get_rng_state()}}


def test_written_state_is_the_state_at_submit_time(tmp_path):
    writer = checkpoint.AsyncWriter()
    weight = torch.zeros(1000)
    state = _state(weight, 1)
    writer.submit(tmp_path, state, best=True)
    weight.add_(1.0)  # training goes on and changes the live tensor in place
    state["history"].append({"epoch": 2})
    writer.wait()
    last = torch.load(tmp_path / checkpoint.LAST, weights_only=True)
    best = torch.load(tmp_path / checkpoint.BEST, weights_only=True)
    assert torch.equal(last["model"]["w"], torch.zeros(1000)) and torch.equal(best["model"]["w"], torch.zeros(1000))
    assert last["history"] == [{"epoch": 1}] and best["epoch"] == 1


def test_then_runs_after_the_files_are_in_place_and_prev_is_kept(tmp_path):
    writer, seen = checkpoint.AsyncWriter(), []
    weight = torch.zeros(10)
    for epoch in (1, 2):
        weight.fill_(epoch)
        writer.submit(tmp_path, _state(weight, epoch), best=epoch == 1,
                      then=lambda e=epoch: seen.append(
                          (e, torch.load(tmp_path / checkpoint.LAST, weights_only=True)["epoch"])))
    writer.wait()
    assert seen == [(1, 1), (2, 2)]
    assert torch.load(tmp_path / checkpoint.PREV, weights_only=True)["epoch"] == 1
    assert torch.load(tmp_path / checkpoint.BEST, weights_only=True)["epoch"] == 1  # not improved at epoch 2


def test_host_buffers_are_reused_across_epochs(tmp_path):
    writer = checkpoint.AsyncWriter()
    weight = torch.zeros(100)
    writer.submit(tmp_path, _state(weight, 1), best=False)
    first = {k: v.data_ptr() for k, v in writer._buffers.items()}
    writer.submit(tmp_path, _state(weight, 2), best=False)
    writer.wait()
    assert first and {k: v.data_ptr() for k, v in writer._buffers.items()} == first


def test_write_error_is_raised_by_the_next_call_and_then_is_skipped(tmp_path, monkeypatch):
    writer, called = checkpoint.AsyncWriter(), []

    def full_disk(obj, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    writer.submit(tmp_path, _state(torch.zeros(3), 1), best=False, then=lambda: called.append(1))
    with pytest.raises(OSError, match="No space left"):
        writer.wait()
    assert called == []
    writer.wait()  # the error is raised once
