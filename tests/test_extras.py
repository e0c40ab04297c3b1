"""Reading rows of digits, occlusion saliency, and the feedback loop into retraining."""

from __future__ import annotations

import base64
import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from backend.styles import digit_row
from conftest import ADMIN_TOKEN, png_bytes
from test_jobs import AUTH, wait_for


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
    model_input = np.asarray(shipped_client.post("/predict?include=input", data=upload(png_bytes(255 - digit))).json["input"])
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


def test_feedback_validation(job_client, digit):
    good = png_bytes(255 - digit)
    cases = [
        ({"file": (io.BytesIO(good), "a.png"), "label": "10"}, "label"),
        ({"file": (io.BytesIO(good), "a.png"), "label": "seven"}, "label"),
        ({"file": (io.BytesIO(good), "a.png")}, "label"),
        ({"file": (io.BytesIO(b"not an image"), "a.png"), "label": "7"}, "image"),
        ({"file": (io.BytesIO(png_bytes(np.full((30, 30), 255))), "a.png"), "label": "7"}, "image"),
        ({"file": (io.BytesIO(good), "a.png"), "label": "7", "predicted": "x"}, "predicted"),
        ({"label": "7"}, "file"),
    ]
    for form, word in cases:
        response = job_client.post("/feedback", data=form)
        assert response.status_code == 400 and word in response.json["error"], (form, response.json)
    assert job_client.get("/feedback").status_code == 401
    assert job_client.get("/feedback/export").status_code == 401


def test_feedback_round_trip_into_retraining(job_client, mnist):
    images = {}
    for i in range(3):
        data = png_bytes(255 - mnist.x_test[i])
        response = job_client.post("/feedback", data={"file": (io.BytesIO(data), f"{i}.png"), "label": str(int(mnist.y_test[i])),
                                                      "predicted": "1", "model_version": "v-test"})
        assert response.status_code == 201
        images[response.json["id"]] = (data, int(mnist.y_test[i]))

    records = job_client.get("/feedback", headers=AUTH).json["feedback"]
    assert {r["id"] for r in records} == set(images)
    assert all(r["predicted"] == 1 and r["model_version"] == "v-test" for r in records)

    export = job_client.get("/feedback/export", headers=AUTH)
    assert export.status_code == 200 and export.mimetype == "application/zip"
    with zipfile.ZipFile(io.BytesIO(export.data)) as archive:
        for record in records:
            data, label = images[record["id"]]
            assert archive.read(f"{label}/{record['path']}") == data  # the image as sent, under its label

    job_id = job_client.post("/retrain", json={"epochs": 1, "include_feedback": True}, headers=AUTH).json["job_id"]
    job = wait_for(job_client, job_id)
    assert job["status"] in ("succeeded", "rejected"), job
    feedback_source = next(s for s in job["result"]["data"]["sources"] if s["name"] == "feedback")
    assert feedback_source["examples"] == 3
