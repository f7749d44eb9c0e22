"""The host link's wire protocol: frames, commands, replies and the CRC, defined once.

The board's UART host link (:mod:`bitspike.boards.link`, in RTL) and the host
(:mod:`bitspike.boards.host`, on pyserial) both build on this module: the RTL derives its CRC
network from :func:`crc16_byte`, its reply layouts from :data:`INFO_FIELDS` and the
``*_reply_length`` functions, and its command and error codes from the enums here. It imports
neither torch nor Amaranth. docs/boards.md, "The host link" > "The protocol", is the byte-by-byte
description; a test decodes its worked example with :func:`decode_reply`.

A frame, either way::

    sync | code | length (2 bytes, LE) | payload (length bytes) | crc (2 bytes, high first)

- ``sync`` is :data:`REQUEST_SYNC` (0xA5) host to board, :data:`REPLY_SYNC` (0x5A) board to
  host.
- ``code`` is a :class:`Command` in a request; in a reply the command it answers, or
  :data:`ERROR_CODE` (0xEE) with a two-byte payload: the :class:`LinkError` and the request's
  command byte (0 when none was received).
- ``crc`` is CRC-16/CCITT-FALSE (polynomial 0x1021, initial value 0xFFFF, no reflection, no
  final XOR) of ``code``, ``length`` and ``payload``, sent high byte first, so the CRC of those
  bytes followed by the two CRC bytes is 0: the board checks a frame with one register.

Every multi-byte field of a payload is little-endian; logits are signed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from ..sw.errors import BitspikeError

__all__ = ["CRC_INIT", "CRC_POLY", "Command", "ERROR_CODE", "INFO_FIELDS", "INFO_LENGTH",
           "INFO_MAGIC", "InfoReply", "InferReply", "LOGIT_BYTES", "LinkError",
           "PROTOCOL_VERSION", "ProtocolError", "REPLY_SYNC", "REQUEST_SYNC", "ReplyFrame",
           "crc16", "crc16_byte", "decode_info", "decode_infer", "decode_reply",
           "encode_request", "encode_reply", "error_payload", "infer_reply_length",
           "info_payload", "parse_frames"]

REQUEST_SYNC = 0xA5
REPLY_SYNC = 0x5A
ERROR_CODE = 0xEE
PROTOCOL_VERSION = 1
#: The first bytes of every INFO reply's payload.
INFO_MAGIC = b"BSPK"
#: Bytes per logit in an INFER reply (two's complement, little-endian).
LOGIT_BYTES = 4
#: Bytes of the class and of the cycle count after the logits of an INFER reply.
CLASS_BYTES, CYCLES_BYTES = 2, 4
#: Bytes of a frame around its payload: sync, code, length (2), crc (2).
FRAME_OVERHEAD = 6

CRC_POLY = 0x1021
CRC_INIT = 0xFFFF


class Command(IntEnum):
    """A request's ``code`` byte."""

    #: No payload. Reply: the board's identity, engine configuration and counters
    #: (:data:`INFO_FIELDS`).
    INFO = 0x01
    #: Payload: one byte per input level, in the Program's flattened (C, H, W) order.
    #: Reply: the logits, the class and the cycle count (:func:`infer_reply_length`).
    INFER = 0x02


class LinkError(IntEnum):
    """The first byte of an error reply's payload: what was wrong with the request.

    When several things are wrong: a bad CRC first (a corrupted header would otherwise look like
    a wrong length or command), then the first of a framing error or a header error (command,
    length) in frame order, then the levels. A frame that declares more bytes than the input has
    is skipped until the timeout and answered with its header error.
    """

    #: The frame's CRC does not match: a byte was corrupted on the line.
    BAD_CRC = 0x01
    #: The length does not match the command (INFO: 0, INFER: the Program's input size).
    BAD_LENGTH = 0x02
    #: The command byte is not a :class:`Command`.
    UNKNOWN_COMMAND = 0x03
    #: An input level exceeds the Program's largest level (the engine was not started).
    LEVEL_OUT_OF_RANGE = 0x04
    #: The frame stopped mid-way: no byte for the link's timeout (``timeout_us`` in INFO).
    TIMEOUT = 0x05
    #: A byte's stop bit was low (wrong baud rate, or noise on the line).
    FRAMING = 0x06
    #: An INFER, but the engine has no weights: the iCEBreaker's SPI flash holds no matching
    #: weight image (``bitspike build --program`` writes it).
    NOT_READY = 0x07


