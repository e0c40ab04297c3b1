"""Shared fixtures: MNIST from MNIST_PATH, a tiny trained model store, the Flask app and client."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from tests.support.datasets import png_bytes as png_bytes  # re-exported: tests import it from here

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_MNIST = REPO_ROOT.parent / "shared" / "data" / "mnist_subset.npz"
os.environ.setdefault("MNIST_PATH", str(SHARED_MNIST))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
pytest_plugins = [
    "tests.support.browser",  # Chromium, gunicorn backend and page fixtures of the browser tests
    "tests.support.fleet",  # PostgreSQL, Redis and nginx from Debian's binaries
]


@pytest.fixture(scope="session")
def mnist():
    """Raw MNIST arrays from MNIST_PATH."""
    from backend.data.mnist import load_mnist

    return load_mnist()


@pytest.fixture(scope="session")
def digit(mnist) -> np.ndarray:
    """One MNIST test digit (a 7), uint8 28x28."""
    return mnist.x_test[0]


TINY_TRAIN, TINY_TEST = 300, 200


@pytest.fixture(scope="session")
def tiny_data():
    """A few hundred stemmed MNIST images: enough to exercise training end to end."""
    from backend.training.train import mnist_training_data

    return mnist_training_data(limit=TINY_TRAIN, test_limit=TINY_TEST)


@pytest.fixture(scope="session")
def trained_store(tmp_path_factory, tiny_data):
    """A model store holding one tiny, one-epoch version, made active."""
    from backend.core.store import ModelStore
    from backend.training.train import TrainingConfig, train_and_publish

    store = ModelStore(tmp_path_factory.mktemp("models"))
    version = train_and_publish(store, tiny_data, TrainingConfig(epochs=1, batch_size=64), verbose=0)
    store.activate(version)
    return store


@pytest.fixture()
def app(trained_store, tmp_path):
    """The API app on the tiny trained store, with a private data folder."""
    from backend.web.app import create_app

    return create_app(
        {"MODEL_DIR": trained_store.root, "DATA_DIR": tmp_path / "data", "MAX_UPLOAD_MB": 2, "MAX_BATCH_FILES": 120}
    )


@pytest.fixture()
def client(app):
    """A Flask test client for `app`."""
    return app.test_client()


@pytest.fixture(scope="session")
def tiny_mnist_path(tmp_path_factory, mnist) -> Path:
    """A small MNIST .npz (400 train, 300 test images) so that job processes train in seconds."""
    path = tmp_path_factory.mktemp("mnist") / "tiny_mnist.npz"
    np.savez(
        path,
        x_train=mnist.x_train[:400],
        y_train=mnist.y_train[:400],
        x_test=mnist.x_test[:300],
        y_test=mnist.y_test[:300],
    )
    return path


ADMIN_TOKEN = "test-admin-token"


@pytest.fixture()
def job_app(trained_store, tmp_path, tiny_mnist_path):
    """An app on a private copy of the tiny store whose jobs train on tiny MNIST."""
    import shutil

    from backend.web.app import create_app

    models = tmp_path / "models"
    shutil.copytree(trained_store.root, models)
    return create_app(
        {
            "MODEL_DIR": models,
            "DATA_DIR": tmp_path / "data",
            "MNIST_PATH": str(tiny_mnist_path),
            "ADMIN_TOKEN": ADMIN_TOKEN,
        }
    )


@pytest.fixture()
def job_client(job_app):
    """A test client for `job_app`."""
    return job_app.test_client()


@pytest.fixture(scope="session")
def shipped_client(tmp_path_factory):
    """A client on the committed model store (read-only use: never activate or train here)."""
    from backend.core.store import ModelStore
    from backend.web.app import create_app

    store = ModelStore(REPO_ROOT / "models")
    if store.active_version() is None:
        pytest.fail("models/ has no active version: the shipped baseline model is missing")
    return create_app({"MODEL_DIR": store.root, "DATA_DIR": tmp_path_factory.mktemp("shipped-data")}).test_client()
