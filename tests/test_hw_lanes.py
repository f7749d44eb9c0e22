"""AccumulateLanes in amaranth.sim: against a Python model, Horner sums, overflow, Verilog."""

import inspect

import numpy as np
import pytest
import torch
from amaranth.back import verilog
from amaranth.hdl import Fragment, Module, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bitspike.hw.config import EngineConfig, pack_weights
from bitspike.hw.lanes import AccumulateLanes, AccumulateLanesModel, LaneCommand
from bitspike.sw.convert import convert_model
from bitspike.sw.data import Normalization
from bitspike.sw.models import build_model
from bitspike.sw.program import signed_bits

C = LaneCommand


def run(dut, steps):
    """Apply ``(cmd, weights, bias[, shift])`` per cycle; return ``(acc list, overflow)`` after
    each; ``next`` (combinational) must show the value ``acc`` takes at the edge."""
    seen = []

    async def tb(ctx):
        for cmd, weights, bias, *shift in steps:
            ctx.set(dut.cmd, cmd)
            ctx.set(dut.weights, weights)
            ctx.set(dut.bias, bias)
            ctx.set(dut.shift, shift[0] if shift else 0)
            upcoming = ctx.get(dut.next)
            await ctx.tick()
            assert [upcoming[p] for p in range(dut.lanes)] == [
                ctx.get(dut.acc)[p] for p in range(dut.lanes)], "next != acc after the edge"
            acc = ctx.get(dut.acc)
            seen.append(([acc[p] for p in range(dut.lanes)], ctx.get(dut.overflow)))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    return seen


def _signed(bits):
    return st.integers(-(1 << (bits - 1)), (1 << (bits - 1)) - 1)


@st.composite
def programs_of_commands(draw):
    lanes = draw(st.sampled_from([1, 3]))
    acc_bits = draw(st.integers(1, 10))
    weight_bits = draw(st.integers(2, 6))
    bias_bits = draw(st.integers(1, 6))
    max_shift = draw(st.integers(1, 4))
    step = st.tuples(st.sampled_from(list(LaneCommand)),
                     st.lists(_signed(weight_bits), min_size=lanes, max_size=lanes),
                     st.lists(_signed(bias_bits), min_size=lanes, max_size=lanes),
                     st.integers(0, max_shift))
    steps = draw(st.lists(step, min_size=1, max_size=40))
    return lanes, acc_bits, weight_bits, bias_bits, max_shift, steps


@settings(max_examples=100, deadline=None)
@given(programs_of_commands())
def test_random_commands_match_the_model(case):
    lanes, acc_bits, weight_bits, bias_bits, max_shift, steps = case
    dut = AccumulateLanes(lanes=lanes, acc_bits=acc_bits, weight_bits=weight_bits,
                          bias_bits=bias_bits, max_shift=max_shift)
    model = AccumulateLanesModel(lanes=lanes, acc_bits=acc_bits)
    for (cmd, weights, bias, shift), (acc, overflow) in zip(steps, run(dut, steps),
                                                            strict=True):
        assert acc == model.step(cmd, weights, bias, shift), cmd
        assert overflow == model.overflow


@settings(max_examples=50, deadline=None)
@given(data=st.data(), lanes=st.sampled_from([1, 4]), t=st.integers(1, 6),
       inputs=st.integers(1, 12))
def test_horner_over_bit_planes_is_the_exact_dot_product(data, lanes, t, inputs):
    """CLEAR; per plane (MSB first) SHIFT, then ADD for each input whose bit is 1; ADD_BIAS.

    The accumulator width is the converter's bound, ``signed_bits(sum|w| (2^t - 1) + |B|)``,
    so the overflow flag must stay low.
    """
    w = np.array(data.draw(st.lists(st.lists(_signed(8), min_size=inputs, max_size=inputs),
                                    min_size=lanes, max_size=lanes)))
    k = data.draw(st.lists(st.integers(0, 2**t - 1), min_size=inputs, max_size=inputs))
    b = data.draw(st.lists(_signed(10), min_size=lanes, max_size=lanes))
    acc_bits = signed_bits(int((np.abs(w).sum(axis=1) * (2**t - 1) + np.abs(b)).max()))
    zeros = [0] * lanes
    steps = [(C.CLEAR, zeros, zeros)]
    for plane in range(t - 1, -1, -1):
        steps.append((C.SHIFT, zeros, zeros))
        steps += [(C.ADD, list(w[:, j]), zeros) for j in range(inputs) if k[j] >> plane & 1]
    steps.append((C.ADD_BIAS, zeros, b))
    dut = AccumulateLanes(lanes=lanes, acc_bits=acc_bits, weight_bits=8, bias_bits=10)
    seen = run(dut, steps)
    acc, _ = seen[-1]
    assert acc == [int(w[p] @ np.array(k)) + b[p] for p in range(lanes)]
    assert not any(overflow for _, overflow in seen)


