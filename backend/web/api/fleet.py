"""GET /fleet: every live replica worker with the version it serves, every trainer, and whether they agree."""

from __future__ import annotations

from apiflask import APIBlueprint

from backend.web.api.schemas import Fleet
from backend.web.api.services import services

bp = APIBlueprint("fleet", __name__, tag="Models")


@bp.get("/fleet")
@bp.output(Fleet)
@bp.doc(
    summary="The replicas and trainers, and the version each replica serves",
    description="Each API worker reports itself every second; one not heard from for 10 s is left out. "
    "While a new version rolls out, `converged` is false until every replica serves it.",
)
def fleet() -> dict:
    """List the live replica workers and trainers."""
    state = services()
    active = state.store.active_version()
    replicas = state.replicas.live()
    trainers = []
    if state.jobs.queue_url:
        from backend.data import queue

        trainers = queue.trainers(state.jobs.queue_url)
    return {
        "active": active,
        "database": state.jobs.engine.dialect.name,
        "jobs": state.jobs.mode,
        "converged": all(replica["version"] == active for replica in replicas),
        "replicas": replicas,
        "trainers": trainers,
    }
