"""MNIST: read the offline .npz (MNIST_PATH) or Keras's download, and stem it for training."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from backend.core.inference import NUM_CLASSES
from backend.core.preprocessing import preprocess_many

MNIST_KEYS = ("x_train", "y_train", "x_test", "y_test")


class DatasetUnavailableError(RuntimeError):
    """MNIST could be read neither from MNIST_PATH nor from Keras's download."""


@dataclass
class Mnist:
    """Raw MNIST arrays: uint8 images (n, 28, 28) and uint8 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str


def load_mnist(path: str | os.PathLike | None = None) -> Mnist:
    """Load MNIST from `path` (or $MNIST_PATH) if given, else through keras.datasets.mnist."""
    path = path or os.environ.get("MNIST_PATH") or None
    if path:
        return _load_npz(Path(path))
    try:
        from keras.datasets import mnist

        (x_train, y_train), (x_test, y_test) = mnist.load_data()
    except Exception as exc:  # the loader raises anything from URLError to OSError offline
        raise DatasetUnavailableError(
            "MNIST could not be downloaded by keras.datasets.mnist.load_data() "
            f"({type(exc).__name__}: {exc}). Set MNIST_PATH to a local .npz with the keys "
            f"{', '.join(MNIST_KEYS)}, e.g. MNIST_PATH=../shared/data/mnist_subset.npz."
        ) from exc
    return Mnist(x_train, y_train, x_test, y_test, source="keras.datasets.mnist")


KERAS_CACHE = Path("~/.keras/datasets/mnist.npz").expanduser()


def mnist_file(path: str | os.PathLike | None = None) -> Path | None:
    """Return the MNIST .npz a server can read without TensorFlow: MNIST_PATH, else Keras's download cache."""
    path = path or os.environ.get("MNIST_PATH") or None
    if path:
        return Path(path) if Path(path).is_file() else None
    return KERAS_CACHE if KERAS_CACHE.is_file() else None


def _load_npz(path: Path) -> Mnist:
    """Read an MNIST .npz with Keras's key names, with errors that say what to fix."""
    if not path.is_file():
        raise DatasetUnavailableError(
            f"MNIST_PATH points to {path}, which does not exist. Set MNIST_PATH to a .npz with the keys "
            f"{', '.join(MNIST_KEYS)} (here: ../shared/data/mnist_subset.npz), or unset it to download."
        )
    try:
        with np.load(path) as archive:
            missing = [key for key in MNIST_KEYS if key not in archive.files]
            if missing:
                raise DatasetUnavailableError(f"{path} lacks the MNIST keys {missing}; it needs {MNIST_KEYS}.")
            arrays = {key: archive[key] for key in MNIST_KEYS}
    except (OSError, ValueError) as exc:
        raise DatasetUnavailableError(f"{path} is not a readable .npz file ({exc}).") from exc
    return Mnist(**arrays, source=f"npz:{path.name}")


def class_counts(labels: np.ndarray) -> dict[str, int]:
    """Count examples per digit, as a JSON-friendly dict keyed '0'-'9'."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=NUM_CLASSES)
    return {str(digit): int(count) for digit, count in enumerate(counts)}


def stemmed(images: np.ndarray) -> np.ndarray:
    """Run MNIST-style arrays through the shared stem and add the channel axis."""
    return preprocess_many(images)[..., np.newaxis]


# --- Uploaded ZIP datasets ---------------------------------------------------------------------
