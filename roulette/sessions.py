"""Sessions: a visitor's place in the service, outliving its connections.

A :class:`Session` is the :class:`~roulette.core.Peer` the matchmaker knows.
It forwards every event to the connection it is attached to; when that
connection drops without a close, the session is *away*: its chat goes on
(the matchmaker tells the partner), the chat messages relayed to it are held
(at most :data:`MAX_HELD` of them and :data:`MAX_HELD_BYTES`), and a
connection that presents its token within the grace picks the chat up where
it was.  Sessions also keep the matchmaker's cooldowns across a reload: the
session, not the connection, is the peer a cooldown names.

:class:`Sessions` issues and checks the tokens.  A token is random (192 bits)
and used once: every connection that presents a valid one is given a new one,
and only a keyed hash of the current one is kept.  A token is valid only from
the address (its hash) it was issued to, and for an hour after its session
was last used.

No I/O here: time comes from a ``clock`` callable, randomness from the
``token_bytes`` callable passed in; the shell (:mod:`roulette.lobby`) keeps
the grace's timers.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from roulette.abuse import AddressKeys
from roulette.core import Peer

#: Chat messages held for a session while it is away, and their bytes.
MAX_HELD = 50
MAX_HELD_BYTES = 64 * 1024

#: Seconds a token stays valid after its session was last used.
LIFETIME = 3600.0

#: Sessions kept without a connection (for their cooldowns and a reload):
#: in all, and per address; past either, the least recently used go first.
MAX_DETACHED = 100_000
MAX_DETACHED_PER_ADDRESS = 16

#: Random bytes in a token: 192 bits, 32 characters of base64url.
TOKEN_BYTES = 24
TOKEN_LENGTH = 32

_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")

#: How a chat message's event begins (see :func:`roulette.wire.encode_message`).
_MESSAGE_PREFIX = b'{"type":"message",'


def well_formed(token: str) -> bool:
    """Whether ``token`` could be one of ours (cheap; checked before hashing)."""
    return len(token) == TOKEN_LENGTH and _TOKEN_CHARS.issuperset(token)


class Connection(Peer, Protocol):
    """What a session forwards to: a client's connection."""

    @property
    def keys(self) -> AddressKeys:
        """The hashed keys of the connection's address."""


def _dropped(event: bytes) -> None:
    """Where a session with no connection, and not away, sends events."""


class Session:
    """A visitor, as the matchmaker sees it (a :class:`~roulette.core.Peer`).

    Each call is passed on to the connection the session is attached to, or
    to the last one it had (which keeps the chat's state and sends nothing
    once closed); a relayed event goes straight to the connection's own
    ``send_event`` (the relay's hot path has no extra call).  While away, chat
    messages relayed to it are held, and :attr:`ended_while_away` records
    that its partner left meanwhile.
    """

    #: Where relayed events go: the connection's ``send_event``, or the hold.
    send_event: Callable[[bytes], None]

    def __init__(self, address: str, digest: bytes, sid: str = "") -> None:
        #: The hash of the address the token was issued to.
        self.address = address
        #: A name for it that never changes (the hash of its first token:
        #: no token can be made from it): what a pool of processes keys its
        #: cooldowns by.
        self.sid = sid
        #: The keyed hash of its current token.
        self.digest = digest
        self.connection: Connection | None = None
        #: The connection it had last: where the chat's state is kept.
        self.last: Connection | None = None
        self.away = False
        #: Its chat ended while it was away (its partner left, or the grace
        #: ran out): what it is told when it comes back.
        self.ended_while_away = False
        self.held: list[bytes] = []
        self.held_bytes = 0
        #: When it was last used (a connection attached or gone), on the clock.
        self.used = 0.0
        #: What its last connection knew of its chat (see Client.carry), when
        #: that connection was another process's.
        self.carried: dict[str, bool] = {}
        self.send_event = _dropped

    def __repr__(self) -> str:
        return f"<Session {self.digest[:4].hex()}>"

    @property
    def keys(self) -> AddressKeys | None:
        """The hashed keys of its address, as its last connection knew them
        (for a report of it while it is away)."""
        last = self.last
        return None if last is None else last.keys

    def attach(self, connection: Connection) -> None:
        """From now on, events go to ``connection``."""
        self.connection = self.last = connection
        self.away = False
        self.send_event = connection.send_event

    def detach(self, away: bool) -> None:
        """Its connection is gone; ``away``: it may come back, and chat
        messages relayed meanwhile are held for it."""
        self.connection = None
        self.away = away
        if away:
            self.ended_while_away = False
        self.send_event = self._hold if away else _dropped

    def take_held(self) -> list[bytes]:
        """The messages held while it was away, once."""
        held, self.held = self.held, []
        self.held_bytes = 0
        return held

    def _hold(self, event: bytes) -> None:
        # Only chat messages are worth keeping: a typing notice or a video
        # signal would be stale when it came back.  The sender's connection
        # keeps within the caps (it is told its partner is away); these
        # checks keep them even against a partner in another process.
        if (
            event.startswith(_MESSAGE_PREFIX)
            and len(self.held) < MAX_HELD
            and self.held_bytes + len(event) <= MAX_HELD_BYTES
        ):
            self.held.append(event)
            self.held_bytes += len(event)

    # -- Peer: passed on -------------------------------------------------------

    def _target(self) -> Connection | None:
        return self.connection or self.last

    def send_waiting(self) -> None:
        target = self._target()
        if target is not None:
            target.send_waiting()

    def send_paired(self, offer: bool = False, common: Sequence[str] = ()) -> None:
        target = self._target()
        if target is not None:
            target.send_paired(offer, common)

    def send_partner_left(self) -> None:
        if self.away:
            # What the partner said before leaving is still delivered.
            self.ended_while_away = True
        target = self._target()
        if target is not None:
            target.send_partner_left()

    def send_partner_away(self) -> None:
        target = self._target()
        if target is not None:
            target.send_partner_away()

    def send_partner_back(self) -> None:
        target = self._target()
        if target is not None:
            target.send_partner_back()

    def send_wait(self, reason: str | None, until: float | None = None) -> None:
        connection = self.connection
        if connection is not None:
            connection.send_wait(reason, until)


