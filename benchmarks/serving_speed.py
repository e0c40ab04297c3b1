"""Serving speed of the real gunicorn server: throughput against a bare-Flask ceiling, latency, memory.

    MNIST_PATH=../shared/data/mnist_subset.npz .venv/bin/python -m benchmarks.serving_speed

Both servers run with backend/gunicorn.conf.py (same workers and threads). The load is N client
threads on keep-alive connections posting the same image for a fixed time; the bare app only
decodes that image and returns JSON, so its rate is what Flask + gunicorn + decoding allow.
Each round starts both servers afresh, one after the other, because which worker the kept-alive
connections land on varies between server starts (and moves the rate of either app by up to 3x);
the ratio reported is the median over rounds.
"""

from __future__ import annotations

import argparse
import http.client
import re
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
import timeit
import uuid
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from backend.data import load_mnist
from backend.inference import ActiveModel
from backend.store import ModelStore
from backend.styles import canvas_dark, mnist_png
from benchmarks.servers import gunicorn, peak_rss_mb, worker_pids

BOUNDARY = uuid.uuid4().hex


def multipart(image: bytes) -> bytes:
    """Build a multipart/form-data body with the image in field `file`."""
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"d.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + image + f"\r\n--{BOUNDARY}--\r\n".encode()


def post(connection: http.client.HTTPConnection, body: bytes) -> int:
    """POST /predict on a kept-alive connection; return the status."""
    connection.request("POST", "/predict", body, {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    response = connection.getresponse()
    response.read()
    return response.status


def throughput(url: str, body: bytes, clients: int, seconds: float) -> tuple[float, int, int]:
    """Run `clients` threads posting for `seconds`; return (requests/s, ok, failed)."""
    host = urlparse(url)
    counts = [[0, 0] for _ in range(clients)]
    stop_at = time.perf_counter() + seconds

    def client(slot: list[int]) -> None:
        connection = http.client.HTTPConnection(host.hostname, host.port, timeout=30)
        while time.perf_counter() < stop_at:
            try:
                slot[0 if post(connection, body) == 200 else 1] += 1
            except (OSError, http.client.HTTPException):
                slot[1] += 1
                connection.close()
                connection = http.client.HTTPConnection(host.hostname, host.port, timeout=30)
        connection.close()

    threads = [threading.Thread(target=client, args=(slot,)) for slot in counts]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    ok, failed = sum(c[0] for c in counts), sum(c[1] for c in counts)
    return ok / elapsed, ok, failed


def wrk_throughput(url: str, body: bytes, clients: int, seconds: float) -> tuple[float, int, int]:
    """Measure with wrk (Debian package `wrk`), whose C client leaves the two cores to the server."""
    script = Path(tempfile.mkdtemp()) / "post.lua"
    escaped = "".join(f"\\{byte:03d}" for byte in body)  # Lua decimal escapes keep the body byte-exact
    script.write_text(f'wrk.method = "POST"\nwrk.body = "{escaped}"\n'
                      f'wrk.headers["Content-Type"] = "multipart/form-data; boundary={BOUNDARY}"\n')
    target = f"{url}/predict"
    subprocess.run(["wrk", "-t1", f"-c{clients}", "-d3s", "-s", str(script), target], capture_output=True, check=True)
    output = subprocess.run(["wrk", "-t1", f"-c{clients}", f"-d{int(seconds)}s", "-s", str(script), target],
                            capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    total = int(re.search(r"(\d+) requests in", output).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    failed = (int(bad.group(1)) if bad else 0) + (sum(map(int, errors.groups())) if errors else 0)
    return rate, total - failed, failed


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


def main(argv: list[str] | None = None) -> int:
    """Measure and print throughput ratio, latency and per-worker peak memory."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--model-dir", default="models")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="fresh bare + /predict server pairs to measure")
    parser.add_argument("--latency-requests", type=int, default=1000)
    parser.add_argument("--image", choices=["mnist", "canvas"], default="mnist")
    parser.add_argument("--client", choices=["wrk", "python"], default="wrk" if shutil.which("wrk") else "python",
                        help="load generator: wrk (apt-get install wrk; default when present) or Python threads")
    args = parser.parse_args(argv)
    load = wrk_throughput if args.client == "wrk" else throughput

    digit = load_mnist().x_test[0]
    rng = np.random.default_rng(0)
    image = mnist_png(digit, rng) if args.image == "mnist" else canvas_dark(digit, rng)
    body = multipart(image)
    env = {"MODEL_DIR": args.model_dir, "DATA_DIR": tempfile.mkdtemp(prefix="bench-data-")}

    rounds = []
    for _ in range(args.rounds):
        with gunicorn("benchmarks.bare_app:app", env) as (url, _):
            ceiling = load(url, body, args.clients, args.seconds)
        with gunicorn("backend.wsgi:app", env) as (url, _):
            rounds.append((ceiling, load(url, body, args.clients, args.seconds)))
    with gunicorn("backend.wsgi:app", env) as (url, master):
        times = latency_ms(url, body, args.latency_requests)
        rss = [peak_rss_mb(pid) for pid in worker_pids(master.pid)]

    print(f"image: {args.image} ({len(image)} bytes); {args.clients} {args.client} connections x {args.seconds:.0f} s; "
          f"gunicorn config backend/gunicorn.conf.py")
    for number, ((ceiling, ceiling_ok, ceiling_failed), (rate, ok, failed)) in enumerate(rounds, start=1):
        print(f"round {number}: bare Flask ceiling (decode only) {ceiling:7.1f} req/s ({ceiling_ok} ok, {ceiling_failed} failed); "
              f"/predict {rate:7.1f} req/s ({ok} ok, {failed} failed); ratio {rate / ceiling:.2f}")
    ratios = [rate / ceiling for (ceiling, _, _), (rate, _, _) in rounds]
    print(f"ratio to ceiling, median of {len(rounds)}     : {statistics.median(ratios):8.2f}   (bar: >= 0.75)")
    print(f"single-client latency            : median {statistics.median(times):.2f} ms, "
          f"p95 {np.percentile(times, 95):.2f} ms, p99 {np.percentile(times, 99):.2f} ms   (bar: median <= 5 ms)")
    print(f"peak RSS per worker              : {', '.join(f'{r:.0f} MB' for r in rss)}   (bar: <= 150 MB)")
    print(f"reload check per request         : {reload_check_microseconds(args.model_dir):.1f} us (one os.stat of models/ACTIVE)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
