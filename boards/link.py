"""The UART host link in RTL: the board's side of :mod:`bitspike.boards.protocol`.

Components, each with its own tests (tests/test_link_rtl.py), joined in :class:`HostLink`:

- :class:`UartRx`, :class:`UartTx`: 8N1 serial, ``divisor`` clock cycles per bit. The
  receiver synchronises the pin, samples each bit in its middle, flags a byte whose stop bit is
  low (a framing error) and then waits for the line to go idle.
- :class:`FrameReceiver`: hunts for the request sync byte, checks the header (command, length)
  as it arrives, writes an INFER payload into the input buffer, runs the CRC over the frame and
  checks the levels; a frame that stops for ``timeout_cycles`` is ended. It hands each frame on
  as a request (command and :class:`~bitspike.boards.protocol.LinkError`, 0 for none) and waits
  until it has been answered.
- :class:`Responder`: answers a request: an error reply, the INFO reply, or an inference
  (feeds the engine from the buffer, takes the logits into a logit buffer as fast as the engine
  sends them, so that the engine is never stalled and its cycle count is the cycle model's, then
  sends the logits, the class and the cycle count at the UART's pace).
- The input buffer: one block RAM of ``pixels`` levels between the two. The engine is started
  only after the whole frame is in and checked: a bad frame never reaches it.

One request at a time: the receiver ignores bytes from the end of a frame until its reply has
been sent (the host waits for each reply). :class:`LinkedEngine` joins the link to an engine
(or to :class:`~bitspike.boards.flash_loader.LoadedEngine`); :class:`~bitspike.boards.top.BoardTop`
puts it on the board's FTDI UART, and the cocotb bench (:mod:`bitspike.sim.link_tb`) drives
the same component bit by bit.
"""

# No ``from __future__ import annotations``: wiring.Component reads real annotations.
import hashlib
import json
import math

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..hw.firing import logit_layout
from ..hw.memories import BLOCK_RAM_ATTRS
from ..hw.output import result_layout
from ..sw.errors import BitspikeError
from . import protocol as proto
from .protocol import Command, LinkError

__all__ = ["DEFAULT_BAUD", "DEFAULT_TIMEOUT_MS", "FrameReceiver", "HostLink", "LinkConfig",
           "LinkUnsupported", "LinkedEngine", "Responder", "UartRx", "UartTx", "crc16_next",
           "program_id", "request_layout", "rx_layout"]

#: The FTDI UART's rate unless ``bitspike build --baud`` says otherwise.
DEFAULT_BAUD = 115200
#: A frame that stops for this long is ended with a TIMEOUT error reply.
DEFAULT_TIMEOUT_MS = 20

#: A received byte and whether its stop bit was low.
rx_layout = data.StructLayout({"data": 8, "framing_error": 1})
#: A checked frame: its command byte and what was wrong with it (0: nothing).
request_layout = data.StructLayout({"command": 8, "error": 3})


class LinkUnsupported(BitspikeError):
    """The Program cannot be served over the host link (names what and what to do)."""


def program_id(program) -> int:
    """A 32-bit fingerprint of the Program: the first four bytes of the sha256 of its bundle
    manifest and memory contents. The bitstream reports it (INFO), and the host compares it
    with the Program it was given before it trusts a result."""
    from ..sw.images import build_manifest

    manifest, memories = build_manifest(program)
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode())
    for name in sorted(memories):
        digest.update(name.encode())
        digest.update(memories[name].astype("<i8").tobytes())
    return int.from_bytes(digest.digest()[:4], "big")


def crc16_next(crc, byte):
    """The CRC register after ``byte``: the XOR network of :func:`protocol.crc16_byte`, which
    is linear over GF(2); each output bit's taps are read off the function itself."""
    bits = []
    for j in range(16):
        taps = [crc[i] for i in range(16) if proto.crc16_byte(1 << i, 0) >> j & 1]
        taps += [byte[k] for k in range(8) if proto.crc16_byte(0, 1 << k) >> j & 1]
        bit = Const(0, 1)
        for tap in taps:
            bit = bit ^ tap
        bits.append(bit)
    return Cat(*bits)


