"""The page in ``web/``, second round: odd text in the log, notices that go
stale, the partner leaving, the offline state, the phone layout, the saved
log, links and sound.

As in ``test_page.py`` (whose fixtures these tests share), every test looks
at what a person sees, and fails on any dialog, script error or failed
request.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import test_page
from browser import serious_violations
from playwright.sync_api import Locator, WebSocketRoute, expect
from support import RunningServer, free_port, wait_until
from test_page import (
    CHATTING,
    LOOKING,
    LOST,
    PARTNER_LEFT,
    TYPING,
    YOU_LEFT,
    Chat,
    OpenChat,
    Relay,
    ask_then_confirm,
    expect_chatting,
    meets_one_then_the_other,
    pump_until,
    strangers_behind_a_proxy,
)

pytestmark = pytest.mark.browser

# test_page's fixtures: its server (one for this module), and a tab on it per call.
server = test_page.server
open_chat = test_page.open_chat

PHONE = {"viewport": {"width": 360, "height": 640}, "is_mobile": True, "has_touch": True}
RLO = "\u202e"
ZALGO = "Z̷̢̛̛̛͓̜̜̫̹̳͙̈́̈́̅̏̀"


def box_of(chat: Chat, selector: str) -> dict[str, float]:
    return chat.page.locator(selector).evaluate(
        "e => { const r = e.getBoundingClientRect();"
        " return {x: r.x, y: r.y, right: r.right, bottom: r.bottom, width: r.width}; }"
    )


# -- 1. bidi and odd text ------------------------------------------------------


def test_a_right_to_left_override_cannot_reorder_a_line(open_chat: OpenChat) -> None:
    alice = open_chat()
    relay = Relay(alice)
    bob = open_chat()
    expect_chatting(alice, bob)

    # Held by the relay, Alice's line says "(sending…)" after her text: an
    # override in the text must not pull that mark (or the label) into it.
    relay.holding = True
    alice.say(RLO + "hello world")
    line = alice.lines.last
    expect(line).to_have_text("You: " + RLO + "hello world (sending…)")
    who = line.locator(".who").bounding_box()
    text = line.locator(".text").bounding_box()
    state = line.locator(".state").bounding_box()
    assert who and text and state
    assert who["x"] + who["width"] <= text["x"] + 1, (who, text)
    assert text["x"] + text["width"] <= state["x"] + 1, (text, state)
    relay.release()
    expect(line).to_have_text("You: " + RLO + "hello world")

    # The stranger's side: the label first and leftmost, the text isolated.
    line = bob.lines.last
    expect(line).to_have_text("Stranger: " + RLO + "hello world")
    isolated = line.locator(".text").evaluate(
        "e => ['isolate', 'isolate-override', 'plaintext']"
        ".includes(getComputedStyle(e).unicodeBidi)"
    )
    assert isolated
    who = line.locator(".who").bounding_box()
    text = line.locator(".text").bounding_box()
    assert who and text and who["x"] < text["x"]
    bob.say("after")
    expect(bob.lines.last).to_have_text("You: after")
    who = bob.lines.last.locator(".who").bounding_box()
    assert who and abs(who["x"] - box_of(bob, "#log .line:last-child")["x"]) < 1


def test_stacked_combining_marks_stay_within_their_line(open_chat: OpenChat) -> None:
    alice = open_chat()
    bob = open_chat()
    expect_chatting(alice, bob)
    alice.say("a plain line above")
    expect(bob.lines).to_have_text(["Stranger: a plain line above"])
    above = bob.lines.first.bounding_box()
    assert above
    before = bob.page.screenshot(clip=above, animations="disabled", caret="hide")

    alice.say(ZALGO * 12)
    expect(bob.lines).to_have_count(2)
    alice.say("and one below")
    expect(bob.lines).to_have_count(3)
    # What the line above shows is untouched by the marks below it.
    assert bob.lines.first.bounding_box() == above
    after = bob.page.screenshot(clip=above, animations="disabled", caret="hide")
    assert after == before, "the combining marks paint over the line above"
    # And the line below, likewise: its own pixels only.
    below = bob.lines.last.bounding_box()
    assert below
    zalgo_line = bob.lines.nth(1)
    clipped = zalgo_line.evaluate("e => ['hidden', 'clip'].includes(getComputedStyle(e).overflowY)")
    assert clipped


# -- 2. notices that go stale ------------------------------------------------

PRESS_START = "Press Start to find a stranger first."
SLOW_DOWN = "Slow down a little, then try again."
TOO_FAST = "You are sending messages too fast. Wait a moment."


def test_press_start_goes_once_start_is_pressed_or_the_connection_is_new(
    open_chat: OpenChat,
) -> None:
    alice = open_chat()
    relay = Relay(alice)
    expect(alice.status).to_have_text(LOOKING)
    alice.button("Stop").click()
    expect(alice.status).to_have_text(YOU_LEFT)
    alice.say("hello?")
    expect(alice.notice).to_have_text(PRESS_START)
    alice.button("Start").click()
    expect(alice.status).to_have_text(LOOKING)
    expect(alice.notice).to_be_empty()

    # Idle again, told so, then the connection drops and comes back: idle
    # still, but what the notice said was about the old connection.
    alice.button("Stop").click()
    expect(alice.status).to_have_text(YOU_LEFT)
    alice.say("hello?")
    expect(alice.notice).to_have_text(PRESS_START)
    relay.close(1011)
    relay.wait_for(lambda: relay.connections == 2)
    expect(alice.status).to_have_text(YOU_LEFT)
    expect(alice.notice).to_be_empty()
    expect(alice.box).to_have_value("hello?")  # nothing is lost


def test_slow_down_goes_once_the_budget_allows_again(open_chat: OpenChat) -> None:
    alice = open_chat()
    expect(alice.status).to_have_text(LOOKING)
    # Next, faster than the command budget allows (a burst of 4 under the
    # server's 5): the page holds the last ones back and says so.
    alice.page.evaluate(
        "() => { const next = document.getElementById('next');"
        " for (let i = 0; i < 8; i++) next.click(); }"
    )
    expect(alice.notice).to_have_text(SLOW_DOWN)
    # One command a second (0.8 under the server's 1): gone by itself.
    expect(alice.notice).to_be_empty(timeout=3_000)
    expect(alice.status).to_have_text(LOOKING)


def test_sending_too_fast_goes_once_the_budget_allows_again(open_chat: OpenChat) -> None:
    alice = open_chat()
    bob = open_chat()
    expect_chatting(alice, bob)
    alice.say_at_once(*(f"m{n}" for n in range(9)))  # a burst of 8 under 10
    expect(alice.notice).to_have_text(TOO_FAST)
    expect(alice.box).to_have_value("m8")
    expect(alice.notice).to_be_empty(timeout=3_000)
    alice.box.press("Enter")
    expect(bob.lines.last).to_have_text("Stranger: m8")


# -- 3. the partner leaving --------------------------------------------------


def test_who_left_is_written_in_the_log_after_the_last_message(open_chat: OpenChat) -> None:
    alice = open_chat()
    bob = open_chat()
    expect_chatting(alice, bob)
    bob.say("gotta go")
    expect(alice.lines).to_have_text(["Stranger: gotta go"])
    bob.button("Stop").click()
    expect(alice.status).to_have_text(PARTNER_LEFT)
    expect(alice.log.locator(".line")).to_have_text(["Stranger: gotta go", PARTNER_LEFT])
    expect(alice.log.locator(".line").last).to_be_visible()
    expect(bob.log.locator(".line")).to_have_text(["You: gotta go", YOU_LEFT])

    # Next says it too, on both sides, and the next chat starts clean.
    alice.button("Start").click()
    bob.button("Start").click()
    expect_chatting(alice, bob)
    expect(alice.log.locator(".line")).to_have_count(0)
    alice.say("hi again")
    expect(bob.lines).to_have_text(["Stranger: hi again"])
    bob.button("Next").click()
    expect(alice.log.locator(".line")).to_have_text(["You: hi again", PARTNER_LEFT])
    expect(bob.log.locator(".line")).to_have_text(["Stranger: hi again", YOU_LEFT])


def test_the_title_tells_a_hidden_tab_that_the_stranger_left_or_came(
    open_chat: OpenChat,
) -> None:
    alice = open_chat()
    bob = open_chat()
    expect_chatting(alice, bob)
    expect(alice.page).to_have_title("roulette")
    alice.hide_tab()
    bob.say("bye")
    expect(alice.page).to_have_title("(1) roulette")
    bob.button("Stop").click()
    expect(alice.page).to_have_title(re.compile(r"^\(1\) Stranger has disconnected\..*roulette$"))
    alice.hide_tab(False)
    expect(alice.page).to_have_title("roulette")

    # Looking while hidden: the title says when a stranger is found.
    alice.button("Start").click()
    expect(alice.status).to_have_text(LOOKING)
    alice.hide_tab()
    bob.button("Start").click()
    expect_chatting(alice, bob)
    expect(alice.page).to_have_title(re.compile(r"^Stranger found!.*roulette$"))
    alice.hide_tab(False)
    expect(alice.page).to_have_title("roulette")
    expect(bob.page).to_have_title("roulette")  # seen as it happened


# -- 4. offline ----------------------------------------------------------------

OFFLINE = "You're offline. When the connection is back you'll meet a new stranger."


def test_offline_the_box_and_send_are_disabled_and_the_notice_says_what_follows(
    open_chat: OpenChat,
) -> None:
    own = RunningServer(free_port(), "--repair-cooldown", "0").start()
    try:
        alice = open_chat(own)
        bob = open_chat(own)
        expect_chatting(alice, bob)
        alice.box.fill("half a thought")
        alice.box.focus()

        own.stop()
        for chat in (alice, bob):
            expect(chat.status).to_have_text(LOST)
            expect(chat.box).to_be_disabled()
            expect(chat.button("Send")).to_be_disabled()
        expect(alice.notice).to_have_text(OFFLINE)
        expect(alice.box).to_have_value("half a thought")  # kept for later
        notice = alice.notice.inner_text().lower()
        assert "once the connection is back" not in notice
        # Enter in the disabled box sends nothing and says nothing new.
        alice.page.keyboard.press("Enter")
        expect(alice.notice).to_have_text(OFFLINE)

        own.start()
        expect_chatting(alice, bob, timeout=40_000)
        for chat in (alice, bob):
            expect(chat.box).to_be_enabled()
            expect(chat.button("Send")).to_be_enabled()
            expect(chat.notice).to_be_empty()
        expect(alice.box).to_be_focused()
        expect(alice.box).to_have_value("half a thought")
        alice.box.press("Enter")
        expect(bob.lines.last).to_have_text("Stranger: half a thought")
    finally:
        own.close()


# -- 5. phone and layout -------------------------------------------------------


def test_on_a_phone_typing_shows_whole_and_really_moves_nothing(open_chat: OpenChat) -> None:
    alice = open_chat(**PHONE)
    bob = open_chat(**PHONE)
    expect_chatting(alice, bob)
    bob.say("hello")  # Report shows too: the row of buttons is full
    expect(alice.page.locator("#report")).to_be_visible()
    bob.box.press_sequentially("typing", delay=10)
    expect(alice.typing).to_be_visible()
    expect(alice.typing).to_have_text(TYPING)
    widths = alice.typing.evaluate("e => [e.scrollWidth, e.clientWidth]")
    assert widths[0] <= widths[1], f"the typing line is cut: {widths}"
    shown = alice.typing.bounding_box()
    assert shown and shown["x"] >= 0 and shown["x"] + shown["width"] <= 360
    expect(alice.typing).to_be_in_viewport(ratio=1)

    # One Esc turns Next into "Really?": the box stays where it was.
    before = box_of(alice, "#message")
    label = alice.button("Next").evaluate("e => [e.scrollWidth, e.clientWidth]")
    alice.box.press("Escape")
    expect(alice.button("Really?")).to_be_visible()
    assert box_of(alice, "#message") == before
    really = alice.button("Really?").evaluate("e => [e.scrollWidth, e.clientWidth]")
    assert really[0] <= really[1] and label[0] <= label[1], (label, really)
    expect(alice.button("Next")).to_be_visible(timeout=3_000)
    assert box_of(alice, "#message") == before

    # Idle, Next says "Start", in the same room.
    bob.button("Stop").click()
    expect(alice.button("Start")).to_be_visible()
    assert box_of(alice, "#message") == before


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_a_disabled_stop_looks_disabled(open_chat: OpenChat, scheme: str) -> None:
    alice = open_chat(color_scheme=scheme, **PHONE)
    bob = open_chat(color_scheme=scheme, **PHONE)
    expect_chatting(alice, bob)
    look = "e => { const s = getComputedStyle(e); return [s.color, s.borderColor, s.cursor]; }"
    stop = alice.button("Stop")
    expect(stop).to_be_enabled()
    enabled = stop.evaluate(look)
    alice.button("Stop").click()
    expect(alice.status).to_have_text(YOU_LEFT)
    expect(stop).to_be_disabled()
    disabled = stop.evaluate(look)
    assert disabled[0] != enabled[0] and disabled[1] != enabled[1], (enabled, disabled)
    assert disabled[2] == "not-allowed"
    assert float(stop.evaluate("e => getComputedStyle(e).opacity")) < 1


# -- 6. the saved log ----------------------------------------------------------


def saved_log(chat: Chat) -> list[str]:
    with chat.page.expect_download() as download_info:
        chat.button("Save log").click()
    return Path(download_info.value.path()).read_text(encoding="utf-8").splitlines()


def test_the_saved_log_has_times_the_end_and_each_line_under_its_speaker(
    open_chat: OpenChat,
) -> None:
    alice = open_chat()
    bob = open_chat()
    expect_chatting(alice, bob)
    bob.say("hi")
    expect(alice.lines).to_have_count(1)
    bob.say("two lines\nYou: not mine")
    expect(alice.lines).to_have_count(2)
    alice.say("ok")
    expect(alice.lines.last).to_have_text("You: ok")
    bob.button("Stop").click()
    expect(alice.status).to_have_text(PARTNER_LEFT)

    saved = saved_log(alice)
    body = saved[saved.index("") + 1 :]
    clock = r"\[\d\d:\d\d\] "
    assert len(body) == 5, body
    assert re.fullmatch(clock + "Stranger: hi", body[0]), body
    assert re.fullmatch(clock + "Stranger: two lines", body[1]), body
    # The second line of that message is indented under its text.
    assert body[2] == " " * len("[00:00] Stranger: ") + "You: not mine", body
    assert re.fullmatch(clock + "You: ok", body[3]), body
    assert re.fullmatch(clock + re.escape(PARTNER_LEFT), body[4]), body
    # Every speaker's line starts with its time: a continuation never does.
    assert [bool(re.match(clock, line)) for line in body] == [True, True, False, True, True]
    now = datetime.now()
    shown = {(now + timedelta(minutes=d)).strftime("%H:%M") for d in (-1, 0)}
    assert body[0][1:6] in shown, (body[0], shown)


# -- 7. links ------------------------------------------------------------------

LINK_WARNING = "Links in messages come from the stranger: open only those you trust."


def test_http_addresses_are_links_to_a_new_tab_and_nothing_else_is(
    open_chat: OpenChat,
) -> None:
    alice = open_chat()
    bob = open_chat()
    expect_chatting(alice, bob)
    bob.say("see https://example.org/a?b=1&c=<2>, or http://example.com.")
    expect(alice.lines.first).to_have_text(
        "Stranger: see https://example.org/a?b=1&c=<2>, or http://example.com."
    )
    links = alice.lines.first.get_by_role("link")
    expect(links).to_have_text(["https://example.org/a?b=1&c=", "http://example.com"])
    for link in links.all():
        expect(link).to_have_attribute("target", "_blank")
        expect(link).to_have_attribute("rel", "noopener noreferrer nofollow")
    expect(links.first).to_have_attribute("href", "https://example.org/a?b=1&c=")
    expect(alice.log.locator("a")).to_have_count(2)
    # Warned once, after the first link from the stranger.
    expect(alice.log.get_by_text(LINK_WARNING)).to_have_count(1)
    expect(bob.log.get_by_text(LINK_WARNING)).to_have_count(0)
    expect(bob.lines.first.get_by_role("link")).to_have_count(2)  # one's own, linked too

    # Other schemes, and markup, stay text.
    for text in (
        "javascript:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "JaVaScRiPt:alert(document.domain)",
        "<a href=https://evil.example>x</a>",
        "vbscript:msgbox(1) file:///etc/passwd ftp://example.org",
    ):
        bob.say(text)
        expect(alice.lines.last).to_have_text("Stranger: " + text)
    hrefs = alice.log.locator("a").evaluate_all("links => links.map(a => a.href)")
    assert all(h.startswith(("http://", "https://")) for h in hrefs), hrefs
    assert "https://evil.example/" in hrefs  # an address in markup is still an address
    expect(alice.log.locator("script, img, b")).to_have_count(0)

    # A second link: no second warning.
    bob.say("https://example.net")
    expect(alice.lines.last.get_by_role("link")).to_have_text("https://example.net")
    expect(alice.log.get_by_text(LINK_WARNING)).to_have_count(1)

    # By keyboard: a link takes the focus, visibly (not cut by its line).
    alice.lines.last.get_by_role("link").focus()
    outline = alice.lines.last.get_by_role("link").evaluate(
        "a => [a.matches(':focus-visible'), getComputedStyle(a).outlineStyle]"
    )
    assert outline[1] != "none"
    with alice.context.expect_page() as opened:
        alice.lines.last.get_by_role("link").click()
    opened.value.close()


# -- 8. blank messages, block, refused connections, sound ------------------------------


def test_a_message_of_only_invisible_characters_is_never_sent(open_chat: OpenChat) -> None:
    alice = open_chat()
    bob = open_chat()
    expect_chatting(alice, bob)
    # Zero-width space, zero-width joiner, right-to-left override: nothing to see.
    alice.say("\u200b\u200d\u202e")
    expect(alice.notice).to_have_text("Type a message first.")
    expect(alice.lines).to_have_count(0)
    alice.say("after")
    expect(bob.lines).to_have_text(["Stranger: after"])
    expect(alice.lines).to_have_text(["You: after"])


BLOCKED = "You blocked the stranger."


def test_block_ends_the_chat_and_the_two_never_meet_again(open_chat: OpenChat) -> None:
    with strangers_behind_a_proxy(open_chat) as (own, stranger):
        alice = stranger("192.0.2.1")
        bob = stranger("192.0.2.2")
        expect_chatting(alice, bob)
        bob.say("hello")
        expect(alice.lines).to_have_text(["Stranger: hello"])

        ask_then_confirm(alice, bob, "Block")
        expect(bob.status).to_have_text(PARTNER_LEFT)
        expect(alice.status).to_have_text(LOOKING)
        expect(alice.log.locator(".line")).to_have_text(["Stranger: hello", BLOCKED])
        expect(alice.page.locator("#block")).to_be_hidden()
        expect(bob.page.locator("#block")).to_be_hidden()

        # Both look again, and again: they never meet.
        bob.button("Start").click()
        expect(bob.status).to_have_text(LOOKING)
        for _ in range(3):
            wait_until(lambda: own.health() == {"online": 2, "waiting": 2, "chatting": 0})
            alice.button("Next").click()
            bob.button("Next").click()
            alice.page.wait_for_timeout(300)
            assert own.health() == {"online": 2, "waiting": 2, "chatting": 0}
        expect(alice.status).to_have_text(LOOKING)
        expect(bob.status).to_have_text(LOOKING)

        # A third stranger meets one of them, then the other.
        meets_one_then_the_other(stranger("192.0.2.3"), alice, bob)


def test_a_block_that_crosses_the_partner_leaving_keeps_the_page_in_step(
    open_chat: OpenChat, server: RunningServer
) -> None:
    alice = open_chat()
    relay = Relay(alice)
    bob = open_chat()
    expect_chatting(alice, bob)
    # Bob leaves, but Alice's tab hears of it only after she has blocked
    # him: the server refuses the block (not_paired), and she looks again.
    relay.holding = True
    bob.button("Stop").click()
    relay.wait_for(lambda: "partner_left" in relay.received)
    alice.button("Block").click()
    alice.button("Really block?").click()
    relay.wait_for(lambda: "error" in relay.received)  # not_paired
    relay.release()
    relay.wait_for(lambda: relay.received.count("waiting") == 2)  # the next sent for it
    expect(alice.status).to_have_text(LOOKING)
    expect(alice.log.locator(".line").last).to_have_text(BLOCKED)
    relay.wait_for(lambda: server.health() == {"online": 2, "waiting": 1, "chatting": 0})
    carol = open_chat()
    expect_chatting(alice, carol)
    expect(bob.status).to_have_text(YOU_LEFT)


TOO_MANY = "Too many connections from your network. Close a tab and try again."


def test_a_refused_connection_says_why_and_can_try_again_now(open_chat: OpenChat) -> None:
    own = RunningServer(
        free_port(), "--max-per-ip", "2", "--connects-per-minute", "1000", "--repair-cooldown", "0"
    ).start()
    try:
        alice = open_chat(own)
        bob = open_chat(own)
        expect_chatting(alice, bob)
        carol = open_chat(own)
        expect(carol.status).to_have_text(TOO_MANY)
        expect(carol.button("Try again now")).to_be_visible()
        expect(carol.button("Next")).to_be_disabled()
        assert own.health()["online"] == 2

        bob.context.close()
        expect(alice.status).to_have_text(PARTNER_LEFT)
        wait_until(lambda: own.health()["online"] == 1)
        carol.button("Try again now").click()
        expect(carol.status).to_have_text(LOOKING)
        expect(carol.button("Try again now")).to_be_hidden()
        alice.button("Start").click()
        expect_chatting(alice, carol)
    finally:
        own.close()


COUNT_OSCILLATORS = """
window.oscillators = 0;
const createOscillator = AudioContext.prototype.createOscillator;
AudioContext.prototype.createOscillator = function () {
    window.oscillators += 1;
    return createOscillator.apply(this, arguments);
};
"""


def test_sound_is_off_until_turned_on_remembered_and_beeps_in_a_hidden_tab(
    open_chat: OpenChat,
) -> None:
    alice = open_chat(**PHONE)
    alice.page.add_init_script(COUNT_OSCILLATORS)
    alice.page.reload()
    sound = alice.button("Sound")
    expect(sound).to_have_attribute("aria-pressed", "false")
    bob = open_chat()
    expect_chatting(alice, bob)

    def oscillators() -> int:
        return alice.page.evaluate("window.oscillators")

    # Off: nothing, hidden or not.
    alice.hide_tab()
    bob.say("one")
    expect(alice.lines).to_have_count(1)
    alice.page.wait_for_timeout(200)
    assert oscillators() == 0

    # On, and remembered across a reload; the button fits a phone's screen.
    alice.hide_tab(False)
    sound.click()
    expect(sound).to_have_attribute("aria-pressed", "true")
    alice.page.reload()
    expect(sound).to_have_attribute("aria-pressed", "true")
    shown = sound.bounding_box()
    assert shown and shown["x"] >= 0 and shown["x"] + shown["width"] <= 360, shown
    width = alice.page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert width[0] <= width[1], width

    # A stranger found while the tab is hidden: a beep; a message: another.
    alice.hide_tab()
    bob.button("Start").click()
    expect_chatting(alice, bob)
    pump_until(alice.page, lambda: oscillators() == 1)
    bob.say("two")
    expect(alice.lines.last).to_have_text("Stranger: two")
    pump_until(alice.page, lambda: oscillators() == 2)
    # Seen as it happens: no beep.
    alice.hide_tab(False)
    bob.say("three")
    expect(alice.lines.last).to_have_text("Stranger: three")
    alice.page.wait_for_timeout(200)
    assert oscillators() == 2

    # Off again: hidden, nothing.
    sound.press("Enter")
    expect(sound).to_have_attribute("aria-pressed", "false")
    alice.hide_tab()
    bob.say("four")
    expect(alice.lines.last).to_have_text("Stranger: four")
    alice.page.wait_for_timeout(200)
    assert oscillators() == 2


# -- 9. the first visit ----------------------------------------------------------

AGREE = "I agree — Start"
AGE = "You must be 18 or older to use this site."
#: The operator's rules file: a comment, a blank line, and markup that must
#: stay text.
RULES = "# ours\n\nBe kind to <b>everyone</b>.\nNo spam.\n"


def rules_server(tmp_path: Path, *options: str) -> RunningServer:
    """A server of its own, with two rules of the operator's."""
    rules = tmp_path / "rules.txt"
    rules.write_text(RULES, encoding="utf-8")
    return RunningServer(
        free_port(),
        "--rules",
        str(rules),
        "--repair-cooldown",
        "0",
        "--connects-per-minute",
        "1000",
        *options,
    ).start()


