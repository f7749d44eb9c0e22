"""The host link's RTL parts alone in amaranth.sim (boards/link.py), against the protocol module.

- the CRC network equals :func:`protocol.crc16_byte` (which matches the CRC-16/CCITT-FALSE check
  value);
- UartTx into UartRx at several divisors; a low stop bit flagged, a break survived;
- FrameReceiver fed bytes: every error kind, the payload in the buffer, the timeout;
- the whole link on a small engine, bit by bit on the UART: INFO, inferences equal to the golden
  model, malformed frames answered and followed by a correct inference.

tests/test_link_sim.py runs the same link on the trained digits engine in Verilator (cocotb),
driven by the host API.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.sim import Simulator

from bitspike.boards import protocol as proto
from bitspike.boards.link import (
    FrameReceiver,
    LinkConfig,
    LinkedEngine,
    LinkUnsupported,
    UartRx,
    UartTx,
    crc16_next,
    program_id,
)
from bitspike.boards.protocol import Command, LinkError
from bitspike.hw.config import EngineConfig
from bitspike.hw.engine import Engine
from bitspike.sim.reference import expected_results

from .programs import dense_chain


def test_crc_check_value_and_residue():
    assert proto.crc16(b"123456789") == 0x29B1  # the CRC-16/CCITT-FALSE catalogue value
    frame = proto.encode_request(Command.INFER, bytes(range(20)))
    assert proto.crc16(frame[1:]) == 0  # the board's one-register check
    damaged = bytearray(frame)
    damaged[7] ^= 0x10
    assert proto.crc16(bytes(damaged[1:])) != 0


def test_crc_network_equals_the_protocol_function():
    m = Module()
    crc, byte = Signal(16), Signal(8)
    out = Signal(16)
    m.d.comb += out.eq(crc16_next(crc, byte))
    rng = random.Random(3)
    cases = [(rng.randrange(1 << 16), rng.randrange(256)) for _ in range(300)]
    cases += [(0xFFFF, 0), (0, 0xFF), (0x8000, 0x80)]
    sim = Simulator(m)

    async def bench(ctx):
        for c, b in cases:
            ctx.set(crc, c)
            ctx.set(byte, b)
            assert ctx.get(out) == proto.crc16_byte(c, b), (c, b)

    sim.add_testbench(bench)
    sim.run()


# ---------------------------------------------------------------------------------------------
# a bit-level UART for amaranth.sim


async def uart_write(ctx, line, data: bytes, divisor: int, *, bad_stop: bool = False):
    for b in data:
        for bit in [0, *((b >> i) & 1 for i in range(8)), 0 if bad_stop else 1]:
            ctx.set(line, bit)
            await ctx.tick().repeat(divisor)
    ctx.set(line, 1)


async def uart_read_forever(ctx, line, divisor: int, out: list):
    """Decode bytes from ``line`` into ``out`` (a background testbench). Plain ``tick()``
    awaits only: the simulation ends with this coroutine suspended, which ``repeat``/``until``
    (async generators) would report as an unraisable error."""
    async def cycles(n):
        for _ in range(n):
            await ctx.tick()

    while True:
        while ctx.get(line):
            await ctx.tick()
        await cycles(divisor // 2)
        byte = 0
        for i in range(8):
            await cycles(divisor)
            byte |= ctx.get(line) << i
        await cycles(divisor)
        assert ctx.get(line) == 1, "the transmitter's stop bit is low"
        out.append(byte)


@pytest.mark.parametrize("divisor", [4, 5, 9])
def test_uart_loopback(divisor):
    class Loop(wiring.Component):
        def __init__(self):
            super().__init__({})
            self.tx, self.rx = UartTx(divisor), UartRx(divisor)

        def elaborate(self, platform):
            m = Module()
            m.submodules.tx, m.submodules.rx = self.tx, self.rx
            m.d.comb += self.rx.rx.eq(self.tx.tx)
            return m

    dut = Loop()
    rng = random.Random(divisor)
    sent = [rng.randrange(256) for _ in range(40)] + [0x00, 0xFF, 0xA5]
    got, flags = [], []
    sim = Simulator(dut)
    sim.add_clock(1e-6)

    async def writer(ctx):
        for b in sent:
            ctx.set(dut.tx.i_byte.payload, b)
            ctx.set(dut.tx.i_byte.valid, 1)
            await ctx.tick().until(dut.tx.i_byte.ready == 1)
            ctx.set(dut.tx.i_byte.valid, 0)
            if rng.random() < 0.3:
                await ctx.tick().repeat(rng.randrange(1, 30))
        await ctx.tick().repeat(12 * divisor)

    async def reader(ctx):
        async for _, _, valid, payload in ctx.tick().sample(dut.rx.o_byte.valid,
                                                             dut.rx.o_byte.payload):
            if valid:
                got.append(payload.data)
                flags.append(payload.framing_error)

    sim.add_testbench(writer)
    sim.add_process(reader)
    sim.run()
    assert got == sent
    assert not any(flags)


def test_uart_rx_flags_a_low_stop_bit_and_recovers_after_a_break():
    divisor = 6
    dut = UartRx(divisor)
    got = []
    sim = Simulator(dut)
    sim.add_clock(1e-6)

    async def line(ctx):
        await ctx.tick().repeat(10)
        await uart_write(ctx, dut.rx, b"\x5c", divisor)
        await uart_write(ctx, dut.rx, b"\x81", divisor, bad_stop=True)
        ctx.set(dut.rx, 0)  # a break: the line held low for many bytes
        await ctx.tick().repeat(40 * divisor)
        ctx.set(dut.rx, 1)
        await ctx.tick().repeat(3 * divisor)
        await uart_write(ctx, dut.rx, b"\xa5\x33", divisor)
        await ctx.tick().repeat(4 * divisor)

    async def reader(ctx):
        async for _, _, valid, payload in ctx.tick().sample(dut.o_byte.valid, dut.o_byte.payload):
            if valid:
                got.append((payload.data, payload.framing_error))

    sim.add_testbench(line)
    sim.add_process(reader)
    sim.run()
    assert got == [(0x5C, 0), (0x81, 1), (0xA5, 0), (0x33, 0)]


# ---------------------------------------------------------------------------------------------
# FrameReceiver


PIXELS, MAX_LEVEL, TIMEOUT = 5, 9, 60


def _receive(frames, pixels=PIXELS) -> tuple[list, list]:
    """Feed byte sequences (``("gap", n)`` waits ``n`` cycles; ``("bad", byte)`` is a byte with
    a framing error) and answer each request at once; the requests and the buffer writes."""
    dut = FrameReceiver(pixels=pixels, max_level=MAX_LEVEL, input_bits=4, timeout_cycles=TIMEOUT)
    requests, writes = [], []
    sim = Simulator(dut)
    sim.add_clock(1e-6)

    async def feeder(ctx):
        for item in frames:
            if isinstance(item, tuple) and item[0] == "gap":
                await ctx.tick().repeat(item[1])
                continue
            bad = isinstance(item, tuple)
            byte = item[1] if bad else item
            ctx.set(dut.i_byte.payload.data, byte)
            ctx.set(dut.i_byte.payload.framing_error, int(bad))
            ctx.set(dut.i_byte.valid, 1)
            await ctx.tick()
            ctx.set(dut.i_byte.valid, 0)
            await ctx.tick().repeat(3)
        await ctx.tick().repeat(TIMEOUT + 10)

    async def answerer(ctx):
        ctx.set(dut.o_request.ready, 1)
        async for _, _, valid, payload, en, addr, data in ctx.tick().sample(
                dut.o_request.valid, dut.o_request.payload, dut.buffer.en, dut.buffer.addr,
                dut.buffer.data):
            if en:
                writes.append((addr, data))
            ctx.set(dut.done, valid)  # answered at once: done the cycle after the request
            if valid:
                requests.append((payload.command, payload.error))

    sim.add_testbench(feeder)
    sim.add_process(answerer)
    sim.run()
    return requests, writes


def test_frame_receiver_good_frames_and_payload():
    levels = bytes([3, 9, 0, 1, 7])
    frames = list(b"\x00\x13" + proto.encode_request(Command.INFO)
                  + proto.encode_request(Command.INFER, levels))
    requests, writes = _receive(frames)
    assert requests == [(Command.INFO, 0), (Command.INFER, 0)]
    assert writes == list(enumerate(levels))


@pytest.mark.parametrize("pixels", [1, 7, 8, 15])
def test_frame_receiver_writes_exactly_the_payload_for_any_size(pixels):
    """Sizes of 2^k - 1 make the byte counter exactly k bits wide: the CRC bytes after the
    payload must not wrap it back onto the buffer's first entry."""
    levels = bytes((3 * i + 1) % (MAX_LEVEL + 1) for i in range(pixels))
    frame = proto.encode_request(Command.INFER, levels)
    requests, writes = _receive([*frame, *frame], pixels=pixels)
    assert requests == [(Command.INFER, 0)] * 2
    assert writes == list(enumerate(levels)) * 2


