"""Schemathesis against /openapi.json, and hand-picked hostile inputs: never a 5xx, always a documented JSON answer.

The hand-picked cases are the ones generators rarely hit: JSON nested thousands deep on every POST endpoint,
odd Unicode and undecodable bytes in every form field of every multipart endpoint (the fields are read from the
spec, so a new field must be added here), and an image in every mode Pillow can write as PNG or TIFF.
"""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from PIL import Image
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from conftest import ADMIN_TOKEN, png_bytes
from tests.support.datasets import digits_zip

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES_PER_OPERATION = 12
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.mark.slow
def test_every_operation_conforms_to_the_schema(job_app):
    # No admin token on purpose: admin routes must answer their documented 401, and no job is started.
    schema = schemathesis.openapi.from_wsgi("/openapi.json", job_app)
    tested = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in GenerationMode:  # valid requests, then ones that break the schema (wrong types, odd strings)

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def conforms(case) -> None:
                case.call_and_validate(checks=CHECKS)

            try:
                conforms()
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE  # an operation that takes no input has no invalid request
        tested.append(operation.label)
    assert len(tested) >= 18 and "POST /predict" in tested


# --- hand-picked hostile inputs ------------------------------------------------------------------


def assert_json_answer(response, case: str) -> None:
    """A 2xx or a 4xx JSON {"error": ...}; never a 5xx."""
    assert response.status_code < 500, f"{case}: {response.status_code} {response.get_data(as_text=True)[:300]}"
    assert response.is_json, f"{case}: {response.status_code} is not JSON"
    if response.status_code >= 400:
        assert isinstance(response.json.get("error"), str) and response.json["error"], case


@pytest.fixture()
def fuzz_client(trained_store, tmp_path, tiny_mnist_path):
    """An app on a private copy of the tiny store, with the feedback rate limit out of the way of the fuzzing."""
    import shutil

    from backend.web.app import create_app

    models = tmp_path / "models"
    shutil.copytree(trained_store.root, models)
    app = create_app(
        {
            "MODEL_DIR": models,
            "DATA_DIR": tmp_path / "data",
            "MNIST_PATH": str(tiny_mnist_path),
            "ADMIN_TOKEN": ADMIN_TOKEN,
            "FEEDBACK_RATE_LIMIT": "100000 per minute",
        }
    )
    return app.test_client()


def post_operations(client) -> list[str]:
    """Every POST path in the spec, with path parameters filled in."""
    paths = client.get("/openapi.json").json["paths"]
    return [
        path.replace("{job_id}", "nope").replace("{version}", "nope") for path, ops in paths.items() if "post" in ops
    ]


def nested(depth: int, kind: str) -> str:
    """JSON nested `depth` levels deep: arrays, objects, or arrays inside the field an endpoint reads."""
    if kind == "arrays":
        return "[" * depth + "]" * depth
    if kind == "objects":
        return '{"a":' * depth + "1" + "}" * depth
    return '{"image": ' + "[" * depth + "]" * depth + ', "epochs": ' + "[" * depth + "]" * depth + "}"


def test_deeply_nested_json_is_a_400_on_every_post_endpoint(fuzz_client):
    paths = post_operations(fuzz_client)
    assert {"/predict", "/retrain", "/upload_and_retrain", "/feedback"} <= set(paths)
    paths += ["/predict/sequence", "/explain"]  # they read JSON {"image": ...} too
    for path in paths:
        for depth in (3_000, 100_000):
            for kind in ("arrays", "objects", "in-a-field"):
                response = fuzz_client.post(
                    path, data=nested(depth, kind), content_type="application/json", headers=AUTH
                )
                assert_json_answer(response, f"{path} {kind} x{depth}")
                assert 400 <= response.status_code < 500, f"{path} {kind} x{depth}: {response.status_code}"


def test_deep_json_says_what_to_send(fuzz_client):
    for path in ("/predict", "/retrain"):
        response = fuzz_client.post(path, data=nested(5_000, "arrays"), content_type="application/json", headers=AUTH)
        assert response.status_code == 400, response.json
        assert "JSON" in response.json["error"] and "send" in response.json["error"].lower()


