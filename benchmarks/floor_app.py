"""The floor for any /predict with this stem and model: the bare app's plain Flask view plus the stem and one model call.

Nothing else runs: no APIFlask, no metrics, no reload check, no error handling. Whatever the
framework around them, /predict cannot cost less than this, so its rate against the bare app
(`benchmarks.serving_speed --floor`) bounds what trimming the framework could reach.
Served by gunicorn as `benchmarks.floor_app:create_app()`.
"""

from __future__ import annotations

import os

import numpy as np
from flask import Flask, request

from backend.api.predict import prediction
from backend.inference import LiteModel
from backend.preprocessing import preprocess_bytes
from backend.store import ModelStore


def create_app(model_dir: str | None = None) -> Flask:
    """Return the floor app serving the active version of `model_dir` (default: MODEL_DIR or models/)."""
    store = ModelStore(model_dir or os.environ.get("MODEL_DIR", "models"))
    version = store.active_version()
    model = LiteModel(store.tflite_path(version), version)
    app = Flask(__name__)

    @app.post("/predict")
    def stem_and_model() -> dict:
        """Stem the upload and predict it, and nothing more."""
        probabilities = model.predict(preprocess_bytes(request.files["file"].read())[np.newaxis])[0]
        return prediction(probabilities, model.version, 0.0)

    @app.get("/health")
    def health() -> dict:
        """Answer readiness probes."""
        return {"status": "ok"}

    return app
