"""MNIST digits photographed in conditions the first six styles lack: uneven light, form boxes, ruled and squared paper.

Issue 17's second round of real-world robustness. Each renderer returns encoded image bytes, as a
user would upload them: grey levels, anti-aliased strokes and lines, sensor noise, blur and JPEG.
The helpers for strokes, colours and encoding are the ones `backend.data.renderings` uses.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

from backend.data.renderings import (
    INK_COLOURS,
    PAPER_COLOURS,
    _encode,
    _ink_on_paper,
    _strokes,
)

LIGHT_PAPERS = PAPER_COLOURS[:4]  # ruled and squared paper is light; the greyish card is for boxes and shadows
LINE_COLOURS = [(150, 180, 215), (160, 160, 165), (170, 195, 225), (185, 170, 150)]  # pale blue, grey, sepia
FORM_COLOURS = [(20, 20, 20), (60, 60, 70), (40, 60, 140), (150, 40, 40), (110, 110, 110)]  # printed box lines
MARGIN_COLOUR = (210, 90, 90)  # a notebook's red margin line


def _place(digit: np.ndarray, side: int, page: tuple[int, int], top: int, left: int) -> np.ndarray:
    """Return a page-sized coverage map (0-1) with the digit's strokes at (top, left)."""
    coverage = np.zeros(page, np.float32)
    coverage[top : top + side, left : left + side] = _strokes(digit, side)
    return coverage


def _band(length: int, start: float, width: float) -> np.ndarray:
    """Anti-aliased coverage of the interval [start, start + width) along an axis of `length` pixels."""
    edges = np.arange(length, dtype=np.float32)
    return np.clip(np.minimum(edges + 1, start + width) - np.maximum(edges, start), 0.0, 1.0)


def _finish(rgb: np.ndarray, rng: np.random.Generator, tilt: float = 0.0) -> bytes:
    """Add sensor noise, a slight tilt, lens blur and JPEG compression, as a phone photo has."""
    rgb = rgb + rng.normal(0, rng.uniform(3, 7), rgb.shape)
    image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    if tilt:
        paper = tuple(int(v) for v in np.median(np.asarray(image).reshape(-1, 3), axis=0))
        image = image.rotate(tilt, resample=Image.Resampling.BICUBIC, fillcolor=paper)
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    return _encode(image, "JPEG", quality=int(rng.integers(60, 92)))


def _page(digit: np.ndarray, rng: np.random.Generator, grow: tuple[float, float]) -> tuple[np.ndarray, int, int, int]:
    """Put the digit at a random spot of a page `grow` times its size: (coverage, side, top, left)."""
    side = int(rng.integers(60, 220))
    height, width = (int(side * rng.uniform(*grow)) for _ in range(2))
    top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
    return _place(digit, side, (height, width), top, left), side, top, left


