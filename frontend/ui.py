"""Shared dashboard pieces: the cached client and responses, error display, the status sidebar, small renderers."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any, TypeVar

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from client import (
    TOKEN_HELP,
    ApiFacts,
    BackendClient,
    BackendError,
    backend_url,
    local_admin_token,
)

T = TypeVar("T")

REFRESH_SECONDS = 2.0  # how often live panels (a job's progress, the fleet) poll while something changes
HEALTH_TTL = 2  # seconds: the sidebar shows a fresh status without a request per widget click
LISTING_TTL = 5  # /model and /models change only when someone activates or trains a version
VERSION_TTL = 600  # a published version's metadata never changes
DIGITS = [str(d) for d in range(10)]  # the classes every model answers, as the API's JSON keys them
LOOPBACK_ADDRESSES = ("127.0.0.1", "localhost", "::1")
TOKEN_KEY = "admin_token"  # where a typed token lives in this browser session's state


@st.cache_resource(show_spinner=False)
def get_client(base_url: str) -> BackendClient:
    """Return one client (and so one keep-alive HTTP session) per backend URL, shared by all sessions."""
    return BackendClient(base_url)


def client() -> BackendClient:
    """Return a client for BACKEND_URL that carries this session's admin token, over the shared HTTP session."""
    return BackendClient(backend_url(), session=get_client(backend_url()).session, token=admin_token())


def dashboard_is_local() -> bool:
    """Tell whether the dashboard listens on loopback only (Streamlit's default, no address, means every interface)."""
    address = st.get_option("server.address") or ""
    return address in LOOPBACK_ADDRESSES or address.startswith("127.")


def admin_token() -> str | None:
    """Return the admin token for this session: the local one on loopback, else only what this user typed."""
    if dashboard_is_local():
        return local_admin_token()
    return st.session_state.get(TOKEN_KEY) or None


def token_help() -> str:
    """Say how to unlock admin actions here: a local token, or typing it into the sidebar."""
    if dashboard_is_local():
        return TOKEN_HELP
    return "Admin actions need the backend's admin token: type it into the 'Admin token' field in the sidebar."


@st.cache_data(ttl=VERSION_TTL, show_spinner=False)
def cached_facts(base_url: str) -> ApiFacts:
    """The backend's states, limits and defaults from /openapi.json, fetched once per VERSION_TTL."""
    return get_client(base_url).facts()


@st.cache_data(ttl=HEALTH_TTL, show_spinner=False)
def cached_health(base_url: str) -> dict[str, Any]:
    """GET /health, cached for a couple of seconds."""
    return get_client(base_url).health()


@st.cache_data(ttl=LISTING_TTL, show_spinner=False)
def cached_models(base_url: str) -> dict[str, Any]:
    """GET /models, cached for a few seconds."""
    return get_client(base_url).models()


@st.cache_data(ttl=VERSION_TTL, show_spinner=False)
def cached_model(base_url: str, version: str) -> dict[str, Any]:
    """GET /models/<version>; versions are immutable, so this is kept longer."""
    return get_client(base_url).model(version)


@st.cache_data(ttl=VERSION_TTL, show_spinner=False)
def cached_mnist_summary(base_url: str) -> dict[str, Any]:
    """GET /mnist/summary (class counts and mean digits do not change)."""
    return get_client(base_url).mnist_summary()


@st.cache_data(ttl=VERSION_TTL, max_entries=500, show_spinner=False)
def cached_mnist_png(base_url: str, index: int) -> bytes:
    """GET /mnist/test/<index>.png."""
    return get_client(base_url).mnist_test_png(index)


@st.cache_data(ttl=60, show_spinner=False)
def cached_datasets(base_url: str) -> list[dict[str, Any]]:
    """GET /datasets (an upload never changes once stored; new ones appear within a minute)."""
    return get_client(base_url).datasets()


def refresh_model_caches() -> None:
    """Forget cached health and listings after something changed the active version."""
    cached_health.clear()
    cached_models.clear()


