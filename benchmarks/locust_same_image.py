"""Locust user for benchmarks.serving_speed: post one fixed /predict body as fast as answers come back.

The body file and its Content-Type come from SPEED_BODY and SPEED_CONTENT_TYPE.
"""

import os
from pathlib import Path

from locust import FastHttpUser, constant, task

BODY = Path(os.environ["SPEED_BODY"]).read_bytes()
CONTENT_TYPE = os.environ["SPEED_CONTENT_TYPE"]


class SameImageUser(FastHttpUser):
    """One client with a kept-alive connection and no think time; any non-2xx answer counts as a failure."""

    wait_time = constant(0)

    @task
    def predict(self) -> None:
        """Post the body to /predict."""
        self.client.post("/predict", data=BODY, headers={"Content-Type": CONTENT_TYPE})
