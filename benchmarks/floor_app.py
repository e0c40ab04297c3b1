"""The floor for any /predict with this stem and model: the bare app's view plus the stem and one model call.

Nothing else runs: no APIFlask, no metrics, no reload check, no error handling. Whatever the
framework around them, /predict cannot cost less than this, so its rate against the bare app
(`benchmarks.serving_speed --floor`) bounds what trimming the framework could reach. With
`run_model=False` it answers a fixed prediction instead of calling the model: the stem's floor.
Served by gunicorn as `benchmarks.floor_app:create_app()` or `create_app(run_model=False)`.
"""

from __future__ import annotations

import os

import numpy as np
from flask import Flask, request

from backend.core.inference import NUM_CLASSES, LiteModel
from backend.core.preprocessing import preprocess_bytes
from backend.core.store import ModelStore
from backend.web.api.predict import prediction
from benchmarks import bare_app


def create_app(model_dir: str | None = None, run_model: bool = True) -> Flask:
    """Return the floor app serving the active version of `model_dir` (default: MODEL_DIR or models/)."""
    store = ModelStore(model_dir or os.environ.get("MODEL_DIR", "models"))
    version = store.active_version()
    model = LiteModel(store.tflite_path(version), version)
    fixed_answer = np.full((1, NUM_CLASSES), 1 / NUM_CLASSES, dtype=np.float32)
    app = Flask(__name__)

    @app.post("/predict")
    def stem_and_model() -> dict:
        """Stem the upload and predict it (or take the fixed answer), and nothing more."""
        model_input = preprocess_bytes(request.files["file"].read())[np.newaxis]
        probabilities = model.predict(model_input) if run_model else fixed_answer
        return prediction(probabilities[0], model.version, 0.0)

    app.add_url_rule("/health", view_func=bare_app.health)
    return app