# Odd text (as UTF-8) and raw bytes that are not UTF-8 at all, for every form field.
ODD_VALUES: dict[str, str | bytes] = {
    "superscript-two": "²",
    "arabic-indic-three": "٣",
    "fullwidth-three": "３",
    "math-bold-three": "𝟑",
    "nul": "\x00",
    "digit-then-nul": "3\x00",
    "rtl-marks": "\u200f3\u200e",
    "rtl-override": "\u202e3",
    "bom": "\ufeff3",
    "combining-accent": "3\u0301",
    "zero-width-space": "3\u200b",
    "emoji": "🔢",
    "newlines": "3\r\n4",
    "blank": "   ",
    "negative": "-1",
    "float": "3.0",
    "exponent": "1e3",
    "hex": "0x3",
    "nan": "NaN",
    "markup": "<script>alert(1)</script>",
    "huge-number": "9" * 5_000,
    "long-text": "x" * 100_000,
    "over-form-field-limit": "9" * 600_000,
    "surrogate-bytes": b"\xed\xa0\x80",
    "invalid-utf8": b"\xff\xfe\xfd",
    "overlong-utf8": b"\xc0\xb3",
    "latin-1": b"caf\xe9",
}


def empty_zip() -> bytes:
    """A valid ZIP with no images: refused before any job starts."""
    buffer = io.BytesIO()
    zipfile.ZipFile(buffer, "w").close()
    return buffer.getvalue()


def base_forms(mnist) -> dict[str, dict[str, tuple[bytes, str | None]]]:
    """A valid form for every multipart endpoint: field -> (value, filename or None for a text field)."""
    digit = (png_bytes(mnist.x_test[0]), "digit.png")
    return {
        "/predict": {"file": digit},
        "/predict/batch": {"files": digit},
        "/predict/sequence": {"file": digit},
        "/explain": {"file": digit},
        "/feedback": {"file": digit, "label": (b"3", None), "predicted": (b"5", None), "model_version": (b"v1", None)},
        # A real ZIP, so that odd epochs are read; an odd filename goes with an empty ZIP, so no job starts.
        "/upload_and_retrain": {
            "file": (digits_zip(mnist.x_train[:30], mnist.y_train[:30]), "digits.zip"),
            "zipfile": (empty_zip(), "digits.zip"),
            "epochs": (b"1", None),
        },
    }


def multipart(fields: dict[str, tuple[bytes, str | bytes | None]]) -> tuple[bytes, str]:
    """Encode a multipart/form-data body byte for byte (so that undecodable bytes reach the server as sent)."""
    boundary = "digitlab-fuzz-boundary"
    body = b""
    for name, (value, filename) in fields.items():
        disposition = f'form-data; name="{name}"'.encode()
        if filename is not None:
            disposition += b'; filename="' + (filename if isinstance(filename, bytes) else filename.encode()) + b'"'
        body += b"--" + boundary.encode() + b"\r\nContent-Disposition: " + disposition + b"\r\n"
        if filename is not None:
            body += b"Content-Type: application/octet-stream\r\n"
        body += b"\r\n" + value + b"\r\n"
    return body + b"--" + boundary.encode() + b"--\r\n", f"multipart/form-data; boundary={boundary}"


def as_bytes(value: str | bytes) -> bytes:
    """UTF-8 for text, as is for raw bytes."""
    return value if isinstance(value, bytes) else value.encode("utf-8")


