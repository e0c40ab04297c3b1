"""The database layer on both engines: SQLite (one host) and PostgreSQL (a fleet).

Migrations run once however many processes start together, one job is unfinished at a time even
when replicas race, racing activations leave exactly one winner, and a verdict and its activation
commit or roll back together.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from sqlalchemy import text

from backend.core.store import ActivationConflictError
from backend.data import db
from backend.data.feedback import ACCEPTED, FeedbackQuotaError, FeedbackStore
from backend.data.fleet import DatabasePointer, Replicas
from backend.data.jobs import DIED, FAILED, RUNNING, SUCCEEDED, JobConflictError, JobStore

ENGINES = ["sqlite", "postgresql"]


@pytest.fixture(params=ENGINES)
def database(request, tmp_path) -> tuple[str, str | None]:
    """(DATA_DIR, DATABASE_URL) for each engine: unset means SQLite under DATA_DIR."""
    url = request.getfixturevalue("fresh_database_url") if request.param == "postgresql" else None
    return str(tmp_path / "data"), url


MIGRATOR = """
import sys, time
from backend.data.jobs import JobStore
start, data_dir, url = float(sys.argv[1]), sys.argv[2], sys.argv[3] or None
time.sleep(max(0.0, start - time.time()))  # every process opens the fresh database at the same moment
print(len(JobStore(data_dir, url).list()))
"""


@pytest.mark.slow
def test_processes_starting_together_migrate_the_schema_once(database):
    data_dir, url = database
    start = time.time() + 3
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", MIGRATOR, str(start), data_dir, url or ""],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    outputs = [racer.communicate(timeout=120) for racer in racers]
    assert [racer.returncode for racer in racers] == [0] * 6, [err for _, err in outputs]
    assert [out.strip() for out, _ in outputs] == ["0"] * 6
    with db.read(db.engine(db.database_url(data_dir, url))) as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == ["0001"]


def test_one_unfinished_job_even_when_replicas_race(database):
    stores = [JobStore(*database) for _ in range(8)]  # as if on eight replicas
    barrier = threading.Barrier(len(stores))
    outcomes: list[str] = []

    def create(store: JobStore) -> None:
        barrier.wait()
        try:
            outcomes.append(store.create("retrain", {}, 1)["id"])
        except JobConflictError:
            outcomes.append("conflict")

    threads = [threading.Thread(target=create, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [outcome for outcome in outcomes if outcome != "conflict"]
    assert len(winners) == 1 and stores[0].unfinished() == winners


def test_a_second_unfinished_job_is_refused_by_the_database_itself(database):
    store = JobStore(*database)
    store.create("retrain", {}, 1)
    with pytest.raises(Exception, match="one_unfinished_job|UNIQUE|unique"), db.write(store.engine) as connection:
        connection.execute(
            text(
                "INSERT INTO jobs (id, kind, status, params, created) "
                "VALUES ('sneaky', 'retrain', 'running', '{}', '2026-01-01')"
            )
        )


def start_on_another_host(store: JobStore, job_id: str, heartbeat: float | None = None) -> None:
    """Start a job as a trainer on another host would: this host cannot see its process, only its heartbeat."""
    assert store.start(job_id, 42)
    with db.write(store.engine) as connection:
        connection.execute(
            text("UPDATE jobs SET worker = 'another-host:42', heartbeat = :beat WHERE id = :id"),
            {"beat": heartbeat or time.time(), "id": job_id},
        )


def test_a_job_whose_heartbeat_stopped_is_failed_and_the_next_is_accepted(database):
    store = JobStore(*database, heartbeat_timeout=2)
    job = store.create("retrain", {}, 1)
    start_on_another_host(store, job["id"], heartbeat=time.time() - 3)
    ended = store.get(job["id"])
    assert ended["status"] == FAILED and ended["error"] == DIED and ended["worker"] == "another-host:42"
    assert store.create("retrain", {}, 1)["status"] == "queued"


def test_a_live_heartbeat_from_another_host_keeps_the_job(database):
    store = JobStore(*database, heartbeat_timeout=30)
    job = store.create("retrain", {}, 1)
    start_on_another_host(store, job["id"])
    assert store.beat(job["id"])
    assert store.get(job["id"])["status"] == RUNNING  # pid 42 on this host is not looked at for another host's job
    store.cancel(job["id"])
    assert store.beat(job["id"]) is False  # how the job process learns of the cancel


@pytest.fixture()
def fleet_pointer(fresh_database_url, tmp_path) -> DatabasePointer:
    """The active-version row of a fresh PostgreSQL database, starting at version v1."""
    pointer = DatabasePointer(db.engine(db.database_url(tmp_path, fresh_database_url)))
    pointer.seed("v1")
    return pointer


def test_racing_activations_leave_exactly_one_winner(fleet_pointer):
    replicas = [DatabasePointer(fleet_pointer.engine) for _ in range(2)]
    barrier = threading.Barrier(2)
    outcomes: dict[str, str] = {}

    def activate(pointer: DatabasePointer, version: str) -> None:
        expected = pointer.read()  # what POST /models/<v>/activate reads before it verifies the version
        barrier.wait()
        try:
            pointer.swap(version, expected)
            outcomes[version] = "won"
        except ActivationConflictError:
            outcomes[version] = "refused"

    threads = [threading.Thread(target=activate, args=pair) for pair in zip(replicas, ("v2", "v3"), strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes.values()) == ["refused", "won"]
    winner = next(version for version, outcome in outcomes.items() if outcome == "won")
    assert fleet_pointer.read() == winner


def test_a_change_is_seen_within_the_poll_interval_without_a_query_per_request(fleet_pointer):
    reader = DatabasePointer(fleet_pointer.engine)
    before = reader.stamp()
    fleet_pointer.swap("v2")
    assert reader.stamp() == before  # cached: requests do not query the row
    time.sleep(0.6)
    assert reader.stamp() != before
    assert reader.read() == "v2"


def test_seeding_never_overrides_the_fleets_choice(fleet_pointer):
    fleet_pointer.swap("v2")
    DatabasePointer(fleet_pointer.engine).seed("v1")  # a replica starting with an old ACTIVE file
    assert fleet_pointer.read() == "v2"


def test_a_verdict_and_its_activation_commit_or_roll_back_together(fresh_database_url, tmp_path):
    jobs = JobStore(tmp_path, fresh_database_url)
    pointer = DatabasePointer(jobs.engine)
    pointer.seed("v1")
    job = jobs.create("retrain", {}, 1)
    start_on_another_host(jobs, job["id"])

    def promote_then_fail(connection) -> None:
        pointer.swap("v2", "v1", connection)
        raise RuntimeError("crash between the activation and the verdict")

    with pytest.raises(RuntimeError):
        jobs.conclude(job["id"], {"promoted": True}, promote_then_fail)
    assert pointer.read() == "v1" and jobs.get(job["id"])["status"] == RUNNING
    assert jobs.conclude(job["id"], {"promoted": True}, lambda connection: pointer.swap("v2", "v1", connection))
    assert pointer.read() == "v2" and jobs.get(job["id"])["status"] == SUCCEEDED


def test_feedback_dedupe_quota_and_review_on_postgresql(fresh_database_url, tmp_path, mnist):
    store = FeedbackStore(tmp_path, fresh_database_url)
    image = mnist.x_test[0].astype(np.float32) / 255
    record, created = store.add(image, 7, max_bytes=10_000)
    again, created_again = store.add(image, 7, max_bytes=10_000)
    assert created and not created_again and again["id"] == record["id"]
    with pytest.raises(FeedbackQuotaError):
        store.add(mnist.x_test[1].astype(np.float32) / 255, 2, max_bytes=record["bytes"])
    store.review(record["id"], ACCEPTED)
    assert store.counts()[ACCEPTED] == 1 and store.as_dataset().y.tolist() == [7]


def test_replicas_report_and_drop_out(fresh_database_url, tmp_path):
    registry = Replicas(db.engine(db.database_url(tmp_path, fresh_database_url)))
    registry.beat("v1")
    registry.beat("v2")
    (me,) = registry.live()
    assert (me["version"], me["pid"]) == ("v2", registry.me["pid"])
    registry.leave()
    assert registry.live() == []


def test_jobs_of_an_older_install_are_imported(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with sqlite3.connect(data_dir / "jobs.sqlite3") as old:  # the table as single-host installs kept it
        old.execute(
            "CREATE TABLE jobs (id TEXT PRIMARY KEY, kind TEXT NOT NULL, status TEXT NOT NULL, params TEXT NOT NULL, "
            "created TEXT NOT NULL, started TEXT, finished TEXT, pid INTEGER, epoch INTEGER NOT NULL DEFAULT 0, "
            "epochs INTEGER NOT NULL DEFAULT 0, progress REAL NOT NULL DEFAULT 0, history TEXT NOT NULL DEFAULT '{}', "
            "log TEXT NOT NULL DEFAULT '[]', result TEXT, error TEXT)"
        )
        old.execute(
            "INSERT INTO jobs (id, kind, status, params, created, result) VALUES "
            "('old1', 'retrain', 'succeeded', '{}', '2026-01-01T00:00:00+00:00', '{\"promoted\": true}')"
        )
    (job,) = JobStore(data_dir).list()
    assert (job["id"], job["status"], job["result"], job["worker"]) == ("old1", SUCCEEDED, {"promoted": True}, None)
    assert (data_dir / "jobs.sqlite3").exists()  # left where it was
