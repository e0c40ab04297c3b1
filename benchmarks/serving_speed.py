"""Serving speed of the real gunicorn server: throughput against a bare-Flask ceiling, latency, memory.

    MNIST_PATH=../shared/data/mnist_subset.npz .venv/bin/python -m benchmarks.serving_speed

Both servers run with backend/gunicorn.conf.py (same workers and threads). The load is N clients
on keep-alive connections posting the same image for a fixed time, from wrk (a C client that
leaves the cores to the server) or Locust (`--client locust`, which takes a share of them); the
bare app only decodes that image and returns JSON, so its rate is what Flask + gunicorn + decoding
allow. Each round starts both servers afresh, one after the other, and the ratio reported is the
median over rounds, because neighbours on a shared VM move single runs. The workers' CPU time and
context switches per request, and the CPU's split between workers, are printed too: a lopsided
split means the kept-alive connections piled onto one worker (what backend/gunicorn_worker.py
prevents).
"""

from __future__ import annotations

import argparse
import csv
import http.client
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from backend.core.inference import ActiveModel
from backend.core.store import ModelStore
from backend.data.mnist import load_mnist
from backend.data.renderings import canvas_dark, mnist_png
from tests.support.servers import (
    context_switches,
    cpu_seconds,
    gunicorn,
    peak_rss_mb,
    worker_pids,
)

BOUNDARY = uuid.uuid4().hex
LOCUST_USER = Path(__file__).with_name("locust_same_image.py")
# --floor: name -> (gunicorn app, what its ratio bounds)
FLOORS = {
    "floor app": (
        "benchmarks.floor_app:create_app()",
        "stem + model with no framework: the most trimming the framework could reach",
    ),
    "stem only": (
        "benchmarks.floor_app:create_app(run_model=False)",
        "the stem alone, as if the model and framework were free",
    ),
}
WARM_UP_SECONDS = 3
Load = Callable[
    [str, bytes, int, float], tuple[float, int, int]
]  # (url, body, clients, seconds) -> (req/s, ok, failed)


