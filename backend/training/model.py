"""The CNN: a compact, batch-normalised convnet in the keras.io "Simple MNIST convnet" style."""

from __future__ import annotations

import keras
from keras import layers

INPUT_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
DROPOUT = 0.3
DENSE_UNITS = 256
MAX_ROTATION = 10 / 360  # as a fraction of a full turn
MAX_ZOOM = 0.10
MAX_SHIFT = 0.10  # as a fraction of the side


def build_model() -> keras.Model:
    """Return the uncompiled classifier: 28x28x1 in [0, 1] -> 10 softmax probabilities."""
    return keras.Sequential(
        [
            keras.Input(shape=INPUT_SHAPE),
            layers.Conv2D(32, 5, activation="relu"),
            layers.BatchNormalization(),
            layers.MaxPooling2D(),
            layers.Conv2D(64, 3, activation="relu"),
            layers.BatchNormalization(),
            layers.Conv2D(64, 3, activation="relu"),
            layers.BatchNormalization(),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dropout(DROPOUT),
            layers.Dense(DENSE_UNITS, activation="relu"),
            layers.BatchNormalization(),
            layers.Dropout(DROPOUT),
            layers.Dense(NUM_CLASSES, activation="softmax"),
        ],
        name="digit_cnn",
    )


def build_augmenter(seed: int) -> keras.Sequential:
    """Return the training-only augmentation: small rotations, zooms and shifts of a handwritten digit."""
    return keras.Sequential(
        [
            layers.RandomRotation(MAX_ROTATION, fill_mode="constant", seed=seed),
            layers.RandomZoom(MAX_ZOOM, fill_mode="constant", seed=seed + 1),
            layers.RandomTranslation(MAX_SHIFT, MAX_SHIFT, fill_mode="constant", seed=seed + 2),
        ],
        name="augment",
    )
