"""A real fleet: PostgreSQL, Redis, two API replicas behind nginx and a trainer, all started from Debian's binaries.

It runs the same commands as `make fleet` and docker-compose.yml (deploy/localfleet.py). It checks that
a ZIP job runs on the trainer and rolls out to both replicas under load with no failed request, even
when a replica restarts meanwhile; that a cancel from any replica stops the job within 5 s; that
racing activations leave one winner; and that a trainer killed mid-job leaves the job failed, the model
unchanged and the fleet taking the next job.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from backend.data.fleet import BEAT_SECONDS
from backend.data.jobs import CANCEL_WAIT_SECONDS, DIED
from deploy import localfleet
from tests.support.datasets import digits_zip, png_bytes
from tests.support.fleet import nginx_in_front

pytestmark = pytest.mark.slow

TOKEN = "fleet-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HEARTBEAT_TIMEOUT = 5  # seconds; the default is 30, so a killed trainer's job fails well inside 2 minutes
ROLLOUT_SECONDS = 2  # every replica serves a promoted version within this of the job's end
LOAD_THREADS = 2


@dataclass
class Fleet:
    """The running fleet: nginx's URL, the replicas (restartable), the trainer and their shared environment."""

    env: dict[str, str]
    folder: Path
    nginx: str = ""
    replicas: list[localfleet.Server] = field(default_factory=list)
    stacks: list[contextlib.ExitStack] = field(default_factory=list)
    trainer: localfleet.Server | None = None
    trainer_stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def start_replica(self, index: int, port: int | None = None) -> None:
        """Start replica `index` (again, on its old port when given)."""
        stack = contextlib.ExitStack()
        server = stack.enter_context(localfleet.replica(self.env, port, self.folder / f"replica-{index}.log"))
        if index < len(self.replicas):
            self.replicas[index], self.stacks[index] = server, stack
        else:
            self.replicas.append(server)
            self.stacks.append(stack)

    def restart_replica(self, index: int) -> None:
        """Stop replica `index` (SIGTERM: gunicorn finishes requests in flight) and start it on the same port."""
        port = self.replicas[index].port
        self.stacks[index].close()
        self.start_replica(index, port)

    def start_trainer(self) -> None:
        """Start a trainer (`python -m backend.worker`) and wait until the fleet lists it."""
        self.trainer_stack = contextlib.ExitStack()
        self.trainer = self.trainer_stack.enter_context(localfleet.trainer(self.env, self.folder / "trainer.log"))
        deadline = time.monotonic() + 60
        while self.trainer.process.pid not in [t["pid"] for t in self.fleet()["trainers"]]:
            assert self.trainer.process.poll() is None and time.monotonic() < deadline, "the trainer did not start"
            time.sleep(0.1)

    def wait_until_converged(self, version: str) -> None:
        """Wait until GET /fleet says every replica reports `version` (each reports once per BEAT_SECONDS)."""
        deadline = time.monotonic() + BEAT_SECONDS + 2
        while not ((state := self.fleet())["converged"] and state["active"] == version):
            assert time.monotonic() < deadline, state
            time.sleep(0.1)

    def active(self) -> str:
        """Return the active version, as the pointer row names it."""
        return requests.get(f"{self.nginx}/models", timeout=10).json()["active"]

    def fleet(self) -> dict:
        """Return GET /fleet, asked of the first replica."""
        return requests.get(f"{self.replicas[0].url}/fleet", timeout=10).json()

    def job(self, job_id: str) -> dict:
        """Return a job as the fleet reports it."""
        return requests.get(f"{self.nginx}/jobs/{job_id}", timeout=10).json()

    def wait_for_job(self, job_id: str, done, seconds: float = 180) -> dict:
        """Poll a job until `done(job)` holds."""
        deadline = time.monotonic() + seconds
        while not done(job := self.job(job_id)):
            assert time.monotonic() < deadline, f"job {job_id} stuck: {job}"
            time.sleep(0.1)
        return job

    def served(self) -> list[str | None]:
        """Return the version each replica serves, asked directly (not through nginx)."""
        return [requests.get(f"{replica.url}/health", timeout=10).json()["model_version"] for replica in self.replicas]


