"""MNIST loading: the npz named by MNIST_PATH, and clear errors when nothing can be loaded."""

from __future__ import annotations

import numpy as np
import pytest

from backend.data.mnist import DatasetUnavailableError, class_counts, load_mnist


def test_npz_from_mnist_path(mnist):
    assert mnist.x_train.shape[1:] == (28, 28) and mnist.x_train.dtype == np.uint8
    assert len(mnist.x_train) == len(mnist.y_train) > 0
    assert mnist.x_test.shape == (10000, 28, 28)
    assert set(np.unique(mnist.y_test)) == set(range(10))


def test_explicit_path_wins(tmp_path):
    path = tmp_path / "tiny.npz"
    arrays = {k: np.zeros((3, 28, 28), np.uint8) for k in ("x_train", "x_test")}
    np.savez(path, y_train=np.array([1, 2, 3], np.uint8), y_test=np.array([0, 0, 9], np.uint8), **arrays)
    loaded = load_mnist(path)
    assert loaded.y_train.tolist() == [1, 2, 3] and loaded.source == "npz:tiny.npz"


def test_missing_file_says_what_to_set(tmp_path):
    with pytest.raises(DatasetUnavailableError, match="MNIST_PATH"):
        load_mnist(tmp_path / "nope.npz")


def test_npz_without_mnist_keys(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, images=np.zeros(3))
    with pytest.raises(DatasetUnavailableError, match="x_train"):
        load_mnist(path)


def test_not_an_npz(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(b"definitely not numpy")
    with pytest.raises(DatasetUnavailableError):
        load_mnist(path)


def test_offline_keras_fallback_gives_clear_error(monkeypatch, tmp_path):
    import keras.datasets.mnist as keras_mnist

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.delenv("MNIST_PATH", raising=False)
    monkeypatch.setattr(keras_mnist, "load_data", offline)
    with pytest.raises(DatasetUnavailableError, match="Set MNIST_PATH"):
        load_mnist()


def test_class_counts():
    assert class_counts(np.array([0, 0, 9])) == {**{str(d): 0 for d in range(10)}, "0": 2, "9": 1}


def test_evaluate_cli_reports_missing_data(tmp_path, capsys):
    from backend.training.evaluate import main

    assert main(["--model-dir", str(tmp_path), "--mnist-path", str(tmp_path / "x.npz")]) == 2
    assert "no active model" in capsys.readouterr().err
