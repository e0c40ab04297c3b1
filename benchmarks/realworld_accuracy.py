"""Accuracy of /predict on digits as people send them, per style and condition, for one or more model versions.

    MNIST_PATH=../shared/data/mnist_subset.npz .venv/bin/python -m benchmarks.realworld_accuracy \
        --versions 20261121-111501-a2ef <new version>

Every image goes through the real Flask /predict handler (the app's test client: same code as
gunicorn runs, minus the socket), once per version, each served from its own throwaway store
that links the version folder. The six styles come from backend.data.renderings, the four
real-paper conditions from backend.data.conditions, all rendered from the MNIST test split.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from backend.core.config import Settings
from backend.core.store import ModelStore
from backend.data.conditions import CONDITIONS, render_conditions
from backend.data.mnist import load_mnist
from backend.data.renderings import STYLES, mnist_png, render_set
from backend.web.app import create_app

BATCH = 250
CONDITION_BAR = 0.95  # each new condition
STYLE_BAR = 0.98  # each old style, and all styles together


def style_accuracy(client, rendered: list[tuple[str, int, bytes]]) -> dict[str, tuple[int, int]]:
    """Send every rendered image to /predict; return {style: (right, total)}."""
    tally: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for style, label, data in rendered:
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


def serving_client(store: ModelStore, version: str, scratch: Path):
    """Return a test client of an app whose only, active version is `version` of `store`."""
    root = scratch / version
    root.mkdir()
    (root / version).symlink_to(store.path(version).resolve(), target_is_directory=True)
    ModelStore(root).activate(version)
    return create_app({"MODEL_DIR": str(root), "DATA_DIR": tempfile.mkdtemp()}).test_client()


def measure(store: ModelStore, version: str, scratch: Path, rendered, mnist, official: bool) -> dict[str, float]:
    """Accuracy per style and condition, overall, and (optionally) on the official test set, for one version."""
    client = serving_client(store, version, scratch)
    assert client.get("/health").json["model_version"] == version
    results = style_accuracy(client, rendered)
    figures = {style: right / total for style, (right, total) in results.items()}
    figures["overall"] = sum(r for r, _ in results.values()) / sum(t for _, t in results.values())
    if official:
        figures["official (batch PNG)"] = official_batch_accuracy(client, mnist)
    return figures


def main(argv: list[str] | None = None) -> int:
    """Print per-style and per-condition accuracy of each version, and whether the last one meets the bars."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--model-dir", default=None, help="model store (default: MODEL_DIR, else models/)")
    parser.add_argument("--versions", nargs="+", default=None, help="versions to compare (default: the active one)")
    parser.add_argument("--per-style", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-official", action="store_true", help="skip the 10,000-image /predict/batch pass")
    args = parser.parse_args(argv)
    store = ModelStore(args.model_dir or Settings().model_dir)
    versions = args.versions or [store.active_version()]
    mnist = load_mnist()
    rendered = render_set(mnist.x_test, mnist.y_test, args.per_style, args.seed)
    rendered += render_conditions(mnist.x_test, mnist.y_test, args.per_style, args.seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        figures = {v: measure(store, v, Path(scratch), rendered, mnist, not args.no_official) for v in versions}
    print(f"{args.per_style} MNIST test digits per style/condition (seed {args.seed}), through /predict")
    print(f"{'style':<22}" + "".join(f" {v:>22}" for v in versions))
    for name in figures[versions[0]]:
        kind = " (new)" if name in CONDITIONS else ""
        print(f"{name + kind:<22}" + "".join(f" {figures[v][name]:>22.4f}" for v in versions))
    latest = figures[versions[-1]]
    checks = {
        f"each new condition >= {CONDITION_BAR}": all(latest[c] >= CONDITION_BAR for c in CONDITIONS),
        f"each old style >= {STYLE_BAR}": all(latest[s] >= STYLE_BAR for s in STYLES),
        f"overall >= {STYLE_BAR}": latest["overall"] >= STYLE_BAR,
    }
    for check, met in checks.items():
        print(f"{versions[-1]}: {check}: {'met' if met else 'NOT met'}")
    print(f"({time.perf_counter() - started:.0f} s)")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
