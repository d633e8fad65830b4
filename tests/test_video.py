"""Video chat in the page (``web/``): camera to camera over WebRTC, in headless
Chromium with its fake camera and microphone, against a real ``twistd roulette``.

WebRTC would otherwise choose the machine's network interfaces, so these
tests run, with their server and browser, in a network namespace of their own
that has only loopback (``unshare -n``, as root).  Run normally, each test
here runs the module once in such a namespace (with ``ROULETTE_IN_NETNS=1``)
and reports the outcome its own test had there.  Where a namespace cannot be
made, the tests are skipped, except under CI (``CI=true``), where they fail.

Every test looks at what a person sees: the status line, the pictures, the
buttons.  A script error, a console error or a dialog fails the test.

Set ``ROULETTE_SCREENSHOTS=1`` to refresh ``docs/screenshot-video-light.png``
and ``docs/screenshot-video-dark.png``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from browser import CHROMIUM, CHROMIUM_ARGS, Tab, page_server, serious_violations
from support import IN_CI, RunningServer, free_port, wait_until

#: Set in the run inside the network namespace.
IN_NETNS = os.environ.get("ROULETTE_IN_NETNS") == "1"

if not Path(CHROMIUM).exists() and not IN_CI:
    pytest.skip(f"{CHROMIUM} is not installed", allow_module_level=True)

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
HERE = Path(__file__).resolve()

LOOKING = "Looking for a stranger…"
LOOKING_VIDEO = "Looking for a stranger with a camera…"
CHATTING = "You're now chatting with a random stranger. Say hi!"
PARTNER_LEFT = "Stranger has disconnected."
YOU_LEFT = "You have disconnected."
CAMERA_FAILED = (
    "Your camera could not be opened (permission refused or no camera): you are in text mode."
)
VIDEO_FAILED = "Couldn't connect video with this stranger. Text still works."

#: How long the inner run may take, all tests together.
INNER_TIMEOUT_S = 540


# -- the way into the namespace ------------------------------------------------


class InnerRun:
    """The outcome of each test of this module in the run inside the namespace."""

    def __init__(self, outcomes: dict[str, tuple[str, str]], output: str) -> None:
        self.outcomes = outcomes
        self.output = output

    def check(self, name: str) -> None:
        if name not in self.outcomes:
            pytest.fail(f"{name} did not run in the network namespace:\n{self.output[-6000:]}")
        outcome, detail = self.outcomes[name]
        if outcome == "skipped":
            pytest.skip(detail)
        if outcome != "passed":
            pytest.fail(
                f"{name} {outcome} in the network namespace:\n{detail}\n\n"
                f"-- the run's output, last lines --\n{self.output[-3000:]}",
                pytrace=False,
            )


def _unavailable(why: str) -> None:
    if IN_CI:
        pytest.fail(f"{why}: the video tests need it (run as root, with util-linux and iproute2)")
    pytest.skip(why)


@pytest.fixture(scope="module")
def inner_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> InnerRun:
    """Runs this module's selected tests in a new network namespace that has
    only loopback, once for all of them."""
    unshare = shutil.which("unshare")
    ip = shutil.which("ip") or next(
        (p for p in ("/usr/sbin/ip", "/sbin/ip") if Path(p).exists()), None
    )
    if unshare is None or ip is None:
        _unavailable("unshare or ip is not installed")
    probe = subprocess.run(
        [unshare, "-n", ip, "link", "set", "lo", "up"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        _unavailable(f"cannot make a network namespace (unshare -n): {probe.stderr.strip()}")

    names = [item.name for item in request.session.items if item.path == HERE]
    report = tmp_path_factory.mktemp("netns") / "report.xml"
    command = [
        unshare,
        "-n",
        "sh",
        "-c",
        f'{ip} link set lo up && exec "$0" "$@"',
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--junitxml={report}",
        *(f"{HERE}::{name}" for name in names),
    ]
    try:
        result = subprocess.run(
            command,
            cwd=ROOT,
            env={**os.environ, "ROULETTE_IN_NETNS": "1"},
            capture_output=True,
            text=True,
            timeout=INNER_TIMEOUT_S,
        )
        output = result.stdout + result.stderr
    except subprocess.TimeoutExpired as timeout:
        output = f"timed out after {INNER_TIMEOUT_S} s\n" + str(timeout.stdout or "")
    outcomes: dict[str, tuple[str, str]] = {}
    if report.exists():
        for case in ET.parse(report).getroot().iter("testcase"):
            outcome, detail = "passed", ""
            for child in case:
                if child.tag in ("failure", "error", "skipped"):
                    outcome = "skipped" if child.tag == "skipped" else "failed"
                    detail = (child.get("message") or "") + "\n" + (child.text or "")
                    if child.tag != "skipped":
                        break
            outcomes[case.get("name", "")] = (outcome, detail.strip())
    return InnerRun(outcomes, output)


def in_netns(test: Callable[..., None]) -> Callable[..., None]:
    """Outside the namespace, the test reports what it did inside."""
    if IN_NETNS:
        return test

    def outer(inner_run: InnerRun) -> None:
        inner_run.check(test.__name__)

    outer.__name__ = outer.__qualname__ = test.__name__
    outer.__doc__ = test.__doc__
    return outer


# -- inside the namespace --------------------------------------------------------

if IN_NETNS:
    from playwright.sync_api import (
        Browser,
        Locator,
        expect,
        sync_playwright,
    )

    expect.set_options(timeout=10_000)

    class VideoTab(Tab):
        """One person's tab, with its camera."""

        @property
        def stranger(self) -> Locator:
            """The stranger's picture."""
            return self.page.get_by_label("Stranger's camera", exact=True)

        @property
        def own(self) -> Locator:
            """The person's own picture."""
            return self.page.get_by_label("Your camera", exact=True)

        def turn_video_on(self) -> None:
            self.button("Video").click()
            expect(self.button("Video")).to_have_attribute("aria-pressed", "true")
            expect(self.own).to_be_visible()

        def own_stream_id(self) -> str:
            return self.own.evaluate("v => v.srcObject.id")

        def stranger_stream_id(self) -> str:
            return self.stranger.evaluate("v => v.srcObject.id")

    def expect_playing(video: Locator, timeout: float = 15_000) -> None:
        """The element shows a picture that moves on."""
        expect(video).to_be_visible(timeout=timeout)
        video.page.wait_for_function(
            "v => v.srcObject && v.videoWidth > 0 && v.currentTime > 0 && !v.paused",
            arg=video.element_handle(),
            timeout=timeout,
        )
        before = video.evaluate("v => v.currentTime")
        video.page.wait_for_timeout(600)
        after = video.evaluate("v => v.currentTime")
        assert after > before, f"the picture stands still at {before} s"

    def expect_cleared(video: Locator) -> None:
        """No stranger's picture, at once."""
        expect(video).to_be_hidden(timeout=2_000)
        assert video.evaluate("v => v.srcObject") is None

    def in_video_chat(alice: VideoTab, bob: VideoTab) -> None:
        """Both are paired and each sees the other's camera."""
        for tab in (alice, bob):
            expect(tab.status).to_have_text(CHATTING)
        for tab in (alice, bob):
            expect_playing(tab.stranger)
        assert alice.stranger_stream_id() == bob.own_stream_id()
        assert bob.stranger_stream_id() == alice.own_stream_id()

    @pytest.fixture(scope="module")
    def browser() -> Iterator[Browser]:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM,
                headless=True,
                args=[
                    *CHROMIUM_ARGS,
                    # The camera and microphone: a test pattern and a beep,
                    # allowed without asking.
                    "--use-fake-ui-for-media-stream",
                    "--use-fake-device-for-media-stream",
                    # Peer connections over 127.0.0.1, the namespace's only
                    # address.
                    "--allow-loopback-in-peer-connection",
                ],
            )
            yield browser
            browser.close()

    @pytest.fixture(scope="module")
    def server() -> Iterator[RunningServer]:
        running = page_server()
        yield running
        running.close()

    OpenTab = Callable[..., VideoTab]

    @pytest.fixture
    def open_tab(browser: Browser, server: RunningServer) -> Iterator[OpenTab]:
        """Opens the page in a fresh browser context: one stranger per call.

        After the test every tab is closed, the test fails if any of them saw
        a dialog or an error, and the server is left with nobody online.
        """
        tabs: list[VideoTab] = []

        def open_one(
            init_script: str | None = None,
            on: RunningServer | None = None,
            **context_options: object,
        ) -> VideoTab:
            context = browser.new_context(**context_options)
            tab = VideoTab(context, (on or server).http_url, init_script)
            tabs.append(tab)
            return tab

        yield open_one

        for tab in tabs:
            tab.context.close()
        wait_until(lambda: server.health()["online"] == 0)
        assert [d for tab in tabs for d in tab.dialogs] == [], "the page opened a dialog"
        assert [p for tab in tabs for p in tab.problems] == []


