"""Retrain page: start a training job (MNIST or an uploaded ZIP) and follow it live until promoted or rejected."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from client import ApiFacts, BackendError, Upload, backend_url
from ui import (
    REFRESH_SECONDS,
    admin_token,
    attempt,
    cached_datasets,
    cached_facts,
    client,
    history_charts,
    per_class_frame,
    plain_reason,
    refresh_model_caches,
    show_error,
    token_help,
)

START_LABELS = {"scratch": "a fresh network", "active": "the active version (fine-tune)"}  # the API's `from` values


def job_sort_key(job: dict[str, Any]) -> str:
    """Order jobs by creation time (ISO strings sort chronologically)."""
    return str(job.get("created") or "")


def start_job(answer: dict[str, Any] | None, dataset: dict[str, Any] | None = None) -> None:
    """Remember a newly queued job so the panel below follows it."""
    if not answer:
        return
    st.session_state["job_id"] = answer["job_id"]
    if dataset is not None:
        st.session_state.setdefault("datasets", {})[answer["job_id"]] = dataset
    st.toast(f"Job {answer['job_id']} queued.", icon=":material/schedule:")


def submit(call: Any, **kwargs: Any) -> dict[str, Any] | None:
    """Send an admin training request; a 409 follows the job already running instead."""
    try:
        return call(**kwargs)
    except BackendError as exc:
        show_error(exc)
        if exc.status == 409 and exc.body.get("job_id"):
            st.session_state["job_id"] = exc.body["job_id"]  # show the job that holds the trainer
        return None


def mnist_form(has_token: bool, facts: ApiFacts) -> None:
    """Retrain on MNIST (optionally with uploads and feedback): epochs and starting point."""
    defaults = ", ".join(
        f"{epochs} from {START_LABELS.get(start, start)}" for start, epochs in facts.default_epochs.items()
    )
    with st.form("retrain-mnist"):
        st.markdown("#### Retrain on MNIST")
        # Left empty, the backend picks the epochs for the chosen starting point.
        epochs = st.number_input(
            "Epochs",
            min_value=1,
            max_value=facts.max_epochs,
            value=None,
            step=1,
            placeholder=f"backend default: {defaults}",
            help=f"1 to {facts.max_epochs}; empty for the backend's default ({defaults}).",
        )
        start = st.radio(
            "Start from",
            facts.start_points,
            index=facts.start_points.index(facts.default_start),
            horizontal=True,
            format_func=lambda s: START_LABELS.get(s, s),
        )
        uploads = st.checkbox("Also train on uploaded datasets", value=False)
        feedback = st.checkbox("Also train on accepted feedback corrections", value=False)
        go = st.form_submit_button("Start retraining", type="primary", disabled=not has_token)
    if go:
        start_job(
            submit(
                client().retrain,
                epochs=None if epochs is None else int(epochs),
                start_from=start,
                include_uploads=uploads,
                include_feedback=feedback,
            )
        )


def upload_form(has_token: bool, facts: ApiFacts) -> None:
    """Upload a ZIP of folders 0-9 and train on it."""
    with st.form("retrain-upload"):
        st.markdown("#### Retrain on your own digits")
        archive = st.file_uploader("ZIP with one folder per digit (0/ … 9/) of images", type=["zip"])
        epochs = st.number_input(
            "Epochs",
            min_value=1,
            max_value=facts.max_epochs,
            value=facts.upload_epochs,
            step=1,
            key="upload-epochs",
            help=f"1 to {facts.max_epochs}; the backend's default is {facts.upload_epochs}.",
        )
        go = st.form_submit_button("Upload and retrain", type="primary", disabled=not has_token)
    if go:
        if archive is None:
            st.warning("Choose a ZIP file first.")
            return
        answer = submit(
            client().upload_and_retrain,
            archive=Upload(archive.name, archive.getvalue(), "application/zip"),
            epochs=int(epochs),
        )
        start_job(answer, (answer or {}).get("dataset"))


def dataset_summary(dataset: dict[str, Any]) -> None:
    """Show what the backend made of an uploaded ZIP: images per class and skipped files."""
    with st.container(border=True):
        st.markdown(f"**Uploaded dataset `{dataset.get('id', '?')}`: {dataset.get('images', 0)} images**")
        counts, skipped = st.columns([2, 1])
        with counts:
            st.bar_chart(per_class_frame(dataset.get("per_class") or {}, "images"), x_label="digit", height=200)
        with skipped:
            rows = dataset.get("skipped") or []
            st.markdown(f"Skipped files: **{len(rows)}**")
            if rows:
                st.dataframe(pd.DataFrame(rows), hide_index=True)


def job_datasets(job: dict[str, Any]) -> list[dict[str, Any]]:
    """The uploaded datasets a job trains on: from its upload answer, else from GET /datasets."""
    remembered = st.session_state.get("datasets", {}).get(job.get("id"))
    if remembered:
        return [remembered]
    wanted = (job.get("params") or {}).get("datasets") or []
    if not wanted:
        return []
    try:
        stored = cached_datasets(backend_url())
    except BackendError:
        return []  # the summary is a nicety: the job panel still works without it
    return [d for d in stored if d.get("id") in wanted]


def comparison_table(comparison: dict[str, Any]) -> pd.DataFrame:
    """Candidate against active accuracy on MNIST test and the upload hold-out."""
    rows = []
    for key, label in (("mnist_test", "MNIST test"), ("upload_holdout", "Upload hold-out")):
        scores = comparison.get(key)
        if not scores:
            rows.append({"evaluated on": label, "active": None, "candidate": None, "change": None, "examples": None})
            continue
        active, candidate = (None if scores.get(k) is None else 100 * scores[k] for k in ("active", "candidate"))
        change = candidate - active if active is not None and candidate is not None else None
        rows.append(
            {
                "evaluated on": label,
                "active": active,
                "candidate": candidate,
                "change": change,
                "examples": scores.get("examples"),
            }
        )
    return pd.DataFrame(rows)


def job_result(job: dict[str, Any], facts: ApiFacts) -> None:
    """Show how a finished job ended: promoted or rejected with the reason, or why it stopped (failed, cancelled)."""
    status, result = job.get("status"), job.get("result") or {}
    if status in facts.unfinished_jobs:
        return
    if job.get("error"):
        st.error(f"Job {status}: {job['error']}", icon=":material/error:")
        return
    if not result:
        return
    candidate, reason = result.get("candidate"), plain_reason(result.get("reason"))
    if result.get("promoted"):
        st.success(
            f"Promoted: `{candidate}` is now the active version (was `{result.get('previous')}`): {reason}.",
            icon=":material/verified:",
        )
    else:
        st.warning(
            f"Rejected: `{candidate}` stays in the store but not in service; "
            f"`{result.get('previous')}` stays active: {reason}.",
            icon=":material/block:",
        )
    table = comparison_table(result.get("comparison") or {})
    st.dataframe(
        table,
        hide_index=True,
        column_config={
            "active": st.column_config.NumberColumn("active accuracy %", format="%.2f"),
            "candidate": st.column_config.NumberColumn("candidate accuracy %", format="%.2f"),
            "change": st.column_config.NumberColumn("change (points)", format="%+.2f"),
        },
    )


def job_details(job: dict[str, Any], facts: ApiFacts) -> None:
    """Status, progress bar, live curves and log of one job."""
    status = job.get("status", "?")
    st.markdown(f"#### Job `{job.get('id')}` · {job.get('kind', 'training')} · **{status}**")
    epochs, epoch = job.get("epochs") or 0, job.get("epoch") or 0
    progress = min(max(float(job.get("progress") or 0.0), 0.0), 1.0)
    label = f"{status}: epoch {epoch} of {epochs}" if epochs else status
    st.progress(progress, text=f"{label} ({progress:.0%})")
    for dataset in job_datasets(job):
        dataset_summary(dataset)
    history_charts(job.get("history"))
    job_result(job, facts)
    if status in facts.unfinished_jobs and admin_token():
        if st.button("Cancel this job", key=f"cancel-{job.get('id')}"):
            if attempt(client().cancel_job, job["id"]) is not None:
                st.toast("Cancelling…")
    log = job.get("log") or []
    if log:
        with st.expander(f"Log ({len(log)} lines)"):
            st.code("\n".join(log[-200:]), language=None)


def job_panel(job_id: str, first_status: str | None, facts: ApiFacts) -> None:
    """Follow one job; while it is unfinished the panel refreshes itself every couple of seconds."""

    @st.fragment(run_every=REFRESH_SECONDS if first_status in facts.unfinished_jobs else None)
    def panel() -> None:
        """Fetch the job and draw it; rerun the whole page once when it ends."""
        try:
            job = client().job(job_id)
        except BackendError as exc:
            show_error(exc)
            return
        job_details(job, facts)
        watching = st.session_state.get("watching")
        if job.get("status") in facts.unfinished_jobs:
            st.session_state["watching"] = job_id
        elif watching == job_id:
            # It just ended: rerun the whole page once, which stops the refresh and updates the sidebar.
            st.session_state.pop("watching", None)
            refresh_model_caches()
            st.rerun(scope="app")

    panel()


def recent_jobs(jobs: list[dict[str, Any]]) -> None:
    """A short table of earlier jobs."""
    if not jobs:
        return
    rows = [
        {
            "job": j.get("id"),
            "kind": j.get("kind"),
            "status": j.get("status"),
            "created": j.get("created"),
            "candidate": (j.get("result") or {}).get("candidate"),
            "promoted": (j.get("result") or {}).get("promoted"),
        }
        for j in jobs
    ]
    with st.expander(f"All jobs ({len(rows)})"):
        st.dataframe(pd.DataFrame(rows), hide_index=True)


st.title("Retrain")
api_facts = attempt(cached_facts, backend_url())
if api_facts is None:
    st.stop()
has_token = admin_token() is not None
if not has_token:
    st.warning(token_help(), icon=":material/key:")

left, right = st.columns(2)
with left:
    mnist_form(has_token, api_facts)
with right:
    upload_form(has_token, api_facts)

jobs = attempt(client().jobs)
if jobs is not None:
    jobs.sort(key=job_sort_key, reverse=True)
    st.divider()
    known = {j.get("id"): j.get("status") for j in jobs}
    running = [j.get("id") for j in jobs if j.get("status") in api_facts.unfinished_jobs]
    followed = st.session_state.get("job_id")
    if followed is None or (followed in known and known[followed] not in api_facts.unfinished_jobs and running):
        # Follow what is running (perhaps started elsewhere), else the latest job.
        followed = running[0] if running else (jobs[0].get("id") if jobs else None)
    if followed is None:
        st.caption("No training jobs yet.")
    else:
        job_panel(followed, known.get(followed, api_facts.unfinished_jobs[0]), api_facts)
    recent_jobs(jobs)
