"""The page in ``web/``, driven in headless Chromium against a real ``twistd roulette``.

Every test looks at what a person sees: the status line, the log, the buttons,
the title.  The server sends the page with a strict ``Content-Security-Policy``
(no inline script or style); a policy violation, a script error, a failed
request or any dialog fails the test.

Set ``ROULETTE_SCREENSHOTS=1`` to refresh ``docs/screenshot-light.png`` and
``docs/screenshot-dark.png``.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import websockets.sync.client
from browser import CHROMIUM, Tab, page_server, serious_violations
from support import IN_CI, RunningServer, free_port, wait_until

if not Path(CHROMIUM).exists() and not IN_CI:
    pytest.skip(f"{CHROMIUM} is not installed", allow_module_level=True)

from playwright.sync_api import (
    Browser,
    Locator,
    Page,
    Request,
    WebSocketRoute,
    expect,
)

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

LOOKING = "Looking for a stranger…"
CHATTING = "You're now chatting with a random stranger. Say hi!"
PARTNER_LEFT = "Stranger has disconnected."
YOU_LEFT = "You have disconnected."
LOST = "Connection lost. Reconnecting…"
REPORTED = "You reported the stranger. Looking for a stranger…"
TYPING = "Stranger is typing…"

#: The module's server refuses messages over this many characters, not the
#: protocol's default of 2000: the page must learn the limit from the server.
SERVER_MAX_LENGTH = 500

expect.set_options(timeout=10_000)


class Chat(Tab):
    """One person's tab in a text chat."""

    def watch(self) -> None:
        self.page.on("requestfailed", self._on_request_failed)

    def _on_request_failed(self, request: Request) -> None:
        # The WebSocket is watched by the tests themselves, a reload aborts
        # what the old document was still loading, and while the server is
        # away the page's question why it cannot connect fails too.
        if (
            request.url.startswith("ws")
            or request.failure == "net::ERR_ABORTED"
            or request.url.endswith("/admission")
        ):
            return
        self.problems.append(f"request failed: {request.url} ({request.failure})")

    # -- what a person sees ------------------------------------------------

    @property
    def typing(self) -> Locator:
        return self.page.get_by_text(TYPING, exact=True)

    @property
    def online(self) -> Locator:
        return self.page.get_by_text(re.compile(r"^\d+ online$"))

    # -- what a person does ------------------------------------------------

    def say_at_once(self, *texts: str) -> None:
        """Send several messages faster than anyone types: each is put in the
        box and submitted (as Enter does) within one script task."""
        self.page.evaluate(
            """texts => {
                const form = document.getElementById("composer");
                const box = document.getElementById("message");
                for (const text of texts) {
                    box.value = text;
                    form.requestSubmit();
                }
            }""",
            list(texts),
        )

    def hide_tab(self, hidden: bool = True) -> None:
        """Make the tab hidden (or visible again), as switching tabs would."""
        self.page.evaluate(
            """hidden => {
                Object.defineProperty(document, "visibilityState", {
                    configurable: true, get: () => hidden ? "hidden" : "visible"});
                Object.defineProperty(document, "hidden", {
                    configurable: true, get: () => hidden});
                document.dispatchEvent(new Event("visibilitychange"));
            }""",
            hidden,
        )


