"""Retraining jobs: admin auth, separate processes, one at a time, persistence, cancel/crash safety, the gate."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time

import pytest

from backend.data.jobs import JobStore, process_alive
from backend.training.pipeline import gate
from conftest import ADMIN_TOKEN
from tests.support.datasets import digits_zip

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def wait_for(
    client, job_id: str, done=lambda job: job["status"] not in ("queued", "running"), seconds: float = 180
) -> dict:
    """Poll a job until `done(job)` holds."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json
        if done(job):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not get there in {seconds} s: {job}")


@pytest.mark.parametrize(
    "method, path",
    [
        ("post", "/retrain"),
        ("post", "/upload_and_retrain"),
        ("post", "/jobs/abc/cancel"),
        ("post", "/models/v1/activate"),
    ],
)
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}],
    ids=["missing", "wrong", "not-bearer"],
)
def test_admin_endpoints_need_the_token(job_client, method, path, headers):
    response = getattr(job_client, method)(path, headers=headers, json={})
    assert response.status_code == 401 and "Bearer" in response.json["error"]


def test_token_is_generated_into_data_dir_when_unset(trained_store, tmp_path, monkeypatch):
    from backend.web.app import create_app

    monkeypatch.delenv("ADMIN_TOKEN", raising=False)
    app = create_app({"MODEL_DIR": trained_store.root, "DATA_DIR": tmp_path})
    token = (tmp_path / "admin_token").read_text().strip()
    assert len(token) >= 32 and app.config["ADMIN_TOKEN"] == token
    assert create_app({"MODEL_DIR": trained_store.root, "DATA_DIR": tmp_path}).config["ADMIN_TOKEN"] == token
    client = app.test_client()
    assert client.post("/models/nope/activate", headers={"Authorization": f"Bearer {token}"}).status_code == 404


@pytest.mark.slow
def test_activate_and_roll_back(job_client, tiny_data, job_app):
    from backend.core.store import ModelStore
    from backend.training.train import TrainingConfig, train_and_publish

    store = ModelStore(job_app.config["MODEL_DIR"])
    original = store.active_version()
    newer = train_and_publish(store, tiny_data, TrainingConfig(epochs=1, batch_size=64, seed=5), verbose=0)
    response = job_client.post(f"/models/{newer}/activate", headers=AUTH)
    assert response.json == {"active": newer, "previous": original}
    assert job_client.get("/health").json["model_version"] == newer
    assert job_client.post(f"/models/{original}/activate", headers=AUTH).status_code == 200
    assert job_client.get("/health").json["model_version"] == original
    assert job_client.post("/models/does-not-exist/activate", headers=AUTH).status_code == 404
    assert job_client.post("/models/..%2F..%2Fetc/activate", headers=AUTH).status_code == 404


def test_retrain_rejects_bad_options(job_client):
    for body in ({"epochs": 0}, {"epochs": "many"}, {"from": "yesterday"}, {"include_uploads": "maybe"}):
        response = job_client.post("/retrain", json=body, headers=AUTH)
        assert response.status_code == 400, body
        assert "error" in response.json


@pytest.mark.slow
def test_upload_and_retrain_end_to_end(job_client, job_app, mnist):
    active_before = job_client.get("/health").json["model_version"]
    upload = digits_zip(mnist.x_test[1000:3000], mnist.y_test[1000:3000], per_digit=6)
    response = job_client.post(
        "/upload_and_retrain", headers=AUTH, data={"zipfile": (io.BytesIO(upload), "mine.zip"), "epochs": "1"}
    )
    assert response.status_code == 202, response.json
    accepted = response.json
    assert accepted["dataset"]["images"] == 60 and accepted["dataset"]["per_class"]["3"] == 6
    assert accepted["status_url"] == f"/jobs/{accepted['job_id']}"

    second = job_client.post("/retrain", json={"epochs": 1}, headers=AUTH)  # one job at a time
    assert second.status_code == 409 and second.json["job_id"] == accepted["job_id"]

    job = wait_for(job_client, accepted["job_id"])
    assert job["status"] in ("succeeded", "rejected"), job
    assert job["kind"] == "upload_and_retrain" and job["progress"] == 1.0 and job["epoch"] == job["epochs"] == 1
    assert len(job["history"]["loss"]) == 1 and job["log"]
    result = job["result"]
    assert result["comparison"]["mnist_test"]["active"] is not None
    assert result["comparison"]["upload_holdout"]["examples"] > 0
    sources = [source["name"] for source in result["data"]["sources"]]
    assert sources == ["mnist", f"upload:{accepted['dataset']['id']}"]
    models = job_client.get("/models").json
    assert result["candidate"] in [row["version"] for row in models["versions"]]
    assert models["active"] == (result["candidate"] if job["status"] == "succeeded" else active_before)
    assert job_client.get("/health").json["model_version"] == models["active"]
    assert [d["id"] for d in job_client.get("/datasets").json["datasets"]] == [accepted["dataset"]["id"]]


def test_bad_zip_is_refused_before_anything_trains(job_client, job_app):
    response = job_client.post("/upload_and_retrain", headers=AUTH, data={"file": (io.BytesIO(b"not a zip"), "x.zip")})
    assert response.status_code == 400 and "ZIP" in response.json["error"]
    assert job_client.get("/jobs").json["jobs"] == []
    response = job_client.post("/upload_and_retrain", headers=AUTH, data={})
    assert response.status_code == 400 and "'file'" in response.json["error"]


