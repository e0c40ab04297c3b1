"""Gunicorn settings for the Digit Lab API: `gunicorn -c backend/gunicorn.conf.py backend.wsgi:app`.

Workers: one process per core (2 here). A prediction is ~1-2 ms of CPU in the stem and the LiteRT
interpreter, so more processes than cores only add memory and context switches. Each worker runs
a few threads (gthread) so a slow upload or an idle keep-alive connection does not hold a core,
and a single image is answered while a long batch or ZIP upload runs on the same worker. gevent
serves plain /predict ~7% faster but makes that single image wait ~10x longer behind a batch
(benchmarks/worker_class.py; README, "Workers"). The worker class is gthread that accepts only
with a thread free (backend/gunicorn_worker.py), so kept-alive clients spread over both workers.
Training never runs here: it is a separate process (issue 4), so the timeout only guards against
a stuck request.
Override anything with GUNICORN_CMD_ARGS or the command line, e.g. --bind 0.0.0.0:8000.
"""

import multiprocessing
import os
import tempfile
from pathlib import Path

bind = os.environ.get("BIND", "127.0.0.1:5000")
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count()))
worker_class = "backend.gunicorn_worker.IdleThreadWorker"
threads = int(os.environ.get("GUNICORN_THREADS", 4))
timeout = 30
graceful_timeout = 10
keepalive = 5
max_requests = 0  # workers keep their loaded model; no periodic recycling needed
accesslog = os.environ.get("ACCESS_LOG") or None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()

# Prometheus counters from every worker are summed through files in this folder.
_metrics_dir = Path(os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="digitlab-metrics-")))


def on_starting(server) -> None:
    """Start every run with empty metric files."""
    _metrics_dir.mkdir(parents=True, exist_ok=True)
    for stale in _metrics_dir.glob("*.db"):
        stale.unlink()


def child_exit(server, worker) -> None:
    """Drop a dead worker's live gauges from the metrics."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
