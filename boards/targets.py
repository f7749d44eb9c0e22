"""The boards bitspike builds for: their FPGA, its resources, clocks and the pins the top uses.

Each :class:`Board` names its amaranth-boards platform and records what the build and its report
need: the device totals the utilisation is measured against (the figures nextpnr prints in its
"Device utilisation" table for that device), the board oscillator, the clock requested when the
user gives none, and which platform resources are the reset button, the LEDs (with the role of
each in the self-test) and the FTDI UART (reserved for the host link).

>>> from bitspike.boards.targets import get_board
>>> get_board("icebreaker").oscillator_mhz
12.0
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from enum import Enum

from ..sw.errors import BitspikeError

__all__ = ["BOARDS", "Board", "BoardError", "Family", "Resource", "board_names", "get_board"]


class BoardError(BitspikeError):
    """An unknown board name, or a platform that cannot be loaded."""


class Family(Enum):
    """FPGA families the flow targets (the nextpnr architecture of each)."""

    ECP5 = "ecp5"
    ICE40 = "ice40"


@dataclass(frozen=True)
class Resource:
    """A platform resource by name and number, as ``platform.request(name, number)`` takes it."""

    name: str
    number: int = 0


@dataclass(frozen=True)
class Board:
    """One supported board.

    Parameters
    ----------
    name : str
        The registry key and the ``--board`` value (``"ulx3s-85f"``).
    title : str
        A human-readable name for reports.
    platform_path : str
        ``"module:Class"`` of the amaranth-boards platform (imported on first use, so that
        listing boards does not import Amaranth).
    family : Family
        ECP5 or iCE40.
    device : str
        The FPGA part, as nextpnr knows it.
    luts, ffs : int
        LUT4s and flip-flops of the device (ECP5: ``TRELLIS_COMB`` and ``TRELLIS_FF``; iCE40:
        logic cells ``ICESTORM_LC``, each one LUT4 and one flip-flop).
    brams, bram_bits : int
        Block RAMs (ECP5 ``DP16KD``, iCE40 ``SB_RAM40_4K``) and the bits of each.
    sprams, spram_bits : int
        Single-port RAMs (iCE40UP5K ``SB_SPRAM256KA``; none on ECP5) and the bits of each.
    dsps : int
        Multipliers (ECP5 ``MULT18X18D``, iCE40UP5K ``SB_MAC16``).
    oscillator_mhz : float
        The board's clock oscillator.
    default_clock_mhz : float
        The engine clock requested when the user gives none.
    clock : Resource
        The oscillator's input pin.
    reset_button : Resource
        The button that resets the design (active when pressed, after the platform's inversion).
    leds : tuple[Resource, ...]
        The LEDs in use, in the order the self-test assigns them: :attr:`class_leds` show the
        class (bit 0 first), then :attr:`match_led` and :attr:`heartbeat_led`.
    uart : Resource
        The FTDI UART (the host link's port).
    usb_ids : tuple[tuple[int, int], ...]
        USB vendor and product IDs of the board's programming interface (FTDI), to tell
        whether the board is connected before programming it.
    loader_args : tuple[str, ...]
        openFPGALoader's board arguments (``-b ulx3s``).
    extra_resources : str
        Name of a platform attribute holding resources to add before requesting LEDs (the
        iCEBreaker's break-off PMOD, which carries five of its seven LEDs), or ``""``.
    """

    name: str
    title: str
    platform_path: str
    family: Family
    device: str
    luts: int
    ffs: int
    brams: int
    bram_bits: int
    sprams: int
    spram_bits: int
    dsps: int
    oscillator_mhz: float
    default_clock_mhz: float
    clock: Resource
    reset_button: Resource
    class_leds: tuple[Resource, ...]
    match_led: Resource
    heartbeat_led: Resource
    uart: Resource
    usb_ids: tuple[tuple[int, int], ...]
    loader_args: tuple[str, ...]
    extra_resources: str = ""

    def platform_class(self) -> type:
        """The amaranth-boards platform class (imported now)."""
        module, _, cls = self.platform_path.partition(":")
        try:
            return getattr(importlib.import_module(module), cls)
        except (ImportError, AttributeError) as error:
            raise BoardError(f"board {self.name}: cannot load {self.platform_path} ({error}); "
                             "install the package amaranth-boards") from None

    def platform(self):
        """A new platform instance, with :attr:`extra_resources` added."""
        platform = self.platform_class()()
        if self.extra_resources:
            platform.add_resources(getattr(platform, self.extra_resources))
        return platform

    @property
    def bram_total_bits(self) -> int:
        return self.brams * self.bram_bits

    @property
    def spram_total_bits(self) -> int:
        return self.sprams * self.spram_bits

    def to_dict(self) -> dict:
        return {"name": self.name, "title": self.title, "family": self.family.value,
                "device": self.device, "luts": self.luts, "ffs": self.ffs,
                "brams": self.brams, "bram_bits": self.bram_bits, "sprams": self.sprams,
                "spram_bits": self.spram_bits, "dsps": self.dsps,
                "oscillator_mhz": self.oscillator_mhz,
                "default_clock_mhz": self.default_clock_mhz}


_ULX3S_85F = Board(
    name="ulx3s-85f", title="Radiona ULX3S (LFE5U-85F)",
    platform_path="amaranth_boards.ulx3s:ULX3S_85F_Platform", family=Family.ECP5,
    device="LFE5U-85F",
    # nextpnr-ecp5 0.11.1 "Device utilisation" for --85k: TRELLIS_COMB 83640, TRELLIS_FF 83640,
    # DP16KD 208, MULT18X18D 156
    luts=83_640, ffs=83_640, brams=208, bram_bits=18 * 1024, sprams=0, spram_bits=0, dsps=156,
    oscillator_mhz=25.0, default_clock_mhz=50.0, clock=Resource("clk25"),
    # PWR is the board's reset-style button (active low; the platform inverts it)
    reset_button=Resource("button_pwr"),
    class_leds=tuple(Resource("led", i) for i in range(4)),
    match_led=Resource("led", 7), heartbeat_led=Resource("led", 6),
    uart=Resource("uart"),
    usb_ids=((0x0403, 0x6015),),  # FTDI FT231X on the US1 port
    loader_args=("-b", "ulx3s"))

_ICEBREAKER = Board(
    name="icebreaker", title="1BitSquared iCEBreaker (iCE40UP5K)",
    platform_path="amaranth_boards.icebreaker:ICEBreakerPlatform", family=Family.ICE40,
    device="iCE40UP5K",
    # nextpnr-ice40 0.11.1 "Device utilisation" for --up5k: ICESTORM_LC 5280, ICESTORM_RAM 30,
    # ICESTORM_SPRAM 4, ICESTORM_DSP 8
    luts=5_280, ffs=5_280, brams=30, bram_bits=4 * 1024, sprams=4, spram_bits=256 * 1024,
    dsps=8, oscillator_mhz=12.0, default_clock_mhz=24.0, clock=Resource("clk12"),
    reset_button=Resource("button"),
    # LEDs 2..6 sit on the break-off PMOD (attached to PMOD2 as shipped); 0 red, 1 green
    class_leds=tuple(Resource("led", i) for i in range(2, 6)),
    match_led=Resource("led", 1), heartbeat_led=Resource("led", 0),
    uart=Resource("uart"),
    usb_ids=((0x0403, 0x6010),),  # FTDI FT2232H
    loader_args=("-b", "ice40_generic"), extra_resources="break_off_pmod")

#: The supported boards by ``--board`` name.
BOARDS: dict[str, Board] = {b.name: b for b in (_ULX3S_85F, _ICEBREAKER)}


def board_names() -> list[str]:
    """The ``--board`` names, sorted."""
    return sorted(BOARDS)


def get_board(board: str | Board) -> Board:
    """The :class:`Board` for a name (a :class:`Board` is returned as it is).

    Raises
    ------
    BoardError
        For a name that is not in :data:`BOARDS` (the message lists the names).
    """
    if isinstance(board, Board):
        return board
    if not isinstance(board, str):
        raise TypeError(f"board must be a board name or a Board, not {board!r}")
    try:
        return BOARDS[board.lower()]
    except KeyError:
        raise BoardError(f"unknown board {board!r}: choose one of "
                         f"{', '.join(board_names())}") from None