# -- tests -------------------------------------------------------------------------


@in_netns
def test_two_video_strangers_see_each_other_and_text_still_works(open_tab) -> None:
    alice = open_tab()
    expect(alice.status).to_have_text(LOOKING)
    expect(alice.button("Video")).to_have_attribute("aria-pressed", "false")
    expect(alice.own).to_be_hidden()
    expect(alice.stranger).to_be_hidden()

    alice.turn_video_on()
    expect(alice.status).to_have_text(LOOKING_VIDEO)
    expect_playing(alice.own)
    assert alice.own.evaluate("v => v.muted && v.playsInline")
    expect(alice.stranger).to_be_hidden()  # nobody's picture before a stranger is there
    for name in ("Mute microphone", "Pause camera"):
        expect(alice.button(name)).to_have_attribute("aria-pressed", "false")

    bob = open_tab()
    expect(bob.status).to_have_text(LOOKING)
    bob.turn_video_on()
    in_video_chat(alice, bob)
    assert alice.stranger.evaluate("v => v.playsInline && v.autoplay && !v.muted")

    # Text goes both ways while the pictures play.
    alice.say("hello, I can see you")
    expect(bob.lines).to_have_text(["Stranger: hello, I can see you"])
    bob.say("likewise!")
    expect(alice.lines).to_have_text(["You: hello, I can see you", "Stranger: likewise!"])
    expect_playing(alice.stranger)
    expect_playing(bob.stranger)

    # Muting the microphone and pausing the camera keep the chat going.
    alice.button("Mute microphone").click()
    expect(alice.button("Mute microphone")).to_have_attribute("aria-pressed", "true")
    assert alice.own.evaluate("v => v.srcObject.getAudioTracks().every(t => !t.enabled)")
    alice.button("Pause camera").click()
    expect(alice.button("Pause camera")).to_have_attribute("aria-pressed", "true")
    assert alice.own.evaluate("v => v.srcObject.getVideoTracks().every(t => !t.enabled)")
    alice.button("Pause camera").click()
    alice.button("Mute microphone").click()
    expect(alice.button("Pause camera")).to_have_attribute("aria-pressed", "false")
    assert alice.own.evaluate("v => v.srcObject.getTracks().every(t => t.enabled)")
    expect(bob.status).to_have_text(CHATTING)

    # Video off: the camera stops, the chat ends, and Alice looks for a text
    # stranger; Bob's picture of her goes at once.
    alice.button("Video").click()
    expect(alice.button("Video")).to_have_attribute("aria-pressed", "false")
    expect(alice.status).to_have_text(LOOKING)
    expect(alice.own).to_be_hidden()
    expect(alice.button("Mute microphone")).to_be_hidden()
    expect(bob.status).to_have_text(PARTNER_LEFT)
    expect_cleared(bob.stranger)
    expect_cleared(alice.stranger)


