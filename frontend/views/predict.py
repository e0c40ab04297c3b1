"""Predict page: upload images or draw a digit, see what the model saw, its answer, and send corrections."""

from __future__ import annotations

import hashlib
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st

from client import BackendError, Upload, backend_url, decode_png
from ui import DIGITS, attempt, cached_health, client, get_client, png, show_error

IMAGE_TYPES = ["png", "jpg", "jpeg", "bmp", "gif", "webp", "tif", "tiff"]
CANVAS_SIDE = 280


@st.cache_data(ttl=300, max_entries=200, show_spinner=False)
def cached_predict(base_url: str, active_version: str | None, image: Upload) -> dict[str, Any]:
    """POST /predict?include=input, cached per image bytes and active version (reruns do not re-send)."""
    return get_client(base_url).predict(image, include_input=True)


@st.cache_data(ttl=300, max_entries=200, show_spinner=False)
def cached_explain(base_url: str, active_version: str | None, image: Upload) -> dict[str, Any]:
    """POST /explain, cached like predictions."""
    return get_client(base_url).explain(image)


def drawn_image() -> Upload | None:
    """Show the drawing canvas and return the drawing as a PNG upload, or None if nothing is drawn."""
    try:
        from streamlit_drawable_canvas import st_canvas
    except Exception as exc:  # the canvas is optional: uploads still work without it
        st.info(f"The drawing canvas is unavailable ({type(exc).__name__}: {exc}); upload an image instead.")
        return None
    try:
        result = st_canvas(
            stroke_width=18,
            stroke_color="#FFFFFF",
            background_color="#000000",
            height=CANVAS_SIDE,
            width=CANVAS_SIDE,
            drawing_mode="freedraw",
            return_image_data=True,
            key="canvas",
        )
    except Exception as exc:  # a component incompatible with this Streamlit must not take the page down
        st.info(f"The drawing canvas failed to load ({type(exc).__name__}); upload an image instead.")
        return None
    st.caption("Draw one digit, large and centred. The canvas toolbar (hover over it) undoes or clears.")
    objects = (result.json_data or {}).get("objects") if result is not None else None
    if not objects:
        return None
    data = result.image_bytes
    return Upload("drawing.png", data, "image/png") if data else None


def probability_chart(probabilities: list[float]) -> None:
    """Bar chart of the ten class probabilities, the predicted digit highlighted."""
    best = int(max(range(len(probabilities)), key=probabilities.__getitem__))
    frame = pd.DataFrame(
        {"digit": DIGITS, "probability": probabilities, "predicted": [d == best for d in range(len(DIGITS))]}
    )
    chart = (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=alt.X("digit:N", axis=alt.Axis(labelAngle=0)),
            y=alt.Y("probability:Q", scale=alt.Scale(domain=[0, 1])),
            color=alt.condition("datum.predicted", alt.value("#d33f49"), alt.value("#8fb3d9")),
            tooltip=["digit:N", alt.Tooltip("probability:Q", format=".4f")],
        )
        .properties(height=220)
    )
    st.altair_chart(chart, width="stretch")


THANKS = "Thanks: saved as feedback #{id}. Once an admin accepts it on the Models page, retraining can use it."


def feedback_form(image: Upload, result: dict[str, Any], key: str) -> None:
    """The "Wrong? The right digit is…" control: posts the image with the right label to /feedback."""
    sent = st.session_state.setdefault("feedback_sent", {})
    if key in sent:
        st.success(THANKS.format(id=sent[key]), icon=":material/thumb_up:")
        return
    with st.form(f"feedback-{key}", border=False):
        left, right = st.columns([3, 1], vertical_alignment="bottom")
        choices = [d for d in range(len(DIGITS)) if d != result["digit"]]
        label = left.selectbox(
            "Wrong? The right digit is…", choices, index=None, placeholder="pick the right digit", key=f"label-{key}"
        )
        submitted = right.form_submit_button("Send correction")
    if not submitted:
        return
    if label is None:
        st.warning("Pick the right digit first.")
        return
    try:
        answer = client().feedback(
            image, int(label), predicted=result["digit"], model_version=result.get("model_version")
        )
    except BackendError as exc:
        show_error(exc)
        return
    sent[key] = answer.get("id", "?")
    st.success(THANKS.format(id=sent[key]), icon=":material/thumb_up:")


def saliency(image: Upload, version: str | None) -> None:
    """Show the /explain overlay, or why the backend could not make it."""
    try:
        explained = cached_explain(backend_url(), version, image)
    except BackendError as exc:
        show_error(exc)
        return
    st.image(decode_png(explained["overlay_png"]), caption="Saliency: where the model looked", width=140)


def show_prediction(image: Upload, version: str | None, explain: bool) -> None:
    """One image's row: original, model input, saliency, answer, probabilities; then feedback."""
    key = hashlib.sha1(image.data).hexdigest()[:12]
    with st.container(border=True):
        st.markdown(f"**{image.name}**")
        try:
            result = cached_predict(backend_url(), version, image)
        except BackendError as exc:
            show_error(exc)
            return
        widths = [1, 1, 1, 1.1, 2.4] if explain else [1, 1, 1.1, 2.4]
        columns = st.columns(widths)
        with columns[0]:
            st.image(image.data, caption="Original", width=140)
        with columns[1]:
            if result.get("input") is not None:
                st.image(png(result["input"], scale=5), caption="What the model saw (28×28)", width=140)
        if explain:
            with columns[2]:
                saliency(image, version)
        with columns[-2]:
            st.metric("Predicted digit", result["digit"])
            st.markdown(f"Confidence **{result['confidence']:.1%}**")
            st.caption(f"model `{result['model_version']}` · {result['inference_ms']:.2f} ms")
        with columns[-1]:
            probability_chart(result["probabilities"])
        feedback_form(image, result, key)


st.title("Predict a digit")
health = attempt(cached_health, backend_url())
if health is None:
    st.stop()
if not health.get("model_version"):
    st.warning(
        "The backend has no active model yet, so it cannot predict. "
        "Train one (`make train`) or activate one on the Models page."
    )
    st.stop()
active_version = health.get("model_version")

upload_tab, draw_tab = st.tabs(["Upload images", "Draw"])
with upload_tab:
    files = st.file_uploader("Photos, scans or drawings of single digits", type=IMAGE_TYPES, accept_multiple_files=True)
with draw_tab:
    drawing = drawn_image()
explain = st.toggle("Saliency heatmaps", value=True, help="Ask the backend's /explain where the model looked.")

images = [Upload(f.name, f.getvalue(), f.type or "application/octet-stream") for f in files or []]
if drawing is not None:
    images.insert(0, drawing)
if not images:
    st.info("Upload one or more images, or draw a digit, to see the prediction.")
for item in images:
    show_prediction(item, active_version, explain)
