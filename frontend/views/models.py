"""Models page: versions with metrics and provenance; activate or roll back after confirming; the fleet; feedback."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from client import ApiFacts, BackendError, backend_url
from ui import (
    REFRESH_SECONDS,
    admin_token,
    attempt,
    cached_facts,
    cached_model,
    cached_models,
    client,
    plain_reason,
    png,
    refresh_model_caches,
    short_time,
    show_error,
    sources_text,
    token_help,
)

REVIEW_BATCH = 12  # pending feedback shown at once: each row fetches its thumbnail
THUMBNAIL_SCALE = 3  # 28x28 inputs shown at 84 px, pixels kept sharp
ON_ACTIVE, BEHIND = "✓", "⏳ behind"  # a replica worker's rollout mark: on the active version or not yet


def versions_table(listing: dict[str, Any]) -> pd.DataFrame:
    """One row per version: active mark, metrics, parent and data provenance."""
    rows = [
        {
            "active": "★ active" if row.get("active") else "",
            "version": row["version"],
            "created (UTC)": short_time(row.get("created")),
            "accuracy %": None if row.get("accuracy") is None else 100 * row["accuracy"],
            "macro F1": row.get("macro_f1"),
            "training s": row.get("training_seconds"),
            "parent": row.get("parent") or "— (scratch)",
            "trained on": sources_text(row.get("data")),
        }
        for row in listing.get("versions", [])
    ]
    return pd.DataFrame(rows)


def version_details(version: str) -> None:
    """Provenance of one version: data sources, hyperparameters and the promotion decision, if any."""
    meta = attempt(cached_model, backend_url(), version)
    if meta is None:
        return
    data = meta.get("data") or {}
    st.markdown(
        f"Trained on **{data.get('train_examples', '?')}** images, tested on {data.get('test', '?')}; "
        f"parent `{meta.get('parent') or 'none (from scratch)'}`."
    )
    sources = data.get("sources") or []
    if sources:
        rows = [
            {
                "name": src.get("name"),
                "images": src.get("examples"),
                **{k: v for k, v in src.items() if k not in ("name", "examples", "per_class")},
            }
            for src in sources
        ]
        st.dataframe(pd.DataFrame(rows), hide_index=True)
    left, right = st.columns(2)
    with left:
        st.markdown("**Hyperparameters**")
        st.json(meta.get("hyperparameters") or {}, expanded=True)
    with right:
        st.markdown("**Promotion decision**")
        promotion_decision(version, meta)
        holdout = meta.get("holdout_metrics") or {}
        for name, metrics in holdout.items():
            st.caption(
                f"{name.replace('_', ' ')} accuracy: {metrics.get('accuracy', float('nan')):.2%} "
                f"on {metrics.get('examples', '?')} images"
            )


def promotion_decision(version: str, meta: dict[str, Any]) -> None:
    """Say how a version came to be: the promotion gate's verdict from its metadata or its training job."""
    if meta.get("promotion"):
        st.json(meta["promotion"], expanded=True)
        return
    job = training_job(version, meta.get("job"))
    if job is None:
        st.caption("None recorded: trained outside the dashboard (e.g. `make train`) and activated by hand.")
        return
    result = job.get("result") or {}
    verdict = "promoted" if result.get("promoted") else "rejected"
    st.markdown(f"Job `{job.get('id')}` ({job.get('kind')}) **{verdict}** it: {plain_reason(result.get('reason'))}.")


def training_job(version: str, job_id: str | None) -> dict[str, Any] | None:
    """The training job that produced `version`: by the id in its metadata, else by searching GET /jobs."""
    try:
        if job_id:
            return client().job(job_id)
        return next((job for job in client().jobs() if (job.get("result") or {}).get("candidate") == version), None)
    except BackendError as exc:
        if not exc.not_found:  # 404: the job's record is gone (e.g. another DATA_DIR); the version stays valid
            show_error(exc)
        return None


