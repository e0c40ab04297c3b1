"""/docs in headless Chromium: Swagger UI renders every endpoint of the OpenAPI 3.1 spec, offline, and "Try it out"
on POST /predict with an uploaded digit returns a prediction.

Uses the gunicorn backend and Chromium fixtures of tests/support/browser.py: skipped only where Chromium is missing
and CI is not set; under CI=true a missing Chromium fails the test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
from PIL import Image

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("chromium")]


def test_docs_lists_every_endpoint_and_try_it_out_predicts(page, backend, digit, tmp_path: Path):
    outside = []
    page.on("request", lambda request: outside.append(request.url) if not request.url.startswith(backend) else None)
    page.goto(f"{backend}/docs")
    page.locator(".swagger-ui .opblock").first.wait_for()
    assert page.get_by_text("Unable to render this definition").count() == 0

    spec = requests.get(f"{backend}/openapi.json", timeout=10).json()
    expected = {(method, path) for path, ops in spec["paths"].items() for method in ops}
    shown = page.locator(".opblock").evaluate_all(
        "blocks => blocks.map(b => [b.querySelector('.opblock-summary-method').textContent.toLowerCase(),"
        " b.querySelector('.opblock-summary-path').getAttribute('data-path')])"
    )
    assert {tuple(row) for row in shown} == expected
    assert {
        ("post", "/predict"),
        ("post", "/upload_and_retrain"),
        ("post", "/predict/batch"),
        ("get", "/health"),
    } <= expected

    path = tmp_path / "digit.png"
    Image.fromarray(digit).save(path)
    predict = page.locator(".opblock-post:has(.opblock-summary-path[data-path='/predict'])")
    predict.locator(".opblock-summary").click()
    predict.get_by_role("button", name="Try it out").click()
    predict.locator("input[type=file]").set_input_files(str(path))
    predict.get_by_role("button", name="Execute").click()
    body = predict.locator(".live-responses-table .response-col_description pre").first
    body.wait_for()
    shown = json.loads(body.inner_text())
    direct = requests.post(f"{backend}/predict", files={"file": path.open("rb")}, timeout=30).json()
    assert shown["digit"] == direct["digit"] and shown["model_version"] == direct["model_version"]
    assert predict.locator(".live-responses-table .response-col_status").filter(has_text="200").count() == 1
    assert not outside, f"/docs fetched from outside the app (it must work offline): {outside}"
