"""Fixtures shared by the in-memory protocol tests, and the page tests' browser."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
import pytest_twisted
from browser import CHROMIUM, CHROMIUM_ARGS
from memory import Harness
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
