"""The Locust event listeners: file requests under their step and phase, reset and write the run's record, gate."""

from __future__ import annotations

import time
from typing import Any, Protocol, runtime_checkable

from locust import events
from locust.env import Environment

from benchmarks.locustkit import log
from benchmarks.locustkit.gate import judge
from benchmarks.locustkit.records import PREDICT_PREFIX, RUN

_STATE: dict[str, Environment | None] = {"env": None}  # Locust calls the request listener without it


@runtime_checkable
class SteppedShape(Protocol):
    """A load shape that adds users in steps (the locustfile's StepLoadShape)."""

    def current_step(self) -> tuple[int, bool]:
        """Return the step index and whether it has settled enough to be measured."""
        ...


def csv_prefix(environment: Environment) -> str | None:
    """Return the run's --csv prefix, or None without --csv."""
    return getattr(environment.parsed_options, "csv_prefix", None) if environment.parsed_options else None


def remember_env(environment: Environment, **kwargs: Any) -> None:
    """Keep the environment for the request listener."""
    _STATE["env"] = environment


def collect(name: str, response_time: float, exception: Exception | None, **kwargs: Any) -> None:
    """File each request under its load step and each /predict under its retrain phase."""
    environment = _STATE["env"]
    if environment is None:
        return
    now, failed = time.time(), exception is not None
    users = environment.runner.user_count if environment.runner else 0
    shape = environment.shape_class
    if isinstance(shape, SteppedShape):
        step, settled = shape.current_step()
        if settled:
            RUN.steps.add(step + 1, users, response_time, failed, now)
    if RUN.phase and name.startswith(PREDICT_PREFIX):
        RUN.phases.add(RUN.phase, users, response_time, failed, now)


def reset(environment: Environment, **kwargs: Any) -> None:
    """Drop users that --tags left without tasks, and start with an empty record."""
    # Locust has just filtered tasks by tag; a user class without tasks would fail to spawn.
    idle = [user.__name__ for user in environment.user_classes if not user.tasks]
    if idle:
        log.info("no tasks left after tag filtering, not running: %s", ", ".join(idle))
        environment.user_classes[:] = [user for user in environment.user_classes if user.tasks]
    RUN.reset()


def write_record(environment: Environment, **kwargs: Any) -> None:
    """Log which model versions served the run, and write the record next to Locust's CSVs (with --csv)."""
    for row in RUN.versions.rows():
        log.info(
            "model %s served %d checked responses from %.3f to %.3f",
            row["version"],
            row["responses"],
            row["first_seen"],
            row["last_seen"],
        )
    prefix = csv_prefix(environment)
    if prefix:
        RUN.write(prefix)


def gate(environment: Environment, **kwargs: Any) -> None:
    """Judge the run when Locust quits: final figures and the exit code."""
    judge(environment, csv_prefix(environment))


def register() -> None:
    """Add the listeners to Locust's events; the locustfile calls this once."""
    events.init.add_listener(remember_env)
    events.request.add_listener(collect)
    events.test_start.add_listener(reset)
    events.test_stop.add_listener(write_record)
    events.quitting.add_listener(gate)
