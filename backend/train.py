"""`python -m backend.train`: train, export and publish a version (backend.training.train)."""

from backend.training.train import main

if __name__ == "__main__":
    raise SystemExit(main())
