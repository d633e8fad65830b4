"""Log observers for ``twistd --logger``.

``twistd --logger roulette.logs.json_stdout roulette`` writes one JSON object
per event to standard output (for journald, Docker or a log shipper) instead
of twistd's text log.  Events name client addresses; no event carries the
text of a message or a report.
"""

from __future__ import annotations

import sys

from twisted.logger import FileLogObserver, ILogObserver, jsonFileLogObserver


def json_stdout() -> ILogObserver:
    """A JSON-lines observer on standard output."""
    observer: FileLogObserver = jsonFileLogObserver(sys.stdout, recordSeparator="")
    return observer
