"""Training jobs: state in SQLite under DATA_DIR, each job run by its own detached process.

The web worker that accepts a job only inserts a row and starts `python -m backend.training.runner <id>`;
it never trains, so no worker blocks and gunicorn's timeout never fires. One job runs at a time:
the check and the insert happen in one IMMEDIATE transaction. A job whose process died (server
restart, OOM kill) is marked failed the next time anyone looks.

Every status change is a compare-and-set (`UPDATE ... WHERE status IN (...)`), so the runner,
a cancel and the reaper can race freely: whichever commits first wins and the others change
nothing. A cancel takes effect in the table at once; the signal it then sends only stops the
work early. The runner's verdict and the activation of its candidate are one transaction
(`conclude`), so a cancel lands either before it (nothing changes) or after it (too late: the
job already reports that it promoted).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backend.core.config import REPO_ROOT
from backend.core.sqlite import connect

log = logging.getLogger(__name__)

STATUSES = ("queued", "running", "succeeded", "rejected", "failed", "cancelled")
QUEUED, RUNNING, SUCCEEDED, REJECTED, FAILED, CANCELLED = STATUSES
UNFINISHED = (QUEUED, RUNNING)
CANCEL_MESSAGE = "Cancelled on request."
CANCEL_WAIT_SECONDS = 5  # how long a cancel waits for the job's process to exit
MAX_EPOCHS = 100
DEFAULT_EPOCHS = {"scratch": 30, "active": 3, "upload": 4}  # per starting point; uploads fine-tune the active model
LOG_TAIL_LINES = 40
RUNNER_MODULE = (
    "backend.training.runner"  # the job process; named, never imported, so the web tier stays TensorFlow-free
)
START_GRACE_SECONDS = 60  # a queued job with no process after this long never started
WAL_SWITCH_SECONDS = 30  # how long a starting worker retries while another switches the table to WAL
JSON_FIELDS = ("params", "history", "log", "result")

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    params TEXT NOT NULL,
    created TEXT NOT NULL,
    started TEXT,
    finished TEXT,
    pid INTEGER,
    epoch INTEGER NOT NULL DEFAULT 0,
    epochs INTEGER NOT NULL DEFAULT 0,
    progress REAL NOT NULL DEFAULT 0,
    history TEXT NOT NULL DEFAULT '{}',
    log TEXT NOT NULL DEFAULT '[]',
    result TEXT,
    error TEXT
)
"""


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


