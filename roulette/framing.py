"""RFC 6455 framing for the common case, as plain functions over bytes.

A chat connection carries small, whole, masked text frames nearly all the
time.  :class:`~roulette.server.RouletteProtocol` reads those with
:func:`next_text_frame` and writes its events with :func:`text_frame`,
leaving everything else (control frames, fragments, binary frames, frames
split across reads, and every malformed frame) to Autobahn, which closes the
connection with the right code.  Nothing here decides that a frame is bad:
it only declines frames it does not handle.
"""

from __future__ import annotations

_FIN_TEXT = 0x81
_MASKED = 0x80


def unmask(payload: bytes, key: bytes) -> bytes:
    """XOR ``payload`` with the repeated four-byte masking ``key``."""
    n = len(payload)
    if not n:
        return payload
    stream = (key * ((n >> 2) + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(stream, "little")).to_bytes(
        n, "little"
    )


def next_text_frame(data: bytes, pos: int, limit: int) -> tuple[bytes, int] | None:
    """The unmasked payload of the frame at ``data[pos:]`` and the offset
    after it, if that frame is a whole, final, masked text frame of at most
    ``limit`` bytes with no reserved bits set and a minimal length; otherwise
    ``None``.  The payload is not checked for UTF-8."""
    size = len(data)
    if size - pos < 6 or data[pos] != _FIN_TEXT:
        return None
    length = data[pos + 1] ^ _MASKED
    if length < 126:
        start = pos + 6
    elif length == 126:  # a 16-bit length follows
        if size - pos < 8:
            return None
        length = (data[pos + 2] << 8) | data[pos + 3]
        if length < 126:
            return None
        start = pos + 8
    else:  # unmasked (>= 128), or a 64-bit length: never in a chat
        return None
    end = start + length
    if end > size or length > limit:
        return None
    return unmask(data[start:end], data[start - 4 : start]), end


def text_frame(payload: bytes) -> bytes:
    """An unmasked, final text frame carrying ``payload`` (server to client)."""
    n = len(payload)
    if n < 126:
        return bytes((_FIN_TEXT, n)) + payload
    if n < 0x10000:
        return bytes((_FIN_TEXT, 126, n >> 8, n & 0xFF)) + payload
    return bytes((_FIN_TEXT, 127)) + n.to_bytes(8, "big") + payload
