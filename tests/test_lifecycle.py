"""The job and model lifecycle under races: compare-and-set statuses, cancel at any moment, verified
activation, and a worker that keeps serving when a new version will not load."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import threading
import time

import pytest

from backend.core.store import ModelStore
from backend.data.jobs import (
    CANCELLED,
    RUNNER_MODULE,
    RUNNING,
    SUCCEEDED,
    JobAlreadyEndedError,
    JobStore,
    process_alive,
)
from conftest import ADMIN_TOKEN, REPO_ROOT, png_bytes

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def wait_until(predicate, seconds: float = 60, what: str = "condition") -> None:
    """Poll `predicate` until it holds."""
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {seconds} s")
        time.sleep(0.05)


def snapshot(store: ModelStore) -> tuple[list[str], str | None]:
    """The store's versions and active version."""
    return store.versions(), store.active_version()


# --- compare-and-set statuses, without processes ---------------------------------------------


def test_status_changes_are_compare_and_set(tmp_path):
    jobs = JobStore(tmp_path)
    job = jobs.create("retrain", {"epochs": 1}, 1)
    with pytest.raises(TypeError):
        jobs.update(job["id"], status=RUNNING)  # no way around the compare-and-set moves
    assert jobs.cancel(job["id"])["status"] == CANCELLED
    assert jobs.start(job["id"], 12345) is False  # a runner that finds its job cancelled does not start it
    assert jobs.update(job["id"], epoch=1) is False
    assert jobs.finish(job["id"], "failed", error="late") is False
    never = lambda _: pytest.fail("activated a cancelled job")  # noqa: E731
    assert jobs.conclude(job["id"], {"promoted": True}, promote=never) is False
    ended = jobs.get(job["id"])
    assert ended["status"] == CANCELLED and ended["started"] is None and ended["epoch"] == 0
    assert jobs.cancel(job["id"])["status"] == CANCELLED  # cancelling twice is harmless


def test_cancel_after_promotion_says_so(tmp_path):
    jobs = JobStore(tmp_path)
    job = jobs.create("retrain", {}, 1)
    assert jobs.start(job["id"], 12345)
    activated = []
    result = {"promoted": True, "candidate": "v2", "previous": "v1"}
    assert jobs.conclude(job["id"], result, promote=lambda _: activated.append("v2")) is True
    assert activated == ["v2"]
    with pytest.raises(JobAlreadyEndedError, match="promoted version v2.*POST /models/v1/activate"):
        jobs.cancel(job["id"])
    assert jobs.get(job["id"])["status"] == SUCCEEDED


def test_cancel_waits_for_an_activation_in_progress(tmp_path):
    # conclude() holds the write lock from its status check to its commit: a cancel that arrives
    # while the candidate is being activated lands after it, and says the job promoted.
    jobs = JobStore(tmp_path)
    job = jobs.create("retrain", {}, 1)
    jobs.start(job["id"], 12345)
    activating, outcome = threading.Event(), {}

    def slow_activation(_connection) -> None:
        activating.set()
        time.sleep(0.5)

    concluder = threading.Thread(
        target=lambda: outcome.setdefault(
            "concluded",
            jobs.conclude(job["id"], {"promoted": True, "candidate": "v2", "previous": "v1"}, slow_activation),
        )
    )
    concluder.start()
    assert activating.wait(10)
    with pytest.raises(JobAlreadyEndedError):
        jobs.cancel(job["id"])
    concluder.join()
    assert outcome["concluded"] is True and jobs.get(job["id"])["status"] == SUCCEEDED


