"""The Locust event listeners: file requests under their step and phase, reset and write the run's record, gate.

In distributed mode (--processes, or --master with --worker nodes) requests happen on the workers: each
sends its record to the master when its test stops, the master merges and writes them and runs the gate,
a job's phase change goes through the master to every worker, and a worker's request to end the run early
(LOCUST_STOP_AFTER_JOB) makes the master quit.
"""

from __future__ import annotations

import time
from typing import Any, Protocol, runtime_checkable

from locust import events
from locust.env import Environment
from locust.rpc import Message
from locust.runners import MasterRunner, WorkerRunner

from benchmarks.locustkit import log
from benchmarks.locustkit.gate import judge
from benchmarks.locustkit.records import PHASE_BEFORE, PREDICT_PREFIX, RUN
from benchmarks.locustkit.settings import ADMIN_CLASS

_STATE: dict[str, Environment | None] = {"env": None}  # Locust calls the request listener without it
START_MESSAGE = "digitlab_start"  # master -> every worker: the epoch second the test and its load shape started
RECORD_MESSAGE = "digitlab_record"  # worker -> master: the worker's RunRecord when its test stops
PHASE_MESSAGE = "digitlab_phase"  # worker -> master -> every worker: the phase /predict requests now belong to
END_MESSAGE = "digitlab_end_run"  # worker -> master: end the whole run now


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
    """Keep the environment for the request listener; in distributed mode, listen for the messages above."""
    _STATE["env"] = environment
    runner = environment.runner
    if isinstance(runner, MasterRunner):
        runner.register_message(RECORD_MESSAGE, receive_record)
        runner.register_message(PHASE_MESSAGE, relay_phase)
        runner.register_message(END_MESSAGE, end_requested, concurrent=True)  # quitting stops the message loop
    elif isinstance(runner, WorkerRunner):
        runner.register_message(START_MESSAGE, receive_start)
        runner.register_message(PHASE_MESSAGE, receive_phase)


def share_phase(environment: Environment, phase: str) -> None:
    """On a worker, tell every other worker (through the master) that /predict requests now count under `phase`."""
    if isinstance(environment.runner, WorkerRunner):
        environment.runner.send_message(PHASE_MESSAGE, phase)


def end_run(environment: Environment) -> None:
    """End the whole run now: quit here, or on a worker ask the master to."""
    if isinstance(environment.runner, WorkerRunner):
        environment.runner.send_message(END_MESSAGE)
    else:
        environment.runner.quit()


def receive_record(environment: Environment, msg: Message, **kwargs: Any) -> None:
    """Master: merge a worker's record into the run's and rewrite its files."""
    RUN.merge(msg.data)
    prefix = csv_prefix(environment)
    if prefix:
        RUN.write(prefix)


def receive_start(environment: Environment, msg: Message, **kwargs: Any) -> None:
    """Worker: count load steps from the master's start, not from when the first users reached this worker."""
    # Users added at a step start their first request at once; on a clock even 0.1 s late they would
    # land in the step before.
    if environment.shape_class is not None:
        environment.shape_class.start_time = time.perf_counter() - (time.time() - msg.data)


def relay_phase(environment: Environment, msg: Message, **kwargs: Any) -> None:
    """Master: pass a worker's phase change on to every worker."""
    environment.runner.send_message(PHASE_MESSAGE, msg.data)


def receive_phase(environment: Environment, msg: Message, **kwargs: Any) -> None:
    """Worker: count /predict requests under the phase another worker's job entered."""
    RUN.phase = msg.data


def end_requested(environment: Environment, msg: Message, **kwargs: Any) -> None:
    """Master: a worker asked to end the run."""
    log.info("a worker asked to end the run")
    environment.runner.quit()


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
    """Drop users that --tags left without tasks, and start with an empty record (in the first phase with a job)."""
    # Locust has just filtered tasks by tag; a user class without tasks would fail to spawn.
    idle = [user.__name__ for user in environment.user_classes if not user.tasks]
    if idle:
        log.info("no tasks left after tag filtering, not running: %s", ", ".join(idle))
        environment.user_classes[:] = [user for user in environment.user_classes if user.tasks]
    if isinstance(environment.runner, MasterRunner):
        environment.runner.send_message(START_MESSAGE, time.time())  # reaches each worker before its first users
    RUN.reset()
    if any(user.__name__ == ADMIN_CLASS and user.fixed_count for user in environment.user_classes):
        RUN.phase = PHASE_BEFORE  # every worker, not only the AdminUser's, counts /predict from the first request


def finish_test(environment: Environment, **kwargs: Any) -> None:
    """A test stopped: a worker sends its record to the master, others write theirs."""
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        runner.send_message(RECORD_MESSAGE, RUN.export())
    elif isinstance(runner, MasterRunner):
        prefix = csv_prefix(environment)
        if prefix:  # on --run-time the workers only stop after this; receive_record rewrites it
            RUN.write(prefix)
    else:
        write_record(environment)


def write_record(environment: Environment) -> None:
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
    """Judge the run when Locust quits: final figures and the exit code (the master's, in distributed mode)."""
    if isinstance(environment.runner, WorkerRunner):
        return  # a worker sees only its share; the master judges the whole run
    if isinstance(environment.runner, MasterRunner):
        write_record(environment)  # complete now: Locust's quit waits for the workers' last messages
    judge(environment, csv_prefix(environment))


def register() -> None:
    """Add the listeners to Locust's events; the locustfile calls this once."""
    events.init.add_listener(remember_env)
    events.request.add_listener(collect)
    events.test_start.add_listener(reset)
    events.test_stop.add_listener(finish_test)
    events.quitting.add_listener(gate)
