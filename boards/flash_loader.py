"""Weights from the SPI flash into SPRAM at start-up (iCEBreaker).

The iCE40UP5K's SPRAM cannot be initialised by the bitstream (bitspike.hw.memories), so on the
iCEBreaker the engine's weights are written once after every reset: :class:`FlashLoader` reads
them from the board's SPI flash, where ``bitspike build --program`` puts the weight image
(:func:`weight_image`) at :data:`FLASH_OFFSET`, above the bitstream. The engine is held in reset
until the loader is done.

The flash protocol is the common one of the iCEBreaker's flash (and every 25-series part): the
*release from deep power-down* command ``0xAB`` (the FPGA may leave the flash powered down after
configuration), a wait of :data:`WAKE_SECONDS`, then *read data* ``0x03`` with a 24-bit address,
after which the flash streams bytes for as long as chip select stays low. SPI mode 0, most
significant bit first, the SPI clock at half the engine clock (at most 24 MHz here; the read
command is specified to 33 MHz and more).

The image is the engine's packed weight rows (:func:`bitspike.hw.config.pack_weights`), each
row ``ceil(P * W / 8)`` bytes, little-endian (lane 0's weight in the lowest bits), rows in
order, and a 16-byte header in front that the loader checks before writing anything: the magic
``b"BSWT"``, the format version, the row count and the bytes per row (little-endian 32-bit
words). A flash without the image (or with another Program's, of another shape) leaves the
engine in reset and lights no result: ``bitspike build --program`` writes both.
"""

# No ``from __future__ import annotations``: wiring.Component reads real annotations.
import struct

from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["FLASH_OFFSET", "IMAGE_MAGIC", "WAKE_SECONDS", "FlashLoader", "LoadedEngine",
           "flash_signature", "image_header", "weight_image"]

#: where the weight image lives in the flash (1 MiB: the UP5K bitstream is about 104 kB)
FLASH_OFFSET = 0x100000
IMAGE_MAGIC = b"BSWT"
IMAGE_VERSION = 1
#: tRES1 of the iCEBreaker's flash (W25Q128: 3 us), with margin
WAKE_SECONDS = 5e-6
_CMD_WAKE, _CMD_READ = 0xAB, 0x03


def image_header(rows: int, row_bytes: int) -> bytes:
    """The 16-byte header: magic, version, row count, bytes per row."""
    return IMAGE_MAGIC + struct.pack("<III", IMAGE_VERSION, rows, row_bytes)


