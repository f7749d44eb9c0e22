"""The engine's firing stage: deferred firing (bit-serial), IF steps (rate), pooling, list
writes and the output layer's logits, one segment at a time beside the walker.

A segment's ``P`` sums arrive on ``i_sums`` (the walker's last accumulate hands them over through
a one-entry buffer), with the segment's parameters on ``params`` in the same cycle. Bit-serial
firing is successive approximation on the :class:`~bitspike.hw.neuron.ApproximationStep` units,
one step per cycle, then the clip to ``L`` and, for a fused pool, the sum of the window's four
levels; a rate step is one :class:`~bitspike.hw.neuron.IntegrateFireStep` per lane, so the
firing rule is written once (hw/neuron.py) and proved there. Every emitted 1-bit (or spike) is
one append to the next layer's lists, one per cycle; the output layer's values leave on
``o_logits``. The stage's occupancy per segment is the ``f_i`` of :mod:`bitspike.sw.cycles`.
"""

# No ``from __future__ import annotations``: wiring.Component reads real annotations.
from contextlib import nullcontext

from amaranth.hdl import Array, Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .event_lists import append_signature, list_geometry
from .neuron import ApproximationStep, IntegrateFireStep
from .walker import meta_layout

__all__ = ["FiringStage", "logit_layout", "params_layout", "sums_layout", "trace_layout"]


def _bits(n: int) -> int:
    return max(1, int(n).bit_length())


def logit_layout(config) -> data.StructLayout:
    """``index`` and ``value`` of one output neuron."""
    return data.StructLayout({"index": unsigned(_bits(config.max_channels)),
                              "value": signed(config.acc_bits + 2)})