class Sessions:
    """The sessions of a process, by the keyed hash of their token.

    :param clock: returns the current time in seconds.
    :param secret: the key of the token hash (random by default).
    :param token_bytes: returns that many random bytes (``secrets.token_bytes``).
    :param lifetime: seconds a token stays valid after its session's last use.
    """

    def __init__(
        self,
        clock: Callable[[], float],
        secret: bytes | None = None,
        token_bytes: Callable[[int], bytes] = secrets.token_bytes,
        lifetime: float = LIFETIME,
        max_detached: int = MAX_DETACHED,
        max_detached_per_address: int = MAX_DETACHED_PER_ADDRESS,
    ) -> None:
        self._clock = clock
        self._secret = secret if secret is not None else os.urandom(32)
        self._token_bytes = token_bytes
        self.lifetime = lifetime
        self._max_detached = max_detached
        self._max_per_address = max_detached_per_address
        self._by_digest: dict[bytes, Session] = {}
        # Sessions without a connection, least recently used first: all of
        # them, and those of each address.
        self._detached: dict[Session, None] = {}
        self._detached_at: dict[str, dict[Session, None]] = {}

    def __len__(self) -> int:
        return len(self._by_digest)

    def __iter__(self) -> Iterator[Session]:
        return iter(self._by_digest.values())

    def use_secret(self, secret: bytes) -> None:
        """Hash tokens with ``secret`` from now on: a pool's processes share
        one, so that each may take up the sessions the others keep."""
        self._secret = secret

    def digest(self, token: str) -> bytes:
        """The keyed hash of ``token``: what is kept of it."""
        return hashlib.blake2s(token.encode("ascii"), key=self._secret, digest_size=16).digest()

    def find(self, token: str) -> Session | None:
        """The session whose current token is ``token``, as kept here."""
        return self._by_digest.get(self.digest(token)) if well_formed(token) else None

    def drop(self, session: Session) -> None:
        """Forget ``session`` (another process took it up)."""
        self._forget(session)

    def adopt(self, token: str, address: str, sid: str, ended: bool, away: bool = False) -> Session:
        """Keep here a session another process had: ``token`` is its current
        token (:meth:`claim` takes it up), ``sid`` its id, ``ended``: its chat
        ended while it was away.  ``away``: it is away (its chat goes on,
        handed over); otherwise it has no connection."""
        session = Session(address, self.digest(token), sid)
        session.ended_while_away = ended
        session.used = self._clock()
        self._by_digest[session.digest] = session
        if away:
            session.detach(away=True)
        else:
            self.release(session)
        return session

    def find_digest(self, digest: bytes) -> Session | None:
        """The session whose current token hashes to ``digest``."""
        return self._by_digest.get(digest)

    def _token(self) -> str:
        return base64.urlsafe_b64encode(self._token_bytes(TOKEN_BYTES)).decode("ascii")

    def start(self, address: str) -> tuple[Session, str]:
        """A new session for a connection from ``address`` (hashed), and its token."""
        token = self._token()
        digest = self.digest(token)
        # Its first token's hash names it for good: unique as the token is,
        # and no way back to any token (that one is spent at its next use).
        session = Session(address, digest, digest.hex())
        session.used = self._clock()
        self._by_digest[session.digest] = session
        return session, token

    def claim(self, token: str, address: str) -> tuple[Session, str] | None:
        """The session whose current token is ``token``, if it was issued to
        ``address`` and has not expired, with its new token (the one given is
        spent); ``None`` otherwise, and nothing changes."""
        if not well_formed(token):
            return None
        session = self._by_digest.get(self.digest(token))
        if session is None or session.address != address:
            return None
        now = self._clock()
        if session.connection is None and not session.away and now - session.used > self.lifetime:
            self._forget(session)
            return None
        self._undetach(session)
        del self._by_digest[session.digest]
        token = self._token()
        session.digest = self.digest(token)
        session.used = now
        self._by_digest[session.digest] = session
        return session, token

    def release(self, session: Session) -> None:
        """The session has no connection any more, and is not away: it is
        kept for a reload until it expires."""
        if session.digest not in self._by_digest:
            return
        session.used = self._clock()
        self._undetach(session)
        self._detached[session] = None
        mine = self._detached_at.setdefault(session.address, {})
        mine[session] = None
        if len(mine) > self._max_per_address:
            self._forget(next(iter(mine)))
        if len(self._detached) > self._max_detached:
            self._forget(next(iter(self._detached)))

    def prune(self) -> None:
        """Forget the sessions whose tokens have expired."""
        cutoff = self._clock() - self.lifetime
        detached = self._detached
        while detached:
            oldest = next(iter(detached))
            if oldest.used >= cutoff:
                break
            self._forget(oldest)

    def _undetach(self, session: Session) -> None:
        if self._detached.pop(session, 0) is None:
            mine = self._detached_at[session.address]
            del mine[session]
            if not mine:
                del self._detached_at[session.address]

    def _forget(self, session: Session) -> None:
        self._undetach(session)
        self._by_digest.pop(session.digest, None)
