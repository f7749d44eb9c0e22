"""The engine's issue side: a list scanner and a walker, one accumulate per input event.

A layer is walked segment by segment in the order window ``(wy, wx)``, group of ``P`` output
channels, position ``q`` in a fused pool's 2x2 window, time step (rate layers after the first).
A *segment* is the set of event lists one output position reads: for each time plane ``t`` and
tap ``(dy, dx)`` of the 3x3 receptive field (a dense layer: one flat list per plane) the list
``(t, oy + dy - 1, ox + dx - 1)``.

:class:`ListScanner` runs ahead of the walker: it keeps a window of nonempty-bitmap rows filled
one synchronous read per cycle, selects each segment's nonempty lists one per cycle, reads each
one's length (one synchronous read) and queues ``(t, tap, length, last)``, or one *empty* entry
for a segment without events. :class:`Walker` takes one queue entry per list and issues one
accumulate per event (the entry's ``k``-th event read from block RAM), or one ``CLEAR`` for an empty
segment. The scanner delivers at most one entry per cycle and the walker takes at most one, so
after the scanner's start-up latency (:data:`SCAN_LATENCY` cycles at the start of each layer)
the walker never waits for it: the engine's schedule is the comb-read engine's plus a fixed
latency per layer (:mod:`bitspike.sw.cycles`).
"""

# No ``from __future__ import annotations``: wiring.Component reads real annotations.
from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from ..sw.plan import SCAN_LATENCY, TAPS, LayerKind
from .event_lists import fetch_signature, list_geometry, scan_signature
from .lanes import LaneCommand

__all__ = ["SCAN_LATENCY", "ListScanner", "Walker", "entry_layout", "meta_layout",
           "op_layout"]

#: entries the scanner may queue ahead of the walker
QUEUE_DEPTH = 4
#: bitmap rows the list scanner keeps (three for a 3x3 field, four with a fused pool, two ahead)
W_ROWS = 6


def _bits(n: int) -> int:
    return max(1, int(n).bit_length())


def entry_layout(config) -> data.StructLayout:
    """One queued list: plane ``t``, ``tap`` (``dy * 3 + dx``), its ``count`` of events,
    ``last`` list of its segment, or ``empty``: a segment without events."""
    g = list_geometry(config)
    return data.StructLayout({"t": unsigned(g["plane"]), "tap": unsigned(4),
                              "count": unsigned(g["count"]), "last": 1, "empty": 1})


