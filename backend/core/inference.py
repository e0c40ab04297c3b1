"""Serving runtime: LiteRT interpreters (no TensorFlow import) that follow the ACTIVE pointer."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from backend.core.preprocessing import MNIST_SIDE
from backend.core.store import CorruptVersionError, ModelStore, VersionNotFoundError

log = logging.getLogger(__name__)

NUM_CLASSES = 10  # the digits 0-9: every model maps INPUT_SHAPE to this many probabilities
INPUT_SHAPE = (MNIST_SIDE, MNIST_SIDE, 1)
# A worker's states, as /health and /ready report them.
OK, DEGRADED, NO_MODEL = "ok", "degraded", "no-model"
READY, NOT_READY = "ready", "not-ready"
HEALTH_STATES = (OK, DEGRADED, NO_MODEL, READY, NOT_READY)
RELOAD_RETRY_SECONDS = 30.0  # a worker that failed to load ACTIVE's version tries again after this long
LOAD_ERRORS = (OSError, ValueError, RuntimeError, VersionNotFoundError)  # what a damaged or missing version raises


class LiteModel:
    """One model version loaded in a LiteRT interpreter; safe to share between threads."""

    def __init__(self, tflite_path: Path, version: str) -> None:
        self.version = version
        self._model_bytes = Path(tflite_path).read_bytes()
        self._lock = threading.Lock()
        self._single = self._interpreter()  # kept at batch size 1: the hot path never reallocates
        self._batch: Interpreter | None = None
        self._input = self._single.get_input_details()[0]["index"]
        self._output = self._single.get_output_details()[0]["index"]

    def _interpreter(self) -> Interpreter:
        """Build an interpreter for this model, allocated for one image."""
        interpreter = Interpreter(model_content=self._model_bytes, num_threads=1)
        interpreter.allocate_tensors()
        return interpreter

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Return softmax probabilities (n, 10) for stemmed images (n, 28, 28)."""
        batch = np.ascontiguousarray(images, dtype=np.float32).reshape(-1, *INPUT_SHAPE)
        with self._lock:
            if len(batch) == 1:
                return self._run(self._single, batch)
            if self._batch is None:
                self._batch = self._interpreter()
            if self._batch.get_input_details()[0]["shape"][0] != len(batch):
                self._batch.resize_tensor_input(self._input, list(batch.shape))
                self._batch.allocate_tensors()
            return self._run(self._batch, batch)

    def _run(self, interpreter: Interpreter, batch: np.ndarray) -> np.ndarray:
        """Invoke the interpreter on a batch and return its output."""
        interpreter.set_tensor(self._input, batch)
        interpreter.invoke()
        return interpreter.get_tensor(self._output)  # a copy, safe to keep after the lock


def verify_version(store: ModelStore, version: str) -> LiteModel:
    """Load a version and check it serves digits (file hashes, shapes, a probe); raise CorruptVersionError if not."""
    store.check_files(version)
    try:
        model = LiteModel(store.tflite_path(version), version)
        details = model._single.get_input_details()[0], model._single.get_output_details()[0]
        probe = model.predict(np.linspace(0, 1, 2 * MNIST_SIDE**2, dtype=np.float32).reshape(2, MNIST_SIDE, MNIST_SIDE))
    except (ValueError, RuntimeError) as exc:
        raise CorruptVersionError(f"model.tflite of version {version} cannot be loaded by LiteRT: {exc}") from exc
    shapes = tuple(details[0]["shape"][1:]), tuple(details[1]["shape"][1:])
    if shapes != (INPUT_SHAPE, (NUM_CLASSES,)):
        raise CorruptVersionError(
            f"version {version} maps {shapes[0]} to {shapes[1]}, not {INPUT_SHAPE} images to {NUM_CLASSES} classes"
        )
    if (
        probe.shape != (2, NUM_CLASSES)
        or not np.all(np.isfinite(probe))
        or not np.allclose(probe.sum(axis=1), 1, atol=1e-3)
    ):
        raise CorruptVersionError(
            f"version {version} does not answer a probe with {NUM_CLASSES} probabilities summing to 1"
        )
    return model


