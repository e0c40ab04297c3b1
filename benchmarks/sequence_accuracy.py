"""Whole-string accuracy of /predict/sequence on rows of 3-6 handwritten MNIST test digits.

    MNIST_PATH=../shared/data/mnist_subset.npz .venv/bin/python -m benchmarks.sequence_accuracy

Rows are written dark on light at 2-4x MNIST size with normal spacing (backend.data.renderings.digit_row).
A row counts only if every digit is read and in order.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time

import numpy as np

from backend.data.mnist import load_mnist
from backend.data.renderings import digit_row
from backend.web.app import create_app


def main(argv: list[str] | None = None) -> int:
    """Print the share of rows read exactly, and per-digit accuracy."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--model-dir", default="models")
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    mnist = load_mnist()
    client = create_app({"MODEL_DIR": args.model_dir, "DATA_DIR": tempfile.mkdtemp()}).test_client()
    rng = np.random.default_rng(args.seed)
    exact = digits_right = digits_total = wrong_count = 0
    started = time.perf_counter()
    for _ in range(args.rows):
        idx = rng.choice(len(mnist.y_test), size=int(rng.integers(3, 7)), replace=False)
        truth = "".join(str(d) for d in mnist.y_test[idx])
        read = client.post(
            "/predict/sequence", data={"file": (io.BytesIO(digit_row(mnist.x_test[idx], rng)), "row.png")}
        ).json["digits"]
        exact += read == truth
        wrong_count += len(read) != len(truth)
        digits_total += len(truth)
        digits_right += sum(a == b for a, b in zip(read, truth)) if len(read) == len(truth) else 0
    print(
        f"{args.rows} rows of 3-6 MNIST test digits, dark on light, 2-4x size ({time.perf_counter() - started:.0f} s)"
    )
    print(f"rows read exactly           : {exact / args.rows:.4f}   (bar: >= 0.95)")
    print(f"rows with a wrong digit count: {wrong_count / args.rows:.4f}")
    print(f"digits right (rows segmented right): {digits_right / digits_total:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
