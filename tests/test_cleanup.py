"""The cleanup steps: uneven light, ruled paper and printed boxes come out centred and whole; clean input untouched."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from backend.core.cleanup import (
    deskew,
    flatten_illumination,
    remove_lines,
)
from backend.core.preprocessing import (
    MNIST_CENTRE,
    decode_image,
    ink_map,
    preprocess_gray,
    to_grayscale,
)
from backend.data.conditions import CONDITIONS, render_conditions
from backend.data.renderings import render_set
from benchmarks.stem_conditions import uncleaned

PAGE, DIGIT_SIDE = 240, 150
PAPER, INK = 235.0, 30.0


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two images."""
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def pieces(stemmed: np.ndarray) -> int:
    """Count the stroke pieces of a stem output: a broken stroke makes more."""
    return int(ndimage.label(stemmed > 0.3, structure=np.ones((3, 3)))[1])


def coverage(digit: np.ndarray) -> np.ndarray:
    """The digit's ink coverage (0-1) in the middle of a PAGE x PAGE page."""
    strokes = Image.fromarray(digit).resize((DIGIT_SIDE, DIGIT_SIDE), Image.Resampling.BICUBIC)
    page = np.zeros((PAGE, PAGE), np.float32)
    start = (PAGE - DIGIT_SIDE) // 2
    page[start : start + DIGIT_SIDE, start : start + DIGIT_SIDE] = np.asarray(strokes, np.float32) / 255.0
    return page


