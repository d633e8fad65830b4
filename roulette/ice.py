"""The ICE servers a video chat's two browsers are told to use.

Plain Python with no I/O: the clock is passed in.  STUN servers need no
credentials.  TURN servers relay media for browsers that cannot reach each
other directly (behind symmetric NATs); with a shared secret they get
time-limited credentials in the scheme coturn's ``use-auth-secret`` (the
"TURN REST API") checks: the username is the time the credential expires
(seconds since the Unix epoch) and the credential is the base64 of the
HMAC-SHA1 of the username keyed with the secret.  Nothing is stored: coturn
recomputes the HMAC.  See ``docs/video.md``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable
from urllib.parse import urlsplit

#: Seconds a TURN credential stays valid by default.
TURN_TTL = 6 * 60 * 60


def check_ice_url(url: str) -> str:
    """``url`` if it is a ``stun:``, ``stuns:``, ``turn:`` or ``turns:`` URL
    with a host; ``ValueError`` otherwise."""
    scheme = urlsplit(url).scheme
    if scheme not in ("stun", "stuns", "turn", "turns"):
        raise ValueError(f"{url!r}: an ICE server URL starts with stun:, stuns:, turn: or turns:")
    rest = url[len(scheme) + 1 :]
    if not rest or rest.startswith(("/", ":", "?")) or any(c.isspace() for c in url):
        raise ValueError(f"{url!r}: an ICE server URL needs a host, as in stun:host:3478")
    return url


def turn_credential(secret: bytes, username: str) -> str:
    """The credential coturn expects for ``username`` (``use-auth-secret``)."""
    return base64.b64encode(hmac.new(secret, username.encode(), hashlib.sha1).digest()).decode()


class IceServers:
    """What ``iceServers`` the ``paired`` event of a video chat carries.

    :param urls: ``stun:``/``turn:`` URLs (``--ice-server``), in order.
    :param turn_secret: coturn's ``static-auth-secret``; without it, TURN
        URLs are handed out without credentials.
    :param clock: returns the current time in seconds since the epoch.
    :param ttl: seconds a TURN credential is valid.
    """

    def __init__(
        self,
        urls: list[str],
        turn_secret: bytes | None,
        clock: Callable[[], float],
        ttl: float = TURN_TTL,
    ) -> None:
        self._stun = [url for url in urls if url.startswith(("stun:", "stuns:"))]
        self._turn = [url for url in urls if url.startswith(("turn:", "turns:"))]
        self._secret = turn_secret
        self._clock = clock
        self._ttl = ttl

    def __call__(self) -> list[dict[str, object]]:
        """The list for one pairing: TURN credentials are made afresh."""
        servers: list[dict[str, object]] = []
        if self._stun:
            servers.append({"urls": list(self._stun)})
        if self._turn:
            turn: dict[str, object] = {"urls": list(self._turn)}
            if self._secret is not None:
                username = str(int(self._clock() + self._ttl))
                turn["username"] = username
                turn["credential"] = turn_credential(self._secret, username)
            servers.append(turn)
        return servers
