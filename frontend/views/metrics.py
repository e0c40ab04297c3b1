"""Metrics page: one version's training curves, confusion matrix, per-class scores, mistakes and data."""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on a server: render figures to images only

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import streamlit as st

from client import BackendError, backend_url, decode_png
from ui import (
    DIGITS,
    attempt,
    cached_mnist_png,
    cached_mnist_summary,
    cached_model,
    cached_models,
    history_charts,
    per_class_frame,
)

GALLERY_SIZE = 30
GALLERY_COLUMNS = 10


def pick_version(listing: dict[str, Any]) -> str | None:
    """A version picker defaulting to the active version."""
    versions = [row["version"] for row in listing.get("versions", [])]
    if not versions:
        return None
    active = listing.get("active")
    index = versions.index(active) if active in versions else 0
    return st.selectbox(
        "Model version", versions, index=index, format_func=lambda v: f"{v} (active)" if v == active else v
    )


def headline(meta: dict[str, Any]) -> None:
    """Top-line test metrics and training facts."""
    test = meta.get("test_metrics") or {}
    data = meta.get("data") or {}
    cols = st.columns(5)
    cols[0].metric("Test accuracy", f"{test.get('accuracy', float('nan')):.2%}")
    cols[1].metric("Macro precision", f"{test.get('macro_precision', float('nan')):.3f}")
    cols[2].metric("Macro recall", f"{test.get('macro_recall', float('nan')):.3f}")
    cols[3].metric("Macro F1", f"{test.get('macro_f1', float('nan')):.3f}")
    cols[4].metric("Training time", f"{meta.get('training_seconds', 0):.0f} s")
    st.caption(
        f"Trained on {data.get('train_examples', '?')} images · tested on {data.get('test', '?')} · "
        f"parent `{meta.get('parent') or 'none (from scratch)'}` · created {meta.get('created', '?')}"
    )


def confusion_figure(matrix: list[list[int]]) -> plt.Figure:
    """The confusion matrix as an annotated seaborn heatmap."""
    values = np.asarray(matrix, dtype=int)
    figure, axes = plt.subplots(figsize=(6.4, 5.2))
    sns.heatmap(
        values,
        annot=True,
        fmt="d",
        cmap="Blues",
        cbar=True,
        square=True,
        ax=axes,
        xticklabels=DIGITS,
        yticklabels=DIGITS,
        annot_kws={"size": 8},
    )
    axes.set_xlabel("predicted digit")
    axes.set_ylabel("true digit")
    figure.tight_layout()
    return figure


def per_class_table(per_class: dict[str, dict[str, float]]) -> pd.DataFrame:
    """Precision, recall, F1 and support per digit."""
    rows = [
        {"digit": d, **{k: per_class.get(d, {}).get(k) for k in ("precision", "recall", "f1", "support")}}
        for d in DIGITS
    ]
    return pd.DataFrame(rows).set_index("digit")


def misclassified_gallery(mistakes: list[dict[str, Any]]) -> None:
    """Thumbnails of misclassified test digits from GET /mnist/test/<index>.png, each captioned true → predicted."""
    if not mistakes:
        st.caption("No misclassified test digits recorded.")
        return
    shown = mistakes[:GALLERY_SIZE]
    st.caption(f"{len(shown)} of the {len(mistakes)} recorded mistakes: true → predicted (confidence).")
    for start in range(0, len(shown), GALLERY_COLUMNS):
        columns = st.columns(GALLERY_COLUMNS)
        for column, item in zip(columns, shown[start : start + GALLERY_COLUMNS]):
            with column:
                try:
                    image = cached_mnist_png(backend_url(), int(item["index"]))
                except BackendError as exc:  # e.g. 404: the backend's MNIST test split has no such index
                    st.caption(f"#{item['index']}: {exc.message}")
                    continue
                st.image(image, width=56, caption=f"{item['true']}→{item['predicted']} ({item['confidence']:.0%})")


def data_section(meta: dict[str, Any]) -> None:
    """Class distribution (train and test) and the average digit per class."""
    summary = attempt(cached_mnist_summary, backend_url())
    # The version's own training counts are always known; the MNIST summary adds the train split and mean digits.
    train = per_class_frame((meta.get("data") or {}).get("per_class") or {}, "trained on (this version)")
    support = {d: v.get("support", 0) for d, v in ((meta.get("test_metrics") or {}).get("per_class") or {}).items()}
    frames = [train, per_class_frame(support, "tested on (this version)")]
    if summary:
        frames.insert(0, per_class_frame(summary.get("train_per_class") or {}, "MNIST train split"))
    counts = pd.concat(frames, axis=1)
    st.markdown("**Class distribution**")
    st.bar_chart(counts, x_label="digit", y_label="images", stack=False, height=260)
    if summary is None:
        return  # attempt() has said why
    st.markdown("**Average digit per class**")
    means = summary.get("mean_digit_png") or {}
    for column, digit in zip(st.columns(len(DIGITS)), DIGITS):
        if digit in means:
            column.image(decode_png(means[digit]), width=56, caption=digit)


st.title("Metrics")
listing = attempt(cached_models, backend_url())
if listing is None:
    st.stop()
version = pick_version(listing)
if version is None:
    st.info("No model versions yet: train one with `make train`.")
    st.stop()
meta = attempt(cached_model, backend_url(), version)
if meta is None:
    st.stop()

headline(meta)
st.subheader("Training curves")
history_charts(meta.get("history"))

test_metrics = meta.get("test_metrics") or {}
matrix_column, table_column = st.columns([1.1, 1])
with matrix_column:
    st.subheader("Confusion matrix")
    if test_metrics.get("confusion_matrix"):
        figure = confusion_figure(test_metrics["confusion_matrix"])
        st.pyplot(figure, clear_figure=True)
        plt.close(figure)
    else:
        st.caption("No confusion matrix recorded for this version.")
with table_column:
    st.subheader("Per-class scores")
    st.dataframe(
        per_class_table(test_metrics.get("per_class") or {}),
        column_config={k: st.column_config.NumberColumn(format="%.3f") for k in ("precision", "recall", "f1")},
        height=410,
    )

st.subheader("Misclassified test digits")
misclassified_gallery(test_metrics.get("misclassified") or [])
st.subheader("Data")
data_section(meta)
