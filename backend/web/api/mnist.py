"""MNIST for the dashboard: test digits as PNGs (for galleries of mistakes) and per-class summaries."""

from __future__ import annotations

import base64
import io
from functools import lru_cache
from pathlib import Path

import numpy as np
from apiflask import APIBlueprint, Schema, abort, fields
from flask import Response, current_app
from PIL import Image

from backend.data.mnist import class_counts, mnist_file
from backend.web.api.schemas import error_responses

bp = APIBlueprint("mnist", __name__, tag="MNIST")
PNG_SCALE = 4


class MnistSummary(Schema):
    """Class distribution and the average digit of each class."""

    source = fields.String(required=True)
    train_per_class = fields.Dict(keys=fields.String(), values=fields.Integer(), required=True)
    test_per_class = fields.Dict(keys=fields.String(), values=fields.Integer(), required=True)
    mean_digit_png = fields.Dict(keys=fields.String(), values=fields.String(), required=True)


@lru_cache(maxsize=2)
def _arrays(path: Path) -> dict[str, np.ndarray]:
    """Read MNIST once per worker, only when these endpoints are used."""
    with np.load(path) as archive:
        return {key: archive[key] for key in ("x_train", "y_train", "x_test", "y_test")}


def _mnist() -> tuple[Path, dict[str, np.ndarray]]:
    """Return the server's MNIST arrays, or a 404 saying how to provide them."""
    path = mnist_file(current_app.config["MNIST_PATH"])
    if path is None:
        abort(404, "This server has no local MNIST file: set MNIST_PATH to an MNIST .npz.")
    return path, _arrays(path)


def _png(array: np.ndarray) -> bytes:
    """Encode a 28x28 grey digit as an enlarged PNG."""
    buffer = io.BytesIO()
    image = Image.fromarray(np.asarray(array, np.uint8))
    image.resize((28 * PNG_SCALE, 28 * PNG_SCALE), Image.Resampling.NEAREST).save(buffer, "PNG")
    return buffer.getvalue()


@bp.get("/mnist/test/<int:index>.png")
@bp.doc(
    summary="One MNIST test digit as PNG",
    responses={
        200: {"description": "PNG", "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}},
        **error_responses({404: "No such index, or no MNIST on this server"}),
    },
)
def test_digit(index: int) -> Response:
    """Return MNIST test image `index` (as listed among a model's misclassified examples)."""
    _, arrays = _mnist()
    if not 0 <= index < len(arrays["x_test"]):
        abort(404, f"MNIST test indices run from 0 to {len(arrays['x_test']) - 1}.")
    return Response(_png(arrays["x_test"][index]), mimetype="image/png")


@bp.get("/mnist/summary")
@bp.output(MnistSummary)
@bp.doc(
    summary="MNIST class distribution and average digit per class",
    responses=error_responses({404: "No MNIST on this server"}),
)
def summary() -> dict:
    """Return per-class counts for train and test, and each class's mean training image."""
    path, arrays = _mnist()
    means = {
        str(d): base64.b64encode(_png(arrays["x_train"][arrays["y_train"] == d].mean(axis=0))).decode()
        for d in range(10)
    }
    return {
        "source": path.name,
        "train_per_class": class_counts(arrays["y_train"]),
        "test_per_class": class_counts(arrays["y_test"]),
        "mean_digit_png": means,
    }
