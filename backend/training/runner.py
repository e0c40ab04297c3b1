"""The job process: `python -m backend.training.runner DATA_DIR JOB_ID`, started by `backend.data.jobs.launch`.

It moves its job from queued to running (or exits at once if the job was cancelled first), runs the
retraining pipeline, and records how the job ended. A SIGTERM (a cancel) becomes JobCancelled.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import traceback
from typing import Any

from backend.data.jobs import CANCEL_MESSAGE, CANCELLED, FAILED, JobCancelled, JobStore

log = logging.getLogger(__name__)


def _stop(signum: int, frame: Any) -> None:
    """Turn a cancel's SIGTERM into JobCancelled wherever the runner is."""
    raise JobCancelled()


def run(data_dir: str, job_id: str) -> int:
    """Job process entry point: run the job unless it was cancelled first; execute() records the verdict."""
    store = JobStore(data_dir)
    signal.signal(signal.SIGTERM, _stop)
    try:
        if not store.start(job_id, os.getpid()):
            log.info("job %s is no longer queued; not training", job_id)
            return 1
        from backend.training.pipeline import (
            execute,  # imports TensorFlow: only for a job that really starts
        )

        execute(store.get(job_id), store)
    except JobCancelled:
        # A cancel already marked the job; this line is for a SIGTERM from elsewhere (e.g. a shutdown).
        if store.finish(job_id, CANCELLED, error=CANCEL_MESSAGE):
            store.append_log(job_id, "stopped by SIGTERM; the active model is unchanged")
        return 1
    except Exception as exc:  # any failure ends the job, never the server
        store.append_log(job_id, f"failed: {type(exc).__name__}: {exc}")
        with open(store.log_dir / f"{job_id}.log", "a") as handle:
            handle.write(traceback.format_exc())
        store.finish(job_id, FAILED, error=f"{type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(run(sys.argv[1], sys.argv[2]))