class LinkConfig:
    """What the link needs to know about the board, the Program and the engine.

    Parameters
    ----------
    program : Program
        The Program the engine runs (its input size, largest level, classes, fingerprint).
    engine_config : EngineConfig
        The engine's configuration (lanes, input width, logit and class widths).
    clock_hz : float
        The engine clock.
    baud : int
        The UART's bit rate.
    timeout_ms : float
        A frame with no byte for this long is ended.

    Raises
    ------
    LinkUnsupported
        When the baud rate is too fast for the clock, a level does not fit one byte, or a logit
        does not fit :data:`protocol.LOGIT_BYTES`.
    """

    def __init__(self, *, program, engine_config, clock_hz: float, baud: int = DEFAULT_BAUD,
                 timeout_ms: float = DEFAULT_TIMEOUT_MS):
        if isinstance(baud, bool) or not isinstance(baud, int) or baud <= 0:
            raise LinkUnsupported(f"the baud rate must be a positive integer, not {baud!r}")
        self.divisor = round(clock_hz / baud)
        if self.divisor < 4:
            raise LinkUnsupported(f"{baud} baud is too fast for a {clock_hz / 1e6:g} MHz clock "
                                  f"(at least 4 cycles per bit): lower --baud")
        error = abs(clock_hz / self.divisor - baud) / baud
        if error > 0.02:
            raise LinkUnsupported(f"{baud} baud is {100 * error:.1f} % off at "
                                  f"{clock_hz / 1e6:g} MHz ({self.divisor} cycles per bit): "
                                  "choose a rate the clock divides within 2 %")
        if not timeout_ms > 0:
            raise LinkUnsupported(f"the frame timeout must be positive, not {timeout_ms}")
        self.timeout_cycles = max(20 * self.divisor, round(timeout_ms * 1e-3 * clock_hz))
        self.pixels = int(math.prod(program.input.shape))
        self.max_level = int(program.input.max_level)
        self.classes = int(program.classes)
        if self.max_level > 0xFF:
            raise LinkUnsupported(f"input levels up to {self.max_level} do not fit the host "
                                  "link's one byte per level")
        if self.pixels > 0xFFFF:
            raise LinkUnsupported(f"an input of {self.pixels} levels exceeds the host link's "
                                  "65535-byte frames")
        logit_bits = logit_layout(engine_config)["value"].shape.width
        if logit_bits > 8 * proto.LOGIT_BYTES:
            raise LinkUnsupported(f"the engine's {logit_bits}-bit logits do not fit the host "
                                  f"link's {proto.LOGIT_BYTES}-byte logits")
        if proto.infer_reply_length(self.classes) > 0xFFFF:
            raise LinkUnsupported(f"{self.classes} classes exceed the host link's reply frame")
        self.engine_config = engine_config
        self.input_bits = engine_config.max_t
        self.baud = baud
        self.clock_hz = clock_hz
        self.timeout_us = round(1e6 * self.timeout_cycles / clock_hz)
        self.program_id = program_id(program)
        self.rate = "rate" in engine_config.modes

    def info_constants(self) -> dict[str, int]:
        """The INFO fields fixed at build time (all but ``flags``)."""
        return {"version": proto.PROTOCOL_VERSION, "program_id": self.program_id,
                "lanes": self.engine_config.lanes, "pixels": self.pixels,
                "max_level": self.max_level, "classes": self.classes,
                "logit_bytes": proto.LOGIT_BYTES, "clock_khz": round(self.clock_hz / 1e3),
                "baud": self.baud, "timeout_us": self.timeout_us}


# ------------------------------------------------------------------------------------ UART