@pytest.mark.slow
def test_runner_of_a_cancelled_job_exits_without_training(tmp_path):
    jobs = JobStore(tmp_path)
    job = jobs.create("retrain", {"epochs": 1}, 1)
    jobs.cancel(job["id"])
    runner = subprocess.run(
        [sys.executable, "-m", RUNNER_MODULE, str(tmp_path), job["id"]],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert runner.returncode == 1 and "no longer queued" in runner.stderr
    ended = jobs.get(job["id"])
    assert ended["status"] == CANCELLED and ended["started"] is None


# --- cancel against real job processes ---------------------------------------------------------


def _cancel_when(client, jobs: JobStore, phase: str | None) -> tuple[int, dict]:
    """Start a one-epoch job, cancel it once its log shows `phase` (None: at once), wait for its process to exit."""
    job_id = client.post("/retrain", json={"epochs": 1}, headers=AUTH).json["job_id"]
    if phase is not None:
        wait_until(
            lambda: any(line.startswith(phase) for line in client.get(f"/jobs/{job_id}").json["log"]),
            180,
            f"{phase!r} in the log of job {job_id}",
        )
    response = client.post(f"/jobs/{job_id}/cancel", headers=AUTH)
    pid = jobs.pid(job_id)
    wait_until(lambda: not process_alive(pid), 120, f"exit of job {job_id}")
    return response.status_code, client.get(f"/jobs/{job_id}").json


def assert_cancelled_cleanly(store: ModelStore, before: tuple, status: int, job: dict) -> None:
    """The cancel answered 200, the job ended cancelled, and the store is exactly as it was."""
    assert status == 200 and job["status"] == CANCELLED, job
    assert job["error"] == "Cancelled on request." and job["result"] is None
    assert snapshot(store) == before
    assert not [p for p in store.root.iterdir() if p.name.startswith(".")]  # no half-written version either


@pytest.mark.slow
def test_cancel_at_once_never_publishes_or_activates(job_client, job_app):
    store, jobs = ModelStore(job_app.config["MODEL_DIR"]), JobStore(job_app.config["DATA_DIR"])
    before = snapshot(store)
    for _ in range(6):  # lands before the process records itself, during its start-up, or as it starts
        assert_cancelled_cleanly(store, before, *_cancel_when(job_client, jobs, None))


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["training ", "epoch 1/1"], ids=["while-training", "while-exporting-and-publishing"])
def test_cancel_later_still_publishes_nothing(job_client, job_app, phase):
    store, jobs = ModelStore(job_app.config["MODEL_DIR"]), JobStore(job_app.config["DATA_DIR"])
    before = snapshot(store)
    assert_cancelled_cleanly(store, before, *_cancel_when(job_client, jobs, phase))


# --- verified activation ------------------------------------------------------------------------


