"""Browser-test fixtures (a pytest plugin loaded by tests/conftest.py): Chromium, a gunicorn backend, a fresh page.

Needs Debian's Chromium at /usr/bin/chromium (`apt-get install -y chromium`; CHROMIUM names another path);
Playwright's own browser download is never used. Without it the browser tests skip, except under CI=true,
where they fail.
The backend serves a private copy of the shipped model store (models/), so training jobs started by a
test never touch the committed models; without a shipped model, a small one is trained first.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from backend.core.config import REPO_ROOT
from backend.data.jobs import UNFINISHED
from tests.support.servers import free_port

VENV_BIN = Path(sys.executable).parent
CHROMIUM = Path(os.environ.get("CHROMIUM") or "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "browser-test-token"
VIEWPORT = {"width": 1400, "height": 1000}
STARTUP_SECONDS = 90
PAGE_TIMEOUT_MS = 60_000


def in_ci() -> bool:
    """Tell whether this run is CI's (CI=true, as GitHub Actions and .ci/run set it)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium; missing, the test skips outside CI and fails under CI=true."""
    if not CHROMIUM.exists():
        message = f"Chromium is not installed at {CHROMIUM} (apt-get install -y chromium, or set CHROMIUM)"
        if in_ci():
            pytest.fail(f"CI=true but {message}: the browser tests must run in CI")
        pytest.skip(message)
    return CHROMIUM


def wait_until_up(url: str, process: subprocess.Popen, log: Path, ok_statuses: tuple[int, ...] = (200,)) -> None:
    """Poll `url` until it answers, failing early (with the log) if the process exits."""
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{process.args[0]} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(url, timeout=2).status_code in ok_statuses:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    pytest.fail(f"{url} did not come up within {STARTUP_SECONDS} s:\n{log.read_text()[-3000:]}")


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start a server process in its own process group, logging to a file."""
    handle = log.open("w")
    return subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(process: subprocess.Popen) -> None:
    """Stop a server started by `start` and everything it spawned."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


def cancel_running_jobs(url: str) -> None:
    """Cancel jobs left running (a failed test must not leave a trainer behind)."""
    try:
        jobs = requests.get(f"{url}/jobs", timeout=5).json().get("jobs", [])
    except (requests.RequestException, ValueError):
        return
    for job in jobs:
        if job.get("status") in UNFINISHED:
            requests.post(f"{url}/jobs/{job['id']}/cancel", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)


@pytest.fixture(scope="session")
def model_dir(chromium, tmp_path_factory) -> Path:
    """A private copy of the shipped model store; or, if none is shipped yet, a small real model."""
    from backend.core.store import ModelStore

    target = tmp_path_factory.mktemp("browser") / "models"
    shipped = ModelStore(REPO_ROOT / "models")
    if shipped.active_version() is not None:
        shutil.copytree(shipped.root, target, ignore=shutil.ignore_patterns(".incoming-*"))
        return target
    from backend.training.train import TrainingConfig, mnist_training_data, train_and_publish

    store = ModelStore(target)
    version = train_and_publish(
        store, mnist_training_data(limit=6000, test_limit=2000), TrainingConfig(epochs=2, batch_size=64), verbose=0
    )
    store.activate(version)
    return target


@pytest.fixture(scope="session")
def backend(model_dir, tmp_path_factory) -> Iterator[str]:
    """gunicorn serving backend.wsgi:app on a free port (one worker) over the private store."""
    port = free_port()
    logs = tmp_path_factory.mktemp("logs")
    env = {
        "MODEL_DIR": str(model_dir),
        "DATA_DIR": str(tmp_path_factory.mktemp("browser-data")),
        "ADMIN_TOKEN": TOKEN,
        "WEB_CONCURRENCY": "1",
        "MNIST_PATH": os.environ["MNIST_PATH"],
    }
    command = [str(VENV_BIN / "gunicorn"), "-c", "backend/gunicorn.conf.py", "--bind", f"127.0.0.1:{port}"]
    process = start([*command, "backend.wsgi:app"], env, logs / "gunicorn.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(f"{url}/health", process, logs / "gunicorn.log")
        yield url
    finally:
        cancel_running_jobs(url)
        stop(process)


@pytest.fixture(scope="session")
def browser(chromium) -> Iterator[Any]:
    """Headless Debian Chromium through Playwright, one for the whole session."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture()
def page(browser) -> Iterator[Any]:
    """A fresh browser page (its own Streamlit session)."""
    context = browser.new_context(viewport=VIEWPORT)
    tab = context.new_page()
    tab.set_default_timeout(PAGE_TIMEOUT_MS)
    yield tab
    context.close()
