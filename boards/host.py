"""The host side of the UART host link: talk to a board that runs a bitspike bitstream.

>>> from bitspike.boards.host import BoardLink
>>> with BoardLink.open("/dev/ttyUSB0") as board:          # doctest: +SKIP
...     print(board.info())
...     result = board.infer(levels)                      # one image: logits, class, cycles
...     for result in board.infer_batch(images): ...      # many, streamed

:class:`BoardLink` speaks :mod:`bitspike.boards.protocol` over a :class:`Transport`: a serial
port (:class:`SerialTransport`, on pyserial) on a real board, or the cocotb bench's UART model
(:mod:`bitspike.sim.link_tb`), which drives the simulated board top level bit by bit with this
same class. Replies are read with a timeout; a reply lost or damaged on the line (a bad CRC, a
timeout, a framing error reported by the board) is retried; a request the board refuses for
what it is (a wrong length, an unknown command, a level out of range) raises at once.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from ..sw.errors import BitspikeError
from . import protocol as proto
from .protocol import Command, InferReply, InfoReply, LinkError, ProtocolError, ReplyFrame

__all__ = ["BoardLink", "BoardMismatch", "BoardRefused", "BoardTimeout", "HostLinkError",
           "SerialTransport", "Transport", "check_board_matches", "open_serial"]

#: Seconds to wait for a reply (a digits inference at 115200 baud takes about 10 ms).
DEFAULT_TIMEOUT = 2.0
#: Times a request is sent again after a line error before giving up.
DEFAULT_RETRIES = 2
#: Line errors the board reports: the request is sent again.
RETRYABLE = (LinkError.BAD_CRC, LinkError.TIMEOUT, LinkError.FRAMING)


class HostLinkError(BitspikeError):
    """Talking to the board failed (the message says what to check)."""


class BoardTimeout(HostLinkError):
    """The board did not answer in time."""


class BoardRefused(HostLinkError):
    """The board answered a request with an error reply it would give again."""

    def __init__(self, kind, command: int, message: str):
        super().__init__(message)
        self.kind, self.command = kind, command


class BoardMismatch(HostLinkError):
    """The board runs another Program than the one given."""


class Transport:
    """What :class:`BoardLink` needs from a byte pipe to the board."""

    def write(self, data: bytes) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def read(self, size: int, timeout: float) -> bytes:  # pragma: no cover - interface
        """Up to ``size`` bytes, waiting at most ``timeout`` seconds for the first."""
        raise NotImplementedError

    def drain(self) -> None:
        """Drop whatever the board sent that was not read (after an error)."""

    def close(self) -> None:
        """Release the port."""


class SerialTransport(Transport):
    """A serial port through pyserial."""

    def __init__(self, port):
        self._port = port

    def write(self, data: bytes) -> None:
        self._port.write(data)
        self._port.flush()

    def read(self, size: int, timeout: float) -> bytes:
        self._port.timeout = timeout
        return self._port.read(size)

    def drain(self) -> None:
        # until the line has been quiet for 50 ms: longer than the FTDI latency timer (16 ms
        # by default), so a late reply is not read as the answer to the next request
        self._port.reset_input_buffer()
        self._port.timeout = 0.05
        while self._port.read(4096):
            pass

    def close(self) -> None:
        self._port.close()


def open_serial(port: str, baud: int) -> SerialTransport:
    """pyserial's port, with a clear error when it does not exist or cannot be opened."""
    import os

    try:
        import serial
    except ImportError:  # pragma: no cover - a dependency of the package
        raise HostLinkError("pyserial is not installed: pip install pyserial") from None
    if not port.startswith(("socket://", "rfc2217://", "loop://")) and not os.path.exists(port):
        raise HostLinkError(f"serial port {port} does not exist: plug the board in and pass "
                            "its port (Linux: /dev/ttyUSB0 for the ULX3S, /dev/ttyUSB1 for the "
                            "iCEBreaker's second FTDI channel; `ls /dev/ttyUSB*`)")
    try:
        return SerialTransport(serial.serial_for_url(port, baudrate=baud, timeout=0.1))
    except (serial.SerialException, OSError, ValueError) as error:
        raise HostLinkError(f"cannot open serial port {port} at {baud} baud: {error}") from None


