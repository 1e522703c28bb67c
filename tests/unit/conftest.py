"""The fast tier: no PostgreSQL, no server. Every fixture that would reach one fails here."""

from __future__ import annotations

import pytest


def _no_postgresql() -> None:
    pytest.fail("tests/unit uses no PostgreSQL and no server: move this test up to tests/")


@pytest.fixture(scope="session")
def pg_url() -> None:  # databases, fresh_db, api_server, studio, api... all start here
    _no_postgresql()


@pytest.fixture(scope="session")
def second_server() -> None:
    _no_postgresql()


@pytest.fixture(scope="session")
def third_server() -> None:
    _no_postgresql()
