"""Training jobs: state in SQLite under DATA_DIR, each job run by its own detached process.

The web worker that accepts a job only inserts a row and starts `python -m backend.jobs <id>`;
it never trains, so no worker blocks and gunicorn's timeout never fires. One job runs at a time:
the check and the insert happen in one IMMEDIATE transaction. A job whose process died (server
restart, OOM kill) is marked failed the next time anyone looks.
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
import traceback
import uuid
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STATUSES = ("queued", "running", "succeeded", "rejected", "failed", "cancelled")
UNFINISHED = ("queued", "running")
LOG_TAIL_LINES = 40
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


class JobCancelled(BaseException):
    """Raised inside a job process when it is asked to stop."""


def now() -> str:
    """Return the current UTC time as ISO 8601."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def process_alive(pid: int | None) -> bool:
    """Tell whether `pid` is a live job runner (not a zombie, not a recycled pid)."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        status = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except (FileNotFoundError, ProcessLookupError, IndexError, PermissionError):
        return False
    return status != "Z" and b"backend.jobs" in cmdline


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
                with closing(self._connect()) as db:
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

    def _connect(self) -> sqlite3.Connection:
        """Open a connection in autocommit mode, waiting for locks rather than failing."""
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        return db

    @staticmethod
    def _decode(row: sqlite3.Row) -> dict[str, Any]:
        """Turn a row into the job's JSON shape."""
        job = dict(row)
        for key in JSON_FIELDS:
            job[key] = json.loads(job[key]) if job[key] else None
        job.pop("pid", None)
        return job

    def create(self, kind: str, params: dict[str, Any], epochs: int) -> dict[str, Any]:
        """Insert a queued job unless one is unfinished (then raise JobConflictError)."""
        self.reap_dead()
        job_id = uuid.uuid4().hex[:12]
        with closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                running = db.execute(
                    "SELECT id FROM jobs WHERE status IN ('queued', 'running') ORDER BY created LIMIT 1"
                ).fetchone()
                if running:
                    raise JobConflictError(running["id"])
                db.execute(
                    "INSERT INTO jobs (id, kind, status, params, created, epochs) VALUES (?, ?, 'queued', ?, ?, ?)",
                    (job_id, kind, json.dumps(params), now(), epochs),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return self.get(job_id)

    def get(self, job_id: str) -> dict[str, Any]:
        """Return one job, marking it failed first if its process died."""
        self.reap_dead()
        with closing(self._connect()) as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFoundError(f"No job {job_id!r}. GET /jobs lists the jobs.")
        return self._decode(row)

    def list(self, limit: int = 50) -> list[dict[str, Any]]:
        """Return the newest jobs first."""
        self.reap_dead()
        with closing(self._connect()) as db:
            rows = db.execute("SELECT * FROM jobs ORDER BY created DESC, rowid DESC LIMIT ?", (limit,)).fetchall()
        return [self._decode(row) for row in rows]

    def update(self, job_id: str, **fields: Any) -> None:
        """Set columns of a job; dicts and lists are stored as JSON."""
        values = {k: json.dumps(v) if k in JSON_FIELDS and v is not None else v for k, v in fields.items()}
        assignments = ", ".join(f"{key} = ?" for key in values)
        with closing(self._connect()) as db:
            db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*values.values(), job_id))

    def finish(self, job_id: str, status: str, **fields: Any) -> None:
        """Move a job to a final status, once: a job that already ended keeps its status."""
        values = {k: json.dumps(v) if k in JSON_FIELDS and v is not None else v for k, v in fields.items()}
        assignments = "".join(f", {key} = ?" for key in values)
        with closing(self._connect()) as db:
            db.execute(
                f"UPDATE jobs SET status = ?, finished = ?{assignments} WHERE id = ? AND status IN ('queued', 'running')",
                (status, now(), *values.values(), job_id),
            )

    def append_log(self, job_id: str, line: str) -> None:
        """Add a line to the job's log tail (and its full log file)."""
        self.log_dir.mkdir(exist_ok=True)
        with open(self.log_dir / f"{job_id}.log", "a") as handle:
            handle.write(f"{now()} {line}\n")
        with closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT log FROM jobs WHERE id = ?", (job_id,)).fetchone()
            tail = (json.loads(row["log"]) if row else []) + [line]
            db.execute("UPDATE jobs SET log = ? WHERE id = ?", (json.dumps(tail[-LOG_TAIL_LINES:]), job_id))
            db.execute("COMMIT")

    def pid(self, job_id: str) -> int | None:
        """Return the process id running a job, if any."""
        with closing(self._connect()) as db:
            row = db.execute("SELECT pid FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return row["pid"] if row else None

    def reap_dead(self) -> None:
        """Mark unfinished jobs whose process is gone as failed."""
        with closing(self._connect()) as db:
            rows = db.execute("SELECT id, pid, created FROM jobs WHERE status IN ('queued', 'running')").fetchall()
        for row in rows:
            if row["pid"] is None:
                age = (datetime.now(timezone.utc) - datetime.fromisoformat(row["created"])).total_seconds()
                if age < START_GRACE_SECONDS:
                    continue
            elif process_alive(row["pid"]):
                continue
            self.finish(row["id"], "failed", error="The training process died (server restart, crash or kill); "
                        "the active model was not changed. Start the job again.")

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Stop a queued or running job; the active model is left as it was."""
        job = self.get(job_id)
        if job["status"] in UNFINISHED:
            pid = self.pid(job_id)
            if process_alive(pid):
                os.kill(pid, signal.SIGTERM)  # the runner turns this into JobCancelled
                for _ in range(100):  # give it a moment to record the cancellation itself
                    if self.get(job_id)["status"] not in UNFINISHED:
                        break
                    time.sleep(0.05)
            self.finish(job_id, "cancelled", error="Cancelled on request.")
        return self.get(job_id)


def launch(store: JobStore, job_id: str, env: dict[str, str] | None = None) -> int:
    """Start the detached process that runs a job, and return its pid."""
    store.log_dir.mkdir(exist_ok=True)
    log_file = open(store.log_dir / f"{job_id}.out", "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "backend.jobs", str(store.data_dir), job_id],
        stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
        start_new_session=True,  # survives the worker; a server restart does not kill training
        env={**os.environ, **(env or {})}, cwd=Path(__file__).resolve().parent.parent,
    )
    log_file.close()
    store.update(job_id, pid=process.pid)
    threading.Thread(target=process.wait, daemon=True).start()  # reap it, so it never lingers as a zombie
    return process.pid


def run(data_dir: str, job_id: str) -> int:
    """Job process entry point: run the job's pipeline and record how it ended."""
    from backend.retraining import execute

    store = JobStore(data_dir)
    store.update(job_id, status="running", started=now(), pid=os.getpid())

    def cancel(signum: int, frame: Any) -> None:
        raise JobCancelled()

    signal.signal(signal.SIGTERM, cancel)
    job = store.get(job_id)
    try:
        result = execute(job, store)
    except JobCancelled:
        store.append_log(job_id, "cancelled; the active model is unchanged")
        store.finish(job_id, "cancelled", error="Cancelled on request.")
        return 1
    except Exception as exc:  # any failure ends the job, never the server
        store.append_log(job_id, f"failed: {type(exc).__name__}: {exc}")
        with open(store.log_dir / f"{job_id}.log", "a") as handle:
            handle.write(traceback.format_exc())
        store.finish(job_id, "failed", error=f"{type(exc).__name__}: {exc}")
        return 1
    store.finish(job_id, "succeeded" if result["promoted"] else "rejected", result=result, progress=1.0)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(run(sys.argv[1], sys.argv[2]))
