"""Protections that live in the network path, each against a real
``twistd roulette`` over real sockets."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import ssl
import time
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from support import (
    RunningServer,
    closed_within,
    free_port,
    read_head,
    run_async,
    self_signed,
    upgrade_request,
    wait_until,
)
from websockets.exceptions import ConnectionClosed

pytestmark = pytest.mark.e2e


def raw_upgrade(
    port: int, headers: dict[str, str] | None = None, prefix: bytes = b""
) -> tuple[socket.socket, int, bytes]:
    """Send an upgrade request by hand; return the socket, the HTTP status and
    the response head."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(prefix + upgrade_request(port, headers=headers))
    status, response = read_head(sock)
    return sock, status, response


def status_of(port: int, headers: dict[str, str] | None = None, prefix: bytes = b"") -> int:
    sock, status, _ = raw_upgrade(port, headers, prefix)
    sock.close()
    return status


def http_get(port: int, path: str, host: str | None) -> tuple[int, bytes]:
    """``GET path`` over a raw socket, with this ``Host`` (``None``: an HTTP/1.0
    request without one); return the status and the whole response."""
    if host is None:
        request = f"GET {path} HTTP/1.0\r\n\r\n"
    else:
        request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request.encode("latin-1"))
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    return int(response.split(b" ", 2)[1]), response


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with RunningServer(
        None,
        "--allowed-origin",
        "https://*.friends.example",
        "--handshake-timeout",
        "2",
        "--max-per-ip",
        "3",
        "--connects-per-minute",
        "1000",
    ) as running:
        yield running


# -- Autobahn's own pages and options -------------------------------------------