def uneven_light(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """Dark ink on paper under strong uneven light: a lamp gradient, a hotspot or a hand's shadow."""
    coverage, _, _, _ = _page(digit, rng, (1.3, 2.4))
    height, width = coverage.shape
    rgb = _ink_on_paper(
        coverage, PAPER_COLOURS[rng.integers(len(PAPER_COLOURS))], INK_COLOURS[rng.integers(len(INK_COLOURS))]
    )
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    darkest = rng.uniform(0.25, 0.6)  # the dimmest paper gets this share of the brightest paper's light
    kind = rng.integers(3)
    if kind == 0:  # a linear gradient in any direction
        angle = rng.uniform(0, 2 * np.pi)
        ramp = np.cos(angle) * cols / width + np.sin(angle) * rows / height
        light = 1 - (1 - darkest) * (ramp - ramp.min()) / np.ptp(ramp)
    elif kind == 1:  # a lamp hotspot falling off towards the far corner
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        distance = np.hypot(rows - cy, cols - cx)
        light = 1 - (1 - darkest) * (distance / distance.max()) ** rng.uniform(1.0, 2.0)
    else:  # a shadow with a soft straight edge somewhere across the page
        angle = rng.uniform(0, 2 * np.pi)
        across = np.cos(angle) * (cols - width / 2) + np.sin(angle) * (rows - height / 2)
        edge = rng.uniform(-0.3, 0.3) * min(height, width)
        softness = rng.uniform(0.02, 0.08) * min(height, width)
        light = darkest + (1 - darkest) / (1 + np.exp(-(across - edge) / softness))
    return _finish(rgb * light[..., np.newaxis], rng)


def boxed(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A digit written in a printed form field: a thin box close around it, sometimes a row of cells."""
    coverage, side, top, left = _page(digit, rng, (1.3, 1.9))
    height, width = coverage.shape
    # MNIST's 28 px frame holds a 20 px digit: a box from 0 to 4 px outside the digit, sometimes touching it.
    inset = [rng.uniform(0.0, 0.16) * side for _ in range(4)]
    y0, y1 = top + inset[0], top + side - inset[1]
    x0, x1 = left + inset[2], left + side - inset[3]
    thickness = max(1.0, side * rng.uniform(0.008, 0.025))
    comb = rng.random() < 0.4  # a row of cells: the horizontals run on, neighbour cells' sides appear
    lines = np.zeros_like(coverage)
    span_x = np.ones(width, np.float32) if comb else _band(width, x0, x1 - x0 + thickness)
    for y in (y0, y1):
        np.maximum(lines, _band(height, y, thickness)[:, None] * span_x[None, :], out=lines)
    span_y = _band(height, y0, y1 - y0 + thickness)
    step = x1 - x0
    sides = [x0 + k * step for k in range(-4, 5)] if comb else [x0, x1]
    for x in sides:
        np.maximum(lines, span_y[:, None] * _band(width, x, thickness)[None, :], out=lines)
    rgb = _ink_on_paper(
        lines, LIGHT_PAPERS[rng.integers(len(LIGHT_PAPERS))], FORM_COLOURS[rng.integers(len(FORM_COLOURS))]
    )
    ink = np.asarray(INK_COLOURS[rng.integers(len(INK_COLOURS))], np.float32)
    rgb = rgb * (1 - coverage[..., None]) + ink * coverage[..., None]
    return _finish(rgb, rng, tilt=rng.uniform(-1.0, 1.0))


def _lined_paper(coverage: np.ndarray, rng: np.random.Generator, spacing: float, grid: bool) -> np.ndarray:
    """Paper with pale printed lines (and columns for a grid), the digit's ink written over them."""
    height, width = coverage.shape
    thickness = rng.uniform(0.8, 2.0)
    offset_y, offset_x = rng.uniform(0, spacing, 2)
    rows = np.max([_band(height, y, thickness) for y in np.arange(offset_y - spacing, height, spacing)], axis=0)
    lines = np.broadcast_to(rows[:, None], coverage.shape).copy()
    if grid:
        cols = np.max([_band(width, x, thickness) for x in np.arange(offset_x - spacing, width, spacing)], axis=0)
        np.maximum(lines, cols[None, :], out=lines)
    line_colour = np.asarray(LINE_COLOURS[rng.integers(len(LINE_COLOURS))], np.float32)
    rgb = _ink_on_paper(
        lines * rng.uniform(0.7, 1.0), LIGHT_PAPERS[rng.integers(len(LIGHT_PAPERS))], tuple(line_colour)
    )
    if not grid and rng.random() < 0.4:  # a red margin line, sometimes right through the digit
        margin = _band(width, rng.uniform(0.1, 0.7) * width, thickness + 0.5)[None, :] * np.ones(
            (height, 1), np.float32
        )
        rgb = rgb * (1 - margin[..., None]) + np.asarray(MARGIN_COLOUR, np.float32) * margin[..., None]
    ink = np.asarray(INK_COLOURS[rng.integers(len(INK_COLOURS))], np.float32)
    return rgb * (1 - coverage[..., None]) + ink * coverage[..., None]


def ruled(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A digit on ruled notebook paper, about two line gaps tall, the lines crossing its strokes."""
    coverage, side, _, _ = _page(digit, rng, (1.3, 2.2))
    rgb = _lined_paper(coverage, rng, spacing=side * rng.uniform(0.28, 0.45), grid=False)
    return _finish(rgb, rng, tilt=rng.uniform(-1.0, 1.0))


def squared(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A digit on squared (grid) paper, spanning three to five squares."""
    coverage, side, _, _ = _page(digit, rng, (1.3, 2.2))
    rgb = _lined_paper(coverage, rng, spacing=side * rng.uniform(0.15, 0.25), grid=True)
    return _finish(rgb, rng, tilt=rng.uniform(-1.0, 1.0))


CONDITIONS: dict[str, Callable[[np.ndarray, np.random.Generator], bytes]] = {
    "uneven_light": uneven_light,
    "boxed": boxed,
    "ruled": ruled,
    "squared": squared,
}


def render_conditions(
    images: np.ndarray, labels: np.ndarray, per_condition: int, seed: int = 0
) -> list[tuple[str, int, bytes]]:
    """Render `per_condition` digits in every condition, each its own digits: [(condition, label, bytes), ...]."""
    rng = np.random.default_rng(seed)
    return [
        (name, int(labels[i % len(images)]), render(images[i % len(images)], rng))
        for k, (name, render) in enumerate(CONDITIONS.items())
        for i in range(k * per_condition, (k + 1) * per_condition)
    ]
