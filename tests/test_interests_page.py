"""The page's Interests box, driven in headless Chromium against a real ``twistd roulette``.

As in ``test_page.py`` (whose fixtures these tests share), every test looks at
what a person sees: the chips, the note beside the box, the first line of the
log; and the test fails on any dialog, script error or failed request.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
import test_page
from browser import page_server, serious_violations
from playwright.sync_api import Locator, WebSocketRoute, expect
from support import RunningServer
from test_page import LOOKING, Chat, OpenChat, chose_interests, expect_chatting

pytestmark = pytest.mark.browser

# test_page's fixtures: its server (one for this module), and a tab on it per call.
server = test_page.server
open_chat = test_page.open_chat


INTERESTS_KEY = "roulette.interests"
FALLBACK = "No one with your interests was around, so here's a random stranger."
PHONE = {"viewport": {"width": 360, "height": 640}, "is_mobile": True, "has_touch": True}


@pytest.fixture(scope="module")
def quick_server() -> Iterator[RunningServer]:
    """A server where a person with interests waits one second, not ten,
    before any stranger will do."""
    running = page_server("--interest-wait", "1")
    yield running
    running.close()


def tell_limits(chat: Chat, limits: dict[str, float]) -> None:
    """Reconnect the tab through a relay that tells it these limits in place
    of the server's (test_page's Relay only takes addresses without a query)."""

    def connect(route: WebSocketRoute) -> None:
        upstream = route.connect_to_server()

        def from_server(message: str | bytes) -> None:
            event = json.loads(message)
            if "limits" in event:
                message = json.dumps({**event, "limits": limits})
            route.send(message)

        upstream.on_message(from_server)
        route.on_message(upstream.send)

    chat.page.route_web_socket(re.compile(r"/ws(\?.*)?$"), connect)
    chat.page.reload()


def interest_box(chat: Chat) -> Locator:
    return chat.page.get_by_role("textbox", name="Interests", exact=True)


def chips(chat: Chat) -> Locator:
    return chat.page.get_by_role("list", name="Your interests").get_by_role("listitem")


def interest_note(chat: Chat) -> Locator:
    return chat.page.locator("#interest-note")


def stored(chat: Chat) -> object:
    value = chat.page.evaluate(f"localStorage.getItem({INTERESTS_KEY!r})")
    return None if value is None else json.loads(value)


def test_interests_become_chips_and_survive_a_reload(open_chat: OpenChat) -> None:
    alice = open_chat()
    expect(alice.status).to_have_text(LOOKING)
    box = interest_box(alice)
    expect(box).to_be_visible()
    expect(chips(alice)).to_have_count(0)

    # Enter adds a chip, normalised as the server would; so does a comma.
    box.click()
    alice.page.keyboard.type("Cats ")
    alice.page.keyboard.press("Enter")
    expect(chips(alice)).to_have_text(["cats"])
    expect(box).to_have_value("")
    alice.page.keyboard.type("chess,")
    expect(chips(alice)).to_have_text(["cats", "chess"])
    expect(box).to_have_value("")
    # The same interest again, written otherwise, is not added twice.
    alice.page.keyboard.type("\uff23\uff21\uff34\uff33")  # fullwidth
    alice.page.keyboard.press("Enter")
    expect(chips(alice)).to_have_text(["cats", "chess"])

    # Refused on the spot, with the reason beside the box, what the server
    # would refuse: too long, then too many.
    alice.page.keyboard.type("x" * 31)
    alice.page.keyboard.press("Enter")
    expect(interest_note(alice)).to_have_text(
        "An interest can be at most 30 characters long; that one has 31."
    )
    expect(box).to_have_accessible_description(re.compile("at most 30 characters"))
    expect(box).to_have_value("x" * 31)
    expect(chips(alice)).to_have_count(2)
    box.fill("")
    expect(interest_note(alice)).to_be_hidden()
    box.press_sequentially("a,b,c,d,e,f,g,h,i", delay=5)
    expect(chips(alice)).to_have_count(10)
    box.press("Enter")
    expect(interest_note(alice)).to_have_text(
        "You can have at most 10 interests: remove one first."
    )
    expect(box).to_have_value("i")
    expect(chips(alice)).to_have_count(10)
    # Backspace in the empty box takes the last chip back.
    box.fill("")
    for _ in range(8):
        box.press("Backspace")
    expect(chips(alice)).to_have_text(["cats", "chess"])

    # A chip goes with its remove button, by keyboard alone.
    box.press("Tab")
    remove_cats = alice.page.get_by_role("button", name="Remove cats", exact=True)
    remove_chess = alice.page.get_by_role("button", name="Remove chess", exact=True)
    expect(remove_cats).to_be_focused()
    alice.page.keyboard.press("Tab")
    expect(remove_chess).to_be_focused()
    alice.page.keyboard.press("Enter")
    expect(chips(alice)).to_have_text(["cats"])
    expect(remove_cats).to_be_focused()
    assert stored(alice) == ["cats"]

    # The list is kept, and given to the server in the connection's address.
    with alice.page.expect_websocket() as connection:
        alice.page.reload()
    assert "interest=cats" in connection.value.url
    expect(alice.status).to_have_text(LOOKING)
    expect(chips(alice)).to_have_text(["cats"])
    assert stored(alice) == ["cats"]


def test_strangers_who_share_an_interest_are_told_so(
    open_chat: OpenChat, server: RunningServer
) -> None:
    # Bob chose cats last time; Alice picks hers once the page is open.
    bob = open_chat(**chose_interests(server, ["cats"]))
    expect(chips(bob)).to_have_text(["cats"])
    alice = open_chat()
    expect(alice.status).to_have_text(LOOKING)
    box = interest_box(alice)
    box.fill("Cats")
    box.press("Enter")
    box.fill("chess")
    box.press("Enter")
    expect(chips(alice)).to_have_text(["cats", "chess"])
    # Well within the server's ten seconds of looking for a shared interest.
    expect_chatting(alice, bob, timeout=5_000)
    for chat in (alice, bob):
        expect(chat.lines).to_have_text(["You both like cats."])
    alice.say("meow")
    expect(bob.lines).to_have_text(["You both like cats.", "Stranger: meow"])

    # Three in common: listed in order, the last after "and".
    carol = open_chat(**chose_interests(server, ["tea", "dogs", "cats", "chess"]))
    dave = open_chat(**chose_interests(server, ["chess", "dogs", "cats"]))
    expect_chatting(carol, dave, timeout=5_000)
    for chat in (carol, dave):
        expect(chat.lines.first).to_have_text("You both like cats, chess and dogs.")


def test_no_one_sharing_an_interest_means_a_random_stranger(
    open_chat: OpenChat, quick_server: RunningServer
) -> None:
    alice = open_chat(on=quick_server, **chose_interests(quick_server, ["cats"]))
    bob = open_chat(on=quick_server, **chose_interests(quick_server, ["dogs"]))
    expect(alice.status).to_have_text(LOOKING)
    expect_chatting(alice, bob)
    for chat in (alice, bob):
        expect(chat.lines).to_have_text([FALLBACK])

    # Without interests: no line about them.
    carol = open_chat(on=quick_server)
    dave = open_chat(on=quick_server)
    expect_chatting(carol, dave)
    carol.say("hi")
    expect(dave.lines).to_have_text(["Stranger: hi"])
    expect(carol.lines).to_have_text(["You: hi"])

    # A server that does not match by interests (interest_wait 0, as Erin's
    # tab is told) has no Interests box, and never speaks of a fallback.
    erin = open_chat(on=quick_server, **chose_interests(quick_server, ["cats"]))
    expect(interest_box(erin)).to_be_visible()
    tell_limits(erin, {"interest_wait": 0})
    expect(interest_box(erin)).to_be_hidden()
    frank = open_chat(on=quick_server, **chose_interests(quick_server, ["dogs"]))
    expect_chatting(erin, frank)
    expect(frank.lines).to_have_text([FALLBACK])
    erin.say("hello")
    expect(erin.lines).to_have_text(["You: hello"])


def test_interests_on_a_phone_in_dark_mode(open_chat: OpenChat, server: RunningServer) -> None:
    tags = ["cats", "a rather long interest to show", "chess", "tea", "go", "jazz"]
    alice = open_chat(color_scheme="dark", **PHONE, **chose_interests(server, tags))
    bob = open_chat(color_scheme="dark", **PHONE, **chose_interests(server, ["cats"]))
    expect_chatting(alice, bob, timeout=5_000)
    expect(alice.lines).to_have_text(["You both like cats."])
    expect(chips(alice)).to_have_text(tags)
    box = interest_box(alice)
    box.fill("y" * 40)
    box.press("Enter")
    expect(interest_note(alice)).to_be_visible()

    background = alice.page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert sum(int(c) for c in re.findall(r"\d+", background)[:3]) / 3 < 60, background
    width = alice.page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert width[0] <= width[1] == 360, f"the page scrolls sideways: {width}"
    assert alice.page.evaluate("document.documentElement.scrollHeight") <= 640
    for control in (
        box,
        alice.page.get_by_role("button", name="Remove cats", exact=True),
        alice.box,
        alice.button("Send"),
        alice.button("Next"),
    ):
        expect(control).to_be_in_viewport(ratio=1)

    serious = serious_violations(alice.page)
    assert serious == []

    # By touch as well: a chip goes, and the chat goes on.
    alice.page.get_by_role("button", name="Remove tea", exact=True).tap()
    expect(chips(alice)).to_have_count(len(tags) - 1)
    alice.box.tap()
    alice.box.fill("still here")
    alice.button("Send").tap()
    expect(bob.lines.last).to_have_text("Stranger: still here")