def _marks(values: tuple) -> str:
    """Return SQL placeholders for an IN (...) list."""
    return ", ".join("?" * len(values))


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
    """Tell whether `pid` is a live job runner (not a zombie, not a recycled pid)."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        status = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except (FileNotFoundError, ProcessLookupError, IndexError, PermissionError):
        return False
    return status != "Z" and RUNNER_MODULE.encode() in cmdline


class JobStore:
    """The job table, shared by every web worker and job process."""

    def __init__(self, data_dir: str | os.PathLike) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.data_dir / "jobs.sqlite3"
        self.log_dir = self.data_dir / "jobs"
        self._create_table()

    def _create_table(self) -> None:
        """Create the table in WAL mode, retrying while another worker starting at the same moment does it."""
        deadline = time.monotonic() + WAL_SWITCH_SECONDS
        while True:
            try:
                with closing(connect(self.path)) as db:
                    # Two connections switching a new file to WAL at once can deadlock, and SQLite then
                    # fails one at once instead of waiting. The mode persists, so only a first start switches.
                    if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                        db.execute("PRAGMA journal_mode=WAL")
                    db.execute(SCHEMA)
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """Hold the write lock for a check-then-write step: BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error)."""
        with closing(connect(self.path)) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    @staticmethod
    def _decode(row: sqlite3.Row) -> dict[str, Any]:
        """Turn a row into the job's JSON shape."""
        job = dict(row)
        for key in JSON_FIELDS:
            job[key] = json.loads(job[key]) if job[key] else None
        job.pop("pid", None)
        return job

    @staticmethod
    def _move(
        db: sqlite3.Connection, job_id: str, status: str, expected: tuple[str, ...], fields: dict[str, Any]
    ) -> bool:
        """Compare-and-set: move a job to `status` only if it is in one of `expected`; return whether it moved."""
        values = _encode(fields)
        if status not in UNFINISHED:
            values["finished"] = now()
        assignments = "".join(f", {key} = ?" for key in values)
        cursor = db.execute(
            f"UPDATE jobs SET status = ?{assignments} WHERE id = ? AND status IN ({_marks(expected)})",
            (status, *values.values(), job_id, *expected),
        )
        return cursor.rowcount == 1

    def create(self, kind: str, params: dict[str, Any], epochs: int) -> dict[str, Any]:
        """Insert a queued job unless one is unfinished (then raise JobConflictError)."""
        self.reap_dead()
        job_id = uuid.uuid4().hex[:12]
        with self._transaction() as db:
            running = db.execute(
                f"SELECT id FROM jobs WHERE status IN ({_marks(UNFINISHED)}) ORDER BY created LIMIT 1", UNFINISHED
            ).fetchone()
            if running:
                raise JobConflictError(running["id"])
            db.execute(
                "INSERT INTO jobs (id, kind, status, params, created, epochs) VALUES (?, ?, ?, ?, ?, ?)",
                (job_id, kind, QUEUED, json.dumps(params), now(), epochs),
            )
        return self.get(job_id)

    def get(self, job_id: str) -> dict[str, Any]:
        """Return one job, marking it failed first if its process died."""
        self.reap_dead()
        with closing(connect(self.path)) as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFoundError(f"No job {job_id!r}. GET /jobs lists the jobs.")
        return self._decode(row)

    def list(self, limit: int = 50) -> list[dict[str, Any]]:
        """Return the newest jobs first."""
        self.reap_dead()
        with closing(connect(self.path)) as db:
            rows = db.execute("SELECT * FROM jobs ORDER BY created DESC, rowid DESC LIMIT ?", (limit,)).fetchall()
        return [self._decode(row) for row in rows]

    def unfinished(self) -> list[str]:
        """Return the ids of queued and running jobs."""
        with closing(connect(self.path)) as db:
            rows = db.execute(f"SELECT id FROM jobs WHERE status IN ({_marks(UNFINISHED)})", UNFINISHED).fetchall()
        return [row["id"] for row in rows]

    def statuses(self) -> dict[str, str]:
        """Return every job's status by id."""
        with closing(connect(self.path)) as db:
            return {row["id"]: row["status"] for row in db.execute("SELECT id, status FROM jobs")}

    def update(self, job_id: str, **fields: Any) -> bool:
        """Set progress columns of an unfinished job; return False (changing nothing) once it has ended.

        The status is never set here: only the compare-and-set moves (start, finish, conclude, cancel) change it.
        """
        if "status" in fields:
            raise TypeError("update() does not change the status: use start, finish, conclude or cancel")
        values = _encode(fields)
        assignments = ", ".join(f"{key} = ?" for key in values)
        with closing(connect(self.path)) as db:
            cursor = db.execute(
                f"UPDATE jobs SET {assignments} WHERE id = ? AND status IN ({_marks(UNFINISHED)})",
                (*values.values(), job_id, *UNFINISHED),
            )
        return cursor.rowcount == 1

    def start(self, job_id: str, pid: int) -> bool:
        """Move a queued job to running in process `pid`; False if it is no longer queued (e.g. cancelled)."""
        with closing(connect(self.path)) as db:
            return self._move(db, job_id, RUNNING, (QUEUED,), {"started": now(), "pid": pid})

    def finish(self, job_id: str, status: str, **fields: Any) -> bool:
        """Move an unfinished job to a final status; a job that already ended keeps its status (returns False)."""
        with closing(connect(self.path)) as db:
            return self._move(db, job_id, status, UNFINISHED, fields)

    def conclude(self, job_id: str, result: dict[str, Any], promote: Callable[[], None] | None) -> bool:
        """Record a running job's verdict, activating its candidate (`promote`) in the same step.

        One write transaction holds both, and SIGTERM is held back meanwhile, so a cancel lands either
        before (then this returns False and nothing is activated) or after (then the job has succeeded).
        """
        with uninterrupted(), self._transaction() as db:
            row = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row["status"] != RUNNING:
                return False
            if promote is not None:
                promote()
            return self._move(
                db, job_id, SUCCEEDED if promote else REJECTED, (RUNNING,), {"result": result, "progress": 1.0}
            )

    def append_log(self, job_id: str, line: str) -> None:
        """Add a line to the job's log tail (and its full log file)."""
        self.log_dir.mkdir(exist_ok=True)
        with open(self.log_dir / f"{job_id}.log", "a") as handle:
            handle.write(f"{now()} {line}\n")
        with self._transaction() as db:
            row = db.execute("SELECT log FROM jobs WHERE id = ?", (job_id,)).fetchone()
            tail = (json.loads(row["log"]) if row else []) + [line]
            db.execute("UPDATE jobs SET log = ? WHERE id = ?", (json.dumps(tail[-LOG_TAIL_LINES:]), job_id))

    def pid(self, job_id: str) -> int | None:
        """Return the process id running a job, if any."""
        with closing(connect(self.path)) as db:
            row = db.execute("SELECT pid FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return row["pid"] if row else None

    def reap_dead(self) -> None:
        """Mark unfinished jobs whose process is gone as failed."""
        with closing(connect(self.path)) as db:
            rows = db.execute(
                f"SELECT id, pid, created FROM jobs WHERE status IN ({_marks(UNFINISHED)})", UNFINISHED
            ).fetchall()
        for row in rows:
            if row["pid"] is None:
                age = (datetime.now(UTC) - datetime.fromisoformat(row["created"])).total_seconds()
                if age < START_GRACE_SECONDS:
                    continue
            elif process_alive(row["pid"]):
                continue
            self.finish(
                row["id"],
                FAILED,
                error="The training process died (server restart, crash or kill); "
                "the active model was not changed. Start the job again.",
            )

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job at once, then stop its process; the active model is left as it was.

        Cancelling a cancelled job changes nothing; a job that ended another way raises JobAlreadyEndedError.
        """
        with self._transaction() as db:
            row = db.execute("SELECT status, pid FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise JobNotFoundError(f"No job {job_id!r}. GET /jobs lists the jobs.")
            cancelled = self._move(db, job_id, CANCELLED, UNFINISHED, {"error": CANCEL_MESSAGE})
        if not cancelled:
            job = self.get(job_id)
            if job["status"] != CANCELLED:
                raise JobAlreadyEndedError(job)
            return job
        self.append_log(job_id, "cancelled on request; the active model is unchanged")
        if process_alive(row["pid"]):
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


def launch(store: JobStore, job_id: str, env: dict[str, str] | None = None) -> int:
    """Start the detached process that runs a job, and return its pid."""
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
