"""The tables: jobs, feedback, the fleet's active version, and replicas; imports a single-host install's data.

Before this schema, jobs and feedback lived in DATA_DIR/jobs.sqlite3 and DATA_DIR/feedback.sqlite3.
On SQLite their rows are copied in here; the old files stay where they are, untouched.

Revision ID: 0001
Revises:
"""

import sqlite3
from contextlib import closing
from pathlib import Path

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

FEEDBACK_DEFAULTS = {"status": "pending", "stored": "as-sent"}  # what rows from before the review state were


def upgrade() -> None:
    """Create the tables and the one-unfinished-job index, then import the old SQLite files."""
    op.create_table(
        "jobs",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.Text, nullable=False, unique=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("params", sa.Text, nullable=False),
        sa.Column("created", sa.Text, nullable=False),
        sa.Column("started", sa.Text),
        sa.Column("finished", sa.Text),
        sa.Column("pid", sa.Integer),
        sa.Column("worker", sa.Text),
        sa.Column("heartbeat", sa.Float),
        sa.Column("epoch", sa.Integer, nullable=False, server_default="0"),
        sa.Column("epochs", sa.Integer, nullable=False, server_default="0"),
        sa.Column("progress", sa.Float, nullable=False, server_default="0"),
        sa.Column("history", sa.Text, nullable=False, server_default="{}"),
        sa.Column("log", sa.Text, nullable=False, server_default="[]"),
        sa.Column("result", sa.Text),
        sa.Column("error", sa.Text),
    )
    # One queued or running job in the whole fleet: a second insert or start fails in the database itself.
    op.execute(
        "CREATE UNIQUE INDEX one_unfinished_job ON jobs ((status IN ('queued', 'running'))) "
        "WHERE status IN ('queued', 'running')"
    )
    op.create_table(
        "feedback",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.Text, nullable=False, unique=True),
        sa.Column("created", sa.Text, nullable=False),
        sa.Column("label", sa.Integer, nullable=False),
        sa.Column("predicted", sa.Integer),
        sa.Column("model_version", sa.Text),
        sa.Column("filename", sa.Text),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("sha256", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("stored", sa.Text, nullable=False),
    )
    op.create_index("feedback_content", "feedback", ["sha256", "label"])
    op.create_table(
        "active_model",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("version", sa.Text, nullable=False),
        sa.Column("previous", sa.Text),
        sa.Column("generation", sa.Integer, nullable=False),
        sa.Column("changed", sa.Text, nullable=False),
    )
    op.create_table(
        "replicas",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("version", sa.Text),
        sa.Column("started", sa.Text, nullable=False),
        sa.Column("last_seen", sa.Float, nullable=False),
    )
    bind = op.get_bind()
    if bind.dialect.name == "sqlite" and bind.engine.url.database:
        _import_single_host(Path(bind.engine.url.database).parent)


def _old_rows(path: Path, table: str) -> list[dict]:
    """Read every row of a table in an old SQLite file, in the order they were written."""
    with closing(sqlite3.connect(path)) as old:
        old.row_factory = sqlite3.Row
        if not old.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone():
            return []
        return [dict(row) for row in old.execute(f"SELECT * FROM {table} ORDER BY rowid")]


def _import_single_host(data_dir: Path) -> None:
    """Copy jobs and feedback from the files older versions kept under DATA_DIR."""
    if (data_dir / "jobs.sqlite3").is_file():
        rows = _old_rows(data_dir / "jobs.sqlite3", "jobs")
        if rows:
            op.bulk_insert(_table("jobs", rows), rows)
    if (data_dir / "feedback.sqlite3").is_file():
        rows = _old_rows(data_dir / "feedback.sqlite3", "feedback")
        for row in rows:
            for name, default in FEEDBACK_DEFAULTS.items():
                row.setdefault(name, default)
            if "bytes" not in row:  # older records count towards the quota with their real size
                image = data_dir / "feedback" / row["path"]
                row["bytes"] = image.stat().st_size if image.is_file() else 0
        if rows:
            op.bulk_insert(_table("feedback", rows), rows)


def _table(name: str, rows: list[dict]) -> sa.Table:
    """Describe just the columns the old rows have, for bulk_insert."""
    return sa.table(name, *(sa.column(key) for key in rows[0]))
