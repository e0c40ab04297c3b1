"""The throughput ceiling for /predict: a bare Flask app that only decodes the upload and returns JSON."""

from __future__ import annotations

import io

from flask import Flask, request
from PIL import Image

app = Flask(__name__)


@app.post("/predict")
def decode_only() -> dict:
    """Decode the uploaded image and answer with its size, doing no model work."""
    image = Image.open(io.BytesIO(request.files["file"].read()))
    image.load()
    return {"width": image.width, "height": image.height}


@app.get("/health")
def health() -> dict:
    """Answer readiness probes."""
    return {"status": "ok"}
