"""End-to-end: the real backend (gunicorn) and dashboard (streamlit run) driven by headless Chromium.

Run with `pytest -m browser tests/test_browser.py`. Chromium, the gunicorn backend on a private copy of
models/ and the page fixtures live in tests/support/browser.py: without Chromium these tests skip, except
under CI=true, where they fail. Every run saves its screenshots to reports/browser/<page>.png (git-ignored);
with UPDATE_SCREENSHOTS=1 it writes the README's committed ones, reports/screenshots/<page>.png, instead.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from tests.support.browser import TOKEN, VENV_BIN, VIEWPORT, start, stop, wait_until_up
from tests.support.datasets import digits_zip
from tests.support.servers import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
# Committed README screenshots change only on request, so ordinary test runs leave git clean.
SCREENSHOTS = REPO_ROOT / "reports" / ("screenshots" if os.environ.get("UPDATE_SCREENSHOTS") else "browser")
JOB_SECONDS = 300

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("chromium")]


@pytest.fixture(scope="module")
def dashboard(backend, tmp_path_factory) -> Iterator[str]:
    """`streamlit run frontend/app.py` on a free port, pointed at the backend."""
    port = free_port()
    log = tmp_path_factory.mktemp("logs") / "streamlit.log"
    process = start(
        [
            str(VENV_BIN / "streamlit"),
            "run",
            "frontend/app.py",
            "--server.port",
            str(port),
            "--server.headless",
            "true",
            "--server.address",
            "127.0.0.1",
            "--browser.gatherUsageStats",
            "false",
            "--server.fileWatcherType",
            "none",
            "--client.toolbarMode",
            "viewer",
        ],  # no "Deploy" button in the screenshots
        {"BACKEND_URL": backend, "ADMIN_TOKEN": TOKEN},
        log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/_stcore/health", process, log)
        yield url
    finally:
        stop(process)


def settle(page: Any, seconds: float = 1.0) -> None:
    """Wait until Streamlit has finished its script run (no 'Running' indicator), then a little more."""
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=60_000)
    time.sleep(seconds)


def screenshot(page: Any, name: str) -> Path:
    """Save the whole page (Streamlit scrolls inside stMain) as SCREENSHOTS/<name>.png."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    height = page.evaluate(
        "() => { const m = document.querySelector('[data-testid=\"stMain\"]');"
        " return m ? m.scrollHeight : document.body.scrollHeight; }"
    )
    page.set_viewport_size({"width": VIEWPORT["width"], "height": max(VIEWPORT["height"], int(height))})
    time.sleep(1.0)  # let charts re-layout at the new size
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    page.set_viewport_size(VIEWPORT)
    return path


def open_page(page: Any, dashboard: str, path: str, heading: str) -> None:
    """Load one dashboard page and wait for its title and the sidebar status."""
    page.goto(f"{dashboard}/{path}")
    page.get_by_role("heading", name=heading, exact=True).wait_for()
    page.get_by_text("Healthy · active version").wait_for()
    settle(page)


def photographed_digit(mnist, backend: str, tmp_path: Path) -> tuple[int, Path]:
    """A dark-on-light photo of a test digit the served model reads right (the test is of the page, not the model)."""
    from backend.data.renderings import photo

    for index in range(20):
        data = photo(mnist.x_test[index], np.random.default_rng(0))
        answer = requests.post(
            f"{backend}/predict", files={"file": ("digit.jpg", data, "image/jpeg")}, timeout=30
        ).json()
        label = int(mnist.y_test[index])
        if answer["digit"] == label:
            path = tmp_path / f"photo-of-a-{label}.jpg"
            path.write_bytes(data)
            return label, path
    pytest.fail("The served model misread the first 20 photographed test digits")


def test_upload_photo_shows_right_digit_and_probability_chart(page, dashboard, backend, mnist, tmp_path):
    label, photo_path = photographed_digit(mnist, backend, tmp_path)
    open_page(page, dashboard, "", "Predict a digit")
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(photo_path))
    page.get_by_text(photo_path.name, exact=True).last.wait_for()
    value = page.locator('[data-testid="stMetricValue"]').first
    value.wait_for()
    assert value.inner_text().strip() == str(label)
    assert page.get_by_text(re.compile(r"^Confidence \d+\.\d%$")).count() == 1
    page.get_by_text("What the model saw (28×28)").wait_for()
    chart = page.locator('[data-testid="stVegaLiteChart"]').first
    chart.wait_for()
    assert chart.locator("canvas, svg").count() >= 1 and chart.bounding_box()["height"] > 100
    page.get_by_text("Wrong? The right digit is…").wait_for()
    settle(page, 2.0)
    assert screenshot(page, "predict").stat().st_size > 10_000


