"""The spiking layer engine: bit-serial dense, 3x3 convolution and 2x2 sum-pooling layers.

Output-stationary and event-driven (docs/engine.md). A layer's input is a set of event lists,
one per bit plane ``t`` and input position ``(y, x)`` holding the channels whose level has that
bit set (a dense layer reads one flat list per plane holding flattened input indices). For every
output position and group of ``P`` output channels, the lanes walk the events of the receptive
field plane by plane (Horner: a ``SHIFT`` between planes), add the bias, fire by successive
approximation (deferred, clipped at L) and append the 1-bits to the next layer's lists. Only
events cost accumulate cycles; :func:`bitspike.sw.cycles.engine_cycles` predicts every cycle.

The memories are initialised from the Program; the logic depends only on the
:class:`~bitspike.hw.config.EngineConfig` and the layer table (a ROM).
"""

# No ``from __future__ import annotations``: wiring.Component reads real annotations.
import numpy as np
from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..sw.errors import BitspikeError
from ..sw.program import Program
from .config import EngineConfig, pack_weights
from .lanes import AccumulateLanes, LaneCommand

__all__ = ["Engine", "EngineUnsupported", "engine_layer_table"]

KIND_DENSE, KIND_CONV, KIND_POOL = 0, 1, 2


class EngineUnsupported(BitspikeError):
    """The Program uses a mode this engine build does not run yet."""


def _bits(n: int) -> int:
    return max(1, int(n).bit_length())


def _map(shape) -> tuple[int, int, int]:
    shape = tuple(shape)
    return shape if len(shape) == 3 else (shape[0], 1, 1)


