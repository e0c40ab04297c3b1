"""Serving runtime: LiteRT interpreters (no TensorFlow import) that follow the ACTIVE pointer."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from backend.store import ModelStore, VersionNotFoundError

log = logging.getLogger(__name__)


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
        batch = np.ascontiguousarray(images, dtype=np.float32).reshape(-1, 28, 28, 1)
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
    flight finish on the old model and no request ever sees a half-loaded one.
    """

    def __init__(self, store: ModelStore, on_reload: Callable[[ReloadEvent], None] | None = None) -> None:
        self.store = store
        self._on_reload = on_reload
        self._lock = threading.Lock()
        self._model: LiteModel | None = None
        self._stamp: tuple[int, int] | None = None

    def current(self) -> LiteModel | None:
        """Return the model to serve this request with (None if nothing is active), reloading first if ACTIVE changed."""
        stamp = self.store.active_stamp()
        model = self._model
        if model is not None and stamp == self._stamp:
            return model
        with self._lock:
            if self._model is None or stamp != self._stamp:
                self._reload(stamp)
        return self._model

    def _reload(self, stamp: tuple[int, int] | None) -> None:
        """Load the version ACTIVE names, then swap it in; keep serving the old one on failure."""
        version = self.store.active_version()
        if version is None:
            self._stamp = stamp
            return
        if self._model is not None and self._model.version == version:
            self._stamp = stamp
            return
        started = time.perf_counter()
        try:
            fresh = LiteModel(self.store.tflite_path(version), version)
        except (OSError, ValueError, RuntimeError, VersionNotFoundError) as exc:
            log.error("could not load model version %s, still serving %s: %s", version, self.version, exc)
            return
        previous, self._model, self._stamp = self._model, fresh, stamp
        seconds = time.perf_counter() - started
        log.info("serving model version %s (was %s), loaded in %.3f s", version, getattr(previous, "version", None), seconds)
        if self._on_reload is not None:
            self._on_reload(ReloadEvent(version, getattr(previous, "version", None), seconds))

    @property
    def version(self) -> str | None:
        """Return the version currently loaded, if any."""
        return self._model.version if self._model is not None else None