class UartRx(wiring.Component):
    """8N1 receiver, ``divisor`` cycles per bit.

    Members
    -------
    rx : In(1)
        The serial line (idle high); synchronised inside.
    o_byte : Out(stream.Signature(rx_layout, always_ready=True))
        One transfer per byte, in the middle of its stop bit; ``framing_error`` when the stop
        bit was low (the receiver then waits for the line to be high before the next start bit).
    """

    def __init__(self, divisor: int):
        if divisor < 4:
            raise ValueError(f"divisor must be at least 4 cycles per bit, not {divisor}")
        self._divisor = divisor
        super().__init__({"rx": In(1, init=1),
                          "o_byte": Out(stream.Signature(rx_layout, always_ready=True))})

    def elaborate(self, platform):
        m = Module()
        d = self._divisor
        rx = Signal(init=1)
        m.submodules.rx_sync = FFSynchronizer(self.rx, rx, init=1)
        timer = Signal(range(d))
        bit = Signal(range(8))
        shreg = Signal(8)
        with m.FSM():
            with m.State("Idle"):
                with m.If(~rx):
                    m.d.sync += timer.eq(d // 2 - 1)
                    m.next = "Start"
            with m.State("Start"):  # the middle of the start bit: still low, or a glitch
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
                    m.d.sync += [timer.eq(d - 1), bit.eq(0)]
                    m.next = "Data"
                    with m.If(rx):
                        m.next = "Idle"
            with m.State("Data"):
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
                    m.d.sync += [timer.eq(d - 1), shreg.eq(Cat(shreg[1:], rx)), bit.eq(bit + 1)]
                    with m.If(bit == 7):
                        m.next = "Stop"
            with m.State("Stop"):
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
                    m.d.comb += [self.o_byte.valid.eq(1),
                                 self.o_byte.payload.data.eq(shreg),
                                 self.o_byte.payload.framing_error.eq(~rx)]
                    m.next = "Idle"
                    with m.If(~rx):
                        m.next = "Break"
            with m.State("Break"):  # a low stop bit: wait for the idle line
                with m.If(rx):
                    m.next = "Idle"
        return m


class UartTx(wiring.Component):
    """8N1 transmitter, ``divisor`` cycles per bit.

    Members
    -------
    i_byte : In(stream.Signature(8))
        Taken while idle; the line is busy for 10 bit times per byte.
    tx : Out(1)
        The serial line, registered (idle high).
    """

    def __init__(self, divisor: int):
        if divisor < 4:
            raise ValueError(f"divisor must be at least 4 cycles per bit, not {divisor}")
        self._divisor = divisor
        super().__init__({"i_byte": In(stream.Signature(8)), "tx": Out(1, init=1)})

    def elaborate(self, platform):
        m = Module()
        d = self._divisor
        timer = Signal(range(d))
        left = Signal(range(10))
        shreg = Signal(9)  # the data bits, then the stop bit
        with m.FSM():
            with m.State("Idle"):
                m.d.comb += self.i_byte.ready.eq(1)
                with m.If(self.i_byte.valid):
                    m.d.sync += [self.tx.eq(0), shreg.eq(Cat(self.i_byte.payload, Const(1, 1))),
                                 left.eq(9), timer.eq(d - 1)]
                    m.next = "Send"
            with m.State("Send"):
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer == 0):
                    with m.If(left == 0):  # the stop bit has been on the line for a bit time
                        m.next = "Idle"
                    with m.Else():
                        m.d.sync += [self.tx.eq(shreg[0]), shreg.eq(shreg >> 1),
                                     left.eq(left - 1), timer.eq(d - 1)]
        return m


# --------------------------------------------------------------------------- frame receiver

def _buffer_write_signature(pixels: int, width: int):
    return wiring.Signature({"addr": Out(range(max(2, pixels))), "data": Out(width),
                             "en": Out(1)})


def _buffer_read_signature(pixels: int, width: int):
    return wiring.Signature({"addr": Out(range(max(2, pixels))), "data": In(width)})


