"""The real gunicorn server and the shipped model: hot reload under load, and real-world accuracy."""

from __future__ import annotations

import io

import numpy as np
import pytest

from backend.data.renderings import mnist_png, photo, render_set
from benchmarks import floor_app, hot_reload, request_cost
from tests.support.servers import REPO_ROOT, gunicorn


@pytest.mark.slow
def test_activations_under_load_lose_no_request(trained_store, mnist):
    image = photo(mnist.x_test[0], np.random.default_rng(0))
    result = hot_reload.run(trained_store.root, image, clients=8, activations=4, interval=1.0)
    assert result["failed"] == 0 and result["requests"] > 50
    assert len(result["lags"]) == 4 and max(result["lags"]) <= 2.0


@pytest.mark.slow
def test_gunicorn_serves_with_bind_from_env(trained_store, tmp_path, mnist):
    env = {"MODEL_DIR": str(trained_store.root), "DATA_DIR": str(tmp_path)}
    with gunicorn(env=env) as (url, _):
        import requests

        body = requests.post(f"{url}/predict", files={"file": ("d.png", mnist_png(mnist.x_test[0], None))}).json()
        assert body["model_version"] == trained_store.active_version()
        assert requests.get(f"{url}/nope").json()["error"]
        assert "digitlab_http_requests_total" in requests.get(f"{url}/metrics").text


@pytest.mark.slow
def test_real_world_styles_through_predict(shipped_client, mnist):
    per_style, right, total = 40, {}, {}
    for style, label, data in render_set(mnist.x_test, mnist.y_test, per_style, seed=3):
        body = shipped_client.post("/predict", data={"file": (io.BytesIO(data), "digit")}).json
        right[style] = right.get(style, 0) + (body["digit"] == label)
        total[style] = total.get(style, 0) + 1
    accuracy = {style: right[style] / total[style] for style in total}
    assert min(accuracy.values()) >= 0.9, accuracy  # benchmarks/realworld_accuracy.py measures the bars at scale
    assert sum(right.values()) / sum(total.values()) >= 0.95, accuracy


def test_request_cost_breakdown_runs(capsys):
    assert request_cost.main(["--model-dir", str(REPO_ROOT / "models"), "--rounds", "1", "--requests", "3"]) == 0
    printed = capsys.readouterr().out
    assert "the model call" in printed and "/predict, both stand-ins" in printed


def test_floor_app_runs_the_stem_and_optionally_the_model(mnist):
    image = mnist_png(mnist.x_test[0], None)

    def predict(run_model: bool) -> dict:
        client = floor_app.create_app(str(REPO_ROOT / "models"), run_model=run_model).test_client()
        return client.post("/predict", data={"file": (io.BytesIO(image), "d.png")}).json

    assert predict(run_model=True)["digit"] == mnist.y_test[0]
    assert np.allclose(predict(run_model=False)["probabilities"], 0.1)