@settings(max_examples=50, deadline=None)
@given(data=st.data(), lanes=st.sampled_from([1, 4]), t=st.integers(1, 6),
       inputs=st.integers(1, 12))
def test_fused_horner_costs_one_cycle_per_event(data, lanes, t, inputs):
    """The engine's form: LOAD the first event, then SHIFT_ADD with the planes crossed since the
    previous event; the trailing shift and the bias are added by the firing stage."""
    w = np.array(data.draw(st.lists(st.lists(_signed(8), min_size=inputs, max_size=inputs),
                                    min_size=lanes, max_size=lanes)))
    k = data.draw(st.lists(st.integers(0, 2**t - 1), min_size=inputs, max_size=inputs))
    acc_bits = signed_bits(int((np.abs(w).sum(axis=1) * (2**t - 1)).max()))
    zeros = [0] * lanes
    events = [(plane, j) for plane in range(t) for j in range(inputs)
              if k[j] >> (t - 1 - plane) & 1]  # plane 0 is the most significant
    assume(events)  # a lane with no event never runs
    steps, prev = [], None
    for plane, j in events:
        if prev is None:
            steps.append((C.LOAD, list(w[:, j]), zeros, 0))
        else:
            steps.append((C.SHIFT_ADD, list(w[:, j]), zeros, plane - prev))
        prev = plane
    assert len(steps) == len(events)  # no cycle for a plane boundary
    dut = AccumulateLanes(lanes=lanes, acc_bits=acc_bits, weight_bits=8, bias_bits=2,
                          max_shift=t)
    seen = run(dut, steps)
    acc, _ = seen[-1]
    assert [a << (t - 1 - prev) for a in acc] == [int(w[p] @ np.array(k)) for p in range(lanes)]
    assert not any(overflow for _, overflow in seen)


# acc_bits = 4: the register holds -8..7
@pytest.mark.parametrize("steps, acc, rises_at", [
    ([(C.ADD, 7, 0)], 7, None),
    ([(C.ADD, 7, 0), (C.ADD, 1, 0)], -8, 1),                    # 8 does not fit
    ([(C.ADD, -8, 0)], -8, None),
    ([(C.ADD, -8, 0), (C.ADD, -1, 0)], 7, 1),                   # -9 does not fit
    ([(C.ADD, 3, 0), (C.SHIFT, 0, 0), (C.SHIFT, 0, 0)], -4, 2),  # 3, 6, 12 -> -4
    ([(C.ADD, -4, 0), (C.SHIFT, 0, 0)], -8, None),               # -8 fits
    ([(C.ADD, -5, 0), (C.SHIFT, 0, 0)], 6, 1),                   # -10 -> 6
    ([(C.ADD, 6, 0), (C.ADD_BIAS, 0, 1), (C.ADD_BIAS, 0, 1)], -8, 2),
    ([(C.ADD, 7, 0), (C.ADD, 1, 0), (C.CLEAR, 0, 0), (C.NOP, 0, 0)], 0, 1),  # sticky
    ([(C.NOP, 5, 3), (C.CLEAR, 7, 7), (C.ADD, 7, 0), (C.NOP, 7, 7)], 7, None),
])
def test_overflow_rises_exactly_when_the_result_leaves_the_range(steps, acc, rises_at):
    dut = AccumulateLanes(lanes=1, acc_bits=4, weight_bits=5, bias_bits=4)
    seen = run(dut, [(cmd, [w], [b]) for cmd, w, b in steps])
    assert seen[-1][0] == [acc]
    flags = [overflow for _, overflow in seen]
    expected = [0] * len(steps) if rises_at is None else (
        [0] * rises_at + [1] * (len(steps) - rises_at))
    assert flags == expected
    model = AccumulateLanesModel(lanes=1, acc_bits=4)
    for i, (cmd, w, b) in enumerate(steps):
        model.step(cmd, [w], [b])
        assert model.overflow == bool(flags[i])


def test_one_lane_overflowing_sets_the_flag():
    dut = AccumulateLanes(lanes=3, acc_bits=4, weight_bits=4, bias_bits=2)
    seen = run(dut, [(C.ADD, [7, 7, -8], [0] * 3), (C.ADD, [0, 0, -1], [0] * 3)])
    assert seen == [([7, 7, -8], 0), ([7, 7, 7], 1)]


class _MemoryFedLanes(wiring.Component):
    """A weight memory (P-wide rows from pack_weights) whose read port feeds the lanes directly.

    ``cmd`` is delayed one cycle so that it meets the data of the address given with it.
    """

    def __init__(self, config, rows):
        self._config, self._rows = config, rows
        super().__init__({"addr": In(range(max(2, len(rows)))), "cmd": In(LaneCommand),
                          "bias": In(config.lanes * config.bias_bits),
                          "acc": Out(config.lanes * config.acc_bits), "overflow": Out(1)})

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        m.submodules.mem = mem = Memory(shape=unsigned(cfg.lanes * cfg.weight_bits),
                                        depth=len(self._rows), init=self._rows)
        m.submodules.lanes = lanes = AccumulateLanes.for_config(cfg)
        port = mem.read_port()
        cmd = Signal(LaneCommand)
        m.d.sync += cmd.eq(self.cmd)
        m.d.comb += [port.addr.eq(self.addr), lanes.weights.eq(port.data), lanes.cmd.eq(cmd),
                     lanes.bias.eq(self.bias), self.acc.eq(lanes.acc),
                     self.overflow.eq(lanes.overflow)]
        return m


