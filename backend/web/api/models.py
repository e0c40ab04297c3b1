"""Read-only model endpoints and operational ones: health, readiness, the active model, the version list,
metrics, and the retention policy (prune)."""

from __future__ import annotations

from apiflask import APIBlueprint, abort
from flask import Response

from backend.core.inference import NO_MODEL, NOT_READY, READY
from backend.core.store import VersionNotFoundError
from backend.data.retention import prune
from backend.web.api.auth import auth
from backend.web.api.schemas import (
    Health,
    ModelList,
    ModelMetadata,
    PruneRequest,
    PruneResult,
    error_responses,
)
from backend.web.api.services import services
from backend.web.observability import metrics_response

bp = APIBlueprint("models", __name__, tag="Models")


@bp.get("/health")
@bp.output(Health)
@bp.doc(
    summary="Liveness and the model version this worker serves",
    description="200 with `ok`, or `degraded` and a `reason` while the worker serves an older version than "
    "ACTIVE names because the new one failed to load. 503 `no-model` while it has no model at all.",
    responses={503: {"description": "No model is loaded", "content": {"application/json": {"schema": Health}}}},
)
def health() -> tuple[dict, int]:
    """Report whether a model is loaded, which, and whether it is the one ACTIVE names."""
    state = services().model.health()
    return state, 503 if state["status"] == NO_MODEL else 200


@bp.get("/ready")
@bp.output(Health)
@bp.doc(
    summary="Readiness: a model is loaded and the model store is readable",
    description="For load balancers and orchestrators: route traffic here only on 200.",
    responses={503: {"description": "Not ready, with the reason", "content": {"application/json": {"schema": Health}}}},
)
def ready() -> tuple[dict, int]:
    """Report whether this worker can serve predictions now."""
    model = services().model.current()
    reason = services().model.health()["reason"] if model is None else services().store.problem()
    if reason is not None:
        return {"status": NOT_READY, "model_version": getattr(model, "version", None), "reason": reason}, 503
    return {"status": READY, "model_version": model.version}, 200


@bp.get("/model")
@bp.output(ModelMetadata)
@bp.doc(
    summary="The active version's metadata: metrics, history, confusion matrix",
    responses=error_responses({404: "No model version is active"}),
)
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
@bp.doc(
    summary="Prometheus metrics",
    responses={
        200: {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}
    },
)
def metrics() -> Response:
    """Expose request, prediction and model-reload metrics for Prometheus."""
    return metrics_response()


@bp.post("/models/prune")
@bp.auth_required(auth)
@bp.input(PruneRequest, location="json", arg_name="options")
@bp.output(PruneResult)
@bp.doc(
    summary="Apply the retention policy: remove rejected candidates, old versions, leftovers and old job logs",
    description="Never removes the active version, its parent, or a version an unfinished job may be publishing. "
    "The same as `python -m backend.store prune --keep N`.",
    responses=error_responses({400: "Bad options", 401: "Missing or wrong admin token"}),
)
def prune_models(options: dict) -> dict:
    """Remove what the retention policy no longer keeps, and list it."""
    return prune(services().store, services().jobs, keep=options["keep"], log_days=options["log_days"])
