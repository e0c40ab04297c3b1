"""Request and response schemas: they drive both the OpenAPI document and response serialisation."""

from __future__ import annotations

from apiflask import Schema, fields
from apiflask.validators import Length, OneOf, Range, Regexp

from backend.core.inference import HEALTH_STATES
from backend.data.feedback import MAX_TEXT_CHARS, PENDING, STATUSES
from backend.data.jobs import DEFAULT_EPOCHS, JOB_MODES, LOCAL_JOBS, MAX_EPOCHS, QUEUED_JOBS, UNFINISHED
from backend.data.jobs import STATUSES as JOB_STATUSES
from backend.data.retention import DEFAULT_KEEP, LOG_KEEP_DAYS


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
        load_default=None,
        validate=OneOf(["input"]),
        metadata={"description": "`input` adds the 28x28 array the model saw."},
    )


class Prediction(Schema):
    """One digit prediction."""

    digit = fields.Integer(required=True)
    confidence = fields.Float(required=True)
    probabilities = fields.List(fields.Float(), required=True, metadata={"description": "10 floats summing to 1."})
    model_version = fields.String(required=True)
    inference_ms = fields.Float(required=True)
    input = fields.List(
        fields.List(fields.Float()), metadata={"description": "28x28 model input, with ?include=input."}
    )


class BatchPrediction(Schema):
    """Predictions in upload order."""

    predictions = fields.List(fields.Nested(Prediction), required=True)


class Health(Schema):
    """Liveness (or readiness) and the served model."""

    status = fields.String(required=True, validate=OneOf(HEALTH_STATES))
    model_version = fields.String(allow_none=True, required=True)
    reason = fields.String(
        metadata={"description": "Why the worker is degraded or not ready; absent when all is well."}
    )


class PruneRequest(Schema):
    """What the retention policy keeps; all optional."""

    keep = fields.Integer(
        load_default=DEFAULT_KEEP,
        validate=Range(0, 10_000),
        metadata={"description": "Newest versions kept besides the active one and its parent."},
    )
    log_days = fields.Float(
        load_default=LOG_KEEP_DAYS,
        validate=Range(0, 36_500),
        metadata={"description": "Job logs of ended jobs not written for this many days are deleted."},
    )


class PruneResult(Schema):
    """What a prune removed."""

    versions = fields.List(fields.String(), required=True, metadata={"description": "Removed model versions."})
    incoming = fields.List(
        fields.String(), required=True, metadata={"description": "Removed abandoned .incoming-* folders."}
    )
    job_logs = fields.List(fields.String(), required=True, metadata={"description": "Removed job log files."})


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
    holdout_metrics = fields.Dict(
        metadata={"description": "Accuracy on uploaded hold-out sets, for fine-tuned versions."}
    )
    job = fields.String(metadata={"description": "The job that trained this version, if any."})


START_POINTS = ["scratch", "active"]  # a fresh network, or fine-tuning the active version


class RetrainRequest(Schema):
    """Options of a retraining job; all optional."""

    epochs = fields.Integer(
        load_default=None,
        validate=Range(1, MAX_EPOCHS),
        allow_none=True,
        metadata={
            "description": f"Default {DEFAULT_EPOCHS['active']} from the active model, "
            f"{DEFAULT_EPOCHS['scratch']} from scratch.",
            # Machine-readable for clients such as the dashboard, which cannot import the backend.
            "x-default-by-from": {start: DEFAULT_EPOCHS[start] for start in START_POINTS},
        },
    )
    from_ = fields.String(data_key="from", load_default="active", validate=OneOf(START_POINTS))
    include_uploads = fields.Boolean(load_default=False)
    include_feedback = fields.Boolean(load_default=False)
    seed = fields.Integer(load_default=42, validate=Range(0, 2**31 - 1))


