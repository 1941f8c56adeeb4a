"""Embedded synthetic domains: procedural cartoon faces and aeroplanes, nothing downloaded.

Image i of a domain depends only on (domain, seed, i), never on how many images are asked for or on
the image size, so a study that grows N keeps its first images and a 16-pixel and a 128-pixel run see
the same drawings. Every image draws its own colours, sizes, positions and details from a wide range,
so no two are nearly identical and nearest-neighbour assignment between images means something.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageDraw

DOMAINS = ("faces", "planes")
_DOMAIN_CODE = {"faces": 1, "planes": 2}


def _colour(rng: np.random.Generator, low: int = 0, high: int = 256) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(low, high, size=3))


def _draw_face(draw: ImageDraw.ImageDraw, rng: np.random.Generator, s: int) -> None:
    cx, cy = rng.uniform(0.35, 0.65, size=2) * s
    rx, ry = rng.uniform(0.18, 0.32) * s, rng.uniform(0.2, 0.34) * s
    skin = _colour(rng, 40, 256)
    ears = rng.integers(0, 3)  # 0 none (a man), 1 pointed (a cat), 2 round (a dog or bear)
    ear_colour = _colour(rng, 20, 240)
    for side in (-1, 1):
        ex = cx + side * rx * 0.75
        ey = cy - ry * 0.75
        if ears == 1:
            draw.polygon([(ex - rx * 0.35, ey + ry * 0.2), (ex + rx * 0.35, ey + ry * 0.2),
                          (ex + side * rx * 0.2, ey - ry * 0.6)], fill=ear_colour)
        elif ears == 2:
            r = rx * rng.uniform(0.25, 0.45)
            draw.ellipse([ex - r, ey - r, ex + r, ey + r], fill=ear_colour)
    draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=skin)
    if rng.random() < 0.5:  # hair or a fur patch across the forehead
        draw.chord([cx - rx, cy - ry, cx + rx, cy + ry * rng.uniform(0.0, 0.6)], 180, 360,
                   fill=_colour(rng, 0, 200))
    eye_dx, eye_y = rng.uniform(0.25, 0.5) * rx, cy - rng.uniform(0.0, 0.3) * ry
    eye_r = rng.uniform(0.1, 0.22) * rx
    iris = _colour(rng, 0, 200)
    for side in (-1, 1):
        ex = cx + side * eye_dx
        draw.ellipse([ex - eye_r, eye_y - eye_r, ex + eye_r, eye_y + eye_r], fill=(250, 250, 250))
        p = eye_r * 0.55
        draw.ellipse([ex - p, eye_y - p, ex + p, eye_y + p], fill=iris)
    nose_r = rng.uniform(0.05, 0.14) * rx
    ny = cy + rng.uniform(0.05, 0.25) * ry
    draw.ellipse([cx - nose_r, ny - nose_r, cx + nose_r, ny + nose_r], fill=_colour(rng, 0, 160))
    mw, my = rng.uniform(0.25, 0.6) * rx, cy + rng.uniform(0.35, 0.6) * ry
    mh = rng.uniform(0.05, 0.25) * ry
    smile = rng.random() < 0.7
    draw.arc([cx - mw, my - mh, cx + mw, my + mh], 0 if smile else 180, 180 if smile else 360,
             fill=_colour(rng, 0, 120), width=max(1, int(s * 0.02)))


def _rotate(points: np.ndarray, angle: float, centre: np.ndarray) -> list[tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    rotated = points @ np.array([[c, s], [-s, c]]) + centre
    return [tuple(p) for p in rotated]


def _draw_plane(draw: ImageDraw.ImageDraw, rng: np.random.Generator, s: int) -> None:
    for _ in range(rng.integers(0, 4)):  # clouds
        cx, cy = rng.uniform(0, 1, size=2) * s
        r = rng.uniform(0.05, 0.15) * s
        draw.ellipse([cx - 2 * r, cy - r, cx + 2 * r, cy + r], fill=_colour(rng, 200, 256))
    length = rng.uniform(0.45, 0.85) * s
    width = length * rng.uniform(0.08, 0.16)
    span = length * rng.uniform(0.6, 1.1)
    sweep = rng.uniform(-0.15, 0.35) * length
    centre = rng.uniform(0.4, 0.6, size=2) * s
    angle = rng.uniform(-math.pi, math.pi)
    body = _colour(rng, 0, 256)
    wing = body if rng.random() < 0.5 else _colour(rng, 0, 256)
    half = length / 2
    wings = np.array([[0.1 * length, 0], [-0.05 * length - sweep, span / 2],
                      [-0.2 * length - sweep, span / 2], [-0.1 * length, 0],
                      [-0.2 * length - sweep, -span / 2], [-0.05 * length - sweep, -span / 2]])
    tail = np.array([[-0.35 * length, 0], [-half - 0.05 * length, span / 5],
                     [-half, 0], [-half - 0.05 * length, -span / 5]])
    fuselage = np.array([[half * math.cos(t), width / 2 * math.sin(t)] for t in np.linspace(0, 2 * math.pi, 24)])
    draw.polygon(_rotate(wings, angle, centre), fill=wing)
    draw.polygon(_rotate(tail, angle, centre), fill=wing)
    draw.polygon(_rotate(fuselage, angle, centre), fill=body)
    if rng.random() < 0.6:  # a stripe of windows along the fuselage
        stripe = np.array([[0.3 * half, -width / 6], [0.3 * half, width / 6],
                           [-0.5 * half, width / 6], [-0.5 * half, -width / 6]])
        draw.polygon(_rotate(stripe, angle, centre), fill=_colour(rng, 0, 256))


def _background(rng: np.random.Generator, s: int, domain: str) -> Image.Image:
    top = np.array(_colour(rng, 60, 256) if domain == "planes" else _colour(rng, 0, 256), dtype=np.float32)
    bottom = np.array(_colour(rng, 0, 256), dtype=np.float32)
    ramp = np.linspace(0.0, 1.0, s, dtype=np.float32)[:, None, None]
    pixels = top * (1 - ramp) + bottom * ramp
    return Image.fromarray(np.broadcast_to(pixels, (s, s, 3)).astype(np.uint8), "RGB")


def synthetic_image(domain: str, index: int, size: int, seed: int = 0) -> torch.Tensor:
    """One image (3, size, size) in [-1, 1]."""
    from torchvision.transforms.v2 import functional as TF  # lazy: torchvision's import loads torch._dynamo

    if domain not in _DOMAIN_CODE:
        raise ValueError(f"unknown synthetic domain {domain!r}; allowed: {', '.join(DOMAINS)}")
    rng = np.random.default_rng((seed, _DOMAIN_CODE[domain], index))
    # drawn large and box-filtered down, so that small sizes are anti-aliased versions of one drawing
    canvas = 256
    image = _background(rng, canvas, domain)
    draw = ImageDraw.Draw(image)
    (_draw_face if domain == "faces" else _draw_plane)(draw, rng, canvas)
    if size != canvas:
        image = image.resize((size, size), Image.Resampling.BOX if size < canvas else Image.Resampling.BICUBIC)
    return TF.to_dtype(TF.pil_to_tensor(image), torch.float32, scale=True) * 2 - 1


def synthetic_domain(domain: str, n: int, size: int, seed: int = 0, start: int = 0) -> torch.Tensor:
    """Images start .. start+n-1 of a domain, (n, 3, size, size) in [-1, 1]."""
    return torch.stack([synthetic_image(domain, i, size, seed) for i in range(start, start + n)])
