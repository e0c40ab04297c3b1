"""Models page: every stored version with metrics and provenance; activate or roll back after confirming."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from client import TOKEN_HELP, BackendError, admin_token, backend_url
from ui import attempt, cached_models, client, refresh_model_caches, show_error, sources_text


def versions_table(listing: dict[str, Any]) -> pd.DataFrame:
    """One row per version: active mark, metrics, parent and data provenance."""
    rows = [
        {
            "active": "★ active" if row.get("active") else "",
            "version": row["version"],
            "created": row.get("created"),
            "accuracy": row.get("accuracy"),
            "macro F1": row.get("macro_f1"),
            "training s": row.get("training_seconds"),
            "parent": row.get("parent") or "— (scratch)",
            "trained on": sources_text(row.get("data")),
        }
        for row in listing.get("versions", [])
    ]
    return pd.DataFrame(rows)


def activation_controls(listing: dict[str, Any]) -> None:
    """Pick a version, ask for confirmation, then POST /models/<v>/activate."""
    active = listing.get("active")
    others = [row for row in listing.get("versions", []) if row["version"] != active]
    st.subheader("Activate or roll back")
    if not others:
        st.caption("There is no other version to switch to.")
        return
    if admin_token() is None:
        st.warning(TOKEN_HELP, icon=":material/key:")
        return
    # Default to the active version's parent (a rollback), else the newest other version.
    parent = next((row.get("parent") for row in listing["versions"] if row["version"] == active), None)
    choices = [row["version"] for row in others]
    default = choices.index(parent) if parent in choices else 0
    scores = {row["version"]: row.get("accuracy") for row in others}
    target = st.selectbox(
        "Version to serve", choices, index=default,
        format_func=lambda v: f"{v} · accuracy {scores[v]:.2%}" if scores.get(v) is not None else v,
    )
    pending = st.session_state.get("pending_activation")
    if pending is None:
        if st.button("Activate…", key="ask-activate"):
            st.session_state["pending_activation"] = target
            st.rerun()
        return
    st.warning(
        f"Serve `{pending}` instead of `{active}`? Every prediction switches to it at once; you can roll back here.",
        icon=":material/swap_horiz:",
    )
    confirm, cancel = st.columns([1, 5])
    if confirm.button("Yes, activate", type="primary", key="confirm-activate"):
        st.session_state.pop("pending_activation", None)
        try:
            answer = client().activate(pending)
        except BackendError as exc:
            if exc.not_found and "No such endpoint" in exc.message:
                st.info("This backend cannot switch versions yet (POST /models/<version>/activate answered 404).")
            else:
                show_error(exc)
            return
        refresh_model_caches()
        st.session_state["activation_done"] = answer
        st.rerun()
    if cancel.button("Cancel", key="cancel-activate"):
        st.session_state.pop("pending_activation", None)
        st.rerun()


st.title("Models")
done = st.session_state.pop("activation_done", None)
if done:
    st.success(f"Now serving `{done.get('active')}` (was `{done.get('previous')}`).", icon=":material/check_circle:")
listing = attempt(cached_models, backend_url())
if listing is None:
    st.stop()
if not listing.get("versions"):
    st.info("No model versions yet: train one with `make train`.")
    st.stop()
st.caption(f"{len(listing['versions'])} versions, newest first. Active: `{listing.get('active') or 'none'}`.")
st.dataframe(
    versions_table(listing), hide_index=True,
    column_config={
        "accuracy": st.column_config.NumberColumn(format="percent"),
        "macro F1": st.column_config.NumberColumn(format="%.4f"),
        "training s": st.column_config.NumberColumn(format="%.0f"),
        "trained on": st.column_config.TextColumn(width="large"),
    },
)
activation_controls(listing)
