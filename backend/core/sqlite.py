"""The one way the service opens its SQLite tables (jobs, feedback): autocommit, rows as mappings, waiting on locks."""

from __future__ import annotations

import os
import sqlite3

LOCK_WAIT_SECONDS = 30  # several workers and job processes write the same file; wait for the lock, never fail at once


def connect(path: str | os.PathLike) -> sqlite3.Connection:
    """Open `path` in autocommit mode (transactions are explicit BEGIN IMMEDIATE), rows readable by column name."""
    db = sqlite3.connect(path, timeout=LOCK_WAIT_SECONDS, isolation_level=None)
    db.row_factory = sqlite3.Row
    return db