def _broken_copy(store: ModelStore, name: str, keep_hashes: bool = True) -> str:
    """Copy the active version under a new id and truncate its model.tflite."""
    source = store.path(store.active_version())
    shutil.copytree(source, store.root / name)
    if not keep_hashes:
        meta = json.loads((store.root / name / "metadata.json").read_text())
        meta.pop("files")
        (store.root / name / "metadata.json").write_text(json.dumps(meta))
    tflite = store.root / name / "model.tflite"
    tflite.write_bytes(tflite.read_bytes()[: tflite.stat().st_size // 2])
    return name


@pytest.mark.parametrize("keep_hashes, reason", [(True, "sha256"), (False, "LiteRT")], ids=["hashes", "no-hashes"])
def test_activate_refuses_a_truncated_version(job_client, job_app, keep_hashes, reason):
    store = ModelStore(job_app.config["MODEL_DIR"])
    active = store.active_version()
    assert "files" in store.metadata(active)  # publish recorded the hashes
    broken = _broken_copy(store, "broken-1", keep_hashes)
    response = job_client.post(f"/models/{broken}/activate", headers=AUTH)
    assert response.status_code == 422 and reason in response.json["error"] and broken in response.json["error"]
    assert store.active_version() == active
    assert job_client.get("/health").json == {"status": "ok", "model_version": active}


@pytest.mark.slow
def test_activate_refuses_a_model_that_is_not_a_digit_model(job_client, job_app, tmp_path):
    import keras

    store = ModelStore(job_app.config["MODEL_DIR"])
    active = store.active_version()
    odd = keras.Sequential(
        [keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(3, activation="softmax")]
    )

    def write(folder):
        odd.save(folder / "model.keras")
        odd.export(str(folder / "model.tflite"), format="litert", verbose=False)

    version = store.publish("three-classes", write, {"created": "now", "parent": None})
    response = job_client.post(f"/models/{version}/activate", headers=AUTH)
    assert response.status_code == 422 and "10 classes" in response.json["error"]
    assert store.active_version() == active


def test_shipped_model_passes_verification():
    from backend.core.inference import verify_version

    store = ModelStore(REPO_ROOT / "models")
    version = store.active_version()
    assert set(store.metadata(version)["files"]) == {"model.keras", "model.tflite"}
    assert verify_version(store, version).version == version


# --- a worker that cannot load the new version ----------------------------------------------------


def test_worker_keeps_serving_and_reports_a_version_it_cannot_load(job_client, job_app, digit):
    from backend.web.observability import LOAD_FAILURES

    store = ModelStore(job_app.config["MODEL_DIR"])
    good = store.active_version()
    upload = lambda: {"file": (io.BytesIO(png_bytes(digit)), "d.png")}  # noqa: E731
    assert job_client.post("/predict", data=upload()).json["model_version"] == good
    failures = LOAD_FAILURES._value.get()
    broken = _broken_copy(store, "broken-2")
    store.activate(broken)  # as a damaged disk or a hand-edited ACTIVE would, past the API's check
    for _ in range(5):
        assert job_client.post("/predict", data=upload()).json["model_version"] == good
    health = job_client.get("/health")
    assert health.status_code == 200 and health.json["status"] == "degraded" and health.json["model_version"] == good
    assert broken in health.json["reason"] and good in health.json["reason"]
    assert LOAD_FAILURES._value.get() == failures + 1  # tried once, not on every request
    assert "digitlab_model_load_failures_total" in job_client.get("/metrics").get_data(as_text=True)
    assert job_client.get("/ready").json["status"] == "ready"  # it still serves
    store.activate(good)
    assert job_client.get("/health").json == {"status": "ok", "model_version": good}


def test_ready_needs_a_model_and_a_readable_store(client, tmp_path, trained_store):
    from backend.web.app import create_app

    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json == {
        "status": "ready",
        "model_version": trained_store.active_version(),
    }
    empty = create_app({"MODEL_DIR": tmp_path / "none", "DATA_DIR": tmp_path / "data"}).test_client()
    response = empty.get("/ready")
    assert (
        response.status_code == 503 and response.json["status"] == "not-ready" and "active" in response.json["reason"]
    )
    assert empty.get("/health").json["status"] == "no-model"


# --- epochs in ASCII digits ----------------------------------------------------------------------


@pytest.mark.parametrize("epochs", ["²", "٣", "1²", "0", "101", "-1", " 5", "1e2", "9" * 5000])
def test_upload_epochs_must_be_ascii_digits_in_range(job_client, epochs):
    response = job_client.post(
        "/upload_and_retrain", headers=AUTH, data={"file": (io.BytesIO(b"PK"), "x.zip"), "epochs": epochs}
    )
    assert response.status_code == 400 and "1 to 100" in response.json["error"]
    assert job_client.get("/jobs").json["jobs"] == []


def test_epoch_limits_are_documented_from_one_definition(job_client):
    from backend.data.jobs import DEFAULT_EPOCHS, MAX_EPOCHS, STATUSES

    spec = job_client.get("/openapi.json").json["components"]["schemas"]
    assert spec["RetrainRequest"]["properties"]["epochs"]["maximum"] == MAX_EPOCHS
    assert spec["ZipUpload"]["properties"]["epochs"]["maximum"] == MAX_EPOCHS
    assert str(DEFAULT_EPOCHS["upload"]) in spec["ZipUpload"]["properties"]["epochs"]["description"]
    assert spec["Job"]["properties"]["status"]["enum"] == list(STATUSES)
    assert job_client.post("/retrain", json={"epochs": MAX_EPOCHS + 1}, headers=AUTH).status_code == 400


@pytest.mark.slow
def test_a_cancel_landing_as_the_candidate_is_renamed_into_place_withdraws_it(
    tmp_path, trained_store, tiny_mnist_path, monkeypatch
):
    from backend.core import store as store_module
    from backend.core.config import Settings
    from backend.data.jobs import JobCancelled
    from backend.training.pipeline import execute

    models = tmp_path / "models"
    shutil.copytree(trained_store.root, models)
    monkeypatch.setenv("MNIST_PATH", str(tiny_mnist_path))
    settings = Settings(model_dir=models, data_dir=tmp_path / "data")
    jobs = JobStore(settings.data_dir)
    job = jobs.create("retrain", {"from": "active", "epochs": 1}, 1)
    # A live process that looks like the runner, so the job is not reaped as dead while this test runs it.
    stand_in = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", RUNNER_MODULE])
    assert jobs.start(job["id"], stand_in.pid)
    real_fsync_dir, landed = store_module.fsync_dir, []

    def cancel_after_the_rename(path) -> None:
        real_fsync_dir(path)
        if path == models and not landed:  # publish flushes the store folder right after the rename
            landed.append(path)
            raise JobCancelled()

    monkeypatch.setattr(store_module, "fsync_dir", cancel_after_the_rename)
    before = ModelStore(models).versions()
    try:
        with pytest.raises(JobCancelled):
            execute(jobs.get(job["id"]), jobs, settings)
    finally:
        stand_in.kill()
        stand_in.wait()
    assert landed and ModelStore(models).versions() == before
