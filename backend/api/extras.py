"""Reading rows of digits, explaining a prediction, and collecting feedback on wrong ones."""

from __future__ import annotations

import io

import numpy as np
from apiflask import APIBlueprint, abort
from flask import Response, current_app, request, send_file

from backend.api.auth import auth
from backend.api.predict import ERRORS, _image_from_request, _served_model, _stem
from backend.api.schemas import (
    Explanation, FeedbackCreated, FeedbackForm, FeedbackList, ImageUpload, SequencePrediction, error_responses,
)
from backend.api.services import services
from backend.observability import record_predictions
from backend.preprocessing import InvalidImageError, decode_image, to_grayscale
from backend.saliency import occlusion_heatmap, overlay_png
from backend.sequence import segment_digits

bp = APIBlueprint("extras", __name__, tag="Extras")


@bp.post("/predict/sequence")
@bp.input(ImageUpload, location="files", validation=False)
@bp.output(SequencePrediction)
@bp.doc(summary="Read several digits written in a row", responses=ERRORS)
def predict_sequence(files_data: dict) -> dict:
    """Segment a photo or drawing of a row of digits and read it left to right."""
    data = _image_from_request()
    try:
        image = decode_image(data, max_pixels=current_app.config["MAX_IMAGE_PIXELS"])
        gray = to_grayscale(image)
        segments = segment_digits(gray)
    except InvalidImageError as exc:
        abort(exc.status, exc.message)
    model = _served_model()
    probabilities = model.predict(np.stack([segment.model_input for segment in segments]))
    scale = image.width / gray.shape[1]  # the stem may analyse a large photo at reduced size
    items = [
        {"digit": int(row.argmax()), "confidence": float(row.max()),
         "box": [int(round(v * scale)) for v in segment.box]}
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
    model_input = _stem(_image_from_request())
    model = _served_model()
    probabilities = model.predict(model_input[np.newaxis])[0]
    digit = int(probabilities.argmax())
    heatmap = occlusion_heatmap(model, model_input, digit)
    return {"digit": digit, "confidence": float(probabilities[digit]), "heatmap": np.round(heatmap, 4).tolist(),
            "overlay_png": overlay_png(model_input, heatmap), "model_version": model.version}


def _optional_digit(name: str) -> int | None:
    """Read an optional 0-9 form field, refusing anything else."""
    raw = request.form.get(name, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or not 0 <= int(raw) <= 9:
        abort(400, f"Form field '{name}' must be a digit 0-9, not {raw!r}.")
    return int(raw)


@bp.post("/feedback")
@bp.input(FeedbackForm, location="files", validation=False)
@bp.output(FeedbackCreated, status_code=201)
@bp.doc(summary="Report the right digit for an image the model got wrong",
        responses=error_responses({400: "Bad label or image", 413: "Upload too large"}))
def add_feedback(files_data: dict) -> tuple[dict, int]:
    """Store the image as sent with its right label, for a later retrain with include_feedback."""
    upload = request.files.get("file")
    if upload is None:
        abort(400, "No image in multipart field 'file': send the image and form field 'label' (0-9).")
    if "label" not in request.form:
        abort(400, "Form field 'label' is missing: send the right digit 0-9.")
    label = _optional_digit("label")
    if label is None:
        abort(400, "Form field 'label' must be a digit 0-9.")
    try:
        record = services().feedback.add(
            upload.read(), label, predicted=_optional_digit("predicted"),
            model_version=(request.form.get("model_version") or None), filename=upload.filename,
            max_pixels=current_app.config["MAX_IMAGE_PIXELS"],
        )
    except InvalidImageError as exc:
        abort(400, f"The image cannot be used: {exc.message}")
    return {"id": record["id"]}, 201


@bp.get("/feedback")
@bp.auth_required(auth)
@bp.output(FeedbackList)
@bp.doc(summary="List feedback records", responses=error_responses({401: "Missing or wrong admin token"}))
def list_feedback() -> dict:
    """List every feedback record."""
    return {"feedback": services().feedback.list()}


@bp.get("/feedback/export")
@bp.auth_required(auth)
@bp.doc(summary="Download feedback as a ZIP of folders 0-9 (the /upload_and_retrain layout)",
        responses={200: {"description": "ZIP archive", "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}}},
                   **error_responses({401: "Missing or wrong admin token"})})
def export_feedback() -> Response:
    """Return all feedback images as a ZIP in the 0/…9/ layout."""
    return send_file(io.BytesIO(services().feedback.export_zip()), mimetype="application/zip",
                     as_attachment=True, download_name="feedback.zip")
