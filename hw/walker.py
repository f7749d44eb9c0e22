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
from .event_lists import ListFields, fetch_signature, list_address, list_geometry, scan_signature
from .lanes import LaneCommand

__all__ = ["SCAN_LATENCY", "ListScanner", "Walker", "entry_layout", "meta_layout",
           "op_layout"]

#: entries the scanner may queue ahead of the walker
QUEUE_DEPTH = 5
#: bitmap rows the list scanner keeps (three for a 3x3 field, four with a fused pool, two ahead)
W_ROWS = 6


def _bits(n: int) -> int:
    return max(1, int(n).bit_length())


def entry_layout(config) -> data.StructLayout:
    """One queued list: plane ``t``, ``tap`` (``dy * 3 + dx``), the event address of its
    first entry ``base`` (``list << kb``), its ``count`` of events and whether that is one
    (``single``), ``last`` list of its segment, or ``empty``: a segment without events."""
    g = list_geometry(config)
    return data.StructLayout({"t": unsigned(g["plane"]), "tap": unsigned(4),
                              "base": unsigned(g["event_address"]),
                              "count": unsigned(g["count"]), "single": 1, "last": 1,
                              "empty": 1})


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


def _at_most_one(bits):
    """At most one of ``bits`` is set, by a tree (no carry chain: it is on the scanner's
    critical path)."""
    pairs = [(bits[i], None) for i in range(len(bits))]
    while len(pairs) > 1:
        nxt = []
        for i in range(0, len(pairs) - 1, 2):
            (a1, m1), (a2, m2) = pairs[i], pairs[i + 1]
            many = a1 & a2
            for extra in (m1, m2):
                if extra is not None:
                    many = many | extra
            nxt.append((a1 | a2, many))
        if len(pairs) % 2:
            nxt.append(pairs[-1])
        pairs = nxt
    many = pairs[0][1]
    return ~many if many is not None else Const(1, 1)


