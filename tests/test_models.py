"""Contract tests over every registered model (and every upsample mode)."""

from __future__ import annotations

import pytest
import torch

from harness.models import MODELS, count_parameters, create_model, list_models

SIZES = [(64, 64), (96, 80), (128, 128), (50, 70)]  # 50x70: not divisible by 32, nor even by 4


@pytest.mark.parametrize("upsample", ["bilinear", "transpose"])
@pytest.mark.parametrize("arch", list_models())
def test_output_shape_backward_and_finite(arch, upsample):
    torch.manual_seed(0)
    model = create_model(arch, upsample=upsample, base_width=8)
    for h, w in SIZES:
        x = torch.rand(2, 3, h, w)
        out = model(x)
        assert out.shape == (2, 1, h, w), (arch, upsample, h, w)
        assert torch.isfinite(out).all()
    out.mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="unet.*resnet34_unet|resnet34_unet.*unet"):
        create_model("segformer")


def test_registry_has_both_architectures():
    assert set(MODELS) == {"unet", "resnet34_unet"}


def test_unet_width_scales_parameters():
    small, large = create_model("unet", base_width=8), create_model("unet", base_width=16)
    assert 3.5 < count_parameters(large) / count_parameters(small) < 4.5  # convs scale ~ width^2


def test_resnet34_encoder_is_torchvision_resnet34():
    model = create_model("resnet34_unet")
    encoder = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("net.stem", "net.stages")))
    assert encoder == 21_284_672  # torchvision resnet34 without its fc layer


def test_imagenet_weights_unavailable_is_a_clear_error(monkeypatch, tmp_path):
    from harness.models import WeightsUnavailable

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty cache

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailable, match="encoder_weights=imagenet.*encoder_weights=none"):
        create_model("resnet34_unet", encoder_weights="imagenet")


def test_unet_refuses_pretrained_weights():
    with pytest.raises(ValueError, match="resnet34_unet only"):
        create_model("unet", encoder_weights="imagenet")