class ZipUpload(Schema):
    """A ZIP of folders 0-9 as multipart field `file` (or `zipfile`)."""

    file = fields.File(
        metadata={"description": "ZIP with folders 0-9 of digit images (at its root or in one top folder)."}
    )
    zipfile = fields.File(metadata={"description": "Accepted instead of `file` for older clients."})
    epochs = fields.Integer(
        validate=Range(1, MAX_EPOCHS),
        metadata={
            "description": f"Fine-tuning epochs, ASCII digits (default {DEFAULT_EPOCHS['upload']}).",
            "default": DEFAULT_EPOCHS["upload"],
        },
    )


class SkippedFile(Schema):
    """A ZIP entry that was not used, and why."""

    name = fields.String()
    reason = fields.String()


class DatasetSummary(Schema):
    """A stored upload."""

    id = fields.String(required=True)
    images = fields.Integer(required=True)
    per_class = fields.Dict(keys=fields.String(), values=fields.Integer(), required=True)
    skipped = fields.List(fields.Nested(SkippedFile), required=True)
    holdout_images = fields.Integer()
    created = fields.String()
    filename = fields.String()


class JobAccepted(Schema):
    """A job was queued."""

    job_id = fields.String(required=True)
    status_url = fields.String(required=True)
    dataset = fields.Nested(DatasetSummary)


class Job(Schema):
    """A training job and everything it has reported."""

    id = fields.String(required=True)
    kind = fields.String(required=True)
    status = fields.String(
        required=True,
        validate=OneOf(JOB_STATUSES),
        metadata={
            "description": f"{' and '.join(UNFINISHED)} jobs still change (x-unfinished); the other states are final.",
            "x-unfinished": list(UNFINISHED),
        },
    )
    params = fields.Dict()
    created = fields.String()
    started = fields.String(allow_none=True)
    finished = fields.String(allow_none=True)
    epoch = fields.Integer()
    epochs = fields.Integer()
    progress = fields.Float()
    history = fields.Dict(keys=fields.String(), values=fields.List(fields.Float()))
    log = fields.List(fields.String())
    result = fields.Dict(allow_none=True)
    error = fields.String(allow_none=True)
    worker = fields.String(
        allow_none=True, metadata={"description": "host:pid of the process that ran the job; null until it starts."}
    )


class JobList(Schema):
    """Jobs, newest first."""

    jobs = fields.List(fields.Nested(Job), required=True)


class Activation(Schema):
    """The outcome of activating a version."""

    active = fields.String(required=True)
    previous = fields.String(allow_none=True)


class Replica(Schema):
    """One API worker of the fleet, as it last reported itself."""

    id = fields.String(required=True, metadata={"description": "host:pid"})
    host = fields.String(required=True)
    pid = fields.Integer(required=True)
    version = fields.String(allow_none=True, required=True, metadata={"description": "The model version it serves."})
    started = fields.String(required=True)
    last_seen = fields.String(required=True)


class Trainer(Schema):
    """One trainer (`python -m backend.worker`), as RQ last heard from it."""

    name = fields.String(required=True)
    host = fields.String(allow_none=True)
    pid = fields.Integer(allow_none=True)
    state = fields.String(required=True, metadata={"description": "RQ's worker state: idle, busy, ..."})
    job = fields.String(allow_none=True, metadata={"description": "The job it is running, if any."})
    last_seen = fields.String(allow_none=True)


class Fleet(Schema):
    """Every live replica worker and trainer, and whether all replicas serve the active version."""

    active = fields.String(allow_none=True, required=True)
    database = fields.String(required=True, metadata={"description": "sqlite (one host) or postgresql (a fleet)."})
    jobs = fields.String(
        required=True,
        validate=OneOf(JOB_MODES),
        metadata={
            "description": f"{LOCAL_JOBS}: a process per job on the API host; {QUEUED_JOBS}: trainers on Redis.",
            "x-local": LOCAL_JOBS,
        },
    )
    converged = fields.Boolean(required=True, metadata={"description": "Every live replica serves the active version."})
    replicas = fields.List(fields.Nested(Replica), required=True)
    trainers = fields.List(fields.Nested(Trainer), required=True)


