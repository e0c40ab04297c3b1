# Digit Lab: `make run` sets everything up and starts the backend and dashboard; `make test` runs the suite.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
# Both listen on loopback only unless told otherwise (README, "Security and limits").
BACKEND_BIND ?= 127.0.0.1:5000
DASHBOARD_ADDRESS ?= 127.0.0.1
DASHBOARD_PORT ?= 8501
# The shared offline MNIST subset when it sits beside the checkout; otherwise Keras downloads MNIST.
export MNIST_PATH ?= $(wildcard $(abspath ../shared/data/mnist_subset.npz))

.PHONY: setup run backend fleet test test-fast lint train evaluate screenshots loadtest clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

# The backend runs in the background and stops with the dashboard (Ctrl-C stops both).
run: setup
	@trap 'kill 0' EXIT; \
	$(VENV)/bin/gunicorn -c backend/gunicorn.conf.py --bind $(BACKEND_BIND) backend.wsgi:app & \
	BACKEND_URL=http://$(BACKEND_BIND) $(VENV)/bin/streamlit run frontend/app.py \
		--server.address $(DASHBOARD_ADDRESS) --server.port $(DASHBOARD_PORT) --server.headless true --browser.gatherUsageStats false --client.toolbarMode viewer

backend: setup
	$(VENV)/bin/gunicorn -c backend/gunicorn.conf.py --bind $(BACKEND_BIND) backend.wsgi:app

# A local fleet on loopback: PostgreSQL, Redis, REPLICAS API replicas behind nginx, a trainer and the
# dashboard (README, "Running a fleet"); needs `apt-get install postgresql redis-server nginx`.
REPLICAS ?= 2
fleet: setup
	$(PY) -m deploy.localfleet --replicas $(REPLICAS)

test: setup
	$(PY) -m pytest

# Everything but training, servers, browsers, Locust and the notebook: a couple of minutes.
test-fast: setup
	$(PY) -m pytest -m "not slow and not browser and not e2e"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

train: setup
	$(PY) -m backend.train --activate

evaluate: setup
	$(PY) -m backend.evaluate

clean:
	rm -rf $(VENV) .pytest_cache

# Load-test the backend at BACKEND_BIND (started if nothing answers); see README "Load testing".
LOADTEST_ARGS ?=
loadtest: setup
	$(PY) -m benchmarks.loadtest --host http://$(BACKEND_BIND) $(LOADTEST_ARGS)

# Refresh the README's dashboard screenshots from the browser test.
screenshots: setup
	UPDATE_SCREENSHOTS=1 $(PY) -m pytest -m browser tests/test_browser.py
