"""Sample grids like the original figures: input / output / target rows for each direction, and a cycle
row x -> G(x) -> G(G(x))."""

from __future__ import annotations

import functools
import math
import zlib

import torch
from PIL import Image, ImageDraw, ImageFont

from .data import Domains
from .train import Translator

SAMPLE_ROWS = ("x", "G(x)", "target y", "y", "G(y)", "target x", "x", "G(x)", "G(G(x)) cycle")
STRIP_ROWS = ("x_i", "G(x_i)", "nearest y", "G(G(x_i))")
HOLDOUT_ROWS = ("held-out x", "G(x)", "nearest training y")
# how pictures are saved: labelled upscales flat blocks, where zlib's run-length strategy at its fastest level
# writes files as small as the default level does, in half its time (the pictures are lossless either way)
PNG_OPTIONS = {"compress_level": 1, "compress_type": zlib.Z_RLE}


def labelled(grid: torch.Tensor, rows: tuple[str, ...] | list[str], min_width: int = 512) -> Image.Image:
    """A grid of equal rows in [0, 1], upscaled with nearest neighbour to at least `min_width` pixels (32 px
    images are stamps in the MLflow UI otherwise) and with each row's name in a margin on the left. A picture
    (8-bit RGB), ready to save: drawn in 8 bits, it costs a third of the float version."""
    from torchvision.transforms.v2 import functional as TF  # lazy: torchvision's import loads torch._dynamo

    scale = max(1, math.ceil(min_width / grid.shape[-1]))
    small = TF.to_pil_image(grid.float().clamp(0, 1))
    big = small.resize((small.width * scale, small.height * scale), Image.Resampling.NEAREST)
    font = _font(max(12, min(28, big.height // (3 * len(rows)))))
    margin = int(max(draw_width(font, r) for r in rows)) + 16
    canvas = Image.new("RGB", (big.width + margin, big.height), "white")
    canvas.paste(big, (margin, 0))
    draw = ImageDraw.Draw(canvas)
    height = big.height / len(rows)
    for r, text in enumerate(rows):
        draw.text((8, (r + 0.5) * height), text, fill="black", font=font, anchor="lm")
    return canvas


@functools.lru_cache(maxsize=8)
def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def draw_width(font, text: str) -> float:
    return ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(text, font=font)


def sample_grid(translator: Translator, data: Domains, k: int = 6, outputs: dict | None = None) -> torch.Tensor:
    """A (3, H, W) image in [0, 1]. Rows: x, G(x), y_pi(x); then y, G(y), x; then x, G(x), G(G(x)).

    Columns are the first k training pairs in the pairing in force (aligned order for shuffled). `outputs`
    (G(x), G(y), G(G(x)) on every training image, as an evaluation computed them) saves running G again."""
    from torchvision.utils import make_grid

    k = min(k, data.n)
    pi = data.pi[:k].cpu()
    x, y = data.x[:k].cpu(), data.y.cpu()[pi]
    if outputs is None:
        fx = translator.forward(x).cpu()
        gy = translator.backward(y).cpu() if translator.backward is not None else None
        gfx = translator.backward(fx.to(data.x.device)).cpu() if translator.backward is not None else None
    else:
        fx = outputs["G(x)"][:k].cpu()
        gy, gfx = (outputs["G(y)"].cpu()[pi], outputs["G(G(x))"][:k].cpu()) if "G(y)" in outputs else (None, None)
    rows = [x, fx, y]
    if gy is not None:
        rows += [y, gy, x, x, fx, gfx]
    return make_grid(torch.cat(rows).clamp(-1, 1) * 0.5 + 0.5, nrow=k, padding=2, pad_value=1.0)


def assignment_strip(translator: Translator, data: Domains, a, k: int = 8, outputs: dict | None = None) -> torch.Tensor:
    """Rows x_i, G(x_i), the nearest y (y_a(i)), G(G(x_i)) for the first k training images: what the
    pairing metrics measure, as a picture. `a` is the assignment a(i) = argmin_j d(G(x_i), y_j), negative
    on a tied row, which shows a blank. `outputs` as in sample_grid."""
    from torchvision.utils import make_grid

    k = min(k, data.n)
    x = data.x[:k].cpu()
    if outputs is None:
        fx = translator.forward(x).cpu()
        gfx = translator.backward(fx).cpu() if translator.backward is not None else None
    else:
        fx, gfx = outputs["G(x)"][:k].cpu(), outputs.get("G(G(x))")
        gfx = gfx[:k].cpu() if gfx is not None else None
    a = torch.as_tensor(a[:k])
    nearest = data.y[a.clamp(min=0).to(data.y.device)].cpu()
    nearest[a < 0] = 1.0
    rows = [x, fx, nearest] + ([gfx] if gfx is not None else [])
    return make_grid(torch.cat(rows).clamp(-1, 1) * 0.5 + 0.5, nrow=k, padding=2, pad_value=1.0)


def holdout_strip(translator: Translator, data: Domains, k: int = 8,
                  outputs: dict | None = None) -> torch.Tensor | None:
    """Rows: held-out x (never trained on), G(x), and the training y nearest to G(x): where G renders a new
    input as one of its memorised targets (mem/holdout_copy_rate), the last two rows look alike. `outputs`
    as in sample_grid, with G(x) of the held-out images under "G(x_holdout)"."""
    from torchvision.utils import make_grid

    k = min(k, len(data.x_holdout))
    if k == 0:
        return None
    x = data.x_holdout[:k].cpu()
    fx = (outputs["G(x_holdout)"][:k] if outputs is not None else translator.forward(x)).cpu()
    y = data.y.cpu()
    nearest = y[torch.cdist(fx.flatten(1).float(), y.flatten(1).float(), p=1).argmin(1)]
    return make_grid(torch.cat([x, fx, nearest]).clamp(-1, 1) * 0.5 + 0.5, nrow=k, padding=2, pad_value=1.0)
