"""The prediction API: every endpoint, every error answered as JSON 4xx, and hot reload in a worker."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest

from conftest import png_bytes


def upload(data: bytes, name: str = "digit.png", field: str = "file") -> dict:
    """Build a multipart body with one file."""
    return {field: (io.BytesIO(data), name)}


def assert_prediction(body: dict, version: str) -> None:
    """Check the shape of one prediction object."""
    assert 0 <= body["digit"] <= 9 and isinstance(body["digit"], int)
    assert len(body["probabilities"]) == 10
    assert sum(body["probabilities"]) == pytest.approx(1.0, abs=1e-4)
    assert body["confidence"] == pytest.approx(max(body["probabilities"]))
    assert body["digit"] == int(np.argmax(body["probabilities"]))
    assert body["model_version"] == version and body["inference_ms"] >= 0


def test_predict_multipart(client, trained_store, digit):
    response = client.post("/predict", data=upload(png_bytes(digit)))
    assert response.status_code == 200
    assert_prediction(response.json, trained_store.active_version())
    assert "input" not in response.json


def test_predict_base64_json_and_data_url(client, trained_store, digit):
    encoded = base64.b64encode(png_bytes(digit)).decode()
    for image in (encoded, f"data:image/png;base64,{encoded}"):
        response = client.post("/predict", json={"image": image})
        assert response.status_code == 200
        assert_prediction(response.json, trained_store.active_version())


def test_predict_include_input(client, digit):
    response = client.post("/predict?include=input", data=upload(png_bytes(digit)))
    model_input = np.asarray(response.json["input"])
    assert model_input.shape == (28, 28) and 0.99 <= model_input.max() <= 1.0


def test_batch_keeps_order_and_matches_single(client, trained_store, mnist):
    images = [png_bytes(mnist.x_test[i]) for i in range(12)]
    response = client.post(
        "/predict/batch", data={"files": [(io.BytesIO(b), f"{i}.png") for i, b in enumerate(images)]}
    )
    assert response.status_code == 200
    predictions = response.json["predictions"]
    assert len(predictions) == 12
    for data, batched in zip(images[:3], predictions):
        single = client.post("/predict", data=upload(data)).json
        assert_prediction(batched, trained_store.active_version())
        assert np.allclose(single["probabilities"], batched["probabilities"], atol=1e-4)


def test_batch_limit_and_empty(client, digit):
    too_many = {"files": [(io.BytesIO(png_bytes(digit)), f"{i}.png") for i in range(121)]}
    assert client.post("/predict/batch", data=too_many).status_code == 413
    response = client.post("/predict/batch", data={})
    assert response.status_code == 400 and "files" in response.json["error"]


def test_batch_names_the_bad_file(client, digit):
    files = [(io.BytesIO(png_bytes(digit)), "good.png"), (io.BytesIO(b"junk"), "bad.png")]
    response = client.post("/predict/batch", data={"files": files})
    assert response.status_code == 400 and "files[1] (bad.png)" in response.json["error"]


def test_health_model_and_models(client, trained_store):
    version = trained_store.active_version()
    assert client.get("/health").json == {"status": "ok", "model_version": version}
    model = client.get("/model").json
    assert model["version"] == version and "confusion_matrix" in model["test_metrics"]
    assert set(model["history"]) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    listing = client.get("/models").json
    assert listing["active"] == version
    row = next(r for r in listing["versions"] if r["version"] == version)
    assert row["active"] is True and row["accuracy"] == model["test_metrics"]["accuracy"] and row["created"]
    assert client.get(f"/models/{version}").json["version"] == version
    assert client.get("/models/nope").status_code == 404


def test_metrics_exposes_prometheus_text(client, digit):
    client.post("/predict", data=upload(png_bytes(digit)))
    text = client.get("/metrics").get_data(as_text=True)
    assert 'digitlab_http_requests_total{endpoint="/predict",method="POST",status="200"}' in text
    assert "digitlab_http_request_duration_seconds_bucket" in text
    assert "digitlab_predictions_total{digit=" in text
    assert "digitlab_model_active_info{version=" in text
    assert "digitlab_model_reloads_total" in text


def test_openapi_and_docs(client):
    spec = client.get("/openapi.json").json
    assert spec["openapi"].startswith("3.")
    assert {"/predict", "/predict/batch", "/health", "/model", "/models", "/metrics"} <= set(spec["paths"])
    assert "multipart/form-data" in spec["paths"]["/predict"]["post"]["requestBody"]["content"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and b"swagger" in docs.data.lower()
    for asset in ("swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "swagger-ui.css"):
        assert f"/docs/assets/{asset}".encode() in docs.data  # served by the app: /docs works offline
    bundle = client.get("/docs/assets/swagger-ui-bundle.js")
    # Swagger UI 5 reads OpenAPI 3.1 (the 3.x that swagger-ui-bundle shipped showed "Unable to render this definition").
    assert bundle.status_code == 200 and b'PACKAGE_VERSION:"5.' in bundle.data and spec["openapi"].startswith("3.1")


# --- errors: always JSON {"error": ...} with a 4xx, never a 500 -----------------------------


def huge_png(width: int, height: int) -> bytes:
    """A tiny file that claims a huge size: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 100))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    "kwargs, status, words",
    [
        ({"data": {}}, 400, "field 'file'"),
        ({"data": upload(b"x", field="image")}, 400, "received fields: image"),
        ({"data": upload(b"")}, 400, "empty"),
        ({"data": upload(b"just some text")}, 400, "not a readable image"),
        ({"data": upload(png_bytes(np.full((40, 40), 255)))}, 422, "blank"),
        ({"data": upload(huge_png(30000, 30000))}, 413, "pixels"),
        ({"data": upload(b"\0" * (3 * 1024 * 1024))}, 413, "MAX_UPLOAD_MB"),
        ({"json": {"picture": "abc"}}, 400, "'image'"),
        ({"json": {"image": "***not base64***"}}, 400, "base64"),
        ({"json": ["not", "an", "object"]}, 400, "'image'"),
        ({"data": "not json", "content_type": "application/json"}, 400, "'image'"),
        ({"data": "[" * 5000 + "]" * 5000, "content_type": "application/json"}, 400, "'image'"),
        ({"data": {"file": (io.BytesIO(b"x"), "a.png"), **{f"f{i}": "x" for i in range(1100)}}}, 413, "parts"),
    ],
    ids=[
        "no-field",
        "wrong-field",
        "empty",
        "text",
        "blank",
        "bomb",
        "too-big",
        "json-no-image",
        "bad-base64",
        "json-list",
        "broken-json",
        "json-nested-5000-deep",
        "too-many-form-parts",
    ],
)
def test_predict_errors(client, kwargs, status, words):
    response = client.post("/predict", **kwargs)
    assert response.status_code == status, response.json
    assert response.is_json and words in response.json["error"]


