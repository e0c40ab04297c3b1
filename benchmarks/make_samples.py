"""Generate the small sample image set the load test sends: `python -m benchmarks.make_samples`.

MNIST test digits rendered by `backend.data.renderings` as photos, dark and transparent canvas drawings,
marker strokes and MNIST-style PNGs, 12 of each (every digit 0-9 six times in all), about 160 kB in
all. The repo ships the result in benchmarks/samples/; the locustfile regenerates it if missing.
File names carry the style and the true label: `<style>-<index>-d<label>.<png|jpg>`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
# small_in_corner is left out: its noisy 1000 px pages are ~0.5 MB each and would dominate the set.
SAMPLE_STYLES = ("photo", "canvas_dark", "canvas_transparent", "thick_marker", "mnist_png")
PER_STYLE = 12
SEED = 6


def pick_digits(labels: np.ndarray, count: int, rng: np.random.Generator, first: int = 0) -> np.ndarray:
    """Return `count` random indices cycling through the digits from `first`, so every class appears."""
    by_class = [rng.permutation(np.flatnonzero(labels == digit)) for digit in range(10)]
    return np.array([by_class[(first + k) % 10][k // 10] for k in range(count)])


def generate(folder: Path = SAMPLES_DIR, per_style: int = PER_STYLE, seed: int = SEED) -> list[Path]:
    """Render the sample set into `folder` (replacing earlier samples) and return the files written."""
    from backend.data import renderings
    from backend.data.mnist import load_mnist

    mnist = load_mnist()
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*-d[0-9].*"):
        stale.unlink()
    written = []
    for offset, style in enumerate(SAMPLE_STYLES):
        # shifting the first digit per style keeps the whole set balanced (6 of each digit)
        for k, index in enumerate(pick_digits(mnist.y_test, per_style, rng, first=2 * offset)):
            data = renderings.STYLES[style](mnist.x_test[index], rng)
            suffix = "jpg" if data[:2] == b"\xff\xd8" else "png"
            path = folder / f"{style}-{k:02d}-d{int(mnist.y_test[index])}.{suffix}"
            path.write_bytes(data)
            written.append(path)
    return written


def load_samples(folder: Path = SAMPLES_DIR) -> list[tuple[str, int, str, bytes]]:
    """Read the sample set as [(style, label, file name, bytes), ...], generating it first if missing."""
    paths = sorted(folder.glob("*-d[0-9].*")) if folder.is_dir() else []
    if not paths:
        paths = generate(folder)
    samples = []
    for path in sorted(paths):
        style, _, label = path.stem.rsplit("-", 2)
        samples.append((style, int(label[1:]), path.name, path.read_bytes()))
    return samples


def main() -> None:
    """Command line: regenerate the sample set and print its size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=SAMPLES_DIR, help="folder to write (default: %(default)s)")
    parser.add_argument("--per-style", type=int, default=PER_STYLE, help="images per style (default: %(default)s)")
    args = parser.parse_args()
    written = generate(args.out, args.per_style)
    total = sum(path.stat().st_size for path in written)
    print(f"wrote {len(written)} images, {total / 1024:.0f} kB, to {args.out}")


if __name__ == "__main__":
    main()
