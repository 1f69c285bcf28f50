import numpy as np
import torch
import torch.nn.functional as F
from skimage import color as skcolor

from colorize_batch.color import linear_to_srgb8
from colorize_batch.recombination import colorize_full, grey_ab_to_linear


def test_strip_upsampling_equals_torch_bilinear():
    grey = torch.randint(0, 256, (101, 77), dtype=torch.uint8)
    ab = torch.randn(2, 16, 24) * 20
    full_ab = F.interpolate(ab[None], size=(101, 77), mode="bilinear", align_corners=False)[0]
    expected = linear_to_srgb8(grey_ab_to_linear(grey, full_ab)).permute(1, 2, 0).int()
    for strip_pixels in (10**6, 77 * 7, 77):  # one strip, 7-row strips, single rows
        out = colorize_full(grey, ab, strip_pixels=strip_pixels).int()
        assert (out - expected).abs().max() <= 1


def test_zero_ab_returns_the_grey_input_exactly():
    grey = torch.arange(256, dtype=torch.uint8).repeat(3, 1)
    out = colorize_full(grey, torch.zeros(2, 4, 4))
    for c in range(3):
        assert torch.equal(out[..., c], grey)


def test_output_keeps_size_and_lightness_and_strips_do_not_matter():
    rng = np.random.default_rng(0)
    grey = torch.from_numpy(rng.integers(0, 256, (123, 77), dtype=np.uint8))
    ab = torch.randn(2, 32, 32) * 20
    out = colorize_full(grey, ab)
    assert out.shape == (123, 77, 3) and out.dtype == torch.uint8
    assert torch.equal(out, colorize_full(grey, ab, strip_pixels=500))  # many strips
    L_out = skcolor.rgb2lab(out.numpy() / 255.0)[..., 0]
    L_in = skcolor.rgb2lab(np.repeat(grey.numpy()[..., None], 3, 2) / 255.0)[..., 0]
    assert np.abs(L_out - L_in).mean() < 0.5
    ab_out = skcolor.rgb2lab(out.numpy() / 255.0)[..., 1:]
    assert np.abs(ab_out).mean() > 5  # really coloured


def test_sixteen_bit_levels():
    grey16 = torch.tensor([[0, 65535, 32768]], dtype=torch.int32)
    out = colorize_full(grey16, torch.zeros(2, 2, 2), levels=65536)
    assert out[0, :, 0].tolist() == [0, 255, 128]


def test_fast_method_is_close_to_exact_and_keeps_luma():
    from PIL import Image

    from colorize_batch.decoding import network_input
    from colorize_batch.evaluate import ab_of, grey_from_rgb
    from colorize_batch.examples import colour_photo
    from colorize_batch.recombination import chroma_planes, recombine

    truth = colour_photo("astronaut")
    grey = grey_from_rgb(truth)
    small = torch.from_numpy(network_input(grey, 128))
    ab = ab_of(np.asarray(Image.fromarray(truth).resize((128, 128), Image.Resampling.BILINEAR)))
    planes = chroma_planes(small, ab)
    fast = np.asarray(recombine(torch.from_numpy(grey), ab, planes, method="fast"))
    exact = np.asarray(recombine(torch.from_numpy(grey), ab, planes, method="exact"))
    lab_fast, lab_exact = skcolor.rgb2lab(fast / 255.0), skcolor.rgb2lab(exact / 255.0)
    lab_grey = skcolor.rgb2lab(np.repeat(grey[..., None], 3, 2) / 255.0)
    assert np.sqrt(((lab_fast - lab_exact) ** 2).sum(-1)).mean() < 2.0  # ΔE fast vs exact
    assert np.abs(lab_exact[..., 0] - lab_grey[..., 0]).mean() < 0.1  # exact keeps Lab L
    assert np.abs(lab_fast[..., 0] - lab_grey[..., 0]).mean() < 1.0
    luma = np.asarray(Image.fromarray(fast).convert("L")).astype(int)
    assert np.abs(luma - grey).mean() < 0.6  # fast: back to grey gives the scan's grey levels
    # batched planes equal one-by-one planes
    cb2, cr2 = chroma_planes(torch.stack([small, small]), torch.stack([ab, ab]))
    assert torch.equal(cb2[1], planes[0]) and torch.equal(cr2[0], planes[1])


def test_chroma_planes_match_the_unfused_lab_maths():
    """The fused planes equal Lab -> linear RGB -> gamut fit -> sRGB8 -> JFIF done step by step."""
    from colorize_batch.color import linear_to_srgb8
    from colorize_batch.recombination import chroma_planes, grey_ab_to_linear

    gen = torch.Generator().manual_seed(0)
    grey = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8, generator=gen)
    grey[0, :2] = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1)  # black and white rows
    ab = torch.randn(3, 2, 64, 64, generator=gen) * 60  # many colours out of gamut
    for gain in (1.0, 1.3):
        r, g, b = linear_to_srgb8(grey_ab_to_linear(grey, ab * gain), torch.float32).unbind(-3)
        cb_ref = (128.5 - 0.168736 * r - 0.331264 * g + 0.5 * b).clamp(0, 255).to(torch.uint8)
        cr_ref = (128.5 + 0.5 * r - 0.418688 * g - 0.081312 * b).clamp(0, 255).to(torch.uint8)
        cb, cr = chroma_planes(grey, ab, gain)
        for fused, ref in ((cb, cb_ref), (cr, cr_ref)):
            diff = (fused.int() - ref.int()).abs()
            assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3  # float rounding only
        assert cb[0, 1].eq(128).all() and cr[0, 0].eq(128).all()  # white and black carry no colour