def test_drawing_a_one_on_the_canvas_reads_one(page, dashboard):
    open_page(page, dashboard, "", "Predict a digit")
    page.get_by_role("tab", name="Draw").click()
    canvas = page.locator("canvas.upper-canvas").first  # streamlit-drawable-canvas's drawing layer
    canvas.wait_for()
    box = canvas.bounding_box()
    x, top = box["x"] + box["width"] / 2, box["y"] + box["height"] * 0.15
    page.mouse.move(x, top)
    page.mouse.down()
    for step in range(1, 21):
        page.mouse.move(x, top + step * box["height"] * 0.035)
    page.mouse.up()
    page.get_by_text("drawing.png", exact=True).wait_for()
    # One vertical stroke: the drawing (white on black PNG from the canvas) must read as a 1.
    assert page.locator('[data-testid="stMetricValue"]').first.inner_text().strip() == "1"
    settle(page, 2.0)
    screenshot(page, "draw")


def test_every_page_renders_and_a_job_runs_live(page, dashboard, backend, mnist, tmp_path):
    """Metrics; a ZIP job on Retrain that updates with no clicks until its verdict; then Models, rolling back."""
    open_page(page, dashboard, "metrics", "Metrics")
    page.get_by_text("Confusion matrix").wait_for()
    page.get_by_text("Per-class scores").wait_for()
    page.get_by_text("Average digit per class").wait_for()
    settle(page, 3.0)
    screenshot(page, "metrics")

    original = requests.get(f"{backend}/health", timeout=10).json()["model_version"]
    open_page(page, dashboard, "retrain", "Retrain")
    archive = tmp_path / "my-digits.zip"
    archive.write_bytes(
        digits_zip(mnist.x_train[2000:2080], mnist.y_train[2000:2080], folder="my-digits", stray="README.txt")
    )
    form = page.locator('[data-testid="stForm"]').filter(has_text="Retrain on your own digits")
    form.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(archive))
    form.get_by_text("my-digits.zip").wait_for()
    form.get_by_role("spinbutton").fill("2")
    form.get_by_role("button", name="Upload and retrain").click()
    page.get_by_text("Uploaded dataset").first.wait_for()
    page.get_by_text("80 images").first.wait_for()
    page.get_by_text(re.compile(r"Skipped files: 1")).wait_for()

    # From here on nobody clicks: the job panel refreshes itself until the verdict.
    states, shot_running = set(), False
    deadline = time.monotonic() + JOB_SECONDS
    verdict = page.get_by_text(re.compile(r"^(Promoted|Rejected): "))
    while time.monotonic() < deadline and verdict.count() == 0:
        heading = page.locator("h4").filter(has_text="Job ")
        if heading.count():
            states.add(heading.first.inner_text().rsplit("·", 1)[-1].strip())
        if not shot_running and page.get_by_text(re.compile(r"^running: epoch 1 of 2")).count():
            screenshot(page, "retrain-running")  # mid-job: one epoch done, curves growing
            shot_running = True
        time.sleep(1.0)
    assert verdict.count() == 1, f"no verdict within {JOB_SECONDS} s; states seen: {states}"
    assert states & {"queued", "running"}, states
    assert "hold-out" in verdict.inner_text().lower()  # the reason compares the upload hold-out too
    page.locator('[data-testid="stDataFrame"]').filter(has=page.locator("canvas")).first.wait_for()
    settle(page, 2.0)
    screenshot(page, "retrain")

    # Models: two versions now. Ask to switch, see the confirmation, confirm, and check the backend.
    open_page(page, dashboard, "models", "Models")
    page.locator('[data-testid="stDataFrame"]').first.wait_for()  # the version table (drawn on a canvas)
    active = requests.get(f"{backend}/health", timeout=10).json()["model_version"]
    target = original if active != original else None
    if target is None:  # the candidate was rejected: switch to it by hand instead
        target = next(
            v["version"]
            for v in requests.get(f"{backend}/models", timeout=10).json()["versions"]
            if v["version"] != active
        )
    choice = page.locator('[data-testid="stSelectbox"]').filter(has_text="Version to serve")
    if target not in choice.inner_text():
        choice.click()
        page.get_by_role("option", name=re.compile(re.escape(target))).click()
        settle(page)
    page.get_by_role("button", name="Activate…").click()
    page.get_by_text(f"instead of {active}?").wait_for()
    settle(page, 2.0)
    screenshot(page, "models")
    assert requests.get(f"{backend}/health", timeout=10).json()["model_version"] == active  # not before confirming
    page.get_by_role("button", name="Yes, activate").click()
    page.get_by_text(f"Now serving {target} (was {active})").wait_for()
    assert requests.get(f"{backend}/health", timeout=10).json()["model_version"] == target
    # With no clicks, the Fleet section shows the rollout reach the backend's one gunicorn worker.
    page.get_by_text(f"The one replica worker serves {target}.").wait_for()
