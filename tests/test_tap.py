"""Command-line options, the service tree and the HTTP resources, without sockets."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.python.usage import UsageError
from twisted.web.test.requesthelper import DummyRequest

from roulette.core import MemoryMatchmaker
from roulette.ice import turn_credential
from roulette.lobby import Lobby
from roulette.tap import Options, makeService
from roulette.website import Health, StaticFiles, WebSocketEntry, default_web_root


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


def test_defaults() -> None:
    options = parse()
    assert options["port"] == "tcp:8080"
    assert options["max-message-length"] == 2000
    assert options["repair-cooldown"] == 60.0
    assert options["interest-wait"] == 10.0
    assert options["auto-ping-interval"] == 20.0
    assert options["auto-ping-timeout"] == 10.0
    assert options["web-root"] == default_web_root()
    assert (options["web-root"] / "index.html").is_file()


@pytest.mark.parametrize(
    "args",
    [
        ("--max-message-length", "0"),
        ("--max-message-length", "10001"),
        ("--max-message-length", "many"),
        ("--repair-cooldown", "-1"),
        ("--repair-cooldown", "nan"),
        ("--interest-wait", "-1"),
        ("--interest-wait", "inf"),
        ("--message-rate", "inf"),
        ("--shutdown-grace", "1e400"),
        ("--auto-ping-timeout", "0.5"),
        ("--web-root", "/nonexistent"),
        ("--ice-server", "http://turn.example.org"),
        ("--ice-server", "turn:"),
        ("--signal-rate", "0"),
        ("--turn-ttl", "-5"),
        ("--turn-secret", ""),
        ("--turn-secret-file", "/nonexistent"),
        ("--turn-secret", "a", "--turn-secret-file", "/etc/hostname"),
    ],
)
def test_bad_options_are_refused(args: tuple[str, ...]) -> None:
    with pytest.raises(UsageError):
        parse(*args)


def test_the_rules_come_from_the_web_root_or_a_file_and_are_bounded(tmp_path: Path) -> None:
    assert parse()["rules"][0] == "Be kind: no harassment, hate, threats or bullying."
    assert parse("--no-welcome")["rules"] is None
    rules = tmp_path / "rules.txt"
    rules.write_text("# ours\n\n  Be nice.  \nNo spam.\n", encoding="utf-8")
    assert parse("--rules", str(rules))["rules"] == ["Be nice.", "No spam."]
    # A web root of one's own, without a rules file: a card with no rules.
    (tmp_path / "index.html").write_text("<html></html>")
    (tmp_path / "rules.txt").unlink()
    assert parse("--web-root", str(tmp_path))["rules"] == []
    for text, problem in (
        ("rule\n" * 31, "holds 31 rules; at most 30"),
        ("x" * 301, "over 300 characters"),
        ("x\n" * 40_000, "is over 64 KiB"),
    ):
        rules.write_text(text, encoding="utf-8")
        with pytest.raises(UsageError, match=problem):
            parse("--rules", str(rules))
    with pytest.raises(UsageError, match="No such file"):
        parse("--rules", str(tmp_path / "nothing.txt"))


def test_make_service_listens_on_the_endpoint_and_applies_options(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<html>custom</html>")
    reactor = MemoryReactorClock()
    options = parse("--port", "tcp:9999", "--web-root", str(tmp_path), "--max-message-length", "42")
    service = makeService(options, reactor=reactor)
    listeners = [
        s
        for parent in service
        for s in (parent if isinstance(parent, MultiService) else [parent])
        if isinstance(s, StreamServerEndpointService)
    ]
    assert len(listeners) == 1
    service.startService()
    try:
        assert [port for port, *_ in reactor.tcpServers] == [9999]
        site = reactor.tcpServers[0][1]
        assert isinstance(site.resource.children[b"ws"], WebSocketEntry)
        assert site.websocket.limits.max_message_length == 42
    finally:
        service.stopService()


def test_video_options_reach_the_factory(tmp_path: Path) -> None:
    secret = tmp_path / "turn-secret"
    secret.write_text("s3cret\n")
    options = parse(
        "--ice-server", "stun:stun.example.org",
        "--ice-server", "turn:turn.example.org:3478",
        "--turn-secret-file", str(secret),
        "--turn-ttl", "60",
        "--signal-rate", "7",
        "--signal-burst", "9",
    )  # fmt: skip
    assert options["turn-secret"] == "s3cret"
    reactor = MemoryReactorClock()
    reactor.advance(1000)
    service = makeService(options, reactor=reactor)
    service.startService()
    try:
        factory = reactor.tcpServers[0][1].websocket
        assert factory.limits.signal_rate == 7 and factory.limits.signal_burst == 9
        stun, turn = factory.ice_servers()
        assert stun == {"urls": ["stun:stun.example.org"]}
        assert turn["urls"] == ["turn:turn.example.org:3478"] and turn["username"] == "1060"
        assert turn["credential"] == turn_credential(b"s3cret", "1060")
    finally:
        service.stopService()


def test_stopping_logs_what_the_tally_counted(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<html></html>")
    reactor = MemoryReactorClock()
    service = makeService(parse("--web-root", str(tmp_path)), reactor=reactor)
    service.startService()
    site = reactor.tcpServers[0][1]
    for n in range(5):
        site.tally.note("test flood", "flood {n}", n=n)
    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        service.stopService()
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert any(e.get("count") == 4 and e.get("kind") == "test flood" for e in seen), seen
    assert not reactor.getDelayedCalls()


def test_health_reports_counts() -> None:
    lobby = Lobby(MemoryMatchmaker(random.Random(0), Clock().seconds), Clock())
    request = DummyRequest([b""])
    body = Health(lobby).render_GET(request)
    assert json.loads(body) == {"online": 0, "waiting": 0, "chatting": 0}
    assert request.responseHeaders.getRawHeaders(b"content-type") == [b"application/json"]


def test_static_files_list_no_directories(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<html></html>")
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "notes.txt").write_text("secret")
    root = StaticFiles(str(tmp_path))
    request = DummyRequest([b"private", b""])
    child = root.getChild(b"private", request)
    listing = child.getChild(b"", request)
    listing.render(request)
    assert request.responseCode == 404
    # Files are still served.
    assert child.getChild(b"notes.txt", request).path.endswith("notes.txt")
