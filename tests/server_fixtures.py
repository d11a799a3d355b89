"""Which tests start a server: the fixtures of tests/conftest.py that start the S3 server or a Ray head, and the
collected tests that take one without the `integration` mark (a helper module; conftest.py refuses a collection
holding any, and tests/test_docs.py checks README's promise about `make test-fast` with it)."""

from __future__ import annotations

import pytest

# `make test-fast` leaves out the tests marked integration, "those that start Ray or S3" (README): a test that takes
# one of these, directly or through other fixtures, must be marked so, and a collection that finds one unmarked
# stops there.
SERVER_FIXTURES = ("s3_server", "ray_head", "ray_cluster", "ray_address")


def unmarked_server_tests(items: list[pytest.Item]) -> list[str]:
    """The tests among `items` that take a server fixture without the `integration` mark."""
    return [
        item.nodeid
        for item in items
        if set(SERVER_FIXTURES) & set(getattr(item, "fixturenames", ()))
        and item.get_closest_marker("integration") is None
    ]
