"""Training: a tiny run writes a complete version; seeds make runs repeatable; fine-tuning records its parent;
the augmentation degrades digits the way real paper does."""

from __future__ import annotations

import json

import numpy as np
import pytest

from backend.core.store import ModelStore, VersionNotFoundError
from backend.data.conditions import CONDITIONS
from backend.data.renderings import STYLES
from backend.training.model import (
    DEGRADED_SHARE,
    UNTOUCHED_SHARE,
    WIDTH_SHARE,
    Degrade,
    Warp,
    _bilinear,
    _resampled,
    build_augmenter,
)
from backend.training.train import TrainingConfig, main, train_and_publish


def test_tiny_run_writes_a_complete_version(trained_store):
    version = trained_store.active_version()
    folder = trained_store.path(version)
    assert {p.name for p in folder.iterdir()} == {"model.keras", "model.tflite", "metadata.json"}
    meta = trained_store.metadata(version)
    assert meta["version"] == version and meta["parent"] is None and meta["created"]
    assert meta["data"]["sources"][0]["name"] == "mnist"
    assert sum(meta["data"]["per_class"].values()) == meta["data"]["train_examples"] == 300
    assert meta["hyperparameters"]["epochs"] == 1 and meta["training_seconds"] > 0
    assert set(meta["history"]) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(values) == 1 for values in meta["history"].values())
    metrics = meta["test_metrics"]
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["examples"] == 200
    assert set(metrics["per_class"]) == {str(d) for d in range(10)}
    assert {"precision", "recall", "f1", "support"} <= set(metrics["per_class"]["3"])
    assert np.asarray(metrics["confusion_matrix"]).shape == (10, 10)
    assert np.asarray(metrics["confusion_matrix"]).sum() == 200
    assert all({"index", "true", "predicted"} <= set(row) for row in metrics["misclassified"])


def test_litert_export_matches_keras(trained_store, tiny_data):
    import keras

    from backend.core.inference import LiteModel

    version = trained_store.active_version()
    keras_model = keras.models.load_model(trained_store.keras_path(version), compile=False)
    lite = LiteModel(trained_store.tflite_path(version), version)
    images = tiny_data.x_test[:16]
    assert np.allclose(keras_model.predict(images, verbose=0), lite.predict(images), atol=1e-4)
    assert np.allclose(lite.predict(images[:1]), lite.predict(images)[:1], atol=1e-5)


@pytest.mark.slow
def test_same_seed_same_model(tmp_path, tiny_data):
    store = ModelStore(tmp_path)
    config = TrainingConfig(epochs=1, batch_size=64, seed=7)
    first = train_and_publish(store, tiny_data, config, verbose=0)
    second = train_and_publish(store, tiny_data, TrainingConfig(epochs=1, batch_size=64, seed=7), verbose=0)
    assert store.metadata(first)["history"] == store.metadata(second)["history"]


@pytest.mark.slow
def test_fine_tune_records_parent(trained_store, tiny_data):
    parent = trained_store.active_version()
    child = train_and_publish(
        trained_store, tiny_data, TrainingConfig(epochs=1, batch_size=64), start_from="active", verbose=0
    )
    meta = trained_store.metadata(child)
    assert meta["parent"] == parent
    assert meta["hyperparameters"]["learning_rate"] < 2e-3  # fine-tuning uses the gentler rate
    assert trained_store.active_version() == parent  # training alone never activates


def test_unknown_start_version(tmp_path, tiny_data):
    with pytest.raises(VersionNotFoundError):
        train_and_publish(ModelStore(tmp_path), tiny_data, TrainingConfig(epochs=1), start_from="missing")


def test_augmenter_is_seeded_and_degrades_a_share_of_images(tiny_data):
    images = tiny_data.x_train[:256]
    first = np.asarray(build_augmenter(3)(images, training=True))
    assert first.shape == images.shape and first.min() >= 0.0 and first.max() <= 1.0
    assert np.array_equal(first, np.asarray(build_augmenter(3)(images, training=True)))
    untouched = np.all(first == images, axis=(1, 2, 3))
    assert abs(untouched.mean() - UNTOUCHED_SHARE) < 0.1  # the stem's sharp digits stay in the training mix
    degrade = Degrade(5)
    assert np.array_equal(np.asarray(degrade(images, training=False)), images)
    changed = np.abs(np.asarray(degrade(images, training=True)) - images).max(axis=(1, 2, 3)) > 1e-3
    untouched = (1 - WIDTH_SHARE) * (1 - DEGRADED_SHARE) ** 3  # four degradations, each for its own share
    assert abs(changed.mean() - (1 - untouched)) < 0.12