class FrameReceiver(wiring.Component):
    """Request frames in, checked requests out (module docstring).

    Parameters
    ----------
    pixels, max_level : int
        The INFER payload's length and largest level.
    input_bits : int
        The width of a level in the input buffer.
    timeout_cycles : int
        Cycles without a byte after which a started frame is ended (TIMEOUT, or the header
        error already found).

    Members
    -------
    i_byte : In(stream.Signature(rx_layout, always_ready=True))
    buffer : Out(write port: addr, data, en)
        The INFER payload's levels, written as they arrive (the engine only reads them after
        the frame has been checked).
    o_request : Out(stream.Signature(request_layout))
    done : In(1)
        The request's reply has been sent: hunt for the next frame.
    """

    def __init__(self, *, pixels: int, max_level: int, input_bits: int, timeout_cycles: int):
        self._pixels, self._max_level = pixels, max_level
        self._timeout = timeout_cycles
        super().__init__({
            "i_byte": In(stream.Signature(rx_layout, always_ready=True)),
            "buffer": Out(_buffer_write_signature(pixels, input_bits)),
            "o_request": Out(stream.Signature(request_layout)),
            "done": In(1)})

    def elaborate(self, platform):  # noqa: C901 - one frame, read top to bottom
        m = Module()
        byte = self.i_byte.payload.data
        got = self.i_byte.valid
        framing = self.i_byte.payload.framing_error
        crc = Signal(16)
        crc_after = crc16_next(crc, byte)
        command = Signal(8)
        length_lo = Signal(8)
        length = Cat(length_lo, byte)  # valid in LenHi, with the byte that completes it
        # no request carries more than the input's levels: counters of that size (a longer
        # declared length is an error at once, and the frame is skipped until the line idles)
        left = Signal(range(self._pixels + 3))  # bytes of the frame still to come (and CRC)
        index = Signal(range(self._pixels + 3))  # the frame byte after the header that comes next
        skip = Signal()
        store = Signal()  # a well-formed INFER header: write the payload into the buffer
        error = Signal(3)
        level_high = Signal()
        timer = Signal(range(self._timeout + 1))
        result = Signal(3)

        def fail(kind):  # the first error found wins
            with m.If(error == 0):
                m.d.sync += error.eq(kind)

        with m.FSM():
            with m.State("Hunt"):
                with m.If(got & ~framing & (byte == proto.REQUEST_SYNC)):
                    m.d.sync += [crc.eq(proto.CRC_INIT), error.eq(0), level_high.eq(0),
                                 index.eq(0), store.eq(0), timer.eq(0), command.eq(0)]
                    m.next = "Command"
            for state in ("Command", "LengthLo", "LengthHi", "Body"):
                with m.State(state):
                    with m.If(got):
                        m.d.sync += [crc.eq(crc_after), timer.eq(0)]
                        with m.If(framing):
                            fail(LinkError.FRAMING)
                    with m.Elif(timer == self._timeout):
                        m.d.sync += result.eq(Mux(error != 0, error, LinkError.TIMEOUT))
                        m.next = "Report"
                    with m.Else():
                        m.d.sync += timer.eq(timer + 1)
                    if state == "Command":
                        with m.If(got):
                            m.d.sync += command.eq(byte)
                            m.next = "LengthLo"
                    elif state == "LengthLo":
                        with m.If(got):
                            m.d.sync += length_lo.eq(byte)
                            m.next = "LengthHi"
                    elif state == "LengthHi":
                        with m.If(got):
                            m.d.sync += [left.eq(length + 2), skip.eq(length > self._pixels)]
                            with m.Switch(command):
                                with m.Case(Command.INFO):
                                    with m.If(length != 0):
                                        fail(LinkError.BAD_LENGTH)
                                with m.Case(Command.INFER):
                                    with m.If(length != self._pixels):
                                        fail(LinkError.BAD_LENGTH)
                                    with m.Else():
                                        m.d.sync += store.eq(1)
                                with m.Default():
                                    fail(LinkError.UNKNOWN_COMMAND)
                            m.next = "Body"
                    else:  # Body: the payload, then the two CRC bytes
                        payload_byte = store & (index < self._pixels)
                        m.d.comb += [self.buffer.addr.eq(index), self.buffer.data.eq(byte),
                                     self.buffer.en.eq(got & payload_byte)]
                        with m.If(got):
                            with m.If(~skip):  # skipped: until the timeout ends the frame
                                m.d.sync += [left.eq(left - 1), index.eq(index + 1)]
                            with m.If(payload_byte & (byte > self._max_level)):
                                m.d.sync += level_high.eq(1)
                            with m.If((left == 1) & ~skip):
                                m.next = "Check"
            with m.State("Check"):  # the CRC register now holds all the frame's bytes
                # a bad CRC first: a line error in the header would otherwise look like a wrong
                # length or an unknown command, which the host does not send again
                m.d.sync += result.eq(Mux(crc != 0, LinkError.BAD_CRC,
                                          Mux(error != 0, error,
                                              Mux(level_high, LinkError.LEVEL_OUT_OF_RANGE, 0))))
                m.next = "Report"
            with m.State("Report"):
                m.d.comb += [self.o_request.valid.eq(1),
                             self.o_request.payload.command.eq(command),
                             self.o_request.payload.error.eq(result)]
                with m.If(self.o_request.ready):
                    m.next = "Busy"
            with m.State("Busy"):  # one request at a time: bytes now are not read
                with m.If(self.done):
                    m.next = "Hunt"
        return m


