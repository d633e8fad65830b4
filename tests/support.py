"""Running ``twistd roulette`` as a real process for end-to-end tests."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

#: The twistd installed beside the Python running the tests (a venv's bin/).
TWISTD = str(Path(sys.executable).with_name("twistd"))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningServer:
    """``twistd -n roulette`` in a subprocess, listening on 127.0.0.1:``port``."""

    def __init__(
        self, port: int | None = None, *args: str, endpoint: str = "tcp:{port}:interface=127.0.0.1"
    ) -> None:
        self.port = port or free_port()
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
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        scheme = "wss" if self.ssl_context else "ws"
        return f"{scheme}://127.0.0.1:{self.port}/ws"

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
        with urllib.request.urlopen(
            self.http_url + "/healthz", timeout=2, context=self.ssl_context
        ) as response:
            return json.loads(response.read())

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
