"""The board budget: what an engine will use of a board, estimated before synthesis.

``estimate(config, board)`` turns an :class:`~bitspike.hw.config.EngineConfig` into the
LUT4s, flip-flops, block RAMs, SPRAMs and multipliers it will take on the board's FPGA, and
:func:`check_budget` refuses a Program or a lane count that does not fit, before any tool runs:
naming the resource, the need and the capacity, and the largest lane count that fits.

Memories are counted exactly as yosys maps them (``memory_libmap``), from the engine's own
memory table (:meth:`~bitspike.hw.config.EngineConfig.memories`) and the board's memory plan
(:class:`~bitspike.hw.memories.MemoryPlan`): a memory of ``depth`` words of ``width`` bits takes
the fewest block RAMs over the RAM's aspect ratios, ``ceil(width / w) * ceil(depth / d)``
(ECP5 DP16KD: 16384 x 1 ... 1024 x 18, and 512 x 36 with one read and one write port; iCE40
SB_RAM40_4K: 2048 x 2 ... 256 x 16), and an SPRAM memory ``ceil(width / 16) *
ceil(depth / 16384)`` SB_SPRAM256KA. The engine asks for block RAM (``BLOCK_RAM_ATTRS``) for
its parameter memories, list lengths and the self-test ROM; otherwise, on ECP5, a memory of at
most 16 words, or one that fits in at most 32 16 x 4 distributed RAMs (TRELLIS_DPR16X4),
becomes distributed RAM (counted as logic); the combinationally read layer table becomes logic
on both. The count is an upper
bound: yosys drops memory bits that are constant in a Program (thresholds that never use their
top bit) and mixes aspect ratios, so a build can take a block RAM or two less.

Logic is a model fitted to measured builds of the board top (engine, self-test, PLL, reset,
heartbeat; on the iCEBreaker the flash loader): a fixed part plus a part per lane that grows
with the accumulator width, plus the list scanner's row window. :data:`LOGIC_MODEL` holds the
coefficients and docs/boards.md the builds they were fitted to and the model's error.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..hw.memories import MemoryPlan, RamKind, spram_tiles
from ..sw.errors import BitspikeError
from .targets import Board, Family, get_board

__all__ = ["LOGIC_MODEL", "Budget", "BudgetError", "MemoryUse", "bram_tiles", "check_budget",
           "estimate", "largest_lanes"]

#: Block RAM aspect ratios (width, depth) yosys maps to, per family.
BRAM_SHAPES = {
    Family.ECP5: ((1, 16384), (2, 8192), (4, 4096), (9, 2048), (18, 1024), (36, 512)),
    Family.ICE40: ((2, 2048), (4, 1024), (8, 512), (16, 256)),
}
#: An ECP5 memory that takes at most this many 16 x 4 distributed RAMs (TRELLIS_DPR16X4)
#: becomes distributed RAM: yosys's cost of a DP16KD is about that of 32 of them
DISTRIBUTED_CELLS = 32
#: Lanes tried when looking for the largest that fits.
MAX_LANES = 64


@dataclass(frozen=True)
class LogicModel:
    """LUT4s (ECP5: TRELLIS_COMB; iCE40: logic cells, ICESTORM_LC) and flip-flops of a build:
    ``fixed + (per_lane_bit + rate * per_rate_lane_bit) * lanes * acc_bits + per_window_bit
    * window_bits``, ``rate`` 1 when the engine has the rate mode (its integrate-and-fire
    units and their registers, per lane)."""

    lut_fixed: float
    lut_per_lane_bit: float
    lut_per_window_bit: float
    lut_per_rate_lane_bit: float
    ff_fixed: float
    ff_per_lane_bit: float
    ff_per_window_bit: float
    ff_per_rate_lane_bit: float

    def luts(self, lanes: int, acc_bits: int, window_bits: int, rate: bool = False) -> int:
        per_lane = self.lut_per_lane_bit + (self.lut_per_rate_lane_bit if rate else 0)
        return round(self.lut_fixed + per_lane * lanes * acc_bits
                     + self.lut_per_window_bit * window_bits)

    def ffs(self, lanes: int, acc_bits: int, window_bits: int, rate: bool = False) -> int:
        per_lane = self.ff_per_lane_bit + (self.ff_per_rate_lane_bit if rate else 0)
        return round(self.ff_fixed + per_lane * lanes * acc_bits
                     + self.ff_per_window_bit * window_bits)


#: Fitted (least squares in the lanes) to the builds of the trained digits-cnn Program listed
#: in docs/boards.md ("The board budget"): ULX3S-85F at P = 2, 4, 8, 16 and iCEBreaker at
#: P = 1, 2, 3, 4 (nextpnr's TRELLIS_COMB and ICESTORM_LC, yosys's flip-flops); the row-window
#: coefficients from synthesising the list scanner alone at 288, 576 and 1,152 window bits;
#: the rate mode's from the srp build with the host link on the ULX3S at P = 8, mapped by abc9
#: (scaled to the iCE40 by the ratio of the two families' per-lane coefficients: no rate build
#: fits the iCEBreaker to measure).
LOGIC_MODEL = {
    Family.ECP5: LogicModel(lut_fixed=2910, lut_per_lane_bit=24.1, lut_per_window_bit=3.1,
                            lut_per_rate_lane_bit=15.0, ff_fixed=897, ff_per_lane_bit=5.33,
                            ff_per_window_bit=1.02, ff_per_rate_lane_bit=1.2),
    Family.ICE40: LogicModel(lut_fixed=2977, lut_per_lane_bit=28.3, lut_per_window_bit=3.3,
                             lut_per_rate_lane_bit=17.6, ff_fixed=1165, ff_per_lane_bit=6.49,
                             ff_per_window_bit=1.02, ff_per_rate_lane_bit=1.5),
}


#: The UART host link (boards/link.py) over the self-test it replaces, which the fits above
#: include: measured as the difference between host-link and self-test builds of digits-cnn
#: (docs/boards.md "The board budget").
LINK_LOGIC = {Family.ECP5: (540, 270), Family.ICE40: (660, 260)}


class BudgetError(BitspikeError):
    """The engine would not fit the board (found before synthesis)."""


def _kbit(bits: int) -> str:
    return f"{bits / 1024:,.1f} kbit" if bits < 10 * 1024 else f"{bits / 1024:,.0f} kbit"


def bram_tiles(family: Family, width: int, depth: int) -> int:
    """Block RAMs a ``depth`` x ``width`` memory takes (the fewest over the aspect ratios)."""
    return min(-(-width // w) * -(-depth // d) for w, d in BRAM_SHAPES[family])


@dataclass(frozen=True)
class MemoryUse:
    """One memory of the build and what it takes: ``kind`` is ``"block"`` (``tiles`` block
    RAMs), ``"spram"`` (``tiles`` SPRAMs), ``"distributed"`` (ECP5 LUT RAM) or ``"logic"``
    (read combinationally: registers and multiplexers)."""

    name: str
    width: int
    depth: int
    count: int
    kind: str
    tiles: int

    @property
    def bits(self) -> int:
        return self.count * self.width * self.depth


@dataclass(frozen=True)
class Budget:
    """What a build will use of ``board`` (estimated), against the device's totals."""

    board: str
    lanes: int
    luts: int
    ffs: int
    brams: int
    sprams: int
    dsps: int
    luts_total: int
    ffs_total: int
    brams_total: int
    sprams_total: int
    dsps_total: int
    memories: tuple[MemoryUse, ...]

    def shortfalls(self) -> list[str]:
        """One line per resource the build needs more of than the device has."""
        out = []
        for key, what in (("brams", "block RAMs"), ("sprams", "SPRAMs"),
                          ("luts", "LUT4s (logic cells)"), ("ffs", "flip-flops"),
                          ("dsps", "multipliers")):
            need, have = getattr(self, key), getattr(self, key + "_total")
            if need > have:
                used = [m for m in self.memories if m.tiles and m.kind == {
                    "brams": "block", "sprams": "spram"}.get(key)]
                detail = ""
                if used:
                    big = sorted(used, key=lambda m: -m.tiles * m.count)[:3]
                    detail = " (" + ", ".join(
                        f"{m.name} {m.count * m.tiles} for {_kbit(m.bits)}"
                        for m in big) + ")"
                elif key in ("luts", "ffs"):
                    detail = " (estimated by the logic model of docs/boards.md)"
                out.append(f"{what}: needs {need:,}{detail} but the {self.board} has {have:,}")
        return out

    @property
    def fits(self) -> bool:
        return not self.shortfalls()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["memories"] = [asdict(m) | {"bits": m.bits} for m in self.memories]
        d["fits"] = self.fits
        return d


