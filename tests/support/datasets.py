"""Digit images for tests: PNG bytes, and ZIPs of folders 0-9 as a user would upload them."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable

import numpy as np
from PIL import Image


def png_bytes(array: np.ndarray) -> bytes:
    """Encode a grey array as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(array, np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def digits_zip(
    images: Iterable[np.ndarray],
    labels: Iterable[int],
    *,
    folder: str = "",
    per_digit: int | None = None,
    only: int | None = None,
    stray: str | None = None,
) -> bytes:
    """Pack MNIST digits, inverted to dark-on-light as people write, as `[folder/]<label>/<n>.png` in a ZIP."""
    # per_digit caps each class, only keeps one digit, stray adds a text file the backend must skip.
    prefix = f"{folder}/" if folder else ""
    counts: dict[int, int] = {}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for image, label in zip(images, labels):
            label = int(label)
            if (only is not None and label != only) or (per_digit is not None and counts.get(label, 0) >= per_digit):
                continue
            counts[label] = counts.get(label, 0) + 1
            archive.writestr(f"{prefix}{label}/{counts[label]}.png", png_bytes(255 - np.asarray(image, np.uint8)))
        if stray:
            archive.writestr(f"{prefix}{stray}", "not an image")
    return buffer.getvalue()
