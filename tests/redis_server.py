"""A real ``redis-server`` for the tests: started on a free port and a unix
socket in a temporary directory, with nothing saved to disk, and stopped
afterwards.  Debian's ``redis-server`` package provides it (``.ci/run``
installs it); without it the tests that need it are skipped, except under
CI (``CI=true``), where they fail."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from support import IN_CI, free_port


def redis_server_path() -> str:
    """The ``redis-server`` to run, or a skip (a failure under CI)."""
    path = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(path).exists():
        if IN_CI:
            pytest.fail("redis-server is not installed (apt-get install -y redis-server)")
        pytest.skip("redis-server is not installed")
    return path


class RedisServer:
    """One ``redis-server`` process of the tests' own."""

    def __init__(self, directory: Path, *options: str) -> None:
        self.directory = directory
        #: More command-line options for ``redis-server``.
        self.options = options
        self.port = free_port()
        self.socket = directory / "redis.sock"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        return f"unix://{self.socket}?db=0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                redis_server_path(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--unixsocket",
                str(self.socket),
                "--unixsocketperm",
                "700",
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--appendonly",
                "no",
                "--loglevel",
                "warning",
                *self.options,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                assert self.process.stderr is not None
                raise RuntimeError(f"redis-server exited: {self.process.stderr.read()!r}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError("redis-server did not start within 10 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def command(self, *args: str) -> str:
        """Run one command with ``redis-cli`` (which comes with
        ``redis-server``), so that a test can look at Redis without the code
        under test; its raw output."""
        result = subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), "--raw", *args],
            capture_output=True,
            timeout=10,
            check=True,
        )
        return result.stdout.decode("utf-8", "replace").strip()
