"""The board budget (bitspike.boards.budget): memories counted as yosys maps them, the logic
model, refusals before synthesis, the default lane count. The budget against real builds is
checked in the synth tests of tests/test_boards.py."""

from __future__ import annotations

import re
import time

import pytest
import torch
from amaranth.back import rtlil

from bitspike.boards.budget import (
    BudgetError,
    bram_tiles,
    check_budget,
    estimate,
    largest_lanes,
)
from bitspike.boards.build import build_bitstream, default_lanes
from bitspike.boards.targets import Family, get_board
from bitspike.hw.config import EngineConfig
from bitspike.hw.engine import Engine
from bitspike.hw.memories import MemoryPlan
from bitspike.hw.walker import QUEUE_DEPTH
from bitspike.sw.convert import convert_model
from bitspike.sw.data import Normalization
from bitspike.sw.models import build_model
from bitspike.sw.rate import convert_rate

from .test_cli import run_cli

NORM = Normalization(16, (0.0,), (0.4,))


@pytest.fixture(scope="module")
def digits_cnn():
    torch.manual_seed(0)
    return convert_model(build_model("digits-cnn", levels=15).eval(), input_shape=(1, 8, 8),
                         normalization=NORM)


@pytest.fixture(scope="module")
def vgg_small():
    torch.manual_seed(0)
    return convert_model(build_model("vgg-small", levels=7).eval(), input_shape=(3, 32, 32),
                         normalization=Normalization(255, (0.0,) * 3, (0.25,) * 3))


def test_block_ram_tiles_take_the_best_aspect_ratio():
    # ECP5 DP16KD: 1024 x 18 holds 512 x 14; 4096 x 4 three times holds 4096 x 11
    assert bram_tiles(Family.ECP5, 14, 512) == 1
    assert bram_tiles(Family.ECP5, 11, 4096) == 3
    assert bram_tiles(Family.ECP5, 64, 2002) == 8  # 512 x 36: 2 wide, 4 deep
    # iCE40 SB_RAM40_4K: 256 x 16
    assert bram_tiles(Family.ICE40, 48, 8) == 3
    assert bram_tiles(Family.ICE40, 14, 512) == 2
    assert bram_tiles(Family.ICE40, 5, 512) == 1  # 512 x 8


def test_memory_table_is_what_the_engine_builds(digits_cnn):
    """Every memory the elaborated engine declares (RTLIL ``memory width W size D``) is in
    EngineConfig.memories() with that width and depth, and the other way round."""
    for lanes, plan in ((2, MemoryPlan()), (3, MemoryPlan.for_family("ice40"))):
        config = EngineConfig.for_program(digits_cnn, lanes=lanes)
        text = rtlil.convert(Engine(config=config, program=digits_cnn, memory=plan),
                             name="engine")
        found = {}
        for width, size, name in re.findall(r"^\s*memory width (\d+) size (\d+) (\S+)$", text,
                                            re.MULTILINE):
            if name.endswith("storage") and int(size) == QUEUE_DEPTH:
                # the scanner's queue (a SyncFIFO): registers, in the logic model
                assert int(width) * int(size) < 1024
                continue
            found.setdefault((int(width), int(size)), []).append(name)
        expected = {}
        for name, shape in config.memories().items():
            for _ in range(shape.count):
                expected.setdefault((shape.width, shape.depth), []).append(name)
        assert {k: len(v) for k, v in found.items()} == {k: len(v) for k, v in expected.items()}


def test_digits_cnn_on_the_icebreaker(digits_cnn):
    config = EngineConfig.for_program(digits_cnn, lanes=2)
    budget = estimate(config, "icebreaker", self_test_words=8 * 64, self_test_width=6)
    kinds = {m.name: m.kind for m in budget.memories}
    assert kinds["weights"] == kinds["event_lists"] == "spram" and kinds["layers"] == "logic"
    assert kinds["bias"] == kinds["list_lengths"] == kinds["nonempty_bitmaps"] == "block"
    # weights 2 x 8 bits wide (one tile), event lists one tile per half
    assert budget.sprams == 3 and budget.dsps == 0
    # lengths 2 x 2, bitmaps 2 x 3, bias 2, threshold 2, self-test images 1
    assert budget.brams == 15
    assert budget.fits and budget.luts <= 5_280


