"""Prediction endpoints: one image, a batch, both through the shared stem and one model call."""

from __future__ import annotations

import base64
import binascii
import time

import numpy as np
from apiflask import APIBlueprint, abort
from flask import current_app, request
from PIL import Image

from backend.core import budget
from backend.core.inference import LiteModel
from backend.core.preprocessing import (
    MNIST_SIDE,
    InvalidImageError,
    decoded_pixels,
    load_image,
    open_image,
    preprocess_image,
)
from backend.web.api.schemas import (
    BatchPrediction,
    BatchUpload,
    ImageUpload,
    Prediction,
    PredictQuery,
    error_responses,
)
from backend.web.api.services import services
from backend.web.observability import record_predictions

bp = APIBlueprint("predict", __name__, tag="Predict")

ERRORS = error_responses(
    {
        400: "Missing field, or an image that cannot be read",
        413: "Upload over MAX_UPLOAD_MB, or an image over MAX_IMAGE_PIXELS (a batch over MAX_BATCH_PIXELS)",
        422: "A blank image: no digit stands out",
        503: "No model version is active yet, or the request ran over its time budget (see Retry-After)",
    }
)
MAX_FIELDS_NAMED = 5  # an error names a few of the fields received, never thousands
SEND_INSTEAD = 'Send the image as multipart/form-data field \'file\', or as JSON {"image": "<base64>"}.'


def image_from_request() -> bytes:
    """Return the uploaded image bytes from multipart field `file` or JSON `image`."""
    if request.is_json:
        payload = request.get_json(silent=True)
        encoded = payload.get("image") if isinstance(payload, dict) else None
        if not isinstance(encoded, str) or not encoded:
            abort(400, f"The JSON body has no string field 'image'. {SEND_INSTEAD}")
        if encoded.startswith("data:"):
            encoded = encoded.partition(",")[2]
        try:
            return base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            abort(400, "The 'image' field is not valid base64: encode the image file bytes with base64.")
    upload = request.files.get("file")
    if upload is None:
        received = sorted(map(str, request.files)) or sorted(map(str, request.form))  # a part may lack a name
        named = ", ".join(name[:40] for name in received[:MAX_FIELDS_NAMED])
        more = f" and {len(received) - MAX_FIELDS_NAMED} more" if len(received) > MAX_FIELDS_NAMED else ""
        found = f" (received fields: {named}{more})" if received else ""
        abort(400, f"No image in field 'file'{found}. {SEND_INSTEAD}")
    return upload.read()


def open_upload(data: bytes, label: str = "") -> Image.Image:
    """Read an upload's header only, turning a refusal into a JSON 4xx."""
    try:
        return open_image(data, max_pixels=current_app.config["MAX_IMAGE_PIXELS"])
    except InvalidImageError as exc:
        abort(exc.status, f"{label}{exc.message}")


def stem_images(images: list[Image.Image], labels: list[str]) -> np.ndarray:
    """Decode opened images and run the stem on each, within the request's time budget and the heavy-image lane."""
    inputs = np.zeros((len(images), MNIST_SIDE, MNIST_SIDE), np.float32)
    pixels = sum(decoded_pixels(image) for image in images)
    with budget.heavy_lane(pixels, current_app.config["HEAVY_IMAGE_PIXELS"]):
        for i, (image, label) in enumerate(zip(images, labels)):
            try:
                inputs[i] = preprocess_image(load_image(image))
            except InvalidImageError as exc:
                abort(exc.status, f"{label}{exc.message}")
            finally:
                image.close()  # free the decoded pixels now, not when the whole batch is done
            budget.check("the batch")
    return inputs


def stem_upload(data: bytes) -> np.ndarray:
    """Run one uploaded image through the stem, answering any refusal as JSON."""
    return stem_images([open_upload(data)], [""])[0]


def served_model() -> LiteModel:
    """Return the model for this request, or a 503 when none is active."""
    model = services().model.current()
    if model is None:
        abort(503, "No model version is active yet: train one with `python -m backend.train` or activate one.")
    return model


def prediction(
    probabilities: np.ndarray, version: str, inference_ms: float, model_input: np.ndarray | None = None
) -> dict:
    """Shape one row of probabilities as the API's prediction object."""
    digit = int(np.argmax(probabilities))
    result = {
        "digit": digit,
        "confidence": float(probabilities[digit]),
        "probabilities": [float(p) for p in probabilities],
        "model_version": version,
        "inference_ms": round(inference_ms, 4),
    }
    if model_input is not None:
        result["input"] = np.round(model_input, 4).tolist()
    return result


# /predict is the hot path: its schemas document the API, while the handler checks the one query
# option itself and returns plain JSON, skipping per-request marshmallow work.
@bp.post("/predict")
@bp.input(ImageUpload, location="files", validation=False)
@bp.input(PredictQuery, location="query", arg_name="query", validation=False)
@bp.doc(
    summary="Predict the digit in one image",
    responses={
        200: {
            "description": "The digit, its confidence and all ten probabilities",
            "content": {"application/json": {"schema": Prediction}},
        },
        **ERRORS,
    },
)
def predict(files_data: dict, query: dict) -> dict:
    """Predict one image sent as multipart `file` or JSON `{"image": base64}`."""
    include = request.args.get("include")
    if include not in (None, "input"):
        abort(400, f"query.include: must be 'input' (got {include!r}).")
    model_input = stem_upload(image_from_request())
    model = served_model()
    started = time.perf_counter()
    probabilities = model.predict(model_input[np.newaxis])[0]
    inference_ms = (time.perf_counter() - started) * 1000
    record_predictions([int(np.argmax(probabilities))])
    return prediction(probabilities, model.version, inference_ms, model_input if include == "input" else None)


@bp.post("/predict/batch")
@bp.input(BatchUpload, location="files", validation=False)
@bp.output(BatchPrediction, description="One prediction per file, in upload order")
@bp.doc(summary="Predict many images with one model call", responses=ERRORS)
def predict_batch(files_data: dict) -> dict:
    """Predict every image of the repeated multipart field `files`."""
    uploads = request.files.getlist("files")
    limit = current_app.config["MAX_BATCH_FILES"]
    if not uploads:
        abort(400, "No images in the repeated multipart field 'files': send one or more image files as 'files'.")
    if len(uploads) > limit:
        abort(413, f"{len(uploads)} files is over the batch limit of {limit}: split them into smaller batches.")
    labels = [f"files[{i}] ({upload.filename}): " for i, upload in enumerate(uploads)]
    images = [open_upload(upload.read(), label) for upload, label in zip(uploads, labels)]
    pixels = sum(decoded_pixels(image) for image in images)
    batch_limit = current_app.config["MAX_BATCH_PIXELS"]
    if pixels > batch_limit:
        abort(
            413,
            f"The batch holds {pixels:,} pixels, over the limit of {batch_limit:,} (MAX_BATCH_PIXELS): "
            "send smaller images, or split them into smaller batches.",
        )
    inputs = stem_images(images, labels)
    model = served_model()
    started = time.perf_counter()
    probabilities = model.predict(inputs)
    inference_ms = (time.perf_counter() - started) * 1000 / len(inputs)
    record_predictions([int(row.argmax()) for row in probabilities])
    return {"predictions": [prediction(row, model.version, inference_ms) for row in probabilities]}
