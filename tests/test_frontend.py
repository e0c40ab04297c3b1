"""Dashboard tests: every page run with streamlit's AppTest against a real backend served over HTTP.

The backend is the real `create_app` on a private model store (two tiny versions), served by werkzeug
on a free port in a thread; its training jobs use conftest's tiny MNIST file so they finish in seconds.
Every route the dashboard calls must exist: a lost route fails these tests. The page tests are `slow`;
the structural ones (no backend import, the facts read from /openapi.json, the token lookup) are fast.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import requests
from streamlit.testing.v1 import AppTest

from backend.data.jobs import FAILED, STATUSES, UNFINISHED
from conftest import png_bytes
from tests.support.datasets import digits_zip
from tests.support.servers import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
APP = REPO_ROOT / "frontend" / "app.py"
TOKEN = "frontend-test-token"
RUN_TIMEOUT = 60  # seconds per AppTest run: the first run imports pandas, altair and matplotlib
JOB_TIMEOUT = 240  # seconds for a tiny training job to finish
FLEET_TIMEOUT = 30  # seconds for the fleet list to show a change: workers report every second
TERMINAL = tuple(status for status in STATUSES if status not in UNFINISHED)


def serve(app: Any) -> tuple[str, Any]:
    """Serve a WSGI app on a free port in a daemon thread; return its URL and the server."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_port}", server


@pytest.fixture(scope="module")
def frontend_store(tmp_path_factory, trained_store, tiny_data):
    """A private store: a copy of the shared tiny version (active) plus a second tiny version to switch to."""
    from backend.core.store import ModelStore
    from backend.training.train import TrainingConfig, train_and_publish

    store = ModelStore(tmp_path_factory.mktemp("frontend-models"))
    first = trained_store.active_version()
    shutil.copytree(trained_store.path(first), store.path(first))
    train_and_publish(store, tiny_data, TrainingConfig(epochs=1, batch_size=64, seed=7), verbose=0)
    store.activate(first)
    return store


@pytest.fixture(scope="module")
def backend_app(frontend_store, tiny_mnist_path, tmp_path_factory) -> Any:
    """The real API app on the private store."""
    from backend.web.app import create_app

    return create_app(
        {
            "MODEL_DIR": frontend_store.root,
            "DATA_DIR": tmp_path_factory.mktemp("frontend-data"),
            "ADMIN_TOKEN": TOKEN,
            "MNIST_PATH": str(tiny_mnist_path),
        }
    )


def wait_for_fleet(url: str, done: Callable[[dict[str, Any]], bool], seconds: float = FLEET_TIMEOUT) -> dict[str, Any]:
    """Poll GET /fleet until `done(answer)` holds; return that answer."""
    deadline = time.monotonic() + seconds
    while not done(answer := requests.get(f"{url}/fleet", timeout=10).json()):
        assert time.monotonic() < deadline, f"GET /fleet never got there: {answer}"
        time.sleep(0.2)
    return answer


