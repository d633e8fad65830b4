"""What one client may send: the single source of every chat limit's default.

``twistd roulette``'s options take their defaults from :data:`DEFAULT`, the
server enforces a :class:`Limits`, and the page learns the ones it must
respect from the first ``online`` event (:meth:`Limits.for_clients`), so a
limit is changed in one place and the page never promises what the server
refuses.  See ``docs/security.md`` for why each is what it is.
"""

from __future__ import annotations

from dataclasses import dataclass

from roulette import sessions, wire


@dataclass(frozen=True)
class Limits:
    """Per-connection budgets and per-address caps."""

    #: Longest chat message accepted, in characters (Unicode code points).
    max_message_length: int = 2000
    #: Chat messages: tokens a second and the most saved up.
    message_rate: float = 5.0
    message_burst: float = 10.0
    #: Typing notices (the page sends at most one every two seconds).
    typing_rate: float = 1.0
    typing_burst: float = 5.0
    #: next, stop, report and video: each of them churns the queue.
    queue_rate: float = 1.0
    queue_burst: float = 5.0
    #: WebRTC signalling (video chats): gathering ICE candidates sends a burst.
    signal_rate: float = 20.0
    signal_burst: float = 60.0
    #: This many refused frames within the window close the connection (1008).
    flood_refusals: int = 50
    flood_window: float = 10.0
    #: Bytes a connection may have waiting to be sent before it is dropped;
    #: everything written counts (events, pongs, close frames).
    send_buffer_limit: int = 256 * 1024
    #: Pings and pongs from a client: a second, and at once.  A browser sends
    #: none (it answers the server's pings only); past the burst, 1008.
    control_rate: float = 1.0
    control_burst: float = 10.0
    #: Frames one fragmented message may come in; past it, 1008.
    max_fragments: int = 64
    #: WebSocket connections one address (IPv6: /64) may hold at once, and
    #: open in a minute; and connections in all (0: no cap).
    max_per_address: int = 8
    connects_per_minute: int = 60
    max_connections: int = 0
    #: Not a limit but a promise the page must know: seconds a client with
    #: interests waits for a stranger who shares one (0: interests are off).
    interest_wait: float = 10.0
    #: Seconds a client whose connection dropped has to come back with its
    #: session's token and pick its chat up (0: a drop ends the chat).
    resume_grace: float = 15.0

    def for_clients(self) -> dict[str, float]:
        """What a client must respect to have nothing refused, as the first
        ``online`` event carries it (``docs/protocol.md``)."""
        return {
            "message_length": self.max_message_length,
            "message_rate": self.message_rate,
            "message_burst": self.message_burst,
            "typing_rate": self.typing_rate,
            "typing_burst": self.typing_burst,
            "command_rate": self.queue_rate,
            "command_burst": self.queue_burst,
            "signal_length": wire.MAX_SIGNAL_BYTES,
            "signal_rate": self.signal_rate,
            "signal_burst": self.signal_burst,
            "interests": wire.MAX_INTERESTS,
            "interest_length": wire.MAX_INTEREST_LENGTH,
            "interest_wait": self.interest_wait,
            "resume_grace": self.resume_grace,
            "held_messages": sessions.MAX_HELD,
            "held_bytes": sessions.MAX_HELD_BYTES,
        }


#: The defaults, for options and tests to read.
DEFAULT = Limits()
