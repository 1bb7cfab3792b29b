"""Engine and session factory, and the migration entry point.

Engines are created on first use for a URL and cached, never at import time; callers pass the
URL from `Settings.database_url`, so tests and the CLI choose the database explicitly.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Dialect, Engine, make_url
from sqlalchemy.exc import DisconnectionError
from sqlmodel import Session, create_engine

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the gateway write while flows read; busy_timeout turns lock contention into
    # waiting instead of "database is locked"; SQLite ignores foreign keys unless asked.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _savepoint_inside_a_transaction(connection: Connection, _name: str | None) -> None:
    # pysqlite's legacy transaction control (default before Python 3.16) emits BEGIN before
    # INSERT/UPDATE/DELETE only: a SAVEPOINT taken while no transaction is open starts one of
    # its own and its RELEASE commits, so an outer rollback would keep its writes. BEGIN
    # IMMEDIATE first makes it nested, taking the write lock (within busy_timeout) as a write
    # would. Not the docs' whole-engine recipe (isolation_level=None, BEGIN on every
    # transaction): under WAL a transaction that reads, then writes after another writer
    # committed fails at once with "database is locked" (SQLITE_BUSY_SNAPSHOT skips
    # busy_timeout; 19 of 20 threads racing read-then-update failed), and BEGIN IMMEDIATE on
    # every transaction would queue read-only sessions behind the writers.
    dbapi_connection = connection.connection.dbapi_connection
    assert dbapi_connection is not None
    if not dbapi_connection.in_transaction:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _ensure_sqlite_folder(database_url: str) -> None:
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)


@lru_cache(maxsize=8)
def get_engine(database_url: str) -> Engine:
    # hide_parameters: a failing statement's traceback must not carry an MRN or a phone number.
    _ensure_sqlite_folder(database_url)
    if make_url(database_url).get_backend_name() == "sqlite":
        engine = create_engine(
            database_url, connect_args={"check_same_thread": False}, hide_parameters=True
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "savepoint", _savepoint_inside_a_transaction)
        return engine
    engine = create_engine(database_url, hide_parameters=True)
    event.listen(engine, "checkin", _note_checkin)
    event.listen(engine, "checkout", partial(_ping_if_idle, engine.dialect))
    return engine


# A pooled connection unused this long is pinged before use: the server may have restarted or
# a firewall dropped it. SQLAlchemy's pool_pre_ping pings on every checkout, one more round trip
# per unit of work (of about eight for a booking) for connections used a moment ago.
PING_AFTER_IDLE_SECONDS = 10.0


def _note_checkin(_dbapi_connection: Any, record: Any) -> None:
    record.info["checked_in"] = time.monotonic()


def _ping_if_idle(dialect: Dialect, dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    checked_in = record.info.get("checked_in")
    if checked_in is None or time.monotonic() - checked_in < PING_AFTER_IDLE_SECONDS:
        return  # new, or used a moment ago
    try:
        dialect.do_ping(dbapi_connection)
    except Exception as exc:
        # The pool discards this connection and checks out (or opens) another.
        raise DisconnectionError("pooled connection failed its ping") from exc


@contextmanager
def session_scope(database_url: str) -> Iterator[Session]:
    """One unit of work: commits on success, rolls back on error.

    The unit keeps one connection for its whole life, also across commits of its own: the
    gateway commits twice per message (the raw bytes, then the judgement), and a connection
    checked out again after each commit costs a pool round and, on PostgreSQL, a pre-ping.
    """
    with (
        get_engine(database_url).connect() as connection,
        Session(connection, expire_on_commit=False) as session,
    ):
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def alembic_config(database_url: str) -> Config:
    # Imported here: alembic (with mako, pygments) costs ~0.4 s that flow runs never need.
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation would read a '%' in a password as a placeholder.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def migrate(database_url: str, revision: str = "head") -> None:
    """Bring the database schema to `revision` (idempotent)."""
    from alembic import command  # only migrations need alembic (see alembic_config)

    _ensure_sqlite_folder(database_url)
    command.upgrade(alembic_config(database_url), revision)
