"""The locustfile's environment variables and what its command line asks for."""

from __future__ import annotations

import os

ADMIN_TAG = "admin"
ADMIN_CLASS = "AdminUser"
CLIENT_VARIABLE = "LOCUST_CLIENT"
# The HTTP client every user class is built on; what each costs: docs/load-testing.md.
CLIENTS = {"fast": "FastHttpUser", "requests": "HttpUser"}
DEFAULT_CLIENT = "fast"


def env_float(name: str, default: float) -> float:
    """Read a float environment variable, falling back to a default."""
    raw = os.environ.get(name, "").strip()
    return float(raw) if raw else default


def env_bound(name: str, default: float) -> float | None:
    """Read a threshold; "off", "none" or 0 disables it (None)."""
    raw = os.environ.get(name, "").strip().lower()
    if raw in ("off", "none"):
        return None
    value = float(raw) if raw else default
    return value if value > 0 else None


def http_client() -> str:
    """Return the LOCUST_CLIENT the user classes are built on: "fast" (default) or "requests"."""
    name = os.environ.get(CLIENT_VARIABLE, "").strip().lower() or DEFAULT_CLIENT
    if name not in CLIENTS:
        raise ValueError(f"{CLIENT_VARIABLE}={name!r}: expected one of {', '.join(CLIENTS)}")
    return name


def admin_requested(argv: list[str]) -> bool:
    """Tell whether the command line names AdminUser or asks for the admin tag (--tags/-T)."""
    if ADMIN_CLASS in argv:
        return True
    tags, collecting = set(), False
    for arg in argv:
        if arg in ("--tags", "-T"):
            collecting = True
        elif collecting and not arg.startswith("-"):
            tags.add(arg)
        else:
            collecting = False
    return ADMIN_TAG in tags


def step_shape_wanted(argv: list[str]) -> bool:
    """Tell whether to offer the step shape: LOCUST_SHAPE=step, or the web UI's class picker."""
    return os.environ.get("LOCUST_SHAPE", "").strip().lower() == "step" or "--class-picker" in argv
