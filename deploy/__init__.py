"""Digit Lab as a fleet: nginx, API replicas, a trainer, PostgreSQL and Redis (local or docker compose)."""
