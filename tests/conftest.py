"""Fixtures shared by the in-memory protocol tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import pytest_twisted
from memory import Harness
from twisted.internet import defer


@pytest.fixture
def harness() -> Iterator[Harness]:
    """A lobby on a fake clock with an in-memory agent; closed afterwards."""
    h = Harness()
    yield h
    pytest_twisted.blockon(defer.ensureDeferred(h.close()))
