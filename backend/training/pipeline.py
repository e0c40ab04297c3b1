"""What a training job does: build the data mix, train a candidate, compare it with the active
model, and promote it only if it passes the gate.

Continual learning: fine-tuning on a small upload alone makes a network forget MNIST, so every
upload is mixed with a replay sample of MNIST, and the candidate must stay within
GATE_MAX_MNIST_DROP of the active model on the MNIST test split while not getting worse on the
upload's hold-out part. A rejected candidate stays in the store for manual activation (until
`python -m backend.store prune` removes it).

A cancel stops training through SIGTERM (JobCancelled) and is checked again after every epoch.
Once the candidate is published, SIGTERM is held back: the verdict and the activation are one
step (JobStore.conclude), and the candidate of a job cancelled meanwhile is withdrawn.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from backend.core.config import Settings
from backend.core.inference import LiteModel, verify_version
from backend.core.store import ActivationConflictError, ModelStore
from backend.data.datasets import list_datasets, load_uploaded
from backend.data.fleet import model_store
from backend.data.jobs import JobCancelled, JobStore, default_epochs, uninterrupted
from backend.data.mnist import class_counts, load_mnist, stemmed
from backend.training.evaluate import accuracy
from backend.training.train import TrainingConfig, TrainingData, train_and_publish

REPLAY_MIN = 6000  # MNIST images replayed alongside an upload
REPLAY_PER_UPLOADED = 4  # ...or this many per uploaded training image, whichever is more
EXTRA_OVERSAMPLE = 3  # uploaded and feedback images count this many times per epoch


def _extra_sources(settings: Settings, dataset_ids: list[str], include_feedback: bool) -> list[tuple[str, Any]]:
    """Load the uploaded datasets (and feedback) a job trains on, as (name, UploadedDataset)."""
    datasets_dir = settings.data_dir / "datasets"
    sources = [(f"upload:{dataset_id}", load_uploaded(datasets_dir, dataset_id)) for dataset_id in dataset_ids]
    if include_feedback:
        from backend.data.feedback import FeedbackStore

        feedback = FeedbackStore(settings.data_dir).as_dataset()
        if feedback is not None:
            sources.append(("feedback", feedback))
    return sources


def build_training_data(job: dict[str, Any], settings: Settings, say) -> TrainingData:
    """Assemble the job's training mix, MNIST test split and hold-out sets."""
    params = job["params"]
    rng = np.random.default_rng(params.get("seed", 0))
    mnist = load_mnist(settings.mnist_path)
    say(f"MNIST from {mnist.source}: {len(mnist.y_train)} train, {len(mnist.y_test)} test images")

    dataset_ids = list(params.get("datasets", []))
    if params.get("include_uploads"):
        dataset_ids += [m["id"] for m in list_datasets(settings.data_dir / "datasets") if m["id"] not in dataset_ids]
    extras = _extra_sources(settings, dataset_ids, bool(params.get("include_feedback")))
    extra_x = [d.x[~d.holdout] for _, d in extras]
    extra_y = [d.y[~d.holdout] for _, d in extras]
    n_extra = int(sum(len(y) for y in extra_y))

    if job["kind"] == "upload_and_retrain":
        replay = min(len(mnist.y_train), max(REPLAY_MIN, REPLAY_PER_UPLOADED * n_extra))
        chosen = np.sort(rng.choice(len(mnist.y_train), size=replay, replace=False))
        mnist_x, mnist_y = mnist.x_train[chosen], mnist.y_train[chosen]
        say(f"replaying {replay} MNIST images next to {n_extra} uploaded training images")
    else:
        mnist_x, mnist_y = mnist.x_train, mnist.y_train

    x_parts = [stemmed(mnist_x)] + [np.repeat(x, EXTRA_OVERSAMPLE, axis=0) for x in extra_x]
    y_parts = [mnist_y.astype(np.int64)] + [np.repeat(y, EXTRA_OVERSAMPLE) for y in extra_y]
    sources = [
        {
            "name": "mnist",
            "origin": mnist.source,
            "examples": int(len(mnist_y)),
            "per_class": class_counts(mnist_y),
            "replay": job["kind"] == "upload_and_retrain",
        }
    ]
    sources += [
        {"name": name, "examples": int(len(y)), "per_class": class_counts(y), "oversampled": EXTRA_OVERSAMPLE}
        for (name, _), y in zip(extras, extra_y)
    ]
    holdout = {}
    held = [(d.x[d.holdout], d.y[d.holdout]) for name, d in extras if name.startswith("upload:")]
    if held and sum(len(y) for _, y in held):
        holdout["upload_holdout"] = (
            np.concatenate([x for x, _ in held]),
            np.concatenate([y for _, y in held]).astype(np.int64),
        )
    return TrainingData(
        x_train=np.concatenate(x_parts),
        y_train=np.concatenate(y_parts),
        x_test=stemmed(mnist.x_test),
        y_test=mnist.y_test.astype(np.int64),
        sources=sources,
        test_source=f"mnist-test ({mnist.source}, {len(mnist.y_test)} images)",
        holdout=holdout,
    )