@pytest.fixture(scope="module")
def fleet(postgres_url, redis_url, trained_store, tiny_mnist_path, tmp_path_factory) -> Iterator[Fleet]:
    """Fresh PostgreSQL and Redis databases, a shared model store and data folder, 2 replicas, nginx, a trainer."""
    import redis

    folder = tmp_path_factory.mktemp("fleet")
    shutil.copytree(trained_store.root, folder / "models")
    database = localfleet.create_database(postgres_url, f"fleet_{os.getpid()}")
    queue_url = redis_url.rsplit("/", 1)[0] + "/15"
    redis.Redis.from_url(queue_url).flushdb()
    env = {
        "DATABASE_URL": database,
        "REDIS_URL": queue_url,
        "MODEL_DIR": str(folder / "models"),
        "DATA_DIR": str(folder / "data"),
        "MNIST_PATH": str(tiny_mnist_path),
        "ADMIN_TOKEN": TOKEN,
        "WEB_CONCURRENCY": "1",
        "TRUSTED_PROXIES": "1",
        "JOB_HEARTBEAT_TIMEOUT_SECONDS": str(HEARTBEAT_TIMEOUT),
        "GATE_MAX_MNIST_DROP": "1",  # the rollout is under test here, not the gate
    }
    state = Fleet(env, folder)
    try:
        for index in range(2):
            state.start_replica(index)
        with nginx_in_front([replica.url for replica in state.replicas]) as proxy:
            state.nginx = proxy.url
            state.start_trainer()
            yield state
    finally:
        state.trainer_stack.close()
        for stack in state.stacks:
            stack.close()


class SteadyLoad:
    """Clients posting /predict through nginx without pause, counting every answer that is not a 200."""

    def __init__(self, url: str, image: bytes) -> None:
        self.url, self.image = url, image
        self.stop = threading.Event()
        self.answers = 0
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(LOAD_THREADS)]

    def _run(self) -> None:
        with requests.Session() as session:
            while not self.stop.is_set():
                try:
                    response = session.post(f"{self.url}/predict", files={"file": ("d.png", self.image)}, timeout=10)
                    self.answers += 1
                    if response.status_code != 200:
                        self.failures.append(f"{response.status_code} {response.text[:200]}")
                except requests.RequestException as exc:
                    self.failures.append(repr(exc))

    def __enter__(self) -> SteadyLoad:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()


def test_the_fleet_lists_both_replicas_and_the_trainer(fleet):
    state = fleet.fleet()
    assert (state["database"], state["jobs"]) == ("postgresql", "queue")
    assert len(state["replicas"]) == 2 and state["converged"]
    assert {replica["version"] for replica in state["replicas"]} == {state["active"]}
    assert len(state["trainers"]) == 1 and state["trainers"][0]["pid"] == fleet.trainer.process.pid


def test_a_zip_job_runs_on_the_trainer(fleet, mnist):
    upload = digits_zip(mnist.x_test[:3000], mnist.y_test[:3000], per_digit=10)
    accepted = requests.post(
        f"{fleet.nginx}/upload_and_retrain",
        headers=AUTH,
        files={"file": ("mine.zip", io.BytesIO(upload))},
        data={"epochs": "1"},
        timeout=60,
    )
    assert accepted.status_code == 202, accepted.text
    job = fleet.wait_for_job(accepted.json()["job_id"], lambda job: job["status"] not in ("queued", "running"))
    assert job["status"] in ("succeeded", "rejected"), job  # the gate's verdict on a tiny model is not under test
    host, pid = job["worker"].rsplit(":", 1)
    assert host == socket.gethostname() and int(pid) != fleet.trainer.process.pid  # a work horse the trainer forked
    sources = [source["name"] for source in job["result"]["data"]["sources"]]
    assert sources == ["mnist", f"upload:{accepted.json()['dataset']['id']}"]
    assert f"Job OK ({job['id']})" in (fleet.folder / "trainer.log").read_text()


def test_a_promoted_version_reaches_both_replicas_under_load_through_a_replica_restart(fleet, mnist):
    before = fleet.served()
    with SteadyLoad(fleet.nginx, png_bytes(255 - mnist.x_test[0])) as load:
        accepted = requests.post(f"{fleet.nginx}/retrain", headers=AUTH, json={"epochs": 3}, timeout=30)
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["job_id"]
        fleet.wait_for_job(job_id, lambda job: job["status"] == "running")
        fleet.restart_replica(0)  # while the job trains
        job = fleet.wait_for_job(job_id, lambda job: job["status"] not in ("queued", "running"))
        ended = time.monotonic()
        assert job["status"] == "succeeded" and job["result"]["promoted"], job["result"]["reason"]
        candidate = job["result"]["candidate"]
        while fleet.served() != [candidate, candidate]:
            assert time.monotonic() - ended < ROLLOUT_SECONDS, f"replicas serve {fleet.served()}, not {candidate}"
            time.sleep(0.05)
        time.sleep(0.5)  # the load goes on, on the new version
    assert load.failures == [] and load.answers > 50, load.failures[:5]
    assert candidate not in before
    fleet.wait_until_converged(candidate)


