"""Fixtures shared by the in-memory protocol tests, the page tests' browser,
and a redis-server for the pool's tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
import pytest_twisted
from browser import CHROMIUM, CHROMIUM_ARGS
from memory import Harness
from redis_server import RedisServer
from twisted.internet import defer

if TYPE_CHECKING:
    from playwright.sync_api import Browser


@pytest.fixture
def harness() -> Iterator[Harness]:
    """A lobby on a fake clock with an in-memory agent; closed afterwards."""
    h = Harness()
    yield h
    pytest_twisted.blockon(defer.ensureDeferred(h.close()))


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Headless Chromium for every page test of the session: Playwright's
    sync API runs one at a time, so the modules share it."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of the test module's own, on a free port."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()
