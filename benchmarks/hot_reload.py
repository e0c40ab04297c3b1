"""Zero-downtime hot reload under load: activate versions back and forth while clients predict.

    MNIST_PATH=../shared/data/mnist_subset.npz .venv/bin/python -m benchmarks.hot_reload

Runs the real gunicorn server on a copy of the model store holding two versions, keeps N client
threads posting /predict, activates the other version every few seconds, and reports failed
requests and, per activation, how long old-version answers kept coming (the bar is 2 s).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from backend.core.store import ModelStore
from tests.support.servers import gunicorn

TOKEN = "reload-token"


@dataclass
class Sample:
    """One /predict request as a client saw it."""

    sent: float
    received: float
    status: int
    version: str | None


def two_version_store(source: Path, target: Path) -> list[str]:
    """Copy the active version of `source` into a new store twice, under two ids; return the ids."""
    store = ModelStore(source)
    active = store.active_version()
    ids = [f"{active}-a", f"{active}-b"]
    for version in ids:
        shutil.copytree(store.path(active), target / version)
        meta_path = target / version / "metadata.json"
        meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "version": version}))
    ModelStore(target).activate(ids[0])
    return ids


def run(
    model_dir: Path,
    image: bytes,
    clients: int = 8,
    activations: int = 4,
    interval: float = 3.0,
    log_path: Path | None = None,
) -> dict:
    """Run the scenario and return failures, per-activation switch lags and request counts."""
    work = Path(tempfile.mkdtemp(prefix="hot-reload-"))
    versions = two_version_store(model_dir, work / "models")
    env = {"MODEL_DIR": str(work / "models"), "DATA_DIR": str(work / "data"), "ADMIN_TOKEN": TOKEN}
    samples: list[Sample] = []
    switches: list[tuple[float, float, str, str]] = []  # (activation requested, answered, old, new)
    stop = threading.Event()
    with gunicorn(env=env, log_path=log_path) as (url, _):

        def client() -> None:
            session = requests.Session()
            while not stop.is_set():
                sent = time.perf_counter()
                try:
                    response = session.post(f"{url}/predict", files={"file": ("d.png", image)}, timeout=10)
                    version = response.json().get("model_version") if response.status_code == 200 else None
                    samples.append(Sample(sent, time.perf_counter(), response.status_code, version))
                except (requests.RequestException, ValueError):
                    samples.append(Sample(sent, time.perf_counter(), 0, None))

        threads = [threading.Thread(target=client) for _ in range(clients)]
        for thread in threads:
            thread.start()
        time.sleep(interval)
        for i in range(activations):
            old, new = versions[i % 2], versions[(i + 1) % 2]
            requested = time.perf_counter()
            response = requests.post(
                f"{url}/models/{new}/activate", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
            )
            assert response.status_code == 200, response.text
            switches.append((requested, time.perf_counter(), old, new))
            time.sleep(interval)
        stop.set()
        for thread in threads:
            thread.join()
    shutil.rmtree(work, ignore_errors=True)

    lags = []
    for k, (_, at, old, _new) in enumerate(switches):
        until = switches[k + 1][0] if k + 1 < len(switches) else float("inf")  # before the next switch was asked for
        # Requests sent after this activation and answered before the next one must carry the new version.
        stale = [s.sent - at for s in samples if at <= s.sent and s.received < until and s.version == old]
        lags.append(max(stale, default=0.0))
    return {
        "requests": len(samples),
        "failed": sum(s.status != 200 for s in samples),
        "lags": lags,
        "seconds": samples[-1].received - samples[0].sent if samples else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    """Print failed requests and switch lags for activations under steady load."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--model-dir", default="models")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--activations", type=int, default=4)
    parser.add_argument("--interval", type=float, default=3.0)
    args = parser.parse_args(argv)
    import numpy as np

    from backend.data.mnist import load_mnist
    from backend.data.renderings import photo

    image = photo(load_mnist().x_test[0], np.random.default_rng(0))
    result = run(Path(args.model_dir), image, args.clients, args.activations, args.interval)
    print(
        f"{args.clients} clients, {result['requests']} /predict requests in {result['seconds']:.1f} s, "
        f"{args.activations} activations every {args.interval:.0f} s"
    )
    print(f"failed requests: {result['failed']}   (bar: 0)")
    print(
        "old-version answers after each activation stopped within: "
        + ", ".join(f"{lag:.3f} s" for lag in result["lags"])
        + "   (bar: <= 2 s)"
    )
    return 0 if result["failed"] == 0 and max(result["lags"]) <= 2.0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