@in_netns
def test_next_meets_a_third_and_clears_the_old_partners_picture(open_tab) -> None:
    alice = open_tab()
    alice.turn_video_on()
    bob = open_tab()
    bob.turn_video_on()
    in_video_chat(alice, bob)

    carol = open_tab()
    carol.turn_video_on()
    expect(carol.status).to_have_text(LOOKING_VIDEO)
    alice.button("Next").click()
    expect(bob.status).to_have_text(PARTNER_LEFT)
    expect_cleared(bob.stranger)
    in_video_chat(alice, carol)
    expect(bob.stranger).to_be_hidden()
    expect_playing(bob.own)  # Bob's camera stays on, for his next stranger

    # Esc Esc does what Next does: the picture goes at once.
    carol.page.keyboard.press("Escape")
    carol.page.keyboard.press("Escape")
    expect(carol.status).to_have_text(LOOKING_VIDEO)
    expect_cleared(carol.stranger)
    expect(alice.status).to_have_text(PARTNER_LEFT)
    expect_cleared(alice.stranger)

    # Bob starts again and meets Carol; Stop ends that chat for both.
    bob.button("Start").click()
    in_video_chat(bob, carol)
    carol.button("Stop").click()
    expect(carol.status).to_have_text(YOU_LEFT)
    expect_cleared(carol.stranger)
    expect(bob.status).to_have_text(PARTNER_LEFT)
    expect_cleared(bob.stranger)

    # Alice's tab goes away: her connection drops, and her picture with it.
    alice.button("Start").click()
    bob.button("Start").click()
    in_video_chat(alice, bob)
    alice.page.close()
    expect(bob.status).to_have_text(PARTNER_LEFT)
    expect_cleared(bob.stranger)


