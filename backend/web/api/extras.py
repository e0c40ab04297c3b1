"""Reading rows of digits and explaining a prediction (feedback lives in backend.web.api.feedback)."""

from __future__ import annotations

import numpy as np
from apiflask import APIBlueprint, abort
from flask import current_app

from backend.core import budget
from backend.core.preprocessing import (
    InvalidImageError,
    decoded_pixels,
    load_image,
    to_grayscale,
)
from backend.core.saliency import occlusion_heatmap, overlay_png
from backend.core.sequence import segment_digits
from backend.web.api.predict import (
    ERRORS,
    image_from_request,
    open_upload,
    served_model,
    stem_upload,
)
from backend.web.api.schemas import Explanation, ImageUpload, SequencePrediction
from backend.web.observability import record_predictions

bp = APIBlueprint("extras", __name__, tag="Extras")


@bp.post("/predict/sequence")
@bp.input(ImageUpload, location="files", validation=False)
@bp.output(SequencePrediction)
@bp.doc(summary="Read several digits written in a row", responses=ERRORS)
def predict_sequence(files_data: dict) -> dict:
    """Segment a photo or drawing of a row of digits and read it left to right."""
    image = open_upload(image_from_request())
    with budget.heavy_lane(decoded_pixels(image), current_app.config["HEAVY_IMAGE_PIXELS"]):
        try:
            gray = to_grayscale(load_image(image))
            budget.check("decoding")
            segments = segment_digits(gray)
        except InvalidImageError as exc:
            abort(exc.status, exc.message)
    model = served_model()
    probabilities = model.predict(np.stack([segment.model_input for segment in segments]))
    scale = image.width / gray.shape[1]  # the stem may analyse a large photo at reduced size
    items = [
        {
            "digit": int(row.argmax()),
            "confidence": float(row.max()),
            "box": [int(round(v * scale)) for v in segment.box],
        }
        for segment, row in zip(segments, probabilities)
    ]
    record_predictions([item["digit"] for item in items])
    return {"digits": "".join(str(item["digit"]) for item in items), "items": items, "model_version": model.version}


@bp.post("/explain")
@bp.input(ImageUpload, location="files", validation=False)
@bp.output(Explanation)
@bp.doc(summary="Show which pixels drove the prediction (occlusion saliency)", responses=ERRORS)
def explain(files_data: dict) -> dict:
    """Predict one image and return an occlusion heatmap over the 28x28 input."""
    model_input = stem_upload(image_from_request())
    model = served_model()
    probabilities = model.predict(model_input[np.newaxis])[0]
    digit = int(probabilities.argmax())
    heatmap = occlusion_heatmap(model, model_input, digit)
    return {
        "digit": digit,
        "confidence": float(probabilities[digit]),
        "heatmap": np.round(heatmap, 4).tolist(),
        "overlay_png": overlay_png(model_input, heatmap),
        "model_version": model.version,
    }
