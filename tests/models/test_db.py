"""The engine: savepoints nest on both databases; pooled PostgreSQL connections survive the
server dropping them.

pysqlite's legacy transaction control never opens a transaction before SAVEPOINT; without
the engine's fix a savepoint taken before the first write commits on release.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, col, select

from models import db
from models.db import get_engine, session_scope
from models.tables import SiteClosure
from tests.conftest import POSTGRES_URL, _postgres_schema_url

EARLIER, INSIDE, LATER = date(2027, 1, 4), date(2027, 1, 5), date(2027, 1, 6)


def _closed_days(database_url: str) -> list[date]:
    with session_scope(database_url) as session:
        return list(session.exec(select(col(SiteClosure.day)).order_by(col(SiteClosure.day))))


def test_a_rolled_back_savepoint_keeps_the_outer_transactions_earlier_writes(
    database_url: str,
) -> None:
    with Session(get_engine(database_url)) as session:
        session.add(SiteClosure(day=EARLIER, reason="outer"))
        session.flush()
        savepoint = session.begin_nested()
        session.add(SiteClosure(day=INSIDE, reason="nested"))
        session.flush()
        savepoint.rollback()
        session.add(SiteClosure(day=LATER, reason="outer again"))
        session.commit()

    assert _closed_days(database_url) == [EARLIER, LATER]


def test_a_released_savepoint_taken_before_any_write_is_undone_with_its_transaction(
    database_url: str,
) -> None:
    with Session(get_engine(database_url)) as session:
        session.exec(select(col(SiteClosure.day))).all()  # a read opens no SQLite transaction
        with session.begin_nested():
            session.add(SiteClosure(day=INSIDE, reason="nested"))
        session.add(SiteClosure(day=LATER, reason="outer"))
        session.flush()
        session.rollback()

    assert _closed_days(database_url) == []


@pytest.fixture
def postgres_url() -> Iterator[str]:
    if not POSTGRES_URL:
        pytest.skip("FOLLOWUP_TEST_POSTGRES_URL not set")
    yield from _postgres_schema_url(POSTGRES_URL)


def _backend_pid(database_url: str) -> int:
    with session_scope(database_url) as session:
        return int(session.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _terminate(pid: int) -> None:
    """What a server restart or an idle timeout does to a connection waiting in the pool."""
    assert POSTGRES_URL is not None
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    admin.dispose()


@pytest.mark.postgres
def test_an_idle_pooled_connection_the_server_dropped_is_replaced_before_use(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 0.0)
    dropped = _backend_pid(postgres_url)
    _terminate(dropped)

    assert _backend_pid(postgres_url) != dropped


@pytest.mark.postgres
def test_a_connection_used_a_moment_ago_is_not_pinged_and_its_failure_resets_the_pool(
    postgres_url: str,
) -> None:
    """The trade-off of pinging only idle connections: one unit of work fails (its caller
    retries: a task's retry, an MLLP sender's resend after AR), the next gets a new one."""
    dropped = _backend_pid(postgres_url)
    _terminate(dropped)

    with pytest.raises(OperationalError):
        _backend_pid(postgres_url)
    assert _backend_pid(postgres_url) != dropped