@in_netns
def test_text_and_video_strangers_never_meet(open_tab, server: RunningServer) -> None:
    video = open_tab()
    video.turn_video_on()
    expect(video.status).to_have_text(LOOKING_VIDEO)
    text = open_tab()
    expect(text.status).to_have_text(LOOKING)
    wait_until(lambda: server.health() == {"online": 2, "waiting": 2, "chatting": 0})
    video.page.wait_for_timeout(1_000)
    expect(text.status).to_have_text(LOOKING)
    expect(video.status).to_have_text(LOOKING_VIDEO)
    assert server.health() == {"online": 2, "waiting": 2, "chatting": 0}

    other_text = open_tab()
    expect(other_text.status).to_have_text(CHATTING)
    expect(text.status).to_have_text(CHATTING)
    expect(video.status).to_have_text(LOOKING_VIDEO)
    other_text.say("text only here")
    expect(text.lines).to_have_text(["Stranger: text only here"])
    expect(text.stranger).to_be_hidden()
    expect(video.stranger).to_be_hidden()


@in_netns
def test_a_dropped_connection_clears_the_picture_and_video_comes_back(open_tab) -> None:
    own = RunningServer(free_port(), "--repair-cooldown", "0").start()
    try:
        alice = open_tab(on=own)
        alice.turn_video_on()
        bob = open_tab(on=own)
        bob.turn_video_on()
        in_video_chat(alice, bob)

        own.stop()
        for tab in (alice, bob):
            expect(tab.status).to_have_text("Connection lost. Reconnecting…")
            expect_cleared(tab.stranger)
            expect(tab.button("Video")).to_have_attribute("aria-pressed", "true")
        # Back in video mode (/ws?video=1): they meet again, camera to camera.
        own.start()
        for tab in (alice, bob):
            expect(tab.status).to_have_text(CHATTING, timeout=30_000)
        in_video_chat(alice, bob)
    finally:
        own.close()


REFUSE_CAMERA = """
navigator.mediaDevices.getUserMedia = () =>
    Promise.reject(new DOMException("Permission denied", "NotAllowedError"));
"""


@in_netns
def test_a_refused_camera_leaves_the_page_in_text_mode(open_tab) -> None:
    alice = open_tab(REFUSE_CAMERA)
    expect(alice.status).to_have_text(LOOKING)
    alice.button("Video").click()
    expect(alice.notice).to_have_text(CAMERA_FAILED)
    expect(alice.button("Video")).to_have_attribute("aria-pressed", "false")
    expect(alice.button("Video")).to_be_enabled()
    expect(alice.status).to_have_text(LOOKING)
    expect(alice.own).to_be_hidden()
    expect(alice.button("Mute microphone")).to_be_hidden()

    # Alice is still a text stranger: she meets one.
    bob = open_tab()
    expect(alice.status).to_have_text(CHATTING)
    expect(bob.status).to_have_text(CHATTING)
    bob.say("hi")
    expect(alice.lines).to_have_text(["Stranger: hi"])


#: A browser that has not been told yet whether the page may use the camera.
PERMISSION_UNKNOWN = """
window.cameraAsked = 0;
const realGetUserMedia = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
navigator.mediaDevices.getUserMedia = constraints => {
    window.cameraAsked += 1;
    return realGetUserMedia(constraints);
};
navigator.permissions.query = () => Promise.resolve({state: "prompt"});
"""


