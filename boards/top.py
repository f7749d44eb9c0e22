"""The board top level: the engine, its clock and reset, a heartbeat, and a built-in self-test.

:class:`BoardTop` is what ``platform.build`` elaborates for a board (:mod:`bitspike.boards.build`):

- **Clock.** The board oscillator, through a PLL where the requested clock differs from it
  (ECP5 ``EHXPLLL`` from 25 MHz, iCE40 ``SB_PLL40_PAD`` from 12 MHz; :mod:`.pll` computes the
  dividers and refuses a frequency the PLL cannot make). The PLL output is constrained to the
  achieved frequency with ``platform.add_clock_constraint``, so nextpnr reports the engine
  clock's Fmax.
- **Reset.** Synchronous, from the board's reset button (two flip-flops to synchronise it) and
  the PLL's lock; held for :func:`reset_cycles` cycles after the button is released, the PLL
  locks, or the FPGA configures (at least 15 us: iCE40 block RAMs read as zero for about 3 us
  after configuration).
- **Heartbeat.** One LED toggles every half second (about 1 Hz): the clock runs.
- **Host link** (default, :mod:`bitspike.boards.link`): the engine served over the board's
  FTDI UART (:mod:`bitspike.boards.protocol`; ``bitspike board run``). The class LEDs show the
  low bits of the last inference's class, the match LED that the last reply was not an error.
- **Self-test** (:class:`SelfTest`, ``bitspike build --self-test``), for a board without a
  host: a ROM of sample images feeds the engine's ``i_stream`` one image after another,
  forever; each result is shown for a moment on the class LEDs (the class, bit 0 first) and the
  match LED is lit when the engine's class equals the golden model's expected class for that
  image.
- **Memories.** On ECP5 every engine memory is block RAM initialised by the bitstream. On the
  iCE40UP5K the weights and the event lists are in SPRAM (:mod:`bitspike.hw.memories`); the
  weights are copied from the SPI flash (the image ``bitspike build`` writes next to the
  bitstream, at :data:`~bitspike.boards.flash_loader.FLASH_OFFSET`) after every reset, with the
  engine held in reset until they are in (:class:`~bitspike.boards.flash_loader.LoadedEngine`).
"""

# No ``from __future__ import annotations``: wiring.Component reads real annotations.
import math

import numpy as np
from amaranth.hdl import Array, ClockDomain, ClockSignal, Const, Module, Mux, ResetSignal, Signal
from amaranth.lib import io, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import Out

from ..hw.config import weight_rows
from ..hw.memories import BLOCK_RAM_ATTRS, MemoryPlan, RamKind
from ..sw.errors import BitspikeError
from ..sw.program import Program
from .flash_loader import WAKE_SECONDS, LoadedEngine
from .link import DEFAULT_BAUD, LinkConfig, LinkedEngine
from .pll import PllSettings, ecp5_pll, ice40_pll, pll_instance
from .targets import Board, Family, get_board

__all__ = ["BoardTop", "SelfTest", "clock_plan", "reset_cycles"]

#: How long each self-test result stays on the LEDs, in seconds.
SHOW_SECONDS = 0.5


def reset_cycles(clock_hz: float) -> int:
    """Cycles the reset is held: 15 us (iCE40 block RAMs need 3 us after configuration, as
    Amaranth's own power-on reset allows), and never fewer than 16."""
    return max(16, math.ceil(15e-6 * clock_hz))


def clock_plan(board: Board | str, clock_mhz: float | None = None) -> PllSettings | None:
    """The PLL settings for ``clock_mhz`` on ``board`` (its default clock when ``None``), or
    ``None`` when the clock is the oscillator itself (no PLL).

    Raises
    ------
    PllError
        When the board's PLL cannot make the frequency (the message says what it can make).
    """
    board = get_board(board)
    mhz = board.default_clock_mhz if clock_mhz is None else clock_mhz
    if isinstance(mhz, bool) or not isinstance(mhz, (int, float)) or not mhz > 0:
        raise TypeError(f"clock_mhz must be a positive number, not {clock_mhz!r}")
    if math.isclose(mhz, board.oscillator_mhz):
        return None
    search = ecp5_pll if board.family is Family.ECP5 else ice40_pll
    return search(board.oscillator_mhz, mhz)


def _levels(program: Program, images) -> np.ndarray:
    """The images as a (N, pixels) int array of levels, checked by the golden model's own
    input check (:func:`bitspike.sw.golden.check_input`, as the RTL benches use it)."""
    import torch

    from ..sw.golden import check_input

    array = np.asarray(images)
    if array.ndim < 1 or len(array) == 0:
        raise BitspikeError("the self-test needs at least one sample image")
    levels = check_input(program, torch.from_numpy(array.astype(np.int64))).numpy()
    return levels.reshape(len(levels), -1)


