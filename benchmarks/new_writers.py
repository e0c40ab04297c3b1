"""Continual learning on a writer population the model has never seen, through the real server.

    MNIST_PATH=../shared/data/mnist_subset.npz .venv/bin/python -m benchmarks.new_writers

scikit-learn's load_digits (1,797 digits by 43 other writers, 8x8) is upscaled and written dark
on light paper. 1,200 go into a ZIP for /upload_and_retrain; the other 597 are never uploaded
and measure how well the promoted model reads that population. The shipped models/ store is
copied, so the repository's own store is never changed.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from backend.core.config import Settings
from backend.core.store import ModelStore
from tests.support.servers import gunicorn

UPLOADED = 1200
SIDE = 96
TOKEN = "benchmark-token"


def render_load_digits(seed: int = 0) -> tuple[list[bytes], np.ndarray]:
    """Return load_digits as dark-on-light PNGs on slightly varied paper, and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    images = []
    for image in digits.images:
        ink = (
            np.asarray(
                Image.fromarray((image * 255 / 16).astype(np.uint8)).resize((SIDE, SIDE), Image.Resampling.BICUBIC),
                np.float32,
            )
            / 255
        )
        paper = rng.uniform(215, 250)
        gray = paper - ink * rng.uniform(150, 200) + rng.normal(0, 3, ink.shape)
        page = np.full((SIDE + 32, SIDE + 32), paper, np.float32)
        page[16:-16, 16:-16] = gray
        buffer = io.BytesIO()
        Image.fromarray(np.clip(page, 0, 255).astype(np.uint8)).save(buffer, "PNG")
        images.append(buffer.getvalue())
    return images, digits.target


def build_zip(images: list[bytes], labels: np.ndarray) -> bytes:
    """Pack images into a ZIP of folders 0-9."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i, (data, label) in enumerate(zip(images, labels)):
            archive.writestr(f"new_writers/{label}/{i:04d}.png", data)
    return buffer.getvalue()


def batch_accuracy(url: str, images: list[bytes], labels: np.ndarray) -> tuple[float, set[str]]:
    """Predict images through /predict/batch; return accuracy and the model versions that answered."""
    right, versions = 0, set()
    for start in range(0, len(images), 100):
        files = [("files", (f"{i}.png", data)) for i, data in enumerate(images[start : start + 100])]
        predictions = requests.post(f"{url}/predict/batch", files=files, timeout=60).json()["predictions"]
        right += sum(p["digit"] == int(y) for p, y in zip(predictions, labels[start : start + 100]))
        versions |= {p["model_version"] for p in predictions}
    return right / len(images), versions


def main(argv: list[str] | None = None) -> int:
    """Upload new writers, wait for the job, and print the before/after figures and the job time."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--model-dir", default=None, help="model store (default: MODEL_DIR, else models/)")
    parser.add_argument("--version", default=None, help="the version to start from (default: the active one)")
    parser.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs (default: the server's)")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="new-writers-"))
    shutil.copytree(args.model_dir or Settings().model_dir, work / "models")
    if args.version:
        ModelStore(work / "models").activate(args.version)
    images, labels = render_load_digits()
    order = np.random.default_rng(1).permutation(len(labels))
    uploaded, unseen = order[:UPLOADED], order[UPLOADED:]
    env = {
        "MODEL_DIR": str(work / "models"),
        "DATA_DIR": str(work / "data"),
        "ADMIN_TOKEN": TOKEN,
        "MNIST_PATH": os.environ.get("MNIST_PATH", ""),
    }
    with gunicorn(env=env, log_path=work / "server.log") as (url, _):
        unseen_images, unseen_labels = [images[i] for i in unseen], labels[unseen]
        before, _ = batch_accuracy(url, unseen_images, unseen_labels)
        form = {"epochs": str(args.epochs)} if args.epochs else {}
        started = time.perf_counter()
        response = requests.post(
            f"{url}/upload_and_retrain",
            headers={"Authorization": f"Bearer {TOKEN}"},
            files={"file": ("new_writers.zip", build_zip([images[i] for i in uploaded], labels[uploaded]))},
            data=form,
            timeout=120,
        )
        response.raise_for_status()
        accepted = response.json()
        while (job := requests.get(f"{url}/jobs/{accepted['job_id']}", timeout=10).json())["status"] in (
            "queued",
            "running",
        ):
            time.sleep(1)
        job_seconds = time.perf_counter() - started
        time.sleep(0.5)
        after, versions = batch_accuracy(url, unseen_images, unseen_labels)
    result = job["result"] or {}
    mnist = (result.get("comparison") or {}).get("mnist_test") or {}
    holdout = (result.get("comparison") or {}).get("upload_holdout") or {}
    dataset = accepted["dataset"]
    nan = float("nan")
    print(
        f"uploaded {dataset['images']} images ({dataset['holdout_images']} kept aside by the gate); "
        f"{len(unseen)} never-uploaded images measure the result"
    )
    print(
        f"job {job['id']}: {job['status']} in {job_seconds:.0f} s (training {result.get('training_seconds')} s); "
        f"{result.get('reason', job.get('error'))}"
    )
    print(f"new writers, never uploaded  : {before:.4f} -> {after:.4f}   (bar: >= 0.95), served by {sorted(versions)}")
    print(f"upload hold-out (gate)       : {holdout.get('active', nan):.4f} -> {holdout.get('candidate', nan):.4f}")
    print(
        f"official MNIST test (10,000) : {mnist.get('active', nan):.4f} -> {mnist.get('candidate', nan):.4f}"
        "   (bar: >= 0.991)"
    )
    shutil.rmtree(work, ignore_errors=True)
    return 0 if job["status"] == "succeeded" else 1


if __name__ == "__main__":
    raise SystemExit(main())
