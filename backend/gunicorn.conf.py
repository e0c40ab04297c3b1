"""Gunicorn settings for the Digit Lab API: `gunicorn -c backend/gunicorn.conf.py backend.wsgi:app`.

One process per core: a prediction is CPU-bound, so more processes only add memory. A few threads
per worker, so a slow upload or an idle keep-alive connection does not hold a core, and a single
image is answered while a long batch runs on the same worker (gevent cannot interrupt that batch).
The worker class (backend/web/gunicorn_worker.py) spreads kept-alive clients over the workers and
lets them take turns when there are more clients than threads. Training runs in its own process,
and each request's budget is enforced in the code (backend/core/budget.py), so the timeout only
guards against a stuck request. Why, with the figures: docs/serving.md, docs/serving-saturation.md.
Override anything with GUNICORN_CMD_ARGS or the command line, e.g. --bind 0.0.0.0:8000.
"""

import ctypes
import multiprocessing
import os
import shutil
import tempfile
from pathlib import Path

bind = os.environ.get("BIND", "127.0.0.1:5000")
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count()))
worker_class = "backend.web.gunicorn_worker.IdleThreadWorker"
threads = int(os.environ.get("GUNICORN_THREADS", 4))
timeout = 30
graceful_timeout = 10
keepalive = 5
max_requests = 0  # workers keep their loaded model; no periodic recycling needed
accesslog = os.environ.get("ACCESS_LOG") or None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()

# Prometheus counters from every worker are summed through files in this folder. A folder made here
# is removed at exit; one given in PROMETHEUS_MULTIPROC_DIR belongs to whoever gave it. The marker
# is an environment variable because a reload (SIGHUP) runs this file again.
_OWN_METRICS_DIR = "DIGITLAB_OWN_METRICS_DIR"
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.environ[_OWN_METRICS_DIR] = tempfile.mkdtemp(prefix="digitlab-metrics-")
_metrics_dir = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])


def on_starting(server) -> None:
    """Start every run with empty metric files."""
    _metrics_dir.mkdir(parents=True, exist_ok=True)
    for stale in _metrics_dir.glob("*.db"):
        stale.unlink()


# glibc raises its mmap threshold to the largest block freed so far, so after one large image each
# thread's arena would keep tens of MB for good. A fixed threshold sends Pillow's big image blocks
# to mmap, returned at once, while the stem's arrays (under 8 MB) stay on the faster heap.
M_MMAP_THRESHOLD = -3  # mallopt's parameter number in glibc's malloc.h
MMAP_THRESHOLD_BYTES = 8 << 20


def post_fork(server, worker) -> None:
    """Fix glibc's mmap threshold in each worker, so memory freed after a large image goes back to the OS."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    except OSError:  # not glibc: its allocator has its own policy
        pass


def post_worker_init(worker) -> None:
    """Report the worker in GET /fleet, and keep it on the active version while it has no requests."""
    from backend.web.app import follow_fleet

    follow_fleet(worker.wsgi)


def worker_exit(server, worker) -> None:
    """Leave the fleet list at a clean exit (a killed worker drops out once it is no longer heard from)."""
    from backend.web.app import leave_fleet

    leave_fleet(worker.wsgi)


def child_exit(server, worker) -> None:
    """Drop a dead worker's live gauges from the metrics."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server) -> None:
    """Remove the metrics folder if this file made it and no other master (a USR2 upgrade) shares it."""
    if os.environ.get(_OWN_METRICS_DIR) == str(_metrics_dir) and server.reexec_pid == server.master_pid == 0:
        shutil.rmtree(_metrics_dir, ignore_errors=True)
