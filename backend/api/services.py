"""Per-app services (model store, served model, settings) reached from request handlers."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from backend.feedback import FeedbackStore
from backend.inference import ActiveModel
from backend.jobs import JobStore
from backend.store import ModelStore


@dataclass
class Services:
    """What the handlers of one app share: created in create_app, never at import time."""

    store: ModelStore
    model: ActiveModel
    jobs: JobStore
    feedback: FeedbackStore


def services() -> Services:
    """Return the current app's services."""
    return current_app.extensions["digit_lab"]
