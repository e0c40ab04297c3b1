"""Eight CPU-expensive requests at once against the real gunicorn server leave a plain client served."""

from __future__ import annotations

import pytest

from benchmarks import attack
from conftest import REPO_ROOT
from tests.support import servers

ATTACK_SECONDS = 8


@pytest.mark.slow
def test_hostile_images_are_refused_cheaply_while_plain_predictions_go_on(tmp_path):
    env = {"DATA_DIR": str(tmp_path / "data"), "MODEL_DIR": str(REPO_ROOT / "models")}
    with servers.gunicorn(env=env) as (url, process):
        workers = servers.worker_pids(process.pid)
        hostile, plain = attack.run(url, ATTACK_SECONDS)
        memory = [servers.peak_rss_mb(pid) for pid in workers]
    assert sum(hostile.statuses.values()) >= attack.HOSTILE
    assert not hostile.failures, hostile.failures[:5]  # every answer JSON, none a 5xx, none over 10 s
    assert hostile.statuses[422] > 0  # the dot fields are refused, not segmented
    assert plain.latencies and not plain.failures, plain.failures[:5]
    assert plain.percentile(95) <= 1000, f"plain p95 {plain.percentile(95):.0f} ms"
    assert max(memory) < 400, memory