def welcomed(chat: Chat) -> str | None:
    return chat.page.evaluate("localStorage.getItem('roulette.welcomed')")


def test_a_first_visit_shows_the_rules_and_connects_only_once_agreed(
    open_chat: OpenChat, tmp_path: Path
) -> None:
    own = rules_server(tmp_path)
    try:
        alice = open_chat(own, first_visit=True)
        card = alice.welcome
        expect(card).to_be_visible()
        expect(card.get_by_role("heading", name="Welcome to roulette")).to_be_visible()
        expect(card).to_contain_text("pairs you with a random stranger")
        rules = ["Be kind to <b>everyone</b>.", "No spam."]
        expect(card.get_by_role("listitem")).to_have_text(rules)
        expect(card.locator("b")).to_have_count(0)
        expect(card.get_by_text(AGE)).to_be_visible()
        start = alice.button(AGREE)
        expect(start).to_be_focused()

        # Reading the rules, Alice is neither matched nor counted, and the
        # page behind the card is out of reach.
        alice.page.wait_for_timeout(500)
        assert own.health()["online"] == 0
        expect(alice.status).to_have_text("")
        assert alice.page.locator("#chat").evaluate("e => e.inert")
        alice.page.keyboard.press("Tab")
        outside = alice.page.evaluate(
            "() => Boolean(document.activeElement.closest('#chat, header'))"
        )
        assert not outside
        assert welcomed(alice) is None

        # By keyboard: back on Start, Enter agrees, and she looks for a stranger.
        start.focus()
        alice.page.keyboard.press("Enter")
        expect(card).to_be_hidden()
        expect(alice.status).to_have_text(LOOKING)
        wait_until(lambda: own.health()["online"] == 1)
        expect(alice.box).to_be_focused()
        assert welcomed(alice) == "1"

        # Remembered: a reload connects at once.
        alice.page.reload()
        expect(alice.status).to_have_text(LOOKING)
        expect(card).to_be_hidden()
        wait_until(lambda: own.health()["online"] == 1)
        bob = open_chat(own)  # agreed before too
        expect_chatting(alice, bob)
    finally:
        own.close()