class SelfTest(wiring.Component):
    """Streams a ROM of images through the engine forever and checks each class.

    Parameters
    ----------
    engine : bitspike.hw.engine.Engine
        The engine (untraced); its ``o_logits`` and ``o_result`` are always ready.
    images : array of int, shape (N, pixels)
        The input levels of each image, in the engine's flattened (C, H, W) order.
    expected : sequence of int
        The golden model's class of each image.
    show_cycles : int
        Cycles each result stays on the outputs before the next image is sent (0: at once).

    Members
    -------
    klass : Out(unsigned(4))
        The low four bits of the last result's class.
    match : Out(1)
        The last result's class equals its expected class.
    all_match : Out(1)
        Every result since reset matched (cleared by the first mismatch).
    results : Out(unsigned(32))
        Results received since reset.

    Costs one block RAM (or LUTs) for the image ROM, ``N * pixels`` words of the engine's
    input width, and about 100 LUTs.
    """

    klass: Out(4)
    match: Out(1)
    all_match: Out(1, init=1)
    results: Out(32)

    def __init__(self, *, engine, images, expected, show_cycles: int = 0):
        try:
            self._validate(engine, images, expected, show_cycles)
        except Exception:
            self._MustUse__silence = True  # refused before it could be used: no warning
            raise
        self._engine, self._show_cycles = engine, show_cycles
        self._images = np.asarray(images, dtype=np.int64)
        self._expected = [int(k) for k in expected]
        super().__init__()

    @staticmethod
    def _validate(engine, images, expected, show_cycles):
        if not isinstance(engine, wiring.Component) or not hasattr(engine, "i_stream"):
            raise TypeError(f"engine must be an Engine component, not {engine!r}")
        if hasattr(engine, "o_trace"):
            raise ValueError("the self-test drives an engine without a trace port (trace=False)")
        images = np.asarray(images, dtype=np.int64)
        if images.ndim != 2 or images.shape[0] == 0 or images.shape[1] == 0:
            raise ValueError(f"images must be a non-empty (N, pixels) array, not of shape "
                             f"{images.shape}")
        expected = [int(k) for k in expected]
        if any(k < 0 for k in expected):
            raise ValueError(f"expected classes must be non-negative, not {expected}")
        if len(expected) != len(images):
            raise ValueError(f"expected must hold one class per image: {len(expected)} classes "
                             f"for {len(images)} images")
        width = len(engine.i_stream.payload)
        if images.min() < 0 or images.max() >= 1 << width:
            raise ValueError(f"image levels must fit the engine's {width}-bit input, got "
                             f"{images.min()}..{images.max()}")
        if isinstance(show_cycles, bool) or not isinstance(show_cycles, int) or show_cycles < 0:
            raise TypeError(f"show_cycles must be a non-negative integer, not {show_cycles!r}")

    def elaborate(self, platform):
        m = Module()
        m.submodules.engine = engine = self._engine
        count, pixels = self._images.shape
        total = count * pixels
        width = len(engine.i_stream.payload)

        m.submodules.rom = rom = Memory(shape=width, depth=total, attrs=BLOCK_RAM_ATTRS,
                                        init=self._images.reshape(-1).tolist())
        rd = rom.read_port()  # synchronous: a block RAM; addressed one cycle ahead
        klass = engine.o_result.payload.klass
        k_bits = max(len(klass), max(self._expected).bit_length())
        expected = Array(Const(k, k_bits) for k in self._expected)

        addr = Signal(range(total))  # the pixel on offer
        pixel = Signal(range(pixels))
        image = Signal(range(count))
        sent = engine.i_stream.valid & engine.i_stream.ready
        m.d.comb += [
            rd.addr.eq(Mux(sent, Mux(addr == total - 1, 0, addr + 1), addr)),
            engine.i_stream.payload.eq(rd.data),
            engine.o_logits.ready.eq(1),
            engine.o_result.ready.eq(1),
        ]
        timer = Signal(range(max(2, self._show_cycles + 1)))
        with m.FSM(init="Prime"):
            with m.State("Prime"):  # one cycle for the ROM's first read after reset
                m.next = "Feed"
            with m.State("Feed"):
                m.d.comb += engine.i_stream.valid.eq(1)
                with m.If(sent):
                    m.d.sync += addr.eq(Mux(addr == total - 1, 0, addr + 1))
                    m.d.sync += pixel.eq(Mux(pixel == pixels - 1, 0, pixel + 1))
                    with m.If(pixel == pixels - 1):
                        m.next = "Wait"
            with m.State("Wait"):
                with m.If(engine.o_result.valid):
                    hit = klass == expected[image]
                    m.d.sync += [self.klass.eq(klass[:4]), self.match.eq(hit),
                                 self.results.eq(self.results + 1),
                                 image.eq(Mux(image == count - 1, 0, image + 1)),
                                 timer.eq(self._show_cycles)]
                    with m.If(~hit):
                        m.d.sync += self.all_match.eq(0)
                    m.next = "Show" if self._show_cycles else "Feed"
            with m.State("Show"):
                m.d.sync += timer.eq(timer - 1)
                with m.If(timer <= 1):
                    m.next = "Feed"
        return m


