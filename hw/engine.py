"""The spiking layer engine: dense and 3x3 convolution layers with fused 2x2 sum pooling, in
bit-serial mode (left-shift Horner accumulation, deferred successive-approximation firing) and
rate-coded IF mode (reset by subtraction, SRP's probe and mask).

Output-stationary and event-driven (docs/engine.md). A layer's input is a set of event lists,
one per time plane ``t`` (a bit plane, or a rate step) and input position ``(y, x)`` holding the
channels active there (a dense layer reads one flat list per plane holding flattened input
indices). A per-row *nonempty bitmap* says which lists hold anything, so the walker jumps from
one nonempty list to the next across taps and planes without spending a cycle on an empty one:
it issues exactly one accumulate per event. The lanes keep one group of ``P`` output channels;
the last accumulate of a segment (all planes of a bit-serial group, one step of a rate group)
hands the sums to the firing stage through a one-entry buffer, so firing and writing the next
layer's lists overlap the next group's accumulation. :mod:`bitspike.sw.cycles` predicts every
cycle and holds the layer plan this module reads.

The memories are initialised from the Program; the logic depends on the
:class:`~bitspike.hw.config.EngineConfig` and the layer table (a ROM).
"""

# No ``from __future__ import annotations``: wiring.Component reads real annotations.
from contextlib import nullcontext
from enum import Enum

import numpy as np
from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..sw.cycles import KIND_CONV, TAPS, PlanError, layer_plan
from ..sw.errors import BitspikeError
from ..sw.program import Program
from .config import EngineConfig, pack_weights
from .lanes import AccumulateLanes, LaneCommand
from .neuron import ApproximationStep, IntegrateFireStep

__all__ = ["Engine", "EngineFault", "EngineUnsupported"]


class EngineUnsupported(BitspikeError):
    """The Program uses a layer sequence this engine does not run."""


class EngineFault(Enum):
    """Deliberate bugs, for tests only: each proves that a bench catches a broken engine.

    An engine built with a fault is wrong on purpose; nothing outside the tests builds one.
    """

    NONE = "none"
    #: Horner off by one: a plane change shifts the accumulator one place too far.
    HORNER_SHIFT = "horner-shift"
    #: The walker skips the last event of every list holding two or more.
    DROP_EVENT = "drop-event"
    #: Successive approximation compares ``u > thr`` instead of ``u >= thr``.
    FIRE_STRICT = "fire-strict"
    #: The reported cycle count is one too high.
    CYCLE_COUNT = "cycle-count"


def _bits(n: int) -> int:
    return max(1, int(n).bit_length())


def _pack_channel_rows(arrays, lanes: int, bits: int) -> list[int]:
    mask, rows = (1 << bits) - 1, []
    for values in arrays:
        values = [int(v) for v in values]
        for g in range(0, len(values), lanes):
            row = 0
            for p, v in enumerate(values[g:g + lanes]):
                row |= (v & mask) << (p * bits)
            rows.append(row)
    return rows


def _lowest(m, bits, width, name):
    """Priority encoder: (valid, index) of the lowest set bit of ``bits``."""
    valid = Signal(name=f"{name}_valid")
    index = Signal(range(max(2, width)), name=f"{name}_index")
    m.d.comb += valid.eq(bits.any())
    for i in reversed(range(width)):
        with m.If(bits[i]):
            m.d.comb += index.eq(i)
    return valid, index


