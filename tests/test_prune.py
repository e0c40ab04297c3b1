"""Retention: prune removes rejected candidates, old versions, abandoned `.incoming-*` folders and old
job logs, and never the active version, its parent, or what an unfinished job may be publishing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backend.core.store import INCOMING_PREFIX, ModelStore
from backend.data.jobs import REJECTED, RUNNER_MODULE, SUCCEEDED, JobStore
from backend.data.retention import prune
from conftest import ADMIN_TOKEN, REPO_ROOT

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
DAY = 86400


def write_dummy_model(folder: Path) -> None:
    """Stand in for a trained model."""
    (folder / "model.keras").write_bytes(b"keras")
    (folder / "model.tflite").write_bytes(b"tflite")


def dead_pid() -> int:
    """The id of a process that has exited."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def age(path: Path, seconds: float) -> None:
    """Make a file or folder look `seconds` old."""
    stamp = time.time() - seconds
    os.utime(path, (stamp, stamp))


@pytest.fixture()
def runner():
    """A live process that looks like a job runner (its command line names backend.data.jobs)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", RUNNER_MODULE])
    yield process.pid
    process.kill()
    process.wait()


@pytest.fixture()
def stores(tmp_path, runner) -> tuple[ModelStore, JobStore]:
    """Eight versions: v03 active (parent v02), v07 a rejected candidate, v08 being trained by a running job."""
    models, jobs = ModelStore(tmp_path / "models"), JobStore(tmp_path / "data")
    rejected = jobs.create("retrain", {}, 1)
    jobs.start(rejected["id"], 1)
    jobs.conclude(rejected["id"], {"promoted": False}, None)
    assert jobs.get(rejected["id"])["status"] == REJECTED
    running = jobs.create("retrain", {}, 1)
    jobs.start(running["id"], runner)
    made_by = {"v07": rejected["id"], "v08": running["id"]}
    for number in range(1, 9):
        version = f"v{number:02d}"
        extra = {"job": made_by[version]} if version in made_by else {}
        models.publish(version, write_dummy_model, {"parent": "v02" if version == "v03" else None, **extra})
    models.activate("v03")
    return models, jobs


def test_prune_keeps_active_parent_newest_and_busy_versions(stores):
    models, jobs = stores
    removed = prune(models, jobs, keep=2)
    assert removed["versions"] == ["v01", "v04", "v05", "v06", "v07"]  # old ones, and the rejected candidate
    assert models.versions() == ["v02", "v03", "v08"] and models.active_version() == "v03"
    assert not [p for p in models.root.iterdir() if p.name.startswith(".")]
    assert prune(models, jobs, keep=0)["versions"] == []  # what is left is all protected


def test_prune_removes_only_abandoned_incoming_folders(stores):
    models, jobs = stores
    abandoned = models.root / f"{INCOMING_PREFIX}v09-{dead_pid()}"
    in_progress = models.root / f"{INCOMING_PREFIX}v10-{os.getpid()}"  # its writer is alive
    recent = models.root / f"{INCOMING_PREFIX}v11-{dead_pid()}"
    for folder in (abandoned, in_progress, recent):
        folder.mkdir()
        (folder / "model.keras").write_bytes(b"half")
    age(abandoned, 2 * 3600)
    age(in_progress, 2 * 3600)
    assert prune(models, jobs, keep=100, incoming_minutes=60)["incoming"] == [abandoned.name]
    assert not abandoned.exists() and in_progress.exists() and recent.exists()


def test_prune_removes_old_logs_of_ended_jobs_only(stores):
    models, jobs = stores
    ended = jobs.list()[-1]["id"]  # the rejected job
    running = next(job["id"] for job in jobs.list() if job["status"] == "running")
    jobs.append_log(ended, "done")
    jobs.append_log(running, "epoch 1")
    (jobs.log_dir / "gone.out").write_text("a job no longer listed")
    for path in jobs.log_dir.iterdir():
        age(path, 40 * DAY)
    (jobs.log_dir / "recent.log").write_text("written today")
    removed = prune(models, jobs, keep=100, log_days=30)["job_logs"]
    assert removed == sorted([f"{ended}.log", "gone.out"])
    assert sorted(p.name for p in jobs.log_dir.iterdir()) == sorted([f"{running}.log", "recent.log"])


def test_remove_never_takes_the_active_version(stores):
    models, _ = stores
    with pytest.raises(ValueError, match="active"):
        models.remove("v03")
    models.remove("v01")
    models.remove("v01")  # already gone: nothing to do
    assert "v01" not in models.versions() and "v03" in models.versions()


def test_prune_command_line(stores):
    models, jobs = stores
    finished = subprocess.run(
        [
            sys.executable,
            "-m",
            "backend.store",
            "prune",
            "--keep",
            "3",
            "--model-dir",
            str(models.root),
            "--data-dir",
            str(jobs.data_dir),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert finished.returncode == 0, finished.stderr
    assert json.loads(finished.stdout) == {"versions": ["v01", "v04", "v05", "v07"], "incoming": [], "job_logs": []}
    refused = subprocess.run(
        [sys.executable, "-m", "backend.store", "prune", "--keep", "-1"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "negative" in refused.stderr


def test_prune_endpoint(job_client, job_app):
    import shutil

    store = ModelStore(job_app.config["MODEL_DIR"])
    active = store.active_version()
    shutil.copytree(store.path(active), store.root / "00000000-000000-old0")  # sorts as the oldest
    assert job_client.post("/models/prune", json={"keep": 0}).status_code == 401
    for bad in ({"keep": -1}, {"keep": "all"}, {"log_days": -2}):
        response = job_client.post("/models/prune", json=bad, headers=AUTH)
        assert response.status_code == 400 and "error" in response.json, bad
    kept = {active, store.metadata(active).get("parent")}
    expected = [version for version in store.versions() if version not in kept]  # other tests may have added some
    response = job_client.post("/models/prune", json={"keep": 0}, headers=AUTH)
    assert response.status_code == 200
    assert response.json == {"versions": expected, "incoming": [], "job_logs": []}
    assert "00000000-000000-old0" in expected
    assert set(store.versions()) <= kept and job_client.get("/health").json["model_version"] == active
    assert job_client.post("/models/prune", json={}, headers=AUTH).json["versions"] == []  # defaults apply


def test_succeeded_job_versions_are_pruned_only_by_age(tmp_path):
    models, jobs = ModelStore(tmp_path / "models"), JobStore(tmp_path / "data")
    job = jobs.create("retrain", {}, 1)
    jobs.start(job["id"], 1)
    jobs.conclude(job["id"], {"promoted": True}, lambda _: None)
    assert jobs.get(job["id"])["status"] == SUCCEEDED
    for version in ("a1", "a2"):
        models.publish(version, write_dummy_model, {"parent": None, "job": job["id"]})
    assert prune(models, jobs, keep=1)["versions"] == ["a1"]