class BoardTop(wiring.Component):
    """The design ``platform.build`` elaborates for a board (module docstring).

    Parameters
    ----------
    board : Board or str
        The target board (:mod:`.targets`).
    program : Program
        The Program the engine runs (it initialises the engine's memories).
    config : EngineConfig
        The engine's configuration (``EngineConfig.for_program(program, lanes=P)``).
    images : array of int, shape (N, *program.input.shape)
        Sample input levels for the self-test (checked as the golden model checks inputs).
    expected : sequence of int
        The golden model's class for each image.
    clock_mhz : float, optional
        The requested engine clock (default: the board's :attr:`Board.default_clock_mhz`).
    show_seconds : float
        How long each self-test result stays on the LEDs.
    host_link : bool
        Serve the engine over the UART host link (default); ``False``: the LED self-test.
    baud : int
        The host link's UART rate.

    Raises
    ------
    PllError
        When the board's PLL cannot make ``clock_mhz``.
    EngineFitError, EngineUnsupported
        When the Program does not fit ``config`` or the engine does not run it.
    BitspikeError
        When the images do not match the Program's input.

    The component has no ports: everything it uses it requests from the platform.
    """

    def __init__(self, *, board, program: Program, config, images=None, expected=None,
                 clock_mhz: float | None = None, show_seconds: float = SHOW_SECONDS,
                 host_link: bool = True, baud: int = DEFAULT_BAUD):
        from ..hw.engine import Engine

        try:
            self._board = get_board(board)
            if not isinstance(program, Program):
                raise TypeError(f"program must be a Program, not {program!r}")
            if not host_link and (images is None or expected is None):
                raise TypeError("the self-test needs images and their expected classes")
            levels = None if host_link else _levels(program, images)  # before any engine
            self._pll = clock_plan(self._board, clock_mhz)
            self._clock_hz = 1e6 * (self._pll.output_mhz if self._pll else
                                    self._board.oscillator_mhz)
            if isinstance(show_seconds, bool) or not isinstance(show_seconds, (int, float)) \
                    or show_seconds < 0:
                raise TypeError(f"show_seconds must be a non-negative number, not "
                                f"{show_seconds!r}")
            # iCE40UP5K: weights and event lists in SPRAM, the weights loaded from the SPI
            # flash after every reset (bitspike.boards.flash_loader); ECP5: block RAM
            self._memory = MemoryPlan.for_family(self._board.family.value)
            self._engine = Engine(config=config, program=program, trace=False,
                                  memory=self._memory)
            self._driven = self._engine
            if self._memory.weights is RamKind.SPRAM:
                self._driven = LoadedEngine(
                    engine=self._engine, rows=sum(weight_rows(program, config.lanes)),
                    wake_cycles=max(1, round(WAKE_SECONDS * self._clock_hz)))
            self._link = self._selftest = None
            if host_link:
                self._link = LinkedEngine(engine=self._driven, link=LinkConfig(
                    program=program, engine_config=config, clock_hz=self._clock_hz, baud=baud))
            else:
                self._selftest = SelfTest(engine=self._driven, images=levels,
                                          expected=expected,
                                          show_cycles=round(show_seconds * self._clock_hz))
        except Exception:
            self._MustUse__silence = True  # refused before it could be used: no warning
            raise
        super().__init__({})

    @property
    def board(self) -> Board:
        return self._board

    @property
    def engine(self):
        return self._engine

    @property
    def host_link(self):
        """The :class:`~bitspike.boards.link.LinkedEngine`, or ``None`` (self-test)."""
        return self._link

    @property
    def memory(self) -> MemoryPlan:
        """Where the engine's weights and event lists live on this board."""
        return self._memory

    @property
    def pll(self) -> PllSettings | None:
        """The PLL settings, or ``None`` when the engine runs from the oscillator."""
        return self._pll

    @property
    def clock_mhz(self) -> float:
        """The engine clock actually made (the PLL's output, or the oscillator)."""
        return self._clock_hz / 1e6

    def elaborate(self, platform):
        if platform is None:
            raise TypeError("BoardTop needs a board platform (it requests pins); simulate "
                            "SelfTest instead")
        m = Module()
        board = self._board

        # --- clock: oscillator, PLL where it buys speed ---------------------------------------
        # keep: yosys names the clock net after this signal, which the constraint refers to
        clk = Signal(name="engine_clk", attrs={"keep": 1})
        locked = Signal()
        osc = platform.request(board.clock.name, board.clock.number, dir="-")
        if self._pll is not None and board.family is Family.ICE40:
            # SB_PLL40_PAD takes the oscillator's pad itself, not a buffered signal
            m.submodules.pll = pll_instance(self._pll, clk_in=osc.io, clk_out=clk, lock=locked)
        else:
            m.submodules.osc_buf = osc_buf = io.Buffer("i", osc)
            if self._pll is None:
                m.d.comb += [clk.eq(osc_buf.i), locked.eq(1)]
            else:
                m.submodules.pll = pll_instance(self._pll, clk_in=osc_buf.i, clk_out=clk,
                                                lock=locked)
        if self._pll is not None:
            platform.add_clock_constraint(clk, self._clock_hz)

        # --- reset: button (synchronised) and PLL lock, held for reset_cycles ----------------
        # One clock domain, so that the engine clock's net keeps the name constrained above;
        # the reset generator's registers are reset-less (their initial values are the
        # power-on reset).
        m.domains.sync = ClockDomain("sync")
        m.d.comb += ClockSignal("sync").eq(clk)
        m.submodules.button_buf = button = io.Buffer("i", platform.request(
            board.reset_button.name, board.reset_button.number, dir="-"))
        pressed = Signal()
        m.submodules.button_sync = FFSynchronizer(button.i, pressed, o_domain="sync")
        hold = reset_cycles(self._clock_hz)
        countdown = Signal(range(hold + 1), init=hold, reset_less=True)
        in_reset = Signal(init=1, reset_less=True)
        with m.If(pressed | ~locked):
            m.d.sync += countdown.eq(hold)
        with m.Elif(countdown != 0):
            m.d.sync += countdown.eq(countdown - 1)
        m.d.sync += in_reset.eq(countdown != 0)
        m.d.comb += ResetSignal("sync").eq(in_reset)

        # --- heartbeat: about 1 Hz -----------------------------------------------------------
        half_second = max(1, round(self._clock_hz / 2))
        beat_timer = Signal(range(half_second))
        beat = Signal()
        with m.If(beat_timer == half_second - 1):
            m.d.sync += [beat_timer.eq(0), beat.eq(~beat)]
        with m.Else():
            m.d.sync += beat_timer.eq(beat_timer + 1)

        # --- the engine: on the host link (the FTDI UART), or the self-test ------------------
        if self._link is not None:
            m.submodules.link = driver = self._link
            uart = platform.request(board.uart.name, board.uart.number, dir="-")
            m.submodules.uart_rx = rx = io.Buffer("i", uart.rx)
            m.submodules.uart_tx = tx = io.Buffer("o", uart.tx)
            m.d.comb += [driver.rx.eq(rx.i), tx.o.eq(driver.tx)]
            klass, match = driver.last_class, driver.last_ok
        else:
            m.submodules.selftest = driver = self._selftest
            klass, match = driver.klass, driver.match
        if isinstance(self._driven, LoadedEngine):  # the weights come from the SPI flash
            pins = platform.request("spi_flash_1x", 0, dir="-")
            flash = driver.flash if self._link is not None else self._driven.flash
            for name, sig in (("cs", flash.cs), ("clk", flash.clk), ("copi", flash.copi)):
                m.submodules[f"flash_{name}"] = buf = io.Buffer("o", getattr(pins, name))
                m.d.comb += buf.o.eq(sig)
            m.submodules.flash_cipo = cipo = io.Buffer("i", pins.cipo)
            m.d.comb += flash.cipo.eq(cipo.i)

        # --- LEDs -----------------------------------------------------------------------------
        def led(res):
            buf = io.Buffer("o", platform.request(res.name, res.number, dir="-"))
            m.submodules[f"{res.name}_{res.number}_buf"] = buf
            return buf.o

        for bit, res in enumerate(board.class_leds):
            m.d.comb += led(res).eq(klass[bit])
        m.d.comb += led(board.match_led).eq(match)
        m.d.comb += led(board.heartbeat_led).eq(beat)
        return m