def test_a_conv_group_from_the_weight_memory_equals_the_integer_model():
    """digits-cnn conv1 (P = 8, two groups) at three pixels: acc + B from packed memory rows."""
    torch.manual_seed(0)
    program = convert_model(build_model("digits-cnn", levels=15).eval(), input_shape=(1, 8, 8),
                            normalization=Normalization(16, (0.0,), (0.4,)))
    config = EngineConfig.for_program(program, lanes=8)
    rows, bases = pack_weights(program, 8)
    conv1 = program.layers[0]
    rows = rows[:bases[1]]  # conv1's block: 2 groups x 9 taps
    pixels = np.random.default_rng(3).integers(0, 17, size=(8, 8))
    dut = _MemoryFedLanes(config, rows)
    bits, lanes = config.acc_bits, config.lanes
    mask_b = (1 << config.bias_bits) - 1
    results = {}

    async def tb(ctx):
        for y, x in [(0, 0), (3, 4), (7, 5)]:
            for g in range(2):
                bias = sum((int(conv1.bias[g * lanes + p]) & mask_b) << (p * config.bias_bits)
                           for p in range(lanes))
                ctx.set(dut.bias, bias)
                issue = [(C.CLEAR, 0)]
                for plane in range(program.input.t - 1, -1, -1):
                    issue.append((C.SHIFT, 0))
                    for dy in range(3):
                        for dx in range(3):
                            yy, xx = y + dy - 1, x + dx - 1
                            if 0 <= yy < 8 and 0 <= xx < 8 and pixels[yy, xx] >> plane & 1:
                                issue.append((C.ADD, g * conv1.fan_in + dy * 3 + dx))
                issue += [(C.ADD_BIAS, 0), (C.NOP, 0)]  # the NOP lets the last command land
                for cmd, addr in issue:
                    ctx.set(dut.cmd, cmd)
                    ctx.set(dut.addr, bases[0] + addr)
                    await ctx.tick()
                raw = ctx.get(dut.acc)
                results[y, x, g] = [((raw >> (p * bits) & ((1 << bits) - 1)) ^ (1 << bits - 1))
                                    - (1 << bits - 1) for p in range(lanes)]
                assert not ctx.get(dut.overflow)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    padded = np.pad(pixels, 1)
    for (y, x, g), acc in results.items():
        window = padded[y:y + 3, x:x + 3].reshape(-1)
        w = conv1.weights[g * 8:(g + 1) * 8, 0].reshape(8, 9)
        assert acc == list(w @ window + conv1.bias[g * 8:(g + 1) * 8]), (y, x, g)


@pytest.mark.parametrize("lanes", [1, 8])
def test_verilog_conversion(lanes):
    dut = AccumulateLanes(lanes=lanes, acc_bits=21, weight_bits=8, bias_bits=14)
    text = verilog.convert(dut, name="lanes_top", emit_src=False)
    assert "module lanes_top(" in text
    for port, width in [("cmd", 3), ("weights", 8 * lanes), ("bias", 14 * lanes),
                        ("acc", 21 * lanes), ("next", 21 * lanes)]:
        assert f"[{width - 1}:0] {port};" in text, port
    assert "output overflow;" in text
    assert " * " not in text  # no multiplier


@pytest.mark.parametrize("kwargs, message", [
    ({"lanes": 0}, "lanes must be a positive integer, not 0"),
    ({"lanes": 2.0}, "lanes must be a positive integer, not 2.0"),
    ({"acc_bits": 0}, "acc_bits must be a positive integer, not 0"),
    ({"weight_bits": True}, "weight_bits must be an integer >= 2, not True"),
    ({"bias_bits": 0}, "bias_bits must be a positive integer, not 0"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(TypeError) as info:
        AccumulateLanes(**{"lanes": 4, "acc_bits": 16, "weight_bits": 8, "bias_bits": 8,
                           **kwargs})
    assert str(info.value) == message


def test_keyword_only_and_read_only():
    params = list(inspect.signature(AccumulateLanes.__init__).parameters.values())[1:]
    assert params and all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params)
    dut = AccumulateLanes(lanes=4, acc_bits=16, weight_bits=8, bias_bits=8)
    Fragment.get(dut, None)  # elaborates (and counts as used)
    assert (dut.lanes, dut.acc_bits, dut.weight_bits, dut.bias_bits) == (4, 16, 8, 8)
    with pytest.raises(AttributeError):
        dut.lanes = 2