def trace_layout(config) -> data.StructLayout:
    """One trace record (docs/engine.md): potentials (kind 0) or emitted values (kind 1)."""
    g = list_geometry(config)
    return data.StructLayout({
        "kind": unsigned(1),
        "layer": unsigned(_bits(config.layer_depth)),
        "oy": unsigned(g["row"] + 1), "ox": unsigned(g["column"] + 1),
        "group": unsigned(_bits(-(-config.max_channels // config.lanes))),
        "step": unsigned(_bits(config.max_t)),
        "cycles": unsigned(32),
        "values": data.ArrayLayout(signed(config.acc_bits + 2), config.lanes)})


def sums_layout(config) -> data.StructLayout:
    """A finished segment: the ``P`` accumulator sums and the segment's metadata."""
    return data.StructLayout({"sums": data.ArrayLayout(signed(config.acc_bits), config.lanes),
                              "meta": meta_layout(config)})


def params_layout(config) -> data.StructLayout:
    """The ``P`` biases, thresholds (and rate: initial potentials) of a group."""
    P = config.lanes
    fields = {"bias": data.ArrayLayout(signed(config.bias_bits), P),
              "threshold": data.ArrayLayout(unsigned(config.threshold_bits), P)}
    if "rate" in config.modes:
        fields["v_init"] = data.ArrayLayout(signed(max(1, config.v_init_bits)), P)
    return data.StructLayout(fields)



def _or_select(hot, values):
    """``values[i]`` for the one set bit ``i`` of ``hot`` (0 when none), by AND-OR."""
    out = 0
    for i, value in enumerate(values):
        out = out | Mux(hot[i], value, 0)
    return out

class FiringStage(wiring.Component):
    """Fires one segment at a time; its occupancy is the cycle model's ``f_i``.

    Parameters
    ----------
    config : EngineConfig
    desc_layout : Layout
        The layer row layout (``desc``).
    trace : bool
        Add ``o_trace``.
    fault : EngineFault
        Tests only (:class:`~bitspike.hw.engine.EngineFault`).

    Members
    -------
    desc : In(desc_layout)
        The layer being fired.
    i_sums : In(stream.Signature(sums_layout))
        The finished segment; taken (``ready``) when the stage is idle.
    params : In(params_layout)
        The parameters of the group of ``i_sums``, valid in the cycle it is taken.
    lane_off : In(ArrayLayout(flat, P))
        ``p`` times the written map's size (flat index of lane ``p``'s channel).
    cycles : In(32)
        The engine's cycle counter, for the trace's stamps.
    idle : Out(1)
        Nothing being fired.
    append : Out(append_signature)
        One append to the next layer's lists per emitted bit or spike.
    o_logits : Out(stream.Signature(logit_layout))
        The output layer's values, one per valid lane.
    o_trace : Out(stream.Signature(trace_layout)), only with ``trace=True``
    """

    def __init__(self, *, config, desc_layout, trace: bool = False, fault=None):
        self._config, self._lanes, self._trace, self._fault = config, config.lanes, trace, fault
        self._tb = list_geometry(config)["plane"]
        ports = {
            "desc": In(desc_layout),
            "i_sums": In(stream.Signature(sums_layout(config))),
            "params": In(params_layout(config)),
            "lane_off": In(data.ArrayLayout(meta_layout(config)["flat"].shape, config.lanes)),
            "cycles": In(32),
            "idle": Out(1),
            "append": Out(append_signature(list_geometry(config))),
            "o_logits": Out(stream.Signature(logit_layout(config))),
        }
        if trace:
            ports["o_trace"] = Out(stream.Signature(trace_layout(config)))
        super().__init__(ports)

    def elaborate(self, platform):  # noqa: C901 - one state machine, read top to bottom
        m = Module()
        from .faults import EngineFault

        desc, fire_idle = self.desc, self.idle
        done = [self.i_sums.payload.sums[p] for p in range(self._lanes)]
        done_meta = self.i_sums.payload.meta
        done_valid, take = self.i_sums.valid, self.i_sums.ready
        lane_off = [self.lane_off[p] for p in range(self._lanes)]
        cycles = self.cycles

        def append(t, y, x, index):
            return [self.append.t.eq(t), self.append.y.eq(y), self.append.x.eq(x),
                    self.append.index.eq(index), self.append.valid.eq(1)]

        cfg, P, T = self._config, self._lanes, self._config.max_t
        AB = cfg.acc_bits
        VB = AB + 2
        has_rate, has_bs = "rate" in cfg.modes, "bitserial" in cfg.modes

        def mode(cond, other_mode_built):
            """``m.If(cond)`` when both modes are built (chosen per layer), else nothing."""
            return m.If(cond) if other_mode_built else nullcontext()

        fm = Signal.like(done_meta)  # the segment being fired
        # the parameters: from the memory in the cycle a segment is taken; a rate first layer
        # integrates S steps on one current after that, from a copy taken with it
        bias = [self.params.bias[p] for p in range(P)]
        thresholds = [self.params.threshold[p] for p in range(P)]
        v_inits = None
        if has_rate:
            v_inits = [self.params.v_init[p] for p in range(P)]
            kept = Signal(params_layout(cfg))
            with m.If(take):
                m.d.sync += kept.eq(self.params)
            bias = [Mux(fire_idle, b, kept.bias[p]) for p, b in enumerate(bias)]
            thresholds = [Mux(fire_idle, d, kept.threshold[p]) for p, d in enumerate(thresholds)]
            v_inits = [Mux(fire_idle, v, kept.v_init[p]) for p, v in enumerate(v_inits)]
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
                # the lowest pending bit, one-hot (a carry chain), and its plane, lane and
                # lane offset by OR trees: a priority chain over the T * P bits and a binary
                # lane index into a multiplexer were the ECP5's critical path at P = 16
                lowest = Signal(TP)
                m.d.comb += lowest.eq(pending & -pending)
                plane, lane_hot = Signal(range(T)), Signal(P)
                for j in range(len(plane)):
                    bits = [lowest[i] for i in range(TP) if (i // P) >> j & 1]
                    if bits:
                        m.d.comb += plane[j].eq(Cat(*bits).any())
                for q in range(P):
                    m.d.comb += lane_hot[q].eq(Cat(*[lowest[t * P + q] for t in range(T)]).any())
                lane = Signal(range(max(P, 2)))
                for j in range(len(lane)):
                    bits = [lane_hot[q] for q in range(P) if q >> j & 1]
                    if bits:
                        m.d.comb += lane[j].eq(Cat(*bits).any())
                offset = Signal.like(lane_off[0])
                m.d.comb += offset.eq(_or_select(lane_hot, lane_off))
                with m.If(desc.wr_flat):
                    m.d.comb += append(wbase + plane, 0, 0, fm.flat + offset + fm.wpos)
                with m.Else():
                    m.d.comb += append(wbase + plane, fm.wy, fm.wx, fm.chan + lane)
                rest = Signal(TP)
                m.d.comb += rest.eq(pending & ~lowest)
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
                    with m.If((emit + 1 == P) | (fm.chan + emit + 1 >= desc.c_out)):
                        m.next = "Idle"

        return m