def test_without_a_welcome_a_first_visit_connects_at_once(
    open_chat: OpenChat, tmp_path: Path
) -> None:
    own = rules_server(tmp_path, "--no-welcome")
    try:
        alice = open_chat(own, first_visit=True)
        expect(alice.status).to_have_text(LOOKING)
        wait_until(lambda: own.health()["online"] == 1)
        expect(alice.welcome).to_be_hidden()
        assert welcomed(alice) is None  # nothing was agreed to
    finally:
        own.close()


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_first_visit_card_fits_a_phone_and_is_accessible(
    open_chat: OpenChat, scheme: str
) -> None:
    # The module's server: the rules file that comes with the page.
    alice = open_chat(first_visit=True, color_scheme=scheme, **PHONE)
    card = alice.welcome
    expect(card).to_be_visible()
    expect(card.get_by_role("listitem").first).to_be_visible()
    widths = alice.page.evaluate(
        "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth,"
        " document.getElementById('welcome').scrollWidth,"
        " document.getElementById('welcome').clientWidth]"
    )
    assert widths[0] <= widths[1] and widths[2] <= widths[3], widths
    shown = card.locator(".welcome-card").bounding_box()
    assert shown and shown["x"] >= 0 and shown["x"] + shown["width"] <= 360, shown
    start = alice.button(AGREE)
    expect(start).to_be_focused()
    start.scroll_into_view_if_needed()
    expect(start).to_be_in_viewport(ratio=1)

    serious = serious_violations(alice.page)
    assert serious == [], scheme
    if scheme == "dark":
        background = card.locator(".welcome-card").evaluate(
            "e => getComputedStyle(e).backgroundColor"
        )
        assert background == "rgb(23, 26, 33)", background  # the dark surface

    start.tap()
    expect(alice.status).to_have_text(LOOKING)