def activation_controls(listing: dict[str, Any]) -> None:
    """Pick a version, ask for confirmation, then POST /models/<v>/activate."""
    active = listing.get("active")
    others = [row for row in listing.get("versions", []) if row["version"] != active]
    st.subheader("Activate or roll back")
    if not others:
        st.caption("There is no other version to switch to.")
        return
    if admin_token() is None:
        st.warning(token_help(), icon=":material/key:")
        return
    # Default to the active version's parent (a rollback), else the newest other version.
    parent = next((row.get("parent") for row in listing["versions"] if row["version"] == active), None)
    choices = [row["version"] for row in others]
    default = choices.index(parent) if parent in choices else 0
    scores = {row["version"]: row.get("accuracy") for row in others}
    target = st.selectbox(
        "Version to serve",
        choices,
        index=default,
        format_func=lambda v: f"{v} · accuracy {scores[v]:.2%}" if scores.get(v) is not None else v,
    )
    pending = st.session_state.get("pending_activation")
    if pending is not None:
        st.warning(
            f"Serve `{pending}` instead of `{active}`? "
            "Every prediction switches to it at once; you can roll back here.",
            icon=":material/swap_horiz:",
        )
        confirm, cancel = st.columns([1, 5])
        if confirm.button("Yes, activate", type="primary", key="confirm-activate"):
            st.session_state.pop("pending_activation", None)
            if switch_to(pending):
                st.rerun()
        elif cancel.button("Cancel", key="cancel-activate"):
            st.session_state.pop("pending_activation", None)
            st.rerun()
        else:
            return  # waiting for the answer
    if st.button("Activate…", key="ask-activate"):
        st.session_state["pending_activation"] = target
        st.rerun()


def switch_to(version: str) -> bool:
    """POST the activation; True on success (remembered for the next run), else show why not."""
    try:
        answer = client().activate(version)
    except BackendError as exc:
        show_error(exc)
        return False
    refresh_model_caches()
    st.session_state["activation_done"] = answer
    return True


def replica_workers(count: int) -> str:
    """Say '1 replica worker' or 'N replica workers'."""
    return f"{count} replica worker{'s' if count != 1 else ''}"


def clock_time(stamp: str | None) -> str:
    """Show an ISO timestamp's time of day, 'HH:MM:SS' (UTC as the backend sends it)."""
    return stamp[11:19] if stamp and len(stamp) >= 19 else "—"


def fleet_status(fleet: dict[str, Any]) -> None:
    """One line: whether every replica worker serves the active version, or how far its rollout has got."""
    active, replicas = fleet.get("active"), fleet.get("replicas", [])
    if not replicas:
        st.info(
            "No API worker reports itself: workers report under gunicorn (`make backend`, `make run`), "
            "not under a development server.",
            icon=":material/info:",
        )
    elif active is None:
        st.info(f"No version is active yet; {replica_workers(len(replicas))} report in.", icon=":material/info:")
    elif fleet.get("converged"):
        every = "The one replica worker serves" if len(replicas) == 1 else f"All {len(replicas)} replica workers serve"
        st.success(f"{every} `{active}`.", icon=":material/check_circle:")
    else:
        serving = sum(replica.get("version") == active for replica in replicas)
        st.warning(
            f"Rolling out `{active}`: {serving} of {replica_workers(len(replicas))} serve it.", icon=":material/sync:"
        )


def replicas_table(fleet: dict[str, Any]) -> pd.DataFrame:
    """One row per live replica worker: whether it is on the active version, where it runs, what it serves."""
    active = fleet.get("active")
    rows = [
        {
            "rollout": ON_ACTIVE if replica.get("version") == active else BEHIND,
            "host": replica.get("host"),
            "pid": replica.get("pid"),
            "serves": replica.get("version") or "— (none)",
            "last seen (UTC)": clock_time(replica.get("last_seen")),
        }
        for replica in fleet.get("replicas", [])
    ]
    return pd.DataFrame(rows)


