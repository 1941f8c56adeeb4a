"""The few image operations the harness needs, in plain torch: the same arithmetic as torchvision's
functional transforms (tests/test_data.py checks them bit for bit), without importing torchvision, whose
package init loads its models and ops and torch._dynamo: about a second for a process that reads or draws
images (a process that trains loads torch._dynamo anyway, with its first optimizer, but not the rest)."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL image as a uint8 CHW tensor, a view of an HWC copy (torchvision's layout, which resize follows)."""
    return torch.as_tensor(np.array(image, copy=True)).view(image.size[1], image.size[0], -1).permute(2, 0, 1)


def to_pil_image(image: torch.Tensor) -> Image.Image:
    """A CHW RGB image in [0, 1] as an 8-bit picture (values truncated, as torchvision does)."""
    return Image.fromarray((image.permute(1, 2, 0).numpy(force=True) * 255).astype(np.uint8), "RGB")


def uint8_to_unit(images: torch.Tensor) -> torch.Tensor:
    return images.to(torch.float32).mul_(1.0 / 255)


def resize_shorter(images: torch.Tensor, size: int) -> torch.Tensor:
    """Float (..., C, H, W) with the shorter side resized to `size`: bilinear, antialiased."""
    channels, height, width = images.shape[-3:]
    short, long = sorted((height, width))
    new_short, new_long = size, int(size * long / short)
    new_h, new_w = (new_long, new_short) if width <= height else (new_short, new_long)
    if (new_h, new_w) == (height, width):
        return images
    batch = images.reshape(-1, channels, height, width)
    out = torch.nn.functional.interpolate(batch, size=[new_h, new_w], mode="bilinear", align_corners=False,
                                          antialias=True)
    return out.reshape(*images.shape[:-3], channels, new_h, new_w)


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """The central size x size part of images at least that large."""
    height, width = images.shape[-2:]
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return images[..., top:top + size, left:left + size]


def gaussian_blur(images: torch.Tensor, kernel: int, sigma: float) -> torch.Tensor:
    """Float NCHW images blurred by a kernel x kernel Gaussian, edges reflected."""
    lim = (kernel - 1) / (2.0 * math.sqrt(2.0))
    x = torch.linspace(-lim, lim, steps=kernel, dtype=images.dtype, device=images.device)
    k1 = torch.softmax(x.div(sigma).pow(2).neg(), dim=0)
    k2 = (k1.unsqueeze(-1) * k1).expand(images.shape[-3], 1, kernel, kernel)
    padded = torch.nn.functional.pad(images, [kernel // 2] * 4, mode="reflect")
    return torch.nn.functional.conv2d(padded, k2, groups=images.shape[-3])


def make_grid(images: torch.Tensor, nrow: int, padding: int = 2, pad_value: float = 0.0) -> torch.Tensor:
    """NCHW images as one CHW picture, `nrow` to a row, `padding` pixels of `pad_value` around each."""
    if images.shape[0] == 1:
        return images[0]
    n, channels, h, w = images.shape
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    height, width = h + padding, w + padding
    grid = images.new_full((channels, height * rows + padding, width * cols + padding), pad_value)
    for k in range(n):
        y, x = divmod(k, cols)
        grid[:, y * height + padding:(y + 1) * height, x * width + padding:(x + 1) * width].copy_(images[k])
    return grid