# -- 9. why the wait is long ---------------------------------------------------

ALONE = "You're the only one here right now."
REPORTED = "You reported the stranger. Looking for a stranger…"
COOLDOWN = "Everyone online has just talked with you."
COOLDOWN_UNTIL = re.compile(
    r"^Everyone online has just talked with you\. You'll meet someone in (\d+) s\.$"
)


class WaitRelay:
    """Passes everything between a tab and the server but the server's own
    ``wait`` events, and tells the tab what :meth:`inject` is given as if the
    server had said it; ``after_waiting``, when set, follows each ``waiting``
    the server sends.  While ``holding``, the server's events (all but
    ``online``) are kept back until :meth:`release`."""

    def __init__(self, chat: Chat) -> None:
        self.page = chat.page
        self.received: list[str] = []  # the type of every event the server sent
        self.after_waiting: dict[str, object] | None = None
        self.holding = False
        self.held: list[str | bytes] = []
        self._route: WebSocketRoute | None = None
        self.page.route_web_socket(re.compile(r"/ws(\?.*)?$"), self._connect)
        self.page.reload()
        self.wait_for(lambda: "waiting" in self.received)

    def _connect(self, route: WebSocketRoute) -> None:
        self._route = route
        server = route.connect_to_server()

        def from_server(message: str | bytes) -> None:
            kind = json.loads(message)["type"]
            self.received.append(kind)
            if kind == "wait":
                return  # the test says why the tab waits
            if self.holding and kind != "online":
                self.held.append(message)
            else:
                self._deliver(message)

        server.on_message(from_server)
        route.on_message(server.send)

    def inject(self, event: dict[str, object]) -> None:
        assert self._route is not None
        self._route.send(json.dumps(event))

    def close(self) -> None:
        """Drop the tab's connection, as a network would."""
        assert self._route is not None
        self._route.close()

    def release(self) -> None:
        self.holding = False
        held, self.held = self.held, []
        for message in held:
            self._deliver(message)

    def _deliver(self, message: str | bytes) -> None:
        assert self._route is not None
        self._route.send(message)
        if json.loads(message)["type"] == "waiting" and self.after_waiting is not None:
            self._route.send(json.dumps(self.after_waiting))

    def wait_for(self, predicate: Callable[[], bool]) -> None:
        pump_until(self.page, predicate)


