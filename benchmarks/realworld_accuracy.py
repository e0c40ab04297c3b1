"""Accuracy of /predict on digits as people send them, per style, and of /predict/batch on official MNIST.

    MNIST_PATH=../shared/data/mnist_subset.npz .venv/bin/python -m benchmarks.realworld_accuracy

Every image goes through the real Flask /predict handler (the app's test client: same code as
gunicorn runs, minus the socket). Styles are rendered from the MNIST test split by backend.data.renderings.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from collections import defaultdict

import numpy as np

from backend.data.mnist import load_mnist
from backend.data.renderings import mnist_png, render_set
from backend.web.app import create_app

BATCH = 250


def style_accuracy(client, mnist, per_style: int, seed: int) -> dict[str, tuple[int, int]]:
    """Send every rendered image to /predict; return {style: (right, total)}."""
    tally: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for style, label, data in render_set(mnist.x_test, mnist.y_test, per_style, seed):
        body = client.post("/predict", data={"file": (io.BytesIO(data), "digit")}).json
        tally[style][0] += body["digit"] == label
        tally[style][1] += 1
    return {style: (right, total) for style, (right, total) in tally.items()}


def official_batch_accuracy(client, mnist) -> float:
    """Send the official test digits as PNGs through /predict/batch; return the accuracy."""
    rng = np.random.default_rng(0)
    right = 0
    for start in range(0, len(mnist.y_test), BATCH):
        images = mnist.x_test[start : start + BATCH]
        files = [(io.BytesIO(mnist_png(image, rng)), f"{start + i}.png") for i, image in enumerate(images)]
        predictions = client.post("/predict/batch", data={"files": files}).json["predictions"]
        right += sum(p["digit"] == int(y) for p, y in zip(predictions, mnist.y_test[start : start + BATCH]))
    return right / len(mnist.y_test)


def main(argv: list[str] | None = None) -> int:
    """Print per-style and official-batch accuracy of the active model."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--model-dir", default="models")
    parser.add_argument("--per-style", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    mnist = load_mnist()
    client = create_app({"MODEL_DIR": args.model_dir, "DATA_DIR": tempfile.mkdtemp()}).test_client()
    version = client.get("/health").json["model_version"]
    started = time.perf_counter()
    results = style_accuracy(client, mnist, args.per_style, args.seed)
    right = sum(r for r, _ in results.values())
    total = sum(t for _, t in results.values())
    print(f"model {version}; {args.per_style} MNIST test digits per style, rendered by backend.data.renderings")
    print(f"{'style':<20} {'accuracy':>9} {'images':>7}")
    for style, (r, t) in results.items():
        print(f"{style:<20} {r / t:>9.4f} {t:>7}")
    print(f"{'overall':<20} {right / total:>9.4f} {total:>7}   ({time.perf_counter() - started:.0f} s)")
    print(
        f"official MNIST test via /predict/batch as PNG: {official_batch_accuracy(client, mnist):.4f} (10,000 images)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