class DatasetList(Schema):
    """Stored uploads, oldest first."""

    datasets = fields.List(fields.Nested(DatasetSummary), required=True)


class SequenceItem(Schema):
    """One digit read from a row."""

    digit = fields.Integer(required=True)
    confidence = fields.Float(required=True)
    box = fields.List(
        fields.Integer(), required=True, metadata={"description": "[x, y, width, height] in image pixels."}
    )


class SequencePrediction(Schema):
    """The digits of a row, left to right."""

    digits = fields.String(required=True)
    items = fields.List(fields.Nested(SequenceItem), required=True)
    model_version = fields.String(required=True)


class Explanation(Schema):
    """Which pixels drove a prediction (occlusion saliency)."""

    digit = fields.Integer(required=True)
    confidence = fields.Float(required=True)
    heatmap = fields.List(fields.List(fields.Float()), required=True, metadata={"description": "28x28, 0-1."})
    overlay_png = fields.String(required=True, metadata={"description": "Base64 PNG of the heatmap over the input."})
    model_version = fields.String(required=True)


DIGIT_PATTERN = "^[0-9]$"  # one ASCII digit: str.isdigit() would also let through '²' or '٣'


class FeedbackForm(Schema):
    """A wrongly predicted image and its right label."""

    file = fields.File(
        required=True, metadata={"description": "The image as sent to /predict; only its 28x28 model input is kept."}
    )
    label = fields.String(
        required=True, validate=Regexp(DIGIT_PATTERN), metadata={"description": "The right digit, ASCII 0-9."}
    )
    predicted = fields.String(
        validate=Regexp(DIGIT_PATTERN), metadata={"description": "What the model answered, ASCII 0-9."}
    )
    model_version = fields.String(
        validate=Length(max=MAX_TEXT_CHARS), metadata={"description": "The version that answered."}
    )


class FeedbackCreated(Schema):
    """The stored (or already stored) feedback record."""

    id = fields.String(required=True)
    status = fields.String(required=True, validate=OneOf(STATUSES))
    duplicate = fields.Boolean(
        required=True, metadata={"description": "True when the same image and label were already stored."}
    )


class FeedbackRecord(Schema):
    """One stored feedback image."""

    id = fields.String(required=True)
    created = fields.String()
    label = fields.Integer()
    predicted = fields.Integer(allow_none=True)
    model_version = fields.String(allow_none=True)
    filename = fields.String(allow_none=True)
    path = fields.String()
    sha256 = fields.String(
        metadata={"description": "Hash of the stored 28x28 grey levels (the dedupe key, with label)."}
    )
    status = fields.String(
        validate=OneOf(STATUSES),
        metadata={
            "description": "Review state; only accepted feedback is trained on. New records start in x-initial.",
            "x-initial": PENDING,
        },
    )
    bytes = fields.Integer(metadata={"description": "Stored size, counted against FEEDBACK_MAX_MB."})


class FeedbackList(Schema):
    """Feedback records, oldest first, and the storage they use."""

    feedback = fields.List(fields.Nested(FeedbackRecord), required=True)
    counts = fields.Dict(
        keys=fields.String(),
        values=fields.Integer(),
        required=True,
        metadata={"description": "Records per review status, whatever the filter."},
    )
    used_bytes = fields.Integer(required=True)
    quota_bytes = fields.Integer(required=True, metadata={"description": "FEEDBACK_MAX_MB in bytes."})


class FeedbackQuery(Schema):
    """Which feedback to list or export."""

    status = fields.String(
        load_default=None, validate=OneOf(STATUSES), metadata={"description": "Only records in this review state."}
    )
    limit = fields.Integer(
        load_default=None, validate=Range(1, 100_000), metadata={"description": "At most this many, oldest first."}
    )


class FeedbackReview(Schema):
    """An admin's verdict on one feedback record."""

    status = fields.String(required=True, validate=OneOf(STATUSES))
