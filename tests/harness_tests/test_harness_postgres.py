"""The real PostgreSQL fixture: fresh databases, password auth, restart for fault tests."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from harness import PostgresServer


def test_fresh_database_is_empty_and_private(fresh_database: str, postgres_password: str) -> None:
    assert fresh_database.startswith("postgresql+psycopg2://kubetune:")
    assert postgres_password in fresh_database
    engine = sa.create_engine(fresh_database)
    try:
        with engine.begin() as conn:
            assert (
                conn.execute(
                    sa.text("select count(*) from pg_tables where schemaname='public'")
                ).scalar()
                == 0
            )
            conn.execute(sa.text("create table t (x int)"))
    finally:
        engine.dispose()


def test_wrong_password_is_refused(fresh_database: str, postgres_password: str) -> None:
    engine = sa.create_engine(fresh_database.replace(postgres_password, "wrong"))
    try:
        with pytest.raises(sa.exc.OperationalError, match="password authentication failed"):
            engine.connect()
    finally:
        engine.dispose()


def test_restart_keeps_data(postgres_server: PostgresServer, fresh_database: str) -> None:
    engine = sa.create_engine(fresh_database, pool_pre_ping=True)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("create table kept (x int)"))
            conn.execute(sa.text("insert into kept values (42)"))
        postgres_server.restart(mode="immediate")  # a crash, then recovery
        with engine.begin() as conn:
            assert conn.execute(sa.text("select x from kept")).scalar() == 42
    finally:
        engine.dispose()
