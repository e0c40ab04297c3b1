"""Training: fit the CNN with augmentation, score its LiteRT export, publish a complete version.

python -m backend.train --epochs 15 --seed 42            # from scratch on MNIST
python -m backend.train --from active --epochs 2         # fine-tune the active version
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from backend.core.config import Settings
from backend.core.inference import LiteModel
from backend.core.store import KERAS_FILE, TFLITE_FILE, ModelStore, VersionNotFoundError
from backend.data.fleet import model_store
from backend.data.jobs import DEFAULT_EPOCHS as EPOCHS_BY_START
from backend.data.mnist import (
    DatasetUnavailableError,
    class_counts,
    load_mnist,
    stemmed,
)
from backend.training.evaluate import accuracy, classification_metrics

log = logging.getLogger(__name__)

DEFAULT_EPOCHS = EPOCHS_BY_START["scratch"]
DEFAULT_BATCH_SIZE = 256  # twice the steps' width halves an epoch on 2 CPU cores
DEFAULT_LEARNING_RATE = 3e-3
FINE_TUNE_LEARNING_RATE = 5e-4
FINAL_LEARNING_RATE_SHARE = 0.02  # cosine decay ends at this share of the starting rate
EMA_MOMENTUM = 0.99  # the weights served are this moving average of the last ~100 steps' weights
VALIDATION_SHARE = 0.05
DEFAULT_SEED = 42
HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")
REALWORLD_PER_STYLE = 200  # rendered test digits per style and condition scored into a new version's metadata
REALWORLD_SEED = 0

EpochCallback = Callable[[int, int, dict[str, float]], None]


@dataclass
class TrainingConfig:
    """Hyperparameters of one training run."""

    epochs: int = DEFAULT_EPOCHS
    batch_size: int = DEFAULT_BATCH_SIZE
    learning_rate: float | None = None  # None: DEFAULT_ or FINE_TUNE_LEARNING_RATE by starting point
    seed: int = DEFAULT_SEED
    validation_share: float = VALIDATION_SHARE
    augment: bool = True
    ema: bool = True  # serve the weights' moving average: 4 more right of 10,000 official test digits (docs/model.md)


@dataclass
class TrainingData:
    """Stemmed training and test arrays, (n, 28, 28, 1) float32, with where they came from."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    sources: list[dict[str, Any]] = field(default_factory=list)
    test_source: str = "mnist-test"
    holdout: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # extra named test sets


def mnist_training_data(
    mnist_path: str | None = None, limit: int | None = None, test_limit: int | None = None
) -> TrainingData:
    """Load MNIST and run it through the shared stem; `limit`s take the first n examples."""
    mnist = load_mnist(mnist_path)
    x_train, y_train = mnist.x_train[:limit], mnist.y_train[:limit]
    x_test, y_test = mnist.x_test[:test_limit], mnist.y_test[:test_limit]
    return TrainingData(
        x_train=stemmed(x_train),
        y_train=y_train.astype(np.int64),
        x_test=stemmed(x_test),
        y_test=y_test.astype(np.int64),
        sources=[
            {"name": "mnist", "origin": mnist.source, "examples": int(len(y_train)), "per_class": class_counts(y_train)}
        ],
        test_source=f"mnist-test ({mnist.source}, {len(y_test)} images)",
    )


def realworld_holdouts(
    mnist_path: str | None = None, per_style: int = REALWORLD_PER_STYLE, seed: int = REALWORLD_SEED
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Render MNIST test digits in every style and real-paper condition and stem them as /predict does."""
    from backend.core.preprocessing import InvalidImageError, preprocess_bytes
    from backend.data.conditions import render_conditions
    from backend.data.renderings import render_set

    mnist = load_mnist(mnist_path)
    rendered = render_set(mnist.x_test, mnist.y_test, per_style, seed)
    rendered += render_conditions(mnist.x_test, mnist.y_test, per_style, seed)
    images: dict[str, list[np.ndarray]] = {}
    labels: dict[str, list[int]] = {}
    for style, label, data in rendered:
        try:
            image = preprocess_bytes(data)
        except InvalidImageError:  # /predict refuses it: a blank input that no digit can match
            image = np.zeros((28, 28), np.float32)
        images.setdefault(f"realworld:{style}", []).append(image)
        labels.setdefault(f"realworld:{style}", []).append(label)
    return {name: (np.stack(images[name])[..., np.newaxis], np.array(labels[name])) for name in images}


def seed_everything(seed: int) -> None:
    """Make a run repeatable: Python, NumPy and TensorFlow seeds plus deterministic TF ops."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def fit(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    config: TrainingConfig,
    on_epoch: EpochCallback | None = None,
    verbose: int = 1,
) -> dict[str, list[float]]:
    """Train `model` in place on a seeded train/validation split and return the per-epoch history."""
    import keras
    import tensorflow as tf

    from backend.training.model import build_augmenter

    order = np.random.default_rng(config.seed).permutation(len(x))
    n_val = max(1, int(round(len(x) * config.validation_share))) if len(x) > 1 else 0
    val_idx, train_idx = order[:n_val], order[n_val:]
    train = tf.data.Dataset.from_tensor_slices((x[train_idx], y[train_idx]))
    train = train.shuffle(len(train_idx), seed=config.seed, reshuffle_each_iteration=True).batch(config.batch_size)
    if config.augment:
        augmenter = build_augmenter(config.seed)
        train = train.map(lambda images, labels: (augmenter(images, training=True), labels))
    train = train.prefetch(tf.data.AUTOTUNE)

    steps = config.epochs * max(1, int(np.ceil(len(train_idx) / config.batch_size)))
    schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, steps, alpha=FINAL_LEARNING_RATE_SHARE)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule, use_ema=config.ema, ema_momentum=EMA_MOMENTUM),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    callbacks = []
    if on_epoch is not None:
        callbacks.append(
            keras.callbacks.LambdaCallback(
                on_epoch_end=lambda epoch, logs: on_epoch(
                    epoch + 1, config.epochs, {k: float(v) for k, v in (logs or {}).items()}
                )
            )
        )
    history = model.fit(
        train,
        epochs=config.epochs,
        validation_data=(x[val_idx], y[val_idx]) if n_val else None,
        callbacks=callbacks,
        verbose=verbose,
    )
    return {key: [float(v) for v in history.history.get(key, [])] for key in HISTORY_KEYS}


