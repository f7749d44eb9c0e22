"""The iCEBreaker's weight path: SPI flash -> FlashLoader -> SPRAM weights -> exact inferences."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from amaranth.sim import Simulator

from bitspike.boards.flash_loader import (
    FLASH_OFFSET,
    FlashLoader,
    LoadedEngine,
    weight_image,
)
from bitspike.hw.config import EngineConfig, pack_weights, weight_rows
from bitspike.hw.engine import Engine
from bitspike.hw.memories import MemoryPlan, RamKind, SinglePortRAM
from bitspike.sim.engine_sim import run_engine
from bitspike.sw.cycles import engine_cycles
from bitspike.sw.golden import run_program

from .programs import dense_chain


def flash_model(flash, image: bytes, offset: int, log: list):
    """A 25-series SPI flash in mode 0: command bits in on rising clock edges, data bits out on
    falling edges after a read command (0x03 + 24-bit address). Logs each command's bytes."""
    memory = bytearray(offset + len(image))
    memory[offset:] = image

    async def model(ctx):
        prev_clk = prev_cs = 0
        bits = nbits = 0
        cmd, reading, addr, pos = [], False, 0, 0
        while True:
            await ctx.tick()
            cs, clk, copi = ctx.get(flash.cs), ctx.get(flash.clk), ctx.get(flash.copi)
            if cs and not prev_cs:
                bits = nbits = 0
                cmd, reading, pos = [], False, 0
            if not cs and prev_cs:
                log.append(bytes(cmd))
            if cs and clk and not prev_clk and not reading:
                bits, nbits = ((bits << 1) | copi) & 0xFF, nbits + 1
                if nbits % 8 == 0:
                    cmd.append(bits)
                    if len(cmd) == 4 and cmd[0] == 0x03:
                        reading, addr = True, int.from_bytes(bytes(cmd[1:]), "big")
            if cs and not clk and prev_clk and reading:
                byte = memory[addr + pos // 8] if addr + pos // 8 < len(memory) else 0xFF
                ctx.set(flash.cipo, (byte >> (7 - pos % 8)) & 1)
                pos += 1
            prev_clk, prev_cs = clk, cs
    return model


def load(rows, row_bits, image, *, max_cycles=200_000):
    """Run a FlashLoader against the flash model; return (writes, done, error, commands)."""
    dut = FlashLoader(rows=len(rows), row_bits=row_bits, wake_cycles=7)
    log, writes, state = [], [], {}

    async def bench(ctx):
        for _ in range(max_cycles):
            await ctx.tick()
            if ctx.get(dut.w_load.en):
                writes.append((ctx.get(dut.w_load.addr), ctx.get(dut.w_load.data)))
            if ctx.get(dut.done) or ctx.get(dut.error):
                break
        state.update(done=ctx.get(dut.done), error=ctx.get(dut.error))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.add_testbench(flash_model(dut.flash, image, FLASH_OFFSET, log), background=True)
    sim.run()
    return writes, state["done"], state["error"], log


def test_loader_writes_every_row_of_the_image():
    rng = np.random.default_rng(3)
    rows = [int(r) for r in rng.integers(0, 1 << 20, 9)]
    writes, done, error, log = load(rows, 20, weight_image(rows, 20))
    assert done and not error
    assert writes == list(enumerate(rows))
    assert log[0] == bytes([0xAB])  # wake-up first, then the read at the image's offset
    assert log[1][:4] == bytes([0x03]) + FLASH_OFFSET.to_bytes(3, "big")


@pytest.mark.parametrize("damage", ["blank", "other-shape", "first-header-byte",
                                    "last-header-byte"])
def test_loader_refuses_a_flash_without_the_matching_image(damage):
    rows = [1, 2, 3]
    image = {"blank": b"\xff" * 64, "other-shape": weight_image(rows + [4], 16)}.get(damage)
    if image is None:  # one bit of the 16-byte header flipped
        image = bytearray(weight_image(rows, 16))
        image[0 if damage == "first-header-byte" else 15] ^= 0x01
        image = bytes(image)
    writes, done, error, _ = load(rows, 16, image)
    assert error and not done and writes == []


def test_loader_checks_its_arguments():
    with pytest.raises(TypeError, match="rows must be an integer >= 1"):
        FlashLoader(rows=0, row_bits=8, wake_cycles=1)
    with pytest.raises(ValueError, match="16 MiB"):
        FlashLoader(rows=1 << 20, row_bits=128, wake_cycles=1)


def test_spram_cannot_be_initialised():
    with pytest.raises(ValueError, match="SPRAM cannot be initialised"):
        SinglePortRAM(width=8, depth=4, init=[1, 2], kind=RamKind.SPRAM)


@pytest.mark.parametrize("lanes", [2, 3])
def test_engine_with_spram_weights_loaded_from_flash_is_exact(lanes):
    """The iCEBreaker's configuration end to end: the weight image in flash, the loader,
    the engine's SPRAM weights, then inferences equal to the golden model, cycle for cycle."""
    program = dense_chain(3, 3, bias=1, seed=8)
    config = EngineConfig.for_program(program, lanes=lanes)
    engine = Engine(config=config, program=program,
                    memory=MemoryPlan(weights=RamKind.SPRAM, events=RamKind.SPRAM))
    rows, _ = pack_weights(program, lanes, weight_bits=config.weight_bits)
    assert len(rows) == sum(weight_rows(program, lanes))
    dut = LoadedEngine(engine=engine, rows=len(rows), wake_cycles=7)
    image = weight_image(rows, lanes * config.weight_bits)
    images = torch.from_numpy(np.random.default_rng(lanes).integers(
        0, program.input.max_level + 1, (3, *program.input.shape)))
    log = []
    got = run_engine(dut, list(images),
                     background=[flash_model(dut.flash, image, FLASH_OFFSET, log)])
    golden = run_program(program, images)
    for n, (logits, klass, cycles) in enumerate(got):
        assert [v for _, v in logits] == golden.logits[n].tolist()
        assert klass == int(golden.classes[n])
        assert cycles == engine_cycles(program, golden, n, lanes=lanes).total
