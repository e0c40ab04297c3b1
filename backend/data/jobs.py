"""Training jobs: state in the database (backend.data.db), each job run by a process of its own.

The web worker that accepts a job only inserts a row and hands it on; it never trains, so no worker
blocks and gunicorn's timeout never fires. Single host (no REDIS_URL): it starts
`python -m backend.training.runner <id>` as a detached process. Fleet: it enqueues the job on Redis,
where a trainer (`python -m backend.worker`) takes it. One job is queued or running at a time, across
the whole fleet: a unique index in the database refuses a second.

Every status change is a compare-and-set (`UPDATE ... WHERE status IN (...)`), so the job process,
a cancel and the reaper can race freely: whichever commits first wins and the others change
nothing. A cancel takes effect in the table at once; the job process notices at its next heartbeat
(or by SIGTERM on a single host) and stops early. The job's verdict and the activation of its
candidate are one transaction (`conclude`), so a cancel lands either before it (nothing changes) or
after it (too late: the job already reports that it promoted).

A job process beats every HEARTBEAT_SECONDS. One whose beat stops (killed, host lost), or whose
process is gone on this host, is marked failed the next time anyone looks.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection, RowMapping
from sqlalchemy.exc import IntegrityError

from backend.core.config import DEFAULT_JOB_HEARTBEAT_TIMEOUT_SECONDS, REPO_ROOT, Settings
from backend.data import db
from backend.data.db import jobs as table

log = logging.getLogger(__name__)

STATUSES = ("queued", "running", "succeeded", "rejected", "failed", "cancelled")
QUEUED, RUNNING, SUCCEEDED, REJECTED, FAILED, CANCELLED = STATUSES
UNFINISHED = (QUEUED, RUNNING)
JOB_MODES = ("local", "queue")  # how jobs run: a process on the API host, or trainers fed by a Redis queue
LOCAL_JOBS, QUEUED_JOBS = JOB_MODES
CANCEL_MESSAGE = "Cancelled on request."
CANCEL_WAIT_SECONDS = 5  # how long a cancel waits for the job's process to stop
MAX_EPOCHS = 100
DEFAULT_EPOCHS = {"scratch": 30, "active": 3, "upload": 4}  # per starting point; uploads fine-tune the active model
LOG_TAIL_LINES = 40
# The job processes; named, never imported, so the web tier stays TensorFlow-free.
RUNNER_MODULE = "backend.training.runner"
WORKER_MODULE = "backend.worker"
START_GRACE_SECONDS = 60  # a queued job that no process has started after this long never will
HEARTBEAT_SECONDS = 1.0  # how often a job process beats and looks for a cancel
JSON_FIELDS = ("params", "history", "log", "result")
DIED = (
    "The training process died (server restart, crash, kill or host loss); the active model was not changed. "
    "Start the job again."
)
NEVER_STARTED = {
    LOCAL_JOBS: "The training process never started; the active model was not changed. Start the job again.",
    QUEUED_JOBS: "No trainer took the job within {grace} s: start one with `python -m backend.worker` "
    "(with the same DATABASE_URL and REDIS_URL), then start the job again.",
}


class JobConflictError(RuntimeError):
    """Another job is still queued or running."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"Job {job_id} is still running: wait for it or cancel it (POST /jobs/{job_id}/cancel).")
        self.job_id = job_id


class JobNotFoundError(LookupError):
    """No job has that id."""


class JobAlreadyEndedError(RuntimeError):
    """A cancel came too late: the job had already ended another way."""

    def __init__(self, job: dict[str, Any]) -> None:
        result = job.get("result") or {}
        if job["status"] == SUCCEEDED and result.get("promoted"):
            detail = (
                f"it promoted version {result['candidate']}, which became active. "
                f"To roll back, POST /models/{result['previous']}/activate."
            )
        else:
            detail = "there is nothing to cancel."
        super().__init__(f"Job {job['id']} already ended ({job['status']}): {detail}")
        self.job = job


class JobCancelled(BaseException):
    """Raised inside a job process when it is asked to stop."""


def default_epochs(kind: str, start_from: str) -> int:
    """Return the epochs a job runs when the request does not say."""
    return DEFAULT_EPOCHS["upload" if kind == "upload_and_retrain" else start_from]