def test_frame_receiver_timeout_after_the_sync_byte_names_no_command():
    info = proto.encode_request(Command.INFO)
    requests, _ = _receive([*info, proto.REQUEST_SYNC, ("gap", TIMEOUT + 5)])
    assert requests == [(Command.INFO, 0), (0, LinkError.TIMEOUT)]


def test_frame_receiver_reports_a_corrupted_header_as_a_bad_crc():
    """A bit flipped in the length or the command is the line's doing: BAD_CRC (which the host
    retries), not BAD_LENGTH or UNKNOWN_COMMAND."""
    good = proto.encode_request(Command.INFER, bytes([1, 2, 3, 4, 5]))
    short = bytearray(good)
    short[2] = 4  # the length 5 became 4: the frame still ends (one CRC byte is payload)
    command = bytearray(good)
    command[1] = 0x0A
    requests, _ = _receive([*short, ("gap", TIMEOUT + 5), *command, *good])
    assert requests == [(Command.INFER, LinkError.BAD_CRC), (0x0A, LinkError.BAD_CRC),
                        (Command.INFER, 0)]


@pytest.mark.parametrize("kind", [k for k in LinkError if k is not LinkError.NOT_READY])
def test_frame_receiver_reports_each_error_then_takes_a_good_frame(kind):
    good = proto.encode_request(Command.INFER, bytes([1, 2, 3, 4, 5]))
    if kind is LinkError.BAD_CRC:
        bad = bytearray(good)
        bad[6] ^= 0x04
        bad = list(bad)
    elif kind is LinkError.BAD_LENGTH:
        bad = list(proto.encode_request(Command.INFER, bytes([1, 2, 3])))
    elif kind is LinkError.UNKNOWN_COMMAND:
        bad = list(proto.encode_request(0x7B, b"\x01"))
    elif kind is LinkError.LEVEL_OUT_OF_RANGE:
        bad = list(proto.encode_request(Command.INFER, bytes([1, 2, MAX_LEVEL + 1, 4, 5])))
    elif kind is LinkError.TIMEOUT:
        bad = [*good[:6], ("gap", TIMEOUT + 5)]
    else:  # FRAMING: a payload byte with a low stop bit
        bad = [*good[:5], ("bad", good[5]), *good[6:]]
    requests, _ = _receive([*bad, *good])
    command = {LinkError.UNKNOWN_COMMAND: 0x7B}.get(kind, Command.INFER)
    assert requests == [(command, kind), (Command.INFER, 0)]


