"""The CNN: a compact, batch-normalised convnet in the keras.io "Simple MNIST convnet" style."""

from __future__ import annotations

import keras
from keras import layers, ops

from backend.core.inference import INPUT_SHAPE, NUM_CLASSES

DROPOUT = 0.3
DENSE_UNITS = 256
MAX_ROTATION = 10 / 360  # as a fraction of a full turn
MAX_ZOOM = 0.10
MAX_SHIFT = 0.10  # as a fraction of the side
# What reaches the model after the stem (backend.core.cleanup) on real paper: each share of images gets one degradation.
DEGRADED_SHARE = 0.2
UNTOUCHED_SHARE = 0.25  # images left exactly as the stem made them: every resampling blurs a little
MAX_THICKER = 1.0  # marker pens: blend up to a 3x3 dilation
MAX_THINNER = 0.5  # fine pens: blend up to half a 3x3 erosion
LOW_RES_SIDE = 12  # webcam frames and tiny digits: the stem upscales a blurry few pixels
INK_LEVELS = (0.4, 1.0)  # light pencil: the ink's peak grey level
STUB_LENGTH = (3, 10)  # px: what is left of a printed line where it crossed a stroke
STUB_LEVELS = (0.3, 0.9)


class Degrade(layers.Layer):
    """Training-only degradations of a stemmed digit: stroke width, blur, light ink and residual line stubs."""

    def __init__(self, seed: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seed_generator = keras.random.SeedGenerator(seed)

    def _uniform(self, shape: tuple, low: float = 0.0, high: float = 1.0):
        """Per-image uniform draws from the layer's own seeded stream."""
        return keras.random.uniform(shape, low, high, seed=self.seed_generator)

    def call(self, images, training: bool = True):
        """Degrade a share of the batch, each image by its own random amount."""
        if not training:
            return images
        n = ops.shape(images)[0]
        per_image = (n, 1, 1, 1)

        def chosen():
            return ops.cast(self._uniform(per_image) < DEGRADED_SHARE, images.dtype)

        width = self._uniform(per_image, -MAX_THINNER, MAX_THICKER) * chosen()
        thicker = ops.max_pool(images, 3, 1, "same")
        thinner = -ops.max_pool(-images, 3, 1, "same")
        images = images + ops.where(width > 0, width * (thicker - images), -width * (thinner - images))

        low = ops.image.resize(images, (LOW_RES_SIDE, LOW_RES_SIDE), antialias=True)
        blurred = ops.image.resize(low, INPUT_SHAPE[:2], interpolation="bilinear")
        images = images + self._uniform(per_image) * chosen() * (blurred - images)

        light = 1.0 - (1.0 - self._uniform(per_image, *INK_LEVELS)) * chosen()
        images = images * light

        side = INPUT_SHAPE[0]
        grid = ops.arange(side, dtype="float32")
        row = ops.floor(self._uniform((n, 1, 1), 0, side))
        start = ops.floor(self._uniform((n, 1, 1), 0, side))
        length = self._uniform((n, 1, 1), *STUB_LENGTH)
        along = grid[None, None, :]
        stub = ops.cast((grid[None, :, None] == row) & (along >= start) & (along < start + length), "float32")
        upright = ops.cast(self._uniform((n, 1, 1)) < 0.5, "float32")
        stub = upright * ops.transpose(stub, (0, 2, 1)) + (1 - upright) * stub
        level = self._uniform((n, 1, 1), *STUB_LEVELS) * ops.squeeze(chosen(), -1)
        images = ops.maximum(images, (stub * level)[..., None])
        return ops.clip(images, 0.0, 1.0)


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


class Augment(layers.Layer):
    """Training-only augmentation: affine jitter of the handwriting, then real-paper degradations.

    UNTOUCHED_SHARE of the images pass unchanged, so the sharp digits the stem serves stay familiar.
    """

    def __init__(self, seed: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.steps = [
            layers.RandomRotation(MAX_ROTATION, fill_mode="constant", seed=seed),
            layers.RandomZoom(MAX_ZOOM, fill_mode="constant", seed=seed + 1),
            layers.RandomTranslation(MAX_SHIFT, MAX_SHIFT, fill_mode="constant", seed=seed + 2),
            Degrade(seed + 4),
        ]
        self.seed_generator = keras.random.SeedGenerator(seed + 5)

    def call(self, images, training: bool = True):
        """Augment all but a random UNTOUCHED_SHARE of the batch."""
        if not training:
            return images
        augmented = images
        for step in self.steps:
            augmented = step(augmented, training=True)
        keep = keras.random.uniform((ops.shape(images)[0], 1, 1, 1), seed=self.seed_generator) < UNTOUCHED_SHARE
        return ops.where(keep, images, augmented)


def build_augmenter(seed: int) -> Augment:
    """Return the training-only augmentation layer."""
    return Augment(seed, name="augment")
