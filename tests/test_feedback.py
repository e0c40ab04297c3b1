"""Feedback: bounded anonymous writes (stemmed storage, dedupe, quota, rate limit), review, export, retraining."""

from __future__ import annotations

import io
import json
import sqlite3
import zipfile

import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from test_jobs import AUTH, wait_for

from backend.data.feedback import (
    ACCEPTED,
    PENDING,
    REJECTED,
    STORED_AS_SENT,
    FeedbackStore,
    decode_model_input,
)
from conftest import ADMIN_TOKEN, png_bytes


def make_client(trained_store, tmp_path, **config):
    """A test client on the tiny store with the admin token and `config` overrides."""
    from backend.web.app import create_app

    settings = {
        "MODEL_DIR": trained_store.root,
        "DATA_DIR": tmp_path / "data",
        "MAX_UPLOAD_MB": 2,
        "ADMIN_TOKEN": ADMIN_TOKEN,
        **config,
    }
    return create_app(settings).test_client()


@pytest.fixture()
def fb_client(trained_store, tmp_path):
    """A client with the default feedback limits."""
    return make_client(trained_store, tmp_path)


def form(data: bytes, label: str = "7", **fields) -> dict:
    """A /feedback multipart body."""
    return {"file": (io.BytesIO(data), "digit.png"), "label": label, **fields}