def test_frame_receiver_wrong_length_waits_for_the_declared_frame_or_the_timeout():
    # INFO with a 3-byte payload: the error is found at the header and answered after the
    # declared 3 + 2 bytes; a header declaring 9000 bytes is answered at the timeout
    info_long = proto.encode_request(Command.INFO, b"abc")
    huge = [proto.REQUEST_SYNC, Command.INFER, 0x28, 0x23, 1, 2, ("gap", TIMEOUT + 5)]
    requests, _ = _receive([*info_long, *huge, *proto.encode_request(Command.INFO)])
    assert requests == [(Command.INFO, LinkError.BAD_LENGTH), (Command.INFER, LinkError.BAD_LENGTH),
                        (Command.INFO, 0)]


# ---------------------------------------------------------------------------------------------
# the whole link on a small engine, bit by bit


def _small_link(divisor=4, *, top=True):
    program = dense_chain(t_in=2, t_hidden=3, bias=1, seed=5)
    config = EngineConfig.for_program(program, lanes=2)
    link = LinkConfig(program=program, engine_config=config, clock_hz=divisor * 1e6, baud=1_000_000,
                      timeout_ms=0.3)
    if not top:
        return program, config, link, None
    return program, config, link, LinkedEngine(engine=Engine(config=config, program=program),
                                               link=link)


def test_link_config_refuses_what_it_cannot_serve():
    program = dense_chain(t_in=2, t_hidden=3, bias=1, seed=5)
    config = EngineConfig.for_program(program, lanes=2)
    with pytest.raises(LinkUnsupported, match="too fast"):
        LinkConfig(program=program, engine_config=config, clock_hz=12e6, baud=6_000_000)
    with pytest.raises(LinkUnsupported, match="% off"):
        LinkConfig(program=program, engine_config=config, clock_hz=12e6, baud=2_500_000)
    with pytest.raises(LinkUnsupported, match="baud rate must be"):
        LinkConfig(program=program, engine_config=config, clock_hz=12e6, baud=0)