def why(chat: Chat) -> Locator:
    """The line under the status that says why the wait is long."""
    return chat.page.locator("#why")


def countdown(chat: Chat) -> int:
    """The seconds the cooldown line names, once it names some."""
    expect(why(chat)).to_have_text(COOLDOWN_UNTIL)
    shown = COOLDOWN_UNTIL.match(why(chat).text_content() or "")
    assert shown, why(chat).text_content()
    return int(shown.group(1))


def test_a_line_under_the_status_says_why_the_wait_is_long(open_chat: OpenChat) -> None:
    alice = open_chat()
    relay = WaitRelay(alice)
    expect(alice.status).to_have_text(LOOKING)

    relay.inject({"type": "wait", "reason": "alone"})
    expect(why(alice)).to_have_text(ALONE)

    # The cooldown counts down, a second at a time.
    relay.inject({"type": "wait", "reason": "cooldown", "until": time.time() + 5})
    first = countdown(alice)
    assert 1 <= first <= 5, first
    pump_until(alice.page, lambda: countdown(alice) < first, timeout=3)
    assert 1 <= countdown(alice) < first
    # Never less than a second, even once the time has passed.
    relay.inject({"type": "wait", "reason": "cooldown", "until": time.time() - 10})
    expect(why(alice)).to_have_text(
        "Everyone online has just talked with you. You'll meet someone in 1 s."
    )
    alice.page.wait_for_timeout(1_200)
    expect(why(alice)).to_have_text(
        "Everyone online has just talked with you. You'll meet someone in 1 s."
    )
    # Without a time, none is named.
    relay.inject({"type": "wait", "reason": "cooldown"})
    expect(why(alice)).to_have_text(COOLDOWN)
    # No reason any more: looking, as before.
    relay.inject({"type": "wait", "reason": None})
    expect(why(alice)).to_be_hidden()
    expect(alice.status).to_have_text(LOOKING)
    # One this page does not know says nothing more either.
    relay.inject({"type": "wait", "reason": "alone"})
    expect(why(alice)).to_have_text(ALONE)
    relay.inject({"type": "wait", "reason": "later"})
    expect(why(alice)).to_be_hidden()

    # Next starts a new wait without a reason, until the server gives one.
    relay.inject({"type": "wait", "reason": "cooldown", "until": time.time() + 30})
    countdown(alice)
    relay.after_waiting = {"type": "wait", "reason": "alone"}
    relay.holding = True
    alice.button("Next").click()
    expect(why(alice)).to_be_hidden()
    # A wait while the next's "waiting" is still owed is about the wait left.
    relay.inject({"type": "wait", "reason": "cooldown"})
    alice.page.wait_for_timeout(300)
    expect(why(alice)).to_be_hidden()
    relay.release()
    expect(why(alice)).to_have_text(ALONE)

    # Paired: chatting, whatever a late "wait" says.
    relay.after_waiting = None
    bob = open_chat()
    expect_chatting(alice, bob)
    relay.inject({"type": "wait", "reason": "alone"})
    relay.inject({"type": "message", "text": "after the wait"})
    expect(alice.lines.last).to_have_text("Stranger: after the wait")
    expect(alice.status).to_have_text(CHATTING)
    expect(why(alice)).to_be_hidden()

    # Stopped: what comes before the next "waiting" is stale too.
    alice.button("Stop").click()
    expect(alice.status).to_have_text(YOU_LEFT)
    relay.inject({"type": "wait", "reason": "alone"})
    relay.inject({"type": "message", "text": "stale"})
    alice.page.wait_for_timeout(300)
    expect(alice.status).to_have_text(YOU_LEFT)
    expect(why(alice)).to_be_hidden()

    expect(alice.lines.last).not_to_have_text("Stranger: stale")

    # Looking again (Bob is idle, so Alice is alone), and then the
    # connection is lost: said as always, and no reason is left over.
    relay.after_waiting = {"type": "wait", "reason": "alone"}
    alice.button("Start").click()
    expect(why(alice)).to_have_text(ALONE)
    relay.after_waiting = None
    relay.close()
    expect(why(alice)).to_be_hidden()
    expect(alice.status).to_have_text(LOOKING)
    assert alice.problems == [] and alice.dialogs == []


