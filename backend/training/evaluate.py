"""Test metrics for a model version, and `python -m backend.evaluate` to print them as JSON."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from backend.core.config import Settings
from backend.core.store import ModelStore, VersionNotFoundError
from backend.data.fleet import model_store
from backend.data.mnist import NUM_CLASSES, DatasetUnavailableError, load_mnist, stemmed

MISCLASSIFIED_KEPT = 50


def classification_metrics(y_true: np.ndarray, probabilities: np.ndarray) -> dict[str, Any]:
    """Return accuracy, macro and per-class precision/recall/F1, the confusion matrix and misclassified examples."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(probabilities).argmax(axis=1)
    labels = list(range(NUM_CLASSES))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    wrong = np.flatnonzero(y_pred != y_true)
    return {
        "examples": int(len(y_true)),
        "accuracy": float((y_pred == y_true).mean()) if len(y_true) else 0.0,
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "per_class": {
            str(digit): {
                "precision": round(float(precision[digit]), 5),
                "recall": round(float(recall[digit]), 5),
                "f1": round(float(f1[digit]), 5),
                "support": int(support[digit]),
            }
            for digit in labels
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "misclassified": [
            {
                "index": int(i),
                "true": int(y_true[i]),
                "predicted": int(y_pred[i]),
                "confidence": round(float(probabilities[i].max()), 4),
            }
            for i in wrong[:MISCLASSIFIED_KEPT]
        ],
    }


def accuracy(model: Any, images: np.ndarray, labels: np.ndarray) -> float:
    """Return the share of images a LiteModel classifies right (NaN for no images)."""
    return float((model.predict(images).argmax(axis=1) == labels).mean()) if len(labels) else float("nan")


def evaluate_version(store: ModelStore, version: str, images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Score a stored version's LiteRT export (exactly what is served) on stemmed images."""
    from backend.core.inference import LiteModel

    model = LiteModel(store.tflite_path(version), version)
    return classification_metrics(labels, model.predict(images))


def main(argv: list[str] | None = None) -> int:
    """Evaluate the active version (or --version) on the MNIST test split and print a JSON report."""
    settings = Settings()  # the folder the server reads: $MODEL_DIR, else models/ in the checkout
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--version", help="model version to evaluate (default: the active one)")
    parser.add_argument(
        "--model-dir", type=Path, default=settings.model_dir, help=f"model store folder (default: {settings.model_dir})"
    )
    parser.add_argument("--mnist-path", default=None, help="MNIST .npz (default: $MNIST_PATH, else Keras's loader)")
    parser.add_argument("--full", action="store_true", help="include per-class metrics and the confusion matrix")
    args = parser.parse_args(argv)

    store = model_store(replace(settings, model_dir=args.model_dir))
    version = args.version or store.active_version()
    if version is None:
        print(f"error: no active model in {store.root}; train one with python -m backend.train", file=sys.stderr)
        return 2
    try:
        mnist = load_mnist(args.mnist_path)
        metrics = evaluate_version(store, version, stemmed(mnist.x_test), mnist.y_test)
    except (DatasetUnavailableError, VersionNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = {"version": version, "data": mnist.source, **metrics}
    if not args.full:
        for key in ("per_class", "confusion_matrix", "misclassified"):
            report.pop(key)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
