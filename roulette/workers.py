"""Several worker processes on one port (``--workers N``).

The process ``twistd`` starts becomes a supervisor: it serves nothing
itself, and runs N workers, each a ``twist roulette`` with the same options
that listens on the same port with ``SO_REUSEPORT`` (the kernel spreads new
connections over them) and joins the same Redis pool, so a visitor of one
worker meets visitors of every other.

- A worker's output goes into the supervisor's log, each line tagged.
- A worker that exits while the supervisor runs is started again (after a
  second, then longer if it keeps failing).
- SIGTERM to the supervisor (``stopService``) sends SIGTERM to every worker,
  each of which closes its clients with 1001 and leaves the pool, and waits
  for them; a worker still running after its grace is killed.
- A worker whose supervisor dies (its stdin, a pipe from the supervisor,
  reaches its end) stops too.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.application.service import Service
from twisted.internet import abstract, defer, fdesc, protocol
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger()

#: Seconds before a worker that exited is started again; doubled for each
#: exit within a minute of its start, up to the last.
RESTART_DELAYS = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)


class _Worker(protocol.ProcessProtocol):
    """One worker process: its output into the log, its end to the supervisor."""

    def __init__(self, supervisor: Workers, number: int) -> None:
        self.supervisor = supervisor
        self.number = number
        self.ended: Deferred[None] = Deferred()
        self._partial = b""

    def outReceived(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            log.info(
                "worker {number}: {line}",
                number=self.number,
                line=line.decode("utf-8", "replace").rstrip(),
            )

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        if self._partial:
            self.outReceived(b"\n")
        self.ended.callback(None)
        self.supervisor._ended(self, reason)


class Workers(Service):
    """Runs ``count`` workers: ``python -m twisted roulette ARGS``."""

    def __init__(self, reactor: Any, count: int, arguments: list[str], grace: float = 10.0) -> None:
        self._reactor = reactor
        self.count = count
        self._arguments = arguments
        self._grace = grace
        self.workers: dict[int, tuple[_Worker, Any]] = {}
        self._restarts: dict[int, IDelayedCall] = {}
        self._started_at: dict[int, float] = {}
        self._failures: dict[int, int] = {}

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        for number in range(1, self.count + 1):
            self._spawn(number)

    def _spawn(self, number: int) -> None:
        self._restarts.pop(number, None)
        worker = _Worker(self, number)
        command = [sys.executable, "-m", "twisted", "roulette", *self._arguments]
        process = self._reactor.spawnProcess(
            worker, sys.executable, command, env=None, childFDs={0: "w", 1: "r", 2: "r"}
        )
        self.workers[number] = (worker, process)
        self._started_at[number] = self._reactor.seconds()
        log.info("worker {number} started (pid {pid})", number=number, pid=process.pid)

    def _ended(self, worker: _Worker, reason: Failure) -> None:
        number = worker.number
        if self.workers.get(number, (None,))[0] is not worker:
            return
        del self.workers[number]
        if not self.running:
            return
        code = getattr(reason.value, "exitCode", None)
        lived = self._reactor.seconds() - self._started_at.get(number, 0.0)
        failures = self._failures[number] = 0 if lived > 60 else self._failures.get(number, 0) + 1
        delay = RESTART_DELAYS[min(failures, len(RESTART_DELAYS) - 1)]
        log.warn(
            "worker {number} exited (code {code}) after {lived:.0f} s: starting it again "
            "in {delay:.0f} s",
            number=number,
            code=code,
            lived=lived,
            delay=delay,
        )
        self._restarts[number] = self._reactor.callLater(delay, self._spawn, number)

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        ended = []
        for worker, process in list(self.workers.values()):
            ended.append(worker.ended)
            try:
                process.signalProcess("TERM")
            except Exception:  # already gone
                continue
            timer = self._reactor.callLater(self._grace, _kill, process)
            worker.ended.addBoth(_cancel, timer)
        return defer.DeferredList(ended).addCallback(lambda _: None)


def _cancel(result: object, timer: IDelayedCall) -> None:
    if timer.active():
        timer.cancel()


def _kill(process: Any) -> None:
    try:
        process.signalProcess("KILL")
    except Exception:
        pass


class _ParentPipe(abstract.FileDescriptor):
    """The worker's stdin, a pipe from the supervisor: its end is the
    supervisor's."""

    def __init__(self, reactor: Any) -> None:
        super().__init__(reactor)
        self._stopping = reactor
        fdesc.setNonBlocking(0)

    def fileno(self) -> int:
        return 0

    def doRead(self) -> Any:
        return fdesc.readFromFD(0, lambda data: None)  # the supervisor writes nothing

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)  # type: ignore[no-untyped-call]  # unannotated in Twisted
        log.info("the supervisor is gone: stopping")
        # As SIGTERM would: the services stop, clients are told 1001.
        if self._stopping.running:
            self._stopping.stop()


class StopWithParent(Service):
    """A worker's: stop the process when the supervisor's pipe closes."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._pipe: _ParentPipe | None = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        self._pipe = _ParentPipe(self._reactor)
        self._pipe.startReading()  # type: ignore[no-untyped-call]  # unannotated in Twisted

    def stopService(self) -> None:
        super().stopService()  # type: ignore[no-untyped-call]  # unannotated in Twisted
        if self._pipe is not None:
            self._pipe.stopReading()  # type: ignore[no-untyped-call]  # unannotated in Twisted
            self._pipe = None