class Engine(wiring.Component):
    """Spiking layer engine with ``P`` lanes for bit-serial and rate-coded Programs.

    Parameters
    ----------
    config : EngineConfig
        Lanes, widths and depths; the Program must fit it (:meth:`EngineConfig.check_fits`).
    program : Program
        A bit-serial or rate Program; it initialises the memories and the layer table.
    trace : bool
        Add the ``o_trace`` stream.
    fault : EngineFault
        Tests only: build the engine with a deliberate bug (:class:`EngineFault`).

    Members
    -------
    i_stream : In(stream.Signature(unsigned(max_t)))
        Input pixel levels, one per transfer, in the Program's flattened (C, H, W) order.
    o_logits : Out(stream.Signature(logit_layout))
        ``index`` and ``value`` of every output neuron, in index order (bit-serial ``acc + B``;
        rate: the sum of ``acc + B`` over the last ``t_steps`` steps).
    o_result : Out(stream.Signature(result_layout))
        ``klass`` (argmax, ties to the lowest index) and ``cycles`` (from the first pixel
        accepted to the result).
    o_trace : Out(stream.Signature(trace_layout)), only with ``trace=True``
        Per output position and group (and step, in rate mode) of every firing layer: a record
        of the ``P`` potentials (kind 0: bit-serial ``u0 = acc + B``, rate the potential after
        the step's integration) and one of the ``P`` emitted values (kind 1: levels after the
        clip, or the step's spikes after SRP's mask); a fused bit-serial pool adds a kind 1
        record of the pooled levels (its own layer index); the output layer one kind 0 record
        of its logits per group. Each carries the layer, position, group, step and the cycle
        stamp, and costs one cycle (more under back-pressure).

    Raises
    ------
    EngineUnsupported
        A layer sequence the schedule does not run (a pool not after a firing conv3x3).
    EngineFitError
        When the Program does not fit the configuration (names each shortfall).
    """

    def __init__(self, *, config: EngineConfig, program: Program, trace: bool = False,
                 fault: EngineFault = EngineFault.NONE):
        if not isinstance(fault, EngineFault):
            self._MustUse__silence = True
            raise TypeError(f"fault must be an EngineFault, not {fault!r}")
        self._fault = fault
        if not isinstance(config, EngineConfig):
            raise TypeError(f"config must be an EngineConfig, not {config!r}")
        if not isinstance(program, Program):
            raise TypeError(f"program must be a Program, not {program!r}")
        try:
            config.check_fits(program)
            try:
                self._plan = layer_plan(program, config.lanes)
            except PlanError as error:
                raise EngineUnsupported(str(error)) from None
        except BitspikeError:
            self._MustUse__silence = True  # refused before it could be used: no warning
            raise
        self._config, self._program, self._lanes = config, program, config.lanes
        # every width comes from the config: another Program that fits the same config gives
        # the same logic, only the memories' contents differ (tests/test_hw_engine.py)
        f = config.list_field_bits()
        self._hb, self._wb, self._tb = f["row"], f["column"], f["plane"]
        self._cb = config.event_depth.bit_length()  # a list holds at most event_depth events
        self._ev_addr_bits, self._cnt_addr_bits = f["event_address"], f["list_address"]
        self._idx_bits = f["event"]  # a channel, or a flattened index (< act_depth)
        self._groups = -(-config.max_channels // config.lanes)
        self._field_max = config.layer_table_limits()  # check_fits held the plan to these
        self._logit_layout = data.StructLayout({
            "index": unsigned(_bits(config.max_channels)),
            "value": signed(config.acc_bits + 2)})
        self._result_layout = data.StructLayout({
            "klass": unsigned(_bits(config.max_channels - 1)), "cycles": unsigned(32)})
        self._trace = bool(trace)
        self._trace_layout = data.StructLayout({
            "kind": unsigned(1),  # 0: potentials (or logits), 1: emitted levels or spikes
            "layer": unsigned(_bits(config.layer_depth)),
            "oy": unsigned(self._hb + 1), "ox": unsigned(self._wb + 1),
            "group": unsigned(_bits(self._groups)),
            "step": unsigned(_bits(config.max_t)),
            "cycles": unsigned(32),
            "values": data.ArrayLayout(signed(config.acc_bits + 2), config.lanes)})
        ports = {
            "i_stream": In(stream.Signature(unsigned(config.max_t))),
            "o_logits": Out(stream.Signature(self._logit_layout)),
            "o_result": Out(stream.Signature(self._result_layout)),
        }
        if self._trace:  # the trace port exists only when asked for: free when unused
            ports["o_trace"] = Out(stream.Signature(self._trace_layout))
        super().__init__(ports)

    @property
    def config(self) -> EngineConfig:
        return self._config

    def list_memory_bits(self) -> dict[str, int]:
        """Bits of the engine's own activation memories (both ping-pong halves): the event
        lists, their lengths and the nonempty bitmaps (:meth:`EngineConfig.cost`)."""
        cost = self._config.cost()
        keys = ("event_lists", "list_lengths", "nonempty_bitmaps")
        return {**{k: cost[k] for k in keys}, "total": sum(cost[k] for k in keys)}

    def elaborate(self, platform):  # noqa: C901 - one sequencer, read top to bottom
        m = Module()
        cfg, prog, P = self._config, self._program, self._lanes
        W, AB, T = cfg.weight_bits, cfg.acc_bits, cfg.max_t
        hb, wb, cb, tb = self._hb, self._wb, self._cb, self._tb
        plan = self._plan
        NL = T * TAPS  # walker slots: (plane, tap), plane-major
        VB = AB + 2  # potentials: acc + B, and rate's v + acc + B
        has_rate = "rate" in cfg.modes

        # ------------------------------------------------------------ layer table (ROM)
        layout = data.StructLayout({key: unsigned(_bits(self._field_max[key]))
                                    for key in plan[0]})
        m.submodules.layers = rom = Memory(shape=layout, depth=cfg.layer_depth, init=plan)
        layer = Signal(range(max(2, cfg.layer_depth)))
        desc_port = rom.read_port(domain="comb")
        m.d.comb += desc_port.addr.eq(layer)
        desc = desc_port.data

        # ------------------------------------------------------------ parameters
        m.submodules.weights = w_mem = Memory(
            shape=unsigned(P * W), depth=max(1, cfg.weight_depth),
            init=pack_weights(prog, P, weight_bits=W)[0])
        w_rd = w_mem.read_port()
        weighted = [lay for lay in prog.layers if lay.bias is not None]

        def channel_memory(name, arrays, bits):
            rows = _pack_channel_rows(arrays, P, bits)
            # one row per group of P channels: at most bias_depth rows
            mem = Memory(shape=unsigned(P * bits), depth=cfg.bias_depth, init=rows)
            m.submodules[name] = mem
            port = mem.read_port(domain="comb")
            return port, data.View(data.ArrayLayout(
                signed(bits) if name != "threshold" else unsigned(bits), P), port.data)

        def or_zeros(arr, lay):
            return arr if arr is not None else np.zeros(lay.out_shape[0], int)

        b_rd, bias = channel_memory("bias", [lay.bias for lay in weighted], cfg.bias_bits)
        d_rd, thresholds = channel_memory(
            "threshold", [or_zeros(lay.threshold, lay) for lay in weighted],
            cfg.threshold_bits)
        param_ports = [b_rd, d_rd]
        v_inits = None
        if has_rate:
            v_rd, v_inits = channel_memory(
                "v_init", [or_zeros(lay.v_init, lay) for lay in weighted],
                max(1, cfg.v_init_bits))
            param_ports.append(v_rd)

        # ------------------------------------------------------------ event lists (ping-pong)
        # list (t, y, x): its events at event_address, its length at list_address (valid only
        # while the list's bit is set in the nonempty bitmap: row y, bit Cat(x, t))
        ev_addr_bits, cnt_addr_bits = self._ev_addr_bits, self._cnt_addr_bits

        def list_address(t, y, x, fields):
            """``(t << hb | y) << wb | x``, with the fields of the layer that reads the list."""
            _, wb_, hb_ = fields
            return ((((t << hb_) | y) << wb_) | x)[:cnt_addr_bits]

        def event_address(k, t, y, x, fields):
            """Entry ``k`` of list (t, y, x): ``list_address << kb | k``."""
            return ((list_address(t, y, x, fields) << fields[0]) | k)[:ev_addr_bits]
        row_bits = T << wb
        src = Signal()
        writing_src = Signal()  # the load and its clear fill the buffer the first layer reads
        wbuf = Signal()
        m.d.comb += wbuf.eq(Mux(writing_src, src, ~src))
        ev_rd, ev_wr, cnt_rd, cnt_wr, map_rd, map_wr = [], [], [], [], [], []
        for name in "ab":
            ev = Memory(shape=unsigned(self._idx_bits), depth=1 << ev_addr_bits, init=[])
            cnt = Memory(shape=unsigned(cb + 1), depth=1 << cnt_addr_bits, init=[])
            bitmap = Memory(shape=unsigned(row_bits), depth=1 << hb, init=[])
            m.submodules[f"events_{name}"] = ev
            m.submodules[f"counts_{name}"] = cnt
            m.submodules[f"nonempty_{name}"] = bitmap
            ev_rd.append(ev.read_port())
            ev_wr.append(ev.write_port())
            cnt_rd.append(cnt.read_port(domain="comb"))
            cnt_wr.append(cnt.write_port())
            map_rd.append([bitmap.read_port(domain="comb") for _ in range(3)])
            map_wr.append(bitmap.write_port())

        # walker side (reads buffer src) and writer side (writes buffer wbuf)
        rd_t, rd_y, rd_x = Signal(tb), Signal(hb), Signal(wb)
        rd_rows = [Signal(hb, name=f"rd_row{i}") for i in range(3)]
        wr_t, wr_y, wr_x = Signal(tb), Signal(hb), Signal(wb)
        wr_append, wr_clear, wr_index = Signal(), Signal(), Signal(self._idx_bits)
        # address fields of the lists the walker reads (this layer's) and the writer writes
        # (the next layer's; during the load, which runs with layer 0's descriptor, layer 0's)
        rd_fields = (desc.in_kb, desc.in_wb, desc.in_hb)
        wr_fields = tuple(Mux(writing_src, desc[f"in_{key}"], desc[f"out_{key}"])
                          for key in ("kb", "wb", "hb"))
        for b in range(2):
            reader = (src == b) & ~writing_src
            m.d.comb += [
                cnt_rd[b].addr.eq(Mux(reader, list_address(rd_t, rd_y, rd_x, rd_fields),
                                      list_address(wr_t, wr_y, wr_x, wr_fields))),
                map_rd[b][0].addr.eq(Mux(reader, rd_rows[0], wr_y)),
                map_rd[b][1].addr.eq(rd_rows[1]), map_rd[b][2].addr.eq(rd_rows[2])]
        count_in = Signal(cb + 1)
        m.d.comb += count_in.eq(Mux(src, cnt_rd[1].data, cnt_rd[0].data))
        rows_in = [Signal(row_bits, name=f"rows_in{i}") for i in range(3)]
        for i in range(3):
            m.d.comb += rows_in[i].eq(Mux(src, map_rd[1][i].data, map_rd[0][i].data))
        # writer: append wr_index to list (wr_t, wr_y, wr_x), or clear bitmap row wr_y
        row_out = Signal(row_bits)
        m.d.comb += row_out.eq(Mux(wbuf, map_rd[1][0].data, map_rd[0][0].data))
        bit_at = Signal(tb + wb)
        m.d.comb += bit_at.eq(Cat(wr_x, wr_t))
        had = Signal()
        m.d.comb += had.eq(row_out.bit_select(bit_at, 1))
        count_out = Signal(cb + 1)
        m.d.comb += count_out.eq(Mux(had, Mux(wbuf, cnt_rd[1].data, cnt_rd[0].data), 0))
        for b in range(2):
            sel = wbuf == b
            m.d.comb += [
                cnt_wr[b].addr.eq(list_address(wr_t, wr_y, wr_x, wr_fields)),
                cnt_wr[b].data.eq(count_out + 1),
                cnt_wr[b].en.eq(wr_append & sel),
                ev_wr[b].addr.eq(event_address(count_out, wr_t, wr_y, wr_x, wr_fields)),
                ev_wr[b].data.eq(wr_index), ev_wr[b].en.eq(wr_append & sel),
                map_wr[b].addr.eq(wr_y),
                map_wr[b].data.eq(Mux(wr_clear, 0, row_out | (Const(1, row_bits) << bit_at))),
                map_wr[b].en.eq((wr_append | wr_clear) & sel)]

        def append(t, y, x, index):
            return [wr_t.eq(t), wr_y.eq(y), wr_x.eq(x), wr_index.eq(index), wr_append.eq(1)]

        # ------------------------------------------------------------ walker (issue stage)
        meta_layout = data.StructLayout({
            "grp_row": unsigned(_bits(max(1, cfg.weight_depth)) + 1),
            "brow": unsigned(_bits(cfg.bias_depth) + 1),
            "group": unsigned(_bits(self._groups)),
            "chan": unsigned(_bits(cfg.max_channels + P)),
            "flat": unsigned(_bits((cfg.max_channels + P) * cfg.max_height * cfg.max_width)),
            "wpos": unsigned(_bits(cfg.max_height * cfg.max_width)),
            "oy": unsigned(hb + 1), "ox": unsigned(wb + 1), "wy": unsigned(hb + 1),
            "wx": unsigned(wb + 1), "q": unsigned(2),
            "t": unsigned(_bits(T)),
            "pend": unsigned(_bits(T))})
        op_layout = data.StructLayout({
            "valid": unsigned(1), "cmd": LaneCommand, "shift": unsigned(_bits(T)),
            "last": unsigned(1), "tap_base": unsigned(_bits(self._field_max["rows"]) + 1),
            "meta": meta_layout})
        op0, op1, op2 = (Signal(op_layout, name=n) for n in ("op0", "op1", "op2"))
        m.d.sync += [op1.eq(op0), op2.eq(op1)]
        walk = Signal(meta_layout)  # the walker's group registers (grp_row .. wpos)
        meta = Signal(meta_layout)  # the segment being walked
        m.d.comb += meta.eq(walk)
        wy, wx, q = Signal(hb + 1), Signal(wb + 1), Signal(2)
        oy, ox = Signal(hb + 1), Signal(wb + 1)
        m.d.comb += [oy.eq(Mux(desc.pool, Cat(q[1], wy), wy)),
                     ox.eq(Mux(desc.pool, Cat(q[0], wx), wx))]
        seg_t = Signal.like(meta.t)
        lane_off = [Signal.like(meta.flat, name=f"lane_off{p}") for p in range(P)]
        for p in range(1, P):  # lane p's flat offset p * (written map size), by additions
            m.d.comb += lane_off[p].eq(lane_off[p - 1] + desc.wr_hw)
        lane_step = Signal.like(meta.flat)
        m.d.comb += lane_step.eq(lane_off[P - 1] + desc.wr_hw)
        m.d.comb += [meta.oy.eq(oy), meta.ox.eq(ox), meta.wy.eq(wy), meta.wx.eq(wx),
                     meta.q.eq(q), meta.t.eq(seg_t)]

        # the nonempty mask of every (plane, tap) slot of this output position
        for dy in range(3):
            m.d.comb += rd_rows[dy].eq(Mux(desc.kind == KIND_CONV, oy + dy - 1, 0))
        slots = Signal(NL)
        for t in range(T):
            in_segment = Mux(desc.per_step, seg_t == t, t < desc.t_in)
            for tap in range(TAPS):
                dy, dx = divmod(tap, 3)
                plane_row = rows_in[dy][t << wb:(t + 1) << wb]
                if tap == 0:
                    dense_bit = rows_in[1][t << wb]
                col = Signal(wb + 1, name=f"col{t}_{tap}")
                m.d.comb += col.eq(ox + dx - 1)
                inside = (~((dy == 0) & (oy == 0)) & ~((dy == 2) & (oy + 1 == desc.h))
                          & ~((dx == 0) & (ox == 0)) & ~((dx == 2) & (ox + 1 == desc.w)))
                conv_bit = inside & plane_row.bit_select(col[:wb], 1)
                bit = Mux(desc.kind == KIND_CONV, conv_bit,
                          dense_bit if tap == 0 else 0)
                m.d.comb += slots[t * TAPS + tap].eq(bit & in_segment)

        begun = Signal()  # a segment is under way: cur_* and k hold its cursor
        reg_slot, k, prev_t = Signal(range(max(2, NL))), Signal(cb + 1), Signal(tb + 1)
        first_valid, first_slot = _lowest(m, slots, NL, "first")
        cur_slot = Signal.like(reg_slot)
        m.d.comb += cur_slot.eq(Mux(begun, reg_slot, first_slot))
        has = Signal()
        m.d.comb += has.eq(begun | first_valid)
        after = Signal(NL)
        m.d.comb += after.eq((Const((1 << NL) - 1, NL) << (cur_slot + 1))[:NL])
        next_valid, next_slot = _lowest(m, slots & after, NL, "next")
        cur_t, cur_tap = Signal(tb + 1), Signal(range(TAPS))
        with m.Switch(cur_slot):
            for s in range(NL):
                with m.Case(s):
                    m.d.comb += [cur_t.eq(s // TAPS), cur_tap.eq(s % TAPS)]
        iy, ix = Signal(hb + 2), Signal(wb + 2)
        dy_c, dx_c = Signal(2), Signal(2)
        with m.Switch(cur_tap):
            for tap in range(TAPS):
                with m.Case(tap):
                    m.d.comb += [dy_c.eq(tap // 3), dx_c.eq(tap % 3)]
        with m.If(desc.kind == KIND_CONV):
            m.d.comb += [iy.eq(oy + dy_c - 1), ix.eq(ox + dx_c - 1)]
        kk = Signal(cb + 1)
        m.d.comb += [kk.eq(Mux(begun, k, 0)), rd_t.eq(cur_t), rd_y.eq(iy[:hb]),
                     rd_x.eq(ix[:wb])]
        more_here = Signal()
        if self._fault is EngineFault.DROP_EVENT:
            m.d.comb += more_here.eq(kk + 2 < count_in)
        else:
            m.d.comb += more_here.eq(kk + 1 < count_in)
        seg_end = Signal()
        m.d.comb += seg_end.eq(~has | (~more_here & ~next_valid))
        tap_bases = [Signal.like(op0.tap_base, name=f"tap_base{i}") for i in range(TAPS)]
        for i in range(1, TAPS):  # tap i's first weight row i * C_in, by additions
            m.d.comb += tap_bases[i].eq(tap_bases[i - 1] + desc.c_in)
        for b in range(2):
            m.d.comb += ev_rd[b].addr.eq(event_address(kk, cur_t[:tb], iy[:hb], ix[:wb],
                                                       rd_fields))
        ev_index = Signal(self._idx_bits)
        m.d.comb += ev_index.eq(Mux(src, ev_rd[1].data, ev_rd[0].data))

        # ------------------------------------------------------------ accumulate pipeline
        m.d.comb += w_rd.addr.eq(op1.meta.grp_row + op1.tap_base + ev_index)
        m.submodules.lanes = lanes = AccumulateLanes(
            lanes=P, acc_bits=AB, weight_bits=W, bias_bits=cfg.bias_bits, max_shift=T)
        m.d.comb += [lanes.weights.eq(w_rd.data), lanes.shift.eq(op2.shift),
                     lanes.cmd.eq(Mux(op2.valid, op2.cmd, LaneCommand.NOP))]
        done = [Signal(signed(AB), name=f"done{p}") for p in range(P)]
        done_meta = Signal(meta_layout)
        done_valid = Signal()
        take = Signal()  # the firing stage takes the buffer this cycle
        with m.If(take):
            m.d.sync += done_valid.eq(0)
        with m.If(op2.valid & op2.last):
            m.d.sync += [done_valid.eq(1), done_meta.eq(op2.meta),
                         *[done[p].eq(lanes.next[p]) for p in range(P)]]
        # a segment's last accumulate issues only when the buffer will have room for it
        room = Signal()
        m.d.comb += room.eq(~(op1.valid & op1.last) & ~(op2.valid & op2.last)
                            & (~done_valid | take))

        # ------------------------------------------------------------ counters and streams
        cycles = Signal(32)
        started, accept, in_result = Signal(), Signal(), Signal()
        with m.If((started | accept) & ~in_result):
            m.d.sync += cycles.eq(cycles + 1)
        best = Signal(signed(VB))
        best_idx = Signal.like(self.o_result.p.klass)
        have_best = Signal()

        # ------------------------------------------------------------ sequencer
        pc, py, px = Signal(_bits(cfg.max_channels) + 1), Signal(hb + 1), Signal(wb + 1)
        pflat = Signal(range(cfg.act_depth + 2))  # pixels accepted
        lpc, lpy, lpx = Signal.like(pc), Signal.like(py), Signal.like(px)  # the latched pixel
        remaining = Signal(T)
        load_done, last_pixel = Signal(), Signal()
        # the load and its clear run while `layer` is 0: desc is the first layer's row
        m.d.comb += [load_done.eq(pflat == desc.n_in), last_pixel.eq(pflat + 1 == desc.n_in)]
        clear_row = Signal(hb + 1)
        fire_idle = Signal()

        with m.FSM(name="engine"):
            with m.State("ClearInput"):  # the first layer's input rows: nothing listed yet
                m.d.comb += [writing_src.eq(1), wr_y.eq(clear_row), wr_clear.eq(1)]
                with m.If(clear_row + 1 >= Mux(desc.in_flat, 1, desc.h)):
                    m.d.sync += clear_row.eq(0)
                    m.next = "Load"
                with m.Else():
                    m.d.sync += clear_row.eq(clear_row + 1)
                m.d.sync += [pc.eq(0), py.eq(0), px.eq(0), pflat.eq(0)]

            with m.State("Load"):
                m.d.comb += writing_src.eq(1)
                with m.If(remaining != 0):
                    hi = Signal(range(T))
                    for b in range(T):
                        with m.If(remaining[b]):
                            m.d.comb += hi.eq(b)
                    rest = Signal(T)
                    m.d.comb += rest.eq(remaining & ~(Const(1, T) << hi))
                    plane = desc.t_in - 1 - hi
                    with m.If(desc.in_flat):
                        m.d.comb += append(plane, 0, 0, pflat - 1)
                    with m.Else():
                        m.d.comb += append(plane, lpy, lpx, lpc)
                    m.d.sync += remaining.eq(rest)
                    with m.If((rest == 0) & load_done):
                        m.next = "LayerStart"
                with m.Elif(load_done):
                    m.next = "LayerStart"
                with m.Else():
                    m.d.comb += self.i_stream.ready.eq(1)
                    with m.If(self.i_stream.valid):
                        m.d.comb += accept.eq(1)
                        m.d.sync += [remaining.eq(self.i_stream.payload), started.eq(1),
                                     lpc.eq(pc), lpy.eq(py), lpx.eq(px), pflat.eq(pflat + 1)]
                        with m.If(px + 1 == desc.w):
                            m.d.sync += px.eq(0)
                            with m.If(py + 1 == desc.h):
                                m.d.sync += [py.eq(0), pc.eq(pc + 1)]
                            with m.Else():
                                m.d.sync += py.eq(py + 1)
                        with m.Else():
                            m.d.sync += px.eq(px + 1)
                        with m.If((self.i_stream.payload == 0) & last_pixel):
                            m.next = "LayerStart"

            with m.State("LayerStart"):
                m.d.sync += [wy.eq(0), wx.eq(0), q.eq(0), seg_t.eq(0), begun.eq(0),
                             clear_row.eq(0), walk.grp_row.eq(desc.w_base),
                             walk.brow.eq(desc.b_base), walk.group.eq(0), walk.chan.eq(0),
                             walk.flat.eq(0), walk.wpos.eq(0)]
                with m.If(desc.fires):
                    m.next = "ClearOutput"
                with m.Else():
                    m.next = "Walk"

            with m.State("ClearOutput"):  # the rows of the lists this layer writes
                m.d.comb += [wr_y.eq(clear_row), wr_clear.eq(1)]
                with m.If(clear_row + 1 >= desc.clear_rows):
                    m.next = "Walk"
                with m.Else():
                    m.d.sync += clear_row.eq(clear_row + 1)

            with m.State("Walk"):
                go = Signal()
                m.d.comb += go.eq(~seg_end | room)
                with m.If(go):
                    m.d.comb += [op0.valid.eq(1), op0.last.eq(seg_end),
                                 op0.shift.eq(cur_t - prev_t),
                                 op0.tap_base.eq(Array(tap_bases)[cur_tap]),
                                 op0.meta.eq(meta),
                                 op0.cmd.eq(Mux(~has, LaneCommand.CLEAR,
                                                Mux(begun, LaneCommand.SHIFT_ADD,
                                                    LaneCommand.LOAD)))]
                    if self._fault is EngineFault.HORNER_SHIFT:  # one place too far
                        m.d.comb += op0.shift.eq(cur_t - prev_t + (cur_t != prev_t))
                    m.d.comb += op0.meta.pend.eq(Mux(desc.per_step, 0, desc.t_in - 1 - cur_t))
                    m.d.sync += prev_t.eq(cur_t)
                    with m.If(~seg_end):
                        m.d.sync += begun.eq(1)
                        with m.If(more_here):
                            m.d.sync += [k.eq(kk + 1), reg_slot.eq(cur_slot)]
                        with m.Else():
                            m.d.sync += [k.eq(0), reg_slot.eq(next_slot)]
                    with m.Else():
                        m.d.sync += begun.eq(0)
                        self._next_segment(m, desc, walk, seg_t, q, wy, wx, lane_step, P)

            with m.State("Drain"):  # the last segments fire and write
                with m.If(~op1.valid & ~op2.valid & ~done_valid & fire_idle):
                    with m.If(desc.last):
                        m.next = "Result"
                    with m.Else():
                        m.next = "LayerEnd"

            with m.State("LayerEnd"):
                m.d.sync += [src.eq(~src), layer.eq(layer + 1)]
                m.next = "LayerStart"

            with m.State("Result"):
                m.d.comb += [in_result.eq(1), self.o_result.valid.eq(1),
                             self.o_result.p.klass.eq(best_idx),
                             self.o_result.p.cycles.eq(cycles)]
                if self._fault is EngineFault.CYCLE_COUNT:
                    m.d.comb += self.o_result.p.cycles.eq(cycles + 1)
                with m.If(self.o_result.ready):
                    m.d.sync += [layer.eq(0), src.eq(0), have_best.eq(0), cycles.eq(0),
                                 started.eq(0), clear_row.eq(0)]
                    m.next = "ClearInput"

        self._firing_stage(m, desc, layer, done, done_meta, done_valid, take, fire_idle,
                           bias, thresholds, v_inits, param_ports, append,
                           lane_off, cycles, best, best_idx, have_best)
        return m

    def _next_segment(self, m, desc, walk, seg_t, q, wy, wx, lane_step, P):
        """After a segment's last accumulate: the next step, position in the window, group or
        window (walk order: window, group, position in the window, step); after the last one
        the layer drains."""
        with m.If(desc.per_step & (seg_t + 1 < desc.steps)):
            m.d.sync += seg_t.eq(seg_t + 1)
        with m.Else():
            m.d.sync += seg_t.eq(0)
            with m.If(q + 1 < desc.quads):
                m.d.sync += q.eq(q + 1)
            with m.Elif(walk.group + 1 < desc.groups):
                m.d.sync += [q.eq(0), walk.group.eq(walk.group + 1),
                             walk.grp_row.eq(walk.grp_row + desc.rows),
                             walk.brow.eq(walk.brow + 1), walk.chan.eq(walk.chan + P),
                             walk.flat.eq(walk.flat + lane_step)]
            with m.Else():
                m.d.sync += [q.eq(0), walk.group.eq(0), walk.grp_row.eq(desc.w_base),
                             walk.brow.eq(desc.b_base), walk.chan.eq(0), walk.flat.eq(0),
                             walk.wpos.eq(walk.wpos + 1)]
                with m.If(wx + 1 < desc.win_w):
                    m.d.sync += wx.eq(wx + 1)
                with m.Elif(wy + 1 < desc.win_h):
                    m.d.sync += [wx.eq(0), wy.eq(wy + 1)]
                with m.Else():
                    m.next = "Drain"

    def _firing_stage(self, m, desc, layer, done, done_meta, done_valid, take, fire_idle,
                      bias, thresholds, v_inits, param_ports, append, lane_off, cycles, best,
                      best_idx, have_best):
        """Deferred successive-approximation firing (bit-serial), IF steps (rate), pooling,
        list writes and logits: one segment at a time, beside the walker."""
        cfg, P, T = self._config, self._lanes, self._config.max_t
        AB = cfg.acc_bits
        VB = AB + 2
        has_rate, has_bs = v_inits is not None, "bitserial" in cfg.modes

        def mode(cond, other_mode_built):
            """``m.If(cond)`` when both modes are built (chosen per layer), else nothing."""
            return m.If(cond) if other_mode_built else nullcontext()

        fm = Signal.like(done_meta)  # the segment being fired
        for port in param_ports:  # parameters of the group taken now, or being fired
            m.d.comb += port.addr.eq(Mux(fire_idle, done_meta.brow, fm.brow))
        u = [Signal(signed(VB + T), name=f"u{p}") for p in range(P)]
        thr = [Signal(unsigned(cfg.threshold_bits + T), name=f"thr{p}") for p in range(P)]
        level = [Signal(T + 1, name=f"level{p}") for p in range(P)]
        pool_acc = [Signal(T + 1, name=f"pool_acc{p}") for p in range(P)]
        v = [Signal(signed(VB), name=f"v{p}") for p in range(P)]
        keep = [Signal(name=f"keep{p}") for p in range(P)]
        cur = [Signal(signed(AB + T), name=f"cur{p}") for p in range(P)]
        rec = [Signal(signed(VB), name=f"rec{p}") for p in range(P)]  # rate: traced potential
        step = Signal(range(T + 2))
        rstep = Signal(range(T + 2))
        TP = T * P
        pending = Signal(TP)
        wbase = Signal(self._tb + 1)
        emit = Signal(range(P + 1))
        lane_valid = [Signal(name=f"lane_valid{p}") for p in range(P)]
        for p in range(P):
            m.d.comb += lane_valid[p].eq(fm.chan + p < desc.c_out)
        taken = [Signal(signed(AB + T), name=f"taken{p}") for p in range(P)]
        for p in range(P):  # the handed-over sum with the planes still to shift (Horner)
            m.d.comb += taken[p].eq(done[p] << done_meta.pend)

        # one rate IF step per lane: input x (the step's sum, or the first layer's current)
        if has_rate:
            in_idle = fire_idle
            ts = Signal.like(rstep)
            m.d.comb += ts.eq(Mux(in_idle, done_meta.t, rstep))
            srp_now = Signal()
            m.d.comb += srp_now.eq((desc.tau != 0) & (ts == desc.tau))
            lane_ok = [Mux(in_idle, done_meta.chan + p < desc.c_out, lane_valid[p])
                       for p in range(P)]
            if_u, if_v, if_keep, if_spike, if_sum = [], [], [], [], []
            for p in range(P):
                x = Mux(in_idle, done[p], cur[p])
                unit = IntegrateFireStep(v_bits=VB + T, add_bits=AB + T,
                                         bias_bits=cfg.bias_bits,
                                         threshold_bits=cfg.threshold_bits,
                                         v_init_bits=max(1, cfg.v_init_bits))
                m.submodules[f"integrate_fire{p}"] = unit
                m.d.comb += [unit.v.eq(v[p]), unit.keep.eq(keep[p]), unit.add.eq(x),
                             unit.bias.eq(bias[p]), unit.threshold.eq(thresholds[p]),
                             unit.v_init.eq(v_inits[p]), unit.first.eq(ts == 0),
                             unit.probe_over.eq(srp_now), unit.enable.eq(lane_ok[p])]
                acc_out = Signal(signed(VB + T), name=f"out_sum{p}")  # output layer
                m.d.comb += acc_out.eq(Mux(ts == 0, 0, v[p])
                                       + Mux(ts >= desc.tau, x + bias[p], 0))
                if_u.append(unit.potential)
                if_v.append(unit.v_next)
                if_keep.append(unit.keep_next)
                if_spike.append(unit.spike)
                if_sum.append(acc_out)
            spikes = Signal(P)
            m.d.comb += spikes.eq(Cat(*if_spike))

            def rate_update(last_step):
                """One rate step, and where to go: a firing layer integrates and fires (then
                the trace, or the spikes' writes; without spikes the next step, or Idle after
                the last), the output layer adds to its logits (emitted after the last)."""
                with m.If(desc.fires):
                    m.d.sync += [*[v[p].eq(if_v[p]) for p in range(P)],
                                 *[keep[p].eq(if_keep[p]) for p in range(P)],
                                 *[rec[p].eq(if_u[p]) for p in range(P)],
                                 pending.eq(spikes), wbase.eq(ts)]
                    if trace:
                        m.next = "TraceRU"
                    else:
                        with m.If(spikes != 0):
                            m.next = "Write"
                        with m.Elif(last_step):
                            m.next = "Idle"
                with m.Else():
                    m.d.sync += [v[p].eq(if_sum[p]) for p in range(P)]
                    with m.If(last_step):
                        m.next = "TraceU" if trace else "Emit"

        def record(kind, values, layer_index, oy, ox, t=0):
            return [self.o_trace.valid.eq(1), self.o_trace.p.kind.eq(kind),
                    self.o_trace.p.layer.eq(layer_index), self.o_trace.p.oy.eq(oy),
                    self.o_trace.p.ox.eq(ox), self.o_trace.p.group.eq(fm.group),
                    self.o_trace.p.step.eq(t), self.o_trace.p.cycles.eq(cycles),
                    *[self.o_trace.p.values[p].eq(val) for p, val in enumerate(values)]]

        if has_bs:  # one successive-approximation step per lane and cycle
            approximate = []
            for p in range(P):
                unit = ApproximationStep(u_bits=VB + T, thr_bits=cfg.threshold_bits + T)
                m.submodules[f"approximate{p}"] = unit
                approximate.append(unit)

        trace = self._trace
        more_steps = Signal()
        m.d.comb += more_steps.eq(desc.analog & (rstep < desc.steps))

        with m.FSM(name="fire"):
            with m.State("Idle"):
                m.d.comb += fire_idle.eq(1)
                with m.If(done_valid):
                    m.d.comb += take.eq(1)
                    m.d.sync += [fm.eq(done_meta), emit.eq(0)]
                    if has_bs:
                        with mode(~desc.rate, has_rate):
                            with m.If(desc.fires):
                                shift = Signal(range(T + 1))
                                m.d.comb += shift.eq(desc.t_out - 1)
                                for p in range(P):
                                    m.d.sync += [u[p].eq(taken[p] + bias[p]),
                                                 thr[p].eq(thresholds[p] << shift),
                                                 level[p].eq(0)]
                                m.d.sync += step.eq(0)
                                m.next = "TraceU" if trace else "Approximate"
                            with m.Else():
                                m.d.sync += [v[p].eq(taken[p] + bias[p]) for p in range(P)]
                                m.next = "TraceU" if trace else "Emit"
                    if has_rate:
                        with mode(desc.rate, has_bs):
                            with m.If(desc.analog):
                                m.d.sync += [*[cur[p].eq(taken[p]) for p in range(P)],
                                             rstep.eq(0)]
                                m.next = "RateStep"
                            with m.Else():  # one step of a later layer
                                rate_update(done_meta.t + 1 == desc.steps)

            if has_rate:
                with m.State("RateStep"):  # the first layer: S steps on one current
                    m.d.sync += rstep.eq(rstep + 1)
                    rate_update(rstep + 1 >= desc.steps)

            if trace:
                with m.State("TraceU"):  # u0 = acc + B before firing, or the logits
                    sa_next = desc.fires & ~desc.rate  # bit-serial firing: u0, then SA
                    m.d.comb += record(0, [Mux(sa_next, u[p], v[p]) for p in range(P)],
                                       desc.index, fm.oy, fm.ox)
                    with m.If(self.o_trace.ready):
                        m.next = "Emit"
                        if has_bs:
                            with m.If(sa_next):
                                m.next = "Approximate"

                with m.State("TraceL"):  # the levels after the clip
                    m.d.comb += record(1, level, desc.index, fm.oy, fm.ox)
                    with m.If(self.o_trace.ready):
                        with m.If(desc.pool & (fm.q == 3)):
                            m.next = "TraceP"
                        with m.Elif(pending != 0):
                            m.next = "Write"
                        with m.Else():
                            m.next = "Idle"

                with m.State("TraceP"):  # the pooled levels (the pool layer's output)
                    m.d.comb += record(1, pool_acc, desc.index + 1, fm.wy, fm.wx)
                    with m.If(self.o_trace.ready):
                        with m.If(pending != 0):
                            m.next = "Write"
                        with m.Else():
                            m.next = "Idle"

                if has_rate:
                    with m.State("TraceRU"):  # the potential after the step's integration
                        m.d.comb += record(0, rec, desc.index, fm.oy, fm.ox, wbase)
                        with m.If(self.o_trace.ready):
                            m.next = "TraceRS"

                    with m.State("TraceRS"):  # the step's spikes (after SRP's mask)
                        m.d.comb += record(1, [pending[p] for p in range(P)], desc.index,
                                           fm.oy, fm.ox, wbase)
                        with m.If(self.o_trace.ready):
                            with m.If(pending != 0):
                                m.next = "Write"
                            with m.Elif(more_steps):
                                m.next = "RateStep"
                            with m.Else():
                                m.next = "Idle"

            if has_bs:
                with m.State("Approximate"):  # u >= D << (T - t): emit 1 and subtract
                    for p in range(P):
                        m.d.comb += [approximate[p].u.eq(u[p]),
                                     approximate[p].thr.eq(thr[p])]
                        if self._fault is EngineFault.FIRE_STRICT:  # u >= thr + 1: u > thr
                            m.d.comb += approximate[p].thr.eq(thr[p] + 1)
                        m.d.sync += [u[p].eq(approximate[p].u_next), thr[p].eq(thr[p] >> 1),
                                     level[p].eq(Cat(approximate[p].fire, level[p]))]
                    m.d.sync += step.eq(step + 1)
                    with m.If(step + 1 == desc.t_out):
                        m.next = "Clip"

                with m.State("Clip"):  # min(level, L); pooling sums the window's levels
                    bits = []
                    for p in range(P):
                        c = Signal(T + 1, name=f"clipped{p}")
                        with m.If(~lane_valid[p]):
                            m.d.comb += c.eq(0)
                        with m.Elif(level[p] > desc.levels):
                            m.d.comb += c.eq(desc.levels)
                        with m.Else():
                            m.d.comb += c.eq(level[p])
                        total = Signal(T + 1, name=f"pooled{p}")
                        m.d.comb += total.eq(Mux(fm.q == 0, 0, pool_acc[p]) + c)
                        m.d.sync += [level[p].eq(c), pool_acc[p].eq(total)]
                        value = Mux(desc.pool, total, c)
                        bits.append(value)
                    planes = Mux(desc.pool, desc.wr_t, desc.t_out)
                    vec = []
                    for pl in range(T):
                        for p in range(P):
                            at = Signal(range(T + 1), name=f"b{pl}_{p}")
                            m.d.comb += at.eq(planes - 1 - pl)
                            vec.append((pl < planes) & bits[p].bit_select(at, 1))
                    new_pending = Signal(TP)
                    writes = Signal()
                    m.d.comb += [new_pending.eq(Cat(*vec)),
                                 writes.eq(~desc.pool | (fm.q == 3))]
                    m.d.sync += [pending.eq(Mux(writes, new_pending, 0)), wbase.eq(0)]
                    if trace:
                        m.next = "TraceL"
                    else:
                        with m.If(writes & (new_pending != 0)):
                            m.next = "Write"
                        with m.Else():
                            m.next = "Idle"

            with m.State("Write"):  # one append per emitted 1-bit
                lowest = Signal(range(TP))
                for i in reversed(range(TP)):
                    with m.If(pending[i]):
                        m.d.comb += lowest.eq(i)
                plane, lane = Signal(range(T)), Signal(range(max(P, 2)))
                with m.Switch(lowest):
                    for i in range(TP):
                        with m.Case(i):
                            m.d.comb += [plane.eq(i // P), lane.eq(i % P)]
                offset = Signal.like(lane_off[0])
                m.d.comb += offset.eq(Array(lane_off)[lane])
                with m.If(desc.wr_flat):
                    m.d.comb += append(wbase + plane, 0, 0, fm.flat + offset + fm.wpos)
                with m.Else():
                    m.d.comb += append(wbase + plane, fm.wy, fm.wx, fm.chan + lane)
                rest = Signal(TP)
                m.d.comb += rest.eq(pending & ~(Const(1, TP) << lowest))
                m.d.sync += pending.eq(rest)
                with m.If(rest == 0):
                    m.next = "Idle"
                    if has_rate:
                        with m.If(more_steps):
                            m.next = "RateStep"

            with m.State("Emit"):  # the output layer's logits, one per valid lane
                value = Signal(signed(VB))
                m.d.comb += value.eq(Array(v)[emit])
                m.d.comb += [self.o_logits.valid.eq(1),
                             self.o_logits.p.index.eq(fm.chan + emit),
                             self.o_logits.p.value.eq(value)]
                with m.If(self.o_logits.ready):
                    m.d.sync += emit.eq(emit + 1)
                    with m.If(~have_best | (value > best)):
                        m.d.sync += [best.eq(value), best_idx.eq(fm.chan + emit),
                                     have_best.eq(1)]
                    with m.If((emit + 1 == P) | (fm.chan + emit + 1 >= desc.c_out)):
                        m.next = "Idle"
