"""MNIST digits rendered the way users really send them: photos, scans, canvas drawings, markers.

Tests, benchmarks, the Locust sample set and the notebook use these renderings to check that the
stem and model work on real-world input, not only on MNIST's own clean 28x28 arrays.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageFilter

PAPER_COLOURS = [(250, 250, 248), (238, 230, 205), (222, 232, 240), (245, 236, 236), (205, 205, 200)]
INK_COLOURS = [(20, 20, 25), (25, 40, 120), (120, 20, 25), (40, 40, 40), (10, 70, 30)]


def _strokes(digit: np.ndarray, side: int) -> np.ndarray:
    """Upscale a 28x28 MNIST digit to `side` px and return its ink coverage in 0-1."""
    image = Image.fromarray(np.asarray(digit, dtype=np.uint8)).resize((side, side), Image.Resampling.BICUBIC)
    return np.clip(np.asarray(image, dtype=np.float32) / 255.0, 0.0, 1.0)


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    """Encode a PIL image to bytes in the given format."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _ink_on_paper(coverage: np.ndarray, paper: tuple, ink: tuple) -> np.ndarray:
    """Blend ink into paper colour by coverage: (h, w) -> (h, w, 3) float."""
    alpha = coverage[..., np.newaxis]
    return np.asarray(paper, np.float32) * (1 - alpha) + np.asarray(ink, np.float32) * alpha


def photo(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """Dark ink on tinted paper, off-centre, unevenly lit, noisy and JPEG-compressed."""
    side = int(rng.integers(60, 260))
    page_h, page_w = (int(side * rng.uniform(1.3, 2.2)) for _ in range(2))
    coverage = np.zeros((page_h, page_w), np.float32)
    top, left = int(rng.integers(0, page_h - side + 1)), int(rng.integers(0, page_w - side + 1))
    coverage[top : top + side, left : left + side] = _strokes(digit, side)
    rgb = _ink_on_paper(
        coverage, PAPER_COLOURS[rng.integers(len(PAPER_COLOURS))], INK_COLOURS[rng.integers(len(INK_COLOURS))]
    )
    ramp = np.linspace(-1, 1, page_w)[np.newaxis, :, np.newaxis] * rng.uniform(5, 25)  # uneven light
    rgb = rgb + ramp + rng.normal(0, 6, rgb.shape)
    image = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2))
    )
    return _encode(image, "JPEG", quality=int(rng.integers(60, 92)))


def canvas_dark(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A white stroke drawn on a black canvas, as drawing widgets export it."""
    side = int(rng.choice([200, 280, 400]))
    strokes = (_strokes(digit, side) > 0.35).astype(np.uint8) * 255
    return _encode(Image.fromarray(strokes).convert("RGB"), "PNG")


def canvas_transparent(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """Black strokes on a fully transparent RGBA canvas."""
    side = int(rng.choice([200, 280, 400]))
    alpha = (_strokes(digit, side) > 0.35).astype(np.uint8) * 255
    rgba = np.zeros((side, side, 4), np.uint8)
    rgba[..., 3] = alpha
    return _encode(Image.fromarray(rgba, mode="RGBA"), "PNG")


def small_in_corner(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """A small digit near a corner of a large white page."""
    side = int(rng.integers(36, 72))
    page_h, page_w = int(rng.integers(700, 1300)), int(rng.integers(700, 1300))
    coverage = np.zeros((page_h, page_w), np.float32)
    margin = int(rng.integers(5, 40))
    top = margin if rng.random() < 0.5 else page_h - side - margin
    left = margin if rng.random() < 0.5 else page_w - side - margin
    coverage[top : top + side, left : left + side] = _strokes(digit, side)
    gray = 250 - coverage * 225 + rng.normal(0, 3, coverage.shape)
    return _encode(Image.fromarray(np.clip(gray, 0, 255).astype(np.uint8)), "PNG")


def thick_marker(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """Bold marker strokes: the digit's strokes widened, dark on white."""
    side = int(rng.integers(150, 320))
    strokes = Image.fromarray((_strokes(digit, side) > 0.3).astype(np.uint8) * 255)
    width = 2 * int(side * rng.uniform(0.02, 0.035)) + 1
    strokes = strokes.filter(ImageFilter.MaxFilter(width))
    coverage = np.asarray(strokes, np.float32) / 255.0
    pad = side // 6
    coverage = np.pad(coverage, pad)
    return _encode(Image.fromarray((255 - coverage * 235).astype(np.uint8)), "PNG")


def mnist_png(digit: np.ndarray, rng: np.random.Generator) -> bytes:
    """The MNIST array itself as a 28x28 grey PNG."""
    return _encode(Image.fromarray(np.asarray(digit, np.uint8)), "PNG")


STYLES: dict[str, Callable[[np.ndarray, np.random.Generator], bytes]] = {
    "photo": photo,
    "canvas_dark": canvas_dark,
    "canvas_transparent": canvas_transparent,
    "small_in_corner": small_in_corner,
    "thick_marker": thick_marker,
    "mnist_png": mnist_png,
}


def render_set(images: np.ndarray, labels: np.ndarray, per_style: int, seed: int = 0) -> list[tuple[str, int, bytes]]:
    """Render `per_style` digits in every style, each style its own digits: [(style, label, bytes), ...]."""
    rng = np.random.default_rng(seed)
    return [
        (style, int(labels[i % len(images)]), render(images[i % len(images)], rng))
        for k, (style, render) in enumerate(STYLES.items())
        for i in range(k * per_style, (k + 1) * per_style)
    ]


def digit_row(digits: np.ndarray, rng: np.random.Generator, scale: float | None = None) -> bytes:
    """Write several MNIST digits in a row, dark on light paper, 2-4x size with normal spacing."""
    scale = scale or float(rng.uniform(2.0, 4.0))
    side = int(round(28 * scale))
    gaps = [int(round(rng.uniform(-4, 6) * scale)) for _ in range(len(digits) - 1)]  # MNIST boxes have 4 px margins
    margin = int(rng.integers(side // 2, side))
    width = 2 * margin + side * len(digits) + sum(gaps)
    height = side + 2 * margin
    coverage = np.zeros((height, width), np.float32)
    left = margin
    for i, digit in enumerate(digits):
        top = margin + int(rng.integers(-side // 10, side // 10 + 1))
        region = coverage[top : top + side, left : left + side]
        np.maximum(region, _strokes(digit, side), out=region)
        left += side + (gaps[i] if i < len(gaps) else 0)
    gray = 245 - coverage * 215 + rng.normal(0, 3, coverage.shape)
    return _encode(Image.fromarray(np.clip(gray, 0, 255).astype(np.uint8)), "PNG")
