"""The engine's components alone in amaranth.sim, each against a small Python model of its job.

tests/test_hw_engine.py runs the whole engine against the golden model; here every component of
hw/engine.py is instantiated by itself (or, for the list scanner and the walker, with the event
lists they read, wired as the engine wires them), its ports are driven from a testbench the way
the engine's sequencer drives them, and what comes out is compared with a reference written from
docs/engine.md and the golden model:

- EventLists: appends, then the bitmap rows, lengths and entries read back through ``scan`` and
  ``fetch``; reads of one half while the other is written; ``clear``; one events-RAM access per
  half and cycle.
- ListScanner + Walker: the accumulate stream (command, shift, tap base, metadata, the event
  read) in walk order, the scanner's latency and no bubble after it; ``room`` respected.
- FiringStage: bit-serial firing (successive approximation, clip, fused pool) as appends, the
  output layer's logits, and the occupancy ``f_i`` of the cycle model; fed the golden model's
  own accumulator sums, it appends the golden model's spikes (or emits its logits).
- ArgmaxOutput: pass-through and argmax (ties to the lowest index).

The walk and firing checks also catch the deliberate walker and firing faults of hw/faults.py.
Not covered here: the rate-mode firing (IF steps, SRP's mask) and the trace records, which
tests/test_hw_engine.py and tests/test_hw_neuron.py check.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from amaranth.hdl import Elaboratable, Module, Signal
from amaranth.lib import wiring
from amaranth.sim import Simulator

from bitspike.hw.config import EngineConfig
from bitspike.hw.engine import Engine
from bitspike.hw.event_lists import EventLists, list_geometry
from bitspike.hw.faults import EngineFault
from bitspike.hw.firing import FiringStage
from bitspike.hw.lanes import LaneCommand
from bitspike.hw.output import ArgmaxOutput
from bitspike.hw.walker import ListScanner, Walker
from bitspike.sw.golden import argmax_lowest, run_program, successive_approximation
from bitspike.sw.plan import SCAN_LATENCY, TAPS, LayerKind, layer_plan
from bitspike.sw.program import InputSpec, Layer, Program

from .programs import conv_pool_program, dense_chain

# ---------------------------------------------------------------------------------------------
# Programs, configs and layer rows


def conv_chain_program() -> Program:
    """conv3x3 (1 x 3 x 5, T = 3, L = 5 < 7: the clip) -> conv3x3 -> dense: one input channel,
    so every input list holds at most one event, on a map that is not a power of two wide."""
    rng = np.random.default_rng(11)
    layers = [Layer("conv0", "conv3x3", (1, 3, 5), (3, 3, 5), 3, 3, 5, True,
                    weights=rng.integers(-3, 4, (3, 1, 3, 3)), bias=rng.integers(-9, 9, 3),
                    threshold=rng.integers(1, 6, 3)),
              Layer("conv1", "conv3x3", (3, 3, 5), (2, 3, 5), 3, 2, 3, True,
                    weights=rng.integers(-3, 4, (2, 3, 3, 3)), bias=rng.integers(-9, 9, 2),
                    threshold=rng.integers(1, 6, 2)),
              Layer("out", "dense", (2, 3, 5), (3,), 2, 0, 0, False,
                    weights=rng.integers(-3, 4, (3, 30)), bias=rng.integers(-9, 9, 3))]
    program = Program("bitserial", InputSpec((1, 3, 5), 7, 3), layers, 3, t_steps=3)
    program.validate()
    return program


def rate_dense_program() -> Program:
    """srp (tau = 1, 2 steps): 6 -> 5 -> 4 -> 3, so the second layer walks one segment per
    step."""
    rng = np.random.default_rng(12)
    layers = [Layer("fc0", "dense", (6,), (5,), 2, 3, 1, True,
                    weights=rng.integers(-3, 4, (5, 6)), bias=rng.integers(-5, 5, 5),
                    threshold=rng.integers(1, 20, 5), v_init=rng.integers(0, 9, 5)),
              Layer("fc1", "dense", (5,), (4,), 3, 3, 1, True,
                    weights=rng.integers(-3, 4, (4, 5)), bias=rng.integers(-5, 5, 4),
                    threshold=rng.integers(1, 20, 4), v_init=rng.integers(0, 9, 4)),
              Layer("out", "dense", (4,), (3,), 3, 0, 0, False,
                    weights=rng.integers(-3, 4, (3, 4)), bias=rng.integers(-5, 5, 3))]
    program = Program("rate", InputSpec((6,), 3, 2), layers, 3, method="srp", t_steps=2, tau=1)
    program.validate()
    return program


PROGRAMS = {"conv_pool": conv_pool_program, "conv_chain": conv_chain_program,
            "dense_chain": lambda: dense_chain(3, 3, 0, seed=4), "rate_dense": rate_dense_program}


def setup(name: str, lanes: int):
    """``(config, desc layout, rows bound, layer rows as dicts)`` as the engine builds them."""
    program = PROGRAMS[name]()
    cfg = EngineConfig.for_program(program, lanes=lanes)
    engine = Engine(config=cfg, program=program)
    layout, rows_bound = engine._desc_layout, engine._field_max["rows"]
    engine._MustUse__silence = True  # only its layouts are used: no "never elaborated" warning
    rows = [row.as_dict() for row in layer_plan(program, lanes)]
    return cfg, layout, rows_bound, rows


def simulate(dut, *benches):
    """Run the (bounded) testbenches to their end."""
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    for bench in benches:
        sim.add_testbench(bench)
    sim.run()


# ---------------------------------------------------------------------------------------------
# Reference: list addresses and the walk order (docs/engine.md, "Walk order", memory layout)


def list_addr(t, y, x, kb_wb_hb, geo):
    """``(t << hb | y) << wb | x``, the config's list-address width."""
    _, wb, hb = kb_wb_hb
    return (((t << hb | y) << wb) | x) & ((1 << geo["list_address"]) - 1)