def _encode(fields: dict[str, Any]) -> dict[str, Any]:
    """Store dicts and lists of the JSON columns as JSON text."""
    return {k: json.dumps(v) if k in JSON_FIELDS and v is not None else v for k, v in fields.items()}


@contextmanager
def uninterrupted() -> Iterator[None]:
    """Hold back SIGTERM (a cancel's stop signal) until the block is done; it is delivered afterwards."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def now() -> str:
    """Return the current UTC time as ISO 8601."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def process_alive(pid: int | None) -> bool:
    """Tell whether `pid` is a live job process on this host (not a zombie, not a recycled pid)."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        status = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except (FileNotFoundError, ProcessLookupError, IndexError, PermissionError):
        return False
    return status != "Z" and any(module.encode() in cmdline for module in (RUNNER_MODULE, WORKER_MODULE))


def this_process() -> str:
    """Return this process as a job's `worker` names it: host:pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _on_this_host(worker: str | None) -> bool:
    """Tell whether a job's process (host:pid, or None before it started) runs on this host."""
    return worker is None or worker.rsplit(":", 1)[0] == socket.gethostname()


class JobStore:
    """The job table, shared by every web worker, replica and job process."""

    @classmethod
    def from_settings(cls, settings: Settings) -> JobStore:
        """Return the job store this configuration uses (its database, and its queue in a fleet)."""
        return cls(settings.data_dir, settings.database_url, settings.redis_url, settings.job_heartbeat_timeout)

    def __init__(
        self,
        data_dir: str | os.PathLike,
        database_url: str | None = None,
        queue_url: str | None = None,
        heartbeat_timeout: float = DEFAULT_JOB_HEARTBEAT_TIMEOUT_SECONDS,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir = self.data_dir / "jobs"
        self.engine = db.engine(db.database_url(self.data_dir, database_url))
        self.queue_url = queue_url  # REDIS_URL: trainers run the jobs, not local processes
        self.heartbeat_timeout = heartbeat_timeout

    @property
    def mode(self) -> str:
        """Return how jobs run: "queue" (trainers take them from Redis) or "local" (a process on this host)."""
        return QUEUED_JOBS if self.queue_url else LOCAL_JOBS

    @staticmethod
    def _decode(row: RowMapping) -> dict[str, Any]:
        """Turn a row into the job's JSON shape."""
        job = {key: value for key, value in row.items() if key not in ("seq", "pid", "heartbeat")}
        for key in JSON_FIELDS:
            job[key] = json.loads(job[key]) if job[key] else None
        return job

    @staticmethod
    def _move(connection: Connection, job_id: str, status: str, expected: tuple[str, ...], fields: dict) -> bool:
        """Compare-and-set: move a job to `status` only if it is in one of `expected`; return whether it moved."""
        values = _encode(fields)
        if status not in UNFINISHED:
            values["finished"] = now()
        moved = connection.execute(
            update(table).where(table.c.id == job_id, table.c.status.in_(expected)).values(status=status, **values)
        )
        return moved.rowcount == 1

    def _unfinished_id(self) -> str | None:
        """Return the id of the queued or running job, if any."""
        with db.read(self.engine) as connection:
            return connection.execute(
                select(table.c.id).where(table.c.status.in_(UNFINISHED)).order_by(table.c.seq).limit(1)
            ).scalar()

    def create(self, kind: str, params: dict[str, Any], epochs: int) -> dict[str, Any]:
        """Insert a queued job unless one is unfinished (then raise JobConflictError)."""
        self.reap_dead()
        job_id = uuid.uuid4().hex[:12]
        try:
            with db.write(self.engine) as connection:
                running = connection.execute(
                    select(table.c.id).where(table.c.status.in_(UNFINISHED)).order_by(table.c.seq).limit(1)
                ).scalar()
                if running:
                    raise JobConflictError(running)
                connection.execute(
                    insert(table).values(
                        id=job_id, kind=kind, status=QUEUED, params=json.dumps(params), created=now(), epochs=epochs
                    )
                )
        except IntegrityError as exc:  # another replica's insert won between the check and this one
            raise JobConflictError(self._unfinished_id() or "another job") from exc
        return self.get(job_id)

    def dispatch(self, job_id: str, env: dict[str, str] | None = None) -> None:
        """Hand a queued job to whatever runs jobs here: the Redis queue, or a local process."""
        if self.queue_url:
            from backend.data import queue

            queue.enqueue(self.queue_url, job_id)
        else:
            launch(self, job_id, env)

    def get(self, job_id: str) -> dict[str, Any]:
        """Return one job, marking it failed first if its process died."""
        self.reap_dead()
        with db.read(self.engine) as connection:
            row = connection.execute(select(table).where(table.c.id == job_id)).mappings().first()
        if row is None:
            raise JobNotFoundError(f"No job {job_id!r}. GET /jobs lists the jobs.")
        return self._decode(row)

    def list(self, limit: int = 50) -> list[dict[str, Any]]:
        """Return the newest jobs first."""
        self.reap_dead()
        with db.read(self.engine) as connection:
            rows = connection.execute(select(table).order_by(table.c.seq.desc()).limit(limit)).mappings().all()
        return [self._decode(row) for row in rows]

    def unfinished(self) -> list[str]:
        """Return the ids of queued and running jobs."""
        with db.read(self.engine) as connection:
            return list(connection.execute(select(table.c.id).where(table.c.status.in_(UNFINISHED))).scalars())

    def statuses(self) -> dict[str, str]:
        """Return every job's status by id."""
        with db.read(self.engine) as connection:
            return dict(connection.execute(select(table.c.id, table.c.status)).all())

    def update(self, job_id: str, **fields: Any) -> bool:
        """Set progress columns of an unfinished job; return False (changing nothing) once it has ended.

        The status is never set here: only the compare-and-set moves (start, finish, conclude, cancel) change it.
        """
        if "status" in fields:
            raise TypeError("update() does not change the status: use start, finish, conclude or cancel")
        with db.write(self.engine) as connection:
            moved = connection.execute(
                update(table).where(table.c.id == job_id, table.c.status.in_(UNFINISHED)).values(**_encode(fields))
            )
        return moved.rowcount == 1

    def start(self, job_id: str, pid: int) -> bool:
        """Move a queued job to running in process `pid` of this host; False if it is no longer queued."""
        with db.write(self.engine) as connection:
            fields = {"started": now(), "pid": pid, "worker": this_process(), "heartbeat": time.time()}
            return self._move(connection, job_id, RUNNING, (QUEUED,), fields)

    def beat(self, job_id: str) -> bool:
        """Record that a running job's process is alive; False once the job has ended (e.g. it was cancelled)."""
        with db.write(self.engine) as connection:
            beat = connection.execute(
                update(table).where(table.c.id == job_id, table.c.status == RUNNING).values(heartbeat=time.time())
            )
        return beat.rowcount == 1

    def finish(self, job_id: str, status: str, **fields: Any) -> bool:
        """Move an unfinished job to a final status; a job that already ended keeps its status (returns False)."""
        with db.write(self.engine) as connection:
            return self._move(connection, job_id, status, UNFINISHED, fields)

    def conclude(self, job_id: str, result: dict[str, Any], promote: Callable[[Connection], None] | None) -> bool:
        """Record a running job's verdict, activating its candidate (`promote`) in the same transaction.

        SIGTERM is held back meanwhile, so a cancel lands either before (then this returns False and
        nothing is activated) or after (then the job has succeeded). `promote` gets the transaction's
        connection, so an activation kept in the database commits or rolls back with the verdict.
        """
        with uninterrupted(), db.write(self.engine) as connection:
            status = connection.execute(select(table.c.status).where(table.c.id == job_id).with_for_update()).scalar()
            if status != RUNNING:
                return False
            if promote is not None:
                promote(connection)
            fields = {"result": result, "progress": 1.0}
            return self._move(connection, job_id, SUCCEEDED if promote else REJECTED, (RUNNING,), fields)

    def append_log(self, job_id: str, line: str) -> None:
        """Add a line to the job's log tail (and its full log file)."""
        self.log_dir.mkdir(exist_ok=True)
        with open(self.log_dir / f"{job_id}.log", "a") as handle:
            handle.write(f"{now()} {line}\n")
        with db.write(self.engine) as connection:
            logged = connection.execute(select(table.c.log).where(table.c.id == job_id).with_for_update()).scalar()
            tail = (json.loads(logged) if logged else []) + [line]
            connection.execute(update(table).where(table.c.id == job_id).values(log=json.dumps(tail[-LOG_TAIL_LINES:])))

    def pid(self, job_id: str) -> int | None:
        """Return the process id running a job, if any."""
        with db.read(self.engine) as connection:
            return connection.execute(select(table.c.pid).where(table.c.id == job_id)).scalar()

    def _why_dead(self, row: RowMapping) -> str | None:
        """Return why an unfinished job can no longer end by itself, or None while it still can."""
        if row["pid"] is None:  # no process has it yet
            age = (datetime.now(UTC) - datetime.fromisoformat(row["created"])).total_seconds()
            return NEVER_STARTED[self.mode].format(grace=START_GRACE_SECONDS) if age > START_GRACE_SECONDS else None
        if row["heartbeat"] is not None and time.time() - row["heartbeat"] > self.heartbeat_timeout:
            return DIED
        if _on_this_host(row["worker"]) and not process_alive(row["pid"]):
            return DIED
        return None

    def reap_dead(self) -> None:
        """Mark unfinished jobs whose process is gone (or never came) as failed."""
        with db.read(self.engine) as connection:
            rows = connection.execute(select(table).where(table.c.status.in_(UNFINISHED))).mappings().all()
        for row in rows:
            reason = self._why_dead(row)
            if reason is not None:
                self.finish(row["id"], FAILED, error=reason)

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job at once, then stop its process; the active model is left as it was.

        Cancelling a cancelled job changes nothing; a job that ended another way raises JobAlreadyEndedError.
        """
        with db.write(self.engine) as connection:
            row = connection.execute(select(table).where(table.c.id == job_id)).mappings().first()
            if row is None:
                raise JobNotFoundError(f"No job {job_id!r}. GET /jobs lists the jobs.")
            cancelled = self._move(connection, job_id, CANCELLED, UNFINISHED, {"error": CANCEL_MESSAGE})
        if not cancelled:
            job = self.get(job_id)
            if job["status"] != CANCELLED:
                raise JobAlreadyEndedError(job)
            return job
        self.append_log(job_id, "cancelled on request; the active model is unchanged")
        if self.queue_url:
            from backend.data import queue

            queue.stop(self.queue_url, job_id, CANCEL_WAIT_SECONDS)
        elif process_alive(row["pid"]):
            os.kill(row["pid"], signal.SIGTERM)  # the runner turns this into JobCancelled and stops early
            deadline = time.monotonic() + CANCEL_WAIT_SECONDS
            while process_alive(row["pid"]) and time.monotonic() < deadline:
                time.sleep(0.05)
        return self.get(job_id)

    def prune_logs(self, max_age_days: float) -> list[str]:
        """Delete the log files of ended jobs (and of jobs no longer listed) not written for `max_age_days`."""
        if not self.log_dir.is_dir():
            return []
        keep = set(self.unfinished())
        cutoff = time.time() - max_age_days * 86400
        removed = []
        for path in sorted(self.log_dir.iterdir()):
            if path.suffix in (".log", ".out") and path.stem not in keep and path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)
                removed.append(path.name)
        return removed


@contextmanager
def heartbeat(store: JobStore, job_id: str, on_ended: Callable[[], None]) -> Iterator[None]:
    """Beat for a running job every HEARTBEAT_SECONDS; call `on_ended` once, from the beating thread, when it ended.

    The job ends under the process's feet when a cancel from any replica moves it in the table;
    `on_ended` is how the process learns it within a beat.
    """
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            try:
                alive = store.beat(job_id)
            except Exception as exc:  # a database blip: try again at the next beat
                log.warning("job %s heartbeat failed: %s", job_id, exc)
                continue
            if not alive:
                on_ended()
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{job_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def launch(store: JobStore, job_id: str, env: dict[str, str] | None = None) -> int:
    """Start the detached process that runs a job on this host, and return its pid."""
    store.log_dir.mkdir(exist_ok=True)
    log_file = open(store.log_dir / f"{job_id}.out", "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", RUNNER_MODULE, str(store.data_dir), job_id],
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # survives the worker; a server restart does not kill training
        env={**os.environ, **(env or {})},
        cwd=REPO_ROOT,
    )
    log_file.close()
    store.update(job_id, pid=process.pid)  # lets a cancel stop it before it records itself
    threading.Thread(target=process.wait, daemon=True).start()  # reap it, so it never lingers as a zombie
    return process.pid
