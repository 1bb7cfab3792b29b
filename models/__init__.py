"""SQLModel tables, the engine/session factory, queries and Alembic migrations."""