def test_no_open_redirect_and_no_version_page(server: RunningServer) -> None:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(b"GET /ws?redirect=https://evil.example HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    response = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        response += chunk
    sock.close()
    head = response.split(b"\r\n\r\n", 1)[0].lower()
    assert not head.startswith(b"http/1.1 303")
    assert b"location" not in head
    assert b"evil.example" not in response
    assert b"autobahn" not in response.lower()


def test_no_compression_and_no_server_version_in_the_upgrade(server: RunningServer) -> None:
    sock, status, head = raw_upgrade(
        server.port, {"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"}
    )
    sock.close()
    assert status == 101
    assert b"sec-websocket-extensions" not in head.lower()
    assert b"autobahn" not in head.lower()


def test_security_headers_on_the_page(server: RunningServer) -> None:
    with urllib.request.urlopen(server.http_url + "/", timeout=5) as response:
        headers = response.headers
    csp = headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert f"ws://127.0.0.1:{server.port}" in csp
    assert "unsafe-inline" not in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"


# -- origins ------------------------------------------------------------------------


def test_origin_check(server: RunningServer) -> None:
    port = server.port
    assert status_of(port) == 101  # no Origin: not a browser
    assert status_of(port, {"Origin": f"http://127.0.0.1:{port}"}) == 101  # the page's own
    assert status_of(port, {"Origin": "https://chat.friends.example"}) == 101  # --allowed-origin
    assert status_of(port, {"Origin": "https://evil.example"}) == 403
    assert status_of(port, {"Origin": f"http://127.0.0.1:{port + 1}"}) == 403
    assert status_of(port, {"Origin": "http://chat.friends.example"}) == 403  # wrong scheme
    assert status_of(port, {"Origin": "null"}) == 403
    # A Host without a port is port 80 over http, not whatever the Origin says.
    assert status_of(port, {"Host": "127.0.0.1", "Origin": "http://127.0.0.1:6666"}) == 403
    assert status_of(port, {"Host": "127.0.0.1", "Origin": f"http://127.0.0.1:{port}"}) == 403
    # The scheme is the connection's: this server speaks plain HTTP.
    assert status_of(port, {"Origin": f"https://127.0.0.1:{port}"}) == 403
    assert status_of(port, {"Origin": f"ws://127.0.0.1:{port}"}) == 403
    # Without --trust-proxy, X-Forwarded-Proto is the client's word only.
    forged = {"Origin": f"https://127.0.0.1:{port}", "X-Forwarded-Proto": "https"}
    assert status_of(port, forged) == 403
    assert status_of(port, {"Origin": f"HTTP://127.0.0.1:{port}"}) == 101  # case
    assert status_of(port, {"Host": "127.0.0.1:80", "Origin": "http://127.0.0.1"}) == 101


def test_public_host_refuses_every_other_host_with_421() -> None:
    port = free_port()
    with RunningServer(port, "--public-host", f"127.0.0.1:{port}") as running:
        assert running.health()["online"] == 0  # urllib names 127.0.0.1:PORT
        # evil.example's DNS answers 127.0.0.1: Host and Origin agree.
        rebound = {
            "Host": f"rebind.evil.example:{port}",
            "Origin": f"http://rebind.evil.example:{port}",
        }
        sock, status, head = raw_upgrade(port, rebound)
        sock.close()
        assert status == 421
        assert b"rebind" not in head
        assert status_of(port, {"Host": "127.0.0.1", "Origin": "http://127.0.0.1"}) == 421
        for path in ("/", "/healthz", "/index.html"):
            status, response = http_get(port, path, f"rebind.evil.example:{port}")
            assert status == 421, path
            assert b"rebind" not in response
            assert b"text/plain" in response.split(b"\r\n\r\n", 1)[0]
        for path in ("/", "/healthz", "/ws"):
            assert http_get(port, path, None)[0] == 421, path  # HTTP/1.0, no Host
        # Straight to the WebSocket, even without a valid upgrade.
        assert http_get(port, "/ws", f"rebind.evil.example:{port}")[0] == 421
        assert http_get(port, "/", f"127.0.0.1:{port}")[0] == 200
        assert http_get(port, "/healthz", f"127.0.0.1:{port}")[0] == 200
        assert status_of(port, {"Origin": f"http://127.0.0.1:{port}"}) == 101
        assert status_of(port) == 101
        assert "Misdirected Request" in running.log()


def test_forwarded_proto_decides_the_scheme_behind_a_trusted_proxy() -> None:
    with RunningServer(None, "--trust-proxy", "1") as running:
        port = running.port
        https = {"Origin": f"https://127.0.0.1:{port}", "X-Forwarded-Proto": "https"}
        assert status_of(port, https) == 101
        assert status_of(port, {**https, "X-Forwarded-Proto": "http, https"}) == 101
        assert status_of(port, {**https, "X-Forwarded-Proto": "https, http"}) == 403
        assert status_of(port, {**https, "X-Forwarded-Proto": "wss"}) == 403  # ignored
        http = {"Origin": f"http://127.0.0.1:{port}"}
        assert status_of(port, {**http, "X-Forwarded-Proto": "https"}) == 403
        assert status_of(port, http) == 101


# -- how a connection's first request is routed ---------------------------------------


def test_upgrade_after_a_keep_alive_request_on_one_connection(server: RunningServer) -> None:
    page = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode()
    sock, status, head = raw_upgrade(server.port, prefix=page)
    try:
        assert status == 200 and b"application/json" in head
        rest = head.split(b"\r\n\r\n", 1)[1]
        while b"HTTP/1.1 101" not in rest or b"\r\n\r\n" not in rest.split(b"HTTP/1.1 101")[1]:
            rest += sock.recv(4096)
        assert b"Upgrade: WebSocket" in rest or b"upgrade: websocket" in rest.lower()
    finally:
        sock.close()


@pytest.mark.parametrize(
    ("first", "status"),
    [
        (b"GET /nowhere HTTP/1.1\r\n", 404),
        (b"GET /ws/ HTTP/1.1\r\n", 426),  # the site's /ws, but no upgrade headers
        (b"GET /ws HTTP/1.0\r\n", 426),  # Autobahn wants HTTP/1.1, via the site
        (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\n", 404),  # a long line, past the look
    ],
)
def test_other_first_lines_are_answered_by_the_site(
    server: RunningServer, first: bytes, status: int
) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(first + b"Host: 127.0.0.1\r\n\r\n")
        assert sock.recv(4096).split(b" ", 2)[1] == str(status).encode()


# -- handshake deadline ---------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/ws"])
def test_a_dripping_client_is_cut_off(server: RunningServer, path: str) -> None:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode())
    started = time.monotonic()
    cut = False
    for i in range(12):  # one header line every half second: never idle
        time.sleep(0.5)
        try:
            sock.sendall(f"X-Drip-{i}: {i}\r\n".encode())
        except OSError:
            cut = True
            break
        if closed_within(sock, 0.01):
            cut = True
            break
    elapsed = time.monotonic() - started
    sock.close()
    assert cut, "the server kept a dripping connection open"
    assert elapsed < 4.5


def test_a_prompt_client_is_not_cut_off(server: RunningServer) -> None:
    async def scenario() -> None:
        ws = await websockets.connect(server.ws_url)
        await asyncio.sleep(3)  # longer than the handshake deadline
        await ws.send(json.dumps({"type": "stop"}))
        await ws.send(json.dumps({"type": "bogus"}))
        event = json.loads(await asyncio.wait_for(ws.recv(), 5))
        while event["type"] != "error":
            event = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert event["code"] == "bad_message"
        await ws.close()

    run_async(scenario())


# -- per-address caps ---------------------------------------------------------------


def test_concurrent_connections_per_address(server: RunningServer) -> None:
    held = [raw_upgrade(server.port) for _ in range(3)]
    try:
        assert [status for _, status, _ in held] == [101, 101, 101]
        assert status_of(server.port) == 429
    finally:
        for sock, _, _ in held:
            sock.close()
    # Dropped without a close, they are away (counted online for the resume
    # grace) but out of the queue, and their connections no longer count.
    wait_until(lambda: server.health()["waiting"] == 0)
    assert status_of(server.port) == 101


def test_new_connections_per_minute_and_total() -> None:
    with RunningServer(None, "--connects-per-minute", "3", "--max-per-ip", "100") as running:
        assert [status_of(running.port) for _ in range(4)] == [101, 101, 101, 429]
    with RunningServer(None, "--max-connections", "2") as running:
        held = [raw_upgrade(running.port) for _ in range(2)]
        try:
            assert status_of(running.port) == 503
        finally:
            for sock, _, _ in held:
                sock.close()


def test_ipv6_clients_count_per_64() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    with RunningServer(
        None,
        "--max-per-ip",
        "2",
        "--trust-proxy",
        "1",
        endpoint="tcp6:{port}:interface=\\:\\:1",
        host="::1",
    ) as running:

        def status6(forwarded: str) -> tuple[socket.socket, int]:
            sock = socket.create_connection(("::1", running.port), timeout=5)
            sock.sendall(upgrade_request(running.port, headers={"X-Forwarded-For": forwarded}))
            head = b""
            while b"\r\n\r\n" not in head:
                head += sock.recv(4096)
            return sock, int(head.split(b" ", 2)[1])

        held = [status6("2001:db8:5:6::1"), status6("2001:db8:5:6:ffff::2")]
        try:
            assert [s for _, s in held] == [101, 101]
            other, status = status6("2001:db8:5:6:1::3")  # the same /64
            other.close()
            assert status == 429
            other, status = status6("2001:db8:5:7::1")  # another /64
            other.close()
            assert status == 101
        finally:
            for sock, _ in held:
                sock.close()


def test_trust_proxy_counts_the_forwarded_address() -> None:
    with RunningServer(None, "--max-per-ip", "1", "--trust-proxy", "1") as running:
        a = raw_upgrade(running.port, {"X-Forwarded-For": "203.0.113.1"})
        b = raw_upgrade(running.port, {"X-Forwarded-For": "spoofed, 203.0.113.2"})
        try:
            assert (a[1], b[1]) == (101, 101)
            assert status_of(running.port, {"X-Forwarded-For": "203.0.113.1"}) == 429
        finally:
            a[0].close()
            b[0].close()
    # Without --trust-proxy the header is ignored: everyone is 127.0.0.1.
    with RunningServer(None, "--max-per-ip", "1") as running:
        a = raw_upgrade(running.port, {"X-Forwarded-For": "203.0.113.1"})
        try:
            assert a[1] == 101
            assert status_of(running.port, {"X-Forwarded-For": "203.0.113.2"}) == 429
        finally:
            a[0].close()


def test_haproxy_proxy_protocol_endpoint() -> None:
    with RunningServer(
        None, "--max-per-ip", "1", endpoint="haproxy:tcp:{port}:interface=127.0.0.1"
    ) as running:

        def proxied(source: str) -> bytes:
            return f"PROXY TCP4 {source} 127.0.0.1 40000 {running.port}\r\n".encode()

        a = raw_upgrade(running.port, prefix=proxied("198.51.100.1"))
        b = raw_upgrade(running.port, prefix=proxied("198.51.100.2"))
        try:
            assert (a[1], b[1]) == (101, 101)
            assert status_of(running.port, prefix=proxied("198.51.100.1")) == 429
        finally:
            a[0].close()
            b[0].close()
        log = running.log()
        assert "198.51.100.1" in log and "198.51.100.2" in log


# -- slow consumers -------------------------------------------------------------------


def test_a_partner_that_stops_reading_is_dropped() -> None:
    with RunningServer(
        None,
        "--message-rate",
        "100000",
        "--message-burst",
        "100000",
        "--send-buffer-limit",
        "262144",
    ) as running:
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.settimeout(5)
        slow.connect(("127.0.0.1", running.port))
        slow.sendall(upgrade_request(running.port))
        head = b""
        while b"\r\n\r\n" not in head:
            head += slow.recv(1)  # read the head only, then never again

        async def scenario() -> int:
            fast = await websockets.connect(running.ws_url)
            sent = 0
            text = "x" * 2000
            try:
                while True:
                    event = json.loads(await asyncio.wait_for(fast.recv(), 10))
                    if event["type"] == "paired":
                        break
                for _ in range(20000):  # up to 40 MB: far more than any buffer
                    await fast.send(json.dumps({"type": "message", "text": text}))
                    sent += 1
                    if sent % 200 == 0:
                        try:
                            event = json.loads(await asyncio.wait_for(fast.recv(), 0.01))
                        except TimeoutError:
                            continue
                        if event["type"] == "partner_left":
                            return sent
                while True:
                    event = json.loads(await asyncio.wait_for(fast.recv(), 10))
                    if event["type"] == "partner_left":
                        return sent
            finally:
                await fast.close()

        sent = run_async(scenario())
        slow.close()
        assert sent < 20000, "the partner was never dropped"
        assert "does not read" in running.log()
        wait_until(lambda: running.health()["online"] == 0)


# -- TLS ------------------------------------------------------------------------------


def test_tls_refuses_versions_below_1_2(tmp_path: Path) -> None:
    key_path, cert_path = self_signed(tmp_path)
    endpoint = f"ssl:{{port}}:interface=127.0.0.1:privateKey={key_path}:certKey={cert_path}"
    secure = RunningServer(None, endpoint=endpoint)
    secure.ssl_context = ssl.create_default_context(cafile=str(cert_path))
    with secure:
        modern = ssl.create_default_context(cafile=str(cert_path))
        with socket.create_connection(("127.0.0.1", secure.port)) as raw:
            with modern.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                assert tls.version() in ("TLSv1.2", "TLSv1.3")
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.load_verify_locations(cafile=str(cert_path))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            old.minimum_version = ssl.TLSVersion.TLSv1
            old.maximum_version = ssl.TLSVersion.TLSv1_1
        with pytest.raises(ssl.SSLError):
            with socket.create_connection(("127.0.0.1", secure.port)) as raw:
                with old.wrap_socket(raw, server_hostname="127.0.0.1"):
                    pass


# -- graceful shutdown -----------------------------------------------------------------


def test_sigterm_closes_every_client_with_1001() -> None:
    running = RunningServer(None, "--shutdown-grace", "3").start()
    try:

        async def scenario() -> list[int | None]:
            clients = [await websockets.connect(running.ws_url) for _ in range(3)]
            wait_until(lambda: running.health()["online"] == 3)
            assert running.process is not None
            running.process.send_signal(signal.SIGTERM)
            codes = []
            for ws in clients:
                try:
                    while True:
                        await asyncio.wait_for(ws.recv(), 5)
                except ConnectionClosed:
                    codes.append(ws.close_code)
            return codes

        started = time.monotonic()
        assert run_async(scenario()) == [1001, 1001, 1001]
        assert running.process is not None
        running.process.wait(timeout=5)
        assert time.monotonic() - started < 5
    finally:
        running.close()


def test_sigterm_does_not_wait_past_the_grace_for_a_silent_client() -> None:
    running = RunningServer(None, "--shutdown-grace", "1").start()
    try:
        silent, status, _ = raw_upgrade(running.port)  # never answers the close
        assert status == 101
        wait_until(lambda: running.health()["online"] == 1)
        assert running.process is not None
        started = time.monotonic()
        running.process.send_signal(signal.SIGTERM)
        running.process.wait(timeout=10)
        assert time.monotonic() - started < 4
        silent.close()
    finally:
        running.close()


# -- logs ------------------------------------------------------------------------------


def test_logs_name_addresses_but_never_message_text() -> None:
    tokens: list[str] = []

    async def until(ws: Any, kind: str) -> dict[str, Any]:
        """Read up to an event of ``kind``, noting the session tokens on the way."""
        while True:
            event = json.loads(await asyncio.wait_for(ws.recv(), 5))
            if event["type"] == "session":
                tokens.append(event["token"])
            if event["type"] == kind:
                return event  # type: ignore[no-any-return]

    with RunningServer(None, "--repair-cooldown", "0") as running:

        async def scenario() -> None:
            a = await websockets.connect(running.ws_url)
            b = await websockets.connect(running.ws_url)
            for ws in (a, b):
                await until(ws, "paired")
            await a.send(json.dumps({"type": "message", "text": "SECRET-MARKER-8812"}))
            await until(b, "message")
            await a.send(json.dumps({"type": "report", "reason": "REASON-MARKER-4471"}))
            await a.close()
            # A session's token, presented in the URL, is not logged either
            # (nor the new one it is answered with).
            c = await websockets.connect(f"{running.ws_url}?session={tokens[0]}")
            await until(c, "session")
            await c.close()
            await b.close()

        run_async(scenario())
        wait_until(lambda: running.health()["online"] == 0)
        log = running.log()
    assert "client 127.0.0.1 connected" in log
    assert "paired" in log and "reported" in log
    assert "SECRET-MARKER-8812" not in log
    assert "REASON-MARKER-4471" not in log
    assert len(tokens) == 3
    for token in tokens:
        assert token not in log


def test_refused_handshakes_are_logged(server: RunningServer) -> None:
    status_of(server.port, {"Origin": "https://evil.example"})
    wait_until(lambda: "origin not allowed" in server.log())
