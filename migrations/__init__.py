"""Alembic migrations for Kefu's database (``kefu migrate`` upgrades to head)."""