def attempt(call: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """Run one backend call; on failure show its readable message and return None."""
    try:
        return call(*args, **kwargs)
    except BackendError as exc:
        show_error(exc)
        return None


def show_error(exc: BackendError) -> None:
    """Show a backend failure as a plain message, never a traceback."""
    if exc.unreachable:
        st.error(f"The backend is down. {exc.message}", icon=":material/cloud_off:")
    elif exc.status == 401:
        st.error(f"Not authorised: {exc.message}", icon=":material/lock:")
    elif exc.status == 409:
        st.error(f"Busy: {exc.message}", icon=":material/hourglass_top:")
    elif exc.status is not None and exc.status >= 500:
        st.error(f"The backend failed (HTTP {exc.status}): {exc.message}", icon=":material/error:")
    else:
        st.error(f"The backend refused this (HTTP {exc.status}): {exc.message}", icon=":material/error:")


def sidebar_status() -> dict[str, Any] | None:
    """Show backend URL, health and active version in the sidebar; return /health or None if down."""
    url = backend_url()
    with st.sidebar:
        st.markdown("#### Backend")
        st.caption(f"URL: `{url}`")
        try:
            health = cached_health(url)
        except BackendError as exc:
            st.error("Backend down: " + exc.message, icon=":material/cloud_off:")
            return None
        version = health.get("model_version")
        if health.get("status") == "ok":
            st.success(f"Healthy · active version `{version}`", icon=":material/check_circle:")
        elif version:  # degraded: serving `version`, but could not load the newly activated one
            st.warning(f"Serving `{version}`, degraded: {health.get('reason')}", icon=":material/warning:")
        else:
            st.warning(
                f"Up, but no model is active ({health.get('status')}). Train one with `make train`.",
                icon=":material/warning:",
            )
        if not dashboard_is_local():
            st.text_input(
                "Admin token",
                type="password",
                key=TOKEN_KEY,
                help="This dashboard is reachable from the network, so admin actions need the token typed here.",
            )
        st.caption("Admin token: found" if admin_token() else "Admin token: not set (admin actions are disabled)")
        return health


def png(array: np.ndarray, scale: int = 1) -> bytes:
    """Encode a grey array (floats 0-1 or uint8) as PNG, enlarged `scale` times without smoothing."""
    values = np.asarray(array, dtype=np.float32)
    if values.max(initial=0) <= 1.0:
        values = values * 255.0
    image = Image.fromarray(np.clip(values, 0, 255).astype(np.uint8))
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def history_frames(history: dict[str, list[float]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split a Keras-style history into accuracy and loss frames (train and validation), indexed by epoch."""

    def frame(train_key: str, val_key: str) -> pd.DataFrame:
        """One metric's train and validation columns, padded to the same length."""
        columns = {"train": history.get(train_key) or [], "validation": history.get(val_key) or []}
        length = max((len(values) for values in columns.values()), default=0)
        data = {name: list(values) + [None] * (length - len(values)) for name, values in columns.items() if values}
        return pd.DataFrame(data, index=pd.RangeIndex(1, length + 1, name="epoch"), dtype="float64")

    return frame("accuracy", "val_accuracy"), frame("loss", "val_loss")


def curve_chart(frame: pd.DataFrame, title: str) -> alt.Chart:
    """An Altair line chart with a point per epoch (so a one-epoch run still shows), train and validation."""
    long = frame.reset_index().melt("epoch", var_name="split", value_name=title).dropna()
    return (
        alt.Chart(long, title=title.capitalize())
        .mark_line(point=True)
        .encode(
            x=alt.X("epoch:Q", axis=alt.Axis(format="d", tickMinStep=1), scale=alt.Scale(domainMin=1)),
            # Loss spans orders of magnitude over a run, so it reads better on a log scale.
            y=alt.Y(
                f"{title}:Q", scale=alt.Scale(type="log") if title == "loss" else alt.Scale(zero=False), title=None
            ),
            color=alt.Color("split:N", scale=alt.Scale(domain=["train", "validation"]), legend=alt.Legend(title=None)),
            tooltip=["epoch:Q", "split:N", alt.Tooltip(f"{title}:Q", format=".4f")],
        )
    )


def history_charts(history: dict[str, list[float]] | None) -> None:
    """Draw accuracy and loss curves side by side, or say there are none yet."""
    accuracy, loss = history_frames(history or {})
    if accuracy.empty and loss.empty:
        st.caption("No epochs finished yet.")
        return
    left, right = st.columns(2)
    with left:
        st.altair_chart(curve_chart(accuracy, "accuracy"), width="stretch", height=260)
    with right:
        st.altair_chart(curve_chart(loss, "loss"), width="stretch", height=260)


def per_class_frame(per_class: dict[str, Any], column: str) -> pd.DataFrame:
    """Turn a {"0": n, ...} mapping into a one-column frame indexed by digit 0-9."""
    return pd.DataFrame({column: [per_class.get(d, 0) for d in DIGITS]}, index=pd.Index(DIGITS, name="digit"))


def sources_text(sources: list[dict[str, Any]] | None) -> str:
    """Describe where a version's training data came from, in one line."""
    if not sources:
        return "—"
    return "; ".join(
        f"{s.get('name', '?')}: {s.get('examples', '?')} images" + (f" ({s['origin']})" if s.get("origin") else "")
        for s in sources
    )


def plain_reason(reason: str | None) -> str:
    """The promotion gate's reason without its leading 'promoted: '/'rejected: ' (the page states the verdict)."""
    text = (reason or "").strip()
    for prefix in ("promoted: ", "rejected: "):
        if text.lower().startswith(prefix):
            return text[len(prefix) :]
    return text


def short_time(stamp: str | None) -> str:
    """Show an ISO timestamp as 'YYYY-MM-DD HH:MM' (UTC as stored)."""
    return stamp[:16].replace("T", " ") if stamp else "—"