#: The INFO reply's payload, in order: (field, bytes). Little-endian integers but ``magic``.
#: ``flags`` bit 0: the engine's weights are in (iCE40: loaded from the SPI flash), bit 1: the
#: flash load failed (its header did not match), bit 2: the engine runs rate-coded Programs.
INFO_FIELDS: tuple[tuple[str, int], ...] = (
    ("magic", 4), ("version", 1), ("flags", 1), ("program_id", 4), ("lanes", 1),
    ("pixels", 2), ("max_level", 1), ("classes", 2), ("logit_bytes", 1),
    ("clock_khz", 4), ("baud", 4), ("timeout_us", 4),
)
INFO_LENGTH = sum(n for _, n in INFO_FIELDS)

FLAG_WEIGHTS_READY, FLAG_FLASH_ERROR, FLAG_RATE = 0x01, 0x02, 0x04


class ProtocolError(BitspikeError):
    """Bytes that are not a well-formed frame or payload (the host's decoder raises it)."""


# --------------------------------------------------------------------------------------- CRC

def crc16_byte(crc: int, byte: int) -> int:
    """One byte into CRC-16/CCITT-FALSE: the only definition (the RTL derives its XOR network
    from it, :func:`bitspike.boards.link.crc16_next`)."""
    crc ^= (byte & 0xFF) << 8
    for _ in range(8):
        crc = ((crc << 1) ^ CRC_POLY) if crc & 0x8000 else (crc << 1)
        crc &= 0xFFFF
    return crc


def crc16(data: bytes, crc: int = CRC_INIT) -> int:
    """CRC-16/CCITT-FALSE of ``data`` (``crc16(b"123456789") == 0x29B1``)."""
    for byte in data:
        crc = crc16_byte(crc, byte)
    return crc


# ------------------------------------------------------------------------------------ frames

def _frame(sync: int, code: int, payload: bytes) -> bytes:
    if not 0 <= code <= 0xFF:
        raise ValueError(f"a frame's code is one byte, not {code}")
    if len(payload) > 0xFFFF:
        raise ValueError(f"a frame carries at most 65535 payload bytes, not {len(payload)}")
    body = bytes([code]) + struct.pack("<H", len(payload)) + bytes(payload)
    return bytes([sync]) + body + struct.pack(">H", crc16(body))


def encode_request(command: int, payload: bytes = b"") -> bytes:
    """A request frame (``command`` may be any byte: tests send unknown ones)."""
    return _frame(REQUEST_SYNC, int(command), bytes(payload))


def encode_reply(code: int, payload: bytes = b"") -> bytes:
    """A reply frame, as the board sends it (the host's tests and the docs' example)."""
    return _frame(REPLY_SYNC, int(code), bytes(payload))


@dataclass(frozen=True)
class ReplyFrame:
    """A decoded reply: its code and payload (CRC checked)."""

    code: int
    payload: bytes

    @property
    def is_error(self) -> bool:
        return self.code == ERROR_CODE

    def error(self) -> tuple[LinkError | int, int]:
        """``(kind, command)`` of an error reply (``kind`` an int if the board sent a kind this
        host does not know)."""
        if not self.is_error or len(self.payload) != 2:
            raise ProtocolError(f"not an error reply: code 0x{self.code:02X}, "
                                f"{len(self.payload)} payload bytes")
        kind, command = self.payload
        try:
            kind = LinkError(kind)
        except ValueError:
            pass
        return kind, command


def decode_reply(frame: bytes) -> ReplyFrame:
    """One whole reply frame to a :class:`ReplyFrame`; :class:`ProtocolError` naming what is
    wrong (sync, length, CRC)."""
    frame = bytes(frame)
    if len(frame) < FRAME_OVERHEAD:
        raise ProtocolError(f"a reply frame has at least {FRAME_OVERHEAD} bytes, got "
                            f"{len(frame)}: {frame.hex(' ')}")
    if frame[0] != REPLY_SYNC:
        raise ProtocolError(f"a reply starts with 0x{REPLY_SYNC:02X}, not 0x{frame[0]:02X}")
    (length,) = struct.unpack_from("<H", frame, 2)
    if len(frame) != length + FRAME_OVERHEAD:
        raise ProtocolError(f"the reply declares {length} payload bytes but the frame has "
                            f"{len(frame) - FRAME_OVERHEAD}")
    if crc16(frame[1:]) != 0:
        raise ProtocolError(f"bad CRC in reply: got 0x{frame[-2]:02X}{frame[-1]:02X}, "
                            f"computed 0x{crc16(frame[1:-2]):04X}")
    return ReplyFrame(frame[1], frame[4:-2])


