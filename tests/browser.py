"""What the browser tests share: Debian's Chromium, how it is launched, the
server their tabs talk to, and a person's tab as the tests look at it
(``test_page.py``, ``test_interests_page.py``, ``test_video.py``)."""

from __future__ import annotations

from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import BrowserContext, ConsoleMessage, Dialog, Locator, Page
from support import RunningServer, free_port

CHROMIUM = "/usr/bin/chromium"

#: Headless Chromium with nothing of its own going on in the background.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-gpu",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def serious_violations(page: Page) -> list[str]:
    """What axe finds seriously wrong on the page (impact serious or
    critical), one line each, naming the elements."""
    results = Axe().run(page)
    return [
        f"{v['id']} ({v['impact']}): {v['help']} at "
        + ", ".join(str(node["target"]) for node in v["nodes"])
        for v in results.response["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def page_server(*options: str) -> RunningServer:
    """``twistd roulette`` started for a module's tabs, with ``options``:
    strangers may meet again at once, and every tab connects from
    127.0.0.1, so that address may connect often."""
    return RunningServer(
        free_port(), "--repair-cooldown", "0", "--connects-per-minute", "1000", *options
    ).start()


#: Run before the page's own script: the person agreed to the rules on an
#: earlier visit, so the page connects at once instead of showing its card.
WELCOMED = """
try {
    localStorage.setItem("roulette.welcomed", "1");
} catch (error) {
    // An opaque origin (about:blank) has no storage: nothing to agree to.
}
"""


class Tab:
    """One person's tab, and what it has seen go wrong: ``dialogs`` opened,
    and ``problems`` (script errors, console errors).

    The person has agreed to the rules before (and so meets a stranger at
    once), unless ``first_visit``: then the page shows its first visit's card.
    """

    def __init__(
        self,
        context: BrowserContext,
        base_url: str,
        init_script: str | None = None,
        *,
        first_visit: bool = False,
    ) -> None:
        self.context = context
        self.base_url = base_url
        self.problems: list[str] = []
        self.dialogs: list[str] = []
        self.page = context.new_page()
        if not first_visit:
            self.page.add_init_script(WELCOMED)
        if init_script:
            self.page.add_init_script(init_script)
        self.page.on("dialog", self._on_dialog)
        self.page.on("console", self._on_console)
        self.page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        self.watch()
        self.response = self.page.goto(base_url + "/")

    def watch(self) -> None:
        """Watch the page for more, before it loads (for subclasses)."""

    def _on_dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def _on_console(self, message: ConsoleMessage) -> None:
        # While the server is away, the refused WebSocket connection is
        # logged, and so is the page's question why (GET /admission).
        if (
            message.type == "error"
            and not message.text.startswith("WebSocket connection to")
            and "/admission" not in (message.location.get("url") or "")
        ):
            self.problems.append(f"console error: {message.text}")

    # -- what a person sees ------------------------------------------------

    @property
    def status(self) -> Locator:
        return self.page.get_by_role("status")

    @property
    def log(self) -> Locator:
        return self.page.get_by_role("log")

    @property
    def lines(self) -> Locator:
        return self.log.locator("p")

    @property
    def box(self) -> Locator:
        return self.page.get_by_role("textbox", name="Message")

    @property
    def notice(self) -> Locator:
        return self.page.locator("#notice")

    def button(self, name: str) -> Locator:
        return self.page.get_by_role("button", name=name, exact=True)

    @property
    def welcome(self) -> Locator:
        """The first visit's card."""
        return self.page.get_by_role("dialog", name="Welcome to roulette")

    # -- what a person does ------------------------------------------------

    def say(self, text: str) -> None:
        self.box.fill(text)
        self.box.press("Enter")
