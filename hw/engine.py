"""The spiking layer engine: dense and 3x3 convolution layers with fused 2x2 sum pooling, in
bit-serial mode (left-shift Horner accumulation, deferred successive-approximation firing) and
rate-coded IF mode (reset by subtraction, SRP's probe and mask).

Output-stationary and event-driven (docs/engine.md). The engine is a top level that joins its
components with ``wiring.connect``:

- :class:`~bitspike.hw.event_lists.EventLists`: the ping-pong event lists, their lengths and
  nonempty bitmaps, all on synchronous (block RAM) read ports, and the list writer;
- :class:`~bitspike.hw.walker.ListScanner` and :class:`~bitspike.hw.walker.Walker`: the issue
  side, one accumulate per input event;
- the weight memory and :class:`~bitspike.hw.lanes.AccumulateLanes`: ``P`` accumulators fed
  through a two-stage read pipeline (event index, then weight row);
- :class:`~bitspike.hw.firing.FiringStage`: firing, pooling, list writes and logits, beside the
  walker, with the group's parameters from synchronous parameter memories;
- :class:`~bitspike.hw.output.ArgmaxOutput`: the logits stream and the class.

The top holds the layer table (a ROM of a handful of rows, the only memory read
combinationally), the parameter memories and the sequencer (clear, load, walk each layer,
result). :mod:`bitspike.sw.cycles` predicts every cycle; :mod:`bitspike.sw.plan` holds the
layer plan the table is built from. The memories are initialised from the Program; the logic
depends only on the :class:`~bitspike.hw.config.EngineConfig`.
"""

# No ``from __future__ import annotations``: wiring.Component reads real annotations.
import numpy as np
from amaranth.hdl import Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..sw.errors import BitspikeError
from ..sw.plan import PlanError, layer_plan
from ..sw.program import Program
from .config import EngineConfig, pack_weights
from .event_lists import EventLists
from .faults import EngineFault
from .firing import FiringStage, logit_layout, sums_layout, trace_layout
from .lanes import AccumulateLanes, LaneCommand
from .memories import BLOCK_RAM_ATTRS, MemoryPlan, RamKind, SinglePortRAM
from .output import ArgmaxOutput, result_layout
from .walker import ListScanner, Walker, op_layout

__all__ = ["Engine", "EngineFault", "EngineUnsupported"]


