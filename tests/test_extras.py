"""Reading rows of digits and occlusion saliency (feedback is in test_feedback.py)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from backend.data.renderings import digit_row
from conftest import png_bytes


def upload(data: bytes) -> dict:
    """A multipart body with field `file`."""
    return {"file": (io.BytesIO(data), "image.png")}


def test_sequence_reads_rows_of_mnist_digits(shipped_client, mnist):
    rng = np.random.default_rng(42)
    rows, exact = 40, 0
    for _ in range(rows):
        idx = rng.choice(len(mnist.x_test), size=int(rng.integers(3, 7)), replace=False)
        body = shipped_client.post("/predict/sequence", data=upload(digit_row(mnist.x_test[idx], rng))).json
        exact += body["digits"] == "".join(str(d) for d in mnist.y_test[idx])
    assert exact / rows >= 0.9  # benchmarks/sequence_accuracy.py measures the real figure on many more rows


def test_sequence_items_and_boxes(shipped_client, mnist):
    rng = np.random.default_rng(1)
    idx = [3, 2, 1, 18]  # digits 0, 1, 2, 3 of the test split
    data = digit_row(mnist.x_test[idx], rng, scale=3.0)
    width = Image.open(io.BytesIO(data)).width
    body = shipped_client.post("/predict/sequence", data=upload(data)).json
    assert body["digits"] == "".join(str(mnist.y_test[i]) for i in idx)
    boxes = [item["box"] for item in body["items"]]
    assert [b[0] for b in boxes] == sorted(b[0] for b in boxes) and all(b[0] + b[2] <= width for b in boxes)
    assert all(0.0 < item["confidence"] <= 1.0 for item in body["items"]) and body["model_version"]


def test_sequence_on_a_large_photo_reports_boxes_in_its_pixels(shipped_client, mnist):
    rng = np.random.default_rng(2)
    small = Image.open(io.BytesIO(digit_row(mnist.x_test[[3, 2, 1]], rng, scale=3.0)))
    big = small.resize((small.width * 4, small.height * 4))
    buffer = io.BytesIO()
    big.save(buffer, "JPEG", quality=90)
    body = shipped_client.post("/predict/sequence", data=upload(buffer.getvalue())).json
    assert len(body["items"]) == 3
    assert max(item["box"][0] + item["box"][2] for item in body["items"]) > big.width * 0.6


def test_sequence_blank_page_is_422(client):
    response = client.post("/predict/sequence", data=upload(png_bytes(np.full((200, 600), 240))))
    assert response.status_code == 422 and "error" in response.json
    assert client.post("/predict/sequence", data={}).status_code == 400


def test_explain_heatmap_highlights_ink(shipped_client, mnist):
    digit = mnist.x_test[0]
    body = shipped_client.post("/explain?include=input", data=upload(png_bytes(255 - digit))).json
    heatmap = np.asarray(body["heatmap"])
    assert heatmap.shape == (28, 28) and heatmap.std() > 0 and heatmap.max() == pytest.approx(1.0)
    model_input = np.asarray(
        shipped_client.post("/predict?include=input", data=upload(png_bytes(255 - digit))).json["input"]
    )
    ink, background = model_input > 0.3, model_input == 0
    far_background = background.copy()
    far_background[4:24, 4:24] = False  # the frame well away from the digit
    assert heatmap[ink].mean() > 3 * heatmap[far_background].mean()
    assert body["digit"] == int(mnist.y_test[0])
    overlay = Image.open(io.BytesIO(base64.b64decode(body["overlay_png"])))
    assert overlay.format == "PNG" and overlay.size[0] >= 28


def test_explain_errors(client):
    assert client.post("/explain", data={}).status_code == 400
    assert client.post("/explain", data=upload(b"nope")).status_code == 400