def padded_png(digit: np.ndarray, pad_bytes: int) -> bytes:
    """A digit PNG carrying `pad_bytes` of text chunks: big on the wire, tiny once decoded."""
    info = PngImagePlugin.PngInfo()
    chunk = 64 * 1024
    for i in range(-(-pad_bytes // chunk)):
        info.add_text(f"pad{i}", "x" * chunk)
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(255 - digit, np.uint8)).save(buffer, "PNG", pnginfo=info)
    return buffer.getvalue()


def test_feedback_validation(fb_client, digit):
    good = png_bytes(255 - digit)
    cases = [
        (form(good, "10"), 400, "label"),
        (form(good, "seven"), 400, "label"),
        (form(good, "²"), 400, "label"),  # str.isdigit() says yes, int() fails
        (form(good, "٣"), 400, "label"),  # Arabic-Indic three: int() would accept it
        (form(good, "7", predicted="²"), 400, "predicted"),
        (form(good, "7", predicted="x"), 400, "predicted"),
        (form(good, "7", model_version="v" * 65), 400, "model_version"),
        (form(good, "7", model_version="v1\x00\u202e"), 400, "model_version"),
        ({"file": (io.BytesIO(good), "a.png")}, 400, "label"),
        (form(b"not an image"), 400, "image"),
        (form(png_bytes(np.full((30, 30), 255))), 422, "blank"),
        ({"label": "7"}, 400, "file"),
    ]
    for body, status, word in cases:
        response = fb_client.post("/feedback", data=body)
        assert response.status_code == status and word in response.json["error"], (body, response.json)
    assert fb_client.get("/feedback", headers=AUTH).json["feedback"] == []
    for method, path in [
        ("GET", "/feedback"),
        ("GET", "/feedback/export"),
        ("GET", "/feedback/abc.png"),
        ("POST", "/feedback/abc/review"),
    ]:
        assert fb_client.open(path, method=method, json={"status": ACCEPTED}).status_code == 401, path


def test_odd_unicode_in_text_fields_is_kept_not_fatal(fb_client, digit):
    response = fb_client.post(
        "/feedback",
        data={
            "file": (io.BytesIO(png_bytes(255 - digit)), "ダイジェスト 😀.png"),
            "label": "7",
            "model_version": "v-ü-ß-😀",
        },
    )
    assert response.status_code == 201, response.json
    record = fb_client.get("/feedback", headers=AUTH).json["feedback"][0]
    assert record["model_version"] == "v-ü-ß-😀" and record["filename"] == "ダイジェスト 😀.png"


def test_padded_upload_is_stored_as_its_small_model_input(fb_client, digit):
    padded = padded_png(digit, 1_500_000)
    assert len(padded) > 1_500_000
    response = fb_client.post("/feedback", data=form(padded, "7"))
    assert response.status_code == 201 and response.json["status"] == PENDING and not response.json["duplicate"]
    record = fb_client.get("/feedback", headers=AUTH).json["feedback"][0]
    assert record["bytes"] < 1000  # a few hundred bytes, not the 1.5 MB sent

    stored = fb_client.get(f"/feedback/{record['id']}.png", headers=AUTH)
    assert stored.status_code == 200 and stored.mimetype == "image/png" and len(stored.data) == record["bytes"]
    # What is stored is the model input /predict computes, to 8-bit precision.
    expected = np.array(
        fb_client.post("/predict?include=input", data={"file": (io.BytesIO(padded), "d.png")}).json["input"]
    )
    assert np.abs(decode_model_input(stored.data) - expected).max() <= 0.5 / 255 + 0.5e-4  # 8 bits; JSON's 4 decimals


def test_same_image_and_label_is_stored_once(fb_client, digit):
    first = fb_client.post("/feedback", data=form(png_bytes(255 - digit), "7"))
    assert first.status_code == 201
    # Other bytes (padding), same pixels: the existing record, with 200 and nothing new stored.
    again = fb_client.post("/feedback", data=form(padded_png(digit, 128 * 1024), "7"))
    assert again.status_code == 200 and again.json == {"id": first.json["id"], "status": PENDING, "duplicate": True}
    other_label = fb_client.post("/feedback", data=form(png_bytes(255 - digit), "1"))
    assert other_label.status_code == 201 and other_label.json["id"] != first.json["id"]
    listing = fb_client.get("/feedback", headers=AUTH).json
    assert len(listing["feedback"]) == 2
    assert listing["used_bytes"] == sum(r["bytes"] for r in listing["feedback"])


def test_full_quota_answers_507_and_stores_nothing(trained_store, tmp_path, mnist):
    quota_bytes = 1000  # room for two or three stored digits
    client = make_client(trained_store, tmp_path, FEEDBACK_MAX_MB=quota_bytes / 1024 / 1024)
    statuses = [
        client.post("/feedback", data=form(png_bytes(255 - mnist.x_test[i]), str(mnist.y_test[i]))).status_code
        for i in range(8)
    ]
    assert 201 in statuses and 507 in statuses, statuses
    full = client.post("/feedback", data=form(png_bytes(255 - mnist.x_test[9]), "1"))
    assert full.status_code == 507 and "FEEDBACK_MAX_MB" in full.json["error"] and "full" in full.json["error"]
    listing = client.get("/feedback", headers=AUTH).json
    assert len(listing["feedback"]) == statuses.count(201)
    assert listing["used_bytes"] <= listing["quota_bytes"] == quota_bytes
    assert len(list((tmp_path / "data" / "feedback").iterdir())) == statuses.count(201)  # no stray files


def test_rate_limit_answers_429_per_client(trained_store, tmp_path, digit):
    client = make_client(trained_store, tmp_path, FEEDBACK_RATE_LIMIT="2 per minute")
    body = lambda: form(png_bytes(255 - digit), "7")  # noqa: E731
    assert [client.post("/feedback", data=body()).status_code for _ in range(2)] == [201, 200]
    limited = client.post("/feedback", data=body())
    assert limited.status_code == 429 and limited.is_json
    assert "FEEDBACK_RATE_LIMIT" in limited.json["error"] and set(limited.json) == {"error"}
    assert 1 <= int(limited.headers["Retry-After"]) <= 61  # the window, rounded up
    # Another client, and every other endpoint, are unaffected.
    other = client.post("/feedback", data=body(), environ_base={"REMOTE_ADDR": "10.0.0.2"})
    assert other.status_code == 200
    assert client.get("/feedback", headers=AUTH).status_code == 200
    assert client.get("/health").status_code == 200


def test_review_state_filter_and_errors(fb_client, mnist):
    ids = [
        fb_client.post("/feedback", data=form(png_bytes(255 - mnist.x_test[i]), str(mnist.y_test[i]))).json["id"]
        for i in range(3)
    ]
    answer = fb_client.post(f"/feedback/{ids[0]}/review", json={"status": ACCEPTED}, headers=AUTH)
    assert answer.status_code == 200 and answer.json["status"] == ACCEPTED and answer.json["id"] == ids[0]
    fb_client.post(f"/feedback/{ids[1]}/review", json={"status": REJECTED}, headers=AUTH)

    def listed(status):
        return [r["id"] for r in fb_client.get(f"/feedback?status={status}", headers=AUTH).json["feedback"]]

    assert (listed(ACCEPTED), listed(REJECTED), listed(PENDING)) == ([ids[0]], [ids[1]], [ids[2]])
    everything = fb_client.get("/feedback", headers=AUTH).json
    assert {r["status"] for r in everything["feedback"]} == {ACCEPTED, REJECTED, PENDING}
    assert everything["counts"] == {PENDING: 1, ACCEPTED: 1, REJECTED: 1}
    assert [r["id"] for r in fb_client.get("/feedback?limit=2", headers=AUTH).json["feedback"]] == ids[:2]

    bad = fb_client.post(f"/feedback/{ids[2]}/review", json={"status": "maybe"}, headers=AUTH)
    assert bad.status_code == 400 and "status" in bad.json["error"]
    missing = fb_client.post("/feedback/nope/review", json={"status": ACCEPTED}, headers=AUTH)
    assert missing.status_code == 404 and "GET /feedback" in missing.json["error"]
    assert fb_client.get("/feedback/nope.png", headers=AUTH).status_code == 404
    assert fb_client.get("/feedback?status=maybe", headers=AUTH).status_code == 400


def test_training_set_is_accepted_feedback_as_stored(tmp_path, mnist):
    from backend.core.preprocessing import preprocess_bytes

    store = FeedbackStore(tmp_path)
    assert store.as_dataset() is None
    inputs = [preprocess_bytes(png_bytes(255 - mnist.x_test[i])) for i in range(3)]
    records = [store.add(x, int(mnist.y_test[i]))[0] for i, x in enumerate(inputs)]
    assert store.as_dataset() is None  # nothing accepted yet
    store.review(records[0]["id"], ACCEPTED)
    store.review(records[2]["id"], ACCEPTED)
    store.review(records[1]["id"], REJECTED)
    dataset = store.as_dataset()
    assert dataset.x.shape == (2, 28, 28, 1) and dataset.y.tolist() == [int(mnist.y_test[0]), int(mnist.y_test[2])]
    # Stored inputs are used as they are (8-bit), never run through the stem a second time.
    assert np.abs(dataset.x[1, ..., 0] - inputs[2]).max() <= 0.5 / 255 + 1e-6


def test_old_database_is_migrated_in_place(tmp_path, mnist):
    sent = png_bytes(255 - mnist.x_test[0])
    (tmp_path / "feedback").mkdir()
    (tmp_path / "feedback" / "old1.png").write_bytes(sent)
    with sqlite3.connect(tmp_path / "feedback.sqlite3") as db:  # the schema before review states
        db.execute(
            "CREATE TABLE feedback (id TEXT PRIMARY KEY, created TEXT NOT NULL, label INTEGER NOT NULL, "
            "predicted INTEGER, model_version TEXT, filename TEXT, path TEXT NOT NULL, sha256 TEXT NOT NULL)"
        )
        db.execute("INSERT INTO feedback VALUES ('old1', '2024-01-01T00:00:00Z', 7, 1, 'v0', 'a.png', 'old1.png', 'x')")
    store = FeedbackStore(tmp_path)
    FeedbackStore(tmp_path)  # a second worker starting finds nothing to migrate
    (old,) = store.list()
    assert (old["status"], old["stored"], old["bytes"]) == (PENDING, STORED_AS_SENT, len(sent))
    assert store.as_dataset() is None
    store.review("old1", ACCEPTED)
    dataset = store.as_dataset()  # an image stored as sent still goes through the stem
    assert dataset.y.tolist() == [7] and dataset.x.shape == (1, 28, 28, 1) and dataset.x.max() == pytest.approx(1.0)
    assert decode_model_input(store.model_input_png(old)).shape == (28, 28)


def test_export_streams_and_lists_a_missing_file(fb_client, mnist, tmp_path):
    ids = [
        fb_client.post("/feedback", data=form(png_bytes(255 - mnist.x_test[i]), str(mnist.y_test[i]))).json["id"]
        for i in range(3)
    ]
    records = {r["id"]: r for r in fb_client.get("/feedback", headers=AUTH).json["feedback"]}
    (tmp_path / "data" / "feedback" / records[ids[1]]["path"]).unlink()

    export = fb_client.get("/feedback/export", headers=AUTH)
    assert export.status_code == 200 and export.mimetype == "application/zip" and export.is_streamed
    with zipfile.ZipFile(io.BytesIO(export.data)) as archive:
        manifest = {r["id"]: r for r in json.loads(archive.read("feedback.json"))}
        for record_id in (ids[0], ids[2]):
            record = records[record_id]
            name = f"{record['label']}/{record['path']}"
            assert archive.read(name) == fb_client.get(f"/feedback/{record_id}.png", headers=AUTH).data
            assert manifest[record_id]["missing"] is False
        assert manifest[ids[1]]["missing"] is True
        assert f"{records[ids[1]]['label']}/{records[ids[1]]['path']}" not in archive.namelist()
    only_pending = fb_client.get(f"/feedback/export?status={ACCEPTED}", headers=AUTH)
    with zipfile.ZipFile(io.BytesIO(only_pending.data)) as archive:
        assert archive.namelist() == ["feedback.json"] and json.loads(archive.read("feedback.json")) == []


@pytest.mark.slow
def test_feedback_round_trip_into_retraining(job_client, mnist):
    ids = []
    for i in range(4):
        response = job_client.post(
            "/feedback",
            data=form(
                png_bytes(255 - mnist.x_test[i]), str(int(mnist.y_test[i])), predicted="1", model_version="v-test"
            ),
        )
        assert response.status_code == 201
        ids.append(response.json["id"])
    records = job_client.get("/feedback", headers=AUTH).json["feedback"]
    assert [r["id"] for r in records] == ids
    assert all(r["predicted"] == 1 and r["model_version"] == "v-test" and r["status"] == PENDING for r in records)
    for record_id in ids[:3]:
        job_client.post(f"/feedback/{record_id}/review", json={"status": ACCEPTED}, headers=AUTH)
    job_client.post(f"/feedback/{ids[3]}/review", json={"status": REJECTED}, headers=AUTH)

    job_id = job_client.post("/retrain", json={"epochs": 1, "include_feedback": True}, headers=AUTH).json["job_id"]
    job = wait_for(job_client, job_id)
    assert job["status"] in ("succeeded", "rejected"), job
    feedback_source = next(s for s in job["result"]["data"]["sources"] if s["name"] == "feedback")
    assert feedback_source["examples"] == 3  # accepted ones only
