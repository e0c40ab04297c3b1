"""The notebook: it runs top to bottom headless in fast mode and draws its figures; the committed copy is a full run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO_ROOT / "notebook" / "mnist.ipynb"
MNIST_SUBSET = (REPO_ROOT.parent / "shared" / "data" / "mnist_subset.npz").resolve()
MIN_FIGURES = 5
FAST_RUN_TIMEOUT = 900  # seconds; the fast run takes about two minutes on two cores


def code_outputs(notebook: nbformat.NotebookNode) -> list[dict]:
    """Return every output of every code cell, in order."""
    return [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])]


def figure_count(notebook: nbformat.NotebookNode) -> int:
    """Count the PNG images a notebook's code cells displayed."""
    return sum("image/png" in output.get("data", {}) for output in code_outputs(notebook))


@pytest.mark.e2e
def test_fast_run_executes_and_draws_figures(tmp_path: Path) -> None:
    """NOTEBOOK_FAST=1 runs the notebook top to bottom headless, without errors, drawing at least 5 figures."""
    executed = tmp_path / "mnist-fast.ipynb"
    jupyter = Path(sys.executable).parent / "jupyter"  # the venv's jupyter, next to the interpreter running pytest
    result = subprocess.run(
        [str(jupyter), "nbconvert", "--to", "notebook", "--execute", str(NOTEBOOK), "--output", str(executed)],
        env={**os.environ, "NOTEBOOK_FAST": "1", "MNIST_PATH": str(MNIST_SUBSET)},
        capture_output=True,
        text=True,
        timeout=FAST_RUN_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    notebook = nbformat.read(executed, as_version=4)
    assert not [o for o in code_outputs(notebook) if o.get("output_type") == "error"]
    assert all(cell.get("execution_count") for cell in notebook.cells if cell.cell_type == "code")
    assert figure_count(notebook) >= MIN_FIGURES
    printed = "".join(o.get("text", "") for o in code_outputs(notebook) if o.get("output_type") == "stream")
    assert "mode: fast" in printed
    assert "| model | trained on | test set | test accuracy |" in printed  # the comparison table was built


def test_committed_notebook_shows_a_full_run() -> None:
    """The committed notebook holds the outputs of a full run, with the shipped model in its comparison table."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    printed = "".join(o.get("text", "") for o in code_outputs(notebook) if o.get("output_type") == "stream")
    assert "mode: full" in printed, (
        "commit the notebook with a full run's outputs: "
        "jupyter nbconvert --to notebook --execute --inplace notebook/mnist.ipynb"
    )
    assert "project CNN, augmented (shipped)" in printed
    assert figure_count(notebook) >= MIN_FIGURES
    assert not [o for o in code_outputs(notebook) if o.get("output_type") == "error"]
