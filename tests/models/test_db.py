"""Savepoints (`Session.begin_nested`) nest inside the outer transaction on both databases.

pysqlite's legacy transaction control never opens a transaction before SAVEPOINT; without
the engine's fix a savepoint taken before the first write commits on release.
"""

from __future__ import annotations

from datetime import date

from sqlmodel import Session, col, select

from models.db import get_engine, session_scope
from models.tables import SiteClosure

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