def load_or_build(store: ModelStore, start_from: str | None) -> Any:
    """Return a fresh CNN for `None`/'scratch', else the Keras model of a stored version."""
    import keras

    from backend.training.model import build_model

    if start_from in (None, "scratch"):
        return build_model()
    if not store.is_complete(start_from):
        raise VersionNotFoundError(f"Cannot fine-tune from {start_from!r}: no such model version.")
    return keras.models.load_model(store.keras_path(start_from), compile=False)


def train_and_publish(
    store: ModelStore,
    data: TrainingData,
    config: TrainingConfig,
    start_from: str | None = None,
    on_epoch: EpochCallback | None = None,
    verbose: int = 1,
    extra_metadata: dict[str, Any] | None = None,
    version: str | None = None,
) -> str:
    """Train (from scratch or a version), export Keras and LiteRT files, publish them as `version` (default: new)."""
    import keras
    import tensorflow as tf

    if start_from == "active":
        start_from = store.active_version()
    if config.learning_rate is None:
        config.learning_rate = DEFAULT_LEARNING_RATE if start_from in (None, "scratch") else FINE_TUNE_LEARNING_RATE
    seed_everything(config.seed)
    model = load_or_build(store, start_from)
    started = time.perf_counter()
    history = fit(model, data.x_train, data.y_train, config, on_epoch=on_epoch, verbose=verbose)
    training_seconds = time.perf_counter() - started

    def write_files(folder: Path) -> dict[str, Any]:
        model.save(folder / KERAS_FILE)
        model.export(str(folder / TFLITE_FILE), format="litert", verbose=False)
        # Score the LiteRT export, since that is exactly what the web workers serve.
        lite = LiteModel(folder / TFLITE_FILE, folder.name)
        return {
            "test_metrics": classification_metrics(data.y_test, lite.predict(data.x_test)),
            "holdout_metrics": {
                name: {"accuracy": accuracy(lite, x, y), "examples": int(len(y))}
                for name, (x, y) in data.holdout.items()
            },
        }

    metadata = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "parent": start_from if start_from not in (None, "scratch") else None,
        "data": {
            "sources": data.sources,
            "train_examples": int(len(data.y_train)),
            "per_class": class_counts(data.y_train),
            "validation_share": config.validation_share,
            "test": data.test_source,
        },
        "hyperparameters": asdict(config),
        "architecture": {"name": model.name, "parameters": int(model.count_params())},
        "training_seconds": round(training_seconds, 1),
        "history": history,
        "environment": {
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "python": platform.python_version(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        },
        **(extra_metadata or {}),
    }
    return store.publish(version or store.new_version_id(), write_files, metadata)


def main(argv: list[str] | None = None) -> int:
    """Train a model version on MNIST and publish it to the model store."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument(
        "--learning-rate", type=float, default=None, help="peak learning rate (default by starting point)"
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--mnist-path", default=None, help="MNIST .npz (default: $MNIST_PATH, else Keras's loader)")
    parser.add_argument("--limit", type=int, default=None, help="train on the first N MNIST training images only")
    parser.add_argument("--test-limit", type=int, default=None, help="score on the first N MNIST test images only")
    parser.add_argument("--model-dir", default=None, help="output model store (default: MODEL_DIR, else models/)")
    parser.add_argument(
        "--from", dest="start_from", default="scratch", help="'scratch', 'active' or a version id to fine-tune"
    )
    parser.add_argument("--no-augment", action="store_true", help="train without augmentation")
    parser.add_argument("--no-ema", action="store_true", help="serve the last weights, not their moving average")
    parser.add_argument(
        "--realworld-per-style",
        type=int,
        default=REALWORLD_PER_STYLE,
        help="rendered test digits per style and condition scored into the metadata (0: none)",
    )
    parser.add_argument("--activate", action="store_true", help="make the new version active (automatic if none is)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    settings = Settings()
    store = model_store(replace(settings, model_dir=Path(args.model_dir)) if args.model_dir else settings)
    config = TrainingConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        augment=not args.no_augment,
        ema=not args.no_ema,
    )
    try:
        data = mnist_training_data(args.mnist_path, limit=args.limit, test_limit=args.test_limit)
        if args.realworld_per_style:
            data.holdout.update(realworld_holdouts(args.mnist_path, args.realworld_per_style))
        version = train_and_publish(store, data, config, start_from=args.start_from)
    except (DatasetUnavailableError, VersionNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    meta = store.metadata(version)
    if args.activate or store.active_version() is None:
        store.activate(version)
    print(
        f"published {version} to {store.root}: test accuracy {meta['test_metrics']['accuracy']:.4f}, "
        f"trained in {meta['training_seconds']:.0f} s; active: {store.active_version()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
