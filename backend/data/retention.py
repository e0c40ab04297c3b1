"""Retention: which versions, leftovers and job logs may go. `python -m backend.store prune --keep N` runs it.

Rejected candidates (versions whose job ended without promoting them) and versions beyond the N
newest are removed; never the active version, its parent, or a version an unfinished job may be
publishing. Abandoned `.incoming-*` folders and logs of long-ended jobs go too.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from backend.core.config import Settings
from backend.core.store import ModelStore
from backend.data.fleet import model_store
from backend.data.jobs import CANCELLED, FAILED, REJECTED, UNFINISHED, JobStore

DEFAULT_KEEP = 5  # versions kept by prune besides the active one and its parent
LOG_KEEP_DAYS = 30.0  # job logs not written for this long are pruned
INCOMING_MAX_AGE_MINUTES = 60.0  # an `.incoming-*` folder this old, whose writer is gone, is debris
UNPROMOTED_JOB_ENDS = (REJECTED, CANCELLED, FAILED)  # a version trained by a job that ended so is a rejected candidate


def prune(
    models: ModelStore,
    jobs: JobStore,
    keep: int = DEFAULT_KEEP,
    log_days: float = LOG_KEEP_DAYS,
    incoming_minutes: float = INCOMING_MAX_AGE_MINUTES,
) -> dict[str, list[str]]:
    """Apply the retention policy to a model store and its job store; return what was removed."""
    statuses = jobs.statuses()  # read before listing versions, so a version published meanwhile is not judged
    busy = {job_id for job_id, status in statuses.items() if status in UNFINISHED}
    unpromoted = {job_id for job_id, status in statuses.items() if status in UNPROMOTED_JOB_ENDS}
    return {
        "versions": models.prune(keep, busy, unpromoted),
        "incoming": models.prune_incoming(incoming_minutes),
        "job_logs": jobs.prune_logs(log_days),
    }


def main(argv: list[str] | None = None) -> int:
    """Command line: `python -m backend.store prune --keep N`."""
    settings = Settings()
    parser = argparse.ArgumentParser(prog="python -m backend.store", description="Maintain the model store.")
    commands = parser.add_subparsers(dest="command", required=True)
    pruner = commands.add_parser("prune", help="remove rejected candidates, old versions, leftovers and old job logs")
    pruner.add_argument(
        "--keep",
        type=int,
        default=DEFAULT_KEEP,
        help="newest versions to keep besides the active one and its parent (default %(default)s)",
    )
    pruner.add_argument(
        "--log-days",
        type=float,
        default=LOG_KEEP_DAYS,
        help="delete job logs of ended jobs not written for this many days (default %(default)s)",
    )
    pruner.add_argument(
        "--incoming-minutes",
        type=float,
        default=INCOMING_MAX_AGE_MINUTES,
        help="delete abandoned .incoming-* folders older than this (default %(default)s)",
    )
    pruner.add_argument("--model-dir", type=Path, default=settings.model_dir, help="default: MODEL_DIR")
    pruner.add_argument("--data-dir", type=Path, default=settings.data_dir, help="default: DATA_DIR")
    args = parser.parse_args(argv)
    if args.keep < 0 or args.log_days < 0 or args.incoming_minutes < 0:
        parser.error("--keep, --log-days and --incoming-minutes must not be negative")
    settings = replace(settings, model_dir=args.model_dir, data_dir=args.data_dir)
    removed = prune(
        model_store(settings), JobStore.from_settings(settings), args.keep, args.log_days, args.incoming_minutes
    )
    print(json.dumps(removed, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