@pytest.mark.slow
def test_strict_gate_rejects_and_keeps_the_candidate(trained_store, tmp_path, tiny_mnist_path, mnist):
    import shutil

    from backend.web.app import create_app

    shutil.copytree(trained_store.root, tmp_path / "models")
    app = create_app(
        {
            "MODEL_DIR": tmp_path / "models",
            "DATA_DIR": tmp_path / "data",
            "MNIST_PATH": str(tiny_mnist_path),
            "ADMIN_TOKEN": ADMIN_TOKEN,
            "GATE_MAX_MNIST_DROP": -1.0,
        }
    )  # demand +100 points: never passes
    client = app.test_client()
    active = client.get("/health").json["model_version"]
    ones = digits_zip(mnist.x_test[1000:3000], mnist.y_test[1000:3000], per_digit=6, only=1)
    job_id = client.post(
        "/upload_and_retrain",
        headers=AUTH,
        data={"file": (io.BytesIO(ones), "ones.zip"), "epochs": "1"},
    ).json["job_id"]
    job = wait_for(client, job_id)
    assert job["status"] == "rejected" and "MNIST test accuracy" in job["result"]["reason"]
    assert job["result"]["promoted"] is False and job["result"]["active"] == active
    assert client.get("/health").json["model_version"] == active
    assert job["result"]["candidate"] in [row["version"] for row in client.get("/models").json["versions"]]


def test_gate_rules():
    active = {"mnist_test": 0.9940, "upload_holdout": 0.80}
    forgot = {"mnist_test": 0.9500, "upload_holdout": 0.99}
    assert gate(active, forgot, 0.003)[0] is False and "fell 4.40 points" in gate(active, forgot, 0.003)[1]
    assert gate(active, {"mnist_test": 0.9915, "upload_holdout": 0.97}, 0.003)[0] is True
    assert gate(active, {"mnist_test": 0.9945, "upload_holdout": 0.79}, 0.003)[0] is False
    assert gate(None, forgot, 0.003)[0] is True


@pytest.mark.slow
def test_killed_job_leaves_active_model_and_is_marked_failed(job_client, job_app):
    versions_before = [row["version"] for row in job_client.get("/models").json["versions"]]
    active = job_client.get("/health").json["model_version"]
    job_id = job_client.post("/retrain", json={"epochs": 60, "from": "scratch"}, headers=AUTH).json["job_id"]
    wait_for(job_client, job_id, lambda job: job["epoch"] >= 1)
    pid = JobStore(job_app.config["DATA_DIR"]).pid(job_id)
    os.kill(pid, signal.SIGKILL)  # a crash mid-training
    job = wait_for(job_client, job_id)
    assert job["status"] == "failed" and "died" in job["error"]
    assert job_client.get("/health").json["model_version"] == active
    assert [row["version"] for row in job_client.get("/models").json["versions"]] == versions_before


@pytest.mark.slow
def test_cancel_running_job(job_client):
    active = job_client.get("/health").json["model_version"]
    job_id = job_client.post("/retrain", json={"epochs": 60, "from": "scratch"}, headers=AUTH).json["job_id"]
    wait_for(job_client, job_id, lambda job: job["status"] == "running")
    job = job_client.post(f"/jobs/{job_id}/cancel", headers=AUTH).json
    assert job["status"] == "cancelled"
    assert job_client.get("/health").json["model_version"] == active
    assert job_client.post("/jobs/unknown/cancel", headers=AUTH).status_code == 404
    assert job_client.get("/jobs/unknown").status_code == 404


def test_jobs_survive_restart_and_dead_ones_are_failed(job_app, trained_store):
    from backend.web.app import create_app

    data_dir = job_app.config["DATA_DIR"]
    jobs = JobStore(data_dir)
    finished = jobs.create("retrain", {"epochs": 1}, 1)
    jobs.finish(finished["id"], "succeeded", result={"promoted": True}, progress=1.0)
    orphan = jobs.create("retrain", {"epochs": 1}, 1)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert jobs.start(orphan["id"], dead.pid)
    assert not process_alive(dead.pid)

    restarted = create_app(
        {"MODEL_DIR": job_app.config["MODEL_DIR"], "DATA_DIR": data_dir, "ADMIN_TOKEN": ADMIN_TOKEN}
    ).test_client()
    listed = {job["id"]: job for job in restarted.get("/jobs").json["jobs"]}
    assert listed[finished["id"]]["status"] == "succeeded" and listed[finished["id"]]["result"] == {"promoted": True}
    assert listed[orphan["id"]]["status"] == "failed" and "died" in listed[orphan["id"]]["error"]


STORE_RACER = """
import sys, time
from backend.data.jobs import JobStore
start, folders = float(sys.argv[1]), sys.argv[2:]
for trial, folder in enumerate(folders):
    time.sleep(max(0.0, start + trial * 0.05 - time.time()))  # every racer opens this folder at the same moment
    JobStore(folder)
"""


@pytest.mark.slow
def test_workers_starting_together_on_a_fresh_data_dir_all_boot(tmp_path):
    # gunicorn's workers open a fresh DATA_DIR at the same moment; switching the new job table to
    # WAL can fail at once for one of them ("database is locked"), which used to kill its boot.
    folders = [str(tmp_path / f"data-{trial}") for trial in range(40)]
    start = time.time() + 3
    racers = [
        subprocess.Popen([sys.executable, "-c", STORE_RACER, str(start), *folders], stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    errors = [racer.communicate(timeout=120)[1] for racer in racers]
    assert [racer.returncode for racer in racers] == [0] * 4, errors
