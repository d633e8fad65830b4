"""Wire protocol v1: decoding client commands and encoding server events.

Plain functions over bytes and strings, with no I/O.  ``docs/protocol.md`` is
the contract; this module is its implementation.  Every frame is one JSON
object with a string field ``type``.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

#: Largest frame or message the server accepts, in bytes (close 1009 above it).
MAX_PAYLOAD = 64 * 1024

#: Largest ``--max-message-length`` allowed: a message of that many
#: characters, each escaped to six bytes, still fits in ``MAX_PAYLOAD``.
MAX_TEXT_LIMIT = 10_000

#: Error codes, in the order in which they are checked.
BAD_JSON = "bad_json"
BAD_MESSAGE = "bad_message"
TOO_LONG = "too_long"
NOT_PAIRED = "not_paired"
#: Refused because the client sent too many frames of that kind too fast.
RATE_LIMITED = "rate_limited"
#: A ``signal`` in a chat that is not a video chat.
NOT_VIDEO = "not_video"
#: A message to a partner whose connection dropped, past what is kept for it.
PARTNER_AWAY = "partner_away"

#: The close code with which a client says it is going away for a moment
#: (its network is down) and will come back with its session's token: the
#: server treats it as a dropped connection, not as leaving.
CLOSE_AWAY = 4000
#: The close code of a connection whose session another connection resumed.
CLOSE_RESUMED_ELSEWHERE = 4001

#: Largest ``signal`` frame accepted, in bytes.
MAX_SIGNAL_BYTES = 16 * 1024

#: Longest ``reason`` a report may give, in characters.
MAX_REASON_LENGTH = 500

#: Largest ``id`` a message may carry: the largest integer a JavaScript
#: number holds exactly.
MAX_ID = 2**53 - 1

#: The most interests a client may give, and the longest one, in characters
#: after normalising (see :func:`normalise_interests`).
MAX_INTERESTS = 10
MAX_INTEREST_LENGTH = 30

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")

#: Characters that show nothing and are not format characters (category Cf):
#: fillers, joiners and variation selectors, and the blank Braille pattern.
_INVISIBLE = frozenset(
    "\u034f\u115f\u1160\u17b4\u17b5\u180b\u180c\u180d\u180f\u2800\u3164\uffa0"
    + "".join(map(chr, range(0xFE00, 0xFE10)))
    + "".join(map(chr, range(0xE0100, 0xE01F0)))
)


def is_blank(text: str) -> bool:
    """Whether ``text`` would show as nothing: empty, or only whitespace,
    format characters (zero-width spaces and joiners, direction marks and
    overrides, ...) and other invisible ones."""
    if not text:
        return True
    if " " < text[0] < "\x7f":  # the usual case: a visible ASCII character first
        return False
    category = unicodedata.category
    for char in text:
        if not (char.isspace() or char in _INVISIBLE or category(char) == "Cf"):
            return False
    return True


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


@dataclass(frozen=True, slots=True)
class Message:
    text: str
    #: The client's name for this message: when given, the server answers
    #: ``sent`` or an ``error`` carrying it.
    id: int | None = None


@dataclass(frozen=True, slots=True)
class Typing:
    active: bool


@dataclass(frozen=True, slots=True)
class Next:
    pass


@dataclass(frozen=True, slots=True)
class Stop:
    pass


@dataclass(frozen=True, slots=True)
class Report:
    reason: str


@dataclass(frozen=True, slots=True)
class Block:
    pass


@dataclass(frozen=True, slots=True)
class Video:
    on: bool


@dataclass(frozen=True, slots=True)
class Signal:
    #: The ``signal`` event for the partner, encoded: the command's ``data``
    #: written again (never the client's bytes as they came).
    event: bytes


@dataclass(frozen=True, slots=True)
class Interests:
    #: Normalised, each once, in the order given.
    tags: tuple[str, ...]


Command = Message | Typing | Next | Stop | Report | Block | Video | Signal | Interests

_NEXT = Next()
_STOP = Stop()
_BLOCK = Block()


class CommandError(Exception):
    """A frame was refused; ``code`` and ``message`` go into an ``error`` event."""

    def __init__(self, code: str, message: str, id: int | None = None) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        #: The ``id`` of the refused ``message`` command, if it gave a valid one.
        self.id = id


def parse_command(payload: bytes | str, max_length: int) -> Command:
    """Decode one text frame into a command, or raise :class:`CommandError`.

    ``max_length`` is the longest message text accepted, in Unicode code
    points.
    """
    try:
        # As text, whichever way the frame was read: json.loads would guess
        # UTF-16 or UTF-32 for bytes, and skip a byte order mark.
        obj = json.loads(payload.decode("utf-8") if isinstance(payload, bytes) else payload)
    except RecursionError:
        raise CommandError(BAD_JSON, "The frame is nested too deeply to parse.") from None
    except ValueError:
        raise CommandError(BAD_JSON, "The frame is not valid JSON.") from None
    if not isinstance(obj, dict):
        raise CommandError(BAD_MESSAGE, "A command must be a JSON object.")
    kind = obj.get("type")
    if kind == "message":
        text = obj.get("text")
        id = obj.get("id")
        if id is not None and (type(id) is not int or not 0 <= id <= MAX_ID):
            raise CommandError(
                BAD_MESSAGE, f'The "id" of a message must be a whole number from 0 to {MAX_ID}.'
            )
        if not isinstance(text, str):
            raise CommandError(BAD_MESSAGE, 'A message needs a string field "text".', id)
        # A visible ASCII character first (the usual case) is not blank.
        if not text or (not " " < text[0] < "\x7f" and is_blank(text)):
            raise CommandError(
                BAD_MESSAGE,
                "A message must not be empty, nor only whitespace and invisible characters.",
                id,
            )
        if _LONE_SURROGATE.search(text):
            raise CommandError(BAD_MESSAGE, "The message text is not valid Unicode.", id)
        if len(text) > max_length:
            raise CommandError(
                TOO_LONG, f"A message may be at most {max_length} characters long.", id
            )
        return Message(text, id)
    if kind == "typing":
        active = obj.get("active")
        if not isinstance(active, bool):
            raise CommandError(BAD_MESSAGE, 'A typing command needs a boolean field "active".')
        return Typing(active)
    if kind == "next":
        return _NEXT
    if kind == "stop":
        return _STOP
    if kind == "report":
        reason = obj.get("reason", "")
        if not isinstance(reason, str):
            raise CommandError(BAD_MESSAGE, 'The "reason" of a report must be a string.')
        if len(reason) > MAX_REASON_LENGTH:
            raise CommandError(
                TOO_LONG, f"A report reason may be at most {MAX_REASON_LENGTH} characters long."
            )
        return Report(reason)
    if kind == "block":
        return _BLOCK
    if kind == "signal":
        data = obj.get("data")
        if not isinstance(data, dict):
            raise CommandError(BAD_MESSAGE, 'A signal needs an object field "data".')
        if len(payload) > MAX_SIGNAL_BYTES:  # characters first: cheap, and never fewer
            size = len(payload.encode("utf-8") if isinstance(payload, str) else payload)
            if size > MAX_SIGNAL_BYTES:
                raise CommandError(
                    TOO_LONG, f"A signal may be at most {MAX_SIGNAL_BYTES} bytes long."
                )
        # Written as ASCII: a lone surrogate escape ("\\ud800") stays escaped.
        data_json = json.dumps(data, separators=(",", ":")).encode("ascii")
        return Signal(_SIGNAL_PREFIX + data_json + b"}")
    if kind == "video":
        on = obj.get("on")
        if not isinstance(on, bool):
            raise CommandError(BAD_MESSAGE, 'A video command needs a boolean field "on".')
        return Video(on)
    if kind == "interests":
        return Interests(normalise_interests(obj.get("tags")))
    if not isinstance(kind, str):
        raise CommandError(BAD_MESSAGE, 'A command needs a string field "type".')
    raise CommandError(BAD_MESSAGE, f"Unknown command type {kind[:40]!r}.")


def normalise_interest(tag: str) -> str:
    """One interest as the server compares it: Unicode NFKC, case-folded,
    trimmed, every run of whitespace inside it one space."""
    # Case folding can undo NFKC (and NFKC can make new case pairs): the
    # composition of the two that Unicode calls NFKC_Casefold, near enough.
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", tag).casefold())
    return " ".join(folded.split())


def normalise_interests(tags: object) -> tuple[str, ...]:
    """A client's list of interests, normalised and each once; or
    :class:`CommandError` (``bad_message``) naming the rule it breaks."""
    if not isinstance(tags, list):
        raise CommandError(BAD_MESSAGE, 'Interests need a list field "tags".')
    if len(tags) > MAX_INTERESTS:
        raise CommandError(BAD_MESSAGE, f"You may give at most {MAX_INTERESTS} interests.")
    seen: dict[str, None] = {}
    for tag in tags:
        if not isinstance(tag, str):
            raise CommandError(BAD_MESSAGE, "Each interest must be a string.")
        if _LONE_SURROGATE.search(tag):
            raise CommandError(BAD_MESSAGE, "An interest is not valid Unicode.")
        normal = normalise_interest(tag)
        if not 1 <= len(normal) <= MAX_INTEREST_LENGTH:
            raise CommandError(
                BAD_MESSAGE,
                f"Each interest must be 1 to {MAX_INTEREST_LENGTH} characters long "
                "(after trimming).",
            )
        if _CONTROL.search(normal):
            raise CommandError(BAD_MESSAGE, "An interest must not contain control characters.")
        seen[normal] = None
    return tuple(seen)


#: One encoder for every event: ``json.dumps`` with options makes a new one each call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _frame(event: dict[str, object]) -> bytes:
    return _ENCODER.encode(event).encode("utf-8")


#: Events without fields never change: encode them once.
WAITING = _frame({"type": "waiting"})
PAIRED = _frame({"type": "paired", "common": []})
PARTNER_LEFT = _frame({"type": "partner_left"})
PARTNER_LEFT_WHILE_AWAY = _frame({"type": "partner_left", "while_away": True})
PARTNER_AWAY_EVENT = _frame({"type": "partner_away"})
PARTNER_BACK = _frame({"type": "partner_back"})
TYPING_ON = _frame({"type": "typing", "active": True})
TYPING_OFF = _frame({"type": "typing", "active": False})

_MESSAGE_PREFIX = b'{"type":"message","text":'
_SIGNAL_PREFIX = b'{"type":"signal","data":'


def encode_paired(common: Sequence[str]) -> bytes:
    """The ``paired`` event of a text chat: the interests the two share."""
    return _frame({"type": "paired", "common": list(common)}) if common else PAIRED


def encode_paired_video(
    offer: bool, ice_servers: list[dict[str, object]], common: Sequence[str] = ()
) -> bytes:
    """The ``paired`` event of a video chat: the interests the two share,
    whether this side makes the WebRTC offer, and the ICE servers to use."""
    return _frame(
        {
            "type": "paired",
            "common": list(common),
            "video": True,
            "offer": offer,
            "ice_servers": ice_servers,
        }
    )


def encode_wait(reason: str | None, until: float | None = None) -> bytes:
    """The ``wait`` event: why the client still waits (``until``: seconds
    since the epoch, rounded up)."""
    if until is None:
        return _frame({"type": "wait", "reason": reason})
    return _frame({"type": "wait", "reason": reason, "until": math.ceil(until)})


def encode_session(token: str, resumed: bool) -> bytes:
    """The ``session`` event: the token to present when reconnecting, and
    whether this connection picked up where a dropped one left off.  (A
    token is base64url: nothing in it needs escaping.)"""
    return b'{"type":"session","token":"%s","resumed":%s}' % (
        token.encode("ascii"),
        b"true" if resumed else b"false",
    )


def encode_interests(tags: Sequence[str]) -> bytes:
    """The ``interests`` event: the client's interests as the server keeps them."""
    return _frame({"type": "interests", "tags": list(tags)})