# -------------------------------------------------------------------------------- responder

class Responder(wiring.Component):
    """Answers one request at a time (module docstring).

    Members
    -------
    i_request : In(stream.Signature(request_layout))
    done : Out(1)
        Pulses when the reply's last byte has been taken by the transmitter.
    buffer : Out(read port: addr, data); the data is that of the address one cycle before.
    o_pixels : Out(stream.Signature(unsigned(input_bits)))
        The checked levels, to the engine's ``i_stream``.
    i_logits, i_result : In(stream) from the engine's ``o_logits``, ``o_result``
        The logits are taken as the engine sends them (into the logit buffer); the result is
        taken after its last byte has been sent (the engine holds it, its counter stopped).
    o_byte : Out(stream.Signature(8))
        The reply, to the transmitter.
    weights_ready, flash_error : In(1)
        Reported in INFO's flags.
    last_class : Out(4)
        The low bits of the last inference's class (the board's LEDs).
    last_ok : Out(1)
        The last reply was not an error reply.
    """

    def __init__(self, link: LinkConfig):
        self._link = link
        cfg = link.engine_config
        super().__init__({
            "i_request": In(stream.Signature(request_layout)),
            "done": Out(1),
            "buffer": Out(_buffer_read_signature(link.pixels, link.input_bits)),
            "o_pixels": Out(stream.Signature(unsigned(link.input_bits))),
            "i_logits": In(stream.Signature(logit_layout(cfg))),
            "i_result": In(stream.Signature(result_layout(cfg))),
            "o_byte": Out(stream.Signature(8)),
            "weights_ready": In(1), "flash_error": In(1),
            "last_class": Out(4), "last_ok": Out(1)})

    def _info_rom(self) -> tuple[list[int], dict[int, tuple[str, int]]]:
        """The INFO payload's bytes as fixed at build time, and the live bytes: offset ->
        (field, byte of the field)."""
        constants = {**self._link.info_constants(), "flags": 0}
        payload = proto.info_payload(**constants)
        live, at = {}, 0
        for name, size in proto.INFO_FIELDS:
            if name == "flags":
                live.update({at + k: (name, k) for k in range(size)})
            at += size
        return list(payload), live

    def elaborate(self, platform):  # noqa: C901 - one reply, read top to bottom
        m = Module()
        link = self._link
        pixels, classes = link.pixels, link.classes
        live_values = {"flags": Cat(self.weights_ready, self.flash_error,
                                    Const(int(link.rate), 1), Const(0, 5))}

        command = Signal(8)
        error = Signal(3)
        code = Signal(8)
        length = Signal(16)
        crc = Signal(16)
        count = Signal(range(max(proto.INFO_LENGTH, pixels, 6) + 1))  # the body's byte
        part = Signal(2)  # the byte of a logit
        logits_left = Signal(range(classes + 1))
        addr = Signal(range(max(2, pixels)))
        out = self.o_byte
        sent = out.valid & out.ready
        advance = Signal()  # the byte on offer is taken: the body's next byte
        into_crc = Signal()
        m.d.comb += advance.eq(sent)
        # one CRC network for every byte of the reply (the sync byte and the CRC stay out)
        with m.If(sent & into_crc):
            m.d.sync += crc.eq(crc16_next(crc, out.payload))

        def send(value, *, crc=True):
            m.d.comb += [out.valid.eq(1), out.payload.eq(value), into_crc.eq(int(crc))]

        # the INFO bytes fixed at build time, in a ROM read one byte ahead
        rom_bytes, live = self._info_rom()
        m.submodules.info = info = Memory(shape=8, depth=len(rom_bytes), init=rom_bytes,
                                          attrs=BLOCK_RAM_ATTRS)  # in LUTs: 100 on the iCE40
        info_read = info.read_port()
        m.d.comb += info_read.addr.eq(Mux(advance, count + 1, count))
        info_byte = Signal(8)
        m.d.comb += info_byte.eq(info_read.data)
        with m.Switch(count):
            for offset, (name, k) in live.items():
                with m.Case(offset):
                    m.d.comb += info_byte.eq(live_values[name].word_select(k, 8))

        # the logits, taken as the engine sends them (never back-pressured: its cycle count is
        # the cycle model's) and sent from here at the UART's pace, one read ahead
        value_shape = self.i_logits.payload.value.shape()
        m.submodules.logits = logits = Memory(shape=value_shape, depth=max(2, classes),
                                              init=[], attrs=BLOCK_RAM_ATTRS)
        logit_write, logit_read = logits.write_port(), logits.read_port()
        logit_addr = Signal(range(max(2, classes + 1)))
        next_logit = Signal()
        m.d.comb += logit_read.addr.eq(Mux(next_logit, logit_addr + 1, logit_addr))
        logit_word = Signal(8 * proto.LOGIT_BYTES)
        m.d.comb += logit_word.eq(logit_read.data.as_signed())
        # the class and the cycle count come straight from the engine's o_result, which holds
        # them (and stops its cycle counter) until they are taken after the last byte
        result = self.i_result.payload
        result_word = Cat(result.klass.as_unsigned(), Const(0, 16 - len(result.klass)),
                          result.cycles)

        m.d.comb += self.buffer.addr.eq(addr)
        with m.FSM():
            with m.State("Idle"):
                m.d.comb += [self.i_request.ready.eq(1), self.buffer.addr.eq(0)]
                req = self.i_request.payload
                with m.If(self.i_request.valid):
                    m.d.sync += [command.eq(req.command), error.eq(req.error),
                                 crc.eq(proto.CRC_INIT), addr.eq(0), logit_addr.eq(0)]
                    with m.If(req.error != 0):
                        m.d.sync += [code.eq(proto.ERROR_CODE), length.eq(2)]
                        m.next = "Sync"
                    with m.Elif((req.command == Command.INFER) & self.flash_error):
                        # the engine would wait for weights that never come: say so instead
                        m.d.sync += [code.eq(proto.ERROR_CODE), length.eq(2),
                                     error.eq(LinkError.NOT_READY)]
                        m.next = "Sync"
                    with m.Elif(req.command == Command.INFO):
                        m.d.sync += [code.eq(Command.INFO), length.eq(proto.INFO_LENGTH)]
                        m.next = "Sync"
                    with m.Else():  # INFER, checked: buffer[0] is read in this cycle
                        m.d.sync += [code.eq(Command.INFER),
                                     length.eq(proto.infer_reply_length(classes))]
                        m.next = "Feed"
            with m.State("Feed"):  # the levels to the engine, one per transfer
                feed = self.o_pixels
                m.d.comb += [feed.valid.eq(1), feed.payload.eq(self.buffer.data)]
                with m.If(feed.ready):
                    m.d.comb += self.buffer.addr.eq(addr + 1)
                    m.d.sync += addr.eq(addr + 1)
                    with m.If(addr == pixels - 1):
                        m.d.sync += addr.eq(0)
                        m.next = "Collect"
            with m.State("Collect"):  # the logits as the engine sends them, until the result
                m.d.comb += [self.i_logits.ready.eq(1),
                             logit_write.addr.eq(logit_addr),
                             logit_write.data.eq(self.i_logits.payload.value),
                             logit_write.en.eq(self.i_logits.valid)]
                with m.If(self.i_logits.valid):
                    m.d.sync += logit_addr.eq(logit_addr + 1)
                with m.If(self.i_result.valid):
                    m.d.sync += logit_addr.eq(0)
                    m.next = "Sync"
            with m.State("Sync"):
                send(proto.REPLY_SYNC, crc=False)
                with m.If(sent):
                    m.next = "Code"
            with m.State("Code"):
                send(code)
                with m.If(sent):
                    m.next = "LengthLo"
            with m.State("LengthLo"):
                send(length[:8])
                with m.If(sent):
                    m.next = "LengthHi"
            with m.State("LengthHi"):
                send(length[8:])
                m.d.comb += info_read.addr.eq(0)  # the body starts at byte 0, read now
                with m.If(sent):
                    m.d.sync += [count.eq(0), part.eq(0), logits_left.eq(classes)]
                    with m.If(code == proto.ERROR_CODE):
                        m.next = "ErrorBody"
                    with m.Elif(code == Command.INFO):
                        m.next = "InfoBody"
                    with m.Else():
                        m.next = "Logits"
            with m.State("ErrorBody"):
                send(Mux(count == 0, error, command))
                with m.If(sent):
                    m.d.sync += count.eq(count + 1)
                    with m.If(count == 1):
                        m.next = "CrcHi"
            with m.State("InfoBody"):
                send(info_byte)
                with m.If(sent):
                    m.d.sync += count.eq(count + 1)
                    with m.If(count == proto.INFO_LENGTH - 1):
                        m.next = "CrcHi"
            with m.State("Logits"):
                send(logit_word.word_select(part, 8))
                with m.If(sent):
                    m.d.sync += part.eq(part + 1)
                    with m.If(part == proto.LOGIT_BYTES - 1):
                        m.d.comb += next_logit.eq(1)
                        m.d.sync += [logit_addr.eq(logit_addr + 1),
                                     logits_left.eq(logits_left - 1)]
                        with m.If(logits_left == 1):
                            m.next = "Result"
            with m.State("Result"):
                send(result_word.word_select(count[:3], 8))
                with m.If(sent):
                    m.d.sync += count.eq(count + 1)
                    with m.If(count == proto.CLASS_BYTES + proto.CYCLES_BYTES - 1):
                        m.d.comb += self.i_result.ready.eq(1)  # the engine's next inference
                        m.d.sync += self.last_class.eq(result.klass)
                        m.next = "CrcHi"
            with m.State("CrcHi"):
                send(crc[8:], crc=False)
                with m.If(sent):
                    m.next = "CrcLo"
            with m.State("CrcLo"):
                send(crc[:8], crc=False)
                with m.If(sent):
                    m.d.comb += self.done.eq(1)
                    m.d.sync += self.last_ok.eq(code != proto.ERROR_CODE)
                    m.next = "Idle"
        return m


