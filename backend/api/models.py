"""Read-only model endpoints and operational ones: health, the active model, the version list, metrics."""

from __future__ import annotations

from apiflask import APIBlueprint, abort
from flask import Response

from backend.api.schemas import Health, ModelList, ModelMetadata, error_responses
from backend.api.services import services
from backend.observability import metrics_response
from backend.store import VersionNotFoundError

bp = APIBlueprint("models", __name__, tag="Models")


@bp.get("/health")
@bp.output(Health)
@bp.doc(summary="Liveness and the model version this worker serves", responses={503: {"description": "No model is active", "content": {"application/json": {"schema": Health}}}})
def health() -> tuple[dict, int]:
    """Report whether a model is loaded, and which."""
    model = services().model.current()
    if model is None:
        return {"status": "no-model", "model_version": None}, 503
    return {"status": "ok", "model_version": model.version}, 200


@bp.get("/model")
@bp.output(ModelMetadata)
@bp.doc(summary="The active version's metadata: metrics, history, confusion matrix", responses=error_responses({404: "No model version is active"}))
def active_model() -> dict:
    """Return the active version's metadata.json."""
    version = services().store.active_version()
    if version is None:
        abort(404, "No model version is active yet: train one with `python -m backend.train`.")
    return services().store.metadata(version)


@bp.get("/models")
@bp.output(ModelList)
@bp.doc(summary="Every stored version, newest first")
def list_models() -> dict:
    """List versions with their headline metrics and provenance."""
    store = services().store
    active = store.active_version()
    return {"active": active, "versions": [{**row, "active": row["version"] == active} for row in store.summaries()]}


@bp.get("/models/<version>")
@bp.output(ModelMetadata)
@bp.doc(summary="One version's metadata", responses=error_responses({404: "No such version"}))
def model_version(version: str) -> dict:
    """Return a stored version's metadata.json."""
    try:
        return services().store.metadata(version)
    except VersionNotFoundError as exc:
        abort(404, f"{exc} GET /models lists the versions.")


@bp.get("/metrics")
@bp.doc(summary="Prometheus metrics", responses={200: {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}})
def metrics() -> Response:
    """Expose request, prediction and model-reload metrics for Prometheus."""
    return metrics_response()
