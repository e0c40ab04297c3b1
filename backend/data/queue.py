"""The training queue of a fleet: jobs on Redis through RQ, run by trainers (`python -m backend.worker`).

RQ carries only the job id; the job's state lives in the database. RQ's own stop command is the
backstop of a cancel: the job process normally stops by itself within a heartbeat of seeing its
job cancelled in the table.
"""

from __future__ import annotations

import time
from typing import Any

from redis import Redis
from rq import Queue, Worker
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus

QUEUE_NAME = "training"
JOB_FUNCTION = "backend.training.runner.run_queued"  # named, never imported: the web tier stays TensorFlow-free
RESULT_TTL_SECONDS = 7 * 86400  # RQ's own record of a job; the database keeps the real one for good
STOP_GRACE_SECONDS = 3.0  # a cancelled job that is still running after this long gets RQ's stop command


def connect(url: str) -> Redis:
    """Open a Redis connection from REDIS_URL."""
    return Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)


def training_queue(url: str) -> Queue:
    """Return the one training queue."""
    return Queue(QUEUE_NAME, connection=connect(url))


def enqueue(url: str, job_id: str) -> None:
    """Put a job on the training queue, under its own id, with no time limit (training from scratch takes minutes)."""
    training_queue(url).enqueue_call(
        JOB_FUNCTION,
        args=(job_id,),
        job_id=job_id,
        timeout=-1,
        result_ttl=RESULT_TTL_SECONDS,
        failure_ttl=RESULT_TTL_SECONDS,
    )


def _status(redis: Redis, job_id: str) -> JobStatus | None:
    """Return RQ's status of a job, or None if RQ no longer knows it."""
    try:
        return Job.fetch(job_id, connection=redis).get_status()
    except NoSuchJobError:
        return None


def stop(url: str, job_id: str, wait_seconds: float) -> None:
    """Make sure a cancelled job stops: drop it from the queue, or wait for it to stop and then force it."""
    redis = connect(url)
    deadline = time.monotonic() + wait_seconds
    status = _status(redis, job_id)
    if status in (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED):
        Job.fetch(job_id, connection=redis).cancel()
        return
    force_at = time.monotonic() + STOP_GRACE_SECONDS
    forced = False
    while _status(redis, job_id) == JobStatus.STARTED and time.monotonic() < deadline:
        if not forced and time.monotonic() >= force_at:
            try:
                send_stop_job_command(redis, job_id)
            except InvalidJobOperation:  # it stopped meanwhile
                return
            forced = True
        time.sleep(0.1)


def trainers(url: str) -> list[dict[str, Any]]:
    """Return every live trainer: host, pid, state, the job it runs and when RQ last heard from it."""
    redis = connect(url)
    rows = []
    for worker in Worker.all(connection=redis, queue=Queue(QUEUE_NAME, connection=redis)):
        rows.append(
            {
                "name": worker.name,
                "host": worker.hostname,
                "pid": worker.pid,
                "state": str(worker.get_state()),
                "job": worker.get_current_job_id(),
                "last_seen": worker.last_heartbeat.isoformat(timespec="seconds") if worker.last_heartbeat else None,
            }
        )
    return rows
