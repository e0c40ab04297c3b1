"""The job process. On a single host `python -m backend.training.runner DATA_DIR JOB_ID`, started by
`backend.data.jobs.launch`; in a fleet `run_queued(JOB_ID)`, called by a trainer (`python -m backend.worker`).

It moves its job from queued to running (or returns at once if the job was cancelled first), beats
while it trains, runs the retraining pipeline, and records how the job ended. A cancel reaches it as
SIGTERM: sent by the replica that cancels on a single host, or raised by the heartbeat thread when
it sees the job cancelled in the table. The signal becomes JobCancelled in the main thread, between
two training batches.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import traceback
from typing import Any

from backend.core.config import Settings
from backend.data.jobs import CANCEL_MESSAGE, CANCELLED, FAILED, JobCancelled, JobStore, heartbeat

log = logging.getLogger(__name__)


def _stop(signum: int, frame: Any) -> None:
    """Turn a cancel's SIGTERM into JobCancelled wherever the runner is."""
    raise JobCancelled()


def run(store: JobStore, job_id: str, settings: Settings | None = None) -> int:
    """Run one job in this process unless it was cancelled first; execute() records the verdict."""
    signal.signal(signal.SIGTERM, _stop)
    try:
        if not store.start(job_id, os.getpid()):
            log.info("job %s is no longer queued; not training", job_id)
            return 1
        from backend.training.pipeline import execute  # imports TensorFlow: only for a job that really starts

        with heartbeat(store, job_id, on_ended=lambda: os.kill(os.getpid(), signal.SIGTERM)):
            execute(store.get(job_id), store, settings)
    except JobCancelled:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second stop signal (cancel and heartbeat both send one)
        # A cancel already marked the job; this line is for a SIGTERM from elsewhere (e.g. a shutdown).
        if store.finish(job_id, CANCELLED, error=CANCEL_MESSAGE):
            store.append_log(job_id, "stopped by SIGTERM; the active model is unchanged")
        return 1
    except Exception as exc:  # any failure ends the job, never the server
        store.append_log(job_id, f"failed: {type(exc).__name__}: {exc}")
        store.log_dir.mkdir(exist_ok=True)
        with open(store.log_dir / f"{job_id}.log", "a") as handle:
            handle.write(traceback.format_exc())
        store.finish(job_id, FAILED, error=f"{type(exc).__name__}: {exc}")
        return 1
    return 0


def run_queued(job_id: str) -> int:
    """The function a trainer runs for a job taken from the queue, configured by its environment."""
    settings = Settings()
    return run(JobStore.from_settings(settings), job_id, settings)


def main(argv: list[str] | None = None) -> int:
    """Run the job named on the command line (what `backend.data.jobs.launch` starts)."""
    parser = argparse.ArgumentParser(prog="python -m backend.training.runner", description="Run one training job.")
    parser.add_argument("data_dir", help="the DATA_DIR holding the job table")
    parser.add_argument("job_id")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    return run(JobStore(args.data_dir, settings.database_url, None, settings.job_heartbeat_timeout), args.job_id)


if __name__ == "__main__":
    sys.exit(main())