def test_whole_link_on_a_small_engine():
    program, config, link, dut = _small_link()
    rng = np.random.default_rng(0)
    images = rng.integers(0, program.input.max_level + 1, (3, *program.input.shape))
    expected = expected_results(program, torch.from_numpy(images), lanes=2)
    good = proto.encode_request(Command.INFER, images[0].astype(np.uint8).tobytes())
    bad_level = proto.encode_request(Command.INFER, bytes([program.input.max_level + 1]
                                                         * link.pixels))
    script = [proto.encode_request(Command.INFO),
              *(proto.encode_request(Command.INFER, im.astype(np.uint8).tobytes())
                for im in images),
              bad_level, good[:5], good, proto.encode_request(0x42), good]
    received = []
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    d = link.divisor

    async def host(ctx):
        await ctx.tick().repeat(20)
        for item in script:
            before = len(proto.parse_frames(bytes(received))[0])
            await uart_write(ctx, dut.rx, item, d)  # good[:5] stops mid-way: a timeout
            for _ in range(link.timeout_cycles + 5000):  # one request at a time: the reply
                if len(proto.parse_frames(bytes(received))[0]) > before:
                    break
                await ctx.tick().repeat(5 * d)
            else:
                raise AssertionError(f"no reply to {item.hex(' ')}")

    async def board_to_host(ctx):
        await uart_read_forever(ctx, dut.tx, d, received)

    sim.add_testbench(host)
    sim.add_testbench(board_to_host, background=True)
    sim.run()
    replies = [proto.decode_reply(f) for f in proto.parse_frames(bytes(received))[0]]
    info = proto.decode_info(replies[0].payload)
    assert info.program_id == program_id(program) and info.pixels == link.pixels
    assert (info.classes, info.max_level, info.lanes, info.baud) == (
        program.classes, program.input.max_level, 2, 1_000_000)
    assert info.weights_ready and not info.flash_error and not info.rate_mode
    for i in range(3):
        result = proto.decode_infer(replies[1 + i].payload, program.classes)
        assert (list(result.logits), result.klass, result.cycles) == (
            expected[i].logits, expected[i].klass, expected[i].cycles)
    errors = [r.error() for r in replies[4:] if r.is_error]
    assert errors == [(LinkError.LEVEL_OUT_OF_RANGE, Command.INFER),
                      (LinkError.TIMEOUT, Command.INFER), (LinkError.UNKNOWN_COMMAND, 0x42)]
    oks = [proto.decode_infer(r.payload, program.classes) for r in replies[4:] if not r.is_error]
    assert [list(o.logits) for o in oks] == [expected[0].logits] * 2



def test_responder_refuses_an_inference_when_the_flash_had_no_weights():
    """iCEBreaker: a flash without a matching weight image leaves the engine without weights;
    an INFER is answered NOT_READY at once (the engine is never fed), INFO still answers."""
    from bitspike.boards.link import Responder

    _, _, link, _ = _small_link(top=False)
    dut = Responder(link)
    sent, fed = bytearray(), []
    sim = Simulator(dut)
    sim.add_clock(1e-6)

    async def bench(ctx):
        ctx.set(dut.flash_error, 1)
        ctx.set(dut.o_byte.ready, 1)
        for command in (Command.INFER, Command.INFO):
            ctx.set(dut.i_request.payload.command, command)
            ctx.set(dut.i_request.payload.error, 0)
            ctx.set(dut.i_request.valid, 1)
            await ctx.tick()
            ctx.set(dut.i_request.valid, 0)
            for _ in range(200):
                if ctx.get(dut.o_byte.valid):
                    sent.append(ctx.get(dut.o_byte.payload))
                fed.append(ctx.get(dut.o_pixels.valid))
                done = ctx.get(dut.done)
                await ctx.tick()
                if done:
                    break

    sim.add_testbench(bench)
    sim.run()
    frames, rest = proto.parse_frames(bytes(sent))
    assert rest == b"" and len(frames) == 2 and not any(fed)
    assert proto.decode_reply(frames[0]).error() == (LinkError.NOT_READY, Command.INFER)
    info = proto.decode_info(proto.decode_reply(frames[1]).payload)
    assert info.flash_error and not info.weights_ready
