import pytest
import torch
from torch import nn

from colorize_batch.model import (
    PRESETS,
    GANLoss,
    UNetConfig,
    build_discriminator,
    build_generator,
    count_parameters,
    init_weights,
)
from colorize_batch.weights import WeightsError, load_weights, save_weights


def test_presets_have_the_documented_sizes():
    assert count_parameters(build_generator("pix2pix-256")) == pytest.approx(54.4e6, rel=0.005)
    assert count_parameters(build_generator("lite")) <= 15e6


def test_generator_maps_l_to_ab_in_range_any_aspect():
    gen = build_generator("tiny").eval()
    out = gen(torch.randn(3, 1, 32, 48))
    assert out.shape == (3, 2, 32, 48)
    assert out.abs().max() <= 1


def test_generator_uses_4x4_stride2_convs_and_no_pooling():
    gen = build_generator("lite")
    convs = [m for m in gen.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert convs and all(m.kernel_size == (4, 4) and m.stride == (2, 2) for m in convs)
    assert not any(isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) for m in gen.modules())
    assert sum(isinstance(m, nn.Dropout) for m in gen.modules()) == PRESETS["lite"].dropout_blocks


def test_init_weights_is_normal_0_002():
    torch.manual_seed(0)
    gen = init_weights(build_generator("lite"))
    weights = torch.cat([m.weight.detach().flatten() for m in gen.modules() if isinstance(m, nn.Conv2d)])
    assert weights.mean().abs() < 1e-3
    assert weights.std() == pytest.approx(0.02, rel=0.05)


@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
def test_norm_layer_is_configurable(norm):
    cfg = UNetConfig(base_channels=8, depth=4, max_channels=32, norm=norm)
    gen = build_generator(cfg)
    assert gen(torch.randn(2, 1, 32, 32)).shape == (2, 2, 32, 32)


def test_patchgan_and_losses():
    disc = build_discriminator(n_layers=3, base_channels=16)
    logits = disc(torch.randn(2, 3, 64, 64))
    assert logits.shape[:2] == (2, 1) and logits.shape[-1] > 1  # a map of patches
    for mode in ("vanilla", "lsgan"):
        loss = GANLoss(mode)
        assert loss(torch.full((1, 1, 4, 4), 10.0), True) < loss(torch.full((1, 1, 4, 4), 10.0), False)
    with pytest.raises(ValueError):
        GANLoss("wgan")


def test_weights_round_trip_in_fp16(tmp_path):
    gen = build_generator("tiny").eval()
    path = save_weights(tmp_path / "w.pt", gen, {"name": "t"})
    loaded, info = load_weights(path)
    assert info.architecture == gen.config and info.model_id.startswith("t@")
    x = torch.randn(1, 1, 32, 32)
    assert torch.allclose(gen(x), loaded(x), atol=1e-2)
    payload = torch.load(path, weights_only=True)
    assert all(v.dtype == torch.float16 for v in payload["state_dict"].values() if v.is_floating_point())


def test_bad_weights_files_give_one_line_errors(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    wrong = tmp_path / "wrong.pt"
    gen = build_generator("tiny")
    save_weights(wrong, gen)
    payload = torch.load(wrong, weights_only=True)
    payload["architecture"]["base_channels"] = 16
    torch.save(payload, wrong)
    for path in (junk, other, wrong, tmp_path / "missing.pt"):
        with pytest.raises(WeightsError) as err:
            load_weights(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)