def start_long_job(fleet: Fleet) -> str:
    """Start a retrain job long enough to be caught running, and wait until it trains."""
    response = requests.post(f"{fleet.nginx}/retrain", headers=AUTH, json={"epochs": 60, "from": "active"}, timeout=30)
    assert response.status_code == 202, response.text
    job_id = response.json()["job_id"]
    fleet.wait_for_job(job_id, lambda job: job["status"] == "running" and job["epoch"] >= 1)
    return job_id


def test_a_cancel_from_either_replica_stops_the_job_within_5_s(fleet):
    active = fleet.active()
    job_id = start_long_job(fleet)
    asked = time.monotonic()
    cancelled = requests.post(f"{fleet.replicas[1].url}/jobs/{job_id}/cancel", headers=AUTH, timeout=30)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    while fleet.fleet()["trainers"][0]["job"] is not None:
        assert time.monotonic() - asked < CANCEL_WAIT_SECONDS, "the trainer is still running the cancelled job"
        time.sleep(0.1)
    assert fleet.active() == active


def test_racing_activations_on_two_replicas_leave_exactly_one_winner(fleet):
    models = Path(fleet.env["MODEL_DIR"])
    current = fleet.active()
    for name in ("race-a", "race-b"):  # two complete versions, copies of the active one
        shutil.copytree(models / current, models / name)
    barrier = threading.Barrier(2)
    answers: dict[str, int] = {}

    def activate(replica: localfleet.Server, version: str) -> None:
        barrier.wait()
        response = requests.post(f"{replica.url}/models/{version}/activate", headers=AUTH, timeout=30)
        answers[version] = response.status_code

    threads = [
        threading.Thread(target=activate, args=pair) for pair in zip(fleet.replicas, ("race-a", "race-b"), strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(answers.values()) == [200, 409], answers
    winner = next(version for version, status in answers.items() if status == 200)
    deadline = time.monotonic() + ROLLOUT_SECONDS
    while fleet.served() != [winner, winner]:
        assert time.monotonic() < deadline, fleet.served()
        time.sleep(0.05)
    fleet.wait_until_converged(winner)


def test_a_trainer_killed_mid_job_fails_the_job_keeps_the_model_and_the_fleet_takes_the_next(fleet):
    active = fleet.active()
    job_id = start_long_job(fleet)
    trainer = fleet.trainer.process
    for pid in [*localfleet.child_pids(trainer.pid), trainer.pid]:  # the trainer and its work horse, as a host loss
        os.kill(pid, signal.SIGKILL)
    trainer.wait()
    job = fleet.wait_for_job(job_id, lambda job: job["status"] != "running", seconds=HEARTBEAT_TIMEOUT + 30)
    assert job["status"] == "failed" and job["error"] == DIED
    assert fleet.active() == active
    assert fleet.served() == [active, active]

    fleet.start_trainer()
    response = requests.post(f"{fleet.nginx}/retrain", headers=AUTH, json={"epochs": 1, "from": "active"}, timeout=30)
    assert response.status_code == 202, response.text
    next_job = fleet.wait_for_job(response.json()["job_id"], lambda job: job["status"] not in ("queued", "running"))
    assert next_job["status"] in ("succeeded", "rejected"), next_job


def test_rq_stop_command_backs_up_a_job_that_ignores_the_cancel(fresh_redis_url, tmp_path):
    from rq.job import Job, JobStatus

    from backend.data import queue

    env = {"REDIS_URL": fresh_redis_url, "DATA_DIR": str(tmp_path / "data")}
    with localfleet.trainer(env, tmp_path / "trainer.log"):
        job = queue.training_queue(fresh_redis_url).enqueue_call("time.sleep", args=(120,), job_id="stubborn")
        redis = queue.connect(fresh_redis_url)
        deadline = time.monotonic() + 60
        while job.get_status(refresh=True) != JobStatus.STARTED:  # no heartbeat will ever stop time.sleep
            assert time.monotonic() < deadline, (tmp_path / "trainer.log").read_text()
            time.sleep(0.1)
        asked = time.monotonic()
        queue.stop(fresh_redis_url, "stubborn", CANCEL_WAIT_SECONDS)
        assert time.monotonic() - asked < CANCEL_WAIT_SECONDS + 0.5
        assert Job.fetch("stubborn", connection=redis).get_status() == JobStatus.STOPPED