def weight_image(rows, row_bits: int) -> bytes:
    """The flash image of packed weight rows (``row_bits = P * W`` bits each): the header,
    then each row's ``ceil(row_bits / 8)`` bytes, little-endian."""
    row_bytes = -(-row_bits // 8)
    body = b"".join(int(r).to_bytes(row_bytes, "little") for r in rows)
    return image_header(len(rows), row_bytes) + body


def flash_signature() -> wiring.Signature:
    """The SPI flash pins, seen from the controller: ``cs`` (active high here; the board's pin
    is inverted by the platform), ``clk``, ``copi`` out and ``cipo`` in."""
    return wiring.Signature({"cs": Out(1), "clk": Out(1), "copi": Out(1), "cipo": In(1)})


class FlashLoader(wiring.Component):
    """Reads the weight image from SPI flash and writes the rows through ``w_load``.

    Cost: a byte shift register, a row register of ``row_bits`` bits, counters; about
    ``16 * (16 + rows * row_bytes)`` engine cycles after the wake-up wait (2002 rows of 8 bytes:
    0.26 M cycles, 11 ms at 24 MHz).

    Parameters
    ----------
    rows : int
        Weight rows to load.
    row_bits : int
        Bits per row (``P * W``).
    wake_cycles : int
        Engine cycles to wait after the wake-up command (:data:`WAKE_SECONDS` at the clock).
    offset : int
        Flash byte address of the image (:data:`FLASH_OFFSET`).

    Members
    -------
    flash : Out(flash_signature())
    w_load : Out(Signature(addr, data, en))
        Connects to the engine's ``w_load``.
    done : Out(1)
        Every row was written (stays set until reset).
    error : Out(1)
        The image's header does not match (no image, or another Program's); nothing written.
    """

    def __init__(self, *, rows: int, row_bits: int, wake_cycles: int,
                 offset: int = FLASH_OFFSET):
        for name, value, low in (("rows", rows, 1), ("row_bits", row_bits, 1),
                                 ("wake_cycles", wake_cycles, 1), ("offset", offset, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                self._MustUse__silence = True
                raise TypeError(f"{name} must be an integer >= {low}, not {value!r}")
        if offset + 16 + rows * -(-row_bits // 8) > 1 << 24:
            self._MustUse__silence = True
            raise ValueError("the weight image does not fit below 16 MiB of flash (24-bit "
                             "addresses)")
        self._rows, self._row_bits, self._wake, self._offset = rows, row_bits, wake_cycles, offset
        self._row_bytes = -(-row_bits // 8)
        super().__init__({
            "flash": Out(flash_signature()),
            "w_load": Out(wiring.Signature({"addr": Out(range(max(2, rows))),
                                            "data": Out(row_bits), "en": Out(1)})),
            "done": Out(1), "error": Out(1)})

    @property
    def header(self) -> bytes:
        return image_header(self._rows, self._row_bytes)

    def elaborate(self, platform):
        m = Module()
        nb = self._row_bytes
        out = Signal(32)  # bits to send, most significant first
        left = Signal(range(33))  # bits left in this transfer
        phase = Signal()  # 0: clock low, data out; 1: clock high, data in
        byte = Signal(8)
        nbits = Signal(range(9))
        row = Signal(nb * 8)
        row_byte = Signal(range(max(2, nb)))
        row_index = Signal(range(max(2, self._rows + 1)))
        header = Signal(range(17))
        bad = Signal()  # a header bit differed from the expected image's
        expect = Const(int.from_bytes(self.header, "little"), 128)
        wait = Signal(range(self._wake + 1))
        m.d.comb += [self.flash.copi.eq(out[31]), self.w_load.addr.eq(row_index),
                     self.w_load.data.eq(row[:self._row_bits])]

        def shift_out(bits, value):
            return [out.eq(value << (32 - bits)), left.eq(bits), phase.eq(0)]

        with m.FSM(name="loader"):
            with m.State("Start"):
                m.d.sync += shift_out(8, _CMD_WAKE)
                m.next = "Wake"
            with m.State("Wake"):
                m.d.comb += self.flash.cs.eq(1)
                m.d.sync += phase.eq(~phase)
                m.d.comb += self.flash.clk.eq(phase)
                with m.If(phase):
                    m.d.sync += [out.eq(out << 1), left.eq(left - 1)]
                    with m.If(left == 1):
                        m.d.sync += wait.eq(self._wake)
                        m.next = "Rest"
            with m.State("Rest"):  # chip select high: the flash wakes up
                m.d.sync += wait.eq(wait - 1)
                with m.If(wait == 0):
                    m.d.sync += shift_out(32, (_CMD_READ << 24) | self._offset)
                    m.next = "Command"
            with m.State("Command"):
                m.d.comb += [self.flash.cs.eq(1), self.flash.clk.eq(phase)]
                m.d.sync += phase.eq(~phase)
                with m.If(phase):
                    m.d.sync += [out.eq(out << 1), left.eq(left - 1)]
                    with m.If(left == 1):
                        m.d.sync += [nbits.eq(0), header.eq(0), row_byte.eq(0),
                                     row_index.eq(0), bad.eq(0)]
                        m.next = "Header"
            for state in ("Header", "Read"):
                with m.State(state):
                    m.d.comb += [self.flash.cs.eq(1), self.flash.clk.eq(phase)]
                    m.d.sync += phase.eq(~phase)
                    got = Signal(8, name=f"got_{state.lower()}")
                    m.d.comb += got.eq(Cat(self.flash.cipo, byte[:7]))
                    with m.If(phase):  # rising edge: sample
                        m.d.sync += [byte.eq(got), nbits.eq(nbits + 1)]
                        if state == "Header":
                            # each header bit against the expected one, into a sticky flag
                            # (a byte compare in front of the state change was the iCEBreaker
                            # build's critical path); the flag is looked at after byte 15
                            expected_byte = Signal(8)
                            with m.Switch(header):
                                for i in range(16):
                                    with m.Case(i):
                                        m.d.comb += expected_byte.eq(expect[8 * i:8 * i + 8])
                            at = Signal(3)  # the bit now arriving, MSB first
                            m.d.comb += at.eq(~nbits[:3])
                            with m.If(self.flash.cipo != expected_byte.bit_select(at, 1)):
                                m.d.sync += bad.eq(1)
                        with m.If(nbits == 7):
                            m.d.sync += nbits.eq(0)
                            if state == "Header":
                                m.d.sync += header.eq(header + 1)
                                with m.If(header == 15):
                                    m.next = "Check"
                            else:
                                with m.Switch(row_byte):
                                    for i in range(nb):
                                        with m.Case(i):
                                            m.d.sync += row[8 * i:8 * i + 8].eq(got)
                                with m.If(row_byte == nb - 1):
                                    m.d.sync += row_byte.eq(0)
                                    m.next = "Write"
                                with m.Else():
                                    m.d.sync += row_byte.eq(row_byte + 1)
            with m.State("Check"):  # every header byte, the last one too; the clock pauses
                m.d.comb += self.flash.cs.eq(1)
                with m.If(bad):
                    m.next = "Error"
                with m.Else():
                    m.next = "Read"
            with m.State("Write"):  # the clock pauses low for this cycle
                m.d.comb += [self.flash.cs.eq(1), self.w_load.en.eq(1)]
                m.d.sync += row_index.eq(row_index + 1)
                with m.If(row_index + 1 == self._rows):
                    m.next = "Done"
                with m.Else():
                    m.next = "Read"
            with m.State("Done"):
                m.d.comb += self.done.eq(1)
            with m.State("Error"):
                m.d.comb += self.error.eq(1)
        return m


class LoadedEngine(wiring.Component):
    """An engine whose weights live in SPRAM, and the loader that fills them from flash.

    The engine (built with ``MemoryPlan(weights=RamKind.SPRAM)``) is held in reset until the
    loader is done; its streams are this component's, so a board top level (or a bench) uses
    it like the engine itself.

    Parameters
    ----------
    engine : Engine
        Built with SPRAM weights (it has a ``w_load`` port).
    rows : int
        Weight rows the engine's Program needs (``sum(weight_rows(program, P))``).
    wake_cycles : int
        :class:`FlashLoader`'s wait after the wake-up command.

    Members
    -------
    i_stream, o_logits, o_result : the engine's
    flash : Out(flash_signature())
    loaded : Out(1)
        The weights are in; the engine runs.
    error : Out(1)
        The flash holds no matching weight image.
    """

    def __init__(self, *, engine, rows: int, wake_cycles: int, offset: int = FLASH_OFFSET):
        if "w_load" not in engine.signature.members:
            self._MustUse__silence = True
            raise TypeError("the engine must be built with MemoryPlan(weights=RamKind.SPRAM) "
                            "to be loaded from flash")
        self._engine = engine
        self._loader = FlashLoader(rows=rows, row_bits=len(engine.w_load.data),
                                   wake_cycles=wake_cycles, offset=offset)
        members = engine.signature.members
        super().__init__({"i_stream": members["i_stream"], "o_logits": members["o_logits"],
                          "o_result": members["o_result"], "flash": Out(flash_signature()),
                          "loaded": Out(1), "error": Out(1)})

    @property
    def loader(self) -> FlashLoader:
        return self._loader

    def elaborate(self, platform):
        from amaranth.hdl import ResetInserter

        m = Module()
        m.submodules.loader = loader = self._loader
        m.submodules.engine = engine = ResetInserter({"sync": ~loader.done})(self._engine)
        wiring.connect(m, loader.flash, wiring.flipped(self.flash))
        m.d.comb += [engine.w_load.addr.eq(loader.w_load.addr),
                     engine.w_load.data.eq(loader.w_load.data),
                     engine.w_load.en.eq(loader.w_load.en),
                     self.loaded.eq(loader.done), self.error.eq(loader.error)]
        wiring.connect(m, wiring.flipped(self.i_stream), engine.i_stream)
        wiring.connect(m, engine.o_logits, wiring.flipped(self.o_logits))
        wiring.connect(m, engine.o_result, wiring.flipped(self.o_result))
        return m
