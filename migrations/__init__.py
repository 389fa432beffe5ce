"""Alembic migrations: one linear history, one Postgres schema per domain."""
