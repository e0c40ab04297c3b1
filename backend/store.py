"""`python -m backend.store prune --keep N`: the documented command for the store's retention policy."""

from backend.data.retention import main

if __name__ == "__main__":
    raise SystemExit(main())
