"""Request and response schemas: they drive both the OpenAPI document and response serialisation."""

from __future__ import annotations

from apiflask import Schema, fields
from apiflask.validators import OneOf


class Error(Schema):
    """Every error response."""

    error = fields.String(required=True, metadata={"description": "What is wrong and what to send instead."})


ERROR_SPEC = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}


def error_responses(descriptions: dict[int, str]) -> dict[int, dict]:
    """Document error statuses, each answered with the Error schema."""
    return {
        status: {"description": text, "content": {"application/json": {"schema": ERROR_SPEC}}}
        for status, text in descriptions.items()
    }


class ImageUpload(Schema):
    """One image as multipart field `file`."""

    file = fields.File(required=True, metadata={"description": "PNG, JPEG, BMP, GIF, WebP or TIFF, any size."})


class ImageJson(Schema):
    """One image as base64 in JSON, as canvas clients send it."""

    image = fields.String(required=True, metadata={"description": "Base64 image bytes, optionally a data: URL."})


class BatchUpload(Schema):
    """Several images as the repeated multipart field `files`."""

    files = fields.List(fields.File(), required=True, metadata={"description": "Up to MAX_BATCH_FILES images."})


class PredictQuery(Schema):
    """Options of /predict."""

    include = fields.String(
        load_default=None, validate=OneOf(["input"]), metadata={"description": "`input` adds the 28x28 array the model saw."}
    )


class Prediction(Schema):
    """One digit prediction."""

    digit = fields.Integer(required=True)
    confidence = fields.Float(required=True)
    probabilities = fields.List(fields.Float(), required=True, metadata={"description": "10 floats summing to 1."})
    model_version = fields.String(required=True)
    inference_ms = fields.Float(required=True)
    input = fields.List(fields.List(fields.Float()), metadata={"description": "28x28 model input, with ?include=input."})


class BatchPrediction(Schema):
    """Predictions in upload order."""

    predictions = fields.List(fields.Nested(Prediction), required=True)


class Health(Schema):
    """Liveness and the served model."""

    status = fields.String(required=True)
    model_version = fields.String(allow_none=True, required=True)


class ModelSummary(Schema):
    """One row of the model listing."""

    version = fields.String(required=True)
    created = fields.String(allow_none=True)
    parent = fields.String(allow_none=True)
    accuracy = fields.Float(allow_none=True)
    macro_f1 = fields.Float(allow_none=True)
    training_seconds = fields.Float(allow_none=True)
    data = fields.List(fields.Dict(), allow_none=True)
    active = fields.Boolean()


class ModelList(Schema):
    """All versions, newest first."""

    active = fields.String(allow_none=True, required=True)
    versions = fields.List(fields.Nested(ModelSummary), required=True)


class ModelMetadata(Schema):
    """A version's metadata.json: provenance, hyperparameters, history and test metrics."""

    version = fields.String(required=True)
    created = fields.String()
    parent = fields.String(allow_none=True)
    data = fields.Dict()
    hyperparameters = fields.Dict()
    training_seconds = fields.Float()
    history = fields.Dict(keys=fields.String(), values=fields.List(fields.Float()))
    test_metrics = fields.Dict()
    architecture = fields.Dict()
    environment = fields.Dict()
    promotion = fields.Dict(metadata={"description": "The promotion gate's before/after comparison, if any."})
