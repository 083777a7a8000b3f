"""Contract tests over every registered model and every knob combination the registry allows."""

from __future__ import annotations

import itertools

import pytest
import torch

from harness.build import create_model, list_models
from harness.config.catalog import ARCH_KNOBS, DEFAULTS
from harness.config.catalog import ARCHS as MODELS
from harness.config.load import SpecError, load_spec
from harness.models import count_parameters

SIZES = [(64, 64), (96, 80), (128, 128), (50, 70)]  # 50x70: not divisible by 32, nor even by 4
# The values each enumerable knob can take; combinations are taken over the knobs an arch allows.
VALUES = {"upsample": ["bilinear", "nearest", "transpose"], "padding_mode": ["zeros", "reflect"],
          "downsample": ["maxpool", "strided_conv"], "activation": ["relu", "leaky_relu"], "dropout": [0.0, 0.2],
          "deep_supervision": [False, True], "decoder_widths": [None, (64, 32, 16, 8, 8)]}


def combinations():
    """Every combination of every knob value an arch allows (the full product)."""
    for arch in list_models():
        names = [k for k in VALUES if k in ARCH_KNOBS[arch]]
        for values in itertools.product(*(VALUES[k] for k in names)):
            yield pytest.param(arch, dict(zip(names, values)), id=f"{arch}-" + "-".join(map(str, values)))


def one_at_a_time():
    """Each knob value an arch allows, the other knobs at their defaults (the default suite)."""
    for arch in list_models():
        for name in (k for k in VALUES if k in ARCH_KNOBS[arch]):
            for value in VALUES[name][1:]:
                yield pytest.param(arch, {name: value}, id=f"{arch}-{name}-{value}")


def _check(model, channels: int, sizes) -> None:
    for h, w in sizes:
        model.eval()
        out = model(torch.rand(2, 3, h, w))
        assert out.shape == (2, channels, h, w) and torch.isfinite(out).all(), (h, w)
    model.train()
    out = model(torch.rand(2, 3, *sizes[-1]))
    out.float().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("arch", list_models())
def test_output_shape_backward_and_finite(arch):
    torch.manual_seed(0)
    _check(create_model(arch, base_width=8), 1, SIZES)


@pytest.mark.parametrize("arch", list_models())
def test_channels_last_survives_every_block(arch):
    """A channels_last model fed channels_last input keeps that layout into and out of every
    module: a convolution given a contiguous-format input copies it to channels_last, forward and
    backward, every step (the ResNet34-UNet's full-resolution block did, on an H200). 1-channel
    maps are both layouts at once, so only C > 1 is checked."""
    torch.manual_seed(0)
    model = create_model(arch, base_width=8).to(memory_format=torch.channels_last)
    lost = []

    def check(module, tensors, where):
        for t in tensors if isinstance(tensors, tuple) else (tensors,):
            if isinstance(t, torch.Tensor) and t.dim() == 4 and t.shape[1] > 1 \
                    and not t.is_contiguous(memory_format=torch.channels_last):
                lost.append(f"{type(module).__name__} {where} {tuple(t.shape)}")

    for module in model.modules():
        module.register_forward_pre_hook(lambda m, inputs: check(m, inputs, "input"))
        module.register_forward_hook(lambda m, _inputs, out: check(m, out, "output"))
    model(torch.rand(2, 3, 64, 64).to(memory_format=torch.channels_last))
    assert not lost, f"contiguous-format tensors: {lost}"


@pytest.mark.slow
@pytest.mark.parametrize("arch,knobs", combinations())
def test_every_knob_combination(arch, knobs):
    """Logits at input resolution for odd sizes, finite gradients everywhere, K-class heads too."""
    test_each_knob_value(arch, knobs)


@pytest.mark.parametrize("arch,knobs", one_at_a_time())
def test_each_knob_value(arch, knobs):
    torch.manual_seed(0)
    channels = 3 if knobs.get("dropout") else 1  # exercise the K-class head on half of the combinations
    model = create_model(arch, base_width=4, out_channels=channels, **knobs)
    _check(model, channels, [(32, 32), (50, 38)])
    if knobs.get("deep_supervision"):
        model.train()
        assert model(torch.rand(1, 3, 32, 32)).shape[1] == 4 * channels  # one block of logits per head


@pytest.mark.parametrize("arch", list_models())
def test_grad_checkpointing_gives_the_same_gradients(arch):
    x = torch.rand(2, 3, 48, 40)
    grads, stats = [], []
    for recompute in (False, True):
        torch.manual_seed(0)
        model = create_model(arch, base_width=4, grad_checkpointing=recompute).train()
        model(x).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        stats.append({n: b.clone() for n, b in model.named_buffers() if "running" in n})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6, msg=name)
    for name in stats[0]:  # the recompute must not update BatchNorm's running statistics a second time
        torch.testing.assert_close(stats[0][name], stats[1][name], msg=name)