# ------------------------------------------------------------------------------ the link

class HostLink(wiring.Component):
    """The UART host link: receiver, frame receiver, input buffer, responder, transmitter.

    Parameters
    ----------
    link : LinkConfig

    Members
    -------
    rx : In(1), tx : Out(1)
        The UART lines (the board's FTDI, or the bench's UART model).
    o_pixels, i_logits, i_result : to and from the engine (``wiring.connect`` them).
    weights_ready, flash_error : In(1)
        Reported in INFO's flags.
    last_class, last_ok : Out
        The last inference's class (low bits) and whether the last reply was not an error.
    """

    def __init__(self, link: LinkConfig):
        if not isinstance(link, LinkConfig):
            raise TypeError(f"link must be a LinkConfig, not {link!r}")
        self._link = link
        cfg = link.engine_config
        super().__init__({
            "rx": In(1, init=1), "tx": Out(1, init=1),
            "o_pixels": Out(stream.Signature(unsigned(link.input_bits))),
            "i_logits": In(stream.Signature(logit_layout(cfg))),
            "i_result": In(stream.Signature(result_layout(cfg))),
            "weights_ready": In(1), "flash_error": In(1),
            "last_class": Out(4), "last_ok": Out(1)})

    @property
    def config(self) -> LinkConfig:
        return self._link

    def elaborate(self, platform):
        m = Module()
        link = self._link
        m.submodules.uart_rx = rx = UartRx(link.divisor)
        m.submodules.uart_tx = tx = UartTx(link.divisor)
        m.submodules.receiver = receiver = FrameReceiver(
            pixels=link.pixels, max_level=link.max_level, input_bits=link.input_bits,
            timeout_cycles=link.timeout_cycles)
        m.submodules.responder = responder = Responder(link)
        m.submodules.input_buffer = buffer = Memory(
            shape=link.input_bits, depth=max(2, link.pixels), init=[], attrs=BLOCK_RAM_ATTRS)
        write = buffer.write_port()
        read = buffer.read_port()  # synchronous: a block RAM

        m.d.comb += [rx.rx.eq(self.rx), self.tx.eq(tx.tx)]
        wiring.connect(m, rx.o_byte, receiver.i_byte)
        wiring.connect(m, receiver.o_request, responder.i_request)
        wiring.connect(m, responder.o_byte, tx.i_byte)
        m.d.comb += [receiver.done.eq(responder.done),
                     write.addr.eq(receiver.buffer.addr), write.data.eq(receiver.buffer.data),
                     write.en.eq(receiver.buffer.en),
                     read.addr.eq(responder.buffer.addr), responder.buffer.data.eq(read.data),
                     responder.weights_ready.eq(self.weights_ready),
                     responder.flash_error.eq(self.flash_error),
                     self.last_class.eq(responder.last_class), self.last_ok.eq(responder.last_ok)]
        wiring.connect(m, responder.o_pixels, wiring.flipped(self.o_pixels))
        wiring.connect(m, wiring.flipped(self.i_logits), responder.i_logits)
        wiring.connect(m, wiring.flipped(self.i_result), responder.i_result)
        return m