def _memory_uses(config, family: Family, plan: MemoryPlan, extra) -> list[MemoryUse]:
    kinds = {"weights": plan.weights, "event_lists": plan.events}
    uses = []
    shapes = [(name, s.width, s.depth, s.count, s.read, s.style)
              for name, s in config.memories().items()] + list(extra)
    for name, width, depth, count, read, style in shapes:
        if count == 0:
            continue
        if read == "comb":
            uses.append(MemoryUse(name, width, depth, count, "logic", 0))
        elif kinds.get(name) is RamKind.SPRAM:
            uses.append(MemoryUse(name, width, depth, count, "spram",
                                  spram_tiles(width, depth)))
        elif family is Family.ECP5 and style != "block" and (depth <= 16
                                        or -(-depth // 16) * -(-width // 4) <= DISTRIBUTED_CELLS):
            uses.append(MemoryUse(name, width, depth, count, "distributed", 0))
        else:
            uses.append(MemoryUse(name, width, depth, count, "block",
                                  bram_tiles(family, width, depth)))
    return uses


def window_bits(config) -> int:
    """Bits of the list scanner's row window (hw/walker.py: ``W_ROWS`` bitmap rows)."""
    from ..hw.walker import W_ROWS
    return W_ROWS * (config.max_t << config.list_field_bits()["column"])


def link_memories(config, pixels: int, classes: int) -> list[tuple]:
    """The host link's memories (boards/link.py): the input buffer, the logit buffer and the
    INFO ROM, all block RAM."""
    from ..hw.firing import logit_layout
    from .protocol import INFO_LENGTH

    logit_bits = logit_layout(config)["value"].shape.width
    return [("link_input_buffer", config.max_t, max(2, pixels), 1, "sync", "block"),
            ("link_logits", logit_bits, max(2, classes), 1, "sync", "block"),
            ("link_info", 8, INFO_LENGTH, 1, "sync", "block")]


def estimate(config, board: Board | str, *, memory: MemoryPlan | None = None,
             self_test_words: int = 0, self_test_width: int = 0,
             link: tuple[int, int] | None = None) -> Budget:
    """What the board top with an engine of ``config`` will use of ``board``.

    ``memory`` defaults to the board family's plan (:meth:`MemoryPlan.for_family`);
    ``self_test_words`` x ``self_test_width`` is the self-test image ROM (block RAM);
    ``link``: the board top has the host link instead, for ``(pixels, classes)``.
    """
    board = get_board(board)
    plan = memory or MemoryPlan.for_family(board.family.value)
    extra = []
    if self_test_words and link is None:
        extra.append(("self_test_images", self_test_width, self_test_words, 1, "sync", "block"))
    link_luts = link_ffs = 0
    if link is not None:
        extra += link_memories(config, *link)
        link_luts, link_ffs = LINK_LOGIC[board.family]
    uses = _memory_uses(config, board.family, plan, extra)
    model = LOGIC_MODEL[board.family]
    window, rate = window_bits(config), "rate" in config.modes
    return Budget(
        board=board.name, lanes=config.lanes,
        luts=model.luts(config.lanes, config.acc_bits, window, rate) + link_luts,
        ffs=model.ffs(config.lanes, config.acc_bits, window, rate) + link_ffs,
        brams=sum(u.count * u.tiles for u in uses if u.kind == "block"),
        sprams=sum(u.count * u.tiles for u in uses if u.kind == "spram"),
        dsps=0,  # accumulate-only: the engine has no multiplier (tests/test_hw_engine.py)
        luts_total=board.luts, ffs_total=board.ffs, brams_total=board.brams,
        sprams_total=board.sprams, dsps_total=board.dsps, memories=tuple(uses))


def _budget(program, board: Board, lanes: int, images: int, host_link: bool) -> Budget:
    from ..hw.config import EngineConfig
    config = EngineConfig.for_program(program, lanes=lanes)
    pixels = 1
    for n in program.input.shape:
        pixels *= int(n)
    if host_link:
        return estimate(config, board, link=(pixels, int(program.classes)))
    # the self-test image ROM (boards/top.py): one word of the engine's input per pixel
    return estimate(config, board, self_test_words=images * pixels,
                    self_test_width=config.max_t)


def largest_lanes(program, board: Board | str, *, images: int = 8,
                  max_lanes: int = MAX_LANES, host_link: bool = True) -> int | None:
    """The most lanes (up to ``max_lanes``) whose build of ``program`` fits ``board`` by the
    budget, or ``None`` when not even one lane fits."""
    board = get_board(board)
    best = None
    for lanes in range(1, max_lanes + 1):
        if not _budget(program, board, lanes, images, host_link).fits:
            break  # every resource grows with the lanes
        best = lanes
    return best


def check_budget(program, board: Board | str, *, lanes: int, images: int = 8,
                 host_link: bool = True) -> Budget:
    """The budget of ``program`` on ``board`` with ``lanes`` lanes and the host link (or the
    self-test with ``images`` images); raises :class:`BudgetError` when it does not fit.

    Raises
    ------
    BudgetError
        Naming each resource that does not fit (need and capacity) and the largest lane
        count that fits, or that none does (and why: the memory that alone is too large).
    """
    board = get_board(board)
    budget = _budget(program, board, lanes, images, host_link)
    problems = budget.shortfalls()
    if not problems:
        return budget
    best = largest_lanes(program, board, images=images, host_link=host_link)
    if best is not None:
        advice = f"use --lanes {best} (the most that fit this board)"
    else:
        advice = ("no lane count fits: the Program is too large for this board; choose a "
                  "larger board or a smaller network (fewer channels, or fewer weight bits "
                  "with bitspike convert --weight-bits)")
    raise BudgetError(f"the engine for this Program does not fit the {board.title} with "
                      f"P = {lanes}: " + "; ".join(problems) + f"; {advice}")