def test_grad_checkpointing_wraps_blocks_not_modules_as_inputs(monkeypatch):
    """The checkpointed function must be the block, with tensors as its inputs."""
    from harness.models import blocks

    seen = []
    real = blocks.checkpoint

    def spy(fn, *args, **kwargs):
        seen.append((fn, args))
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(blocks, "checkpoint", spy)
    model = create_model("unet", base_width=4, grad_checkpointing=True).train()
    model(torch.rand(1, 3, 32, 32)).mean().backward()
    assert len(seen) == 9  # inc, 4 down, 4 up
    assert all(isinstance(fn, torch.nn.Module) and all(isinstance(a, torch.Tensor) for a in args) for fn, args in seen)


@pytest.mark.parametrize("arch,knob,value", [("resnet34_unet", "downsample", "strided_conv"),
                                             ("unet", "deep_supervision", True),
                                             ("unet", "decoder_widths", [8, 8, 8, 8, 8])])
def test_knob_the_arch_does_not_take_is_an_error(arch, knob, value, tmp_path):
    with pytest.raises(ValueError, match=f"model.{knob}.*does not apply to model.arch={arch}"):
        create_model(arch, **{knob: value})
    path = tmp_path / "s.yaml"
    path.write_text(f"model: {{arch: {arch}, {knob}: {value}}}\n")
    with pytest.raises(SpecError, match="s.yaml:1: field 'model'.*does not apply"):
        load_spec(path)


def test_default_knobs_are_the_classic_unet():
    assert count_parameters(create_model("unet", base_width=64, upsample="transpose")) == 31_037_633
    assert DEFAULTS["downsample"] == "maxpool" and DEFAULTS["padding_mode"] == "zeros"


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="unet.*resnet34_unet|resnet34_unet.*unet"):
        create_model("segformer")


def test_registry_has_every_architecture():
    assert set(MODELS) == {"unet", "resnet34_unet", "unet_plus_plus"} == set(ARCH_KNOBS)


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
    with pytest.raises(ValueError, match="does not apply to model.arch=unet; it applies to resnet34_unet"):
        create_model("unet", encoder_weights="imagenet")


def test_encoder_freeze_leaves_the_encoder_untouched_then_releases_it():
    """encoder_freeze_epochs: while frozen, an optimizer step changes the decoder only."""
    from harness.engine.step import freeze_encoder

    torch.manual_seed(0)
    model = create_model("resnet34_unet", decoder_widths=(16, 16, 8, 8, 8)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    encoder = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith(("net.stem", "net.stages"))}
    head = model.net.head.weight.detach().clone()
    x = torch.rand(2, 3, 64, 64)
    for frozen in (True, False):
        freeze_encoder(model, frozen)
        optimizer.zero_grad(set_to_none=True)
        model(x).mean().backward()
        optimizer.step()
        changed = [not torch.equal(p, encoder[n]) for n, p in model.named_parameters() if n in encoder]
        assert (not any(changed)) if frozen else all(changed)
    assert not torch.equal(model.net.head.weight, head)


def test_encoder_freeze_needs_pretrained_weights(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("model: {arch: resnet34_unet, encoder_freeze_epochs: 2}\n")
    with pytest.raises(SpecError, match="encoder_freeze_epochs needs pretrained model.encoder_weights"):
        load_spec(path)


def test_encoder_weights_from_a_local_state_dict_file(tmp_path):
    """A saved, randomly initialised torchvision resnet34: the encoder equals the file after the
    build, its sha256 is what the run tags, and a wrong file names its first mismatch."""
    from torchvision.models import resnet34

    from harness.build import build_model
    from harness.models import WeightsUnavailable

    torch.manual_seed(7)
    saved = resnet34(weights=None).state_dict()
    torch.save(saved, tmp_path / "r34.pth")
    (tmp_path / "s.yaml").write_text("model: {arch: resnet34_unet, encoder_weights: r34.pth}\n")
    spec = load_spec(tmp_path / "s.yaml")  # relative to the spec file
    assert spec.model.encoder_weights == str(tmp_path / "r34.pth")
    net = build_model(spec).net
    assert torch.equal(net.stem[0].weight, saved["conv1.weight"])
    assert torch.equal(net.stages[3][0].conv2.weight, saved["layer4.0.conv2.weight"])
    torch.manual_seed(8)
    random_spec = load_spec(tmp_path / "s.yaml", ["model.encoder_weights=none"])
    random = build_model(random_spec).net
    assert not torch.equal(random.stem[0].weight, saved["conv1.weight"])
    from harness.run import weights_file  # the file whose sha256 the run tags (model.encoder_weights.sha256)

    assert weights_file(spec) == tmp_path / "r34.pth" and weights_file(random_spec) is None
    bad = dict(saved)
    bad["layer1.0.conv1.weight"] = torch.zeros(3, 3, 3, 3)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(WeightsUnavailable, match=r"'layer1.0.conv1.weight' has shape \[3, 3, 3, 3\]"):
        build_model(load_spec(tmp_path / "s.yaml", ["model.encoder_weights=" + str(tmp_path / "bad.pth")]))
    with pytest.raises(SpecError, match="model.encoder_weights.*or a path"):
        load_spec(tmp_path / "s.yaml", ["model.encoder_weights=coco"])