def test_truncated_image(client, digit):
    data = png_bytes(np.kron(digit, np.ones((8, 8))))
    response = client.post("/predict", data=upload(data[: len(data) // 2]))
    assert response.status_code == 400 and "truncated" in response.json["error"]


def test_bad_include_value(client, digit):
    response = client.post("/predict?include=everything", data=upload(png_bytes(digit)))
    assert response.status_code == 400 and "include" in response.json["error"]


def test_unknown_route_and_wrong_method_are_json(client):
    missing = client.get("/nope")
    assert missing.status_code == 404 and "/docs" in missing.json["error"]
    wrong = client.get("/predict")
    assert wrong.status_code == 405 and "POST" in wrong.json["error"]


def test_no_active_model_is_503(tmp_path):
    from backend.web.app import create_app

    client = create_app({"MODEL_DIR": tmp_path, "DATA_DIR": tmp_path / "data"}).test_client()
    assert client.get("/health").status_code == 503
    response = client.post("/predict", data=upload(png_bytes(np.eye(28) * 255)))
    assert response.status_code == 503 and "train" in response.json["error"]
    assert client.get("/model").status_code == 404


def test_server_keeps_serving_after_bad_requests(client, digit):
    for _ in range(3):
        client.post("/predict", data=upload(b"garbage"))
    assert client.post("/predict", data=upload(png_bytes(digit))).status_code == 200


# --- request ids and logs ----------------------------------------------------------------------


def test_request_id_is_echoed_or_generated(client, digit):
    for path in ("/health", "/nope"):
        assert client.get(path, headers={"X-Request-ID": "client-abc.123"}).headers["X-Request-ID"] == "client-abc.123"
    answer = client.post("/predict", data=upload(b"junk"), headers={"X-Request-ID": "r-1"})
    assert answer.status_code == 400 and answer.headers["X-Request-ID"] == "r-1"
    generated = {client.get("/health").headers["X-Request-ID"] for _ in range(3)}
    assert len(generated) == 3 and all(len(rid) == 32 and int(rid, 16) >= 0 for rid in generated)
    for odd in ("²".encode().decode("latin-1"), "a b", "x" * 129, "\x7f", "\t"):  # not 1-128 visible ASCII characters
        replaced = client.get("/health", headers={"X-Request-ID": odd}).headers["X-Request-ID"]
        assert replaced != odd and len(replaced) == 32


def test_unexpected_error_is_a_json_500_and_its_log_carries_the_request_id(app, caplog):
    @app.get("/boom")
    def boom() -> dict:
        raise RuntimeError("simulated bug")

    with caplog.at_level("ERROR", logger="backend.web.app"):
        response = app.test_client().get("/boom", headers={"X-Request-ID": "report-me-42"})
    assert response.status_code == 500 and response.headers["X-Request-ID"] == "report-me-42"
    assert "report-me-42" in response.json["error"] and response.json["request_id"] == "report-me-42"
    assert "Traceback" not in response.get_data(as_text=True)
    [record] = [r for r in caplog.records if r.name == "backend.web.app"]
    assert "report-me-42" in record.getMessage() and record.exc_info[0] is RuntimeError


def test_json_logs_are_one_object_per_line_with_request_fields(trained_store, tmp_path, capsys, digit):
    import json

    from backend.web.app import create_app

    app = create_app({"MODEL_DIR": trained_store.root, "DATA_DIR": tmp_path / "data", "LOG_FORMAT": "json"})

    @app.get("/boom")
    def boom() -> dict:
        raise RuntimeError("simulated bug")

    client = app.test_client()
    capsys.readouterr()
    assert client.post("/predict", data=upload(png_bytes(digit)), headers={"X-Request-ID": "json-1"}).status_code == 200
    assert client.get("/boom", headers={"X-Request-ID": "json-2"}).status_code == 500
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert all({"timestamp", "level", "logger", "message"} <= set(line) for line in lines)
    [access] = [line for line in lines if line["logger"] == "backend.access" and line["request_id"] == "json-1"]
    assert access["level"] == "INFO" and access["method"] == "POST" and access["endpoint"] == "/predict"
    assert access["status"] == 200 and access["latency_ms"] > 0
    [error] = [line for line in lines if line["level"] == "ERROR"]
    assert error["request_id"] == "json-2" and "RuntimeError: simulated bug" in error["exception"]
    assert any(line["logger"] == "backend.access" and line["status"] == 500 for line in lines)


def test_unknown_log_format_is_refused(tmp_path):
    from backend.web.app import create_app

    with pytest.raises(ValueError, match="LOG_FORMAT"):
        create_app({"MODEL_DIR": tmp_path, "DATA_DIR": tmp_path / "data", "LOG_FORMAT": "xml"})


# --- hot reload inside one worker -------------------------------------------------------------


@pytest.mark.slow
def test_worker_picks_up_a_new_active_version(client, trained_store, tiny_data, digit):
    from backend.training.train import TrainingConfig, train_and_publish
    from backend.web.observability import RELOADS

    original = trained_store.active_version()
    assert client.post("/predict", data=upload(png_bytes(digit))).json["model_version"] == original
    reloads_before = RELOADS._value.get()
    newer = train_and_publish(trained_store, tiny_data, TrainingConfig(epochs=1, batch_size=64, seed=3), verbose=0)
    trained_store.activate(newer)
    try:
        assert client.post("/predict", data=upload(png_bytes(digit))).json["model_version"] == newer
        assert client.get("/health").json["model_version"] == newer
        assert RELOADS._value.get() == reloads_before + 1
        assert f'digitlab_model_active_info{{version="{newer}"}} 1.0' in client.get("/metrics").get_data(as_text=True)
    finally:
        trained_store.activate(original)
    assert client.post("/predict", data=upload(png_bytes(digit))).json["model_version"] == original


def test_a_form_part_without_a_name_is_a_400(client):
    boundary = "digitlab"
    nameless = f"--{boundary}\r\nContent-Disposition: form-data\r\n\r\nnull\r\n"
    named = f'--{boundary}\r\nContent-Disposition: form-data; name="x"\r\n\r\n1\r\n--{boundary}--\r\n'
    body = nameless + named
    for path in ("/predict", "/explain", "/predict/sequence"):
        response = client.post(path, data=body.encode(), content_type=f"multipart/form-data; boundary={boundary}")
        assert response.status_code == 400 and "field 'file'" in response.json["error"], path
