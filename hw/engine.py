"""The spiking layer engine, first cut: bit-serial dense layers with event-driven input.

This is the part of the engine that runs Programs made of ``dense`` layers in bit-serial mode
(digits-mlp and any random dense Program that fits): the layer walker, the event lists, the
P-lane accumulate datapath (:class:`~bitspike.hw.lanes.AccumulateLanes`), deferred
successive-approximation firing with the clip at L, the non-firing output layer with argmax, and
streams for the input pixels, the logits and the result. Convolution, pooling and the rate mode
are not built yet (docs/engine.md says what is planned); such a Program is refused at
elaboration.

Schedule (output-stationary, event-driven; :func:`bitspike.sw.cycles.engine_cycles` predicts
it exactly):

* **Load**: each input pixel costs one cycle to accept plus one cycle per 1-bit of its level:
  each 1-bit is appended to the event list of its bit plane (plane ``t`` holds bit
  ``T_in - 1 - t``, MSB first).
* **Layer**, for each group of ``P`` consecutive outputs: 1 cycle to clear the lanes; then one
  issue cycle per input event of every plane, one ``SHIFT`` between planes and one bias add
  (a 2-stage pipeline: event read, weight read, add), 2 cycles to drain it; then for a firing
  layer 1 cycle to load the potentials, ``T_out`` successive-approximation cycles (all lanes in
  parallel), 1 clip cycle and one cycle per emitted 1-bit (appended to the next layer's event
  lists) plus one to finish; for the output layer one cycle per valid output to emit its logit
  plus one to finish. 2 cycles between layers to swap the ping-pong event buffers.
* The result (class, cycle count) follows the last layer.

The memories are initialised from the Program (weights packed P-wide by
:func:`bitspike.hw.config.pack_weights`); the logic depends only on the
:class:`~bitspike.hw.config.EngineConfig`.
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

__all__ = ["DenseEngine", "EngineUnsupported"]


class EngineUnsupported(BitspikeError):
    """The Program uses a layer kind or mode this engine build does not run yet."""


def _check_supported(program: Program) -> None:
    if program.mode != "bitserial":
        raise EngineUnsupported(f"this engine runs bit-serial Programs; {program.method} is a "
                                f"{program.mode} Program (the rate datapath is not built yet)")
    for lay in program.layers:
        if lay.kind != "dense":
            raise EngineUnsupported(f"layer {lay.name} is {lay.kind}: this engine build runs dense "
                                    "layers only (conv3x3 and sumpool2x2 are not built yet)")


def _pack_rows(values_per_layer, lanes: int, bits: int) -> list[int]:
    """Per layer, groups of ``lanes`` consecutive values -> one row each (lane 0 low bits)."""
    rows = []
    mask = (1 << bits) - 1
    for values in values_per_layer:
        values = [int(v) for v in values]
        for g in range(0, len(values), lanes):
            row = 0
            for p, v in enumerate(values[g:g + lanes]):
                row |= (v & mask) << (p * bits)
            rows.append(row)
    return rows


def _bits_for(n: int) -> int:
    return max(1, int(n).bit_length())


class DenseEngine(wiring.Component):
    """Bit-serial dense-layer engine with ``P`` lanes.

    Parameters
    ----------
    config : EngineConfig
        The build: lanes, widths, depths. The Program must fit it
        (:meth:`EngineConfig.check_fits`).
    program : Program
        A bit-serial Program of dense layers; it initialises the memories.

    Members
    -------
    i_stream : In(stream.Signature(unsigned(max_t)))
        Input pixel levels, one per transfer, in the Program's flattened input order.
    o_logits : Out(stream.Signature(logit_layout))
        One transfer per output neuron of the last layer: ``index`` and ``value``
        (``acc + B``, signed ``acc_bits``).
    o_result : Out(stream.Signature(result_layout))
        One transfer per inference: ``klass`` (argmax, ties to the lowest index) and ``cycles``
        (from the first pixel accepted to the result).

    Raises
    ------
    EngineUnsupported
        For a rate Program or a layer kind other than dense.
    EngineFitError
        When the Program does not fit the configuration (names each shortfall).
    """

    def __init__(self, *, config: EngineConfig, program: Program):
        if not isinstance(config, EngineConfig):
            raise TypeError(f"config must be an EngineConfig, not {config!r}")
        if not isinstance(program, Program):
            raise TypeError(f"program must be a Program, not {program!r}")
        try:
            _check_supported(program)
            config.check_fits(program)
        except BitspikeError:
            self._MustUse__silence = True  # refused before it could be used: no warning
            raise
        self._config = config
        self._program = program
        P = config.lanes
        self._idx_bits = _bits_for(config.act_depth - 1)
        self._logit_layout = data.StructLayout({
            "index": unsigned(_bits_for(max(lay.out_shape[0] for lay in program.layers))),
            "value": signed(config.acc_bits)})
        self._result_layout = data.StructLayout({
            "klass": unsigned(_bits_for(program.classes - 1)),
            "cycles": unsigned(32)})
        self._lanes = P
        super().__init__({
            "i_stream": In(stream.Signature(unsigned(config.max_t))),
            "o_logits": Out(stream.Signature(self._logit_layout)),
            "o_result": Out(stream.Signature(self._result_layout)),
        })

    @property
    def config(self) -> EngineConfig:
        return self._config

    def _layer_table(self):
        prog, P = self._program, self._lanes
        _, row_base = pack_weights(prog, P, weight_bits=self._config.weight_bits)
        rows, brow = [], 0
        for i, lay in enumerate(prog.layers):
            n_out = lay.out_shape[0]
            groups = -(-n_out // P)
            rows.append({"n_in": int(np.prod(lay.in_shape)), "n_out": n_out, "groups": groups,
                         "t_in": lay.t_in, "t_out": lay.t_out, "levels": lay.levels,
                         "w_base": row_base[i], "b_base": brow, "fires": int(lay.fires),
                         "last": int(i == len(prog.layers) - 1)})
            brow += groups
        return rows

    def elaborate(self, platform):
        m = Module()
        cfg, prog, P = self._config, self._program, self._lanes
        W, AB = cfg.weight_bits, cfg.acc_bits
        T = cfg.max_t
        depth = cfg.act_depth
        table = self._layer_table()

        # ---------------------------------------------------------------- layer table (ROM)
        cnt_bits = _bits_for(depth)
        layer_layout = data.StructLayout({
            "n_in": unsigned(cnt_bits), "n_out": unsigned(cnt_bits),
            "groups": unsigned(cnt_bits), "t_in": unsigned(_bits_for(T)),
            "t_out": unsigned(_bits_for(T)), "levels": unsigned(T),
            "w_base": unsigned(_bits_for(cfg.weight_depth)),
            "b_base": unsigned(_bits_for(max(1, cfg.bias_depth))),
            "fires": unsigned(1), "last": unsigned(1)})
        m.submodules.layers = layers_rom = Memory(
            shape=layer_layout, depth=max(1, cfg.layer_depth), init=table)
        layer = Signal(range(max(2, cfg.layer_depth)))
        desc_port = layers_rom.read_port(domain="comb")
        m.d.comb += desc_port.addr.eq(layer)
        desc = desc_port.data

        # ---------------------------------------------------------------- parameter memories
        weight_rows, _ = pack_weights(prog, P, weight_bits=W)
        m.submodules.weights = w_mem = Memory(shape=unsigned(P * W),
                                             depth=max(1, cfg.weight_depth), init=weight_rows)
        w_rd = w_mem.read_port()
        bias_rows = _pack_rows([lay.bias for lay in prog.layers], P, cfg.bias_bits)
        thr_rows = _pack_rows([lay.threshold if lay.threshold is not None
                               else np.zeros(lay.out_shape[0], np.int64)
                               for lay in prog.layers], P, cfg.threshold_bits)
        n_rows = max(1, len(bias_rows))
        m.submodules.bias = b_mem = Memory(shape=unsigned(P * cfg.bias_bits), depth=n_rows,
                                           init=bias_rows)
        m.submodules.threshold = d_mem = Memory(shape=unsigned(P * cfg.threshold_bits),
                                                depth=n_rows, init=thr_rows)
        b_rd = b_mem.read_port(domain="comb")
        d_rd = d_mem.read_port(domain="comb")

        # ---------------------------------------------------------------- ping-pong event lists
        ev_mems = []
        stride_bits = max(1, (depth - 1).bit_length())  # one power-of-two region per plane
        for name in ("events_a", "events_b"):
            mem = Memory(shape=unsigned(self._idx_bits), depth=T << stride_bits, init=[])
            m.submodules[name] = mem
            ev_mems.append(mem)
        ev_rd = [mem.read_port() for mem in ev_mems]
        ev_wr = [mem.write_port() for mem in ev_mems]
        src = Signal()  # buffer the current layer reads; the other is written
        counts = [Array(Signal(range(depth + 1), name=f"count_{b}_{t}") for t in range(T))
                  for b in range(2)]
        addr_bits = stride_bits + _bits_for(T - 1)

        def plane_addr(t, k):
            # plane t's list starts at t << stride_bits: a concatenation, no multiplier
            return Cat(k[:stride_bits], t)[:addr_bits]

        # ---------------------------------------------------------------- datapath
        m.submodules.lanes = lanes = AccumulateLanes(lanes=P, acc_bits=AB, weight_bits=W,
                                                     bias_bits=cfg.bias_bits)
        m.d.comb += [lanes.weights.eq(w_rd.data), lanes.bias.eq(b_rd.data)]

        group = Signal(range(depth + 1))
        grp_w_row = Signal(_bits_for(cfg.weight_depth) + 1,
                           init=table[0]["w_base"])  # w_base + group * n_in
        grp_b_row = Signal(_bits_for(max(1, cfg.bias_depth)) + 1,
                           init=table[0]["b_base"])  # b_base + group
        grp_out = Signal(range(depth + P + 1))  # group * P
        m.d.comb += [b_rd.addr.eq(grp_b_row), d_rd.addr.eq(grp_b_row)]

        t = Signal(range(T + 1))
        k = Signal(range(depth + 1))
        op1 = Signal(LaneCommand)  # stage 1: event read issued
        op2 = Signal(LaneCommand)  # stage 2: weight read issued -> lanes
        m.d.comb += lanes.cmd.eq(op2)
        m.d.sync += op2.eq(op1)
        m.d.comb += [ev_rd[0].addr.eq(plane_addr(t, k)), ev_rd[1].addr.eq(plane_addr(t, k))]
        ev_data = Signal(self._idx_bits)
        m.d.comb += ev_data.eq(Mux(src, ev_rd[1].data, ev_rd[0].data))
        m.d.comb += w_rd.addr.eq(grp_w_row + ev_data)

        # successive approximation, all lanes in parallel
        u = [Signal(signed(AB + 1), name=f"u{p}") for p in range(P)]
        thr = [Signal(unsigned(cfg.threshold_bits + T), name=f"thr{p}") for p in range(P)]
        level = [Signal(T, name=f"level{p}") for p in range(P)]
        step = Signal(range(T + 1))
        thresholds = data.View(data.ArrayLayout(unsigned(cfg.threshold_bits), P), d_rd.data)
        pending = Signal(T * P)  # (plane, lane) bits still to append, plane-major
        best = Signal(signed(AB))
        best_idx = Signal.like(self.o_result.p.klass)
        have_best = Signal()
        emit = Signal(range(P + 1))
        cycles = Signal(32)
        pixel = Signal(range(depth + 1))
        remaining = Signal(T)
        started = Signal()  # the first pixel of this inference has been accepted
        accept = Signal()
        in_result = Signal()
        with m.If((started | accept) & ~in_result):
            m.d.sync += cycles.eq(cycles + 1)

        dst = ~src
        wr_addr = Signal(addr_bits)
        wr_data = Signal(self._idx_bits)
        wr_en = Signal()
        for b in range(2):
            m.d.comb += [ev_wr[b].addr.eq(wr_addr), ev_wr[b].data.eq(wr_data)]
        # writes go to the buffer the current phase fills: Load fills src (the first layer reads
        # it), layers fill dst
        loading = Signal()
        target = Signal()
        m.d.comb += target.eq(Mux(loading, src, dst))
        m.d.comb += [ev_wr[0].en.eq(wr_en & (target == 0)), ev_wr[1].en.eq(wr_en & (target == 1))]

        with m.FSM(name="engine"):
            with m.State("Load"):
                m.d.comb += loading.eq(1)
                first = desc  # layer 0 is selected while loading
                with m.If(remaining != 0):
                    # append the highest remaining 1-bit of this pixel to its plane's list
                    hi = Signal(range(T))
                    for b in range(T):
                        with m.If(remaining[b]):
                            m.d.comb += hi.eq(b)
                    plane = Signal(range(T + 1))
                    m.d.comb += plane.eq(first.t_in - 1 - hi)
                    count = counts_of(m, counts, src, plane, T)
                    m.d.comb += [wr_en.eq(1), wr_addr.eq(plane_addr(plane, count)),
                                 wr_data.eq(pixel - 1)]
                    bump(m, counts, src, plane, T)
                    rest = Signal(T)
                    m.d.comb += rest.eq(remaining & ~(Const(1, T) << hi))
                    m.d.sync += remaining.eq(rest)
                    with m.If((rest == 0) & (pixel == first.n_in)):
                        m.next = "GroupStart"
                with m.Elif(pixel == first.n_in):
                    m.next = "GroupStart"
                with m.Else():
                    m.d.comb += self.i_stream.ready.eq(1)
                    with m.If(self.i_stream.valid):
                        m.d.comb += accept.eq(1)
                        m.d.sync += [remaining.eq(self.i_stream.payload), pixel.eq(pixel + 1),
                                     started.eq(1)]
                        with m.If((self.i_stream.payload == 0) & (pixel + 1 == first.n_in)):
                            m.next = "GroupStart"

            with m.State("GroupStart"):
                m.d.comb += lanes.cmd.eq(LaneCommand.CLEAR)
                m.d.sync += [t.eq(0), k.eq(0), op1.eq(LaneCommand.NOP)]
                m.next = "Issue"

            with m.State("Issue"):
                n_events = counts_of(m, counts, src, t, T)
                with m.If(k < n_events):
                    m.d.sync += [k.eq(k + 1), op1.eq(LaneCommand.ADD)]
                with m.Elif(t < desc.t_in - 1):
                    m.d.sync += [t.eq(t + 1), k.eq(0), op1.eq(LaneCommand.SHIFT)]
                with m.Else():
                    m.d.sync += op1.eq(LaneCommand.ADD_BIAS)
                    m.next = "Drain1"

            with m.State("Drain1"):
                m.d.sync += op1.eq(LaneCommand.NOP)
                m.next = "Drain2"

            with m.State("Drain2"):
                with m.If(desc.fires):
                    m.next = "FireLoad"
                with m.Else():
                    m.d.sync += emit.eq(0)
                    m.next = "Emit"

            with m.State("FireLoad"):
                shift = Signal(range(T))
                m.d.comb += shift.eq(desc.t_out - 1)
                for p in range(P):
                    m.d.sync += [u[p].eq(lanes.acc[p]), thr[p].eq(thresholds[p] << shift),
                                 level[p].eq(0)]
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
                with m.If(step == desc.t_out - 1):
                    m.next = "Clip"

            with m.State("Clip"):
                bits = []
                for p in range(P):
                    valid = grp_out + p < desc.n_out
                    clipped = Signal(T, name=f"clipped{p}")
                    with m.If(~valid):
                        m.d.comb += clipped.eq(0)
                    with m.Elif(level[p] > desc.levels):
                        m.d.comb += clipped.eq(desc.levels)
                    with m.Else():
                        m.d.comb += clipped.eq(level[p])
                    bits.append(clipped)
                # pending bit (plane tt, lane p) at position tt * P + p; plane tt = bit t_out-1-tt
                vec = []
                for tt in range(T):
                    for p in range(P):
                        bit_index = Signal(range(T + 1), name=f"bi{tt}_{p}")
                        m.d.comb += bit_index.eq(desc.t_out - 1 - tt)
                        vec.append((tt < desc.t_out) & bits[p].bit_select(bit_index, 1))
                m.d.sync += pending.eq(Cat(*vec))
                m.next = "Write"

            with m.State("Write"):
                with m.If(pending == 0):
                    self._next_group(m, desc, group, grp_w_row, grp_b_row, grp_out, P)
                with m.Else():
                    lowest = Signal(range(T * P))
                    plane = Signal(range(T))
                    lane = Signal(range(max(P, 2)))
                    for i in reversed(range(T * P)):  # the lowest pending (plane, lane) wins
                        with m.If(pending[i]):
                            m.d.comb += [lowest.eq(i), plane.eq(i // P), lane.eq(i % P)]
                    count = counts_of(m, counts, dst, plane, T)
                    m.d.comb += [wr_en.eq(1), wr_addr.eq(plane_addr(plane, count)),
                                 wr_data.eq(grp_out + lane)]
                    bump(m, counts, dst, plane, T)
                    m.d.sync += pending.eq(pending & ~(Const(1, T * P) << lowest))

            with m.State("Emit"):
                with m.If((emit == P) | (grp_out + emit >= desc.n_out)):
                    self._next_group(m, desc, group, grp_w_row, grp_b_row, grp_out, P)
                with m.Else():
                    value = Signal(signed(AB))
                    # an Array is a multiplexer; indexing the packed view would multiply
                    m.d.comb += value.eq(Array(lanes.acc[p] for p in range(P))[emit])
                    m.d.comb += [self.o_logits.valid.eq(1),
                                 self.o_logits.p.index.eq(grp_out + emit),
                                 self.o_logits.p.value.eq(value)]
                    with m.If(self.o_logits.ready):
                        m.d.sync += emit.eq(emit + 1)
                        with m.If(~have_best | (value > best)):
                            m.d.sync += [best.eq(value), best_idx.eq(grp_out + emit),
                                         have_best.eq(1)]

            with m.State("LayerEnd"):
                # swap the ping-pong buffers; the old source's counts restart at 0
                for tt in range(T):
                    with m.If(src == 0):
                        m.d.sync += counts[0][tt].eq(0)
                    with m.Else():
                        m.d.sync += counts[1][tt].eq(0)
                m.d.sync += [src.eq(~src), layer.eq(layer + 1), group.eq(0),
                             grp_out.eq(0)]
                m.next = "NextLayer"

            with m.State("NextLayer"):
                m.d.sync += [grp_w_row.eq(desc.w_base), grp_b_row.eq(desc.b_base)]
                m.next = "GroupStart"

            with m.State("Result"):
                m.d.comb += in_result.eq(1)
                m.d.comb += [self.o_result.valid.eq(1), self.o_result.p.klass.eq(best_idx),
                             self.o_result.p.cycles.eq(cycles)]
                with m.If(self.o_result.ready):
                    for b in range(2):
                        for tt in range(T):
                            m.d.sync += counts[b][tt].eq(0)
                    m.d.sync += [layer.eq(0), group.eq(0), grp_out.eq(0), pixel.eq(0),
                                 have_best.eq(0), cycles.eq(0), src.eq(0), started.eq(0),
                                 grp_w_row.eq(table[0]["w_base"]),
                                 grp_b_row.eq(table[0]["b_base"])]
                    m.next = "Load"
        return m

    @staticmethod
    def _next_group(m, desc, group, grp_w_row, grp_b_row, grp_out, P):
        with m.If(group + 1 < desc.groups):
            m.d.sync += [group.eq(group + 1), grp_w_row.eq(grp_w_row + desc.n_in),
                         grp_b_row.eq(grp_b_row + 1), grp_out.eq(grp_out + P)]
            m.next = "GroupStart"
        with m.Elif(desc.last):
            m.next = "Result"
        with m.Else():
            m.next = "LayerEnd"


def counts_of(m, counts, buf, plane, T):
    """The event count of ``plane`` in buffer ``buf`` (a combinational read)."""
    sig = Signal.like(counts[0][0])
    m.d.comb += sig.eq(Mux(buf, counts[1][plane], counts[0][plane]))
    return sig


def bump(m, counts, buf, plane, T):
    with m.If(buf):
        m.d.sync += counts[1][plane].eq(counts[1][plane] + 1)
    with m.Else():
        m.d.sync += counts[0][plane].eq(counts[0][plane] + 1)
