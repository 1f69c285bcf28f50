import numpy as np
import pytest
import torch
from skimage import color as skcolor

from colorize_batch import color


@pytest.fixture
def rgb():
    rng = np.random.default_rng(1)
    return rng.random((4, 3, 32, 40)).astype(np.float32)


def _delta_e(lab1, lab2):
    return np.sqrt(((lab1 - lab2) ** 2).sum(axis=-1))


def test_rgb_to_lab_matches_skimage(rgb):
    ours = color.rgb_to_lab(torch.from_numpy(rgb)).numpy().transpose(0, 2, 3, 1)
    ref = skcolor.rgb2lab(rgb.transpose(0, 2, 3, 1).astype(np.float64))
    assert _delta_e(ours, ref).mean() < 0.5
    assert _delta_e(ours, ref).max() < 0.5


def test_lab_to_rgb_matches_skimage(rgb):
    lab = skcolor.rgb2lab(rgb.transpose(0, 2, 3, 1).astype(np.float64))
    ours = color.lab_to_rgb(torch.from_numpy(lab.transpose(0, 3, 1, 2)).float()).numpy().transpose(0, 2, 3, 1)
    ref = skcolor.lab2rgb(lab)
    assert np.abs(ours - ref).max() < 1e-3
    # and the round trip in Lab is within ΔE 0.5
    back = skcolor.rgb2lab(ours.astype(np.float64))
    assert _delta_e(back, lab).mean() < 0.5


def test_out_of_gamut_lab_is_clipped_like_skimage():
    lab = torch.tensor([[[[50.0]], [[120.0]], [[-120.0]]]])
    ours = color.lab_to_rgb(lab).numpy().transpose(0, 2, 3, 1)
    assert ours.min() >= 0 and ours.max() <= 1
    ref = skcolor.lab2rgb(lab.numpy().transpose(0, 2, 3, 1).astype(np.float64))
    assert np.abs(ours - ref).max() < 2e-3


def test_grey_lightness_lut_matches_skimage():
    levels = np.arange(256, dtype=np.uint8)
    rgb = np.repeat(levels[None, :, None], 3, axis=2).astype(np.float64) / 255
    ref = skcolor.rgb2lab(rgb)[0, :, 0]
    ours = color.grey_to_lightness(torch.from_numpy(levels)).numpy()
    assert np.abs(ours - ref).max() < 0.01
    sixteen = color.grey_to_lightness(torch.tensor([0, 32896, 65535]), levels=65536).numpy()
    assert sixteen[0] == pytest.approx(0, abs=1e-3) and sixteen[2] == pytest.approx(100, abs=1e-3)


def test_normalisation_is_the_seeds():
    L = torch.tensor([0.0, 50.0, 100.0])
    assert color.normalize_l(L).tolist() == [-1.0, 0.0, 1.0]
    assert color.denormalize_l(color.normalize_l(L)).tolist() == L.tolist()
    assert color.normalize_ab(torch.tensor([110.0, -55.0])).tolist() == [1.0, -0.5]
    assert color.denormalize_ab(torch.tensor([1.0])).item() == 110.0


def test_chroma_gamut_mapping_keeps_lightness():
    lab = torch.tensor([[[20.0, 90.0, 50.0]], [[80.0, -70.0, 0.0]], [[90.0, 90.0, 0.0]]]).permute(2, 1, 0)
    lab = lab.reshape(3, 1, 3)  # three strongly out-of-gamut pixels
    clipped = color.lab_to_rgb(lab)
    kept = color.lab_to_rgb(lab, gamut="chroma")
    L_clip = color.rgb_to_lab(clipped)[0]
    L_kept = color.rgb_to_lab(kept)[0]
    assert (L_kept - lab[0]).abs().max() < 0.5 < (L_clip - lab[0]).abs().max()
    assert color.rgb_to_lab(kept)[1:].abs().max() > 5  # colour is reduced, not removed