class LinkedEngine(wiring.Component):
    """An engine served over the host link: what a board runs and the bench simulates.

    Parameters
    ----------
    engine : Engine or LoadedEngine
        Untraced; a :class:`~bitspike.boards.flash_loader.LoadedEngine` brings its ``flash``
        port, ``loaded`` and ``error`` (INFO's flags).
    link : LinkConfig

    Members
    -------
    rx : In(1), tx : Out(1)
    last_class, last_ok : Out (:class:`HostLink`'s, for LEDs)
    flash : Out(flash_signature()), only with a LoadedEngine
    """

    def __init__(self, *, engine, link: LinkConfig):
        if hasattr(engine, "o_trace"):
            self._MustUse__silence = True
            raise ValueError("the host link serves an engine without a trace port")
        self._engine = engine
        self._link = HostLink(link)
        members = {"rx": In(1, init=1), "tx": Out(1, init=1), "last_class": Out(4),
                   "last_ok": Out(1)}
        if "flash" in engine.signature.members:
            members["flash"] = engine.signature.members["flash"]
        super().__init__(members)

    @property
    def link(self) -> HostLink:
        return self._link

    def elaborate(self, platform):
        m = Module()
        m.submodules.engine = engine = self._engine
        m.submodules.link = link = self._link
        m.d.comb += [link.rx.eq(self.rx), self.tx.eq(link.tx),
                     self.last_class.eq(link.last_class), self.last_ok.eq(link.last_ok)]
        wiring.connect(m, link.o_pixels, engine.i_stream)
        wiring.connect(m, engine.o_logits, link.i_logits)
        wiring.connect(m, engine.o_result, link.i_result)
        if "flash" in self.signature.members:
            wiring.connect(m, engine.flash, wiring.flipped(self.flash))
            m.d.comb += [link.weights_ready.eq(engine.loaded),
                         link.flash_error.eq(engine.error)]
        else:
            m.d.comb += link.weights_ready.eq(1)
        return m
