"""Sample grids like the original figures: input / output / target rows for each direction, and a cycle
row x -> G(x) -> G(G(x))."""

from __future__ import annotations

import torch
from torchvision.utils import make_grid

from .data import Domains
from .train import Translator


def sample_grid(translator: Translator, data: Domains, k: int = 6) -> torch.Tensor:
    """A (3, H, W) image in [0, 1]. Rows: x, G(x), y_pi(x); then y, G(y), x; then x, G(x), G(G(x)).

    Columns are the first k training pairs in the pairing in force (aligned order for shuffled)."""
    k = min(k, data.n)
    x = data.x[:k].cpu()
    y = data.y[data.pi[:k].to(data.y.device)].cpu()
    fx = translator.forward(x).cpu()
    rows = [x, fx, y]
    if translator.backward is not None:
        rows += [y, translator.backward(y).cpu(), x, x, fx, translator.backward(fx.to(x.device)).cpu()]
    images = torch.cat(rows)
    return make_grid(images.clamp(-1, 1) * 0.5 + 0.5, nrow=k, padding=2, pad_value=1.0)


def assignment_strip(translator: Translator, data: Domains, a, k: int = 8) -> torch.Tensor:
    """Rows x_i, G(x_i), the nearest y (y_a(i)), G(G(x_i)) for the first k training images: what the
    pairing metrics measure, as a picture. `a` is the assignment a(i) = argmin_j d(G(x_i), y_j), negative
    on a tied row, which shows a blank."""
    k = min(k, data.n)
    x = data.x[:k].cpu()
    fx = translator.forward(x).cpu()
    a = torch.as_tensor(a[:k])
    nearest = data.y[a.clamp(min=0).to(data.y.device)].cpu()
    nearest[a < 0] = 1.0
    rows = [x, fx, nearest]
    if translator.backward is not None:
        rows.append(translator.backward(fx).cpu())
    return make_grid(torch.cat(rows).clamp(-1, 1) * 0.5 + 0.5, nrow=k, padding=2, pad_value=1.0)
