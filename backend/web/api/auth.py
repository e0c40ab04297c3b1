"""Admin authentication: `Authorization: Bearer <ADMIN_TOKEN>` on every endpoint that changes state."""

from __future__ import annotations

import hmac
import os
import secrets
import tempfile
from pathlib import Path

from apiflask import HTTPTokenAuth
from flask import current_app

TOKEN_FILE = "admin_token"

auth = HTTPTokenAuth(scheme="Bearer", description="The admin token: ADMIN_TOKEN, or the file DATA_DIR/admin_token.")


def ensure_admin_token(data_dir: Path, configured: str | None) -> str:
    """Return ADMIN_TOKEN if set; else the token in DATA_DIR/admin_token, created once (0600) on first start."""
    if configured:
        return configured
    path = Path(data_dir) / TOKEN_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".admin_token.")
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
        try:
            os.link(tmp, path)  # atomic create-if-absent: concurrent workers all end up with one token
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    return path.read_text().strip()


@auth.verify_token
def _verify(token: str) -> bool | None:
    """Accept the request only with the exact admin token (compared in constant time)."""
    expected = current_app.config["ADMIN_TOKEN"]
    return True if token and hmac.compare_digest(token.encode(), expected.encode()) else None


@auth.error_processor
def _unauthorized(error):
    """Answer a missing or wrong token with a 401 that says how to authenticate."""
    return (
        {
            "error": "Missing or wrong admin token: send 'Authorization: Bearer <token>' with ADMIN_TOKEN "
            "(or the token in DATA_DIR/admin_token)."
        },
        401,
        {"WWW-Authenticate": 'Bearer realm="digit-lab"'},
    )
