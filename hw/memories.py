"""Where the engine's large memories live, and a single-port RAM that can be iCE40 SPRAM.

The iCE40UP5K has 30 block RAMs of 4 kbit (120 kbit) and four single-ported 256 kbit SPRAMs
(``SB_SPRAM256KA``, 16 K x 16 bit) that the bitstream cannot initialise. The trained digits
network's weights alone are 128 kbit, so on that device the weights and the event lists go to
SPRAM: the event lists start empty anyway, and the weights are written once at start-up through
the engine's ``w_load`` port (the iCEBreaker's top level copies them from the SPI flash,
bitspike.boards.flash_loader). On ECP5 every memory is block RAM initialised by the bitstream.

Every engine, whatever its plan, drives its event lists through :class:`SinglePortRAM` with one
address for reads and writes, so the simulations (amaranth.sim and cocotb) prove the single-port
discipline SPRAM needs: a half of the event lists is either read (by the walker) or written (by
the list writer) in a cycle, never both.
"""

# No ``from __future__ import annotations``: wiring.Component reads real annotations.
import enum
from dataclasses import dataclass

from amaranth.hdl import ClockSignal, Const, Instance, Module, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

__all__ = ["BLOCK_RAM_ATTRS", "SPRAM_DEPTH", "SPRAM_WIDTH", "MemoryPlan", "RamKind",
           "SinglePortRAM", "spram_tiles"]

SPRAM_DEPTH, SPRAM_WIDTH = 16384, 16  # one SB_SPRAM256KA

#: Attributes that make yosys put a memory in block RAM: without them it builds a small ROM
#: (the parameter memories at a few dozen rows) from LUTs, which the iCE40UP5K has too few of.
BLOCK_RAM_ATTRS = {"ram_style": "block", "rom_style": "block"}


class RamKind(enum.Enum):
    """What a large memory is built from."""

    #: block RAM (ECP5 DP16KD, iCE40 SB_RAM40_4K), initialised by the bitstream
    BLOCK = "block"
    #: iCE40 SPRAM (SB_SPRAM256KA): single-ported, not initialised by the bitstream
    SPRAM = "spram"


@dataclass(frozen=True)
class MemoryPlan:
    """Where the weights and the event lists live.

    ``weights = RamKind.SPRAM`` gives the engine a ``w_load`` port and no initial weights: they
    must be written through it before the first input (the board's loader does).
    """

    weights: RamKind = RamKind.BLOCK
    events: RamKind = RamKind.BLOCK

    def __post_init__(self):
        for name in ("weights", "events"):
            if not isinstance(getattr(self, name), RamKind):
                raise TypeError(f"{name} must be a RamKind, not {getattr(self, name)!r}")

    @classmethod
    def for_family(cls, family: str) -> "MemoryPlan":
        """``"ice40"``: weights and event lists in SPRAM; ``"ecp5"`` (or None): block RAM."""
        if family == "ice40":
            return cls(weights=RamKind.SPRAM, events=RamKind.SPRAM)
        if family in ("ecp5", None):
            return cls()
        raise ValueError(f"unknown FPGA family {family!r}; known: ice40, ecp5")


def spram_tiles(width: int, depth: int) -> int:
    """``SB_SPRAM256KA`` tiles a ``depth`` x ``width`` memory takes (16 bits x 16 K each)."""
    return -(-width // SPRAM_WIDTH) * -(-depth // SPRAM_DEPTH)


def _is_ice40(platform) -> bool:
    device = getattr(platform, "device", "") or ""
    return device.upper().startswith("ICE40")


class SinglePortRAM(wiring.Component):
    """``depth`` words of ``width`` bits with one port: per cycle one read (its data on the next
    cycle) or one write, at ``addr``.

    Cost: a block RAM (``kind=BLOCK``) or ``ceil(width / 16) * ceil(depth / 16384)``
    ``SB_SPRAM256KA`` tiles (``kind=SPRAM`` on an iCE40 platform; elsewhere, such as in
    simulation, a behavioural memory without initial contents stands in for them).

    Parameters
    ----------
    width, depth : int
    init : sequence of int
        Initial contents (block RAM only).
    kind : RamKind

    Members
    -------
    addr : In(range(depth))
    w_data : In(width)
    w_en : In(1)
        Write ``w_data`` at ``addr`` this cycle (no read).
    r_data : Out(width)
        The word at the previous cycle's ``addr`` (undefined after a write cycle).

    Raises
    ------
    ValueError
        Initial contents for SPRAM, which the bitstream cannot initialise.
    """

    def __init__(self, *, width: int, depth: int, init=(), kind: RamKind = RamKind.BLOCK):
        if not isinstance(kind, RamKind):
            self._MustUse__silence = True
            raise TypeError(f"kind must be a RamKind, not {kind!r}")
        if kind is RamKind.SPRAM and any(init):
            self._MustUse__silence = True
            raise ValueError("SPRAM cannot be initialised by the bitstream: load its contents "
                             "at start-up (MemoryPlan.weights = RamKind.SPRAM adds the engine's "
                             "w_load port)")
        self._width, self._depth, self._init, self._kind = width, max(1, depth), init, kind
        super().__init__({"addr": In(range(max(2, self._depth))), "w_data": In(width),
                          "w_en": In(1), "r_data": Out(width)})

    def elaborate(self, platform):
        m = Module()
        if self._kind is RamKind.SPRAM and _is_ice40(platform):
            self._spram(m)
            return m
        m.submodules.mem = mem = Memory(shape=unsigned(self._width), depth=self._depth,
                                        init=list(self._init))
        w, r = mem.write_port(), mem.read_port()
        m.d.comb += [w.addr.eq(self.addr), w.data.eq(self.w_data), w.en.eq(self.w_en),
                     r.addr.eq(self.addr), r.en.eq(~self.w_en), self.r_data.eq(r.data)]
        return m

    def _spram(self, m):
        cols = -(-self._width // SPRAM_WIDTH)
        banks = -(-self._depth // SPRAM_DEPTH)
        bank = Signal(range(max(2, banks)))
        bank_q = Signal.like(bank)
        m.d.comb += bank.eq(self.addr >> 14)
        m.d.sync += bank_q.eq(bank)
        wide = Signal(cols * SPRAM_WIDTH)
        m.d.comb += wide.eq(self.w_data)
        outs = []
        for b in range(banks):
            out = Signal(cols * SPRAM_WIDTH, name=f"spram_out{b}")
            outs.append(out)
            for c in range(cols):
                m.submodules[f"spram_{b}_{c}"] = Instance(
                    "SB_SPRAM256KA",
                    i_ADDRESS=self.addr[:14], i_DATAIN=wide[c * 16:(c + 1) * 16],
                    i_MASKWREN=Const(0b1111, 4), i_WREN=self.w_en & (bank == b),
                    i_CHIPSELECT=Const(1, 1), i_CLOCK=ClockSignal(), i_STANDBY=Const(0, 1),
                    i_SLEEP=Const(0, 1), i_POWEROFF=Const(1, 1),  # POWEROFF is active low
                    o_DATAOUT=out[c * 16:(c + 1) * 16])
        with m.Switch(bank_q):
            for b in range(banks):
                with m.Case(b):
                    m.d.comb += self.r_data.eq(outs[b])
