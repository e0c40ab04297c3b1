"""Hostile load: CPU-expensive images sent all at once while a plain client keeps predicting one digit.

    MNIST_PATH=../shared/data/mnist_subset.npz .venv/bin/python -m benchmarks.attack

Against the real gunicorn server (backend/gunicorn.conf.py, the shipped model), HOSTILE clients
each send, in a loop for the whole run, either a dot field of thousands of tiny marks to
/predict/sequence (a few hundred bytes) or a /predict/batch of canvases just under
MAX_IMAGE_PIXELS each (together just under MAX_BATCH_PIXELS). Meanwhile one plain client posts a
28x28 digit to /predict back to back. Printed: every status the hostile requests got and their
slowest answer, the plain client's failures and latency percentiles, and the workers' peak memory.
Then, on a server with a short REQUEST_DEADLINE_SECONDS, it times how soon a long batch is abandoned.
The bars (issue "Hardening"): hostile requests answered within 10 s and never with a 5xx; the
plain client sees 0 failures and p95 <= 1 s; every worker stays under 400 MB.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import requests
from PIL import Image, ImageDraw

from backend.core.config import Settings
from tests.support import servers

HOSTILE = 8
HOSTILE_TIMEOUT = 10.0  # seconds: a hostile request not answered by then counts as a failure
PLAIN_TIMEOUT = 10.0
CANVAS_SIZE = (3999, 2999)  # just under the 12 MP default of MAX_IMAGE_PIXELS
DOT_SIDE, DOT_PITCH = 400, 5  # 6,400 separate 2x2 dots in a 1-bit PNG of about 200 bytes
PLAIN_DIGIT_SIDE = 28
DEADLINE_SECONDS = 0.25  # the short deadline of the second server
LONG_BATCH = (240, 300)  # images, side: about 21.6 MP, within MAX_BATCH_PIXELS but seconds of stem work


def dot_field(side: int = DOT_SIDE, pitch: int = DOT_PITCH) -> bytes:
    """A tiny 1-bit PNG holding thousands of separate 2x2 marks."""
    page = np.full((side, side), 255, np.uint8)
    for dy in (0, 1):
        for dx in (0, 1):
            page[dy::pitch, dx::pitch] = 0
    buffer = io.BytesIO()
    Image.fromarray(page).convert("1").save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def canvas(size: tuple[int, int] = CANVAS_SIZE) -> bytes:
    """A transparent RGBA canvas near the pixel limit with one stroke drawn on it: tens of KB to send."""
    width, height = size
    image = Image.new("RGBA", size, (0, 0, 0, 0))
    ImageDraw.Draw(image).line(
        [(width * 0.4, height * 0.2), (width * 0.6, height * 0.2), (width * 0.45, height * 0.8)],
        fill=(0, 0, 0, 255),
        width=max(3, width // 40),
    )
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def plain_digit() -> bytes:
    """A 28x28 grey PNG of a drawn 7, as a canvas client sends it."""
    image = Image.new("L", (PLAIN_DIGIT_SIDE, PLAIN_DIGIT_SIDE), 0)
    ImageDraw.Draw(image).line([(7, 6), (21, 6), (11, 23)], fill=255, width=3)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@dataclass
class Tally:
    """What one kind of client saw."""

    statuses: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, status: int | None, seconds: float, problem: str | None = None) -> None:
        """Count one answer (status None: no answer at all)."""
        with self.lock:
            self.statuses[status] += 1
            self.latencies.append(seconds)
            if problem:
                self.failures.append(problem)

    def percentile(self, q: float) -> float:
        """Return the q-th percentile latency in ms."""
        return float(np.percentile(self.latencies, q) * 1000) if self.latencies else float("nan")


def _post(session: requests.Session, url: str, files: list, timeout: float, tally: Tally, ok: set[int]) -> None:
    """Send one request and record how it ended."""
    started = time.perf_counter()
    try:
        response = session.post(url, files=files, timeout=timeout)
    except requests.RequestException as exc:
        tally.record(None, time.perf_counter() - started, f"{url}: {type(exc).__name__}")
        return
    seconds = time.perf_counter() - started
    problem = None
    if response.status_code not in ok:
        problem = f"{url}: HTTP {response.status_code} {response.text[:120]}"
    elif response.headers.get("Content-Type", "").split(";")[0] != "application/json":
        problem = f"{url}: HTTP {response.status_code} without JSON"
    tally.record(response.status_code, seconds, problem)


def run(url: str, seconds: float, hostile: int = HOSTILE) -> tuple[Tally, Tally]:
    """Run hostile clients and one plain client for `seconds`; return (hostile, plain) tallies."""
    dots, big, digit = dot_field(), canvas(), plain_digit()
    stop = threading.Event()
    hostile_tally, plain_tally = Tally(), Tally()
    hostile_ok = {200, 400, 413, 422, 429}  # any answer but a 5xx: refusing is the point

    def attacker(index: int) -> None:
        with requests.Session() as session:
            while not stop.is_set():
                if index % 2:
                    files = [("file", ("dots.png", dots, "image/png"))]
                    _post(session, f"{url}/predict/sequence", files, HOSTILE_TIMEOUT, hostile_tally, hostile_ok)
                else:
                    files = [("files", (f"canvas{i}.png", big, "image/png")) for i in range(2)]
                    _post(session, f"{url}/predict/batch", files, HOSTILE_TIMEOUT, hostile_tally, hostile_ok)

    def plain() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                _post(
                    session,
                    f"{url}/predict",
                    [("file", ("digit.png", digit, "image/png"))],
                    PLAIN_TIMEOUT,
                    plain_tally,
                    {200},
                )

    threads = [threading.Thread(target=attacker, args=(i,)) for i in range(hostile)] + [threading.Thread(target=plain)]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    return hostile_tally, plain_tally


def long_batch(url: str) -> tuple[int, float]:
    """Post LONG_BATCH canvases to /predict/batch; return the status and the seconds to the answer."""
    count, side = LONG_BATCH
    image = Image.new("L", (side, side), 255)
    ImageDraw.Draw(image).line(
        [(side * 0.3, side * 0.2), (side * 0.7, side * 0.2), (side * 0.4, side * 0.8)], fill=0, width=9
    )
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    files = [("files", (f"{i}.png", buffer.getvalue(), "image/png")) for i in range(count)]
    started = time.perf_counter()
    response = requests.post(f"{url}/predict/batch", files=files, timeout=60)
    return response.status_code, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    """Start the server, run the attack, print the figures; exit 1 if a bar is missed."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--hostile", type=int, default=HOSTILE)
    args = parser.parse_args(argv)
    settings = Settings()
    with tempfile.TemporaryDirectory() as data_dir:
        with servers.gunicorn(env={"DATA_DIR": data_dir, "MODEL_DIR": str(settings.model_dir)}) as (url, process):
            workers = servers.worker_pids(process.pid)
            hostile, plain = run(url, args.seconds, args.hostile)
            memory = [servers.peak_rss_mb(pid) for pid in workers]
            full_status, full_seconds = long_batch(url)
        env = {
            "DATA_DIR": data_dir,
            "MODEL_DIR": str(settings.model_dir),
            "REQUEST_DEADLINE_SECONDS": str(DEADLINE_SECONDS),
        }
        with servers.gunicorn(env=env) as (url, _):
            cut_status, cut_seconds = long_batch(url)
    print(f"{args.hostile} hostile clients for {args.seconds:.0f} s against {url} (2 workers)")
    print(
        f"hostile: {sum(hostile.statuses.values())} requests, "
        f"statuses {dict(sorted(hostile.statuses.items(), key=str))}, "
        f"slowest {max(hostile.latencies, default=0):.2f} s, problems {len(hostile.failures)}"
    )
    print(
        f"plain /predict: {len(plain.latencies)} requests, {len(plain.failures)} failures, "
        f"p50 {plain.percentile(50):.1f} ms, p95 {plain.percentile(95):.1f} ms, p99 {plain.percentile(99):.1f} ms, "
        f"max {max(plain.latencies, default=0) * 1000:.1f} ms"
    )
    print(f"worker peak memory: {', '.join(f'{mb:.0f} MB' for mb in memory)}")
    print(
        f"a batch of {LONG_BATCH[0]} images of {LONG_BATCH[1]} px: HTTP {full_status} after {full_seconds:.2f} s; "
        f"with REQUEST_DEADLINE_SECONDS={DEADLINE_SECONDS}: HTTP {cut_status} after {cut_seconds:.2f} s"
    )
    for problem in (hostile.failures + plain.failures)[:10]:
        print("  problem:", problem)
    met = (
        not hostile.failures
        and not plain.failures
        and plain.percentile(95) <= 1000
        and max(hostile.latencies, default=0) <= HOSTILE_TIMEOUT
        and max(memory, default=0) < 400
        and cut_status == 503
    )
    print("bars met" if met else "BARS MISSED")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