def _at_most_two(bits):
    """At most two of ``bits`` are set, by a tree of (any, two or more, three or more)."""
    nodes = [(bits[i], None, None) for i in range(len(bits))]

    def _or(*xs):
        xs = [x for x in xs if x is not None]
        if not xs:
            return None
        out = xs[0]
        for x in xs[1:]:
            out = out | x
        return out

    while len(nodes) > 1:
        nxt = []
        for i in range(0, len(nodes) - 1, 2):
            (a1, b1, c1), (a2, b2, c2) = nodes[i], nodes[i + 1]
            two = _or(a1 & a2, b1, b2)
            three = _or(c1, c2, None if b1 is None else b1 & a2,
                        None if b2 is None else a1 & b2)
            nxt.append((a1 | a2, two, three))
        if len(nodes) % 2:
            nxt.append(nodes[-1])
        nodes = nxt
    three = nodes[0][2]
    return ~three if three is not None else Const(1, 1)


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
        # stage B: the segment's nonempty mask, registered (its at-most-one test, which C
        # needs as a register, then starts at a flip-flop)
        b_valid, b_mask = Signal(), Signal(NL)
        b_oy, b_ox = Signal.like(a.oy), Signal.like(a.ox)
        c_valid, c_mask = Signal(), Signal(NL)
        c_oy, c_ox = Signal.like(a.oy), Signal.like(a.ox)
        # stage D: the length arrives; the entry is queued
        d = Signal(data.StructLayout({"valid": 1, "entry": self._entry}))

        # entries in C2, D and the queue, as a register (the queue's level and the stage
        # valids summed and compared were the head of the iCE40's critical path)
        occupancy = Signal(range(QUEUE_DEPTH + 1))
        room = Signal()
        m.d.comb += room.eq(occupancy < QUEUE_DEPTH)
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
        # slot's row is being read: one-hot (one read per cycle, landing on the next), so the
        # landing slot needs no index arithmetic
        asked = Signal(W_ROWS)
        primed = Signal()  # the window was full once since the layer started
        base = Signal(hb + 2)
        q1 = Signal()
        m.d.comb += q1.eq(desc.pool & a.q[1])
        need = Signal(W_ROWS)
        m.d.comb += need.eq(Mux(q1, 0b1110, 0b0111))
        primed_now = Signal()
        m.d.comb += primed_now.eq(primed | (have == (1 << W_ROWS) - 1))
        a_ready = Signal()
        m.d.comb += a_ready.eq(primed_now & ((have & need) == need))
        b_to_c = Signal()
        m.d.comb += b_to_c.eq(b_valid & c_take)
        a_to_b = Signal()
        m.d.comb += a_to_b.eq(a_valid & a_ready & (~b_valid | c_take) & self.run)
        row_end = Signal()  # A's segment is the last of its window row, and not the layer's
        m.d.comb += row_end.eq(~(desc.per_step & (a.t + 1 < desc.steps))
                               & (a.q + 1 >= desc.quads) & (a.group + 1 >= desc.groups)
                               & (a.wx + 1 >= desc.win_w) & (a.wy + 1 < desc.win_h))
        shift = Signal(2)
        with m.If(a_to_b & row_end):
            m.d.comb += shift.eq(Mux(desc.pool, 2, 1))
        # next frame: shifted, with the row arriving from last cycle's read (slot `asked`)
        have_nx, land_at = Signal(W_ROWS), Signal(W_ROWS)
        m.d.comb += [have_nx.eq((have | asked) >> shift), land_at.eq(asked >> shift)]
        # the fetch looks at this cycle's window (not the shifted one, which would put the
        # shift's logic in front of the bitmap read's address); its row lands shifted
        free = Signal(W_ROWS)
        m.d.comb += free.eq(~have & ~asked)
        fetch_slot = Signal(range(W_ROWS))
        for i in reversed(range(W_ROWS)):
            with m.If(free[i]):
                m.d.comb += fetch_slot.eq(i)
        fetch_one = Signal(W_ROWS)  # the lowest free slot, one-hot
        m.d.comb += fetch_one.eq(free & -free)
        fetch_row = Signal(hb + 2)
        m.d.comb += [fetch_row.eq(base - 1 + fetch_slot), self.scan.row.eq(fetch_row[:hb])]
        base_nx = Signal.like(base)
        m.d.comb += base_nx.eq(base + shift)

        with m.If(self.start):
            m.d.sync += [*a.reset(), a_valid.eq(1), b_valid.eq(0), c_valid.eq(0), have.eq(0),
                         asked.eq(0),
                         primed.eq(0), base.eq(0)]
        with m.Elif(self.run):
            # the fetched slot in the next frame (a row shifted out of the window is dropped)
            m.d.sync += [have.eq(have_nx), asked.eq(fetch_one >> shift), base.eq(base_nx)]
            m.d.sync += primed.eq(primed_now)
            for i in range(W_ROWS):
                with m.Switch(shift):
                    for k in range(3):
                        with m.Case(k):
                            if i + k < W_ROWS:
                                m.d.sync += win[i].eq(win[i + k])
                with m.If(land_at[i]):
                    m.d.sync += win[i].eq(self.scan.bits)
            with m.If(a_to_b):
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

        # stage C: the lowest remaining slot (one-hot, then its plane and tap by OR trees)
        rest = Signal(NL)
        low = Signal(NL)
        m.d.comb += [rest.eq(c_mask & (c_mask - 1)), low.eq(c_mask & ~rest)]
        slot_t, slot_tap = Signal(tb + 1), Signal(4)
        for j in range(len(slot_t)):
            if T > 1 << j:
                planes = [low[i] for i in range(NL) if (i // TAPS) >> j & 1]
                m.d.comb += slot_t[j].eq(Cat(*planes).any())
        m.d.comb += [slot_tap[j].eq(Cat(*[low[i] for i in range(NL) if (i % TAPS) >> j & 1])
                                    .any()) for j in range(4)]
        # stage C2: the list's address, and its length read
        c2 = Signal(data.StructLayout({"valid": 1, "entry": self._entry,
                                       "oy": len(c_oy), "ox": len(c_ox)}))
        dy, dx = _tap_of(m, c2.entry.tap)
        iy, ix = _receptive(m, desc, c2.oy, c2.ox, dy, dx)
        fields = Signal(ListFields(g))
        m.d.comb += [fields.kb.eq(desc.in_kb), fields.wb.eq(desc.in_wb),
                     fields.hb.eq(desc.in_hb)]
        m.d.comb += self.scan.list.eq(list_address(c2.entry.t, iy[:hb], ix[:wb], fields,
                                                   g["list_address"]))

        m.d.sync += [c2.valid.eq(0), d.valid.eq(c2.valid & ~self.start), d.entry.eq(c2.entry),
                     d.entry.base.eq((self.scan.list << fields.kb)[:g["event_address"]])]
        pushed = Signal()  # an entry enters C2
        m.d.comb += pushed.eq(~self.start & c_valid & room)
        m.d.sync += occupancy.eq(occupancy + pushed - (c2.valid & self.start)
                                 - (self.o_stream.valid & self.o_stream.ready))
        with m.If(self.start):
            pass
        with m.Elif(c_valid & room):
            m.d.sync += [c2.valid.eq(1), c2.entry.t.eq(slot_t), c2.entry.tap.eq(slot_tap),
                         c2.entry.last.eq(c_last), c2.entry.empty.eq(c_mask == 0),
                         c2.oy.eq(c_oy), c2.ox.eq(c_ox), c_mask.eq(rest)]
            # c_last is a register (it gates A's advance and the window's slide: computed
            # from c_mask in the same cycle it was the iCE40's critical path): the remaining
            # mask holds at most one slot exactly when this one holds at most two
            m.d.sync += c_last.eq(_at_most_two(c_mask))
            with m.If(c_last & ~b_to_c):
                m.d.sync += c_valid.eq(0)
        with m.If(b_to_c & ~self.start):
            m.d.sync += [c_valid.eq(1), c_mask.eq(b_mask), c_last.eq(_at_most_one(b_mask)),
                         c_oy.eq(b_oy), c_ox.eq(b_ox)]
        with m.If(self.start):
            pass
        with m.Elif(a_to_b):
            m.d.sync += [b_valid.eq(1), b_mask.eq(mask), b_oy.eq(a.oy), b_ox.eq(a.ox)]
        with m.Elif(b_to_c):
            m.d.sync += b_valid.eq(0)

        # stage D: queue the entry with its length (an empty segment's is 0)
        entry = Signal(self._entry)
        m.d.comb += [entry.eq(d.entry),
                     entry.count.eq(Mux(d.entry.empty, 0, self.scan.count)),
                     entry.single.eq(self.scan.count == 1),
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
        from .faults import EngineFault

        order = _Order(cfg, "walk")
        order.elaborate(m, desc)
        walk = Signal(meta_layout(cfg))  # grp_row, brow, chan, flat, wpos of the group
        k, begun, prev_t = Signal(g["count"]), Signal(), Signal(self._geo["plane"] + 1)
        finished = Signal()
        m.d.comb += self.done.eq(finished)

        e = self.i_stream.payload
        # more events in this list after event k: for k = 0 the scanner's `single` flag, then
        # a register set one event ahead (a compare of k with the queue's count in front of
        # `go` was the iCE40's critical path)
        more_here, fresh, at_last = Signal(), Signal(init=1), Signal()
        if self._fault is EngineFault.DROP_EVENT:
            m.d.comb += more_here.eq(~e.empty & (k + 2 < e.count))
        else:
            m.d.comb += more_here.eq(~e.empty & Mux(fresh, ~e.single, ~at_last))
        seg_end = Signal()
        m.d.comb += seg_end.eq(e.empty | (e.last & ~more_here))
        m.d.comb += self.fetch.addr.eq(e.base | k)  # k < 2^kb: the OR is the sum

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
            m.d.sync += [*order.reset(), k.eq(0), fresh.eq(1), begun.eq(0), finished.eq(0),
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
                m.d.sync += [k.eq(k + 1), fresh.eq(0), at_last.eq(k + 2 >= e.count)]
            with m.Else():
                m.d.sync += [k.eq(0), fresh.eq(1)]
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