def trainers_table(trainers: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per trainer listening on the queue: where it runs, its state and the job it runs."""
    rows = [
        {
            "name": trainer.get("name"),
            "host": trainer.get("host"),
            "pid": trainer.get("pid"),
            "state": trainer.get("state"),
            "job": trainer.get("job") or "—",
            "last seen (UTC)": clock_time(trainer.get("last_seen")),
        }
        for trainer in trainers
    ]
    return pd.DataFrame(rows)


def fleet_details(fleet: dict[str, Any], facts: ApiFacts) -> None:
    """The status line, the mode, and the replica workers and trainers of one GET /fleet answer."""
    fleet_status(fleet)
    st.caption(
        f"Database **{fleet.get('database')}** · training jobs **{fleet.get('jobs')}** · "
        f"refreshed every {REFRESH_SECONDS:.0f} s."
    )
    if fleet.get("replicas"):
        st.markdown("**Replica workers**")
        st.dataframe(replicas_table(fleet), hide_index=True)
    st.markdown("**Trainers**")
    trainers = fleet.get("trainers", [])
    if fleet.get("jobs") == facts.local_jobs:
        st.caption("Training jobs run as local processes on the API host (no REDIS_URL), so there are no trainers.")
    elif not trainers:
        st.warning(
            "No trainer listens on the queue: training jobs wait until one starts "
            "(`python -m backend.worker` with the fleet's DATABASE_URL and REDIS_URL).",
            icon=":material/warning:",
        )
    else:
        st.dataframe(trainers_table(trainers), hide_index=True)


def fleet_section(shown_active: str | None, facts: ApiFacts) -> None:
    """GET /fleet, refreshed every REFRESH_SECONDS, so an operator sees a rollout converge."""
    st.subheader("Fleet")

    @st.fragment(run_every=REFRESH_SECONDS)
    def panel() -> None:
        """Fetch the fleet and draw it; rerun the whole page once if the active version moved meanwhile."""
        try:
            fleet = client().fleet()
        except BackendError as exc:
            show_error(exc)
            return
        if fleet.get("active") != shown_active:
            # Activated elsewhere (another session, a promoted job): the table and sidebar above are stale.
            refresh_model_caches()
            st.rerun(scope="app")
        fleet_details(fleet, facts)

    panel()


def feedback_review(facts: ApiFacts) -> None:
    """Unreviewed feedback with the 28x28 input it would train on; an admin gives each one a verdict."""
    st.subheader("Feedback review")
    st.caption(
        "Corrections sent from the Predict page wait here: only accepted ones are used by retraining with feedback."
    )
    if admin_token() is None:
        st.warning(token_help(), icon=":material/key:")
        return
    reviewed = st.session_state.pop("feedback_reviewed", None)
    if reviewed:
        st.success(f"Feedback `{reviewed['id']}` {reviewed['status']}.", icon=":material/check_circle:")
    listing = attempt(client().feedback_records, facts.unreviewed, REVIEW_BATCH)
    if listing is None:
        return
    shown = listing.get("feedback", [])
    counts = listing.get("counts", {})
    verdicts = [status for status in facts.review_statuses if status != facts.unreviewed]
    storage = (
        ", ".join(f"{counts.get(status, 0)} {status}" for status in verdicts)
        + f"; storage {listing.get('used_bytes', 0) / 1e6:.2f} of {listing.get('quota_bytes', 0) / 1e6:.0f} MB"
    )
    if not shown:
        st.caption(f"Nothing waits for review ({storage}).")
        return
    st.caption(
        f"{counts.get(facts.unreviewed, len(shown))} {facts.unreviewed}, oldest first; "
        f"showing {len(shown)} ({storage})."
    )
    for record in shown:
        feedback_row(record, verdicts)


def feedback_row(record: dict[str, Any], verdicts: list[str]) -> None:
    """One unreviewed item: thumbnail, right label, what the model said, and a button per verdict."""
    feedback_id = record["id"]
    thumbnail, details, *buttons = st.columns([1, 4] + [1] * len(verdicts), vertical_alignment="center")
    try:
        data = client().feedback_png(feedback_id)
        thumbnail.image(png(np.asarray(Image.open(io.BytesIO(data)).convert("L")), scale=THUMBNAIL_SCALE))
    except BackendError as exc:
        thumbnail.caption(f"no image: {exc.message}")
    predicted = record.get("predicted")
    details.markdown(
        f"Right digit **{record['label']}** · model said **{'?' if predicted is None else predicted}** "
        f"(`{record.get('model_version') or 'unknown version'}`) · {short_time(record.get('created'))} · "
        f"`{feedback_id}`"
    )
    for column, status in zip(buttons, verdicts):
        if column.button(f"Mark {status}", key=f"{status}-{feedback_id}"):
            try:
                client().review_feedback(feedback_id, status)
            except BackendError as exc:
                show_error(exc)
                return
            st.session_state["feedback_reviewed"] = {"id": feedback_id, "status": status}
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
count = len(listing["versions"])
st.caption(f"{count} version{'s' if count != 1 else ''}, newest first. Active: `{listing.get('active') or 'none'}`.")
st.dataframe(
    versions_table(listing),
    hide_index=True,
    column_config={
        "accuracy %": st.column_config.NumberColumn(format="%.2f"),
        "macro F1": st.column_config.NumberColumn(format="%.4f"),
        "training s": st.column_config.NumberColumn(format="%.0f"),
        "trained on": st.column_config.TextColumn(width="large"),
    },
)
activation_controls(listing)
api_facts = attempt(cached_facts, backend_url())
if api_facts is not None:
    fleet_section(listing.get("active"), api_facts)
st.subheader("Provenance")
chosen = st.selectbox(
    "Version",
    [row["version"] for row in listing["versions"]],
    key="details-version",
    format_func=lambda v: f"{v} (active)" if v == listing.get("active") else v,
)
version_details(chosen)
if api_facts is not None:
    feedback_review(api_facts)
