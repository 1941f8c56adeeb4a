"""Generators (encdec, unet) and PatchGAN discriminators, built by name from a RunConfig, and one seed's networks
with their optimizers (`build`).

One factory per kind (`define_G`, `define_D`) is the one place to add an architecture.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import chain

import torch
import torch.nn.functional as F
from torch import nn

from .config import RunConfig
from .execution import resolve_execution, switch


def norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.Identity()


def init_weights(module: nn.Module, gain: float = 0.02) -> None:
    """N(0, 0.02) as in pix2pix: the default Kaiming init made the tiny-data GAN diverge more often."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.InstanceNorm2d) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)


def _phase_kernels(weight: torch.Tensor) -> torch.Tensor:
    """3x3 kernels -> the four 2x2 kernels that act on the low-resolution input, one per output phase.

    Nearest 2x upsampling repeats each pixel, so output row 2i (phase 0) sees input rows i-1, i, i with
    taps W0, W1, W2 (the two taps on row i sum), and row 2i+1 (phase 1) sees rows i, i, i+1. Likewise
    for columns. Order of the result: phases (0,0), (0,1), (1,0), (1,1) stacked on the output axis."""
    w0, w1, w2 = weight[:, :, 0], weight[:, :, 1], weight[:, :, 2]
    rows = (torch.stack([w0, w1 + w2], 2), torch.stack([w0 + w1, w2], 2))
    kernels = []
    for r in rows:
        c0, c1, c2 = r[..., 0], r[..., 1], r[..., 2]
        kernels += [torch.stack([c0, c1 + c2], -1), torch.stack([c0 + c1, c2], -1)]
    return torch.cat(kernels, 0)


