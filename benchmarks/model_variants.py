"""Model variants side by side: official test accuracy, MACs, LiteRT µs per image and training time.

    MNIST_PATH=../shared/data/mnist_subset.npz .venv/bin/python -m benchmarks.model_variants \
        models/20261121-111501-a2ef /tmp/variants/v1/<version> ...

Each argument is a version folder (model.keras, model.tflite, metadata.json). Accuracy is the
LiteRT export's on the 10,000 official test images through the shared stem, recomputed here;
MACs are counted from the layer shapes (convolutions and dense layers; batch norm folds into
them in the export); µs per image is LiteRT at batch 1 on one thread, the web workers' hot path,
best of several passes because the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from backend.core.inference import LiteModel
from backend.core.store import KERAS_FILE, TFLITE_FILE
from backend.data.mnist import load_mnist, stemmed

PASSES = 5
CALLS_PER_PASS = 1000


def count_macs(model) -> int:
    """Multiply-accumulates of one forward pass, from each Conv2D/Dense layer's kernel and output shape."""
    from keras import layers

    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            kernel = layer.kernel.shape  # (kh, kw, in, out)
            _, height, width, _ = layer.output.shape
            total += height * width * int(np.prod(kernel))
        elif isinstance(layer, layers.DepthwiseConv2D):
            kernel = layer.kernel.shape  # (kh, kw, in, multiplier)
            _, height, width, _ = layer.output.shape
            total += height * width * int(np.prod(kernel))
        elif isinstance(layer, layers.Dense):
            total += int(np.prod(layer.kernel.shape))
    return int(total)


def microseconds_per_image(tflite_path: Path, image: np.ndarray) -> float:
    """LiteRT at batch 1, one thread: the best pass's mean µs per invoke."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(tflite_path), num_threads=1)
    interpreter.allocate_tensors()
    source = interpreter.get_input_details()[0]["index"]
    batch = np.ascontiguousarray(image, np.float32).reshape(1, 28, 28, 1)
    best = float("inf")
    for _ in range(PASSES):
        started = time.perf_counter()
        for _ in range(CALLS_PER_PASS):
            interpreter.set_tensor(source, batch)
            interpreter.invoke()
        best = min(best, time.perf_counter() - started)
    return best / CALLS_PER_PASS * 1e6


def describe(folder: Path, x_test: np.ndarray, y_test: np.ndarray) -> dict:
    """Measure one version folder."""
    import keras

    meta = json.loads((folder / "metadata.json").read_text())
    model = keras.models.load_model(folder / KERAS_FILE, compile=False)
    lite = LiteModel(folder / TFLITE_FILE, folder.name)
    predicted = lite.predict(x_test).argmax(axis=1)
    return {
        "version": folder.name,
        "architecture": meta["architecture"]["name"],
        "parameters": meta["architecture"]["parameters"],
        "hyperparameters": meta["hyperparameters"],
        "accuracy": float(np.mean(predicted == y_test)),
        "macs": count_macs(model),
        "us_per_image": microseconds_per_image(folder / TFLITE_FILE, x_test[0]),
        "training_seconds": meta["training_seconds"],
    }


def main(argv: list[str] | None = None) -> int:
    """Print one row per version folder."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    mnist = load_mnist()
    x_test, y_test = stemmed(mnist.x_test), mnist.y_test.astype(np.int64)
    rows = [describe(folder, x_test, y_test) for folder in args.folders]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"load: {os.getloadavg()[0]:.2f} (1-min average, 2 cores; timings are noisy)")
    print(f"{'version':<22} {'params':>8} {'MACs':>10} {'accuracy':>9} {'µs/img':>7} {'train s':>8}  recipe")
    for row in rows:
        h = row["hyperparameters"]
        recipe = f"{h['epochs']} ep, batch {h['batch_size']}, lr {h['learning_rate']}, ema {h.get('ema', False)}"
        print(
            f"{row['version']:<22} {row['parameters']:>8} {row['macs']:>10,} {row['accuracy']:>9.4f} "
            f"{row['us_per_image']:>7.1f} {row['training_seconds']:>8.0f}  {recipe}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
