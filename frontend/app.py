"""Digit Lab dashboard: `streamlit run frontend/app.py` (the backend runs separately, at BACKEND_URL)."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from ui import sidebar_status

# Not "pages/": a folder of that name switches on Streamlit's older folder-based navigation,
# which then runs page files without this script (and so without the sidebar) on reruns.
VIEWS = Path(__file__).resolve().parent / "views"

st.set_page_config(page_title="Digit Lab", page_icon=":material/draw:", layout="wide")

navigation = st.navigation(
    [
        st.Page(VIEWS / "predict.py", title="Predict", icon=":material/draw:", default=True),
        st.Page(VIEWS / "retrain.py", title="Retrain", icon=":material/model_training:"),
        st.Page(VIEWS / "metrics.py", title="Metrics", icon=":material/monitoring:"),
        st.Page(VIEWS / "models.py", title="Models", icon=":material/inventory_2:"),
    ]
)
# Pages call the backend themselves; the sidebar status is drawn once here for all of them.
sidebar_status()
navigation.run()