@in_netns
def test_the_choice_of_video_is_remembered(open_tab) -> None:
    alice = open_tab()
    alice.turn_video_on()
    expect(alice.status).to_have_text(LOOKING_VIDEO)

    # The browser remembers the permission (the fake camera's is granted):
    # video again at once, looking for a stranger with a camera.
    alice.page.reload()
    expect(alice.button("Video")).to_have_attribute("aria-pressed", "true")
    expect(alice.status).to_have_text(LOOKING_VIDEO)
    expect_playing(alice.own)
    bob = open_tab()
    bob.turn_video_on()
    in_video_chat(alice, bob)

    # Where the permission is not known, the camera is not opened on load.
    url = alice.page.url
    unsure = alice.context.new_page()
    unsure.add_init_script(PERMISSION_UNKNOWN)
    alice.page.close()
    expect(bob.status).to_have_text(PARTNER_LEFT)
    expect_cleared(bob.stranger)
    unsure.goto(url)
    expect(unsure.get_by_role("status")).to_have_text(LOOKING)
    video = unsure.get_by_role("button", name="Video", exact=True)
    expect(video).to_have_attribute("aria-pressed", "false")
    expect(unsure.get_by_label("Your camera", exact=True)).to_be_hidden()
    assert unsure.evaluate("window.cameraAsked") == 0
    video.click()
    expect(video).to_have_attribute("aria-pressed", "true")
    expect(unsure.get_by_role("status")).to_have_text(LOOKING_VIDEO)
    assert unsure.evaluate("window.cameraAsked") == 1
    unsure.close()


#: Signalling never leaves this tab: its video cannot connect.
DROP_SIGNALS = """
const realSend = WebSocket.prototype.send;
WebSocket.prototype.send = function (data) {
    if (typeof data === "string" && data.startsWith('{"type":"signal"')) return;
    return realSend.call(this, data);
};
"""


@in_netns
def test_video_that_cannot_connect_is_said_and_text_goes_on(open_tab) -> None:
    alice = open_tab(DROP_SIGNALS)
    alice.turn_video_on()
    bob = open_tab()
    bob.turn_video_on()
    for tab in (alice, bob):
        expect(tab.status).to_have_text(CHATTING)
    started = time.monotonic()
    for tab in (alice, bob):
        expect(tab.page.get_by_text(VIDEO_FAILED)).to_be_visible(timeout=20_000)
    assert time.monotonic() - started > 10
    expect(alice.stranger).to_be_hidden()
    expect(bob.stranger).to_be_hidden()
    alice.say("can you read me?")
    expect(bob.lines).to_have_text(["Stranger: can you read me?"])
    # Next is offered, and does what Next does.
    bob.button("Next stranger").click()
    expect(bob.status).to_have_text(LOOKING_VIDEO)
    expect(bob.page.get_by_text(VIDEO_FAILED)).to_be_hidden()
    expect(alice.status).to_have_text(PARTNER_LEFT)
    expect(alice.page.get_by_text(VIDEO_FAILED)).to_be_hidden()


#: Every RTCPeerConnection's configuration, and every signal frame sent.
WATCH_SIGNALLING = """
window.peerConfigs = [];
window.signalsSent = [];
const RealPeerConnection = window.RTCPeerConnection;
window.RTCPeerConnection = function (config) {
    window.peerConfigs.push(JSON.parse(JSON.stringify(config)));
    return new RealPeerConnection(config);
};
window.RTCPeerConnection.prototype = RealPeerConnection.prototype;
const realSend = WebSocket.prototype.send;
WebSocket.prototype.send = function (data) {
    if (typeof data === "string" && data.startsWith('{"type":"signal"')) {
        window.signalsSent.push(performance.now());
    }
    return realSend.call(this, data);
};
"""


@in_netns
def test_signalling_keeps_to_the_servers_budget_and_ice_servers(open_tab) -> None:
    """A server that allows few signals, and names a STUN and a TURN server
    (unreachable here): video still connects, nothing is refused, and the
    peer connection is told the servers, TURN credentials included."""
    own = RunningServer(
        free_port(),
        "--repair-cooldown",
        "0",
        "--signal-rate",
        "1",
        "--signal-burst",
        "2",
        "--ice-server",
        "stun:127.0.0.1:3478",
        "--ice-server",
        "turn:127.0.0.1:3478",
        "--turn-secret",
        "not-so-secret",
    ).start()
    try:
        alice = open_tab(WATCH_SIGNALLING, on=own)
        alice.turn_video_on()
        bob = open_tab(WATCH_SIGNALLING, on=own)
        bob.turn_video_on()
        in_video_chat(alice, bob)
        for tab in (alice, bob):
            expect(tab.notice).to_be_empty()
            configs = tab.page.evaluate("window.peerConfigs")
            assert len(configs) == 1, configs
            servers = configs[0]["iceServers"]
            assert servers[0] == {"urls": ["stun:127.0.0.1:3478"]}, servers
            assert servers[1]["urls"] == ["turn:127.0.0.1:3478"], servers
            assert servers[1]["username"] and servers[1]["credential"], servers
            # One a second after a burst of 2, as the server said.
            sent = tab.page.evaluate("window.signalsSent")
            assert sent, "no signal was sent"
            for i in range(2, len(sent)):
                assert sent[i] - sent[i - 2] >= 1000, sent
        most = max(len(tab.page.evaluate("window.signalsSent")) for tab in (alice, bob))
        assert most > 2, "the budget was never reached: the test proves nothing"
        alice.say("still here")
        expect(bob.lines).to_have_text(["Stranger: still here"])
    finally:
        own.close()


