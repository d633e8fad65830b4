"""Running ``twistd roulette`` as a real process for end-to-end tests."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import datetime
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

T = TypeVar("T")

#: Whether the tests run under CI (``CI=true``), where a test that needs
#: something missing (redis-server, Chromium, a network namespace) fails
#: instead of skipping.
IN_CI = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")

#: The twistd installed beside the Python running the tests (a venv's bin/).
TWISTD = str(Path(sys.executable).with_name("twistd"))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class RunningServer:
    """``twistd -n roulette`` in a subprocess, listening on 127.0.0.1:``port``."""

    def __init__(
        self,
        port: int | None = None,
        *args: str,
        endpoint: str = "tcp:{port}:interface=127.0.0.1",
        host: str = "127.0.0.1",
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.args = args
        self.endpoint = endpoint.format(port=self.port)
        self.process: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="roulette-test-")
        self.log_path = Path(self._dir.name) / "twistd.log"

    #: For an ``ssl:`` endpoint: the client context that trusts its certificate.
    ssl_context: ssl.SSLContext | None = None

    @property
    def http_url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://{self._authority}"

    @property
    def _authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def ws_url(self) -> str:
        scheme = "wss" if self.ssl_context else "ws"
        return f"{scheme}://{self._authority}/ws"

    def start(self, timeout: float = 20.0) -> RunningServer:
        command = [
            TWISTD,
            "-n",
            "--pidfile=",
            "--logfile",
            str(self.log_path),
            "roulette",
            "--port",
            self.endpoint,
            *self.args,
        ]
        # A fresh working directory: twistd must find the plugin from the
        # installed package, not from the checkout.
        self.process = subprocess.Popen(command, cwd=self._dir.name)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"twistd exited with {self.process.returncode}:\n{self.log()}")
            try:
                self.health()
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"twistd did not answer within {timeout} s:\n{self.log()}")

    def health(self) -> dict[str, int]:
        if self.endpoint.startswith("haproxy:"):
            return self._health_through_proxy_protocol()
        with urllib.request.urlopen(
            self.http_url + "/healthz", timeout=2, context=self.ssl_context
        ) as response:
            return json.loads(response.read())

    def _health_through_proxy_protocol(self) -> dict[str, int]:
        """GET /healthz the way a load balancer speaking PROXY v1 would."""
        with socket.create_connection((self.host, self.port), timeout=2) as sock:
            sock.sendall(
                f"PROXY TCP4 127.0.0.1 127.0.0.1 1 {self.port}\r\n".encode()
                + b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n"
            )
            response = b""
            while chunk := sock.recv(65536):
                response += chunk
        if not response.startswith(b"HTTP/1.0 200") and not response.startswith(b"HTTP/1.1 200"):
            raise OSError(f"unexpected answer: {response[:80]!r}")
        return json.loads(response.split(b"\r\n\r\n", 1)[1])

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> RunningServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.05) -> None:
    """Poll ``predicate`` until it is true, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A key and a certificate for 127.0.0.1, made on the spot."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / "key.pem", directory / "cert.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on a fresh event loop in its own thread,
    so that it works even where another library (Playwright's sync API) has
    claimed this thread's loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def upgrade_request(
    port: int,
    path: str = "/ws",
    headers: dict[str, str] | None = None,
    version: str = "HTTP/1.1",
) -> bytes:
    """An upgrade to 127.0.0.1:``port``; a ``Host`` in ``headers`` replaces that one."""
    key = base64.b64encode(os.urandom(16)).decode()
    headers = dict(headers or {})
    host = headers.pop("Host", f"127.0.0.1:{port}")
    lines = [
        f"GET {path} {version}",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes (or resets) the connection within
    ``seconds``, reading and discarding what it sends meanwhile."""
    sock.settimeout(0.2)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:
            return True
    return False


def read_head(sock: socket.socket) -> tuple[int, bytes]:
    """The status and head of the next response (0 if the server closed)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    status = int(data.split(b" ", 2)[1]) if data else 0
    return status, data
