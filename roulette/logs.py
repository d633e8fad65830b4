"""Log observers for ``twistd --logger``.

``twistd --logger roulette.logs.json_stdout roulette`` writes one JSON object
per event to standard output (for journald, Docker or a log shipper) instead
of twistd's text log.  Events name client addresses; no event carries the
text of a message or a report.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import FileLogObserver, ILogObserver, Logger, LogLevel, jsonFileLogObserver

_log = Logger(namespace="roulette")


def json_stdout() -> ILogObserver:
    """A JSON-lines observer on standard output."""
    observer: FileLogObserver = jsonFileLogObserver(sys.stdout, recordSeparator="")
    return observer


#: Longest excerpt of a client-supplied string that a log line carries.
EXCERPT_LENGTH = 80


def excerpt(value: object, limit: int = EXCERPT_LENGTH) -> str:
    """``value`` made safe for a log line: control and non-ASCII characters
    escaped (as in a Python literal, without the quotes), and cut to about
    ``limit`` characters with a note of how much was left out.

    Everything a client sends that reaches the log (an ``Origin``, a request
    line, a reason) goes through here, so a log line can neither carry
    terminal escapes nor grow with what the client sent.
    """
    if isinstance(value, bytes):
        text = value.decode("latin-1")
    else:
        text = str(value)
    cut = len(text) - limit
    if cut > 0:
        text = text[:limit]
    escaped = text.encode("ascii", "backslashreplace").decode("ascii")
    escaped = "".join(c if " " <= c < "\x7f" else f"\\x{ord(c):02x}" for c in escaped)
    if len(escaped) > limit:
        escaped = escaped[:limit]
    return f"{escaped}…(+{cut})" if cut > 0 else escaped


class Tally:
    """Logs a kind of event at most once per ``interval`` seconds.

    The first event of a kind is logged at once; the ones that follow within
    the interval are only counted, and one line at the end of the interval
    says how many there were.  So an attacker who repeats something a
    thousand times a second costs the log one line a minute.
    """

    def __init__(self, reactor: IReactorTime, interval: float = 60.0) -> None:
        self._reactor = reactor
        self.interval = interval
        #: kind -> [level, events counted since the last line, time of the last line]
        self._kinds: dict[str, list[Any]] = {}
        self._flush: IDelayedCall | None = None

    def note(
        self, kind: str, log_format: str, level: LogLevel = LogLevel.warn, **fields: object
    ) -> None:
        """Count one event of ``kind``; log it (at ``level``) if none was
        logged lately.

        ``log_format`` is a :mod:`twisted.logger` format; the fields of the
        first event of an interval are the ones logged.
        """
        now = self._reactor.seconds()
        entry = self._kinds.get(kind)
        if entry is None or now - entry[2] >= self.interval:
            if entry is not None and entry[1]:
                self._log_count(kind, entry)
            _log.emit(level, log_format, **fields)
            self._kinds[kind] = [level, 0, now]
            return
        entry[1] += 1
        if self._flush is None:
            self._flush = self._reactor.callLater(
                max(0.0, entry[2] + self.interval - now), self._flush_due
            )

    def count(self, kind: str) -> int:
        """Events of ``kind`` counted and not yet logged."""
        entry = self._kinds.get(kind)
        return 0 if entry is None else entry[1]

    def _log_count(self, kind: str, entry: list[Any]) -> None:
        _log.emit(
            entry[0],
            "{count} more of {kind!r} in the last {interval:.0f} s",
            count=entry[1],
            kind=kind,
            interval=self.interval,
        )
        entry[1] = 0

    def _flush_due(self) -> None:
        self._flush = None
        now = self._reactor.seconds()
        soonest: float | None = None
        for kind, entry in list(self._kinds.items()):
            if now - entry[2] < self.interval:
                if entry[1]:
                    due = entry[2] + self.interval - now
                    soonest = due if soonest is None else min(soonest, due)
                continue
            if entry[1]:
                self._log_count(kind, entry)
                entry[2] = now
            else:
                del self._kinds[kind]
        if soonest is not None:
            self._flush = self._reactor.callLater(soonest, self._flush_due)

    def stop(self) -> None:
        """Log what is counted and cancel the pending timer."""
        if self._flush is not None and self._flush.active():
            self._flush.cancel()
        self._flush = None
        for kind, entry in self._kinds.items():
            if entry[1]:
                self._log_count(kind, entry)