def pump_until(page: Page, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Like ``wait_until``, but lets Playwright deliver its events meanwhile."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        page.wait_for_timeout(50)


def expect_chatting(*chats: Chat, timeout: float | None = None) -> None:
    for chat in chats:
        expect(chat.status).to_have_text(CHATTING, timeout=timeout)


def ask_then_confirm(chat: Chat, partner: Chat, name: str) -> None:
    """Press ``name`` (Report, Block) in a chat: the first press only asks
    ("Really report?"), and the question goes away by itself, the chat going
    on; pressed and confirmed, it is done."""
    really = f"Really {name.lower()}?"
    expect(chat.button(name)).to_be_enabled()
    chat.button(name).click()
    expect(chat.button(really)).to_be_visible()
    expect(chat.button(name)).to_be_visible(timeout=5_000)
    expect(partner.status).to_have_text(CHATTING)
    chat.button(name).click()
    chat.button(really).click()


def meets_one_then_the_other(newcomer: Chat, alice: Chat, bob: Chat) -> Chat:
    """A newcomer meets one of two who wait but never meet each other, and
    after its Next the other: the one it chats with then."""
    expect(newcomer.status).to_have_text(CHATTING)
    pump_until(
        newcomer.page, lambda: CHATTING in (alice.status.inner_text(), bob.status.inner_text())
    )
    first, second = (alice, bob) if alice.status.inner_text() == CHATTING else (bob, alice)
    expect(second.status).to_have_text(LOOKING)
    newcomer.button("Next").click()
    expect(first.status).to_have_text(PARTNER_LEFT)
    expect_chatting(newcomer, second)
    return second


def untimed(line: str) -> str:
    """A line of a saved log without its time ("[14:03] ")."""
    return re.sub(r"^\[\d\d:\d\d\] ", "", line)


@contextmanager
def strangers_behind_a_proxy(
    open_chat: OpenChat,
) -> Iterator[tuple[RunningServer, Callable[[str], Chat]]]:
    """A server of its own, and a way to open a tab on it from an address of
    its own (through a trusted proxy): reports and blocks are kept per
    address, and every tab connects from 127.0.0.1."""
    with RunningServer(
        free_port(), "--repair-cooldown", "0", "--trust-proxy", "1", "--connects-per-minute", "1000"
    ) as own:
        yield own, lambda address: open_chat(own, extra_http_headers={"X-Forwarded-For": address})


def chose_interests(running: RunningServer, tags: list[str]) -> dict[str, object]:
    """Context options for a browser that chose these interests on an earlier visit."""
    storage = {"name": "roulette.interests", "value": json.dumps(tags)}
    return {
        "storage_state": {
            "cookies": [],
            "origins": [{"origin": running.http_url, "localStorage": [storage]}],
        }
    }


# -- fixtures ----------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    running = page_server("--max-message-length", str(SERVER_MAX_LENGTH))
    yield running
    running.close()


OpenChat = Callable[..., Chat]


@pytest.fixture
def open_chat(browser: Browser, server: RunningServer) -> Iterator[OpenChat]:
    """Opens the page in a fresh browser context: one stranger per call.

    After the test every tab is closed, the test fails if any of them saw a
    dialog or an error, and the server is left with nobody online.
    """
    chats: list[tuple[Chat, RunningServer]] = []

    def open_one(
        on: RunningServer | None = None, *, first_visit: bool = False, **context_options: object
    ) -> Chat:
        running = on or server
        context = browser.new_context(**context_options)
        chat = Chat(context, running.http_url, first_visit=first_visit)
        chats.append((chat, running))
        return chat

    yield open_one

    for chat, _ in chats:
        chat.context.close()
    dialogs = [d for chat, _ in chats for d in chat.dialogs]
    problems = [p for chat, _ in chats for p in chat.problems]
    for running in {id(r): r for _, r in chats}.values():
        if running.process is not None:
            wait_until(lambda r=running: r.health()["online"] == 0)
    assert dialogs == [], "the page opened a dialog"
    assert problems == []


# -- tests -------------------------------------------------------------------


def test_two_strangers_chat_and_a_third_meets_the_one_who_left(open_chat: OpenChat) -> None:
    alice = open_chat()
    bob = open_chat()
    expect_chatting(alice, bob)
    expect(alice.online).to_have_text("2 online")
    expect(alice.button("Next")).to_be_enabled()
    expect(alice.button("Stop")).to_be_enabled()

    # Typing shows on the other side, and clears when the box is cleared.
    expect(bob.typing).to_be_hidden()
    alice.box.press_sequentially("hel", delay=20)
    expect(bob.typing).to_be_visible()
    alice.box.fill("")
    expect(bob.typing).to_be_hidden()

    # Typing again, then Enter: the message replaces the indicator.
    alice.box.press_sequentially("hello there", delay=10)
    expect(bob.typing).to_be_visible()
    alice.box.press("Enter")
    expect(alice.lines).to_have_text(["You: hello there"])
    expect(bob.lines).to_have_text(["Stranger: hello there"])
    expect(bob.typing).to_be_hidden()
    expect(alice.box).to_have_value("")

    # The other way round, with the Send button.
    bob.box.fill("hi! how are you?")
    bob.button("Send").click()
    expect(alice.lines).to_have_text(["You: hello there", "Stranger: hi! how are you?"])
    expect(bob.lines).to_have_text(["Stranger: hello there", "You: hi! how are you?"])

    # A pause of three seconds takes the indicator away on the other side.
    bob.box.press_sequentially("fine", delay=10)
    expect(alice.typing).to_be_visible()
    expect(alice.typing).to_be_hidden(timeout=4_500)
    bob.box.fill("")

    # Next: Alice looks again at once; Bob is told and is idle.
    alice.button("Next").click()
    expect(alice.status).to_have_text(LOOKING)
    expect(bob.status).to_have_text(PARTNER_LEFT)
    expect(bob.button("Start")).to_be_enabled()
    expect(bob.button("Stop")).to_be_disabled()
    # The old conversation stays readable until a new one starts.
    expect(bob.lines).to_have_count(2)

    carol = open_chat()
    expect_chatting(alice, carol)
    expect(alice.online).to_have_text("3 online")
    expect(alice.lines).to_have_count(0)
    carol.say("hi, I'm new here")
    expect(alice.lines).to_have_text(["Stranger: hi, I'm new here"])
    expect(bob.status).to_have_text(PARTNER_LEFT)
    expect(bob.lines).to_have_count(2)

    # Stop ends the chat without looking again.
    carol.button("Stop").click()
    expect(carol.status).to_have_text(YOU_LEFT)
    expect(carol.button("Start")).to_be_enabled()
    expect(alice.status).to_have_text(PARTNER_LEFT)

    # Start from idle: Bob and Carol meet.
    bob.button("Start").click()
    carol.button("Start").click()
    expect_chatting(bob, carol)
    expect(alice.status).to_have_text(PARTNER_LEFT)


def test_the_page_runs_under_a_strict_content_security_policy(open_chat: OpenChat) -> None:
    alice = open_chat()
    expect(alice.status).to_have_text(LOOKING)
    assert alice.response is not None
    header = alice.response.header_value("content-security-policy") or ""
    policy = {
        name: sources for name, *sources in (d.split() for d in header.split(";") if d.strip())
    }
    assert policy.get("default-src") == ["'self'"], header
    for directive in ("default-src", "script-src", "style-src"):
        assert not any("unsafe" in s for s in policy.get(directive, [])), header
    # The policy is in force: an inline style attribute is refused.
    violations = alice.page.evaluate(
        """() => new Promise(resolve => {
            const seen = [];
            document.addEventListener("securitypolicyviolation", e => {
                seen.push(e.effectiveDirective);
                resolve(seen);
            });
            document.body.insertAdjacentHTML(
                "beforeend", '<p id="probe" style="width: 123px">probe</p>');
        })"""
    )
    assert violations == ["style-src-attr"]
    assert alice.page.evaluate("getComputedStyle(probe).width") != "123px"
    alice.problems[:] = [p for p in alice.problems if "inline style" not in p]


def test_typing_indicator_clears_itself_after_five_seconds(
    open_chat: OpenChat, server: RunningServer
) -> None:
    alice = open_chat()
    expect(alice.status).to_have_text(LOOKING)
    # A partner that says it is typing and then falls silent.
    with websockets.sync.client.connect(server.ws_url) as partner:
        expect(alice.status).to_have_text(CHATTING)
        partner.send(json.dumps({"type": "typing", "active": True}))
        expect(alice.typing).to_be_visible()
        alice.page.wait_for_timeout(3_500)
        expect(alice.typing).to_be_visible()
        expect(alice.typing).to_be_hidden(timeout=3_000)
        # A message clears it at once, partner_left too.
        partner.send(json.dumps({"type": "typing", "active": True}))
        expect(alice.typing).to_be_visible()
        partner.send(json.dumps({"type": "message", "text": "here"}))
        expect(alice.lines).to_have_text(["Stranger: here"])
        expect(alice.typing).to_be_hidden(timeout=500)
        partner.send(json.dumps({"type": "typing", "active": True}))
        expect(alice.typing).to_be_visible()
    expect(alice.status).to_have_text(PARTNER_LEFT)
    expect(alice.typing).to_be_hidden(timeout=500)


class Relay:
    """Stands between a tab and the server, as a slow or strict network would.

    While ``holding``, the server's events (all but ``online``) are kept back
    until :meth:`release`.  A command whose type is in ``refuse`` is not
    passed on; the tab gets the ``rate_limited`` error the server gives a
    command sent too fast.
    """

    def __init__(self, chat: Chat) -> None:
        self.page = chat.page
        self.received: list[str] = []  # the type of every event the server sent
        self.held: list[str | bytes] = []
        self.holding = False
        self.refuse: set[str] = set()
        #: Limits to tell the tab in place of the server's, if any; ``{}``
        #: tells it none, as a server older than ``limits`` would.
        self.limits: dict[str, float] | None = None
        self.connections = 0
        self._route: WebSocketRoute | None = None
        self._server: WebSocketRoute | None = None
        self.page.route_web_socket(re.compile(r"/ws(\?.*)?$"), self._connect)
        self.page.reload()
        self.wait_for(lambda: "waiting" in self.received)

    def _connect(self, route: WebSocketRoute) -> None:
        self._route = route
        self.connections += 1
        server = self._server = route.connect_to_server()

        def from_server(message: str | bytes) -> None:
            event = json.loads(message)
            kind = event["type"]
            self.received.append(kind)
            if "limits" in event and self.limits is not None:
                event = {k: v for k, v in event.items() if k != "limits"}
                message = json.dumps({**event, "limits": self.limits} if self.limits else event)
            if self.holding and kind != "online":
                self.held.append(message)
            else:
                route.send(message)

        def from_page(message: str | bytes) -> None:
            kind = json.loads(message)["type"]
            if kind in self.refuse:
                self.refuse.discard(kind)
                refusal = {"type": "error", "code": "rate_limited", "message": "Slow down."}
                route.send(json.dumps(refusal))
            else:
                server.send(message)

        server.on_message(from_server)
        route.on_message(from_page)

    def reconnect(self) -> None:
        """Reload the tab, so that it connects through the relay again."""
        self.page.reload()
        self.wait_for(lambda: "waiting" in self.received)

    def wait_for(self, predicate: Callable[[], bool]) -> None:
        pump_until(self.page, predicate)

    def release(self, count: int | None = None) -> None:
        assert self._route is not None
        for _ in range(len(self.held) if count is None else count):
            self._route.send(self.held.pop(0))
        self.holding = bool(self.held)

    def inject(self, event: dict[str, object]) -> None:
        """Send the tab an event the server did not send."""
        assert self._route is not None
        self._route.send(json.dumps(event))

    def close(self, code: int, reason: str = "") -> None:
        """Close the tab's connection, as the server would.  The relay's own
        connection to the server is closed too (Playwright leaves it open),
        so that the server does not keep a ghost of the tab in its queue."""
        assert self._route is not None and self._server is not None
        self._server.close(code=1000)
        self._route.close(code=code, reason=reason)


def test_events_about_a_chat_already_left_are_ignored(
    open_chat: OpenChat, server: RunningServer
) -> None:
    """Events the server sent before it saw Stop or Next must not win.

    The server's events to Alice are held back while she presses a button, so
    they arrive after her command, as they would on a slow network.
    """
    alice = open_chat()
    relay = Relay(alice)
    expect(alice.status).to_have_text(LOOKING)

    # Stop while a "paired" is on its way: Alice stays idle, as the server has her.
    relay.holding = True
    bob = open_chat()
    expect(bob.status).to_have_text(CHATTING)
    relay.wait_for(lambda: len(relay.held) == 1)
    alice.button("Stop").click()
    expect(bob.status).to_have_text(PARTNER_LEFT)
    relay.release()
    alice.page.wait_for_timeout(300)
    expect(alice.status).to_have_text(YOU_LEFT)
    expect(alice.button("Start")).to_be_visible()
    assert server.health()["chatting"] == 0

    # Next while a "paired" is on its way: Alice looks until the server has
    # seen her Next and answered it.
    waits = relay.received.count("waiting")
    alice.button("Start").click()
    expect(alice.status).to_have_text(LOOKING)
    relay.wait_for(lambda: relay.received.count("waiting") > waits)
    relay.holding = True
    bob.button("Start").click()
    expect(bob.status).to_have_text(CHATTING)
    relay.wait_for(lambda: len(relay.held) == 1)
    alice.button("Next").click()
    expect(bob.status).to_have_text(PARTNER_LEFT)
    relay.wait_for(lambda: len(relay.held) == 2)  # the stale "paired", then "waiting"
    relay.release(1)
    alice.page.wait_for_timeout(300)
    expect(alice.status).to_have_text(LOOKING)
    relay.release()
    expect(alice.status).to_have_text(LOOKING)
    bob.button("Start").click()
    expect_chatting(alice, bob)  # they meet again: the cooldown is 0
    bob.say("hello again")
    expect(alice.lines).to_have_text(["Stranger: hello again"])


def test_a_message_shows_as_sent_only_once_the_server_has_relayed_it(
    open_chat: OpenChat,
) -> None:
    alice = open_chat()
    relay = Relay(alice)
    bob = open_chat()
    expect_chatting(alice, bob)

    # Until the server confirms it, Alice's line says so.
    relay.holding = True
    alice.say("first")
    expect(bob.lines).to_have_text(["Stranger: first"])
    expect(alice.lines).to_have_text(["You: first (sending…)"])
    dimmed = "line => Number(getComputedStyle(line.querySelector('.text')).opacity)"
    assert alice.lines.first.evaluate(dimmed) < 1
    relay.release()
    expect(alice.lines).to_have_text(["You: first"])
    assert alice.lines.first.evaluate(dimmed) == 1

    # A message the server refuses is never shown as said.  (Here the tab
    # is told a longer limit than the server's, as by a server whose
    # limits changed since the page learnt them.)
    relay.limits = {"message_length": 2000}
    relay.reconnect()
    bob.button("Start").click()
    expect_chatting(alice, bob)
    refused = "z" * (SERVER_MAX_LENGTH + 1)
    alice.say(refused)
    expect(alice.lines).to_have_text([f"You: {refused} (not delivered: too long)"])
    expect(alice.lines.last).to_have_class(re.compile(r"\bfailed\b"))
    expect(alice.notice).to_have_text(
        f"A message may be at most {SERVER_MAX_LENGTH} characters long."
    )
    alice.say("and this one?")
    expect(alice.lines.last).to_have_text("You: and this one?")
    expect(bob.lines).to_have_text(["Stranger: and this one?"])

    # Lost with the connection before the server answered: not confirmed.
    relay.holding = True
    alice.say("still there?")
    expect(bob.lines.last).to_have_text("Stranger: still there?")
    relay.close(1011)
    expect(alice.lines.last).to_have_text(
        "You: still there? (not confirmed: the connection was lost)"
    )


SENDING = re.compile(r"\bpending\b")
FAILED = re.compile(r"\bfailed\b")


def test_messages_over_the_servers_rate_are_never_shown_as_said(open_chat: OpenChat) -> None:
    """The page keeps to the message budget its server names; what the
    server refuses anyway is marked as not delivered, and saved so."""
    own = RunningServer(
        free_port(), "--repair-cooldown", "0", "--message-rate", "1", "--message-burst", "2"
    ).start()
    try:
        alice = open_chat(own)
        # Alice's tab is told a far larger budget than the server keeps, so
        # that its own check lets through what the server then refuses.
        relay = Relay(alice)
        relay.limits = {"message_rate": 100, "message_burst": 100}
        relay.reconnect()
        bob = open_chat(own)
        expect_chatting(alice, bob)

        alice.say_at_once("one", "two", "three", "four")
        expect(alice.lines).to_have_text(
            [
                "You: one",
                "You: two",
                "You: three (not delivered: sent too fast)",
                "You: four (not delivered: sent too fast)",
            ]
        )
        for n, line in enumerate(alice.lines.all()):
            expect(line).to_have_class(FAILED if n >= 2 else re.compile(r"^line you$"))
        expect(alice.notice).to_have_text("You are sending too fast; this one was not delivered.")
        expect(bob.lines).to_have_text(["Stranger: one", "Stranger: two"])

        # A moment later the server takes one again, and it shows as said.
        alice.page.wait_for_timeout(1_200)
        alice.say("five")
        expect(bob.lines.last).to_have_text("Stranger: five")
        expect(alice.lines.last).to_have_text("You: five")
        expect(alice.lines.last).not_to_have_class(SENDING)
        expect(alice.lines.last).not_to_have_class(FAILED)
        expect(alice.notice).to_be_empty()

        with alice.page.expect_download() as download_info:
            alice.button("Save log").click()
        saved = Path(download_info.value.path()).read_text(encoding="utf-8")
        assert [untimed(line) for line in saved.splitlines()[-5:]] == [
            "You: one",
            "You: two",
            "You: three (not delivered: sent too fast)",
            "You: four (not delivered: sent too fast)",
            "You: five",
        ]

        # Bob's tab has the server's own budget: with a burst of 2 it sends
        # one message at once, and asks him to wait before the next.
        bob.say_at_once("hi", "there")
        expect(bob.notice).to_have_text("You are sending messages too fast. Wait a moment.")
        expect(bob.box).to_have_value("there")  # nothing is lost
        expect(bob.lines.last).to_have_text("You: hi")
        expect(alice.lines.last).to_have_text("Stranger: hi")
        bob.page.wait_for_timeout(1_600)
        bob.box.press("Enter")
        expect(alice.lines.last).to_have_text("Stranger: there")
        expect(bob.lines.last).to_have_text("You: there")
        expect(bob.page.locator("#log .failed")).to_have_count(0)
    finally:
        own.close()


def test_a_message_sent_as_the_chat_ends_gets_the_servers_answer(open_chat: OpenChat) -> None:
    """The answer to a message is about its line, whatever the chat is by
    the time it comes: never dropped as an event about a chat already left."""
    alice = open_chat()
    relay = Relay(alice)
    bob = open_chat()
    expect_chatting(alice, bob)

    # Sent, then Next before the server's answer has come: it was said.
    waits = relay.received.count("waiting")
    relay.holding = True
    alice.say("bye for now")
    expect(alice.lines).to_have_text(["You: bye for now (sending…)"])
    expect(alice.lines.last).to_have_class(SENDING)
    alice.button("Next").click()
    expect(bob.status).to_have_text(PARTNER_LEFT)
    expect(bob.lines).to_have_text(["Stranger: bye for now"])
    relay.wait_for(lambda: relay.received.count("waiting") > waits)  # after its "sent"
    relay.release()
    expect(alice.lines).to_have_text(["You: bye for now"])
    expect(alice.lines.last).not_to_have_class(SENDING)
    expect(alice.status).to_have_text(LOOKING)

    bob.button("Start").click()
    expect_chatting(alice, bob)

    # Sent as the stranger leaves: the server had nobody to give it to.
    relay.holding = True
    bob.button("Stop").click()
    relay.wait_for(lambda: any("partner_left" in event for event in relay.held))
    alice.say("are you still there?")  # the tab does not know yet
    expect(alice.lines).to_have_text(["You: are you still there? (sending…)"])
    relay.wait_for(lambda: len(relay.held) == 2)
    relay.release()
    expect(alice.status).to_have_text(PARTNER_LEFT)
    expect(alice.lines).to_have_text(
        ["You: are you still there? (not delivered: the stranger had left)"]
    )
    expect(alice.lines.last).to_have_class(FAILED)
    expect(bob.lines).to_have_count(0)


def test_a_server_that_sends_no_limits_gets_the_protocol_defaults(open_chat: OpenChat) -> None:
    alice = open_chat(locale="en-US")
    relay = Relay(alice)
    expect(alice.status).to_have_text(LOOKING)
    # This server's limit (500), as its first "online" said.
    alice.box.fill("x" * 451)
    expect(alice.page.get_by_text("451 / 500")).to_be_visible()

    # Reconnected to a server that says nothing of limits: 2000, not 500.
    relay.limits = {}
    relay.close(1011)
    relay.wait_for(lambda: relay.connections == 2)
    expect(alice.status).to_have_text(LOOKING)
    expect(alice.page.locator("#counter")).to_be_hidden()
    alice.box.fill("x" * 2001)
    expect(alice.page.get_by_text("2,001 / 2,000")).to_be_visible()
    alice.box.press("Enter")
    expect(alice.notice).to_have_text("Your message is 2,001 characters long; the limit is 2,000.")


def test_a_refused_next_or_stop_does_not_leave_the_page_out_of_step(
    open_chat: OpenChat, server: RunningServer
) -> None:
    """If the server refuses Next or Stop as too fast, the page gets back in
    step with it instead of showing a state the server does not share."""
    alice = open_chat()
    relay = Relay(alice)
    bob = open_chat()
    expect_chatting(alice, bob)

    # A message whose answer has not come yet when the page reconnects.
    relay.holding = True
    alice.say("just before")
    expect(bob.lines).to_have_text(["Stranger: just before"])
    relay.holding = False
    relay.refuse.add("next")
    alice.button("Next").click()
    expect(alice.notice).to_have_text("Slow down.")
    # The page reconnects: the old chat ends, and Alice looks again.
    relay.wait_for(lambda: relay.connections == 2)
    relay.held.clear()  # the old connection's answer, which never came
    expect(bob.status).to_have_text(PARTNER_LEFT)
    expect(alice.status).to_have_text(LOOKING)
    expect(alice.lines).to_have_text(["You: just before (not confirmed: the connection was lost)"])
    carol = open_chat()
    expect_chatting(alice, carol)

    relay.refuse.add("stop")
    alice.button("Stop").click()
    relay.wait_for(lambda: relay.connections == 3)
    expect(carol.status).to_have_text(PARTNER_LEFT)
    expect(alice.status).to_have_text(YOU_LEFT)
    # The relay runs in this process: keep Playwright delivering while waiting.
    relay.wait_for(lambda: server.health() == {"online": 3, "waiting": 0, "chatting": 0})


def test_report_ends_the_chat_and_the_two_never_meet_again(open_chat: OpenChat) -> None:
    with strangers_behind_a_proxy(open_chat) as (own, stranger):
        alice = stranger("192.0.2.1")
        bob = stranger("192.0.2.2")
        expect_chatting(alice, bob)
        bob.say("something rude")
        expect(alice.lines).to_have_text(["Stranger: something rude"])

        # Asked and confirmed: the chat ends, and Alice looks again.
        ask_then_confirm(alice, bob, "Report")
        expect(bob.status).to_have_text(PARTNER_LEFT)
        expect(alice.status).to_have_text(REPORTED)
        expect(alice.lines).to_have_count(0)
        expect(alice.page.locator("#report")).to_be_hidden()
        expect(alice.button("Next")).to_be_enabled()
        expect(bob.page.locator("#report")).to_be_hidden()

        # Both look for a stranger, and the server keeps them apart.
        bob.button("Start").click()
        expect(bob.status).to_have_text(LOOKING)
        wait_until(lambda: own.health() == {"online": 2, "waiting": 2, "chatting": 0})
        alice.button("Next").click()
        bob.button("Next").click()
        expect(alice.status).to_have_text(LOOKING)
        wait_until(lambda: own.health() == {"online": 2, "waiting": 2, "chatting": 0})
        alice.page.wait_for_timeout(300)
        assert own.health() == {"online": 2, "waiting": 2, "chatting": 0}

        # A third stranger meets one of them, then the other.
        carol = stranger("192.0.2.3")
        second = meets_one_then_the_other(carol, alice, bob)
        carol.say("hello, second stranger")
        expect(second.lines).to_have_text(["Stranger: hello, second stranger"])


def ban_text(until: float, zone: timezone) -> str:
    """What the page says about a ban, in the tab's time zone."""
    end = datetime.fromtimestamp(math.ceil(until / 60) * 60, zone)
    shown = end.strftime("%H:%M")
    if end.date() != datetime.now(zone).date():
        shown = end.strftime("%Y-%m-%d ") + shown
    return f"You have been banned until {shown}."


def test_a_ban_is_shown_and_waited_out(open_chat: OpenChat) -> None:
    # India has no daylight saving time, and the offset is not whole hours.
    zone = timezone(timedelta(hours=5, minutes=30))
    alice = open_chat(timezone_id="Asia/Kolkata")
    relay = Relay(alice)
    bob = open_chat()
    expect_chatting(alice, bob)
    alice.page.evaluate(
        """() => {
            window.statuses = [];
            const status = document.getElementById("status");
            new MutationObserver(() => window.statuses.push(status.textContent))
                .observe(status, {childList: true, characterData: true, subtree: true});
        }"""
    )

    def statuses() -> list[str]:
        """The status lines shown since the last call."""
        return alice.page.evaluate("window.statuses.splice(0)")

    def banned(seconds: int) -> str:
        statuses()
        until = math.ceil(time.time()) + seconds
        relay.inject({"type": "banned", "until": until})
        relay.close(1008, "banned")
        text = ban_text(until, zone)
        expect(alice.status).to_have_text(text)
        for name in ("Next", "Send", "Stop"):
            expect(alice.button(name)).to_be_disabled()
        expect(alice.page.locator("#report")).to_be_hidden()
        expect(alice.box).to_be_visible()
        return text

    # A short ban: no reconnect while it lasts, then the page comes back.
    banned(3)
    expect(bob.status).to_have_text(PARTNER_LEFT)
    alice.page.wait_for_timeout(1_500)
    assert relay.connections == 1
    assert LOST not in statuses()
    relay.wait_for(lambda: relay.connections == 2)
    expect(alice.status).to_have_text(LOOKING)
    expect(alice.button("Next")).to_be_enabled()
    expect(alice.button("Send")).to_be_enabled()
    bob.button("Start").click()
    expect_chatting(alice, bob)

    # A long one: nothing for seconds, a reload included.
    text = banned(120)
    alice.page.wait_for_timeout(3_000)
    assert relay.connections == 2
    expect(alice.status).to_have_text(text)
    assert LOST not in statuses()
    alice.say("can anyone hear me?")
    expect(alice.notice).to_have_text(text)
    alice.page.reload()
    expect(alice.status).to_have_text(text)
    alice.page.wait_for_timeout(1_000)
    assert relay.connections == 2
    expect(alice.button("Next")).to_be_disabled()


def test_markup_in_a_message_is_shown_as_text(open_chat: OpenChat) -> None:
    alice = open_chat()
    bob = open_chat()
    expect_chatting(alice, bob)
    script = "<script>alert(1)</script>"
    image = "<img src=x onerror=alert(1)>"
    alice.say(script)
    alice.say(image)
    alice.say('"><b>bold?</b>')
    expected = [f"Stranger: {script}", f"Stranger: {image}", 'Stranger: "><b>bold?</b>']
    expect(bob.lines).to_have_text(expected)
    expect(bob.log.locator("script, img, b")).to_have_count(0)
    expect(alice.log.locator("script, img, b")).to_have_count(0)
    bob.page.wait_for_timeout(300)  # a broken image would have fired by now
    assert bob.dialogs == [] and alice.dialogs == []


def test_text_the_server_would_refuse_is_explained_inline(open_chat: OpenChat) -> None:
    alice = open_chat()
    expect(alice.status).to_have_text(LOOKING)
    alice.say("anyone there?")
    expect(alice.notice).to_have_text(re.compile(r"wait for a stranger", re.IGNORECASE))
    expect(alice.lines).to_have_count(0)

    bob = open_chat()
    expect_chatting(alice, bob)
    for blank in ("", "   ", "\n\t "):
        alice.say(blank)
        expect(alice.notice).to_have_text("Type a message first.")
    expect(alice.lines).to_have_count(0)

    # The limit is the server's (--max-message-length), as it told the page:
    # the counter shows from 90 % of it.
    alice.box.fill("x" * 450)
    expect(alice.page.locator("#counter")).to_be_hidden()
    alice.box.fill("x" * 451)
    expect(alice.page.get_by_text(f"451 / {SERVER_MAX_LENGTH}")).to_be_visible()
    too_long = "x" * (SERVER_MAX_LENGTH + 1)
    alice.say(too_long)
    expect(alice.notice).to_have_text(
        f"Your message is {SERVER_MAX_LENGTH + 1} characters long; "
        f"the limit is {SERVER_MAX_LENGTH}."
    )
    expect(alice.page.get_by_text(f"{SERVER_MAX_LENGTH + 1} / {SERVER_MAX_LENGTH}")).to_be_visible()
    expect(alice.box).to_have_value(too_long)  # nothing is lost
    expect(alice.lines).to_have_count(0)

    # Typing again takes the explanation away.
    alice.box.fill("fine, short")
    expect(alice.notice).to_be_empty()
    alice.box.press("Enter")
    expect(bob.lines).to_have_text(["Stranger: fine, short"])

    # Exactly at the limit is fine.
    alice.say("y" * SERVER_MAX_LENGTH)
    expect(bob.lines.last).to_have_text("Stranger: " + "y" * SERVER_MAX_LENGTH)
    expect(alice.lines.last).to_have_text("You: " + "y" * SERVER_MAX_LENGTH)

    bob.button("Stop").click()
    expect(alice.status).to_have_text(PARTNER_LEFT)
    alice.say("hello?")
    expect(alice.notice).to_have_text("Press Start to find a stranger first.")
    assert alice.dialogs == []


def test_reconnects_after_the_server_restarts(open_chat: OpenChat) -> None:
    own = RunningServer(free_port(), "--repair-cooldown", "0").start()
    try:
        alice = open_chat(own)
        bob = open_chat(own)
        expect_chatting(alice, bob)
        alice.say("before the restart")
        expect(bob.lines).to_have_text(["Stranger: before the restart"])
        alice.page.evaluate("window.sameDocument = true")

        own.stop()
        for chat in (alice, bob):
            expect(chat.status).to_have_text(LOST)
            expect(chat.button("Next")).to_be_disabled()
            expect(chat.button("Stop")).to_be_disabled()
        own.start()
        # Backoff with full jitter: the first retry comes within a second.
        expect_chatting(alice, bob, timeout=40_000)
        alice.say("after the restart")
        expect(bob.lines).to_have_text(["Stranger: after the restart"])
        assert alice.page.evaluate("window.sameDocument") is True
        expect(alice.button("Next")).to_be_enabled()

        # Idle people stay idle across a reconnect; the server agrees.
        alice.button("Stop").click()
        expect(alice.status).to_have_text(YOU_LEFT)
        expect(bob.status).to_have_text(PARTNER_LEFT)
        own.stop()
        expect(alice.status).to_have_text(LOST)
        expect(bob.status).to_have_text(LOST)
        own.start()
        expect(alice.status).to_have_text(YOU_LEFT, timeout=40_000)
        expect(bob.status).to_have_text(PARTNER_LEFT, timeout=40_000)
        expect(alice.button("Start")).to_be_enabled()
        expect(bob.button("Start")).to_be_enabled()
        wait_until(lambda: own.health() == {"online": 2, "waiting": 0, "chatting": 0})
        alice.page.wait_for_timeout(500)
        assert own.health() == {"online": 2, "waiting": 0, "chatting": 0}
        expect(alice.status).to_have_text(YOU_LEFT)
        expect(bob.status).to_have_text(PARTNER_LEFT)

        alice.button("Start").click()
        bob.button("Start").click()
        expect_chatting(alice, bob)
    finally:
        own.close()


def test_esc_twice_save_log_and_unread_count(open_chat: OpenChat) -> None:
    alice = open_chat()
    bob = open_chat()
    expect_chatting(alice, bob)
    expect(alice.page).to_have_title("roulette")

    # Messages that arrive while the tab is hidden are counted in the title.
    alice.hide_tab()
    bob.say("psst")
    bob.say("are you there?")
    expect(alice.lines).to_have_count(2)
    expect(alice.page).to_have_title("(2) roulette")
    alice.hide_tab(False)
    expect(alice.page).to_have_title("roulette")
    bob.say("seen")
    expect(alice.lines).to_have_count(3)
    expect(alice.page).to_have_title("roulette")

    alice.say("yes, <here> & now")
    expect(alice.lines.last).to_have_text("You: yes, <here> & now")  # delivered

    with alice.page.expect_download() as download_info:
        alice.button("Save log").click()
    download = download_info.value
    assert download.suggested_filename.endswith(".txt")
    saved = Path(download.path()).read_text(encoding="utf-8")
    assert [untimed(line) for line in saved.splitlines()[-4:]] == [
        "Stranger: psst",
        "Stranger: are you there?",
        "Stranger: seen",
        "You: yes, <here> & now",
    ]

    # One Esc only asks; the chat goes on.
    alice.page.keyboard.press("Escape")
    expect(alice.button("Really?")).to_be_visible()
    expect(alice.status).to_have_text(CHATTING)
    expect(alice.button("Next")).to_be_visible(timeout=3_000)
    expect(alice.status).to_have_text(CHATTING)
    expect(bob.status).to_have_text(CHATTING)

    # Esc, Esc: Next.
    alice.page.keyboard.press("Escape")
    expect(alice.button("Really?")).to_be_visible()
    alice.page.keyboard.press("Escape")
    expect(alice.status).to_have_text(LOOKING)
    expect(bob.status).to_have_text(PARTNER_LEFT)
    expect(alice.button("Next")).to_be_visible()


def test_phone_viewport(open_chat: OpenChat) -> None:
    phone = {"viewport": {"width": 360, "height": 640}, "is_mobile": True, "has_touch": True}
    alice = open_chat(**phone)
    bob = open_chat(**phone)
    expect_chatting(alice, bob)

    def no_horizontal_overflow(chat: Chat) -> None:
        width = chat.page.evaluate(
            "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        assert width[0] <= width[1], f"the page scrolls sideways: {width}"
        assert width[1] == 360
        log = chat.log.evaluate("log => [log.scrollWidth, log.clientWidth]")
        assert log[0] <= log[1], f"the conversation scrolls sideways: {log}"

    no_horizontal_overflow(alice)
    alice.say("a" * 300)  # one long word
    alice.say("https://example.org/" + "very-long-path/" * 20)
    # Enough to fill the log, few enough for any per-connection rate limit.
    for n in range(8):
        bob.say(f"line {n} " + "words and more words " * 5)
    expect(alice.lines).to_have_count(10)
    assert alice.log.evaluate("log => log.scrollHeight > log.clientHeight")
    for chat in (alice, bob):
        no_horizontal_overflow(chat)
        for control in (chat.box, chat.button("Send"), chat.button("Next")):
            expect(control).to_be_in_viewport(ratio=1)
        assert chat.page.evaluate("document.documentElement.scrollHeight") <= 640

    alice.box.tap()
    alice.box.fill("still reachable")
    alice.button("Send").tap()
    expect(bob.lines.last).to_have_text("Stranger: still reachable")
    expect(bob.lines.last).to_be_in_viewport()


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_no_serious_accessibility_violations(open_chat: OpenChat, scheme: str) -> None:

    def check(chat: Chat, state: str) -> None:
        serious = serious_violations(chat.page)
        assert serious == [], f"{scheme}, {state}"

    alice = open_chat(color_scheme=scheme)
    # Told a longer limit than the server's, Alice's tab sends what the
    # server refuses: a line marked as not delivered.
    relay = Relay(alice)
    relay.limits = {"message_length": 2000}
    relay.reconnect()
    bob = open_chat(color_scheme=scheme)
    expect_chatting(alice, bob)
    bob.say("hello, stranger")
    alice.say("x" * (SERVER_MAX_LENGTH + 1))
    expect(alice.lines.last).to_have_class(re.compile(r"\bfailed\b"))
    bob.box.press_sequentially("typing", delay=10)
    expect(alice.typing).to_be_visible()
    relay.holding = True  # and one still waiting for the server's answer
    alice.say("hi!")
    expect(alice.lines.last).to_have_text("You: hi! (sending…)")
    alice.say(" ")
    expect(alice.notice).not_to_be_empty()
    check(alice, "chatting")
    relay.release()
    expect(alice.lines.last).to_have_text("You: hi!")
    alice.button("Report").click()
    expect(alice.button("Really report?")).to_be_visible()
    check(alice, "asked to confirm a report")

    alice.button("Stop").click()
    expect(alice.status).to_have_text(YOU_LEFT)
    check(alice, "idle")
    check(bob, "idle after the stranger left")


def test_keyboard_only(open_chat: OpenChat) -> None:
    alice = open_chat()
    bob = open_chat()
    expect_chatting(alice, bob)
    bob.say("hello")
    expect(alice.lines).to_have_count(1)

    keyboard = alice.page.keyboard
    focused = "document.activeElement"
    for _ in range(12):
        keyboard.press("Tab")
        visible = alice.page.evaluate(
            f"""[{focused}.matches(":focus-visible"),
                getComputedStyle({focused}).outlineStyle,
                {focused}.id]"""
        )
        assert visible[0] and visible[1] != "none", f"no visible focus on #{visible[2]}"
        if visible[2] == "message":
            break
    expect(alice.box).to_be_focused()
    keyboard.type("typed without a mouse")
    keyboard.press("Enter")
    expect(bob.lines.last).to_have_text("Stranger: typed without a mouse")
    expect(alice.box).to_be_focused()

    # Shift+Enter starts a new line instead of sending.
    keyboard.type("two")
    keyboard.press("Shift+Enter")
    keyboard.type("lines")
    keyboard.press("Enter")
    expect(bob.lines.last).to_have_text("Stranger: two\nlines")

    # Back to Next, and press it with the keyboard.
    keyboard.press("Shift+Tab")
    expect(alice.button("Next")).to_be_focused()
    keyboard.press("Enter")
    expect(alice.status).to_have_text(LOOKING)
    expect(bob.status).to_have_text(PARTNER_LEFT)

    # Stop by keyboard too, then Start again.
    keyboard.press("Shift+Tab")
    keyboard.press("Shift+Tab")
    expect(alice.button("Stop")).to_be_focused()
    keyboard.press("Space")
    expect(alice.status).to_have_text(YOU_LEFT)
    for _ in range(3):
        keyboard.press("Tab")
        if alice.page.evaluate(f"{focused}.id") == "next":
            break
    expect(alice.button("Start")).to_be_focused()
    keyboard.press("Enter")
    expect(alice.status).to_have_text(LOOKING)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_screenshot(
    open_chat: OpenChat, server: RunningServer, scheme: str, tmp_path: Path
) -> None:
    size = {"viewport": {"width": 960, "height": 640}, "color_scheme": scheme}
    alice = open_chat(**size, **chose_interests(server, ["cats", "chess", "rainy days"]))
    bob = open_chat(**size, **chose_interests(server, ["cats", "films"]))
    expect_chatting(alice, bob)
    expect(alice.log.get_by_text("You both like cats.")).to_be_visible()
    bob.say("hi! where are you from?")
    alice.say("Hello! Somewhere with too much rain. You?")
    bob.say("Same here, honestly.\nIt has not stopped for a week.")
    alice.say("Ha. Any plans for the weekend?")
    bob.box.press_sequentially("Thinking about it", delay=5)
    expect(alice.typing).to_be_visible()
    expect(alice.online).to_have_text("2 online")

    background = alice.page.evaluate("getComputedStyle(document.body).backgroundColor")
    red, green, blue = (int(c) for c in re.findall(r"\d+", background)[:3])
    brightness = (red + green + blue) / 3
    assert (brightness > 180) if scheme == "light" else (brightness < 60), background

    shot = tmp_path / f"screenshot-{scheme}.png"
    alice.page.screenshot(path=shot)
    assert shot.stat().st_size > 10_000
    if os.environ.get("ROULETTE_SCREENSHOTS"):
        DOCS.mkdir(exist_ok=True)
        shutil.copyfile(shot, DOCS / shot.name)