def entry_addr(t, y, x, k, fields, geo):
    """Entry ``k`` of list ``(t, y, x)``: ``list << kb | k``."""
    base = (list_addr(t, y, x, fields, geo) << fields[0]) & ((1 << geo["event_address"]) - 1)
    return base | k


def map_bit(t, x, geo):
    """The bit of list ``(t, y, x)`` in bitmap row ``y``: ``t * 2^column + x``."""
    return 1 << (t << geo["column"] | x)


def in_fields(row):
    return row["in_kb"], row["in_wb"], row["in_hb"]


def random_input_lists(row, rng: random.Random, density: float):
    """Random input lists of layer ``row`` as the previous layer (or the load) writes them:
    ``{(t, y, x): [index, ...]}`` and the append order (shuffled, lists interleaved)."""
    planes = row["steps"] if row["per_step"] else row["t_in"]
    if row["in_flat"]:
        slots = [(t, 0, 0, i) for t in range(planes) for i in range(row["n_in"])]
    else:
        slots = [(t, y, x, c) for t in range(planes) for y in range(row["h"])
                 for x in range(row["w"]) for c in range(row["c_in"])]
    events = [s for s in slots if rng.random() < density]
    rng.shuffle(events)
    lists: dict[tuple[int, int, int], list[int]] = {}
    for t, y, x, i in events:
        lists.setdefault((t, y, x), []).append(i)
    return lists, events