def parse_frames(data: bytes, sync: int = REPLY_SYNC) -> tuple[list[bytes], bytes]:
    """Split a byte stream into whole frames (not checked) and the incomplete rest; bytes before
    a ``sync`` byte are dropped."""
    frames, i = [], 0
    while True:
        start = data.find(bytes([sync]), i)
        if start < 0 or len(data) - start < 4:
            return frames, (data[start:] if start >= 0 else b"")
        (length,) = struct.unpack_from("<H", data, start + 2)
        end = start + length + FRAME_OVERHEAD
        if end > len(data):
            return frames, data[start:]
        frames.append(data[start:end])
        i = end


# ------------------------------------------------------------------------------- payloads

def error_payload(kind: LinkError, command: int = 0) -> bytes:
    return bytes([int(kind), command & 0xFF])


def infer_reply_length(classes: int) -> int:
    """Payload bytes of an INFER reply: the logits, the class and the cycle count."""
    return classes * LOGIT_BYTES + CLASS_BYTES + CYCLES_BYTES


@dataclass(frozen=True)
class InferReply:
    """One inference's result as the board reports it."""

    logits: tuple[int, ...]
    klass: int
    cycles: int


def decode_infer(payload: bytes, classes: int) -> InferReply:
    if len(payload) != infer_reply_length(classes):
        raise ProtocolError(f"an INFER reply for {classes} classes has "
                            f"{infer_reply_length(classes)} payload bytes, not {len(payload)}")
    logits = struct.unpack_from(f"<{classes}i", payload, 0)
    klass, cycles = struct.unpack_from("<HI", payload, classes * LOGIT_BYTES)
    return InferReply(tuple(logits), klass, cycles)


@dataclass(frozen=True)
class InfoReply:
    """What the board reports about itself (:data:`INFO_FIELDS`)."""

    version: int
    flags: int
    program_id: int
    lanes: int
    pixels: int
    max_level: int
    classes: int
    logit_bytes: int
    clock_khz: int
    baud: int
    timeout_us: int

    @property
    def weights_ready(self) -> bool:
        return bool(self.flags & FLAG_WEIGHTS_READY)

    @property
    def flash_error(self) -> bool:
        return bool(self.flags & FLAG_FLASH_ERROR)

    @property
    def rate_mode(self) -> bool:
        return bool(self.flags & FLAG_RATE)

    def to_dict(self) -> dict:
        return {"protocol_version": self.version, "program_id": f"{self.program_id:08x}",
                "weights_ready": self.weights_ready, "flash_error": self.flash_error,
                "engine_modes": "bitserial+rate" if self.rate_mode else "bitserial",
                "lanes": self.lanes, "pixels": self.pixels, "max_level": self.max_level,
                "classes": self.classes, "logit_bytes": self.logit_bytes,
                "clock_mhz": self.clock_khz / 1000, "baud": self.baud,
                "timeout_ms": self.timeout_us / 1000}


def info_payload(**values: int) -> bytes:
    """The INFO payload from its field values (``magic`` is implied)."""
    out = bytearray(INFO_MAGIC)
    for name, size in INFO_FIELDS[1:]:
        value = int(values[name])
        if not 0 <= value < 1 << (8 * size):
            raise ValueError(f"INFO field {name} = {value} does not fit {size} bytes")
        out += value.to_bytes(size, "little")
    return bytes(out)


def decode_info(payload: bytes) -> InfoReply:
    if len(payload) != INFO_LENGTH:
        raise ProtocolError(f"an INFO reply has {INFO_LENGTH} payload bytes, not {len(payload)}")
    if payload[:4] != INFO_MAGIC:
        raise ProtocolError(f"the INFO reply does not start with {INFO_MAGIC!r} (got "
                            f"{payload[:4]!r}): is this a bitspike bitstream?")
    values, at = {}, 4
    for name, size in INFO_FIELDS[1:]:
        values[name] = int.from_bytes(payload[at:at + size], "little")
        at += size
    return InfoReply(**values)
