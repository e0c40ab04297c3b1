"""Where a /predict request's CPU goes: the app against the bare ceiling app, part by part, in one process.

    MNIST_PATH=../shared/data/mnist_subset.npz .venv/bin/python -m benchmarks.request_cost

Each variant handles the same multipart POST through its WSGI callable, without a server, so
gunicorn's own share (the same for every app) is left out. A variant swaps one part of /predict
for a stand-in: "decode only" replaces the stem with the bare app's Image.open + load, and
"fixed answer" replaces the LiteRT call with a stored output. The floor app
(benchmarks/floor_app.py) runs only the stem and the model call in a plain Flask view. Variants
run interleaved, round after round, and each round's CPU time is divided by its requests; the
medians are printed, because neighbours on a shared VM slow some rounds down and interleaving
spreads that over all.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from unittest import mock

import numpy as np
from PIL import Image

from backend.core.inference import LiteModel
from backend.core.preprocessing import preprocess_bytes
from backend.data.mnist import load_mnist
from backend.data.renderings import canvas_dark, mnist_png
from backend.web.app import create_app
from benchmarks import bare_app, floor_app
from benchmarks.serving_speed import BOUNDARY, multipart

BARE = "bare app (decode only)"
FLOOR = "floor app (stem + model only)"
# variant -> (stem swapped for a decode-only stand-in, model call swapped for a fixed answer)
VARIANTS = {
    BARE: (False, False),
    FLOOR: (False, False),
    "/predict": (False, False),
    "/predict, stem -> decode only": (True, False),
    "/predict, model -> fixed answer": (False, True),
    "/predict, both stand-ins": (True, True),
}


def wsgi_post(app: Callable, body: bytes) -> bytes:
    """Send one multipart POST /predict straight to a WSGI app; return the response body."""
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/predict",
        "QUERY_STRING": "",
        "SERVER_NAME": "bench",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "CONTENT_TYPE": f"multipart/form-data; boundary={BOUNDARY}",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
    }
    response = app(environ, lambda status, headers, exc_info=None: None)
    try:
        return b"".join(response)
    finally:
        getattr(response, "close", lambda: None)()


def decode_only(model_input: np.ndarray) -> Callable[..., np.ndarray]:
    """Return a stem stand-in for the decoded image (the handler decodes it, as the bare app does): the stored input."""

    def stem(image: Image.Image) -> np.ndarray:
        """Hand back the stored input."""
        return model_input

    return stem


@contextlib.contextmanager
def stand_ins(variant: str, model_input: np.ndarray, model_output: np.ndarray) -> Iterator[None]:
    """Swap the stem and/or the model call for stand-ins while a variant runs."""
    stub_stem, stub_model = VARIANTS[variant]
    with contextlib.ExitStack() as stack:
        if stub_stem:
            stack.enter_context(mock.patch("backend.web.api.predict.preprocess_image", decode_only(model_input)))
        if stub_model:
            stack.enter_context(mock.patch.object(LiteModel, "predict", lambda self, images: model_output.copy()))
        yield


def main(argv: list[str] | None = None) -> int:
    """Print the median CPU per request of each variant and the extra over the bare app."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--model-dir", default="models")
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--requests", type=int, default=200, help="requests per variant per round")
    parser.add_argument("--image", choices=["mnist", "canvas"], default="mnist")
    args = parser.parse_args(argv)

    digit = load_mnist().x_test[0]
    rng = np.random.default_rng(0)
    image = mnist_png(digit, rng) if args.image == "mnist" else canvas_dark(digit, rng)
    body = multipart(image)
    app = create_app({"MODEL_DIR": args.model_dir, "DATA_DIR": tempfile.mkdtemp(prefix="bench-data-")})
    assert b'"digit"' in wsgi_post(app, body), "the app did not answer /predict with a prediction"
    model = app.extensions["digit_lab"].model.current()
    model_input = preprocess_bytes(image)
    model_output = model.predict(model_input[np.newaxis])
    apps = {variant: app for variant in VARIANTS} | {BARE: bare_app.app, FLOOR: floor_app.create_app(args.model_dir)}
    assert b'"digit"' in wsgi_post(apps[FLOOR], body), "the floor app did not answer with a prediction"

    costs: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    for round_number in range(args.rounds + 1):  # round 0 warms every variant up and is not counted
        for variant in VARIANTS:
            with stand_ins(variant, model_input, model_output):
                started = time.process_time()
                for _ in range(args.requests):
                    wsgi_post(apps[variant], body)
                if round_number:
                    costs[variant].append((time.process_time() - started) / args.requests * 1000)

    medians = {variant: statistics.median(values) for variant, values in costs.items()}
    bare, full = medians[BARE], medians["/predict"]
    print(
        f"image: {args.image}; {args.rounds} interleaved rounds x {args.requests} requests; CPU ms per request, median"
    )
    for variant in VARIANTS:
        print(f"  {variant:36s} {medians[variant]:6.3f} ms   (+{medians[variant] - bare:.3f} over the bare app)")
    print(f"  the stem costs     {full - medians['/predict, stem -> decode only']:.3f} ms beyond decoding")
    print(f"  the model call     {full - medians['/predict, model -> fixed answer']:.3f} ms")
    print(
        f"  the rest of /predict (routing, schemas, metrics, JSON) {medians['/predict, both stand-ins'] - bare:.3f} ms"
    )
    print(f"  APIFlask, metrics and the reload check {full - medians[FLOOR]:.3f} ms (/predict against the floor app)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