def encode_message(text: str) -> bytes:
    """The ``message`` event carrying ``text`` verbatim."""
    return _MESSAGE_PREFIX + json.dumps(text, ensure_ascii=False).encode("utf-8") + b"}"


def encode_typing(active: bool) -> bytes:
    return TYPING_ON if active else TYPING_OFF


def encode_online(count: int, limits: bytes = b"") -> bytes:
    """The ``online`` event; the first one a client gets also carries the
    ``limits`` it must respect (see :func:`encode_limits`)."""
    if limits:
        return b'{"type":"online","count":%d,"limits":%s}' % (count, limits)
    return b'{"type":"online","count":%d}' % count


def encode_limits(limits: dict[str, float]) -> bytes:
    """The ``limits`` field of the first ``online`` event, encoded once.
    Whole numbers are written as integers."""
    return json.dumps(
        {name: int(value) if value == int(value) else value for name, value in limits.items()},
        separators=(",", ":"),
    ).encode("ascii")


def encode_sent(id: int) -> bytes:
    """The ``sent`` event: the message the client named ``id`` was relayed."""
    return b'{"type":"sent","id":%d}' % id


def encode_banned(until: float) -> bytes:
    """The ``banned`` event: refused until ``until`` (seconds since the epoch)."""
    return b'{"type":"banned","until":%d}' % math.ceil(until)


#: ``notice`` codes: matching stopped for a while (this server lost touch with
#: the pool it shares with other servers), and started again.
MATCHING_PAUSED = "matching_paused"
MATCHING_RESUMED = "matching_resumed"


def encode_notice(code: str, message: str) -> bytes:
    """The ``notice`` event: something about the service, for the person."""
    return _frame({"type": "notice", "code": code, "message": message})


def encode_error(code: str, message: str, id: int | None = None) -> bytes:
    """The ``error`` event; ``id`` names the refused message, if it gave one."""
    if id is None:
        return _frame({"type": "error", "code": code, "message": message})
    return _frame({"type": "error", "code": code, "message": message, "id": id})