def multipart(image: bytes) -> bytes:
    """Build a multipart/form-data body with the image in field `file`."""
    return (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="d.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + image
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


def post(connection: http.client.HTTPConnection, body: bytes) -> int:
    """POST /predict on a kept-alive connection; return the status."""
    connection.request("POST", "/predict", body, {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    response = connection.getresponse()
    response.read()
    return response.status


def locust_throughput(url: str, body: bytes, clients: int, seconds: float) -> tuple[float, int, int]:
    """Measure with Locust (FastHttpUser, no wait between requests), whose workers share the two cores."""
    folder = Path(tempfile.mkdtemp(prefix="speed-locust-"))
    (folder / "body").write_bytes(body)
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUST_USER),
        "--headless",
        "--only-summary",
        "-H",
        url,
        "-u",
        str(clients),
        "-r",
        str(clients),
        "-t",
        f"{int(seconds)}s",
        "--csv",
        str(folder / "run"),
    ]
    env = {
        **os.environ,
        "SPEED_BODY": str(folder / "body"),
        "SPEED_CONTENT_TYPE": f"multipart/form-data; boundary={BOUNDARY}",
    }
    subprocess.run(command, env=env, capture_output=True)  # exits non-zero when a request failed; the CSV says how many
    with (folder / "run_stats.csv").open() as stats:
        total = next(row for row in csv.DictReader(stats) if row["Name"] == "Aggregated")
    requests, failed = int(total["Request Count"]), int(total["Failure Count"])
    return float(total["Requests/s"]), requests - failed, failed


def wrk_throughput(url: str, body: bytes, clients: int, seconds: float) -> tuple[float, int, int]:
    """Measure with wrk (Debian package `wrk`), whose C client leaves the two cores to the server."""
    script = Path(tempfile.mkdtemp()) / "post.lua"
    escaped = "".join(f"\\{byte:03d}" for byte in body)  # Lua decimal escapes keep the body byte-exact
    script.write_text(
        f'wrk.method = "POST"\nwrk.body = "{escaped}"\n'
        f'wrk.headers["Content-Type"] = "multipart/form-data; boundary={BOUNDARY}"\n'
    )
    output = subprocess.run(
        ["wrk", "-t1", f"-c{clients}", f"-d{int(seconds)}s", "-s", str(script), f"{url}/predict"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    total = int(re.search(r"(\d+) requests in", output).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    failed = (int(bad.group(1)) if bad else 0) + (sum(map(int, errors.groups())) if errors else 0)
    return rate, total - failed, failed


LOADS: dict[str, Load] = {"wrk": wrk_throughput, "locust": locust_throughput}
DEFAULT_CLIENT = "wrk" if shutil.which("wrk") else "locust"


@dataclass
class LoadRun:
    """One app's measured load run: rate, outcomes, each worker's CPU on it and the workers' context switches."""

    rate: float
    ok: int
    failed: int
    worker_cpu: list[float]
    switches: int

    @property
    def cpu_ms_per_request(self) -> float:
        """Return the workers' CPU time per answered request, in ms."""
        return sum(self.worker_cpu) / max(1, self.ok + self.failed) * 1000

    @property
    def switches_per_request(self) -> float:
        """Return the workers' context switches per answered request."""
        return self.switches / max(1, self.ok + self.failed)


def measure(app: str, env: dict[str, str], load: Load, body: bytes, clients: int, seconds: float) -> LoadRun:
    """Start a fresh server for `app`, warm it up, then measure one load run and its workers' CPU."""
    with gunicorn(app, env) as (url, master):
        load(url, body, clients, WARM_UP_SECONDS)
        workers = worker_pids(master.pid)
        before = [cpu_seconds(pid) for pid in workers]
        switches_before = sum(map(context_switches, workers))
        rate, ok, failed = load(url, body, clients, seconds)
        return LoadRun(
            rate,
            ok,
            failed,
            [cpu_seconds(pid) - spent for pid, spent in zip(workers, before)],
            sum(map(context_switches, workers)) - switches_before,
        )


def latency_ms(url: str, body: bytes, requests: int) -> list[float]:
    """Time sequential requests from one client; return milliseconds each."""
    host = urlparse(url)
    connection = http.client.HTTPConnection(host.hostname, host.port, timeout=30)
    for _ in range(20):
        post(connection, body)  # warm up every worker's first request
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        assert post(connection, body) == 200
        times.append((time.perf_counter() - started) * 1000)
    connection.close()
    return times


def reload_check_microseconds(model_dir: str) -> float:
    """Return the cost of the per-request 'is there a newer active version?' check."""
    active = ActiveModel(ModelStore(model_dir))
    active.current()
    return min(timeit.repeat(active.current, number=10_000, repeat=5)) / 10_000 * 1e6


def _split(run: LoadRun) -> str:
    """Show how a run's worker CPU was shared between the workers, e.g. "52/48%"."""
    total = sum(run.worker_cpu) or 1.0
    return "/".join(f"{cpu / total * 100:.0f}" for cpu in run.worker_cpu) + "%"


def main(argv: list[str] | None = None) -> int:
    """Measure and print throughput ratio, latency and per-worker peak memory."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--model-dir", default="models")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="fresh bare + /predict server pairs to measure")
    parser.add_argument("--latency-requests", type=int, default=1000)
    parser.add_argument("--image", choices=["mnist", "canvas"], default="mnist")
    parser.add_argument(
        "--client",
        choices=sorted(LOADS),
        default=DEFAULT_CLIENT,
        help="load generator: wrk (apt-get install wrk; the default when present) or Locust",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also measure benchmarks/floor_app.py in every round: the stem and model alone, and the stem alone",
    )
    args = parser.parse_args(argv)
    load = LOADS[args.client]

    digit = load_mnist().x_test[0]
    rng = np.random.default_rng(0)
    image = mnist_png(digit, rng) if args.image == "mnist" else canvas_dark(digit, rng)
    body = multipart(image)
    env = {"MODEL_DIR": args.model_dir, "DATA_DIR": tempfile.mkdtemp(prefix="bench-data-")}

    apps = ["benchmarks.bare_app:app", "backend.wsgi:app"] + ([app for app, _ in FLOORS.values()] if args.floor else [])
    rounds = [[measure(app, env, load, body, args.clients, args.seconds) for app in apps] for _ in range(args.rounds)]
    with gunicorn("backend.wsgi:app", env) as (url, master):
        times = latency_ms(url, body, args.latency_requests)
        rss = [peak_rss_mb(pid) for pid in worker_pids(master.pid)]

    print(
        f"image: {args.image} ({len(image)} bytes); {args.clients} {args.client} connections x {args.seconds:.0f} s; "
        f"gunicorn config backend/gunicorn.conf.py"
    )
    for number, (ceiling, predict, *floor) in enumerate(rounds, start=1):
        print(
            f"round {number}: bare ceiling {ceiling.rate:7.1f} req/s ({ceiling.ok} ok, {ceiling.failed} failed), "
            f"{ceiling.cpu_ms_per_request:.2f} ms worker CPU and "
            f"{ceiling.switches_per_request:.1f} context switches/request, "
            f"split {_split(ceiling)}; /predict {predict.rate:7.1f} req/s ({predict.ok} ok, {predict.failed} failed), "
            f"{predict.cpu_ms_per_request:.2f} ms, {predict.switches_per_request:.1f} switches, "
            f"split {_split(predict)}; "
            f"ratio {predict.rate / ceiling.rate:.2f}"
        )
        for name, run in zip(FLOORS, floor):
            print(
                f"         {name} {run.rate:7.1f} req/s ({run.ok} ok, {run.failed} failed), "
                f"{run.cpu_ms_per_request:.2f} ms, {run.switches_per_request:.1f} switches; "
                f"ratio {run.rate / ceiling.rate:.2f}"
            )
    ratios = [predict.rate / ceiling.rate for ceiling, predict, *_ in rounds]
    cpu_ratios = [ceiling.cpu_ms_per_request / predict.cpu_ms_per_request for ceiling, predict, *_ in rounds]
    print(f"ratio to ceiling, median of {len(rounds)}     : {statistics.median(ratios):8.2f}   (bar: >= 0.75)")
    for index, (name, (_, bound)) in enumerate(FLOORS.items() if args.floor else []):
        floor_ratio = statistics.median(runs[2 + index].rate / runs[0].rate for runs in rounds)
        print(f"{name + ' ratio, median':33s}: {floor_ratio:8.2f}   ({bound})")
    print(
        f"worker CPU per request, bare / /predict: {statistics.median(cpu_ratios):8.2f}   "
        "(median; the ratio if both kept the cores busy)"
    )
    print(
        f"single-client latency            : median {statistics.median(times):.2f} ms, "
        f"p95 {np.percentile(times, 95):.2f} ms, p99 {np.percentile(times, 99):.2f} ms   (bar: median <= 5 ms)"
    )
    print(f"peak RSS per worker              : {', '.join(f'{r:.0f} MB' for r in rss)}   (bar: <= 150 MB)")
    print(
        f"reload check per request         : {reload_check_microseconds(args.model_dir):.1f} us "
        "(one os.stat of models/ACTIVE)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
