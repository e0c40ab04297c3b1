"""The trainer of a fleet: `python -m backend.worker`, on any host with the fleet's environment.

It takes jobs from the RQ training queue on REDIS_URL one at a time, each in a forked work horse
that runs `backend.training.runner.run_queued` (TensorFlow is imported there, per job). The database
allows one unfinished job in the whole fleet, so however many trainers run, one trains at a time.
RQ keeps each trainer's own heartbeat, which GET /fleet lists; the job's heartbeat is in the database.
"""

from __future__ import annotations

import argparse
import logging

from rq import Worker

from backend.core.config import Settings
from backend.data import queue
from backend.data.jobs import JobStore


def main(argv: list[str] | None = None) -> int:
    """Run a trainer until SIGINT or SIGTERM (a job in progress is then stopped and marked cancelled)."""
    parser = argparse.ArgumentParser(prog="python -m backend.worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--burst", action="store_true", help="exit once the queue is empty instead of waiting")
    args = parser.parse_args(argv)
    settings = Settings()
    if not settings.redis_url:
        parser.error("REDIS_URL is not set: a trainer takes jobs from a Redis queue (see README, Running a fleet)")
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    JobStore.from_settings(settings).engine.dispose()  # migrate now; leave no connection for the forked jobs
    redis = queue.connect(settings.redis_url)
    worker = Worker([queue.training_queue(settings.redis_url)], connection=redis)
    worker.work(burst=args.burst, logging_level=settings.log_level)
    return 0