def test_bilinear_sampling_reads_pixels_and_blends_between_them(tiny_data):
    images = tiny_data.x_train[:4]
    grid = np.arange(28, dtype=np.float32)
    rows, cols = np.broadcast_to(grid[None, :, None], (4, 28, 28)), np.broadcast_to(grid[None, None, :], (4, 28, 28))
    assert np.allclose(np.asarray(_bilinear(images, rows, cols)), images)
    halfway = np.asarray(_bilinear(images, rows, cols + 0.5))[:, :, :-1]
    assert np.allclose(halfway, (images[:, :, :-1] + images[:, :, 1:]) / 2, atol=1e-6)
    assert np.all(np.asarray(_bilinear(images, rows, cols + 28)) == 0)  # outside the image is paper


def test_thickened_digits_shrink_back_into_the_stems_box(tiny_data):
    images = tiny_data.x_train[:8]
    assert np.array_equal(np.asarray(_resampled(images, scale=np.ones((8, 1, 1), np.float32))), images)
    shrunk = np.asarray(_resampled(images, scale=np.full((8, 1, 1), 1.2, np.float32)))

    def height(batch: np.ndarray) -> np.ndarray:
        rows = batch[..., 0].max(axis=2) > 0.3
        return rows.shape[1] - rows.argmax(axis=1) - rows[:, ::-1].argmax(axis=1)

    assert np.all(height(shrunk) < height(images))  # the stem's 20 px box over 1.2 is about 17 px


def test_warp_moves_digits_in_one_resampling_keeping_strokes_sharp(tiny_data):
    images = tiny_data.x_train[:256]
    warped = np.asarray(Warp(3)(images, training=True))
    assert np.array_equal(warped, np.asarray(Warp(3)(images, training=True)))
    assert np.array_equal(np.asarray(Warp(3)(images, training=False)), images)
    assert np.abs(warped - images).max(axis=(1, 2, 3)).min() > 0.05  # every digit moves
    ink_ratio = warped.sum(axis=(1, 2, 3)) / images.sum(axis=(1, 2, 3))
    assert 0.75 < np.median(ink_ratio) < 1.25  # zoom changes the ink a little, nothing more

    # One bilinear pass keeps 94% of the edges' contrast; a pass per transform (Keras's layers) kept 83%.
    def sharpness(batch: np.ndarray) -> float:
        return float(np.abs(np.diff(batch, axis=2)).mean())

    assert sharpness(warped) > 0.9 * sharpness(images)


def test_degradations_thicken_thin_and_lighten_strokes(tiny_data):
    images = tiny_data.x_train[:256]
    out = np.asarray(Degrade(11)(images, training=True))
    ink_before, ink_after = images.sum(axis=(1, 2, 3)), out.sum(axis=(1, 2, 3))
    assert (ink_after > ink_before * 1.2).any()  # marker-thick strokes
    assert (ink_after < ink_before * 0.8).any()  # fine pens and light pencil
    peaks = out.max(axis=(1, 2, 3))
    assert peaks.min() < 0.9 and np.median(peaks) > 0.95  # a light stroke here and there, most ink stays saturated


@pytest.mark.slow
def test_cli_trains_activates_and_evaluates(tmp_path, capsys, monkeypatch):
    from backend import evaluate

    monkeypatch.setenv("MODEL_DIR", str(tmp_path))  # the CLI's store comes from the settings, not the cwd
    assert main(["--epochs", "1", "--limit", "200", "--test-limit", "100", "--realworld-per-style", "3"]) == 0
    store = ModelStore(tmp_path)
    realworld = store.metadata(store.versions()[0])["holdout_metrics"]
    assert set(realworld) == {f"realworld:{name}" for name in (*STYLES, *CONDITIONS)}
    assert all(figures["examples"] == 3 and 0 <= figures["accuracy"] <= 1 for figures in realworld.values())
    assert store.active_version() == store.versions()[0]
    capsys.readouterr()
    assert evaluate.main(["--model-dir", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["version"] == store.active_version() and 0 <= report["accuracy"] <= 1
    assert report["examples"] == 10000