def test_digits_cnn_on_the_ulx3s_keeps_small_memories_in_lut_ram(digits_cnn):
    budget = estimate(EngineConfig.for_program(digits_cnn, lanes=8), "ulx3s-85f")
    kinds = {m.name: m.kind for m in budget.memories}
    assert kinds["nonempty_bitmaps"] == "distributed" and kinds["weights"] == "block"
    assert budget.sprams == 0 and budget.fits


def test_vgg_small_is_refused_on_the_icebreaker_before_synthesis(vgg_small, tmp_path):
    start = time.perf_counter()
    with pytest.raises(BudgetError) as error:
        build_bitstream(vgg_small, "icebreaker", lanes=2, out_dir=tmp_path / "b",
                        progress=False)
    text = str(error.value)
    assert re.search(r"SPRAMs: needs \d+ \(weights \d+ for [\d,]+ kbit.*\) but the icebreaker "
                     r"has 4", text), text
    assert re.search(r"block RAMs: needs \d+ .* but the icebreaker has 30", text), text
    assert "no lane count fits" in text
    assert time.perf_counter() - start < 30
    assert not (tmp_path / "b").exists()  # no tool ran, nothing was written
    assert largest_lanes(vgg_small, "icebreaker") is None


def test_too_many_lanes_are_refused_with_the_largest_that_fits(digits_cnn):
    """With the host link the iCEBreaker holds one lane of digits-cnn; with the self-test
    (no link) two."""
    with pytest.raises(BudgetError, match=r"with P = 6: .*LUT4s \(logic cells\): needs "
                                          r"[\d,]+ \(estimated .*\) but the icebreaker has "
                                          r"5,280.*use --lanes 1 "):
        check_budget(digits_cnn, "icebreaker", lanes=6)
    assert check_budget(digits_cnn, "icebreaker", lanes=1).fits
    with pytest.raises(BudgetError, match="use --lanes 2 "):
        check_budget(digits_cnn, "icebreaker", lanes=6, host_link=False)
    assert check_budget(digits_cnn, "icebreaker", lanes=2, host_link=False).fits


def test_the_host_link_adds_its_memories_and_logic(digits_cnn):
    config = EngineConfig.for_program(digits_cnn, lanes=1)
    with_link = estimate(config, "icebreaker", link=(64, 10))
    without = estimate(config, "icebreaker")
    names = {m.name: m for m in with_link.memories}
    assert {"link_input_buffer", "link_logits", "link_info"} <= set(names)
    assert names["link_input_buffer"].depth == 64 and names["link_logits"].depth == 10
    link = [names[n] for n in ("link_input_buffer", "link_logits", "link_info")]
    assert all(m.kind == "block" and m.tiles >= 1 for m in link)
    assert with_link.brams == without.brams + sum(m.tiles for m in link)
    assert with_link.luts > without.luts and with_link.ffs > without.ffs


def test_default_lanes_are_the_most_that_fit(digits_cnn):
    assert default_lanes(digits_cnn, "icebreaker") == largest_lanes(digits_cnn,
                                                                    "icebreaker") == 1
    assert default_lanes(digits_cnn, "icebreaker", host_link=False) == 2  # the self-test
    # the ULX3S holds more lanes than digits-cnn has output channels in any layer (32)
    assert largest_lanes(digits_cnn, "ulx3s-85f") > 32
    assert default_lanes(digits_cnn, "ulx3s-85f") == 32


def test_rate_mode_adds_the_initial_potentials():
    torch.manual_seed(2)
    rate, _ = convert_rate(build_model("digits-cnn", levels=15).eval(), method="qcfs", steps=4,
                           input_shape=(1, 8, 8), normalization=NORM)
    names = {m.name for m in estimate(EngineConfig.for_program(rate, lanes=2),
                                      "ulx3s-85f").memories}
    assert "v_init" in names


def test_budget_is_in_the_cli_refusal(vgg_small, tmp_path, capsys):
    from bitspike.sw.images import write_bundle
    write_bundle(vgg_small, tmp_path / "vgg")
    rc, _, err = run_cli(capsys, "build", tmp_path / "vgg", "--board", "icebreaker",
                         "--out", tmp_path / "b")
    assert rc == 1 and "SPRAMs: needs" in err and "no lane count fits" in err
    assert get_board("icebreaker").sprams == 4
