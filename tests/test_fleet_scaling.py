"""A tiny run of benchmarks/fleet_scaling.py against the real servers: it prints its tables and the ratio.

The figures themselves (and the 1.2x bar) are the benchmark's business, in docs/fleet-scaling.md; this only
checks that every part runs end to end: the pinned replicas behind nginx, the trainer's job and the single host.
"""

from __future__ import annotations

import re
import shutil

import pytest

from benchmarks import fleet_scaling
from tests.support.browser import in_ci
from tests.support.fleet import require_servers

pytestmark = pytest.mark.slow


def test_a_tiny_run_prints_the_scaling_table_the_ratio_and_the_training_table(capsys, monkeypatch, tiny_mnist_path):
    require_servers("postgres", "redis-server", "nginx")
    if shutil.which("wrk") is None:
        message = f"wrk not installed: {fleet_scaling.WRK_INSTALL}"
        if in_ci():
            pytest.fail(f"CI=true but {message}")
        pytest.skip(message)
    monkeypatch.setenv("MNIST_PATH", str(tiny_mnist_path))  # both jobs reach their first epoch in seconds

    assert fleet_scaling.main(["--seconds", "1", "--warm-up", "0", "--rounds", "1"]) == 0

    out = capsys.readouterr().out
    assert fleet_scaling.HEADER in out
    rows = [line for line in out.splitlines() if re.match(r"[AB]: \d replicas?, cores? ", line)]
    assert [row[0] for row in rows] == ["A", "B", "B", "A"]
    figures = [row[fleet_scaling.NAME_WIDTH :].split() for row in rows]
    assert all(int(conns) == 16 and float(rate) > 0 for conns, rate, *_ in figures), rows
    assert re.search(r"^ratio mean\(B\)/mean\(A\): \d+\.\d\dx ", out, re.M)
    assert re.search(r"^verdict: (PASS|FAIL) ", out, re.M)
    for mode in ("fleet", "single host"):
        assert re.search(rf"^{mode}: idle ", out, re.M) and re.search(rf"^{mode}: job training ", out, re.M)
    assert re.search(r"^fleet \(.*\) +\d+\.\dms +\d+\.\dms", out, re.M)
    assert re.search(r"^single host \(.*\) +\d+\.\dms +\d+\.\dms", out, re.M)
