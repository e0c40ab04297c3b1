"""Why gthread: the shipped worker class against alternatives, on /predict cost and on isolation.

    MNIST_PATH=../shared/data/mnist_subset.npz .venv/bin/python -m benchmarks.worker_class

For each worker class, in interleaved rounds, a fresh 2-worker server takes the same wrk (or
Locust) load as benchmarks/serving_speed.py, and the workers' CPU time and context switches per
/predict request are read from /proc. Then a 1-worker server of each class is timed from one
client posting single images, alone and while a second client keeps posting 100-image
/predict/batch requests to the same worker: a worker that cannot interleave requests makes the
small one wait for the whole batch.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading

import numpy as np
import requests

from backend.data.mnist import load_mnist
from backend.data.renderings import mnist_png
from benchmarks.serving_speed import (
    DEFAULT_CLIENT,
    LOADS,
    LoadRun,
    latency_ms,
    measure,
    multipart,
)
from tests.support.servers import gunicorn

BATCH_SIZE = 100
WORKER_CLASSES = {
    "gthread, 4 threads (shipped)": {},
    "gthread, 1 thread": {"GUNICORN_THREADS": "1"},
    "gevent": {"GUNICORN_CMD_ARGS": "--worker-class gevent --worker-connections 100"},
}


def latency_beside_batches(
    env: dict[str, str], body: bytes, batch: list[bytes], requests_timed: int
) -> tuple[list[float], list[float]]:
    """Time single-image requests to a 1-worker server, alone and while another client posts batches."""
    with gunicorn("backend.wsgi:app", env, workers=1) as (url, _):
        alone = latency_ms(url, body, requests_timed)
        stop = threading.Event()

        def post_batches() -> None:
            """Keep the worker busy with /predict/batch until told to stop."""
            with requests.Session() as session:
                while not stop.is_set():
                    session.post(
                        f"{url}/predict/batch", files=[("files", image) for image in batch], timeout=60
                    ).raise_for_status()

        background = threading.Thread(target=post_batches)
        background.start()
        try:
            beside = latency_ms(url, body, requests_timed)
        finally:
            stop.set()
            background.join()
    return alone, beside


def main(argv: list[str] | None = None) -> int:
    """Print CPU and context switches per /predict request, and latency beside batches, per worker class."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--model-dir", default="models")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-requests", type=int, default=300)
    parser.add_argument("--client", choices=sorted(LOADS), default=DEFAULT_CLIENT)
    args = parser.parse_args(argv)
    load = LOADS[args.client]

    rng = np.random.default_rng(0)
    digits = load_mnist().x_test[:BATCH_SIZE]
    batch = [mnist_png(digit, rng) for digit in digits]
    body = multipart(batch[0])
    base = {"MODEL_DIR": args.model_dir, "DATA_DIR": tempfile.mkdtemp(prefix="bench-data-")}

    runs: dict[str, list[LoadRun]] = {name: [] for name in WORKER_CLASSES}
    for _ in range(args.rounds):
        for name, env in WORKER_CLASSES.items():
            runs[name].append(measure("backend.wsgi:app", {**base, **env}, load, body, args.clients, args.seconds))

    print(
        f"/predict under load: {args.clients} {args.client} connections x {args.seconds:.0f} s, 2 workers, "
        f"median of {args.rounds} interleaved rounds"
    )
    print(f"{'worker class':30s} {'req/s':>7s} {'CPU ms/request':>15s} {'switches/request':>17s}")
    for name, measured in runs.items():
        print(
            f"{name:30s} {statistics.median(run.rate for run in measured):7.0f} "
            f"{statistics.median(run.cpu_ms_per_request for run in measured):15.2f} "
            f"{statistics.median(run.switches_per_request for run in measured):17.1f}"
        )

    print(
        "\nsingle-image /predict latency on a 1-worker server, alone / "
        f"while another client posts {BATCH_SIZE}-image batches"
    )
    for name, env in WORKER_CLASSES.items():
        alone, beside = latency_beside_batches({**base, **env}, body, batch, args.latency_requests)
        print(
            f"{name:30s} median {statistics.median(alone):5.1f} / {statistics.median(beside):5.1f} ms, "
            f"p99 {np.percentile(alone, 99):5.1f} / {np.percentile(beside, 99):5.1f} ms"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