def meta_layout(config) -> data.StructLayout:
    """What travels with a segment from the walker to the firing stage."""
    g, P, T = list_geometry(config), config.lanes, config.max_t
    hb, wb = g["row"], g["column"]
    return data.StructLayout({
        "grp_row": unsigned(_bits(max(1, config.weight_depth)) + 1),
        "brow": unsigned(_bits(config.bias_depth) + 1),
        "group": unsigned(_bits(-(-config.max_channels // P))),
        "chan": unsigned(_bits(config.max_channels + P)),
        "flat": unsigned(_bits((config.max_channels + P) * config.max_height
                               * config.max_width)),
        "wpos": unsigned(_bits(config.max_height * config.max_width)),
        "oy": unsigned(hb + 1), "ox": unsigned(wb + 1), "wy": unsigned(hb + 1),
        "wx": unsigned(wb + 1), "q": unsigned(2),
        "t": unsigned(_bits(T)),
        "pend": unsigned(_bits(T))})


def op_layout(config, rows_bound: int) -> data.StructLayout:
    """One issued accumulate as it travels down the read pipeline."""
    return data.StructLayout({
        "valid": unsigned(1), "cmd": LaneCommand, "shift": unsigned(_bits(config.max_t)),
        "last": unsigned(1), "tap_base": unsigned(_bits(rows_bound) + 1),
        "meta": meta_layout(config)})


class _Order:
    """The walk order's counters (window, group, quad, step) and their advance."""

    def __init__(self, config, name):
        g = list_geometry(config)
        hb, wb = g["row"], g["column"]
        self.wy, self.wx = Signal(hb + 1, name=f"{name}_wy"), Signal(wb + 1, name=f"{name}_wx")
        self.q = Signal(2, name=f"{name}_q")
        self.t = Signal(_bits(config.max_t), name=f"{name}_t")
        self.group = Signal(_bits(-(-config.max_channels // config.lanes)),
                            name=f"{name}_group")
        self.oy, self.ox = Signal(hb + 1, name=f"{name}_oy"), Signal(wb + 1, name=f"{name}_ox")
        self.last = Signal(name=f"{name}_last")  # the layer's last segment

    def elaborate(self, m, desc):
        m.d.comb += [self.oy.eq(Mux(desc.pool, Cat(self.q[1], self.wy), self.wy)),
                     self.ox.eq(Mux(desc.pool, Cat(self.q[0], self.wx), self.wx)),
                     self.last.eq(~(desc.per_step & (self.t + 1 < desc.steps))
                                  & (self.q + 1 >= desc.quads)
                                  & (self.group + 1 >= desc.groups)
                                  & (self.wx + 1 >= desc.win_w) & (self.wy + 1 >= desc.win_h))]

    def reset(self):
        return [self.wy.eq(0), self.wx.eq(0), self.q.eq(0), self.t.eq(0), self.group.eq(0)]

    def advance(self, m, desc, on_group=(), on_window=()):
        """Move to the next segment (``sync``); ``on_group``/``on_window``: statements for a
        new group in the same window, and for the next window's first group."""
        with m.If(desc.per_step & (self.t + 1 < desc.steps)):
            m.d.sync += self.t.eq(self.t + 1)
        with m.Else():
            m.d.sync += self.t.eq(0)
            with m.If(self.q + 1 < desc.quads):
                m.d.sync += self.q.eq(self.q + 1)
            with m.Elif(self.group + 1 < desc.groups):
                m.d.sync += [self.q.eq(0), self.group.eq(self.group + 1), *on_group]
            with m.Else():
                m.d.sync += [self.q.eq(0), self.group.eq(0), *on_window]
                with m.If(self.wx + 1 < desc.win_w):
                    m.d.sync += self.wx.eq(self.wx + 1)
                with m.Elif(self.wy + 1 < desc.win_h):
                    m.d.sync += [self.wx.eq(0), self.wy.eq(self.wy + 1)]


def _receptive(m, desc, oy, ox, dy, dx):
    """``(iy, ix)`` of tap ``(dy, dx)`` of output ``(oy, ox)`` (a dense layer: ``(0, 0)``)."""
    iy, ix = Signal(len(oy) + 1), Signal(len(ox) + 1)
    with m.If(desc.kind == LayerKind.CONV3X3):
        m.d.comb += [iy.eq(oy + dy - 1), ix.eq(ox + dx - 1)]
    return iy, ix


def _tap_of(m, tap):
    dy, dx = Signal(2), Signal(2)
    with m.Switch(tap):
        for i in range(TAPS):
            with m.Case(i):
                m.d.comb += [dy.eq(i // 3), dx.eq(i % 3)]
    return dy, dx


class ListScanner(wiring.Component):
    """Queues the nonempty lists of every segment of a layer, in walk order.

    Cost: a window of :data:`W_ROWS` bitmap rows (``max_t << column`` bits each), a
    ``9 max_t``-bit slot mask register and priority encoder, the walk-order counters, a
    :data:`QUEUE_DEPTH`-entry queue; one bitmap row read per cycle while the window has room and
    one length read per nonempty list, both synchronous.

    Members
    -------
    desc : In(layer row layout)
        The layer being walked.
    start : In(1)
        Restart at the layer's first segment (the cycle before ``run``).
    run : In(1)
        Scan (the engine is in its walk state).
    scan : Out(scan_signature)
        To :class:`~bitspike.hw.event_lists.EventLists`.
    o_stream : Out(stream.Signature(entry_layout))
        The queued lists.
    """

    def __init__(self, *, config, desc_layout):
        self._config = config
        self._geo = list_geometry(config)
        self._entry = entry_layout(config)
        super().__init__({
            "desc": In(desc_layout), "start": In(1), "run": In(1),
            "scan": Out(scan_signature(self._geo)),
            "o_stream": Out(stream.Signature(self._entry)),
        })

    def elaborate(self, platform):
        m = Module()
        desc, g, T = self.desc, self._geo, self._config.max_t
        hb, wb, tb = g["row"], g["column"], g["plane"]
        NL = T * TAPS
        m.submodules.queue = queue = SyncFIFO(width=self._entry.size, depth=QUEUE_DEPTH)
        m.d.comb += [self.o_stream.valid.eq(queue.r_rdy), self.o_stream.payload.eq(queue.r_data),
                     queue.r_en.eq(self.o_stream.ready)]

        # stage A: the next segment's position, beside a window of bitmap rows
        a = _Order(self._config, "a")
        a.elaborate(m, desc)
        a_valid = Signal()
        # stage C: one nonempty list per cycle; its length is read on the way to D
        c_valid, c_mask = Signal(), Signal(NL)
        c_oy, c_ox = Signal.like(a.oy), Signal.like(a.ox)
        # stage D: the length arrives; the entry is queued
        d = Signal(data.StructLayout({"valid": 1, "entry": self._entry}))

        room = Signal()
        m.d.comb += room.eq(queue.level + d.valid < QUEUE_DEPTH)
        c_last = Signal()
        c_take = Signal()
        m.d.comb += c_take.eq(~c_valid | (room & c_last))

        # The row window: W_ROWS registers holding bitmap rows base - 1 .. base + W_ROWS - 2,
        # base = the first output row of A's window row (wy, or 2 wy with a fused pool). A
        # segment reads three of them (slots q1 .. q1 + 2, q1 = the pool position's row). The
        # window slides by one row (two with a pool) when A moves to the next window row; one
        # row is fetched per cycle from the bitmap memory into the lowest empty slot, so the
        # fetch keeps ahead of A (a window row has at least one segment, four with a pool).
        row_bits = T << wb
        win = [Signal(row_bits, name=f"win{i}") for i in range(W_ROWS)]
        have = Signal(W_ROWS)  # slot holds its row
        asked = Signal(W_ROWS)  # slot's row is being read
        primed = Signal()  # the window was full once since the layer started
        base = Signal(hb + 2)
        in_flight = Signal()
        in_slot = Signal(range(W_ROWS))
        q1 = Signal()
        m.d.comb += q1.eq(desc.pool & a.q[1])
        need = Signal(W_ROWS)
        m.d.comb += need.eq(Mux(q1, 0b1110, 0b0111))
        a_ready = Signal()
        m.d.comb += a_ready.eq(primed & ((have & need) == need))
        a_to_c = Signal()
        m.d.comb += a_to_c.eq(a_valid & a_ready & c_take & self.run)
        row_end = Signal()  # A's segment is the last of its window row, and not the layer's
        m.d.comb += row_end.eq(~(desc.per_step & (a.t + 1 < desc.steps))
                               & (a.q + 1 >= desc.quads) & (a.group + 1 >= desc.groups)
                               & (a.wx + 1 >= desc.win_w) & (a.wy + 1 < desc.win_h))
        shift = Signal(2)
        with m.If(a_to_c & row_end):
            m.d.comb += shift.eq(Mux(desc.pool, 2, 1))
        # next frame: shifted, plus the row arriving from last cycle's read
        have_sh, asked_sh = Signal(W_ROWS), Signal(W_ROWS)
        m.d.comb += [have_sh.eq(have >> shift), asked_sh.eq(asked >> shift)]
        land = Signal(range(-W_ROWS, W_ROWS + 1))
        m.d.comb += land.eq(in_slot - shift)
        landing = Signal()
        m.d.comb += landing.eq(in_flight & (land >= 0))
        have_nx, asked_nx = Signal(W_ROWS), Signal(W_ROWS)
        m.d.comb += [have_nx.eq(have_sh), asked_nx.eq(asked_sh)]
        with m.If(landing):
            m.d.comb += [have_nx.eq(have_sh | (Const(1, W_ROWS) << land[:3])),
                         asked_nx.eq(asked_sh & ~(Const(1, W_ROWS) << land[:3]))]
        free = Signal(W_ROWS)
        m.d.comb += free.eq(~have_nx & ~asked_nx)
        fetch_slot = Signal(range(W_ROWS))
        for i in reversed(range(W_ROWS)):
            with m.If(free[i]):
                m.d.comb += fetch_slot.eq(i)
        base_nx = Signal.like(base)
        m.d.comb += base_nx.eq(base + shift)
        fetch_row = Signal(hb + 2)
        m.d.comb += [fetch_row.eq(base_nx - 1 + fetch_slot), self.scan.row.eq(fetch_row[:hb])]
        fetching = Signal()
        m.d.comb += fetching.eq(self.run & (free != 0))

        with m.If(self.start):
            m.d.sync += [*a.reset(), a_valid.eq(1), c_valid.eq(0), have.eq(0), asked.eq(0),
                         primed.eq(0), base.eq(0), in_flight.eq(0)]
        with m.Elif(self.run):
            asking = Mux(fetching, Const(1, W_ROWS) << fetch_slot, 0)
            m.d.sync += [have.eq(have_nx), asked.eq(asked_nx | asking),
                         base.eq(base_nx), in_flight.eq(fetching), in_slot.eq(fetch_slot)]
            with m.If(have_nx == (1 << W_ROWS) - 1):
                m.d.sync += primed.eq(1)
            for i in range(W_ROWS):
                with m.Switch(shift):
                    for k in range(3):
                        with m.Case(k):
                            if i + k < W_ROWS:
                                m.d.sync += win[i].eq(win[i + k])
                with m.If(landing & (land == i)):
                    m.d.sync += win[i].eq(self.scan.bits)
            with m.If(a_to_c):
                a.advance(m, desc)
                with m.If(a.last):
                    m.d.sync += a_valid.eq(0)

        # the nonempty mask of every (plane, tap) slot of A's output position
        rows = [Mux(q1, win[dy + 1], win[dy]) for dy in range(3)]
        mask = Signal(NL)
        for t in range(T):
            in_segment = Mux(desc.per_step, a.t == t, t < desc.t_in)
            dense_bit = rows[1][t << wb]
            for tap in range(TAPS):
                dy, dx = divmod(tap, 3)
                plane_row = rows[dy][t << wb:(t + 1) << wb]
                col = Signal(wb + 1, name=f"col{t}_{tap}")
                m.d.comb += col.eq(a.ox + dx - 1)
                inside = (~((dy == 0) & (a.oy == 0)) & ~((dy == 2) & (a.oy + 1 == desc.h))
                          & ~((dx == 0) & (a.ox == 0)) & ~((dx == 2) & (a.ox + 1 == desc.w)))
                conv_bit = inside & plane_row.bit_select(col[:wb], 1)
                bit = Mux(desc.kind == LayerKind.CONV3X3, conv_bit,
                          dense_bit if tap == 0 else 0)
                m.d.comb += mask[t * TAPS + tap].eq(bit & in_segment)

        # stage C: the lowest remaining slot, its list's length read
        lowest = Signal(range(max(2, NL)))
        for i in reversed(range(NL)):
            with m.If(c_mask[i]):
                m.d.comb += lowest.eq(i)
        rest = Signal(NL)
        m.d.comb += [rest.eq(c_mask & (c_mask - 1)), c_last.eq(rest == 0)]
        slot_t, slot_tap = Signal(tb + 1), Signal(4)
        with m.Switch(lowest):
            for s in range(NL):
                with m.Case(s):
                    m.d.comb += [slot_t.eq(s // TAPS), slot_tap.eq(s % TAPS)]
        dy, dx = _tap_of(m, slot_tap)
        iy, ix = _receptive(m, desc, c_oy, c_ox, dy, dx)
        m.d.comb += [self.scan.t.eq(slot_t), self.scan.y.eq(iy[:hb]), self.scan.x.eq(ix[:wb])]

        m.d.sync += d.valid.eq(0)
        with m.If(self.start):
            pass
        with m.Elif(c_valid & room):
            m.d.sync += [d.valid.eq(1), d.entry.t.eq(slot_t), d.entry.tap.eq(slot_tap),
                         d.entry.last.eq(c_last), d.entry.empty.eq(c_mask == 0),
                         c_mask.eq(rest)]
            with m.If(c_last & ~a_to_c):
                m.d.sync += c_valid.eq(0)
        with m.If(a_to_c & ~self.start):
            m.d.sync += [c_valid.eq(1), c_mask.eq(mask), c_oy.eq(a.oy), c_ox.eq(a.ox)]

        # stage D: queue the entry with its length (an empty segment's is 0)
        entry = Signal(self._entry)
        m.d.comb += [entry.eq(d.entry),
                     entry.count.eq(Mux(d.entry.empty, 0, self.scan.count)),
                     queue.w_en.eq(d.valid), queue.w_data.eq(entry)]
        return m


class Walker(wiring.Component):
    """Takes the scanner's queued lists and issues one accumulate per event.

    Cost: the walk-order counters and the group registers, the event index ``k``; one
    synchronous event-list read per issued accumulate.

    Members
    -------
    desc : In(layer row layout)
    start : In(1)
        Restart at the layer's first segment.
    run : In(1)
        Issue (the engine is in its walk state).
    lane_step : In
        ``P`` times the written map's size (the flat index step from one group to the next).
    room : In(1)
        The segment buffer has room for a segment's last accumulate this cycle.
    i_stream : In(stream.Signature(entry_layout))
        From :class:`ListScanner`.
    fetch : Out(fetch_signature)
        To :class:`~bitspike.hw.event_lists.EventLists`.
    op : Out(op_layout)
        This cycle's accumulate (``valid``), with its lane command, Horner shift, weight tap
        base and the segment's metadata.
    done : Out(1)
        The layer's last segment has been issued.
    """

    def __init__(self, *, config, desc_layout, rows_bound: int, fault=None):
        self._config, self._fault = config, fault
        self._geo = list_geometry(config)
        self._op = op_layout(config, rows_bound)
        super().__init__({
            "desc": In(desc_layout), "start": In(1), "run": In(1),
            "lane_step": In(meta_layout(config)["flat"].shape),
            "room": In(1),
            "i_stream": In(stream.Signature(entry_layout(config))),
            "fetch": Out(fetch_signature(self._geo)),
            "op": Out(self._op),
            "done": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        desc, g, cfg = self.desc, self._geo, self._config
        hb, wb = g["row"], g["column"]
        from .faults import EngineFault

        order = _Order(cfg, "walk")
        order.elaborate(m, desc)
        walk = Signal(meta_layout(cfg))  # grp_row, brow, chan, flat, wpos of the group
        k, begun, prev_t = Signal.like(self.fetch.k), Signal(), Signal(self._geo["plane"] + 1)
        finished = Signal()
        m.d.comb += self.done.eq(finished)

        e = self.i_stream.payload
        more_here = Signal()
        if self._fault is EngineFault.DROP_EVENT:
            m.d.comb += more_here.eq(~e.empty & (k + 2 < e.count))
        else:
            m.d.comb += more_here.eq(~e.empty & (k + 1 < e.count))
        seg_end = Signal()
        m.d.comb += seg_end.eq(e.empty | (e.last & ~more_here))
        dy, dx = _tap_of(m, e.tap)
        iy, ix = _receptive(m, desc, order.oy, order.ox, dy, dx)
        m.d.comb += [self.fetch.t.eq(e.t), self.fetch.y.eq(iy[:hb]), self.fetch.x.eq(ix[:wb]),
                     self.fetch.k.eq(k)]

        tap_bases = [Signal.like(self.op.tap_base, name=f"tap_base{i}") for i in range(TAPS)]
        for i in range(1, TAPS):  # tap i's first weight row i * C_in, by additions
            m.d.comb += tap_bases[i].eq(tap_bases[i - 1] + desc.c_in)

        meta = Signal(meta_layout(cfg))
        m.d.comb += [meta.eq(walk), meta.oy.eq(order.oy), meta.ox.eq(order.ox),
                     meta.wy.eq(order.wy), meta.wx.eq(order.wx), meta.q.eq(order.q),
                     meta.t.eq(order.t), meta.group.eq(order.group),
                     meta.pend.eq(Mux(desc.per_step, 0, desc.t_in - 1 - e.t))]

        go = Signal()
        m.d.comb += go.eq(self.run & ~finished & self.i_stream.valid & (~seg_end | self.room))
        with m.If(self.start):
            m.d.sync += [*order.reset(), k.eq(0), begun.eq(0), finished.eq(0),
                         walk.grp_row.eq(desc.w_base), walk.brow.eq(desc.b_base),
                         walk.chan.eq(0), walk.flat.eq(0), walk.wpos.eq(0)]
        with m.Elif(go):
            m.d.comb += [self.op.valid.eq(1), self.op.last.eq(seg_end),
                         self.op.shift.eq(e.t - prev_t),
                         self.op.tap_base.eq(Array(tap_bases)[e.tap]),
                         self.op.meta.eq(meta),
                         self.op.cmd.eq(Mux(e.empty, LaneCommand.CLEAR,
                                            Mux(begun, LaneCommand.SHIFT_ADD,
                                                LaneCommand.LOAD)))]
            if self._fault is EngineFault.HORNER_SHIFT:  # one place too far
                m.d.comb += self.op.shift.eq(e.t - prev_t + (e.t != prev_t))
            m.d.sync += prev_t.eq(e.t)
            with m.If(more_here):
                m.d.sync += k.eq(k + 1)
            with m.Else():
                m.d.sync += k.eq(0)
                m.d.comb += self.i_stream.ready.eq(1)
            with m.If(~seg_end):
                m.d.sync += begun.eq(1)
            with m.Else():
                m.d.sync += begun.eq(0)
                with m.If(order.last):
                    m.d.sync += finished.eq(1)
                order.advance(
                    m, desc,
                    on_group=[walk.grp_row.eq(walk.grp_row + desc.rows),
                              walk.brow.eq(walk.brow + 1),
                              walk.chan.eq(walk.chan + cfg.lanes),
                              walk.flat.eq(walk.flat + self.lane_step)],
                    on_window=[walk.grp_row.eq(desc.w_base), walk.brow.eq(desc.b_base),
                               walk.chan.eq(0), walk.flat.eq(0),
                               walk.wpos.eq(walk.wpos + 1)])
        return m