class EngineUnsupported(BitspikeError):
    """The Program uses a layer sequence this engine does not run."""


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
    memory : MemoryPlan
        Where the weights and event lists live (:mod:`bitspike.hw.memories`); block RAM
        initialised by the bitstream by default.
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
    w_load : In(Signature(addr, data, en)), only with ``memory.weights = RamKind.SPRAM``
        Write weight row ``addr`` (the packed rows of :func:`~bitspike.hw.config.pack_weights`)
        while ``en``; all rows must be written before the first input is sent.

    Raises
    ------
    EngineUnsupported
        A layer sequence the schedule does not run (a pool not after a firing conv3x3).
    EngineFitError
        When the Program does not fit the configuration (names each shortfall).
    """

    def __init__(self, *, config: EngineConfig, program: Program, trace: bool = False,
                 memory: MemoryPlan | None = None, fault: EngineFault = EngineFault.NONE):
        if not isinstance(fault, EngineFault):
            self._MustUse__silence = True
            raise TypeError(f"fault must be an EngineFault, not {fault!r}")
        self._fault = fault
        memory = MemoryPlan() if memory is None else memory
        if not isinstance(memory, MemoryPlan):
            self._MustUse__silence = True
            raise TypeError(f"memory must be a MemoryPlan, not {memory!r}")
        self._memory = memory
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
        self._desc_layout = data.StructLayout({key: unsigned(_bits(bound))
                                               for key, bound in self._field_max.items()})
        self._logit_layout = logit_layout(config)
        self._result_layout = result_layout(config)
        self._trace = bool(trace)
        self._trace_layout = trace_layout(config)
        ports = {
            "i_stream": In(stream.Signature(unsigned(config.max_t))),
            "o_logits": Out(stream.Signature(self._logit_layout)),
            "o_result": Out(stream.Signature(self._result_layout)),
        }
        if self._trace:  # the trace port exists only when asked for: free when unused
            ports["o_trace"] = Out(stream.Signature(self._trace_layout))
        if memory.weights is RamKind.SPRAM:  # the weights are written once before any input
            ports["w_load"] = In(wiring.Signature({
                "addr": Out(range(max(2, config.weight_depth))),
                "data": Out(config.lanes * config.weight_bits), "en": Out(1)}))
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
        W, T = cfg.weight_bits, cfg.max_t
        has_rate = "rate" in cfg.modes
        rows = [row.as_dict() for row in self._plan]

        # ------------------------------------------------------------ layer table (ROM)
        # a handful of rows: read combinationally (LUTs), the only such memory, into a register
        m.submodules.layers = rom = Memory(shape=self._desc_layout, depth=cfg.layer_depth,
                                           init=rows)
        # registered: the descriptor feeds most of the engine, so it starts every path at a
        # flip-flop; it is read at the layer the next cycle will run. Its reset value is 0,
        # not the first row (that would make the logic depend on the Program): the engine
        # spends its first cycle after reset in Boot, while the first row is read
        layer = Signal(range(max(2, cfg.layer_depth)))
        layer_next = Signal.like(layer)
        m.d.comb += layer_next.eq(layer)
        m.d.sync += layer.eq(layer_next)
        desc_port = rom.read_port(domain="comb")
        m.d.comb += desc_port.addr.eq(layer_next)
        desc = Signal(self._desc_layout)
        m.d.sync += desc.eq(desc_port.data)

        # ------------------------------------------------------------ components
        m.submodules.lists = lists = EventLists(config=cfg, events=self._memory.events)
        m.submodules.scanner = scanner = ListScanner(config=cfg, desc_layout=self._desc_layout)
        m.submodules.walker = walker = Walker(config=cfg, desc_layout=self._desc_layout,
                                              rows_bound=self._field_max["rows"],
                                              fault=self._fault)
        m.submodules.lanes = lanes = AccumulateLanes(
            lanes=P, acc_bits=cfg.acc_bits, weight_bits=W, bias_bits=cfg.bias_bits,
            max_shift=T)
        m.submodules.firing = firing = FiringStage(config=cfg, desc_layout=self._desc_layout,
                                                   trace=self._trace, fault=self._fault)
        m.submodules.output = output = ArgmaxOutput(config=cfg)
        for part in (scanner, walker, firing):
            m.d.comb += part.desc.eq(desc)
        wiring.connect(m, scanner.scan, lists.scan)
        wiring.connect(m, scanner.o_stream, walker.i_stream)
        wiring.connect(m, walker.fetch, lists.fetch)
        wiring.connect(m, firing.o_logits, output.i_logits)
        wiring.connect(m, output.o_logits, wiring.flipped(self.o_logits))
        wiring.connect(m, output.o_result, wiring.flipped(self.o_result))
        if self._trace:
            wiring.connect(m, firing.o_trace, wiring.flipped(self.o_trace))

        # ------------------------------------------------------------ parameters
        loaded = self._memory.weights is RamKind.SPRAM
        m.submodules.weights = w_mem = SinglePortRAM(
            width=P * W, depth=max(1, cfg.weight_depth), kind=self._memory.weights,
            init=() if loaded else pack_weights(prog, P, weight_bits=W)[0])
        weighted = [lay for lay in prog.layers if lay.bias is not None]

        def or_zeros(arr, lay):
            return arr if arr is not None else np.zeros(lay.out_shape[0], int)

        params = [("bias", [lay.bias for lay in weighted], cfg.bias_bits),
                  ("threshold", [or_zeros(lay.threshold, lay) for lay in weighted],
                   cfg.threshold_bits)]
        if has_rate:
            params.append(("v_init", [or_zeros(lay.v_init, lay) for lay in weighted],
                           max(1, cfg.v_init_bits)))
        param_ports = []
        for name, arrays, bits in params:
            # one row per group of P channels; read synchronously for the segment that enters
            # the firing stage's buffer next (its data is there when the segment is taken)
            init = _pack_channel_rows(arrays, P, bits)
            shape = cfg.memories()[name]
            assert len(init) <= shape.depth and shape.width == P * bits, (name, len(init))
            mem = Memory(shape=unsigned(shape.width), depth=shape.depth, init=init,
                         attrs=BLOCK_RAM_ATTRS if shape.style == "block" else None)
            m.submodules[name] = mem
            port = mem.read_port()
            param_ports.append(port)
            m.d.comb += getattr(firing.params, name).eq(port.data)

        # ------------------------------------------------------------ accumulate pipeline
        # op0 (walker: event read) -> op1 (event index: weight read) -> op2 (lanes)
        op_shape = op_layout(cfg, self._field_max["rows"])
        op0 = walker.op
        op1, op2 = Signal(op_shape, name="op1"), Signal(op_shape, name="op2")
        m.d.sync += [op1.eq(op0), op2.eq(op1)]
        m.d.comb += w_mem.addr.eq(op1.meta.grp_row + op1.tap_base + lists.fetch.event)
        if loaded:
            with m.If(self.w_load.en):
                m.d.comb += [w_mem.addr.eq(self.w_load.addr), w_mem.w_data.eq(self.w_load.data),
                             w_mem.w_en.eq(1)]
        m.d.comb += [lanes.weights.eq(w_mem.r_data), lanes.shift.eq(op2.shift),
                     lanes.cmd.eq(Mux(op2.valid, op2.cmd, LaneCommand.NOP))]
        # the one-entry buffer between the lanes and the firing stage
        done = Signal(sums_layout(cfg))
        done_valid = Signal()
        with m.If(firing.i_sums.ready):
            m.d.sync += done_valid.eq(0)
        with m.If(op2.valid & op2.last):
            m.d.sync += [done_valid.eq(1), done.meta.eq(op2.meta),
                         *[done.sums[p].eq(lanes.next[p]) for p in range(P)]]
        m.d.comb += [firing.i_sums.valid.eq(done_valid), firing.i_sums.payload.eq(done)]
        for port in param_ports:
            m.d.comb += port.addr.eq(Mux(op2.valid & op2.last, op2.meta.brow, done.meta.brow))
        # a segment's last accumulate issues only when the buffer will have room for it
        m.d.comb += walker.room.eq(~(op1.valid & op1.last) & ~(op2.valid & op2.last)
                                   & (~done_valid | firing.i_sums.ready))
        # lane p's flat offset p * (written map size), by additions
        lane_off = [Signal.like(walker.lane_step, name=f"lane_off{p}") for p in range(P)]
        for p in range(1, P):
            m.d.comb += lane_off[p].eq(lane_off[p - 1] + desc.wr_hw)
        m.d.comb += walker.lane_step.eq(lane_off[P - 1] + desc.wr_hw)
        for p in range(P):
            m.d.comb += firing.lane_off[p].eq(lane_off[p])

        # ------------------------------------------------------------ lists: fields and writers
        src, loading = Signal(), Signal()
        m.d.comb += [lists.src.eq(src), lists.load.eq(loading),
                     lists.wr_fields.kb.eq(Mux(loading, desc.in_kb, desc.out_kb)),
                     lists.wr_fields.wb.eq(Mux(loading, desc.in_wb, desc.out_wb)),
                     lists.wr_fields.hb.eq(Mux(loading, desc.in_hb, desc.out_hb))]
        load_append = Signal.like(lists.append.index)
        load_t, load_y, load_x = (Signal.like(lists.append.t), Signal.like(lists.append.y),
                                  Signal.like(lists.append.x))
        load_valid = Signal()
        m.d.comb += [lists.append.valid.eq(load_valid | firing.append.valid),
                     lists.append.t.eq(Mux(load_valid, load_t, firing.append.t)),
                     lists.append.y.eq(Mux(load_valid, load_y, firing.append.y)),
                     lists.append.x.eq(Mux(load_valid, load_x, firing.append.x)),
                     lists.append.index.eq(Mux(load_valid, load_append, firing.append.index))]

        def append(t, y, x, index):
            return [load_t.eq(t), load_y.eq(y), load_x.eq(x), load_append.eq(index),
                    load_valid.eq(1)]

        # ------------------------------------------------------------ counters
        cycles = Signal(32)
        started, accept, in_result = Signal(), Signal(), Signal()
        with m.If((started | accept) & ~in_result):
            m.d.sync += cycles.eq(cycles + 1)
        m.d.comb += [firing.cycles.eq(cycles), output.cycles.eq(cycles)]
        if self._fault is EngineFault.CYCLE_COUNT:
            m.d.comb += output.cycles.eq(cycles + 1)

        # ------------------------------------------------------------ sequencer
        hb, wb = self._hb, self._wb
        pc, py, px = Signal(_bits(cfg.max_channels) + 1), Signal(hb + 1), Signal(wb + 1)
        pflat = Signal(range(cfg.act_depth + 2))  # pixels accepted
        lpc, lpy, lpx = Signal.like(pc), Signal.like(py), Signal.like(px)  # the latched pixel
        remaining = Signal(T)
        load_done, last_pixel = Signal(), Signal()
        # the load and its clear run while `layer` is 0: desc is the first layer's row
        m.d.comb += [load_done.eq(pflat == desc.n_in), last_pixel.eq(pflat + 1 == desc.n_in)]
        clear_row = Signal(hb + 1)
        m.d.comb += lists.clear.row.eq(clear_row)

        # in the Walk state, as a flip-flop (decoded from the state it was the head of the
        # scanner's critical path)
        walking = Signal()
        m.d.comb += [scanner.run.eq(walking), walker.run.eq(walking)]
        with m.FSM(name="engine"):
            with m.State("Boot"):  # one cycle after reset: the first layer's row is read
                m.next = "ClearInput"

            with m.State("ClearInput"):  # the first layer's input rows: nothing listed yet
                m.d.comb += [loading.eq(1), lists.clear.valid.eq(1)]
                with m.If(clear_row + 1 >= Mux(desc.in_flat, 1, desc.h)):
                    m.d.sync += clear_row.eq(0)
                    m.next = "Load"
                with m.Else():
                    m.d.sync += clear_row.eq(clear_row + 1)
                m.d.sync += [pc.eq(0), py.eq(0), px.eq(0), pflat.eq(0)]

            with m.State("Load"):
                m.d.comb += loading.eq(1)
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
                m.d.comb += [scanner.start.eq(1), walker.start.eq(1)]
                m.d.sync += clear_row.eq(0)
                with m.If(desc.fires):
                    m.next = "ClearOutput"
                with m.Else():
                    m.d.sync += walking.eq(1)
                    m.next = "Walk"

            with m.State("ClearOutput"):  # the rows of the lists this layer writes
                m.d.comb += lists.clear.valid.eq(1)
                with m.If(clear_row + 1 >= desc.clear_rows):
                    m.d.sync += walking.eq(1)
                    m.next = "Walk"
                with m.Else():
                    m.d.sync += clear_row.eq(clear_row + 1)

            with m.State("Walk"):
                with m.If(walker.done):
                    m.d.sync += walking.eq(0)
                    m.next = "Drain"

            with m.State("Drain"):  # the last segments fire and write
                with m.If(~op1.valid & ~op2.valid & ~done_valid & firing.idle):
                    with m.If(desc.last):
                        m.next = "Result"
                    with m.Else():
                        m.next = "LayerEnd"

            with m.State("LayerEnd"):
                m.d.sync += src.eq(~src)
                m.d.comb += layer_next.eq(layer + 1)
                m.next = "LayerStart"

            with m.State("Result"):
                m.d.comb += [in_result.eq(1), output.finish.eq(1)]
                with m.If(self.o_result.ready):
                    m.d.sync += [src.eq(0), cycles.eq(0), started.eq(0), clear_row.eq(0)]
                    m.d.comb += layer_next.eq(0)
                    m.next = "ClearInput"
        return m