@pytest.fixture(scope="module")
def backend_url(backend_app) -> Iterator[str]:
    """The API over HTTP, its process reporting in GET /fleet as a gunicorn worker does; jobs cancelled at the end."""
    from backend.web.app import follow_fleet, leave_fleet

    url, server = serve(backend_app)
    follow_fleet(backend_app)  # what gunicorn's post_worker_init does in each worker
    wait_for_fleet(url, lambda answer: bool(answer["replicas"]))
    yield url
    for job in requests.get(f"{url}/jobs", timeout=10).json()["jobs"]:
        if job["status"] in UNFINISHED:
            requests.post(f"{url}/jobs/{job['id']}/cancel", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    leave_fleet(backend_app)
    server.shutdown()


@contextlib.contextmanager
def bind_dashboard(address: str | None) -> Iterator[None]:
    """Run the dashboard as if started with `--server.address address` (None: every interface)."""
    from streamlit import config

    config.set_option("server.address", address)
    yield
    config.set_option("server.address", None)


@pytest.fixture()
def dashboard_env(backend_url, monkeypatch) -> Iterator[str]:
    """Point the dashboard, bound to loopback as `make run` does, at the test backend with the admin token."""
    import streamlit as st

    monkeypatch.setenv("BACKEND_URL", backend_url)
    monkeypatch.setenv("ADMIN_TOKEN", TOKEN)
    monkeypatch.delenv("ADMIN_TOKEN_FILE", raising=False)
    st.cache_data.clear()
    with bind_dashboard("127.0.0.1"):
        yield backend_url


def open_page(page: str = "predict") -> AppTest:
    """Run the dashboard and switch to one of its pages."""
    at = AppTest.from_file(str(APP), default_timeout=RUN_TIMEOUT).run()
    if page != "predict":
        at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def texts(elements: Any) -> list[str]:
    """The string values of a list of elements."""
    return [str(e.value) for e in elements]


def find_text(elements: Any, needle: str) -> str | None:
    """The first element value containing `needle`, if any."""
    return next((text for text in texts(elements) if needle in text), None)


def progress_bars(at: AppTest) -> list[Any]:
    """The st.progress elements."""
    return at.get("progress")


def image_captions(at: AppTest) -> list[str]:
    """The captions of every st.image on the page."""
    return [caption for image in at.get("image") for caption in image.captions]


def digit_png(mnist, index: int) -> bytes:
    """An MNIST test digit as PNG bytes."""
    return png_bytes(mnist.x_test[index])


def backend_predict(url: str, data: bytes) -> dict[str, Any]:
    """Ask the backend directly, to compare with what the dashboard shows."""
    response = requests.post(f"{url}/predict", files={"file": ("digit.png", data, "image/png")}, timeout=30)
    response.raise_for_status()
    return response.json()


def wait_for_job_end(at: AppTest, timeout: float = JOB_TIMEOUT) -> list[str]:
    """Rerun the page (as its auto-refreshing fragment does) until the job shows a final state; return headings seen."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        headings = [text for text in texts(at.main.markdown) if text.startswith("#### Job")]
        seen.extend(headings)
        if headings and any(f"**{state}**" in headings[0] for state in TERMINAL):
            return seen
        time.sleep(1.5)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
    pytest.fail(f"The job did not finish within {timeout} s; last headings: {seen[-3:]}")


def test_frontend_never_imports_backend():
    import ast

    for path in (REPO_ROOT / "frontend").rglob("*.py"):
        tree = ast.parse(path.read_text())
        modules = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        modules += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        assert not [m for m in modules if m.split(".")[0] == "backend"], f"{path} imports backend"


def test_dashboard_reads_the_backends_states_limits_and_defaults_from_openapi(tmp_path):
    from backend.data.feedback import PENDING
    from backend.data.feedback import STATUSES as REVIEW_STATUSES
    from backend.data.jobs import DEFAULT_EPOCHS, MAX_EPOCHS
    from backend.web.app import create_app
    from frontend.client import ApiFacts, BackendError

    app = create_app({"MODEL_DIR": tmp_path / "models", "DATA_DIR": tmp_path / "data"})
    spec = app.test_client().get("/openapi.json").json
    facts = ApiFacts.from_openapi(spec)
    assert facts.job_statuses == STATUSES and facts.unfinished_jobs == UNFINISHED
    assert facts.max_epochs == MAX_EPOCHS and facts.upload_epochs == DEFAULT_EPOCHS["upload"]
    assert facts.default_epochs == {start: DEFAULT_EPOCHS[start] for start in facts.start_points}
    assert facts.default_start in facts.start_points
    assert facts.review_statuses == REVIEW_STATUSES and facts.unreviewed == PENDING
    del spec["components"]["schemas"]["Job"]["properties"]["status"]["x-unfinished"]
    with pytest.raises(BackendError, match="x-unfinished"):
        ApiFacts.from_openapi(spec)


# -- every page: the status sidebar ---------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("view", ["predict", "retrain", "metrics", "models"])
def test_sidebar_shows_backend_url_health_and_active_version(dashboard_env, frontend_store, view):
    at = open_page(view)
    assert find_text(at.sidebar.caption, dashboard_env)
    assert find_text(at.sidebar.success, f"active version `{frontend_store.active_version()}`")
    assert find_text(at.sidebar.caption, "Admin token: found")
    assert at.main.title[0].value  # the page itself rendered


@pytest.mark.slow
@pytest.mark.parametrize("view", ["predict", "retrain", "metrics", "models"])
def test_backend_down_is_said_plainly_on_every_page(monkeypatch, view):
    import streamlit as st

    monkeypatch.setenv("BACKEND_URL", f"http://127.0.0.1:{free_port()}")
    st.cache_data.clear()
    at = open_page(view)
    assert find_text(at.sidebar.error, "Backend down: Cannot reach the backend")
    assert not at.exception
    assert find_text(at.main.error, "The backend is down")


@pytest.mark.slow
def test_no_active_model_is_explained(tmp_path, monkeypatch):
    import streamlit as st

    from backend.web.app import create_app

    url, server = serve(
        create_app({"MODEL_DIR": tmp_path / "empty", "DATA_DIR": tmp_path / "data", "ADMIN_TOKEN": TOKEN})
    )
    try:
        monkeypatch.setenv("BACKEND_URL", url)
        st.cache_data.clear()
        at = open_page("predict")
        assert find_text(at.sidebar.warning, "no model is active")
        assert find_text(at.main.warning, "no active model")
        models = open_page("models")
        assert find_text(models.main.info, "No model versions yet")
    finally:
        server.shutdown()


# -- Predict ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_upload_shows_prediction_model_input_and_probabilities(dashboard_env, mnist):
    at = open_page("predict")
    assert find_text(at.main.info, "Upload one or more images")
    images = [("seven.png", digit_png(mnist, 0)), ("two.png", digit_png(mnist, 1))]
    at.file_uploader[0].set_value([(name, data, "image/png") for name, data in images]).run()
    assert not at.exception and not at.error, texts(at.error)

    expected = [backend_predict(dashboard_env, data) for _, data in images]
    assert [m.value for m in at.metric] == [str(p["digit"]) for p in expected]
    assert [find_text(at.markdown, f"**{name}**") for name, _ in images] == [f"**{name}**" for name, _ in images]
    assert find_text(at.markdown, f"Confidence **{expected[0]['confidence']:.1%}**")
    # Per image: the original and the 28x28 model input are shown...
    captions = image_captions(at)
    assert captions.count("Original") == 2 and captions.count("What the model saw (28×28)") == 2
    # ...and a bar chart of the ten probabilities.
    charts = [json.loads(chart.proto.spec) for chart in at.get("vega_lite_chart")]
    assert len([spec for spec in charts if "bar" in json.dumps(spec.get("mark"))]) == 2
    assert len(at.selectbox) == 2 and at.selectbox[0].label == "Wrong? The right digit is…"
    assert expected[0]["digit"] not in at.selectbox[0].options and len(at.selectbox[0].options) == 9


@pytest.mark.slow
def test_unreadable_upload_shows_the_backends_message(dashboard_env):
    at = open_page("predict")
    at.file_uploader[0].set_value(("broken.png", b"this is not an image", "image/png")).run()
    assert not at.exception
    error = find_text(at.main.error, "HTTP 400")
    assert error, texts(at.main.error)
    answer = requests.post(
        f"{dashboard_env}/predict", files={"file": ("broken.png", b"this is not an image", "image/png")}, timeout=10
    )
    assert answer.json()["error"] in error  # the API's own words, not a traceback


@pytest.mark.slow
def test_feedback_control_posts_the_right_digit(dashboard_env, mnist):
    at = open_page("predict")
    at.file_uploader[0].set_value(("digit.png", digit_png(mnist, 2), "image/png")).run()
    predicted = int(at.metric[0].value)
    right = (predicted + 1) % 10
    at.selectbox[0].set_value(right)
    next(b for b in at.button if b.label == "Send correction").click().run()
    assert not at.exception and not at.error, texts(at.error)
    assert find_text(at.main.success, "Thanks: saved as feedback #")


@pytest.mark.slow
def test_saliency_overlay_shows_and_toggles_off(dashboard_env, mnist):
    at = open_page("predict")
    at.file_uploader[0].set_value(("digit.png", digit_png(mnist, 3), "image/png")).run()
    assert not at.exception and not at.error, texts(at.error)
    assert "Saliency: where the model looked" in image_captions(at)
    at.toggle[0].set_value(False).run()
    assert "Saliency: where the model looked" not in image_captions(at)


# -- Retrain ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_retrain_job_shows_progress_then_the_verdict(dashboard_env, frontend_store):
    at = open_page("retrain")
    active_before = frontend_store.active_version()
    at.number_input[0].set_value(2)
    at.radio[0].set_value("active")
    next(b for b in at.button if b.label == "Start retraining").click().run()
    assert not at.exception and not at.error, texts(at.error)

    heading = next(text for text in texts(at.main.markdown) if text.startswith("#### Job"))
    assert any(f"**{status}**" in heading for status in UNFINISHED), heading
    bar = progress_bars(at)[0]
    assert 0 <= bar.value < 100 and any(status in bar.text for status in UNFINISHED)

    # A second request while the job runs is refused with a readable 409.
    next(b for b in at.button if b.label == "Start retraining").click().run()
    busy = find_text(at.main.error, "Busy:")
    assert busy is not None or any(f"**{s}**" in t for t in texts(at.main.markdown) for s in TERMINAL)

    seen = wait_for_job_end(at)
    assert any(f"**{status}**" in h for h in seen for status in UNFINISHED)
    final = next(text for text in texts(at.main.markdown) if text.startswith("#### Job"))
    assert progress_bars(at)[0].value == 100 or f"**{FAILED}**" in final
    verdict = find_text(at.main.success, "Promoted:") or find_text(at.main.warning, "Rejected:")
    assert verdict, (final, texts(at.main.error))
    comparison = next(df.value for df in at.dataframe if "evaluated on" in df.value.columns)
    assert list(comparison["evaluated on"]) == ["MNIST test", "Upload hold-out"]
    assert comparison["candidate"].iloc[0] > 0
    # The panel's curves show the two epochs, and the verdict matches the store.
    promoted = verdict.startswith("Promoted")
    assert (frontend_store.active_version() != active_before) == promoted
    if promoted:  # put the original back for the other tests
        frontend_store.activate(active_before)


@pytest.mark.slow
def test_zip_upload_shows_dataset_summary_and_holdout_comparison(dashboard_env, mnist):
    upload = digits_zip(mnist.x_train[1000:1060], mnist.y_train[1000:1060], folder="mine", stray="notes.txt")
    at = open_page("retrain")
    at.file_uploader[0].set_value(("mine.zip", upload, "application/zip"))
    at.number_input[1].set_value(1)
    next(b for b in at.button if b.label == "Upload and retrain").click().run()
    assert not at.exception and not at.error, texts(at.error)
    summary = find_text(at.markdown, "**Uploaded dataset")
    assert summary and "60 images" in summary
    assert find_text(at.markdown, "Skipped files: **1**")
    skipped = next(df.value for df in at.dataframe if "reason" in df.value.columns)
    assert list(skipped["name"]) == ["mine/notes.txt"]

    wait_for_job_end(at)
    assert find_text(at.markdown, "**Uploaded dataset")  # still shown with the result
    comparison = next(df.value for df in at.dataframe if "evaluated on" in df.value.columns)
    holdout = comparison.set_index("evaluated on").loc["Upload hold-out"]
    assert holdout["examples"] > 0 and holdout["candidate"] is not None


@pytest.mark.slow
def test_bad_zip_gives_a_readable_error(dashboard_env):
    at = open_page("retrain")
    at.file_uploader[0].set_value(("broken.zip", b"not a zip at all", "application/zip"))
    next(b for b in at.button if b.label == "Upload and retrain").click().run()
    assert not at.exception
    assert find_text(at.main.error, "The backend refused this (HTTP 4"), texts(at.main.error)


@pytest.mark.slow
def test_wrong_token_gives_a_readable_401(dashboard_env, monkeypatch):
    monkeypatch.setenv("ADMIN_TOKEN", "not-the-token")
    at = open_page("retrain")
    next(b for b in at.button if b.label == "Start retraining").click().run()
    assert not at.exception
    assert find_text(at.main.error, "Not authorised: Missing or wrong admin token")


@pytest.mark.slow
def test_missing_token_disables_admin_actions_and_says_how_to_set_it(dashboard_env, monkeypatch, tmp_path):
    monkeypatch.delenv("ADMIN_TOKEN")
    monkeypatch.setenv("ADMIN_TOKEN_FILE", str(tmp_path / "no-such-file"))
    at = open_page("retrain")
    assert find_text(at.main.warning, "Set ADMIN_TOKEN")
    assert all(b.disabled for b in at.button if b.label in ("Start retraining", "Upload and retrain"))
    assert find_text(at.sidebar.caption, "Admin token: not set")
    models = open_page("models")
    assert find_text(models.main.warning, "Set ADMIN_TOKEN")


def test_token_is_read_from_env_then_token_file_then_data_dir(monkeypatch, tmp_path):
    from frontend.client import local_admin_token

    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    monkeypatch.setenv("ADMIN_TOKEN_FILE", str(token_file))
    monkeypatch.setenv("ADMIN_TOKEN", "from-env")
    assert local_admin_token() == "from-env"
    monkeypatch.delenv("ADMIN_TOKEN")
    assert local_admin_token() == "from-file"
    monkeypatch.setenv("ADMIN_TOKEN_FILE", str(tmp_path / "missing"))
    assert local_admin_token() is None
    monkeypatch.delenv("ADMIN_TOKEN_FILE")
    (tmp_path / "custom-data").mkdir()
    (tmp_path / "custom-data" / "admin_token").write_text("from-data-dir\n")
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "custom-data"))  # `make run` with a custom DATA_DIR
    assert local_admin_token() == "from-data-dir"


@pytest.mark.slow
def test_a_dashboard_open_to_the_network_asks_for_the_token(backend_url, monkeypatch, tmp_path):
    import streamlit as st

    monkeypatch.setenv("BACKEND_URL", backend_url)
    monkeypatch.setenv("ADMIN_TOKEN", TOKEN)  # on disk or in the environment: never used beyond loopback
    st.cache_data.clear()
    for address in (None, "0.0.0.0"):
        with bind_dashboard(address):
            at = open_page("retrain")
            assert find_text(at.sidebar.caption, "Admin token: not set")
            assert find_text(at.main.warning, "type it into the 'Admin token' field")
            assert all(b.disabled for b in at.button if b.label in ("Start retraining", "Upload and retrain"))
            field = next(t for t in at.sidebar.text_input if t.label == "Admin token")
            field.input(TOKEN).run()
            assert find_text(at.sidebar.caption, "Admin token: found")
            assert not any(b.disabled for b in at.button if b.label in ("Start retraining", "Upload and retrain"))


def test_make_run_binds_backend_and_dashboard_to_loopback():
    commands = subprocess.run(["make", "-n", "run"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    assert "--bind 127.0.0.1:5000" in commands and "--server.address 127.0.0.1" in commands
    opened = subprocess.run(
        ["make", "-n", "run", "DASHBOARD_ADDRESS=0.0.0.0", "BACKEND_BIND=0.0.0.0:5000"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--bind 0.0.0.0:5000" in opened and "--server.address 0.0.0.0" in opened


# -- Metrics --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_metrics_page_shows_curves_confusion_matrix_table_and_mistakes(dashboard_env, frontend_store):
    at = open_page("metrics")
    active = frontend_store.active_version()
    meta = frontend_store.metadata(active)
    assert at.selectbox[0].value == active
    assert at.metric[0].value == f"{meta['test_metrics']['accuracy']:.2%}"
    curves = [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]
    titles = [
        spec.get("title", {}).get("text") if isinstance(spec.get("title"), dict) else spec.get("title")
        for spec in curves
    ]
    assert "Accuracy" in titles and "Loss" in titles
    assert len(at.get("image")) >= 1  # the seaborn confusion matrix, rendered by st.pyplot
    table = next(df.value for df in at.dataframe if "precision" in df.value.columns)
    assert list(table.index) == [str(d) for d in range(10)]
    assert table.loc["3", "support"] == meta["test_metrics"]["per_class"]["3"]["support"]
    mistakes = meta["test_metrics"]["misclassified"]
    assert find_text(at.caption, f"of the {len(mistakes)} recorded mistakes")
    thumbnails = [c for c in image_captions(at) if "→" in c]
    first = mistakes[0]
    assert thumbnails[0] == f"{first['true']}→{first['predicted']} ({first['confidence']:.0%})"
    assert find_text(at.markdown, "**Class distribution**")
    assert find_text(at.markdown, "**Average digit per class**")


@pytest.mark.slow
def test_metrics_page_switches_version(dashboard_env, frontend_store):
    at = open_page("metrics")
    other = next(v for v in frontend_store.versions() if v != frontend_store.active_version())
    at.selectbox[0].set_value(other).run()
    assert not at.exception
    assert at.metric[0].value == f"{frontend_store.metadata(other)['test_metrics']['accuracy']:.2%}"


# -- Models ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_models_page_lists_versions_with_active_marked(dashboard_env, frontend_store):
    at = open_page("models")
    table = at.dataframe[0].value
    assert sorted(table["version"]) == sorted(frontend_store.versions())
    marked = table.loc[table["active"] != "", "version"].tolist()
    assert marked == [frontend_store.active_version()]
    assert table["trained on"].str.contains("mnist").all()


def table_with(at: AppTest, column: str) -> pd.DataFrame:
    """The first table on the page that has this column."""
    return next(df.value for df in at.dataframe if column in df.value.columns)


@pytest.mark.slow
def test_models_page_shows_the_fleet_and_a_rollout_converging(dashboard_env, backend_app, frontend_store):
    from backend.data.fleet import Replicas

    active = frontend_store.active_version()
    other = next(v for v in frontend_store.versions() if v != active)
    answer = requests.get(f"{dashboard_env}/fleet", timeout=10).json()
    at = open_page("models")
    assert "Fleet" in texts(at.subheader)
    assert find_text(at.main.success, f"The one replica worker serves `{active}`.")
    assert find_text(at.main.caption, f"Database **{answer['database']}** · training jobs **{answer['jobs']}**")
    assert find_text(at.main.caption, "Training jobs run as local processes on the API host")
    shown = table_with(at, "serves")[["rollout", "host", "pid", "serves"]].values.tolist()
    assert shown == [["✓", replica["host"], replica["pid"], active] for replica in answer["replicas"]]

    # A second worker, on another host, still serves the previous version: the rollout has not converged.
    lagging = Replicas(backend_app.extensions["digit_lab"].jobs.engine)
    lagging.me = {"id": "replica-b:4242", "host": "replica-b", "pid": 4242}
    try:
        lagging.beat(other)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        assert find_text(at.main.warning, f"Rolling out `{active}`: 1 of 2 replica workers serve it.")
        replicas = table_with(at, "serves").set_index("host")
        assert replicas.loc["replica-b", ["serves", "rollout"]].tolist() == [other, "⏳ behind"]
        assert (replicas.drop("replica-b")["rollout"] == "✓").all()
        lagging.beat(active)  # it caught up
        at.run()
        assert find_text(at.main.success, f"All 2 replica workers serve `{active}`.")
        assert (table_with(at, "serves")["rollout"] == "✓").all()
    finally:
        lagging.leave()

    # An activation from elsewhere rolls out to the worker, and the whole page follows (its listing was cached).
    admin = {"Authorization": f"Bearer {TOKEN}"}
    try:
        requests.post(f"{dashboard_env}/models/{other}/activate", headers=admin, timeout=30).raise_for_status()
        wait_for_fleet(dashboard_env, lambda fleet: fleet["active"] == other and fleet["converged"])
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        assert find_text(at.main.success, f"The one replica worker serves `{other}`.")
        versions = at.dataframe[0].value
        assert versions.loc[versions["active"] != "", "version"].tolist() == [other]
    finally:
        requests.post(f"{dashboard_env}/models/{active}/activate", headers=admin, timeout=30).raise_for_status()
        wait_for_fleet(dashboard_env, lambda fleet: fleet["active"] == active and fleet["converged"])


@pytest.mark.slow
def test_models_page_lists_the_trainers_of_a_queue(
    frontend_store, fresh_redis_url, tiny_mnist_path, tmp_path, monkeypatch
):
    import streamlit as st

    from backend.web.app import create_app
    from deploy import localfleet

    env = {
        "MODEL_DIR": str(frontend_store.root),
        "DATA_DIR": str(tmp_path / "data"),
        "ADMIN_TOKEN": TOKEN,
        "MNIST_PATH": str(tiny_mnist_path),
        "REDIS_URL": fresh_redis_url,
    }
    url, server = serve(create_app(env))  # not following the fleet: no replica worker reports
    try:
        monkeypatch.setenv("BACKEND_URL", url)
        monkeypatch.setenv("ADMIN_TOKEN", TOKEN)
        st.cache_data.clear()
        with bind_dashboard("127.0.0.1"):
            at = open_page("models")
            assert find_text(at.main.caption, "training jobs **queue**")
            assert find_text(at.main.info, "No API worker reports itself")
            assert find_text(at.main.warning, "No trainer listens on the queue")

            with localfleet.trainer(env, tmp_path / "trainer.log") as trainer:
                answer = wait_for_fleet(
                    url, lambda fleet: trainer.process.pid in [t["pid"] for t in fleet["trainers"]], seconds=60
                )
                at.run()
        assert not at.exception, [e.value for e in at.exception]
        assert not find_text(at.main.warning, "No trainer listens")
        shown = table_with(at, "state")[["name", "host", "pid", "state"]].values.tolist()
        assert shown == [[t["name"], t["host"], t["pid"], t["state"]] for t in answer["trainers"]]
    finally:
        server.shutdown()


def finished_job(url: str) -> dict[str, Any]:
    """Start a one-epoch retrain through the API and return the job once it has ended."""
    started = requests.post(
        f"{url}/retrain", json={"epochs": 1}, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
    )
    assert started.status_code == 202, started.text
    deadline = time.monotonic() + JOB_TIMEOUT
    while time.monotonic() < deadline:
        job = requests.get(f"{url}/jobs/{started.json()['job_id']}", timeout=10).json()
        if job["status"] in TERMINAL:
            assert (job.get("result") or {}).get("candidate"), job
            return job
        time.sleep(1)
    raise AssertionError(f"job {started.json()['job_id']} did not end within {JOB_TIMEOUT} s")


@pytest.mark.slow
def test_models_page_shows_how_a_job_made_a_version(dashboard_env):
    jobs = [
        j
        for j in requests.get(f"{dashboard_env}/jobs", timeout=10).json()["jobs"]
        if (j.get("result") or {}).get("candidate")
    ]
    job = jobs[0] if jobs else finished_job(dashboard_env)  # run alone, the test trains its own tiny job
    at = open_page("models")
    at.selectbox(key="details-version").set_value(job["result"]["candidate"]).run()
    verdict = "promoted" if job["result"]["promoted"] else "rejected"
    assert find_text(at.markdown, f"Job `{job['id']}` ({job['kind']}) **{verdict}** it:")


@pytest.mark.slow
def test_activate_needs_confirmation_then_switches_and_rolls_back(dashboard_env, frontend_store):
    original = frontend_store.active_version()
    at = open_page("models")
    target = at.selectbox[0].value
    assert target != original
    at.button(key="ask-activate").click().run()
    assert find_text(at.main.warning, f"Serve `{target}` instead of `{original}`?")
    assert frontend_store.active_version() == original  # nothing happens before confirming
    at.button(key="cancel-activate").click().run()
    assert frontend_store.active_version() == original and not find_text(at.main.warning, "Serve `")

    at.button(key="ask-activate").click().run()
    at.button(key="confirm-activate").click().run()
    assert not at.exception and not at.error, texts(at.error)
    assert find_text(at.main.success, f"Now serving `{target}` (was `{original}`)")
    assert frontend_store.active_version() == target
    assert requests.get(f"{dashboard_env}/health", timeout=10).json()["model_version"] == target
    assert find_text(at.sidebar.success, target)

    # Roll back to the original.
    at.selectbox[0].set_value(original)
    at.button(key="ask-activate").click().run()
    at.button(key="confirm-activate").click().run()
    assert frontend_store.active_version() == original


@pytest.mark.slow
def test_models_page_reviews_pending_feedback(dashboard_env, mnist, monkeypatch):
    admin = {"Authorization": f"Bearer {TOKEN}"}
    ids = []
    for index in (5, 6):
        answer = requests.post(
            f"{dashboard_env}/feedback",
            files={"file": ("digit.png", digit_png(mnist, index), "image/png")},
            data={"label": str(int(mnist.y_test[index]))},
            timeout=10,
        )
        assert answer.status_code in (200, 201), answer.text
        ids.append(answer.json()["id"])
    at = open_page("models")
    assert "Feedback review" in texts(at.subheader)
    assert all(at.button(key=f"accepted-{i}") and at.button(key=f"rejected-{i}") for i in ids)
    assert len(at.get("image")) >= 2  # the stored 28x28 inputs, fetched with the admin token
    assert find_text(at.main.markdown, f"Right digit **{int(mnist.y_test[5])}**")

    at.button(key=f"accepted-{ids[0]}").click().run()
    assert not at.exception and not at.error, texts(at.error)
    assert find_text(at.main.success, f"Feedback `{ids[0]}` accepted.")
    at.button(key=f"rejected-{ids[1]}").click().run()
    assert find_text(at.main.success, f"Feedback `{ids[1]}` rejected.")
    states = {
        r["id"]: r["status"]
        for r in requests.get(f"{dashboard_env}/feedback", headers=admin, timeout=10).json()["feedback"]
    }
    assert (states[ids[0]], states[ids[1]]) == ("accepted", "rejected")
    assert not any(b.key in (f"accepted-{ids[0]}", f"rejected-{ids[1]}") for b in at.button)  # no longer pending

    # Without the token the section says how to get one and offers no buttons.
    monkeypatch.delenv("ADMIN_TOKEN")
    monkeypatch.setenv("ADMIN_TOKEN_FILE", "/nonexistent/admin_token")
    locked = open_page("models")
    assert not any((b.key or "").startswith(("accepted-", "rejected-")) for b in locked.button)
    assert sum("admin token" in text for text in texts(locked.main.warning)) >= 2  # activation and feedback review