@dataclass
class LinkStats:
    """What the link did: requests, retries, bytes each way, seconds."""

    requests: int = 0
    retries: int = 0
    bytes_out: int = 0
    bytes_in: int = 0


class BoardLink:
    """A connected board (module docstring).

    Parameters
    ----------
    transport : Transport
    timeout : float
        Seconds to wait for each reply. A board that never answers fails after
        ``(retries + 1) * timeout`` seconds (a request lost on the line is sent again).
    retries : int
        Times a request is sent again after a line error.
    """

    def __init__(self, transport: Transport, *, timeout: float = DEFAULT_TIMEOUT,
                 retries: int = DEFAULT_RETRIES):
        if not timeout > 0:
            raise HostLinkError(f"the reply timeout must be positive, not {timeout}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise HostLinkError(f"retries must be a non-negative integer, not {retries!r}")
        self.transport, self.timeout, self.retries = transport, timeout, retries
        self.stats = LinkStats()
        self._info: InfoReply | None = None

    @classmethod
    def open(cls, port: str, *, baud: int | None = None, **kw) -> BoardLink:
        """The board on serial ``port`` (``baud``: the bitstream's, default 115200)."""
        from .link import DEFAULT_BAUD

        return cls(open_serial(port, baud or DEFAULT_BAUD), **kw)

    def __enter__(self) -> BoardLink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.transport.close()

    # ------------------------------------------------------------------ frames
    def send(self, frame: bytes) -> None:
        """Write raw bytes (a frame, or anything: tests send malformed ones)."""
        self.transport.write(frame)
        self.stats.bytes_out += len(frame)

    def _read_exact(self, size: int, deadline: float) -> bytes:
        out = b""
        while len(out) < size:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            out += self.transport.read(size - len(out), left)
        self.stats.bytes_in += len(out)
        return out

    def read_reply(self, timeout: float | None = None) -> ReplyFrame:
        """The next reply frame: bytes before its sync are skipped. :class:`BoardTimeout` when
        none comes in time; :class:`ProtocolError` when it is damaged."""
        wait = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + wait
        while True:
            first = self._read_exact(1, deadline)
            if not first:
                raise BoardTimeout(
                    f"the board did not answer within {wait:g} s: check that it runs a bitspike "
                    "bitstream with the host link (bitspike build), that the port is the "
                    "board's UART and that the baud rate matches the bitstream's")
            if first[0] == proto.REPLY_SYNC:
                break
        head = self._read_exact(3, deadline)
        if len(head) < 3:
            raise ProtocolError("the reply stopped in its header")
        (length,) = struct.unpack_from("<H", head, 1)
        rest = self._read_exact(length + 2, deadline)
        if len(rest) < length + 2:
            raise ProtocolError(f"the reply stopped after {len(rest)} of its {length + 2} "
                                "remaining bytes")
        return proto.decode_reply(first + head + rest)

    def request(self, command: int, payload: bytes = b"") -> ReplyFrame:
        """Send a request and return its reply, retrying line errors; :class:`BoardRefused`
        for an error reply that would repeat."""
        frame = proto.encode_request(command, payload)
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats.retries += 1
                self.transport.drain()
            self.stats.requests += 1
            self.send(frame)
            try:
                reply = self.read_reply()
            except ProtocolError as error:
                last = f"a damaged reply ({error})"
                continue
            except BoardTimeout as error:
                last = str(error)
                if attempt == self.retries:
                    raise
                continue
            if reply.is_error:
                kind, echoed = reply.error()
                if kind in RETRYABLE or (kind in (LinkError.BAD_LENGTH, LinkError.UNKNOWN_COMMAND)
                                         and self._well_formed(command, payload)):
                    # the request was right as sent: the line changed it (a long declared
                    # length ends in the board's timeout before its CRC can say so)
                    last = f"the board reported {getattr(kind, 'name', kind)}"
                    continue
                raise BoardRefused(kind, echoed, _refusal(kind, echoed, payload, self._info))
            if reply.code != command:
                raise ProtocolError(f"the board answered command 0x{reply.code:02X} to a "
                                    f"request 0x{command:02X}")
            return reply
        raise HostLinkError(f"no good reply after {self.retries + 1} attempts: {last}")

    def _well_formed(self, command: int, payload: bytes) -> bool:
        """Whether this host built the request right (so a length or command error is the
        line's doing)."""
        if command == Command.INFO:
            return not payload
        if command == Command.INFER:
            return self._info is not None and len(payload) == self._info.pixels
        return False

    # ----------------------------------------------------------------- commands
    def info(self) -> InfoReply:
        """What the board reports (INFO); also remembered for :meth:`infer`'s checks."""
        self._info = proto.decode_info(self.request(Command.INFO).payload)
        return self._info

    def infer(self, levels) -> InferReply:
        """One inference: ``levels`` are the input's integer levels (any shape, flattened in
        C, H, W order). Checked against the board's INFO before they are sent."""
        info = self._info or self.info()
        payload = _levels_payload(levels, info)
        return proto.decode_infer(self.request(Command.INFER, payload).payload, info.classes)

    def infer_batch(self, images: Iterable, progress: Callable[[int], None] | None = None
                    ) -> Iterator[InferReply]:
        """Each image's result in order, one request in flight (the board answers one at a
        time); ``progress(done)`` after each."""
        for done, levels in enumerate(images, 1):
            yield self.infer(levels)
            if progress:
                progress(done)


def _levels_payload(levels, info: InfoReply) -> bytes:
    import numpy as np

    array = np.asarray(levels)
    if array.dtype.kind not in "iu":
        raise HostLinkError(f"input levels must be integers, not {array.dtype}")
    flat = array.reshape(-1)
    if flat.size != info.pixels:
        raise HostLinkError(f"the board's Program takes {info.pixels} input levels, not "
                            f"{flat.size}")
    if flat.size and (int(flat.min()) < 0 or int(flat.max()) > info.max_level):
        raise HostLinkError(f"input levels must lie in 0..{info.max_level}, got "
                            f"{int(flat.min())}..{int(flat.max())}")
    return flat.astype(np.uint8).tobytes()


def _refusal(kind, command: int, payload: bytes, info: InfoReply | None) -> str:
    name = getattr(kind, "name", f"error 0x{int(kind):02X}")
    hints = {
        LinkError.BAD_LENGTH: f"the request carried {len(payload)} payload bytes"
        + (f"; the board's Program takes {info.pixels} levels" if info else ""),
        LinkError.UNKNOWN_COMMAND: "the bitstream does not know this command (an older "
                                   "protocol version?)",
        LinkError.LEVEL_OUT_OF_RANGE: "an input level exceeds the Program's largest"
        + (f" ({info.max_level})" if info else ""),
        LinkError.NOT_READY: "the engine has no weights: the board's SPI flash holds no "
                             "matching weight image (write it with bitspike build --program)",
    }
    return f"the board refused command 0x{command:02X}: {name}: {hints.get(kind, '')}".rstrip(
        ": ")


def check_board_matches(info: InfoReply, program) -> None:
    """:class:`BoardMismatch` unless the board's bitstream was built from ``program`` (its
    fingerprint, input size, largest level and classes)."""
    from .link import program_id

    problems = []
    expected = program_id(program)
    if info.version != proto.PROTOCOL_VERSION:
        problems.append(f"protocol version {info.version}, this host speaks "
                        f"{proto.PROTOCOL_VERSION}")
    if info.program_id != expected:
        problems.append(f"Program id {info.program_id:08x}, this Program's is {expected:08x}")
    import math

    for name, want in (("pixels", int(math.prod(program.input.shape))),
                       ("max_level", int(program.input.max_level)),
                       ("classes", int(program.classes))):
        if getattr(info, name) != want:
            problems.append(f"{name} {getattr(info, name)}, this Program's {want}")
    if problems:
        raise BoardMismatch("the board's bitstream was not built from this Program: "
                            + "; ".join(problems)
                            + ". Build and load it with `bitspike build PROG --board B "
                              "--program`")


# ------------------------------------------------------------------------- batch comparison

def run_and_compare(link: BoardLink, program, images, labels=None, *, progress=None) -> dict:
    """Classify ``images`` on the board and compare every result with the golden model (class,
    logits) and the cycle model (cycles, for the board's lane count): what ``bitspike board
    run`` prints. ``labels``: the images' true classes, for the accuracy."""
    import numpy as np
    import torch

    from ..sim.reference import expected_results

    info = link.info()
    check_board_matches(info, program)
    images = np.asarray(images)
    expected = expected_results(program, torch.from_numpy(images.astype(np.int64)),
                                lanes=info.lanes)
    results, mismatches = [], []
    start = time.perf_counter()
    for i, got in enumerate(link.infer_batch(images, progress=progress)):
        want = expected[i]
        results.append(got)
        wrong = [what for what, a, b in (("class", got.klass, want.klass),
                                         ("logits", list(got.logits), want.logits),
                                         ("cycles", got.cycles, want.cycles)) if a != b]
        if wrong:
            mismatches.append({"image": i, "fields": wrong,
                               "expected": {"class": want.klass, "logits": want.logits,
                                            "cycles": want.cycles},
                               "got": {"class": got.klass, "logits": list(got.logits),
                                       "cycles": got.cycles}})
    seconds = time.perf_counter() - start
    classes = [r.klass for r in results]
    cycles = [r.cycles for r in results]
    out = {"images": len(results), "board": info.to_dict(),
           "golden_identical": len(results) - len(mismatches), "mismatches": mismatches,
           "classes": classes, "seconds": seconds,
           "inferences_per_second": len(results) / seconds if seconds else 0.0,
           "engine_inferences_per_second":
               info.clock_khz * 1e3 / float(np.mean(cycles)) if cycles else 0.0,
           "mean_cycles": float(np.mean(cycles)) if cycles else 0.0,
           "retries": link.stats.retries}
    if labels is not None:
        labels = np.asarray(labels)[:len(classes)]
        out["accuracy"] = float(np.mean(np.asarray(classes) == labels)) if classes else 0.0
    return out


def format_run(result: dict) -> str:
    """``bitspike board run``'s text report."""
    board = result["board"]
    lines = [f"board   {board['lanes']} lanes at {board['clock_mhz']:g} MHz, "
             f"{board['baud']:,} baud, Program {board['program_id']} (matches)"]
    if "accuracy" in result:
        lines.append(f"accuracy {100 * result['accuracy']:.2f} % on {result['images']} images")
    lines.append(f"golden  {result['golden_identical']}/{result['images']} identical to the "
                 "golden model (class, logits) and the cycle model (cycles)")
    for m in result["mismatches"][:5]:
        lines.append(f"  MISMATCH image {m['image']}: {', '.join(m['fields'])}: expected "
                     f"{m['expected']}, got {m['got']}")
    lines.append(f"speed   {result['inferences_per_second']:,.1f} inferences/s over the link "
                 f"({result['images']} in {result['seconds']:.2f} s, {result['retries']} "
                 f"retries); the engine alone: {result['engine_inferences_per_second']:,.0f} "
                 f"inferences/s ({result['mean_cycles']:,.0f} cycles per image)")
    return "\n".join(lines)
