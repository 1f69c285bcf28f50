"""The pix2pix networks: a U-Net generator (L -> ab) and a PatchGAN discriminator.

Written in the style of the pix2pix reference ``networks.py``: small builder functions,
the normalisation layer passed in, one ``init_weights``. The whole generator architecture
lives in :class:`UNetConfig`; :data:`PRESETS` names the useful ones.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
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


PRESETS: dict[str, UNetConfig] = {
    # The seed prototype's generator: 64 base channels, 8 levels, 54.4M parameters.
    "pix2pix-256": UNetConfig(base_channels=64, depth=8, max_channels=512, dropout_blocks=3),
    # CPU-friendly default: 32 base channels, 7 levels, about 10.5M parameters.
    "lite": UNetConfig(base_channels=32, depth=7, max_channels=256, dropout_blocks=2),
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

    def __init__(self, config: UNetConfig = PRESETS["lite"]):
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
        return self.loss(prediction, target.expand_as(prediction))


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


def build_generator(config: UNetConfig | str = "lite") -> UNetGenerator:
    if isinstance(config, str):
        config = PRESETS[config]
    return init_weights(UNetGenerator(config))  # type: ignore[return-value]


def build_discriminator(n_layers: int = 3, base_channels: int = 64, norm: str = "batch") -> PatchDiscriminator:
    return init_weights(PatchDiscriminator(3, base_channels, n_layers, norm))  # type: ignore[return-value]


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


__all__ = [
    "PRESETS",
    "GANLoss",
    "PatchDiscriminator",
    "UNetConfig",
    "UNetGenerator",
    "build_discriminator",
    "build_generator",
    "count_parameters",
    "init_weights",
]