def photograph(
    ink: np.ndarray, light: np.ndarray | float = 1.0, lines: np.ndarray | None = None, line_level: float = 0.0
) -> np.ndarray:
    """Grey levels of ink (and printed lines) on paper under the given light, with mild noise."""
    paper = np.full(ink.shape, PAPER, np.float32)
    if lines is not None:
        paper = paper * (1 - lines) + line_level * lines
    gray = (paper * (1 - ink) + INK * ink) * light + np.random.default_rng(0).normal(0, 3, ink.shape)
    return np.clip(np.rint(gray), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def digits(mnist) -> list[np.ndarray]:
    """A few MNIST test digits of different shapes: 7, 2, 1, 0, 4."""
    return [mnist.x_test[i] for i in range(5)]


def best_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of two stem outputs allowing a one-pixel shift: centring by mass rounds to whole pixels."""
    return max(correlation(np.roll(a, (dy, dx), axis=(0, 1)), b) for dy in (-1, 0, 1) for dx in (-1, 0, 1))


def check_recovered(clean: np.ndarray, degraded: np.ndarray) -> None:
    """The new stem's output for the degraded page matches the clean page's: same shape, centred, unbroken."""
    expected = preprocess_gray(clean)
    got = preprocess_gray(degraded)
    assert best_correlation(got, expected) > 0.9
    assert np.allclose(ndimage.center_of_mass(got), MNIST_CENTRE, atol=1.0)
    assert pieces(got) == pieces(expected)


def test_gradient_page_is_flattened(digits):
    ramp = np.linspace(1.0, 0.3, PAGE, dtype=np.float32)[np.newaxis, :]  # a lamp on the left, dark on the right
    for digit in digits:
        ink = coverage(digit)
        degraded = photograph(ink, light=ramp)
        assert correlation(uncleaned(degraded), uncleaned(photograph(ink))) < 0.7  # the stem without cleanup fails
        check_recovered(photograph(ink), degraded)


def test_shadow_across_the_digit_is_flattened(digits):
    cols = np.arange(PAGE, dtype=np.float32)[np.newaxis, :]
    shadow = 0.4 + 0.6 / (1 + np.exp(-(cols - PAGE * 0.45) / 6))  # a hand's soft shadow over the left half
    for digit in digits:
        check_recovered(photograph(coverage(digit)), photograph(coverage(digit), light=shadow))


def test_boxed_digit_loses_its_box(digits):
    box = np.zeros((PAGE, PAGE), np.float32)
    low, high = 40, PAGE - 40
    box[low : low + 3, low:high] = box[high - 3 : high, low:high] = 1.0
    box[low:high, low : low + 3] = box[low:high, high - 3 : high] = 1.0
    for digit in digits:
        ink = coverage(digit)
        degraded = photograph(ink, lines=box, line_level=40.0)
        assert correlation(uncleaned(degraded), uncleaned(photograph(ink))) < 0.7  # cropped to the box
        check_recovered(photograph(ink), degraded)


def test_ruled_page_loses_its_lines_and_keeps_its_strokes(digits):
    ruling = np.zeros((PAGE, PAGE), np.float32)
    for row in range(12, PAGE, 45):  # lines cross every digit two or three times
        ruling[row : row + 2] = 1.0
    ruling[:, 30:32] = 1.0  # a margin line
    for digit in digits:
        check_recovered(photograph(coverage(digit)), photograph(coverage(digit), lines=ruling, line_level=150.0))


def test_squared_page_loses_its_grid(digits):
    grid = np.zeros((PAGE, PAGE), np.float32)
    for at in range(5, PAGE, 30):
        grid[at : at + 1] = 1.0
        grid[:, at : at + 1] = 1.0
    for digit in digits:
        check_recovered(photograph(coverage(digit)), photograph(coverage(digit), lines=grid, line_level=170.0))


def test_mnist_digits_are_untouched(mnist):
    for digit in mnist.x_test[:300]:
        assert flatten_illumination(digit) is digit
        ink = ink_map(digit)
        assert remove_lines(ink) is ink
        assert np.array_equal(preprocess_gray(digit), uncleaned(digit))


def test_the_first_six_styles_are_untouched(mnist):
    for style, _, data in render_set(mnist.x_test, mnist.y_test, per_style=8, seed=3):
        gray = to_grayscale(decode_image(data))
        assert np.array_equal(preprocess_gray(gray), uncleaned(gray)), style


def test_a_tightly_cropped_one_is_not_taken_for_a_line():
    gray = np.full((120, 40), 240, np.uint8)
    gray[2:118, 17:24] = 20  # a straight 1 from edge to edge: as long as a page's ruling
    assert np.array_equal(preprocess_gray(gray), uncleaned(gray))


def test_deskew_stands_a_slanted_stroke_upright():
    slanted = np.zeros((28, 28), np.float32)
    for row in range(4, 24):
        col = 10 + (row - 4) * 0.4  # leaning: the bottom is further right
        slanted[row, int(col) : int(col) + 3] = 1.0
    upright = deskew(slanted)
    rows, cols = np.nonzero(upright > 0.5)
    assert abs(np.polyfit(rows, cols, 1)[0]) < 0.05
    assert np.allclose(ndimage.center_of_mass(upright), ndimage.center_of_mass(slanted), atol=0.5)
    assert deskew(np.zeros((28, 28), np.float32)).sum() == 0.0


def test_photo_bytes_with_a_shadow_go_through(digits):
    ink = coverage(digits[0])
    light = np.linspace(0.35, 1.0, PAGE, dtype=np.float32)[:, np.newaxis]  # dark at the top
    buffer = io.BytesIO()
    Image.fromarray(photograph(ink, light=light)).save(buffer, format="JPEG", quality=80)
    gray = to_grayscale(decode_image(buffer.getvalue()))
    assert best_correlation(preprocess_gray(gray), preprocess_gray(photograph(ink))) > 0.9


def test_every_condition_renders_a_photo_the_stem_centres(mnist):
    rendered = render_conditions(mnist.x_test, mnist.y_test, per_condition=3, seed=1)
    assert [name for name, _, _ in rendered] == [name for name in CONDITIONS for _ in range(3)]
    assert [label for _, label, _ in rendered[:3]] == [int(y) for y in mnist.y_test[:3]]
    for name, _, data in rendered:
        stemmed = preprocess_gray(to_grayscale(decode_image(data)))
        assert np.allclose(ndimage.center_of_mass(stemmed), MNIST_CENTRE, atol=1.0), name
        assert stemmed.max() == pytest.approx(1.0), name
