"""Per-app services (model store, served model, settings) reached from request handlers."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from backend.core.inference import ActiveModel
from backend.core.store import ModelStore
from backend.data.feedback import FeedbackStore
from backend.data.fleet import Replicas
from backend.data.jobs import JobStore


@dataclass
class Services:
    """What the handlers of one app share: created in create_app, never at import time."""

    store: ModelStore
    model: ActiveModel
    jobs: JobStore
    feedback: FeedbackStore
    replicas: Replicas


def services() -> Services:
    """Return the current app's services."""
    return current_app.extensions["digit_lab"]
