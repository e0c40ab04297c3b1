"""`python -m backend.worker`: a fleet's trainer, running jobs from the Redis queue (backend.training.trainer)."""

from backend.training.trainer import main

if __name__ == "__main__":
    raise SystemExit(main())