def walk_segments(row, lanes: int, lane_step: int, lists):
    """The layer's segments in walk order: window (wy, wx) -> group -> quad -> step, each with
    the nonempty lists it reads in (plane, tap) order."""
    segments = []
    steps = row["steps"] if row["per_step"] else 1
    for wy in range(row["win_h"]):
        for wx in range(row["win_w"]):
            for g in range(row["groups"]):
                for q in range(row["quads"]):
                    for step in range(steps):
                        oy, ox = ((2 * wy + q // 2, 2 * wx + q % 2) if row["pool"] else (wy, wx))
                        planes = [step] if row["per_step"] else range(row["t_in"])
                        found = []
                        for t in planes:
                            for tap in range(TAPS):
                                if row["kind"] == LayerKind.DENSE:
                                    if tap:
                                        continue
                                    iy, ix = 0, 0
                                else:
                                    iy, ix = oy + tap // 3 - 1, ox + tap % 3 - 1
                                    if not (0 <= iy < row["h"] and 0 <= ix < row["w"]):
                                        continue
                                if lists.get((t, iy, ix)):
                                    found.append((t, tap, iy, ix, lists[(t, iy, ix)]))
                        meta = {"grp_row": row["w_base"] + g * row["rows"],
                                "brow": row["b_base"] + g, "group": g, "chan": g * lanes,
                                "flat": g * lane_step, "wpos": wy * row["win_w"] + wx,
                                "oy": oy, "ox": ox, "wy": wy, "wx": wx, "q": q, "t": step}
                        segments.append({"meta": meta, "lists": found})
    return segments


def expected_ops(row, segments, geo):
    """One accumulate per event (LOAD first, then SHIFT_ADD by the planes crossed), or one CLEAR
    for an empty segment; each with the event address it reads and the event it gets."""
    ops = []
    fields = in_fields(row)
    for seg in segments:
        if not seg["lists"]:
            ops.append({"cmd": LaneCommand.CLEAR, "last": 1, "meta": seg["meta"]})
            continue
        first, prev_t = True, None
        n_lists = len(seg["lists"])
        for j, (t, tap, iy, ix, entries) in enumerate(seg["lists"]):
            for k, index in enumerate(entries):
                op = {"cmd": LaneCommand.LOAD if first else LaneCommand.SHIFT_ADD,
                      "last": int(j == n_lists - 1 and k == len(entries) - 1),
                      "tap_base": tap * row["c_in"],
                      "meta": {**seg["meta"],
                               "pend": 0 if row["per_step"] else row["t_in"] - 1 - t},
                      "addr": entry_addr(t, iy, ix, k, fields, geo), "event": index}
                if not first:
                    op["shift"] = t - prev_t
                ops.append(op)
                first, prev_t = False, t
    return ops


def op_as_dict(op, event=None, addr=None):
    """A sampled ``Walker.op`` as plain values (the fields the reference states)."""
    meta = {k: int(getattr(op.meta, k)) for k in ("grp_row", "brow", "group", "chan", "flat",
                                                     "wpos", "oy", "ox", "wy", "wx", "q", "t",
                                                     "pend")}
    return {"cmd": LaneCommand(op.cmd), "shift": int(op.shift), "last": int(op.last),
            "tap_base": int(op.tap_base), "meta": meta, "addr": addr, "event": event}


def compare_op(got, want, n):
    """``got`` (op_as_dict) against a reference op; a CLEAR's shift, tap base, pending shift and
    event read, and a LOAD's shift, are don't-cares (the lanes ignore them)."""
    keys = ["cmd", "last", "meta"]
    if want["cmd"] != LaneCommand.CLEAR:
        keys += ["tap_base", "addr", "event"]
    if "shift" in want:
        keys.append("shift")
    for key in keys:
        value = got[key]
        if key == "meta" and want["cmd"] == LaneCommand.CLEAR:
            value = {k: v for k, v in value.items() if k != "pend"}
        assert value == want[key], f"op {n} {key}: got {value}, want {want[key]} ({want})"


# ---------------------------------------------------------------------------------------------
# 1. EventLists


class ProbedEventLists(EventLists):
    """EventLists that keeps its two events RAMs (SinglePortRAM) for the testbench to watch."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        self.rams = [m.submodules.events_a, m.submodules.events_b]
        return m


def list_config() -> EngineConfig:
    """Room for lists of up to 4 entries on 4 planes of a 4 x 4 map (kb = wb = hb = 2)."""
    return EngineConfig(lanes=1, weight_bits=2, acc_bits=8, bias_bits=4, threshold_bits=4,
                        v_init_bits=0, max_t=4, weight_depth=1, act_depth=64, bias_depth=1,
                        threshold_depth=1, v_init_depth=0, layer_depth=1, max_channels=4,
                        max_height=4, max_width=4, event_depth=256, list_depth=64)


def random_appends(rng: random.Random, n: int, geo, cap: int):
    """``n`` appends (t, y, x, index) to random lists of at most ``cap`` entries, with runs of
    appends to one list and to one bitmap row (back to back: the writer's read-after-write)."""
    out, lengths = [], {}
    while len(out) < n:
        t, y, x = rng.randrange(geo["planes"]), rng.randrange(4), rng.randrange(4)
        for _ in range(rng.choice([1, 1, 2, 3])):  # a run on one list
            if lengths.get((t, y, x), 0) < cap and len(out) < n:
                lengths[(t, y, x)] = lengths.get((t, y, x), 0) + 1
                out.append((t, y, x, rng.randrange(1 << geo["event"])))
        if rng.random() < 0.3:  # then another list of the same row
            t2, x2 = rng.randrange(geo["planes"]), rng.randrange(4)
            if lengths.get((t2, y, x2), 0) < cap and len(out) < n:
                lengths[(t2, y, x2)] = lengths.get((t2, y, x2), 0) + 1
                out.append((t2, y, x2, rng.randrange(1 << geo["event"])))
    return out


def set_append(ctx, port, t, y, x, index):
    """Drive one append on an ``append`` port (valid for this cycle)."""
    for name, value in (("valid", 1), ("t", t), ("y", y), ("x", x), ("index", index)):
        ctx.set(getattr(port, name), value)


async def load_lists(ctx, lists, fields, rows: int, appends):
    """Load ``appends`` into ``lists`` as the engine's ClearInput and Load do: the write
    fields, ``rows`` bitmap rows cleared, one append per cycle, two cycles for the last write."""
    ctx.set(lists.wr_fields, dict(zip(("kb", "wb", "hb"), fields, strict=True)))
    ctx.set(lists.load, 1)
    ctx.set(lists.clear.valid, 1)
    for y in range(rows):
        ctx.set(lists.clear.row, y)
        await ctx.tick()
    ctx.set(lists.clear.valid, 0)
    for t, y, x, c in appends:
        set_append(ctx, lists.append, t, y, x, c)
        await ctx.tick()
    ctx.set(lists.append.valid, 0)
    await ctx.tick().repeat(2)
    ctx.set(lists.load, 0)


def as_lists(appends):
    lists: dict[tuple[int, int, int], list[int]] = {}
    for t, y, x, index in appends:
        lists.setdefault((t, y, x), []).append(index)
    return lists


def test_event_lists_append_scan_fetch_clear():
    """Appends land in append order per list; bitmap rows, lengths and entries read back exactly
    (one cycle after the request) from ``src``; a half is read while the other is written; a
    cleared row's lists read as empty and restart at length 1; each events RAM is written once
    per append, only while its half is not being fetched from."""
    cfg = list_config()
    geo = list_geometry(cfg)
    fields = (2, 2, 2)  # kb, wb, hb: list (t, y, x) at (t << 2 | y) << 2 | x, 4 entries each
    dut = ProbedEventLists(config=cfg)
    rng = random.Random(1)
    set_a = random_appends(rng, 90, geo, cap=4)  # the input load into half 0
    set_b = random_appends(rng, 70, geo, cap=4)  # "the next layer's" lists, half 1
    lists_a, lists_b = as_lists(set_a), as_lists(set_b)
    log = {"writes": [0, 0], "conflicts": [], "fetching": None}

    def bitmap(lists, y):
        return sum(map_bit(t, x, geo) for (t, yy, x) in lists if yy == y)

    async def idle_until_written(ctx):
        ctx.set(dut.append.valid, 0)
        for _ in range(3):  # the writer's two stages
            if not ctx.get(dut.busy):
                return
            await tick(ctx)
        raise AssertionError("the writer stays busy")

    async def tick(ctx):
        _, _, wa, wb = await ctx.tick().sample(dut.rams[0].w_en, dut.rams[1].w_en)
        for half, w in enumerate((wa, wb)):
            log["writes"][half] += w
            if w and log["fetching"] == half:
                log["conflicts"].append(half)

    def append(ctx, t, y, x, index):
        set_append(ctx, dut.append, t, y, x, index)

    async def read_all(ctx, lists, pending=()):
        """Every bitmap row, every list's length and entry through ``scan`` and ``fetch`` of
        ``src``, one request per cycle, while ``pending`` appends go to the other half."""
        pending = list(pending)

        async def step():
            if pending:
                append(ctx, *pending.pop(0))
            else:
                ctx.set(dut.append.valid, 0)
            await tick(ctx)

        for y in range(4):
            ctx.set(dut.scan.row, y)
            await step()
            assert ctx.get(dut.scan.bits) == bitmap(lists, y), f"bitmap row {y}"
        for (t, y, x), entries in sorted(lists.items()):
            ctx.set(dut.scan.list, list_addr(t, y, x, fields, geo))
            await step()
            assert ctx.get(dut.scan.count) == len(entries), f"length of list {(t, y, x)}"
            for k, index in enumerate(entries):
                log["fetching"] = ctx.get(dut.src)
                ctx.set(dut.fetch.addr, entry_addr(t, y, x, k, fields, geo))
                await step()
                log["fetching"] = None
                assert ctx.get(dut.fetch.event) == index, f"entry {k} of list {(t, y, x)}"
        while pending:
            await step()

    async def bench(ctx):
        ctx.set(dut.wr_fields, {"kb": fields[0], "wb": fields[1], "hb": fields[2]})
        # the load: ClearInput clears the rows, then one append per cycle into src = 0
        ctx.set(dut.load, 1)
        ctx.set(dut.src, 0)
        for y in range(4):
            ctx.set(dut.clear.valid, 1)
            ctx.set(dut.clear.row, y)
            await tick(ctx)
        ctx.set(dut.clear.valid, 0)
        for event in set_a:
            append(ctx, *event)
            await tick(ctx)
        await idle_until_written(ctx)
        assert log["writes"] == [len(set_a), 0]
        # a walk: half 0 read (src) while a firing stage appends set_b to half 1
        ctx.set(dut.load, 0)
        for y in range(4):  # ClearOutput: the written half's rows
            ctx.set(dut.clear.valid, 1)
            ctx.set(dut.clear.row, y)
            await tick(ctx)
        ctx.set(dut.clear.valid, 0)
        await read_all(ctx, lists_a, pending=set_b)
        await idle_until_written(ctx)
        assert log["writes"] == [len(set_a), len(set_b)]
        # the buffers swap: half 1 is read, and half 0 still holds set_a
        ctx.set(dut.src, 1)
        await read_all(ctx, lists_b)
        ctx.set(dut.src, 0)
        await read_all(ctx, lists_a)
        # clear one row of half 0 (load: the written half is src): its lists read as empty,
        # their stale lengths are not counted: a new append starts the list at length 1
        ctx.set(dut.load, 1)
        y0 = 2
        ctx.set(dut.clear.valid, 1)
        ctx.set(dut.clear.row, y0)
        await tick(ctx)
        ctx.set(dut.clear.valid, 0)
        after = {key: v for key, v in lists_a.items() if key[1] != y0}
        await read_all(ctx, after)
        stale = max((key for key in lists_a if key[1] == y0), key=lambda k: len(lists_a[k]))
        assert len(lists_a[stale]) >= 2, "the cleared list should have held several entries"
        append(ctx, *stale, 5)
        await tick(ctx)
        await idle_until_written(ctx)
        after[stale] = [5]
        await read_all(ctx, after)
        assert ctx.get(dut.src) == 0
        ctx.set(dut.src, 1)
        await read_all(ctx, lists_b)  # the other half untouched by the clear
        assert log["conflicts"] == [], "an events RAM was written while its half was read"
        assert log["writes"] == [len(set_a) + 1, len(set_b)]
        log["done"] = True

    assert any(len(v) == 4 for v in lists_a.values()), "no list filled to capacity"
    assert any(a[:3] == b[:3] for a, b in zip(set_a, set_a[1:], strict=False))
    simulate(dut, bench)
    assert log.get("done"), "the bench did not finish"


def test_event_lists_engine_load_order():
    """The engine's input load (one append per 1-bit of each pixel, MSB plane first, pixels in
    (C, H, W) order, wr_fields = the first layer's in_*) of conv_pool's input: the lists hold
    the channels of every (plane, y, x) in channel order, and the bitmap the nonempty ones."""
    cfg, _, _, rows = setup("conv_pool", 2)
    row = rows[0]
    geo = list_geometry(cfg)
    fields = in_fields(row)
    rng = np.random.default_rng(3)
    image = rng.integers(0, 4, (row["c_in"], row["h"], row["w"]))
    appends = []
    for c in range(row["c_in"]):
        for y in range(row["h"]):
            for x in range(row["w"]):
                for hi in reversed(range(row["t_in"])):
                    if image[c, y, x] >> hi & 1:
                        appends.append((row["t_in"] - 1 - hi, y, x, c))
    lists = as_lists(appends)
    dut = EventLists(config=cfg)
    seen = {}

    async def bench(ctx):
        await load_lists(ctx, dut, fields, row["h"], appends)
        for y in range(row["h"]):
            ctx.set(dut.scan.row, y)
            await ctx.tick()
            seen[("row", y)] = ctx.get(dut.scan.bits)
        for t in range(row["t_in"]):
            for y in range(row["h"]):
                for x in range(row["w"]):
                    ctx.set(dut.scan.list, list_addr(t, y, x, fields, geo))
                    await ctx.tick()
                    bit = seen[("row", y)] >> (t << geo["column"] | x) & 1
                    n = ctx.get(dut.scan.count) if bit else 0
                    got = []
                    for k in range(n):
                        ctx.set(dut.fetch.addr, entry_addr(t, y, x, k, fields, geo))
                        await ctx.tick()
                        got.append(ctx.get(dut.fetch.event))
                    seen[(t, y, x)] = got

    simulate(dut, bench)
    for t in range(row["t_in"]):
        for y in range(row["h"]):
            for x in range(row["w"]):
                want = [c for c in range(row["c_in"]) if image[c, y, x] >> (row["t_in"] - 1 - t)
                        & 1]
                assert lists.get((t, y, x), []) == want
                assert seen[(t, y, x)] == want, (t, y, x)
    for y in range(row["h"]):
        assert seen[("row", y)] == sum(map_bit(t, x, geo) for (t, yy, x) in lists if yy == y)


# ---------------------------------------------------------------------------------------------
# 2. ListScanner + Walker on EventLists


class IssueSide(Elaboratable):
    """EventLists, ListScanner and Walker wired as in hw/engine.py (scan, queue stream, fetch);
    ``desc``, ``start`` and ``run`` shared by the scanner and the walker."""

    def __init__(self, cfg, layout, rows_bound, fault=None):
        self.lists = EventLists(config=cfg)
        self.scanner = ListScanner(config=cfg, desc_layout=layout)
        self.walker = Walker(config=cfg, desc_layout=layout, rows_bound=rows_bound,
                             fault=fault)
        self.desc = Signal(layout)
        self.start, self.run = Signal(), Signal()

    def elaborate(self, platform):
        m = Module()
        m.submodules.lists, m.submodules.scanner = self.lists, self.scanner
        m.submodules.walker = self.walker
        for part in (self.scanner, self.walker):
            m.d.comb += [part.desc.eq(self.desc), part.start.eq(self.start),
                         part.run.eq(self.run)]
        wiring.connect(m, self.scanner.scan, self.lists.scan)
        wiring.connect(m, self.scanner.o_stream, self.walker.i_stream)
        wiring.connect(m, self.walker.fetch, self.lists.fetch)
        return m


def run_walk(name, lanes, layer, density, seed, *, room_prob=1.0, gap=1, fault=None):
    """Load layer ``layer``'s input lists, start, run; return what the walker issued and the
    reference: ``(ops, first op cycle, op cycles, done cycle, room log, expected ops)``."""
    cfg, layout, rows_bound, rows = setup(name, lanes)
    row = rows[layer]
    geo = list_geometry(cfg)
    rng = random.Random(seed)
    lists, appends = random_input_lists(row, rng, density)
    lane_step = lanes * row["wr_hw"]  # the engine's lane_off[P - 1] + wr_hw
    want = expected_ops(row, walk_segments(row, lanes, lane_step, lists), geo)
    dut = IssueSide(cfg, layout, rows_bound, fault)
    w, lists_dut = dut.walker, dut.lists
    out = {"ops": [], "cycles": [], "done": None, "room": []}

    async def bench(ctx):
        ctx.set(dut.desc, row)
        ctx.set(w.lane_step, lane_step)
        # the load (as the engine's ClearInput and Load): src = 0 written directly
        await load_lists(ctx, lists_dut, in_fields(row), 1 if row["in_flat"] else row["h"],
                         appends)
        # LayerStart, ClearOutput (gap cycles without run), then Walk
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        await ctx.tick().repeat(gap)
        ctx.set(dut.run, 1)
        pending = None  # the op issued last cycle: its event arrives this cycle
        for cycle in range(len(want) * 4 + 100):
            room = int(rng.random() < room_prob)
            ctx.set(w.room, room)
            _, _, op, addr, event, done = await ctx.tick().sample(
                w.op, w.fetch.addr, lists_dut.fetch.event, w.done)
            if pending is not None:
                pending["event"] = event
                pending = None
            if done:
                out["done"] = cycle
                break
            if op.valid:
                pending = op_as_dict(op, addr=addr)
                out["ops"].append(pending)
                out["cycles"].append(cycle)
                out["room"].append((room, int(op.last)))
        ctx.set(dut.run, 0)

    simulate(dut, bench)
    return out, want


WALKS = [  # name, lanes, layer, density
    ("conv_pool", 2, 0, 0.5),  # conv with a fused pool (4 quads per window), 2 groups
    ("conv_pool", 2, 0, 0.0),  # every segment empty: one CLEAR each
    ("conv_pool", 2, 1, 0.4),  # dense on flat lists (kb = 4), 2 groups
    ("conv_chain", 2, 0, 0.3),  # one input channel: single-event lists; 3 x 5 map (borders)
    ("conv_chain", 2, 0, 1.0),  # every list holds its one event
    ("conv_chain", 1, 1, 0.5),  # 3 input channels, 2 groups of one lane
    ("dense_chain", 8, 0, 0.5),  # dense input layer, 3 groups
    ("rate_dense", 2, 1, 0.6),  # rate layer after the first: one segment per step
]


@pytest.mark.parametrize("name,lanes,layer,density", WALKS)
def test_scanner_walker_issue_order_latency_no_bubble(name, lanes, layer, density):
    """One op per event in walk order (window -> group -> quad -> step; per segment the
    nonempty lists in (plane, tap) order), LOAD then SHIFT_ADD by the planes crossed, CLEAR for
    an empty segment, ``last`` on a segment's last op, tap base ``tap * C_in``, the group's
    rows, the pending shift, the entry read at ``list << kb | k`` and the event it returns; the
    first op SCAN_LATENCY cycles after the first run cycle, then one op per cycle until
    ``done`` (room always 1)."""
    seed = sum(map(ord, name)) + 10 * layer + int(10 * density)
    check_walk(*run_walk(name, lanes, layer, density, seed=seed))


def check_walk(out, want):
    assert out["done"] is not None, "done never rose"
    assert len(out["ops"]) == len(want), f"op count {len(out['ops'])}, want {len(want)}"
    for n, (got, ref) in enumerate(zip(out["ops"], want, strict=True)):
        compare_op(got, ref, n)
    cycles = out["cycles"]
    assert cycles[0] == SCAN_LATENCY, f"first accumulate at {cycles[0]}, not {SCAN_LATENCY}"
    bubbles = [(n, c) for n, (c, d) in enumerate(zip(cycles, cycles[1:], strict=False))
               if d != c + 1]
    assert not bubbles, f"the walker waited for the scanner: (op, cycle) {bubbles[:5]}"
    assert out["done"] == cycles[-1] + 1, "done must rise the cycle after the last op"


def test_scanner_walker_waits_for_room():
    """With ``room`` low at random the op stream is the same, and a segment's last op never
    issues without room (the rule that keeps the segment buffer from overflowing)."""
    out, want = run_walk("conv_pool", 2, 0, 0.5, seed=9, room_prob=0.4, gap=3)
    assert out["done"] is not None
    assert len(out["ops"]) == len(want)
    for n, (got, ref) in enumerate(zip(out["ops"], want, strict=True)):
        compare_op(got, ref, n)
    assert all(room for room, last in out["room"] if last)
    assert out["cycles"][0] >= SCAN_LATENCY


# ---------------------------------------------------------------------------------------------
# 3. FiringStage


def firing_segments(row, lanes, rng: random.Random, cfg):
    """Segments in walk order with random sums (the accumulator value before the pending
    Horner shift ``pend``) and the group's parameters."""
    lane_step = lanes * row["wr_hw"]
    segments = walk_segments(row, lanes, lane_step, {})
    acc_max = (1 << (cfg.acc_bits - 1)) - 1
    params = {}
    for g in range(row["groups"]):
        params[g] = {
            "bias": [rng.randint(-(1 << (cfg.bias_bits - 1)), (1 << (cfg.bias_bits - 1)) - 1)
                     for _ in range(lanes)],
            "threshold": [rng.randint(1, (1 << cfg.threshold_bits) - 1) for _ in range(lanes)]}
    out = []
    for seg in segments:
        meta = dict(seg["meta"])
        meta["pend"] = rng.randrange(row["t_in"])
        prm = params[meta["group"]]
        sums = []
        for p in range(lanes):
            d = prm["threshold"][p]
            if rng.random() < 0.1:  # the extremes of the accumulator
                value = rng.choice([-acc_max - 1, acc_max])
            else:  # around the levels: negative, 0..2^T, and beyond the clip
                value = rng.randint(-3 * d, ((1 << row["t_out"]) + 2) * d) - prm["bias"][p]
            value = max(-acc_max - 1, min(acc_max, value))
            sums.append(value >> meta["pend"])  # (sum << pend) stays in the acc range
        out.append({"meta": meta, "sums": sums, "params": prm})
    return out


def fire_reference(row, lanes, segments):
    """Appends (bit-serial firing layers) or logits (the output layer), and each segment's
    firing-stage cycles ``f_i`` (sw/cycles.py: ``2 + T_out + writes``, ``1 + valid``)."""
    appends, logits, occupancy = [], [], []
    pooled = [0] * lanes
    for seg in segments:
        meta, prm = seg["meta"], seg["params"]
        valid = [meta["chan"] + p < row["c_out"] for p in range(lanes)]
        u0 = [(s << meta["pend"]) + b for s, b in zip(seg["sums"], prm["bias"], strict=True)]
        if not row["fires"]:
            logits += [(meta["chan"] + p, u0[p]) for p in range(lanes) if valid[p]]
            occupancy.append(1 + sum(valid))
            continue
        bits = successive_approximation(torch.tensor(u0), torch.tensor(prm["threshold"]),
                                        row["t_out"], row["levels"])  # (lanes, t_out)
        levels = [int(sum(int(b) << (row["t_out"] - 1 - t) for t, b in enumerate(bits[p])))
                  if valid[p] else 0 for p in range(lanes)]
        if row["pool"]:
            pooled = levels if meta["q"] == 0 else [a + b for a, b in
                                                    zip(pooled, levels, strict=True)]
            values, planes = pooled, row["wr_t"]
            writes = meta["q"] == 3
        else:
            values, planes, writes = levels, row["t_out"], True
        seg_appends = []
        if writes:
            for pl in range(planes):  # plane-major, then lane: the pending-bit order
                for p in range(lanes):
                    if values[p] >> (planes - 1 - pl) & 1:
                        if row["wr_flat"]:
                            index = meta["flat"] + p * row["wr_hw"] + meta["wpos"]
                            seg_appends.append((pl, 0, 0, index))
                        else:
                            seg_appends.append((pl, meta["wy"], meta["wx"], meta["chan"] + p))
        appends += seg_appends
        occupancy.append(2 + row["t_out"] + len(seg_appends))
    return appends, logits, occupancy


def gaps(cycles):
    return [b - a for a, b in zip(cycles, cycles[1:], strict=False)]


def run_firing(name, lanes, layer, seed, *, ready_prob=1.0, fault=None):
    cfg, _, _, rows = setup(name, lanes)
    row = rows[layer]
    segments = firing_segments(row, lanes, random.Random(seed), cfg)
    return run_firing_segments(row, segments, name, lanes, seed=seed, ready_prob=ready_prob,
                               fault=fault)


def run_firing_segments(row, segments, name, lanes, *, seed=0, ready_prob=1.0, fault=None):
    """Offer ``segments`` on ``i_sums`` back to back (with their group's ``params``); record the
    appends, the logits taken, and the cycles each segment was taken in."""
    cfg, layout, _, _ = setup(name, lanes)
    rng = random.Random(seed)
    dut = FiringStage(config=cfg, desc_layout=layout, fault=fault)
    out = {"appends": [], "logits": [], "takes": [], "idle_ok": True}

    async def bench(ctx):
        ctx.set(dut.desc, row)
        ctx.set(dut.lane_off, [p * row["wr_hw"] for p in range(lanes)])
        todo = list(segments)
        cycle = 0
        while cycle < 20_000:
            seg = todo[0] if todo else None
            if seg is not None:
                ctx.set(dut.i_sums.valid, 1)
                ctx.set(dut.i_sums.payload, {"sums": seg["sums"], "meta": seg["meta"]})
                ctx.set(dut.params, seg["params"])
            else:
                ctx.set(dut.i_sums.valid, 0)
            ctx.set(dut.o_logits.ready, int(rng.random() < ready_prob))
            _, _, take, idle, av, at, ay, ax, ai, lv, lr, lp = await ctx.tick().sample(
                dut.i_sums.ready, dut.idle, dut.append.valid, dut.append.t, dut.append.y,
                dut.append.x, dut.append.index, dut.o_logits.valid, dut.o_logits.ready,
                dut.o_logits.payload)
            if take != (idle and seg is not None):
                out["idle_ok"] = False
            if take:
                out["takes"].append(cycle)
                todo.pop(0)
            if av:
                out["appends"].append((at, ay, ax, ai))
            if lv and lr:
                out["logits"].append((int(lp.index), int(lp.value)))
            if not todo and idle and not take:
                out["end"] = cycle
                break
            cycle += 1

    simulate(dut, bench)
    return row, segments, out


FIRINGS = [  # name, lanes, layer
    ("conv_pool", 2, 0),  # conv + fused pool (pooled levels on wr_t = 4 planes), flat writes
    ("conv_chain", 2, 0),  # conv, T_out = 3, L = 5 (the clip), writes (t, wy, wx, channel)
    ("conv_chain", 1, 1),  # conv writing flat lists for the dense output layer
    ("dense_chain", 8, 0),  # dense, 20 channels on 8 lanes (4 lanes of the last group idle)
]


@pytest.mark.parametrize("name,lanes,layer", FIRINGS)
def test_firing_stage_bitserial_appends(name, lanes, layer):
    """Per segment: ``u0 = (sum << pend) + B``, the successive approximation and the clip to L
    (golden.successive_approximation), a fused pool's sum of the window's four levels, and
    every 1-bit appended (plane-major, then lane) to the next layer's list; the stage takes
    each segment after exactly ``2 + T_out + writes`` cycles."""
    check_firing(*run_firing(name, lanes, layer, seed=layer + 7 * lanes))


def check_firing(row, segments, out):
    lanes = len(segments[0]["sums"])
    appends, _, occupancy = fire_reference(row, lanes, segments)
    assert row["fires"] and not row["rate"]
    assert out["idle_ok"], "i_sums.ready must be idle & valid"
    assert len(out["takes"]) == len(segments)
    assert out["appends"] == appends, "appends differ"
    assert len(appends) > 20, "too few emitted bits to be a test"
    assert gaps(out["takes"]) == occupancy[:-1]
    assert out["end"] == out["takes"][-1] + occupancy[-1]
    assert out["logits"] == []


@pytest.mark.parametrize("name,lanes,layer,ready_prob", [("dense_chain", 2, 1, 1.0),
                                                         ("conv_pool", 3, 1, 1.0),
                                                         ("conv_pool", 3, 1, 0.4)])
def test_firing_stage_output_logits(name, lanes, layer, ready_prob):
    """The output layer: one logit ``(sum << pend) + B`` per valid lane, index ``chan + p``,
    in order; ``1 + valid`` cycles per segment (always ready); none lost under back-pressure;
    no appends."""
    row, segments, out = run_firing(name, lanes, layer, seed=3, ready_prob=ready_prob)
    _, logits, occupancy = fire_reference(row, lanes, segments)
    assert not row["fires"]
    assert out["logits"] == logits
    assert [i for i, _ in logits] == list(range(row["c_out"]))
    assert out["appends"] == []
    if ready_prob == 1.0:
        assert gaps(out["takes"]) == occupancy[:-1]
        assert out["end"] == out["takes"][-1] + occupancy[-1]


def golden_firing(name, lanes, layer, seed):
    """Feed the stage layer ``layer``'s accumulator sums for a random image, as the golden model
    computes them (``trace=True``), and derive what it must append from the golden model's
    spikes of the layer it writes (its fused pool's, if any), or the golden logits."""
    program = PROGRAMS[name]()
    cfg, _, _, rows = setup(name, lanes)
    row = rows[layer]
    lay = program.layers[row["index"]]
    image = torch.from_numpy(np.random.default_rng(seed).integers(
        0, program.input.max_level + 1, (1, *program.input.shape)))
    gold = run_program(program, image, trace=True)
    acc = gold.accumulators[row["index"]][0, -1]  # after the last input plane, before B
    acc = acc.view(-1, 1, 1) if acc.dim() == 1 else acc

    def per_lane(values, chan, pad):
        return [int(values[chan + p]) if chan + p < row["c_out"] else pad for p in range(lanes)]

    segments = []
    for seg in walk_segments(row, lanes, lanes * row["wr_hw"], {}):
        meta = {**seg["meta"], "pend": 0}
        chan, oy, ox = meta["chan"], meta["oy"], meta["ox"]
        params = {"bias": per_lane(lay.bias, chan, 0),  # padded lanes 0, as the memories
                  "threshold": per_lane(lay.threshold if lay.fires else [0] * row["c_out"],
                                        chan, 0)}
        segments.append({"meta": meta, "params": params,
                          "sums": per_lane(acc[:, oy, ox], chan, 0)})
    if not row["fires"]:
        return row, segments, [], [(i, int(v)) for i, v in enumerate(gold.logits[0])]
    spikes = gold.spikes[row["index"] + row["pool"]][0]  # (planes, C, H, W) or (planes, N)
    spikes = spikes.view(*spikes.shape, 1, 1) if spikes.dim() == 2 else spikes
    appends = []
    for seg in segments:
        meta = seg["meta"]
        if row["pool"] and meta["q"] != 3:
            continue
        y, x = (meta["wy"], meta["wx"])
        for pl in range(spikes.shape[0]):
            for p in range(lanes):
                c = meta["chan"] + p
                if c < row["c_out"] and spikes[pl, c, y, x]:
                    appends.append((pl, 0, 0, (c * row["win_h"] + y) * row["win_w"] + x)
                                   if row["wr_flat"] else (pl, y, x, c))
    return row, segments, appends, []


@pytest.mark.parametrize("name,lanes,layer", [("conv_pool", 2, 0), ("conv_chain", 2, 0),
                                              ("conv_chain", 1, 1), ("dense_chain", 8, 0),
                                              ("dense_chain", 2, 1), ("conv_pool", 3, 1)])
def test_firing_stage_on_golden_sums(name, lanes, layer):
    """Fed the golden model's accumulator sums of a real input (and the Program's B and D), the
    stage appends exactly the golden model's spikes of the layer it writes (a fused pool's
    levels, flattened indices for a dense next layer), or emits the golden logits."""
    compared = 0
    for image_seed in range(3):
        row, segments, appends, logits = golden_firing(name, lanes, layer, seed=image_seed)
        *_, out = run_firing_segments(row, segments, name, lanes)
        assert out["appends"] == appends, f"image {image_seed}"
        assert out["logits"] == logits, f"image {image_seed}"
        compared += len(appends) + len(logits)
    assert compared >= 6, "nothing to compare"


# ---------------------------------------------------------------------------------------------
# 4. ArgmaxOutput


def test_argmax_output():
    """Logits pass through (same cycle, same back-pressure); the class is the argmax with ties
    to the lowest index (negative values, all equal, the most negative value), with the cycle
    count; taking the result starts the next inference afresh."""
    cfg, _, _, _ = setup("dense_chain", 2)
    dut = ArgmaxOutput(config=cfg)
    vb = len(dut.i_logits.payload.value)
    lo, hi = -(1 << (vb - 1)), (1 << (vb - 1)) - 1
    rng = random.Random(5)
    inferences = [[5, -3, 5, 7, 7, 2], [-5, -2, -2, -9], [lo], [0, 0, 0], [lo, lo + 1, lo],
                  [hi, hi], [-1, -1, -7, -1]]
    for _ in range(25):
        n = rng.randint(1, cfg.max_channels)
        inferences.append([rng.randint(-4, 4) if rng.random() < 0.7 else rng.randint(lo, hi)
                           for _ in range(n)])
    got = {"through": [], "results": [], "passthrough_ok": True}

    async def bench(ctx):
        for k, logits in enumerate(inferences):
            for i, value in enumerate(logits):
                ctx.set(dut.i_logits.valid, 1)
                ctx.set(dut.i_logits.payload, {"index": i, "value": value})
                for _ in range(100):  # ready at random: the logit waits, held
                    ready = int(rng.random() < 0.6)
                    ctx.set(dut.o_logits.ready, ready)
                    _, _, ov, op, ir, rv = await ctx.tick().sample(
                        dut.o_logits.valid, dut.o_logits.payload, dut.i_logits.ready,
                        dut.o_result.valid)
                    if not ov or ir != ready or rv:
                        got["passthrough_ok"] = False
                    if ready:
                        got["through"].append((int(op.index), int(op.value)))
                        break
                else:
                    raise AssertionError("the logit was never taken")
            ctx.set(dut.i_logits.valid, 0)
            ctx.set(dut.finish, 1)
            ctx.set(dut.cycles, 1000 + k)
            for _ in range(rng.randint(0, 2)):  # the result waits for its consumer
                ctx.set(dut.o_result.ready, 0)
                _, _, rv = await ctx.tick().sample(dut.o_result.valid)
                assert rv
            ctx.set(dut.o_result.ready, 1)
            _, _, rv, rp = await ctx.tick().sample(dut.o_result.valid, dut.o_result.payload)
            assert rv
            got["results"].append((int(rp.klass), int(rp.cycles)))
            ctx.set(dut.o_result.ready, 0)
            ctx.set(dut.finish, 0)

    simulate(dut, bench)
    assert got["passthrough_ok"]
    assert got["through"] == [(i, v) for logits in inferences for i, v in enumerate(logits)]
    want = [(int(argmax_lowest(torch.tensor([logits]))[0]), 1000 + k)
            for k, logits in enumerate(inferences)]
    assert got["results"] == want
    assert [k for k, _ in want[:7]] == [3, 1, 0, 0, 1, 0, 0]


# ---------------------------------------------------------------------------------------------
# The checks above catch the engine's deliberate faults (hw/faults.py) in the component alone


@pytest.mark.parametrize("fault,match", [(EngineFault.DROP_EVENT, "op count"),
                                         (EngineFault.HORNER_SHIFT, "shift")])
def test_walk_check_catches_walker_faults(fault, match):
    """A walker that skips the last event of lists of two or more, or shifts one plane too
    far, fails the walk check (conv_pool: two-event lists on two planes)."""
    out, want = run_walk("conv_pool", 2, 0, 0.5, seed=1, fault=fault)
    with pytest.raises(AssertionError, match=match):
        check_walk(out, want)


def test_firing_check_catches_strict_fire():
    """Successive approximation with ``u > thr`` instead of ``u >= thr`` fails the firing check
    (thresholds of 1..7 make ``u == thr`` common)."""
    with pytest.raises(AssertionError, match="appends differ"):
        check_firing(*run_firing("conv_chain", 2, 0, seed=9, fault=EngineFault.FIRE_STRICT))