def engine_layer_table(program: Program, lanes: int) -> list[dict]:
    """The engine's view of each layer (also the cycle model's): shapes, groups, row bases."""
    rows, w_base, b_base = [], 0, 0
    layers = program.layers
    for i, lay in enumerate(layers):
        c_in, h, w = _map(lay.in_shape)
        c_out, oh, ow = _map(lay.out_shape)
        groups = -(-c_out // lanes)
        kind = {"dense": KIND_DENSE, "conv3x3": KIND_CONV, "sumpool2x2": KIND_POOL}[lay.kind]
        per_group = lay.fan_in if kind != KIND_POOL else 0
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        out_flat = int(nxt is not None and nxt.kind == "dense")
        rows.append({"kind": kind, "c_in": c_in, "h": h, "w": w, "c_out": c_out, "oh": oh,
                     "ow": ow, "groups": groups, "rows": per_group, "t_in": lay.t_in,
                     "t_out": lay.t_out, "levels": lay.levels, "fires": int(lay.fires),
                     "last": int(nxt is None), "w_base": w_base, "b_base": b_base,
                     "out_flat": out_flat, "ohw": oh * ow,
                     "in_flat": int(kind == KIND_DENSE), "n_in": c_in * h * w})
        w_base += groups * per_group
        b_base += groups if kind != KIND_POOL else 0
    return rows


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


class Engine(wiring.Component):
    """Bit-serial engine for dense, conv3x3 and sumpool2x2 layers with ``P`` lanes.

    Parameters
    ----------
    config : EngineConfig
        Lanes, widths and depths; the Program must fit it (:meth:`EngineConfig.check_fits`).
    program : Program
        A bit-serial Program; it initialises the memories and the layer table.

    Members
    -------
    i_stream : In(stream.Signature(unsigned(max_t)))
        Input pixel levels, one per transfer, in the Program's flattened (C, H, W) order.
    o_logits : Out(stream.Signature(logit_layout))
        ``index`` and ``value`` (``acc + B``) of every output neuron, in index order.
    o_result : Out(stream.Signature(result_layout))
        ``klass`` (argmax, ties to the lowest index) and ``cycles`` (from the first pixel
        accepted to the result).
    o_trace : Out(stream.Signature(trace_layout)), only with ``trace=True``
        Per output position and group: a record of the P potentials ``u0 = acc + B`` (kind 0,
        also for the output layer), and for a firing layer a record of the P emitted levels
        (kind 1), each with the layer, position, group and cycle stamp. Each record costs one
        cycle (more under back-pressure); without ``trace`` the port does not exist.

    Raises
    ------
    EngineUnsupported
        For a rate-mode Program (that datapath is not built yet).
    EngineFitError
        When the Program does not fit the configuration (names each shortfall).
    """

    def __init__(self, *, config: EngineConfig, program: Program, trace: bool = False):
        if not isinstance(config, EngineConfig):
            raise TypeError(f"config must be an EngineConfig, not {config!r}")
        if not isinstance(program, Program):
            raise TypeError(f"program must be a Program, not {program!r}")
        try:
            if program.mode != "bitserial":
                raise EngineUnsupported(
                    f"this engine build runs bit-serial Programs; {program.method} is a "
                    f"{program.mode} Program (the rate datapath is not built yet)")
            config.check_fits(program)
        except BitspikeError:
            self._MustUse__silence = True  # refused before it could be used: no warning
            raise
        self._config, self._program, self._lanes = config, program, config.lanes
        self._table = engine_layer_table(program, config.lanes)
        maps = [_map(lay.in_shape) for lay in program.layers] + [
            _map(lay.out_shape) for lay in program.layers]
        self._hb = _bits(max(h for _, h, _ in maps) - 1)
        self._wb = _bits(max(w for _, _, w in maps) - 1)
        longest = max(max(r["c_in"] * (r["h"] * r["w"] if r["in_flat"] else 1),
                          r["c_out"] * (r["ohw"] if r["out_flat"] else 1))
                      for r in self._table)
        self._cb = _bits(longest)  # one list holds at most `longest` events
        self._tb = _bits(config.max_t - 1)
        self._idx_bits = _bits(longest - 1)
        self._logit_layout = data.StructLayout({
            "index": unsigned(_bits(program.classes)), "value": signed(config.acc_bits)})
        self._result_layout = data.StructLayout({
            "klass": unsigned(_bits(program.classes - 1)), "cycles": unsigned(32)})
        self._trace = bool(trace)
        self._trace_layout = data.StructLayout({
            "kind": unsigned(1),  # 0: potentials after the bias (u0), 1: emitted levels
            "layer": unsigned(_bits(len(program.layers))),
            "oy": unsigned(self._hb + 1), "ox": unsigned(self._wb + 1),
            "group": unsigned(_bits(max(r["groups"] for r in self._table))),
            "cycles": unsigned(32),
            "values": data.ArrayLayout(signed(config.acc_bits + 1), config.lanes)})
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

    def elaborate(self, platform):
        m = Module()
        cfg, prog, P = self._config, self._program, self._lanes
        W, AB, T = cfg.weight_bits, cfg.acc_bits, cfg.max_t
        hb, wb, cb, tb = self._hb, self._wb, self._cb, self._tb
        table = self._table

        # ------------------------------------------------------------ layer table (ROM)
        # every count-like field must hold the largest value any layer has (n_in, rows, bases)
        big = _bits(max(2, max(r["rows"] * r["groups"] + r["w_base"] for r in table),
                        max(r["c_out"] * max(r["ohw"], 1) for r in table),
                        max(v for r in table for v in r.values())))
        layout = data.StructLayout({
            "kind": unsigned(2), "c_in": unsigned(big), "h": unsigned(hb + 1),
            "w": unsigned(wb + 1), "c_out": unsigned(big), "oh": unsigned(hb + 1),
            "ow": unsigned(wb + 1), "groups": unsigned(big), "rows": unsigned(big),
            "t_in": unsigned(_bits(T)), "t_out": unsigned(_bits(T + 2)),
            "levels": unsigned(T), "fires": unsigned(1), "last": unsigned(1),
            "w_base": unsigned(big), "b_base": unsigned(big), "out_flat": unsigned(1),
            "ohw": unsigned(big), "in_flat": unsigned(1), "n_in": unsigned(big)})
        m.submodules.layers = rom = Memory(shape=layout, depth=len(table), init=table)
        layer = Signal(range(max(2, len(table))))
        desc_port = rom.read_port(domain="comb")
        m.d.comb += desc_port.addr.eq(layer)
        desc = desc_port.data

        # ------------------------------------------------------------ parameters
        m.submodules.weights = w_mem = Memory(
            shape=unsigned(P * W), depth=max(1, cfg.weight_depth),
            init=pack_weights(prog, P, weight_bits=W)[0])
        w_rd = w_mem.read_port()
        weighted = [lay for lay in prog.layers if lay.bias is not None]
        bias_rows = _pack_channel_rows([lay.bias for lay in weighted], P, cfg.bias_bits)
        thr_rows = _pack_channel_rows(
            [lay.threshold if lay.threshold is not None else np.zeros(lay.out_shape[0], int)
             for lay in weighted], P, cfg.threshold_bits)
        m.submodules.bias = b_mem = Memory(shape=unsigned(P * cfg.bias_bits),
                                           depth=max(1, len(bias_rows)), init=bias_rows)
        m.submodules.threshold = d_mem = Memory(shape=unsigned(P * cfg.threshold_bits),
                                                depth=max(1, len(thr_rows)), init=thr_rows)
        b_rd = b_mem.read_port(domain="comb")
        d_rd = d_mem.read_port(domain="comb")

        # ------------------------------------------------------------ event lists (ping-pong)
        ev_addr_bits = cb + wb + hb + tb
        cnt_addr_bits = wb + hb + tb
        ev_rd, ev_wr, cnt_rd, cnt_wr = [], [], [], []
        for name in "ab":
            ev = Memory(shape=unsigned(self._idx_bits), depth=1 << ev_addr_bits, init=[])
            cnt = Memory(shape=unsigned(cb + 1), depth=1 << cnt_addr_bits, init=[])
            m.submodules[f"events_{name}"] = ev
            m.submodules[f"counts_{name}"] = cnt
            ev_rd.append(ev.read_port())
            ev_wr.append(ev.write_port())
            cnt_rd.append(cnt.read_port(domain="comb"))
            cnt_wr.append(cnt.write_port())
        src = Signal()
        writing_src = Signal()  # Load and its clear fill the buffer the first layer reads
        wbuf = Signal()
        m.d.comb += wbuf.eq(Mux(writing_src, src, ~src))

        # count read ports: port of buffer src serves the walker, the other the writer
        rd_t, rd_y, rd_x = Signal(tb), Signal(hb), Signal(wb)
        wr_t, wr_y, wr_x = Signal(tb), Signal(hb), Signal(wb)
        for b in range(2):
            reader = (src == b) & ~writing_src
            m.d.comb += cnt_rd[b].addr.eq(Mux(reader, Cat(rd_x, rd_y, rd_t),
                                              Cat(wr_x, wr_y, wr_t)))
        count_in = Signal(cb + 1)
        count_out = Signal(cb + 1)
        m.d.comb += [count_in.eq(Mux(src, cnt_rd[1].data, cnt_rd[0].data)),
                     count_out.eq(Mux(wbuf, cnt_rd[1].data, cnt_rd[0].data))]
        cnt_we, cnt_wdata = Signal(), Signal(cb + 1)
        ev_we, ev_wdata = Signal(), Signal(self._idx_bits)
        for b in range(2):
            m.d.comb += [cnt_wr[b].addr.eq(Cat(wr_x, wr_y, wr_t)), cnt_wr[b].data.eq(cnt_wdata),
                         cnt_wr[b].en.eq(cnt_we & (wbuf == b)),
                         ev_wr[b].addr.eq(Cat(count_out[:cb], wr_x, wr_y, wr_t)),
                         ev_wr[b].data.eq(ev_wdata), ev_wr[b].en.eq(ev_we & (wbuf == b))]

        def append(index):
            """Append ``index`` to list (wr_t, wr_y, wr_x) of the write buffer."""
            return [ev_we.eq(1), ev_wdata.eq(index), cnt_we.eq(1), cnt_wdata.eq(count_out + 1)]

        # ------------------------------------------------------------ datapath
        m.submodules.lanes = lanes = AccumulateLanes(lanes=P, acc_bits=AB, weight_bits=W,
                                                     bias_bits=cfg.bias_bits)
        m.d.comb += lanes.bias.eq(b_rd.data)

        # walk state
        oy, ox = Signal(hb + 1), Signal(wb + 1)  # output position
        pos_lin = Signal(_bits(max(r["ohw"] for r in table)) + 1)  # oy * OW + ox
        group = Signal(range(max(r["groups"] for r in table) + 1))
        grp_row = Signal(_bits(max(1, cfg.weight_depth)) + 1)
        grp_brow = Signal(_bits(max(1, len(bias_rows))) + 1)
        grp_chan = Signal(_bits(max(r["c_out"] for r in table) + P))  # group * P
        t = Signal(range(T + 3))
        tap = Signal(range(9))
        tap_base = Signal(_bits(max(r["rows"] for r in table)) + 1)  # tap * C_in
        k = Signal(cb + 1)
        m.d.comb += [b_rd.addr.eq(grp_brow), d_rd.addr.eq(grp_brow)]

        # the receptive field position of the current tap
        dy = Signal(2)
        dx = Signal(2)
        with m.Switch(tap):
            for i in range(9):
                with m.Case(i):
                    m.d.comb += [dy.eq(i // 3), dx.eq(i % 3)]
        iy, ix = Signal(hb + 2), Signal(wb + 2)
        inside = Signal()
        with m.Switch(desc.kind):
            with m.Case(KIND_CONV):
                m.d.comb += [iy.eq(oy + dy - 1), ix.eq(ox + dx - 1),
                             inside.eq(~((dy == 0) & (oy == 0)) & ~((dy == 2) & (oy + 1 == desc.h))
                                       & ~((dx == 0) & (ox == 0))
                                       & ~((dx == 2) & (ox + 1 == desc.w)))]
            with m.Case(KIND_POOL):  # the 2x2 window: taps 0..3 -> (tap[1], tap[0])
                m.d.comb += [iy.eq(Cat(tap[1], oy)), ix.eq(Cat(tap[0], ox)), inside.eq(1)]
            with m.Default():
                m.d.comb += [iy.eq(0), ix.eq(0), inside.eq(1)]
        n_taps = Signal(4)
        m.d.comb += n_taps.eq(Mux(desc.kind == KIND_CONV, 9, Mux(desc.kind == KIND_POOL, 4, 1)))

        # pipeline: stage 0 issues (event address), stage 1 has the index (weight address),
        # stage 2 adds
        op1, op2 = Signal(LaneCommand), Signal(LaneCommand)
        m.d.sync += op2.eq(op1)
        ev_index = Signal(self._idx_bits)
        m.d.comb += ev_index.eq(Mux(src, ev_rd[1].data, ev_rd[0].data))
        for b in range(2):
            m.d.comb += ev_rd[b].addr.eq(Cat(k[:cb], ix[:wb], iy[:hb], t[:tb]))
        tap_base1 = Signal.like(tap_base)
        m.d.sync += tap_base1.eq(tap_base)
        m.d.comb += w_rd.addr.eq(grp_row + tap_base1 + ev_index)
        # sum pooling adds 1 in the lane of the event's channel: a one-hot weight row
        pool_idx = Signal(self._idx_bits)
        m.d.sync += pool_idx.eq(ev_index)
        onehot = Signal(P * W)
        for p in range(P):
            m.d.comb += onehot[p * W].eq(pool_idx == grp_chan + p)
        is_pool = Signal()
        m.d.comb += is_pool.eq(desc.kind == KIND_POOL)
        m.d.comb += lanes.weights.eq(Mux(is_pool, onehot, w_rd.data))
        m.d.comb += lanes.cmd.eq(op2)

        # successive approximation, all lanes in parallel
        u = [Signal(signed(AB + 1), name=f"u{p}") for p in range(P)]
        thr = [Signal(unsigned(cfg.threshold_bits + T + 2), name=f"thr{p}") for p in range(P)]
        level = [Signal(T + 2, name=f"level{p}") for p in range(P)]
        step = Signal(range(T + 3))
        thresholds = data.View(data.ArrayLayout(unsigned(cfg.threshold_bits), P), d_rd.data)
        TP = (T + 2) * P
        pending = Signal(TP)
        lane_off = [Signal(_bits(max(r["c_out"] * r["ohw"] for r in table) + 1),
                           name=f"lane_off{p}") for p in range(P)]
        for p in range(1, P):  # lane p's flat offset p * OH * OW, by additions
            m.d.comb += lane_off[p].eq(lane_off[p - 1] + desc.ohw)
        grp_flat = Signal.like(lane_off[0])  # group * P * OH * OW
        lane_step = Signal.like(lane_off[0])  # P * OH * OW
        m.d.comb += lane_step.eq(lane_off[P - 1] + desc.ohw)
        best = Signal(signed(AB))
        best_idx = Signal.like(self.o_result.p.klass)
        have_best = Signal()
        emit = Signal(range(P + 1))
        cycles = Signal(32)
        started, accept, in_result = Signal(), Signal(), Signal()
        with m.If((started | accept) & ~in_result):
            m.d.sync += cycles.eq(cycles + 1)
        # loader state
        pc, py, px = Signal(_bits(max(r["c_in"] for r in table)) + 1), Signal(hb + 1), \
            Signal(wb + 1)
        pflat = Signal(range(cfg.act_depth + 2))  # pixels accepted
        lpc, lpy, lpx = Signal.like(pc), Signal.like(py), Signal.like(px)  # the latched pixel
        remaining = Signal(T)
        load_done, last_pixel = Signal(), Signal()
        m.d.comb += [load_done.eq(pflat == desc.n_in), last_pixel.eq(pflat + 1 == desc.n_in)]
        # clear walker
        ct, cy, cx = Signal(tb + 1), Signal(hb + 1), Signal(wb + 1)

        def reset_group_walk():
            return [t.eq(0), tap.eq(0), k.eq(0), tap_base.eq(0)]

        with m.FSM(name="engine"):
            with m.State("ClearInput"):
                # the first layer's input lists: t_in planes x (flat: 1, else H x W) positions
                m.d.comb += [writing_src.eq(1), wr_t.eq(ct), wr_y.eq(cy), wr_x.eq(cx),
                             cnt_we.eq(1), cnt_wdata.eq(0)]
                self._step_clear(m, ct, cy, cx, desc.t_in,
                                 Mux(desc.in_flat, 1, desc.h), Mux(desc.in_flat, 1, desc.w),
                                 "Load")
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
                    # the pixel was counted when accepted: its position is the previous one
                    m.d.comb += [wr_t.eq(desc.t_in - 1 - hi)]
                    with m.If(desc.in_flat):
                        m.d.comb += [wr_y.eq(0), wr_x.eq(0), *append(pflat - 1)]
                    with m.Else():
                        m.d.comb += [wr_y.eq(lpy), wr_x.eq(lpx), *append(lpc)]
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
                        # advance (c, y, x) in flattened order
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
                m.d.sync += [ct.eq(0), cy.eq(0), cx.eq(0), oy.eq(0), ox.eq(0), pos_lin.eq(0),
                             group.eq(0), grp_chan.eq(0), grp_flat.eq(0),
                             grp_row.eq(desc.w_base), grp_brow.eq(desc.b_base)]
                with m.If(desc.fires):
                    m.next = "ClearOutput"
                with m.Else():
                    m.next = "GroupStart"

            with m.State("ClearOutput"):
                m.d.comb += [wr_t.eq(ct), wr_y.eq(cy), wr_x.eq(cx), cnt_we.eq(1),
                             cnt_wdata.eq(0)]
                self._step_clear(m, ct, cy, cx, desc.t_out,
                                 Mux(desc.out_flat, 1, desc.oh), Mux(desc.out_flat, 1, desc.ow),
                                 "GroupStart")

            with m.State("GroupStart"):
                m.d.comb += lanes.cmd.eq(LaneCommand.CLEAR)
                m.d.sync += [*reset_group_walk(), op1.eq(LaneCommand.NOP)]
                m.next = "Issue"

            with m.State("Issue"):
                m.d.comb += [rd_t.eq(t), rd_y.eq(iy[:hb]), rd_x.eq(ix[:wb])]
                n_here = Signal(cb + 1)
                m.d.comb += n_here.eq(Mux(inside, count_in, 0))
                with m.If(k < n_here):
                    m.d.sync += [k.eq(k + 1), op1.eq(LaneCommand.ADD)]
                with m.Elif(tap + 1 < n_taps):
                    m.d.sync += [tap.eq(tap + 1), k.eq(0), tap_base.eq(tap_base + desc.c_in),
                                 op1.eq(LaneCommand.NOP)]
                with m.Elif(t + 1 < desc.t_in):
                    m.d.sync += [t.eq(t + 1), tap.eq(0), k.eq(0), tap_base.eq(0),
                                 op1.eq(LaneCommand.SHIFT)]
                with m.Else():
                    m.d.sync += op1.eq(Mux(is_pool, LaneCommand.NOP, LaneCommand.ADD_BIAS))
                    m.next = "Drain1"

            with m.State("Drain1"):
                m.d.sync += op1.eq(LaneCommand.NOP)
                m.next = "Drain2"

            with m.State("Drain2"):
                m.d.sync += emit.eq(0)
                with m.If(desc.fires):
                    m.next = "TraceAcc" if self._trace else "FireLoad"
                with m.Else():
                    m.next = "TraceAcc" if self._trace else "Emit"

            if self._trace:
                def record(kind, values):
                    return [self.o_trace.valid.eq(1), self.o_trace.p.kind.eq(kind),
                            self.o_trace.p.layer.eq(layer), self.o_trace.p.oy.eq(oy),
                            self.o_trace.p.ox.eq(ox), self.o_trace.p.group.eq(group),
                            self.o_trace.p.cycles.eq(cycles),
                            *[self.o_trace.p.values[p].eq(v) for p, v in enumerate(values)]]

                with m.State("TraceAcc"):  # the group's potentials u0 = acc + B
                    m.d.comb += record(0, [lanes.acc[p] for p in range(P)])
                    with m.If(self.o_trace.ready):
                        with m.If(desc.fires):
                            m.next = "FireLoad"
                        with m.Else():
                            m.next = "Emit"

                with m.State("TraceLevels"):  # the levels it emits (after the clip)
                    m.d.comb += record(1, level)
                    with m.If(self.o_trace.ready):
                        m.next = "Write"

            with m.State("FireLoad"):
                shift = Signal(range(T + 2))
                m.d.comb += shift.eq(desc.t_out - 1)
                for p in range(P):
                    d_p = Mux(is_pool, 1, thresholds[p])
                    m.d.sync += [u[p].eq(lanes.acc[p]), thr[p].eq(d_p << shift), level[p].eq(0)]
                m.d.sync += step.eq(0)
                m.next = "Fire"

            with m.State("Fire"):
                for p in range(P):
                    fire = Signal(name=f"fire{p}")
                    m.d.comb += fire.eq(u[p] >= thr[p])
                    with m.If(fire):
                        m.d.sync += u[p].eq(u[p] - thr[p])
                    m.d.sync += [thr[p].eq(thr[p] >> 1), level[p].eq(Cat(fire, level[p]))]
                m.d.sync += step.eq(step + 1)
                with m.If(step + 1 == desc.t_out):
                    m.next = "Clip"

            with m.State("Clip"):
                vec = []
                clipped = []
                for p in range(P):
                    c = Signal(T + 2, name=f"clipped{p}")
                    with m.If(grp_chan + p >= desc.c_out):
                        m.d.comb += c.eq(0)
                    with m.Elif(level[p] > desc.levels):
                        m.d.comb += c.eq(desc.levels)
                    with m.Else():
                        m.d.comb += c.eq(level[p])
                    clipped.append(c)
                    m.d.sync += level[p].eq(c)
                for tt in range(T + 2):
                    for p in range(P):
                        bit = Signal(range(T + 3), name=f"b{tt}_{p}")
                        m.d.comb += bit.eq(desc.t_out - 1 - tt)
                        vec.append((tt < desc.t_out) & clipped[p].bit_select(bit, 1))
                m.d.sync += pending.eq(Cat(*vec))
                m.next = "TraceLevels" if self._trace else "Write"

            with m.State("Write"):
                with m.If(pending == 0):
                    self._next_group(m, desc, oy, ox, pos_lin, group, grp_row, grp_brow,
                                     grp_chan, grp_flat, lane_step, P)
                with m.Else():
                    lowest = Signal(range(TP))
                    plane = Signal(range(T + 2))
                    lane = Signal(range(max(P, 2)))
                    for i in reversed(range(TP)):
                        with m.If(pending[i]):
                            m.d.comb += [lowest.eq(i), plane.eq(i // P), lane.eq(i % P)]
                    m.d.comb += wr_t.eq(plane)
                    with m.If(desc.out_flat):
                        offset = Signal.like(lane_off[0])
                        m.d.comb += offset.eq(Array(lane_off)[lane])
                        m.d.comb += [wr_y.eq(0), wr_x.eq(0),
                                     *append(grp_flat + offset + pos_lin)]
                    with m.Else():
                        m.d.comb += [wr_y.eq(oy), wr_x.eq(ox), *append(grp_chan + lane)]
                    m.d.sync += pending.eq(pending & ~(Const(1, TP) << lowest))

            with m.State("Emit"):
                with m.If((emit == P) | (grp_chan + emit >= desc.c_out)):
                    self._next_group(m, desc, oy, ox, pos_lin, group, grp_row, grp_brow,
                                     grp_chan, grp_flat, lane_step, P)
                with m.Else():
                    value = Signal(signed(AB))
                    m.d.comb += value.eq(Array(lanes.acc[p] for p in range(P))[emit])
                    m.d.comb += [self.o_logits.valid.eq(1),
                                 self.o_logits.p.index.eq(grp_chan + emit),
                                 self.o_logits.p.value.eq(value)]
                    with m.If(self.o_logits.ready):
                        m.d.sync += emit.eq(emit + 1)
                        with m.If(~have_best | (value > best)):
                            m.d.sync += [best.eq(value), best_idx.eq(grp_chan + emit),
                                         have_best.eq(1)]

            with m.State("LayerEnd"):
                m.d.sync += [src.eq(~src), layer.eq(layer + 1)]
                m.next = "LayerStart"

            with m.State("Result"):
                m.d.comb += [in_result.eq(1), self.o_result.valid.eq(1),
                             self.o_result.p.klass.eq(best_idx),
                             self.o_result.p.cycles.eq(cycles)]
                with m.If(self.o_result.ready):
                    m.d.sync += [layer.eq(0), src.eq(0), have_best.eq(0), cycles.eq(0),
                                 started.eq(0), ct.eq(0), cy.eq(0), cx.eq(0)]
                    m.next = "ClearInput"
        return m

    @staticmethod
    def _step_clear(m, ct, cy, cx, planes, height, width, then):
        """Advance the (t, y, x) clear walker; go to ``then`` after the last entry."""
        with m.If(cx + 1 < width):
            m.d.sync += cx.eq(cx + 1)
        with m.Else():
            m.d.sync += cx.eq(0)
            with m.If(cy + 1 < height):
                m.d.sync += cy.eq(cy + 1)
            with m.Else():
                m.d.sync += cy.eq(0)
                with m.If(ct + 1 < planes):
                    m.d.sync += ct.eq(ct + 1)
                with m.Else():
                    m.d.sync += ct.eq(0)
                    m.next = then

    @staticmethod
    def _next_group(m, desc, oy, ox, pos_lin, group, grp_row, grp_brow, grp_chan, grp_flat,
                    lane_step, P):
        """Next group of P channels; after the last one, the next output position."""
        with m.If(group + 1 < desc.groups):
            m.d.sync += [group.eq(group + 1), grp_row.eq(grp_row + desc.rows),
                         grp_brow.eq(grp_brow + 1), grp_chan.eq(grp_chan + P),
                         grp_flat.eq(grp_flat + lane_step)]
            m.next = "GroupStart"
        with m.Else():
            m.d.sync += [group.eq(0), grp_row.eq(desc.w_base), grp_brow.eq(desc.b_base),
                         grp_chan.eq(0), grp_flat.eq(0)]
            last_x = ox + 1 == desc.ow
            last_y = oy + 1 == desc.oh
            with m.If(~last_x):
                m.d.sync += [ox.eq(ox + 1), pos_lin.eq(pos_lin + 1)]
                m.next = "GroupStart"
            with m.Elif(~last_y):
                m.d.sync += [ox.eq(0), oy.eq(oy + 1), pos_lin.eq(pos_lin + 1)]
                m.next = "GroupStart"
            with m.Elif(desc.last):
                m.next = "Result"
            with m.Else():
                m.next = "LayerEnd"