@dataclass
class LoadFailure:
    """A version ACTIVE names that this worker could not load."""

    version: str
    error: str
    retry_at: float  # time.monotonic() after which the next request tries again


@dataclass
class ReloadEvent:
    """What happened the last time the served model changed."""

    version: str
    previous: str | None
    load_seconds: float


class ActiveModel:
    """Serves the store's active version and picks up a newly activated one on the next request.

    Noticing costs one os.stat of the ACTIVE pointer per request. On a change the new version is
    loaded first, then swapped in, then the old one is dropped (TF Serving's order), so requests in
    flight finish on the old model and no request ever sees a half-loaded one. A version that fails
    to load is remembered: the old one keeps serving, and the load is retried only when ACTIVE
    changes again or RELOAD_RETRY_SECONDS later, never on every request.
    """

    def __init__(
        self,
        store: ModelStore,
        on_reload: Callable[[ReloadEvent], None] | None = None,
        on_load_failure: Callable[[LoadFailure], None] | None = None,
    ) -> None:
        self.store = store
        self._on_reload = on_reload
        self._on_load_failure = on_load_failure
        self._lock = threading.Lock()
        self._model: LiteModel | None = None
        self._stamp: tuple[int, int] | None = None
        self.failure: LoadFailure | None = None

    def current(self) -> LiteModel | None:
        """Return the model to serve this request (None if nothing is active), reloading first if ACTIVE changed."""
        stamp = self.store.active_stamp()
        model = self._model
        if stamp == self._stamp and not self._retry_due():
            return model
        with self._lock:
            if stamp != self._stamp or self._retry_due():
                self._reload(stamp)
        return self._model

    def _retry_due(self) -> bool:
        """Tell whether a failed load is old enough to try again."""
        failure = self.failure
        return failure is not None and time.monotonic() >= failure.retry_at

    def _reload(self, stamp: tuple[int, int] | None) -> None:
        """Load the version ACTIVE names, then swap it in; keep serving the old one on failure."""
        version = self.store.active_version()
        if version is None or (self._model is not None and self._model.version == version):
            self._stamp, self.failure = stamp, None
            return
        started = time.perf_counter()
        try:
            fresh = LiteModel(self.store.tflite_path(version), version)
        except LOAD_ERRORS as exc:
            self._stamp = stamp
            self.failure = LoadFailure(version, f"{type(exc).__name__}: {exc}", time.monotonic() + RELOAD_RETRY_SECONDS)
            log.error("could not load model version %s, still serving %s: %s", version, self.version, exc)
            if self._on_load_failure is not None:
                self._on_load_failure(self.failure)
            return
        previous, self._model, self._stamp, self.failure = self._model, fresh, stamp, None
        seconds = time.perf_counter() - started
        log.info(
            "serving model version %s (was %s), loaded in %.3f s", version, getattr(previous, "version", None), seconds
        )
        if self._on_reload is not None:
            self._on_reload(ReloadEvent(version, getattr(previous, "version", None), seconds))

    @property
    def version(self) -> str | None:
        """Return the version currently loaded, if any."""
        return self._model.version if self._model is not None else None

    def health(self) -> dict[str, str | None]:
        """Return this worker's state: ok, degraded (serving an older version than ACTIVE names) or no-model."""
        model, failure = self.current(), self.failure
        if model is None:
            reason = (
                f"could not load version {failure.version}: {failure.error}"
                if failure
                else "no model version is active"
            )
            return {"status": NO_MODEL, "model_version": None, "reason": reason}
        if failure is not None:
            return {
                "status": DEGRADED,
                "model_version": model.version,
                "reason": f"ACTIVE names version {failure.version}, which this worker could not load "
                f"({failure.error}); still serving {model.version}",
            }
        return {"status": OK, "model_version": model.version}