def gate(active: dict[str, float] | None, candidate: dict[str, float], max_mnist_drop: float) -> tuple[bool, str]:
    """Decide promotion: MNIST may drop at most `max_mnist_drop`, the upload hold-out may not drop at all."""
    if active is None:
        return True, "no model was active, so the candidate becomes the first active model"
    drop = active["mnist_test"] - candidate["mnist_test"]
    reasons = []
    if drop > max_mnist_drop + 1e-12:
        reasons.append(f"MNIST test accuracy fell {drop * 100:.2f} points (allowed: {max_mnist_drop * 100:.2f})")
    if "upload_holdout" in candidate and candidate["upload_holdout"] < active["upload_holdout"]:
        reasons.append(
            f"upload hold-out accuracy fell from {active['upload_holdout']:.4f} to {candidate['upload_holdout']:.4f}"
        )
    if reasons:
        return False, "rejected: " + "; ".join(reasons)
    summary = f"MNIST test {active['mnist_test']:.4f} -> {candidate['mnist_test']:.4f}"
    if "upload_holdout" in candidate:
        summary += f", upload hold-out {active['upload_holdout']:.4f} -> {candidate['upload_holdout']:.4f}"
    return True, f"promoted: {summary}"


def execute(job: dict[str, Any], jobs: JobStore, settings: Settings | None = None) -> dict[str, Any]:
    """Run a retraining job end to end and return its result (promotion decision and metrics)."""
    settings = settings or Settings()
    store = model_store(settings)
    params = job["params"]
    job_id = job["id"]

    def say(line: str) -> None:
        jobs.append_log(job_id, line)

    data = build_training_data(job, settings, say)
    active_version = store.active_version()
    start_from = "active" if job["kind"] == "upload_and_retrain" else params.get("from", "active")
    if start_from == "active" and active_version is None:
        start_from = "scratch"
    epochs = int(params.get("epochs") or default_epochs(job["kind"], start_from))
    history: dict[str, list[float]] = {}

    def on_epoch(epoch: int, total: int, logs: dict[str, float]) -> None:
        for key, value in logs.items():
            history.setdefault(key, []).append(value)
        if not jobs.update(job_id, epoch=epoch, epochs=total, progress=round(epoch / total, 4), history=history):
            raise JobCancelled()  # the job ended meanwhile (a cancel whose signal was missed): publish nothing
        say(f"epoch {epoch}/{total}: " + ", ".join(f"{k} {v:.4f}" for k, v in sorted(logs.items())))

    say(f"training {len(data.y_train)} images for {epochs} epochs from {start_from}")
    if not jobs.update(job_id, epochs=epochs):
        raise JobCancelled()
    candidate = store.new_version_id()  # named up front, so a cancel landing mid-publish can withdraw it
    try:
        train_and_publish(
            store,
            data,
            TrainingConfig(epochs=epochs, seed=int(params.get("seed", 42))),
            start_from=start_from,
            on_epoch=on_epoch,
            verbose=0,
            extra_metadata={"job": job_id},
            version=candidate,
        )
    except JobCancelled:
        with uninterrupted():
            store.remove(candidate)  # a no-op unless the rename into place had already happened
        raise
    with uninterrupted():  # from here a cancel is seen by conclude(), never half-way through a step
        result = _judge(store, candidate, active_version, data, settings, say)
        promote = None
        if result["promoted"]:
            verify_version(store, candidate)  # the same check POST /models/<v>/activate makes
            # only over the version it was judged against: an activation meanwhile makes the verdict stale
            promote = lambda connection: store.activate(candidate, active_version, connection)  # noqa: E731
        try:
            concluded = jobs.conclude(job_id, result, promote)
        except ActivationConflictError as exc:
            result = {**result, "promoted": False, "active": store.active_version(), "reason": f"not promoted: {exc}"}
            say(f"candidate {candidate}: {result['reason']}")
            concluded = jobs.conclude(job_id, result, None)
        if not concluded:
            store.remove(candidate)
            say(f"cancelled before its verdict; candidate {candidate} withdrawn, the active model is unchanged")
    return result


def _judge(
    store: ModelStore, candidate: str, active_version: str | None, data: TrainingData, settings: Settings, say
) -> dict[str, Any]:
    """Score the candidate against the active model and return the job's result (the promotion decision)."""
    meta = store.metadata(candidate)
    candidate_scores = {
        "mnist_test": meta["test_metrics"]["accuracy"],
        **{name: m["accuracy"] for name, m in meta.get("holdout_metrics", {}).items()},
    }
    active_scores = None
    if active_version is not None:
        active_model = LiteModel(store.tflite_path(active_version), active_version)
        active_scores = {
            "mnist_test": accuracy(active_model, data.x_test, data.y_test),
            **{name: accuracy(active_model, x, y) for name, (x, y) in data.holdout.items()},
        }
    promoted, reason = gate(active_scores, candidate_scores, settings.gate_max_mnist_drop)
    say(f"candidate {candidate}: {reason}")
    comparison = {
        name: {
            "active": None if active_scores is None else active_scores[name],
            "candidate": score,
            "examples": int(len(data.y_test) if name == "mnist_test" else len(data.holdout[name][1])),
        }
        for name, score in candidate_scores.items()
    }
    return {
        "candidate": candidate,
        "previous": active_version,
        "active": candidate if promoted else active_version,
        "promoted": promoted,
        "reason": reason,
        "comparison": {"mnist_test": comparison["mnist_test"], "upload_holdout": comparison.get("upload_holdout")},
        "data": meta["data"],
        "training_seconds": meta["training_seconds"],
    }
