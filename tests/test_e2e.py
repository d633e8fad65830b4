"""End to end: ``twistd roulette`` as installed, over real sockets, driven by
a real WebSocket client (the ``websockets`` library)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from support import TWISTD, RunningServer, free_port, run_async, self_signed, wait_until
from websockets.exceptions import ConnectionClosed

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with RunningServer(
        None,
        "--repair-cooldown",
        "0",
        "--auto-ping-interval",
        "1",
        "--auto-ping-timeout",
        "2",
        "--resume-grace",
        "3",
    ) as running:
        yield running


async def recv(ws: Any, timeout: float = 5.0) -> dict[str, Any]:
    """The next event that is not an ``online`` count, why the client waits
    (``wait``), nor its session's token (``session``)."""
    while True:
        event = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if event["type"] not in ("online", "wait", "session"):
            return event


async def send(ws: Any, obj: Any) -> None:
    await ws.send(json.dumps(obj))


async def paired(url: str) -> tuple[Any, Any]:
    a = await websockets.connect(url)
    first = json.loads(await asyncio.wait_for(a.recv(), 5))
    assert first["type"] == "online" and first["count"] >= 1
    assert await recv(a) == {"type": "waiting"}
    b = await websockets.connect(url)
    assert await recv(b) == {"type": "waiting"}
    assert await recv(b) == {"type": "paired", "common": []}
    assert await recv(a) == {"type": "paired", "common": []}
    return a, b


async def with_session(url: str, token: str = "") -> tuple[Any, dict[str, Any]]:
    """A client of ``url`` (presenting a session's ``token``, if given), and
    the ``session`` event that follows its first count."""
    ws = await websockets.connect(url + (f"?session={token}" if token else ""))
    assert json.loads(await ws.recv())["type"] == "online"
    session = json.loads(await ws.recv())
    assert session["type"] == "session"
    return ws, session


async def closed_with(ws: Any, timeout: float = 5.0) -> int | None:
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)
    except ConnectionClosed:
        pass
    return ws.close_code


def test_plugin_is_listed_with_its_options() -> None:
    out = subprocess.run(
        [TWISTD, "roulette", "--help"], capture_output=True, text=True, check=True, cwd="/"
    ).stdout
    for option in ("--port", "--web-root", "--max-message-length", "--repair-cooldown"):
        assert option in out
    assert "tcp:8080" in out


def test_page_and_health_on_one_port(server: RunningServer) -> None:
    with urllib.request.urlopen(server.http_url + "/", timeout=5) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/html")
        assert b"<html" in response.read()
    assert server.health() == {"online": 0, "waiting": 0, "chatting": 0}
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(server.http_url + "/no-such-page", timeout=5)
    assert err.value.code == 404


def test_pairing_relay_next_and_tcp_drop(server: RunningServer) -> None:
    async def scenario() -> None:
        a, b = await paired(server.ws_url)
        assert server.health() == {"online": 2, "waiting": 0, "chatting": 2}
        await send(a, {"type": "message", "text": "hi from a"})
        assert await recv(b) == {"type": "message", "text": "hi from a"}
        await send(b, {"type": "typing", "active": True})
        assert await recv(a) == {"type": "typing", "active": True}
        await send(b, {"type": "message", "text": "hi from b"})
        assert await recv(a) == {"type": "message", "text": "hi from b"}

        # Next: b is told, a queues again and meets a newcomer c.
        await send(a, {"type": "next"})
        assert await recv(b) == {"type": "partner_left"}
        assert await recv(a) == {"type": "waiting"}
        c, session = await with_session(server.ws_url)
        assert session["resumed"] is False
        assert await recv(c) == {"type": "waiting"}
        assert await recv(c) == {"type": "paired", "common": []}
        assert await recv(a) == {"type": "paired", "common": []}
        await send(b, {"type": "message", "text": "hello?"})
        assert (await recv(b))["code"] == "not_paired"

        # c's TCP connection drops without a close frame: a is told at once,
        # and what it says meanwhile is kept for c.
        c.transport.abort()
        started = time.monotonic()
        assert await recv(a, timeout=2) == {"type": "partner_away"}
        assert time.monotonic() - started < 1.0
        await send(a, {"type": "message", "text": "are you there?", "id": 1})
        assert await recv(a) == {"type": "sent", "id": 1}
        # c comes back with its session's token: the chat goes on.
        c2, again = await with_session(server.ws_url, session["token"])
        assert again["resumed"] is True
        assert await recv(c2) == {"type": "partner_back"}
        assert await recv(c2) == {"type": "message", "text": "are you there?"}
        assert await recv(a) == {"type": "partner_back"}
        await send(c2, {"type": "message", "text": "back!"})
        assert await recv(a) == {"type": "message", "text": "back!"}
        assert server.health() == {"online": 3, "waiting": 0, "chatting": 2}
        await a.close()
        await b.close()
        assert await recv(c2) == {"type": "partner_left"}
        await c2.close()

    run_async(scenario())
    wait_until(lambda: server.health()["online"] == 0)