def test_a_report_is_still_confirmed_above_why_the_wait_is_long(open_chat: OpenChat) -> None:
    alice = open_chat()
    relay = WaitRelay(alice)
    bob = open_chat()
    expect_chatting(alice, bob)
    relay.after_waiting = {"type": "wait", "reason": "alone"}
    alice.button("Report").click()
    alice.button("Really report?").click()
    expect(alice.status).to_have_text(REPORTED)
    expect(why(alice)).to_have_text(ALONE)
    relay.inject({"type": "wait", "reason": None})
    expect(why(alice)).to_be_hidden()
    expect(alice.status).to_have_text(REPORTED)


def test_the_server_says_why_and_both_meet_again_after_the_cooldown(
    open_chat: OpenChat,
) -> None:
    own = RunningServer(free_port(), "--repair-cooldown", "5", "--connects-per-minute", "1000")
    own.start()
    try:
        alice = open_chat(own)
        expect(why(alice)).to_have_text(ALONE)
        bob = open_chat(own)
        expect_chatting(alice, bob)

        # Alice moves on, and Bob too: each has just talked with the only
        # other person online, and is told when the two meet again.
        alice.button("Next").click()
        expect(bob.status).to_have_text(PARTNER_LEFT)
        # Bob is idle: nobody waits whom Alice could meet at a given time.
        expect(why(alice)).to_have_text(COOLDOWN)
        bob.button("Start").click()
        shown = [countdown(chat) for chat in (alice, bob)]
        assert all(1 <= n <= 6 for n in shown), shown
        expect_chatting(alice, bob, timeout=7_000)
    finally:
        own.close()
