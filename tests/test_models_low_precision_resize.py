"""The decoder's interpolation keeps a bf16 map in bf16 where autocast would cast it to float32
(CUDA), and must give the model the same values and gradients as autocast's float32 op did.

No GPU here: the tests put 'cpu' among the devices that take the low-precision path, and emulate
CUDA autocast's float32 policy for the reference by casting the map up before interpolating.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from harness.build import create_model, list_models
from harness.models import blocks

MODES = ["bilinear", "nearest"]


class _OpDtypes(TorchDispatchMode):
    """Records (op name, dtype of its first tensor argument) for every aten op dispatched."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        first = next((a for a in args if isinstance(a, torch.Tensor)), None)
        self.seen.append((func.__name__, getattr(first, "dtype", None)))
        return func(*args, **(kwargs or {}))


def _reference(x, size, mode):
    """What CUDA autocast does with upsample_*: run it on the float32 copy of x."""
    if x.dtype != torch.float32 and torch.is_autocast_enabled(x.device.type):
        x = x.float()
    return blocks._resize(x, size, mode)


@pytest.mark.parametrize("mode", MODES)
def test_forward_rounds_once_and_backward_is_the_float32_adjoint(mode, monkeypatch):
    monkeypatch.setattr(blocks, "AUTOCAST_UPCASTS_RESIZE", ("cpu",))
    torch.manual_seed(0)
    x32 = torch.randn(2, 5, 7, 9).contiguous(memory_format=torch.channels_last)
    x = x32.to(torch.bfloat16).requires_grad_()
    grad = torch.randn(2, 5, 14, 17).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = blocks.interpolate(x, (14, 17), mode)
    with _OpDtypes() as ops:
        y.backward(grad)
    # CUDA's bf16 backward kernels accumulate with bf16 atomics; the float32 one is used instead
    # (on CPU both round once, so only the dtype the op ran in can show it here).
    backward_ops = [dtype for name, dtype in ops.seen if name.startswith(f"upsample_{mode}2d_backward")]
    assert backward_ops == [torch.float32]

    ref_in = x.detach().float().requires_grad_()
    ref = blocks._resize(ref_in, (14, 17), mode)
    ref.backward(grad.float())
    assert y.dtype == torch.bfloat16 and x.grad.dtype == torch.bfloat16
    assert torch.equal(y, ref.to(torch.bfloat16))
    assert torch.equal(x.grad, ref_in.grad.to(torch.bfloat16))
    assert y.is_contiguous(memory_format=torch.channels_last)


def test_only_devices_whose_autocast_upcasts_take_the_path(monkeypatch):
    calls = []
    monkeypatch.setattr(blocks._LowPrecisionResize, "apply", lambda *a: calls.append(a) or a[0])
    x = torch.randn(1, 2, 4, 4).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        blocks.interpolate(x, (8, 8), "bilinear")  # CPU autocast keeps the dtype itself
    monkeypatch.setattr(blocks, "AUTOCAST_UPCASTS_RESIZE", ("cpu",))
    blocks.interpolate(x, (8, 8), "bilinear")  # no autocast: nothing to undo
    blocks.interpolate(x.float(), (8, 8), "bilinear")
    assert calls == []
    with torch.autocast("cpu", dtype=torch.bfloat16):
        blocks.interpolate(x, (8, 8), "bilinear")
    assert len(calls) == 1


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("arch", list_models())
def test_model_outputs_and_gradients_match_autocasts_float32_upsample(arch, mode, monkeypatch):
    """A whole training step under bf16 autocast: the logits and every parameter's gradient are
    bit-identical to the step with the float32 upsample (and mixed-dtype cat) autocast made."""

    def step(resize):
        monkeypatch.setattr(blocks, "interpolate", resize)
        torch.manual_seed(0)
        model = create_model(arch, base_width=16, upsample=mode).to(memory_format=torch.channels_last)
        x = torch.randn(2, 3, 64, 48).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(x)
        F.binary_cross_entropy_with_logits(logits.float(), torch.ones_like(logits, dtype=torch.float32)).backward()
        return logits, {n: p.grad for n, p in model.named_parameters()}

    monkeypatch.setattr(blocks, "AUTOCAST_UPCASTS_RESIZE", ("cpu",))
    seen = []
    real = blocks.interpolate
    logits, grads = step(lambda x, size, m: seen.append(x.dtype) or real(x, size, m))
    ref_logits, ref_grads = step(_reference)
    assert torch.bfloat16 in seen  # the low-precision path was taken
    assert torch.equal(logits, ref_logits)
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        assert torch.equal(g, ref_grads[name]), name
