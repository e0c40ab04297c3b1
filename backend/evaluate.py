"""`python -m backend.evaluate`: print a stored version's test metrics (backend.training.evaluate)."""

from backend.training.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main())
