"""Sessions in the page (``web/``): a tab whose network goes comes back to its
chat, a reload keeps its cooldowns, and a duplicated tab takes the chat over,
in headless Chromium against a real ``twistd roulette``.

Playwright's offline mode leaves an open WebSocket open (in Chromium), but
the page hears the system's ``offline`` event and closes it itself with
4000 ("back soon"), as on a phone whose network goes.

As in ``test_page.py`` (whose fixtures these tests share), every test looks at
what a person sees, and fails on any dialog, script error or failed request.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
import test_page
from browser import page_server, serious_violations
from playwright.sync_api import Locator, WebSocket, WebSocketRoute, expect
from support import RunningServer
from test_page import (
    CHATTING,
    LOOKING,
    LOST,
    PARTNER_LEFT,
    Chat,
    OpenChat,
    expect_chatting,
    pump_until,
)

pytestmark = pytest.mark.browser

# test_page's fixtures: its server (one for this module), and a tab on it per call.
server = test_page.server
open_chat = test_page.open_chat

PHONE = {"viewport": {"width": 360, "height": 640}, "is_mobile": True, "has_touch": True}
SESSION_KEY = "roulette.session"
TOKEN = re.compile(r"^[A-Za-z0-9_-]{32}$")

RESUMED = "Reconnected. Your chat goes on."
ENDED_AWAY = "The chat ended while you were away."
PARTNER_AWAY = "Stranger's connection dropped. Waiting for them to come back…"
PARTNER_BACK = "Stranger is back."
OFFLINE_CHAT = "You're offline. If you're back within 15 s, your chat goes on."
REPLACED = "This chat continued in another tab."
COOLDOWN = re.compile(r"^Everyone online has just talked with you\.")
AWAY_REFUSAL = (
    "Your partner's connection dropped, and no more messages are kept for them "
    "until they are back; this one was not delivered."
)


@pytest.fixture(scope="module")
def cooldown_server() -> Iterator[RunningServer]:
    """Two who have just talked are not paired again for half a minute."""
    running = page_server("--repair-cooldown", "30")
    yield running
    running.close()


def token(chat: Chat) -> str | None:
    return chat.page.evaluate(f"sessionStorage.getItem({SESSION_KEY!r})")


def why(chat: Chat) -> Locator:
    """The line under the status that says why the wait is long."""
    return chat.page.locator("#why")


def ends(chat: Chat) -> Locator:
    """The lines of the log that say where a chat ended."""
    return chat.log.locator(".event")


class Frames:
    """The events each WebSocket the page opens from now on receives."""

    def __init__(self, chat: Chat) -> None:
        self.sockets: list[tuple[str, list[dict[str, object]]]] = []
        chat.page.on("websocket", self._opened)

    def _opened(self, socket: WebSocket) -> None:
        received: list[dict[str, object]] = []
        self.sockets.append((socket.url, received))
        socket.on("framereceived", lambda payload: received.append(json.loads(payload)))

    def types(self) -> list[str]:
        return [str(event["type"]) for _, events in self.sockets for event in events]


def test_a_page_whose_network_is_cut_resumes_the_same_chat(open_chat: OpenChat) -> None:
    alice = open_chat()
    bob = open_chat()
    expect_chatting(alice, bob)
    alice.say("before the drop")
    expect(bob.lines).to_have_text(["Stranger: before the drop"])
    expect(alice.lines).to_have_text(["You: before the drop"])
    first = token(alice)
    assert first and TOKEN.match(first), first
    frames = Frames(alice)

    # Alice's network goes: her page says so, and keeps the chat.
    alice.context.set_offline(True)
    expect(alice.status).to_have_text(LOST)
    expect(alice.notice).to_have_text(OFFLINE_CHAT)
    expect(alice.box).to_be_disabled()
    expect(alice.lines).to_have_text(["You: before the drop"])
    # Bob is told at once, and chats on: Next is there, what he says is kept.
    expect(bob.lines.last).to_have_text(PARTNER_AWAY)
    expect(bob.status).to_have_text(CHATTING)
    expect(bob.button("Next")).to_be_enabled()
    assert serious_violations(bob.page) == []
    assert serious_violations(alice.page) == []
    bob.say("are you there?")
    expect(bob.lines.last).to_have_text("You: are you there?")  # confirmed: held for Alice

    # Back online: the same chat, with what Bob said meanwhile.
    alice.context.set_offline(False)
    expect(alice.lines).to_have_text(
        ["You: before the drop", RESUMED, "Stranger: are you there?"], timeout=5_000
    )
    expect(alice.status).to_have_text(CHATTING)
    expect(alice.box).to_be_enabled()
    expect(alice.notice).to_be_empty()
    expect(bob.lines).to_have_text(
        ["Stranger: before the drop", PARTNER_AWAY, "You: are you there?", PARTNER_BACK]
    )
    alice.say("still here")
    expect(bob.lines.last).to_have_text("Stranger: still here")
    expect(alice.lines.last).to_have_text("You: still here")
    bob.say("welcome back")
    expect(alice.lines.last).to_have_text("Stranger: welcome back")
    for chat in (alice, bob):
        expect(ends(chat)).to_have_count(0)
        expect(chat.status).to_have_text(CHATTING)

    # The page presented its token, and the server picked the chat up: no
    # new pairing, and a new token (each is used once).
    resumed = [(url, events) for url, events in frames.sockets if events]
    assert len(resumed) == 1, frames.sockets
    url, events = resumed[0]
    assert f"session={first}" in url
    assert [e["type"] for e in events if e["type"] != "online"][:3] == [
        "session",
        "partner_back",
        "message",
    ]
    assert events[1]["type"] == "session" and events[1]["resumed"] is True
    assert "paired" not in frames.types()
    assert token(alice) == events[1]["token"] != first


def test_the_chat_ended_while_the_page_was_away(open_chat: OpenChat) -> None:
    alice = open_chat()
    bob = open_chat()
    expect_chatting(alice, bob)
    alice.say("hi")
    expect(bob.lines).to_have_text(["Stranger: hi"])

    alice.context.set_offline(True)
    expect(bob.lines.last).to_have_text(PARTNER_AWAY)
    bob.say("bye then")
    expect(bob.lines.last).to_have_text("You: bye then")
    bob.button("Next").click()
    expect(bob.status).to_have_text(LOOKING)
    expect(alice.status).to_have_text(LOST)

    # Back, Alice reads what Bob said before he went, and that it is over.
    alice.context.set_offline(False)
    expect(alice.log.locator(".line")).to_have_text(
        ["You: hi", "Stranger: bye then", ENDED_AWAY], timeout=5_000
    )
    expect(alice.status).to_have_text(PARTNER_LEFT)
    expect(alice.button("Start")).to_be_enabled()
    expect(alice.box).to_be_enabled()
    # Idle, as when a stranger leaves: not matched with Bob, who looks.
    alice.page.wait_for_timeout(500)
    expect(bob.status).to_have_text(LOOKING)
    expect(alice.status).to_have_text(PARTNER_LEFT)
    alice.button("Start").click()
    expect_chatting(alice, bob)


def test_a_message_refused_because_the_stranger_is_away_is_marked(
    open_chat: OpenChat,
) -> None:
    """The server keeps at most 50 messages for a stranger away, then refuses
    with ``partner_away``: the relay here refuses one the same way."""
    bob = open_chat()

    def connect(route: WebSocketRoute) -> None:
        upstream = route.connect_to_server()

        def from_page(message: str | bytes) -> None:
            command = json.loads(message)
            if command.get("type") == "message" and command.get("text") == "one too many":
                refusal = {
                    "type": "error",
                    "code": "partner_away",
                    "message": AWAY_REFUSAL,
                    "id": command["id"],
                }
                route.send(json.dumps(refusal))
            else:
                upstream.send(message)

        upstream.on_message(route.send)
        route.on_message(from_page)

    bob.page.route_web_socket(re.compile(r"/ws(\?.*)?$"), connect)
    bob.page.reload()
    expect(bob.status).to_have_text(LOOKING)
    alice = open_chat()
    expect_chatting(alice, bob)
    alice.context.set_offline(True)
    expect(bob.lines.last).to_have_text(PARTNER_AWAY)
    bob.say("kept for you")
    expect(bob.lines.last).to_have_text("You: kept for you")
    bob.say("one too many")
    line = bob.lines.last
    expect(line).to_have_text(
        "You: one too many (not delivered: the stranger's connection had dropped)"
    )
    expect(line).to_have_class(re.compile(r"\bfailed\b"))
    expect(bob.notice).to_have_text(AWAY_REFUSAL)
    alice.context.set_offline(False)
    expect(alice.lines).to_have_text([RESUMED, "Stranger: kept for you"], timeout=5_000)


def test_after_next_a_reloaded_page_is_not_paired_straight_back(
    open_chat: OpenChat, cooldown_server: RunningServer
) -> None:
    alice = open_chat(on=cooldown_server)
    bob = open_chat(on=cooldown_server)
    expect_chatting(alice, bob)

    # Alice skips Bob; Bob looks again too.
    alice.button("Next").click()
    expect(bob.status).to_have_text(PARTNER_LEFT)
    bob.button("Start").click()
    for chat in (alice, bob):
        expect(chat.status).to_have_text(LOOKING)
        expect(why(chat)).to_have_text(COOLDOWN)

    # A reload is a new connection, but the same visitor: Bob is not
    # brought straight back.
    before = token(alice)
    assert before and TOKEN.match(before)
    with alice.page.expect_websocket() as connection:
        alice.page.reload()
    assert f"session={before}" in connection.value.url
    expect(alice.status).to_have_text(LOOKING)
    expect(why(alice)).to_have_text(COOLDOWN)
    alice.page.wait_for_timeout(1_000)
    for chat in (alice, bob):
        expect(chat.status).to_have_text(LOOKING)
    assert cooldown_server.health()["chatting"] == 0

    # Someone new meets one of them.
    carol = open_chat(on=cooldown_server)
    expect(carol.status).to_have_text(CHATTING)

    def met() -> list[Chat]:
        return [c for c in (alice, bob) if c.status.text_content() == CHATTING]

    pump_until(carol.page, lambda: len(met()) == 1)
    [partner] = met()
    other = bob if partner is alice else alice
    expect(other.status).to_have_text(LOOKING)

    # A reload closes the connection (1001): no drop to wait for, the chat
    # is over at once for Carol.
    partner.page.reload()
    expect(carol.status).to_have_text(PARTNER_LEFT, timeout=3_000)
    expect(carol.lines).not_to_contain_text([PARTNER_AWAY])
    expect(partner.status).to_have_text(LOOKING)


def test_a_duplicated_tab_takes_the_chat_over_and_the_first_can_start_over(
    open_chat: OpenChat,
) -> None:
    alice = open_chat(color_scheme="dark", **PHONE)
    bob = open_chat()
    expect_chatting(alice, bob)
    bob.say("hello")
    expect(alice.lines).to_have_text(["Stranger: hello"])

    # A duplicate of Alice's tab starts with a copy of its sessionStorage.
    copied = token(alice)
    assert copied and TOKEN.match(copied)
    twin = alice.context.new_page()
    twin.add_init_script(
        f"sessionStorage.setItem({SESSION_KEY!r}, {json.dumps(copied)});"
        'localStorage.setItem("roulette.welcomed", "1");'
    )
    twin.goto(alice.base_url + "/")
    expect(twin.get_by_role("status")).to_have_text(CHATTING)
    expect(twin.get_by_role("log").locator("p")).to_have_text([RESUMED])

    # The first tab stops, and says why; it does not fight for the session.
    expect(alice.status).to_have_text(REPLACED)
    expect(ends(alice)).to_have_text([REPLACED])
    start_over = alice.button("Start a new chat")
    expect(start_over).to_be_visible()
    expect(start_over).to_be_in_viewport()
    expect(alice.button("Next")).to_be_disabled()
    assert token(alice) is None
    assert alice.page.evaluate("document.documentElement.scrollWidth") <= 360
    assert serious_violations(alice.page) == []
    alice.page.wait_for_timeout(1_500)
    expect(alice.status).to_have_text(REPLACED)
    expect(twin.get_by_role("status")).to_have_text(CHATTING)

    # The chat goes on in the duplicate.
    bob.say("still you?")
    expect(twin.get_by_role("log").locator("p").last).to_have_text("Stranger: still you?")
    twin.get_by_role("textbox", name="Message").fill("yes")
    twin.get_by_role("textbox", name="Message").press("Enter")
    expect(bob.lines.last).to_have_text("Stranger: yes")

    # Starting over: a new visitor (no token), looking for a stranger.
    with alice.page.expect_websocket() as connection:
        start_over.click()
    assert "session=" not in connection.value.url
    expect(alice.status).to_have_text(LOOKING)
    expect(start_over).to_be_hidden()
    fresh = token(alice)
    assert fresh and TOKEN.match(fresh) and fresh != copied
    twin.close()
    expect(bob.status).to_have_text(PARTNER_LEFT)
    bob.button("Start").click()
    expect_chatting(alice, bob)