class UpConv(nn.Module):
    """Nearest 2x upsampling then a 3x3 convolution, as in the original decoder.

    `fused=True` computes the same function without building the upsampled tensor: four 2x2
    convolutions on the low-resolution input, interleaved. That is 16 instead of 36 multiply-adds per
    output pixel and channel pair; the weights (and the state dict) are those of the 3x3 convolution."""

    def __init__(self, in_channels: int, out_channels: int, fused: bool = True, bias: bool = True):
        super().__init__()
        self.fused = fused
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the 2x2 convolutions also cover a one-pixel border, and oneDNN runs few-pixel maps poorly:
        # up to 4x4 inputs the plain path was faster on the seed workload (measured)
        if not self.fused or min(x.shape[-2:]) <= 4:
            return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
        n, _, h, w = x.shape
        c = self.conv.out_channels
        bias = self.conv.bias.repeat(4) if self.conv.bias is not None else None
        y = F.conv2d(F.pad(x, (1, 1, 1, 1)), _phase_kernels(self.conv.weight), bias)
        offsets = ((0, 0), (0, 1), (1, 0), (1, 1))
        phases = [y[:, k * c : (k + 1) * c, a : a + h, b : b + w] for k, (a, b) in enumerate(offsets)]
        out = torch.stack(phases, 2).view(n, c, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
        return out.reshape(n, c, 2 * h, 2 * w)


class Generator(nn.Module):
    """Stride-2 3x3 encoder down to 1x1, upsampling + 3x3 conv decoder, tanh output.

    Layer i has base*min(8, 2^i) filters. `skips=True` is the U-Net: decoder block i also sees encoder
    output i. The first and innermost encoder layers carry no norm, as in pix2pix: the innermost is
    1x1, where instance norm is undefined and batch norm sees one value per image.
    """

    def __init__(self, image_size: int, base: int = 64, norm: str = "batch", dropout: float = 0.0,
                 skips: bool = True, channels: int = 3, fused_upsample: bool = True):
        super().__init__()
        depth = int(math.log2(image_size))
        widths = [base * min(8, 2**i) for i in range(depth)]
        self.skips = skips
        self.down = nn.ModuleList()
        # a bias right before a norm layer is removed by it: its gradient is rounding noise
        normed = norm != "none"
        for i in range(depth):
            has_norm = 0 < i < depth - 1
            layers = [nn.Conv2d(channels if i == 0 else widths[i - 1], widths[i], 3, stride=2, padding=1,
                                bias=not (has_norm and normed))]
            if has_norm:
                layers.append(norm_layer(norm, widths[i]))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            self.down.append(nn.Sequential(*layers))
        self.up = nn.ModuleList()
        for i in range(depth - 1, 0, -1):
            inner = i == depth - 1
            in_ch = widths[i] * (1 if inner or not skips else 2)
            layers = [UpConv(in_ch, widths[i - 1], fused_upsample, bias=not normed), norm_layer(norm, widths[i - 1])]
            if dropout > 0 and i >= depth - 3:
                layers.append(nn.Dropout(dropout))
            layers.append(nn.ReLU(inplace=True))
            self.up.append(nn.Sequential(*layers))
        self.out = nn.Sequential(UpConv(widths[0] * (2 if skips else 1), channels, fused_upsample), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = []
        for layer in self.down:
            x = layer(x)
            features.append(x)
        for k, layer in enumerate(self.up):
            if k > 0 and self.skips:
                x = torch.cat([x, features[-1 - k]], dim=1)
            x = layer(x)
        if self.skips:
            x = torch.cat([x, features[0]], dim=1)
        return self.out(x)


class PatchDiscriminator(nn.Module):
    """PatchGAN: a grid of real/fake logits, one per overlapping patch.

    Conditional (in_channels = 6) it sees the input and the candidate output together, as pix2pix's D
    does. Its stride-2 depth shrinks with the image so that 16-pixel images still give a patch grid.
    """

    def __init__(self, image_size: int, in_channels: int, base: int = 64, norm: str = "batch"):
        super().__init__()
        n_down = max(1, min(3, int(math.log2(image_size)) - 3))
        layers: list[nn.Module] = [nn.Conv2d(in_channels, base, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        width = base
        for i in range(1, n_down + 1):
            nxt = base * min(8, 2**i)
            layers += [nn.Conv2d(width, nxt, 4, stride=2 if i < n_down else 1, padding=1, bias=norm == "none"),
                       norm_layer(norm, nxt), nn.LeakyReLU(0.2, True)]
            width = nxt
        layers.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, candidate: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        if condition is not None:
            candidate = torch.cat([condition, candidate], dim=1)
        return self.model(candidate)


GENERATORS: dict[str, Callable[[RunConfig, bool], nn.Module]] = {
    "encdec": lambda c, fused: Generator(c.image_size, c.base_filters, c.norm, c.dropout, False, 3, fused),
    "unet": lambda c, fused: Generator(c.image_size, c.base_filters, c.norm, c.dropout, True, 3, fused),
}


def define_G(config: RunConfig, device: torch.device | None = None) -> nn.Module:
    """G as it runs on `device` (default: the config's): fused_upsample=auto is resolved for that device."""
    net = GENERATORS[config.arch](config, switch(config, "fused_upsample", device))
    init_weights(net)
    return net


def define_D(config: RunConfig, conditional: bool) -> nn.Module:
    net = PatchDiscriminator(config.image_size, 6 if conditional else 3, config.d_filters, config.norm)
    init_weights(net)
    return net


def build(config: RunConfig, device: torch.device) -> tuple[dict[str, nn.Module], dict[str, torch.optim.Optimizer]]:
    """One seed's networks and optimizers as the run executes them: cyclegan's G, F, D_X, D_Y (G and F share an
    optimizer, as do the Ds), or the one G and its conditional D."""
    if config.scheme == "cyclegan":
        nets = {"G": define_G(config, device), "F": define_G(config, device),
                "D_X": define_D(config, conditional=False), "D_Y": define_D(config, conditional=False)}
        groups = {"G": ["G", "F"], "D": ["D_X", "D_Y"]}
    else:
        nets = {"G": define_G(config, device), "D": define_D(config, conditional=True)}
        groups = {"G": ["G"], "D": ["D"]}
    memory = torch.channels_last if switch(config, "channels_last", device) else torch.contiguous_format
    for net in nets.values():
        net.to(device=device, memory_format=memory)
    optims = {name: adam(chain(*(nets[k].parameters() for k in members)), config, device)
              for name, members in groups.items()}
    return nets, optims


def adam(params, config: RunConfig, device: torch.device) -> torch.optim.Adam:
    """Adam as the run executes it: the fused kernel updates all parameters in one pass (fused_adam); a replayed
    step keeps its step counts on the device (capturable)."""
    execution = resolve_execution(config, device)
    return torch.optim.Adam(params, lr=config.lr, betas=(config.beta1, config.beta2), fused=execution["fused_adam"],
                            capturable=execution["replay"] and device.type == "cuda")
