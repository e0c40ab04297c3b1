"""Every request has a budget: pixels refused from the header, a batch pixel limit, a deadline, one heavy lane."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from backend.core import budget
from backend.core.sequence import (
    MAX_BLOBS,
    MAX_DIGITS,
    _merge_overlapping,
    segment_digits,
)
from benchmarks.attack import dot_field
from conftest import png_bytes


def upload(data: bytes, name: str = "image.png") -> dict:
    """A multipart body with field `file`."""
    return {"file": (io.BytesIO(data), name)}


@pytest.fixture()
def make_client(trained_store, tmp_path):
    """Build a test client with extra settings on the tiny trained store."""
    from backend.web.app import create_app

    def build(**config) -> object:
        return create_app({"MODEL_DIR": trained_store.root, "DATA_DIR": tmp_path / "data", **config}).test_client()

    return build


def test_a_dot_field_is_refused_as_422_not_segmented(client):
    data = dot_field(200)
    assert len(data) < 400
    response = client.post("/predict/sequence", data=upload(data))
    assert response.status_code == 422
    assert "separate marks" in response.json["error"] and str(MAX_BLOBS) in response.json["error"]


def test_segmentation_merges_in_one_sweep():
    # A wide stroke whose span covers the next two blobs folds them in, as the pairwise merge did.
    cols = [(0, 30), (5, 12), (14, 25), (40, 60), (45, 50)]
    slices = [(slice(0, 10), slice(a, b)) for a, b in cols]
    assert _merge_overlapping(slices) == [[1, 2, 3], [4, 5]]


def test_too_many_digits_in_a_row_is_422(mnist):
    row = np.concatenate([255 - mnist.x_test[i % 50] for i in range(MAX_DIGITS + 5)], axis=1)
    with pytest.raises(Exception) as info:
        segment_digits(row)
    assert getattr(info.value, "status", None) == 422


def test_image_over_the_pixel_limit_is_413_from_its_header(make_client):
    client = make_client(MAX_IMAGE_PIXELS=10_000)
    response = client.post("/predict", data=upload(png_bytes(np.full((101, 100), 255))))
    assert response.status_code == 413 and "MAX_IMAGE_PIXELS" in response.json["error"]


def test_batch_over_its_pixel_budget_is_413(make_client, digit):
    client = make_client(MAX_BATCH_PIXELS=3 * 28 * 28)
    files = [(io.BytesIO(png_bytes(255 - digit)), f"{i}.png") for i in range(4)]
    response = client.post("/predict/batch", data={"files": files})
    assert response.status_code == 413 and "MAX_BATCH_PIXELS" in response.json["error"]
    files = [(io.BytesIO(png_bytes(255 - digit)), f"{i}.png") for i in range(3)]
    assert (
        len(make_client(MAX_BATCH_PIXELS=3 * 28 * 28).post("/predict/batch", data={"files": files}).json["predictions"])
        == 3
    )


def test_work_past_the_deadline_is_abandoned_with_503(make_client, digit):
    client = make_client(REQUEST_DEADLINE_SECONDS=0.0)
    for path in ("/predict", "/predict/sequence", "/explain"):
        response = client.post(path, data=upload(png_bytes(255 - digit)))
        assert response.status_code == 503, path
        assert "REQUEST_DEADLINE_SECONDS" in response.json["error"] and response.headers["Retry-After"] == "1"


def test_a_second_heavy_image_is_refused_while_one_decodes(make_client, digit):
    client = make_client(HEAVY_IMAGE_PIXELS=50 * 50)
    big = png_bytes(np.asarray(Image.fromarray(255 - digit).resize((112, 112))))
    with budget.heavy_lane(10**9, 0):  # another request holds this worker's heavy lane
        busy = client.post("/predict", data=upload(big))
        small = client.post("/predict", data=upload(png_bytes(255 - digit)))
    assert busy.status_code == 429 and "HEAVY_IMAGE_PIXELS" in busy.json["error"] and busy.headers["Retry-After"]
    assert small.status_code == 200
    assert client.post("/predict", data=upload(big)).status_code == 200  # the lane is free again