def spec_form(client, path: str) -> dict:
    """The schema of the multipart form the spec documents for POST `path`."""
    spec = client.get("/openapi.json").json
    schema = spec["paths"][path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    if "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


MULTIPART_PATHS = ["/predict", "/predict/batch", "/predict/sequence", "/explain", "/feedback", "/upload_and_retrain"]


def test_fuzz_covers_every_multipart_endpoint_and_field(fuzz_client, mnist):
    spec = fuzz_client.get("/openapi.json").json
    multipart_paths = {
        path
        for path, ops in spec["paths"].items()
        if "multipart/form-data" in ops.get("post", {}).get("requestBody", {}).get("content", {})
    }
    forms = base_forms(mnist)
    assert multipart_paths == set(MULTIPART_PATHS) == set(forms)
    for path in MULTIPART_PATHS:
        assert set(spec_form(fuzz_client, path)["properties"]) == set(forms[path]), path


@pytest.mark.parametrize("path", MULTIPART_PATHS)
def test_odd_unicode_in_every_form_field_is_never_a_500(fuzz_client, mnist, path):
    forms = base_forms(mnist)[path]
    # A number field (label, predicted, epochs) takes ASCII digits only: every odd value must be refused,
    # except a blank one in an optional field, which means "not given".
    form = spec_form(fuzz_client, path)
    number_fields = {name for name, field in form["properties"].items() if field.get("type") == "integer"}
    required = set(form.get("required", []))
    failures = []
    for field in forms:
        # `zipfile` stands in for `file`: send one of the two, never both.
        base = {k: v for k, v in forms.items() if k != ("file" if field == "zipfile" else "zipfile")}
        for name, odd in ODD_VALUES.items():
            cases = {f"{field}={name}": {**base, field: (as_bytes(odd), None)}}  # the value as a text field
            original = forms[field]
            if original[1] is not None:  # a file field: the odd text as its filename too
                content = empty_zip() if path == "/upload_and_retrain" else original[0]
                cases[f"{field} filename={name}"] = {**base, field: (content, as_bytes(odd) + b".png")}
            for case, fields in cases.items():
                body, content_type = multipart(fields)
                response = fuzz_client.post(path, data=body, content_type=content_type, headers=AUTH)
                if response.status_code == 202:  # an odd value was taken as valid: stop the job it started
                    fuzz_client.post(f"/jobs/{response.json['job_id']}/cancel", headers=AUTH)
                refused = 400 <= response.status_code < 500
                answered_json = response.is_json and (not refused or response.json.get("error"))
                blank_optional = not as_bytes(odd).strip() and field not in required
                accepted_odd_number = (
                    field in number_fields and not refused and "filename" not in case and not blank_optional
                )
                if (
                    response.status_code >= 500
                    or response.status_code == 202
                    or not answered_json
                    or accepted_odd_number
                ):
                    failures.append(f"{case}: {response.status_code} {response.get_data(as_text=True)[:160]}")
    assert not failures, f"{path}: {len(failures)} bad answers:\n" + "\n".join(failures)


def _saveable_modes() -> list[tuple[str, str]]:
    """Every (Pillow mode, format) pair that Pillow can write as PNG or TIFF."""
    pairs = []
    for mode in (
        "1",
        "L",
        "LA",
        "La",
        "P",
        "PA",
        "RGB",
        "RGBA",
        "RGBa",
        "RGBX",
        "CMYK",
        "YCbCr",
        "LAB",
        "HSV",
        "I",
        "I;16",
        "I;16L",
        "I;16B",
        "I;16N",
        "F",
    ):
        for fmt in ("PNG", "TIFF"):
            try:
                Image.new(mode, (2, 2)).save(io.BytesIO(), fmt)
            except (OSError, ValueError, KeyError):
                continue
            pairs.append((mode, fmt))
    return pairs


PILLOW_MODES = _saveable_modes()


def test_the_mode_list_holds_the_issue_cases():
    assert {
        ("LAB", "TIFF"),
        ("CMYK", "TIFF"),
        ("YCbCr", "TIFF"),
        ("F", "TIFF"),
        ("I;16", "PNG"),
        ("PA", "TIFF"),
    } <= set(PILLOW_MODES)


@pytest.mark.parametrize("mode, fmt", PILLOW_MODES, ids=[f"{m}-{f}" for m, f in PILLOW_MODES])
def test_every_pillow_mode_gets_a_prediction_or_a_4xx(client, digit, mode, fmt):
    image = Image.fromarray(255 - digit).convert("RGB").convert(mode)  # a dark digit on white, in `mode`
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    response = client.post("/predict", data={"file": (io.BytesIO(buffer.getvalue()), f"digit.{fmt.lower()}")})
    assert_json_answer(response, f"{mode} {fmt}")
    if response.status_code == 200:
        assert 0 <= response.json["digit"] <= 9 and np.isclose(sum(response.json["probabilities"]), 1, atol=1e-4)
