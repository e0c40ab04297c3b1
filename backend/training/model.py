"""The CNN: a compact, batch-normalised convnet in the keras.io "Simple MNIST convnet" style."""

from __future__ import annotations

import math

import keras
from keras import layers, ops

from backend.core.inference import INPUT_SHAPE, NUM_CLASSES
from backend.core.preprocessing import DIGIT_BOX

DROPOUT = 0.3
DENSE_UNITS = 256
MAX_ROTATION = 10 / 360  # as a fraction of a full turn
MAX_ZOOM = 0.10
MAX_SHIFT = 0.10  # as a fraction of the side
# What reaches the model after the stem (backend.core.cleanup) on real paper: each share of images gets one degradation.
DEGRADED_SHARE = 0.2
WIDTH_SHARE = 0.3  # stroke width has its own, larger share: thick marker strokes were the weakest style
UNTOUCHED_SHARE = 0.25  # images left exactly as the stem made them: every resampling blurs a little
MAX_THICKER = 2.0  # marker pens: blend up to a 3x3 dilation, then on up to a 5x5 one
MAX_THINNER = 0.5  # fine pens: blend up to half a 3x3 erosion
LOW_RES_SIDE = 12  # webcam frames and tiny digits: the stem upscales a blurry few pixels
INK_LEVELS = (0.4, 1.0)  # light pencil: the ink's peak grey level
STUB_LENGTH = (3, 10)  # px: what is left of a printed line where it crossed a stroke
STUB_LEVELS = (0.3, 0.9)


class _RandomLayer(layers.Layer):
    """A training-only layer with its own seeded random stream."""

    def __init__(self, seed: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seed_generator = keras.random.SeedGenerator(seed)

    def _uniform(self, shape: tuple, low: float = 0.0, high: float = 1.0):
        """Per-image uniform draws from the layer's own seeded stream."""
        return keras.random.uniform(shape, low, high, seed=self.seed_generator)


class Degrade(_RandomLayer):
    """Training-only degradations of a stemmed digit: stroke width, blur, light ink and residual line stubs."""

    def call(self, images, training: bool = True):
        """Degrade a share of the batch, each image by its own random amount."""
        if not training:
            return images
        n = ops.shape(images)[0]
        per_image = (n, 1, 1, 1)

        def chosen(share: float = DEGRADED_SHARE):
            return ops.cast(self._uniform(per_image) < share, images.dtype)

        width = self._uniform(per_image, -MAX_THINNER, MAX_THICKER) * chosen(WIDTH_SHARE)
        thick = ops.max_pool(images, 3, 1, "same")
        thicker = ops.max_pool(images, 5, 1, "same")
        thinner = -ops.max_pool(-images, 3, 1, "same")
        widened = ops.where(width > 1, thick + (width - 1) * (thicker - thick), images + width * (thick - images))
        images = ops.where(width > 0, widened, images - width * (thinner - images))
        # The stem fits a thick digit's box to DIGIT_BOX too, so thicker strokes come with a smaller skeleton.
        images = _resampled(images, scale=(DIGIT_BOX + 2 * ops.maximum(width[..., 0], 0.0)) / DIGIT_BOX)

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


def _bilinear(images, rows, cols):
    """Sample (n, h, w, 1) images at source coordinates (n, h, w), reading zero outside the image.

    keras.ops.image.map_coordinates gives the same values eagerly, but fails inside tf.data's graph,
    where the batch size is unknown.
    """
    n, h, w = ops.shape(images)[0], images.shape[1], images.shape[2]
    flat = ops.reshape(images, (-1,))
    first = ops.cast(ops.arange(n), "int32")[:, None, None] * (h * w)
    top, left = ops.floor(rows), ops.floor(cols)
    sampled = 0.0
    for r in (top, top + 1):
        for c in (left, left + 1):
            weight = (1 - ops.abs(rows - r)) * (1 - ops.abs(cols - c))
            inside = ops.cast((r >= 0) & (r <= h - 1) & (c >= 0) & (c <= w - 1), images.dtype)
            index = first + ops.cast(ops.clip(r, 0, h - 1), "int32") * w + ops.cast(ops.clip(c, 0, w - 1), "int32")
            sampled = sampled + weight * inside * ops.take(flat, index)
    return sampled[..., None]


def _resampled(images, scale, angle=0.0, shift_rows=0.0, shift_cols=0.0):
    """Sample each image once through its own scaling, rotation and shift about the centre ((n, 1, 1) each).

    Scale 1, angle 0 and no shift read every pixel exactly where it is: the image comes back unchanged.
    """
    centre = (INPUT_SHAPE[0] - 1) / 2
    grid = ops.arange(INPUT_SHAPE[0], dtype="float32") - centre
    y, x = grid[None, :, None], grid[None, None, :]
    cos, sin = ops.cos(angle), ops.sin(angle)
    rows = centre + scale * (cos * y - sin * x) - shift_rows
    cols = centre + scale * (sin * y + cos * x) - shift_cols
    return _bilinear(images, rows, cols)


class Warp(_RandomLayer):
    """Training-only handwriting jitter: rotation, zoom and shift, composed and resampled once.

    One bilinear resampling instead of one per transform keeps the strokes as sharp as the stem's.
    """

    def call(self, images, training: bool = True):
        """Move each image by its own random rotation, zoom and shift."""
        if not training:
            return images
        per_image = (ops.shape(images)[0], 1, 1)
        side = INPUT_SHAPE[0]
        # The order of the draws is the seeded stream: changing it changes every model trained.
        return _resampled(
            images,
            angle=self._uniform(per_image, -1.0, 1.0) * MAX_ROTATION * 2 * math.pi,
            scale=1.0 / self._uniform(per_image, 1 - MAX_ZOOM, 1 + MAX_ZOOM),
            shift_rows=self._uniform(per_image, -MAX_SHIFT, MAX_SHIFT) * side,
            shift_cols=self._uniform(per_image, -MAX_SHIFT, MAX_SHIFT) * side,
        )


class Augment(layers.Layer):
    """Training-only augmentation: affine jitter of the handwriting, then real-paper degradations.

    UNTOUCHED_SHARE of the images pass unchanged, so the sharp digits the stem serves stay familiar.
    """

    def __init__(self, seed: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.steps = [Warp(seed), Degrade(seed + 4)]
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