def test_bad_json_keeps_the_connection(server: RunningServer) -> None:
    async def scenario() -> None:
        a, b = await paired(server.ws_url)
        await a.send("{nope")
        event = await recv(a)
        assert event["type"] == "error" and event["code"] == "bad_json"
        await send(a, {"type": "message", "text": "after the error"})
        assert await recv(b) == {"type": "message", "text": "after the error"}
        await a.close()
        await b.close()

    run_async(scenario())


def test_close_codes(server: RunningServer) -> None:
    async def scenario() -> None:
        a, b = await paired(server.ws_url)
        await a.send(b"\x01\x02")
        assert await closed_with(a) == 1003
        assert await recv(b) == {"type": "partner_left"}

        c = await websockets.connect(server.ws_url, max_size=None)
        await c.send("x" * (64 * 1024 + 1))
        assert await closed_with(c) == 1009
        await b.close()

    run_async(scenario())


def _raw_handshake(port: int) -> socket.socket:
    """Open a WebSocket by hand, then never read again: a silent dead peer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(4096)
    assert response.startswith(b"HTTP/1.1 101")
    return sock


def test_silent_peer_is_dropped_by_auto_ping(server: RunningServer) -> None:
    async def scenario() -> None:
        silent = _raw_handshake(server.port)
        try:
            b = await websockets.connect(server.ws_url)
            assert await recv(b) == {"type": "waiting"}
            assert await recv(b) == {"type": "paired", "common": []}
            # A ping every second, two to answer (Autobahn's timers tick in
            # whole seconds): the silent peer is gone within a few seconds.
            started = time.monotonic()
            assert await recv(b, timeout=8) == {"type": "partner_away"}
            assert time.monotonic() - started < 6
            # It does not come back within the grace (3 s here): the chat ends.
            assert await recv(b, timeout=5) == {"type": "partner_left"}
            assert time.monotonic() - started > 3
            await b.close()
        finally:
            silent.close()

    run_async(scenario())


def test_sigterm_stops_the_server() -> None:
    running = RunningServer().start()
    try:
        assert running.process is not None
        process = running.process
        running.stop()
        # twistd shuts down cleanly, then re-raises the signal it received.
        assert process.returncode in (0, -signal.SIGTERM)
        assert "Server Shut Down" in running.log()
    finally:
        running.close()


def failed_start(port: str) -> str:
    """What ``twistd roulette --port PORT`` printed, having exited non-zero."""
    result = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "roulette", "--port", port],
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
    )
    assert result.returncode != 0
    return result.stdout + result.stderr


def test_port_in_use_fails_at_start(server: RunningServer) -> None:
    output = failed_start(f"tcp:{server.port}:interface=127.0.0.1")
    assert "Address already in use" in output
    assert "Traceback" not in output
    assert f"cannot listen on --port tcp:{server.port}" in output


@pytest.mark.parametrize(
    ("port", "problem"),
    [
        ("nonsense", "Unknown endpoint type"),
        ("tcp:abc", "invalid literal"),
        ("tcp:99999", "port must be 0-65535"),
        ("ssl:8443:privateKey=/no/such/key.pem:certKey=/no/such/cert.pem", "No such file"),
    ],
)
def test_a_bad_port_is_one_line_not_a_traceback(port: str, problem: str) -> None:
    output = failed_start(port)
    assert "Traceback" not in output
    last = [line for line in output.splitlines() if line.strip()][-1]
    assert f"--port {port}" in last and problem in last, last


def test_tls_endpoint_serves_page_and_wss(tmp_path: Path) -> None:
    key_path, cert_path = self_signed(tmp_path)
    context = ssl.create_default_context(cafile=str(cert_path))
    secure = RunningServer(
        None, endpoint=f"ssl:{{port}}:interface=127.0.0.1:privateKey={key_path}:certKey={cert_path}"
    )
    secure.ssl_context = context
    with secure:
        with urllib.request.urlopen(secure.http_url + "/", timeout=5, context=context) as page:
            assert b"<html" in page.read()

        async def scenario() -> None:
            a = await websockets.connect(secure.ws_url, ssl=context)
            b = await websockets.connect(secure.ws_url, ssl=context)
            assert await recv(a) == {"type": "waiting"}
            assert await recv(a) == {"type": "paired", "common": []}
            await send(b, {"type": "message", "text": "over TLS"})
            assert await recv(a) == {"type": "message", "text": "over TLS"}
            await a.close()
            await b.close()

        run_async(scenario())


def test_json_logs_through_twistd_logger() -> None:
    port = free_port()
    process = subprocess.Popen(
        [
            TWISTD,
            "-n",
            "--pidfile=",
            "--logger",
            "roulette.logs.json_stdout",
            "roulette",
            "--port",
            f"tcp:{port}:interface=127.0.0.1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd="/",
    )
    try:
        running = RunningServer(port)
        wait_until(lambda: _answers(running), timeout=20)

        async def scenario() -> None:
            ws = await websockets.connect(running.ws_url)
            await recv(ws)
            await ws.close()

        run_async(scenario())
        wait_until(lambda: running.health()["online"] == 0)
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    events = [json.loads(line) for line in output.decode().splitlines() if line.strip()]
    formats = [e.get("log_format", "") for e in events]
    assert "client {address} connected" in formats
    connected = next(e for e in events if e.get("log_format") == "client {address} connected")
    assert connected["address"] == "127.0.0.1"


def _answers(running: RunningServer) -> bool:
    try:
        running.health()
        return True
    except OSError:
        return False


def _admission(server: RunningServer) -> dict[str, Any]:
    with urllib.request.urlopen(server.http_url + "/admission", timeout=5) as response:
        assert response.headers["Content-Type"] == "application/json"
        return json.loads(response.read())


def test_admission_says_why_a_websocket_would_be_refused() -> None:
    """A script gets the HTTP refusal; a page, which cannot see it, asks
    ``/admission`` why, and learns when it may try again."""
    with RunningServer(None, "--max-per-ip", "2", "--connects-per-minute", "2") as server:

        async def scenario() -> None:
            assert _admission(server) == {"admitted": True}
            first = await websockets.connect(server.ws_url)
            second = await websockets.connect(server.ws_url)
            with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
                await websockets.connect(server.ws_url)
            assert refused.value.response.status_code == 429
            assert _admission(server) == {
                "admitted": False,
                "code": "too_many_connections",
                "message": "Too many connections from your network. Close a tab and try again.",
                "retry_after": 30,
            }
            await first.close()
            await asyncio.sleep(0.2)
            # A slot is free, but two connections were opened in the last minute.
            answer = _admission(server)
            assert answer["code"] == "too_many_attempts", answer
            assert 50 <= answer["retry_after"] <= 60
            with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
                await websockets.connect(server.ws_url)
            assert refused.value.response.status_code == 429
            await second.close()

        run_async(scenario())


def test_welcome_tells_the_page_its_card_and_rules(tmp_path: Path) -> None:
    rules = tmp_path / "rules.txt"
    rules.write_text("Soyez gentils.\n# not shown\nPas de spam.\n", encoding="utf-8")
    with (
        RunningServer(None, "--rules", str(rules)) as ours,
        RunningServer(None, "--no-welcome") as none,
    ):
        for running, expected in (
            (ours, {"welcome": True, "rules": ["Soyez gentils.", "Pas de spam."]}),
            (none, {"welcome": False}),
        ):
            with urllib.request.urlopen(running.http_url + "/welcome", timeout=5) as response:
                assert response.headers["Content-Type"] == "application/json; charset=utf-8"
                assert json.loads(response.read()) == expected