@in_netns
def test_no_serious_accessibility_violations_in_a_video_chat(open_tab) -> None:
    alice = open_tab()
    alice.turn_video_on()
    bob = open_tab()
    bob.turn_video_on()
    in_video_chat(alice, bob)
    bob.say("hello from the other camera")
    expect(alice.lines).to_have_count(1)
    alice.button("Mute microphone").click()
    expect(alice.button("Mute microphone")).to_have_attribute("aria-pressed", "true")

    for scheme in ("light", "dark"):
        for tab in (alice, bob):
            tab.page.emulate_media(color_scheme=scheme)
            serious = serious_violations(tab.page)
            assert serious == [], scheme

    # The keyboard goes from the video controls to the text chat, with a
    # visible focus on each.
    keyboard = alice.page.keyboard
    alice.button("Mute microphone").focus()
    seen = []
    for _ in range(4):
        keyboard.press("Tab")
        focused = alice.page.evaluate(
            """[document.activeElement.id,
                document.activeElement.matches(":focus-visible"),
                getComputedStyle(document.activeElement).outlineStyle]"""
        )
        assert focused[1] and focused[2] != "none", f"no visible focus on #{focused[0]}"
        seen.append(focused[0])
    assert seen == ["camera", "log", "video", "report"], seen


@in_netns
def test_screenshots_of_a_video_chat(open_tab, tmp_path: Path) -> None:
    size = {"viewport": {"width": 960, "height": 640}}
    alice = open_tab(**size)
    alice.turn_video_on()
    bob = open_tab(**size)
    bob.turn_video_on()
    in_video_chat(alice, bob)
    bob.say("hi! is that a test pattern?")
    alice.say("Ha, yes. My real camera is shy.")
    bob.say("Mine too.")
    expect(alice.lines).to_have_count(3)

    for scheme in ("light", "dark"):
        alice.page.emulate_media(color_scheme=scheme)
        background = alice.page.evaluate("getComputedStyle(document.body).backgroundColor")
        red, green, blue = (int(c) for c in re.findall(r"\d+", background)[:3])
        brightness = (red + green + blue) / 3
        assert (brightness > 180) if scheme == "light" else (brightness < 60), background
        # Nothing overflows, and the text chat is beside the picture.
        screen = alice.stranger.bounding_box()
        log = alice.page.get_by_role("log").bounding_box()
        assert screen is not None and log is not None
        assert log["x"] >= screen["x"] + screen["width"], (screen, log)
        expect_playing(alice.stranger)
        shot = tmp_path / f"screenshot-video-{scheme}.png"
        alice.page.screenshot(path=shot)
        assert shot.stat().st_size > 10_000
        if os.environ.get("ROULETTE_SCREENSHOTS"):
            DOCS.mkdir(exist_ok=True)
            shutil.copyfile(shot, DOCS / shot.name)


@in_netns
def test_phone_layout_puts_the_text_chat_below_the_picture(open_tab) -> None:
    phone = {"viewport": {"width": 360, "height": 640}, "is_mobile": True, "has_touch": True}
    alice = open_tab(**phone)
    alice.turn_video_on()
    bob = open_tab(**phone)
    bob.turn_video_on()
    in_video_chat(alice, bob)
    screen = alice.stranger.bounding_box()
    log = alice.page.get_by_role("log").bounding_box()
    assert screen is not None and log is not None
    assert log["y"] >= screen["y"] + screen["height"], (screen, log)
    for control in (alice.box, alice.button("Send"), alice.button("Next"), alice.button("Video")):
        expect(control).to_be_in_viewport(ratio=1)
    width = alice.page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert width[0] <= width[1], f"the page scrolls sideways: {width}"
    alice.box.tap()
    alice.box.fill("typed on a phone")
    alice.button("Send").tap()
    expect(bob.lines.last).to_have_text("Stranger: typed on a phone")
