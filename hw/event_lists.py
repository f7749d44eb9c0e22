"""The engine's activation memory: ping-pong event lists on block RAM.

A layer's input is a set of *event lists*, one per time plane ``t`` and input position ``(y, x)``
(a dense layer reads one flat list per plane). Each half of the ping-pong pair holds

- ``events``: the entries, list ``(t, y, x)`` entry ``k`` at
  ``((t << hb | y) << wb | x) << kb | k`` (the field widths of the layer that reads the lists);
- ``counts``: each list's length at ``(t << hb | y) << wb | x``, valid only while the list's bit
  is set in the nonempty bitmap (so a layer clears a map row in one cycle, not every length);
- ``nonempty``: one bitmap row per map row ``y``, bit ``Cat(x, t)`` set when list ``(t, y, x)``
  holds anything. The scanner reads one row per cycle into its own window of rows
  (:class:`~bitspike.hw.walker.ListScanner`).

Every memory has synchronous read ports only, so yosys maps it to block RAM (ECP5 DP16KD,
iCE40 SB_RAM40_4K) or, when it is tiny, to registers; none is read combinationally. The walker
side (:class:`~bitspike.hw.walker.ListScanner` and :class:`~bitspike.hw.walker.Walker`) reads
the half ``src``; the writer writes the other half, or ``src`` itself while the input is loaded.

The writer is a two-stage pipeline that accepts one append per cycle: stage 1 reads the list's
length and its bitmap row, stage 2 writes the entry at that length, the length plus one and the
row with the list's bit set. Back-to-back appends to one list see each other's writes because
the read ports are transparent for the write ports.
"""

# No ``from __future__ import annotations``: wiring.Component reads real annotations.
from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .memories import BLOCK_RAM_ATTRS, RamKind, SinglePortRAM

__all__ = ["EventLists", "ListFields", "append_signature", "clear_signature",
           "fetch_signature", "list_address", "list_geometry", "scan_signature"]


def list_geometry(config) -> dict[str, int]:
    """Widths of the event-list fields of an :class:`~bitspike.hw.config.EngineConfig`."""
    f = config.list_field_bits()
    return {"row": f["row"], "column": f["column"], "plane": f["plane"], "event": f["event"],
            "event_address": f["event_address"], "list_address": f["list_address"],
            "count": config.event_depth.bit_length() + 1, "planes": config.max_t}


def ListFields(geometry) -> data.StructLayout:
    """The per-layer address field widths (``kb``, ``wb``, ``hb``) of a list's address."""
    return data.StructLayout({"kb": unsigned(geometry["event_address"].bit_length()),
                              "wb": unsigned(geometry["column"].bit_length() + 1),
                              "hb": unsigned(geometry["row"].bit_length() + 1)})


def scan_signature(geometry) -> wiring.Signature:
    """The scanner's port (its view): nonempty bitmap row ``row`` (``bits``) and the length
    (``count``) of the list at address ``list`` (:func:`list_address`), each on the cycle
    after the request."""
    g = geometry
    return wiring.Signature({
        "row": Out(g["row"]), "bits": In(unsigned(g["planes"] << g["column"])),
        "list": Out(g["list_address"]), "count": In(g["count"])})


def fetch_signature(geometry) -> wiring.Signature:
    """The walker's port (its view): the entry at event address ``addr`` (list ``l``'s entry
    ``k`` is at ``l << kb | k``) on the next cycle. The walker gets ``l << kb`` from the
    scanner with each list, so nothing but an OR stands between its queue and the address."""
    g = geometry
    return wiring.Signature({"addr": Out(g["event_address"]), "event": In(g["event"])})


def append_signature(geometry) -> wiring.Signature:
    """An appender's port (its view): append ``index`` to list ``(t, y, x)`` when ``valid``."""
    g = geometry
    return wiring.Signature({"valid": Out(1), "t": Out(g["plane"]), "y": Out(g["row"]),
                             "x": Out(g["column"]), "index": Out(g["event"])})


def clear_signature(geometry) -> wiring.Signature:
    """Clear bitmap row ``row`` (empty its lists) when ``valid``."""
    return wiring.Signature({"valid": Out(1), "row": Out(geometry["row"])})


def list_address(t, y, x, fields, bits):
    """The address of list ``(t, y, x)`` (``bits`` wide) for the field widths ``fields``
    (:func:`ListFields`): ``(t << hb | y) << wb | x``."""
    return ((((t << fields.hb) | y) << fields.wb) | x)[:bits]


class EventLists(wiring.Component):
    """Both halves of the event-list memory, the walker's read ports and the list writer.

    Parameters
    ----------
    config : EngineConfig
        Sizes every memory: ``event_depth`` entries and ``list_depth`` lengths per half,
        ``2^row`` bitmap rows of ``max_t << column`` bits.
    events : RamKind
        What the entries are built from (:class:`~bitspike.hw.memories.SinglePortRAM`: one
        address per half, so a half is read or written in a cycle, never both).

    Members
    -------
    src : In(1)
        The half the walker side reads (the current layer's input).
    load : In(1)
        Appends and clears go to ``src`` (the input load) instead of the other half.
    wr_fields : In(ListFields)
        Address field widths of the lists written (the next layer's, or during the load this
        layer's); the reading side gives whole addresses.
    scan : In(scan_signature)
        ``bits`` is bitmap row ``row`` of ``src`` and ``count`` the length of list ``list``
        of ``src``, both as requested in the previous cycle.
    fetch : In(fetch_signature)
        ``event`` is the entry at ``addr`` of ``src`` requested in the previous cycle.
    append : In(append_signature)
        Append ``index`` to list ``(t, y, x)`` of the written half (one per cycle; it lands on
        the next cycle).
    clear : In(clear_signature)
        Clear bitmap row ``row`` of the written half (empties its lists) in this cycle.
    busy : Out(1)
        An append is still in the writer's pipeline.
    """

    def __init__(self, *, config, events: RamKind = RamKind.BLOCK):
        g = self._geo = list_geometry(config)
        self._config, self._events = config, events
        super().__init__({
            "src": In(1), "load": In(1),
            "wr_fields": In(ListFields(g)),
            "scan": In(scan_signature(g)), "fetch": In(fetch_signature(g)),
            "append": In(append_signature(g)), "clear": In(clear_signature(g)),
            "busy": Out(1),
        })

    @property
    def geometry(self) -> dict[str, int]:
        return dict(self._geo)

    def elaborate(self, platform):
        m = Module()
        g = self._geo
        hb, wb, tb = g["row"], g["column"], g["plane"]
        row_bits = g["planes"] << wb
        lb, eb = g["list_address"], g["event_address"]

        wbuf = Signal()
        m.d.comb += wbuf.eq(Mux(self.load, self.src, ~self.src))

        # writer stage 1: the append, registered; its list's length and bitmap row are read
        stage = data.StructLayout({"valid": 1, "t": tb, "y": hb, "x": wb,
                                   "index": g["event"], "half": 1,
                                   "kb": len(self.wr_fields.kb), "wb": len(self.wr_fields.wb),
                                   "hb": len(self.wr_fields.hb), "list": lb})
        s1, s2 = Signal(stage), Signal(stage)
        m.d.sync += [s1.valid.eq(self.append.valid), s1.t.eq(self.append.t),
                     s1.y.eq(self.append.y), s1.x.eq(self.append.x),
                     s1.index.eq(self.append.index), s1.half.eq(wbuf),
                     s1.kb.eq(self.wr_fields.kb), s1.wb.eq(self.wr_fields.wb),
                     s1.hb.eq(self.wr_fields.hb)]
        s1_fields = data.View(ListFields(g), Cat(s1.kb, s1.wb, s1.hb))
        s1_list = Signal(lb)
        m.d.comb += s1_list.eq(list_address(s1.t, s1.y, s1.x, s1_fields, lb))
        # writer stage 2: the entry, the new length and the row are written
        m.d.sync += [s2.eq(s1), s2.list.eq(s1_list)]
        s2_base = Signal(eb)  # the list's first entry's address, registered with stage 2
        m.d.sync += s2_base.eq((s1_list << s1_fields.kb)[:eb])
        m.d.comb += self.busy.eq(s1.valid | s2.valid)

        events_rd, counts_rd, maps_rd = [], [], []
        # the list's bit in its bitmap row, one-hot and registered with stage 2 (a bit select
        # of the row just read, in front of the length's increment, was the iCE40's
        # critical path)
        s1_bit, bit = Signal(row_bits), Signal(row_bits)
        m.d.comb += s1_bit.eq(Const(1, row_bits) << Cat(s1.x, s1.t))
        m.d.sync += bit.eq(s1_bit)
        for half in range(2):
            name = "ab"[half]
            # the walker side reads this half's lengths and rows unless the writer's stage 1
            # reads them (the writer's half is the other one, except while the input loads)
            reader = Signal(name=f"reader_{name}")
            m.d.comb += reader.eq(~(s1.valid & (s1.half == half)))
            writing = Signal(name=f"writing_{name}")
            m.d.comb += writing.eq(s2.valid & (s2.half == half))

            events = SinglePortRAM(width=g["event"], depth=1 << eb, kind=self._events)
            counts = Memory(shape=unsigned(g["count"]), depth=1 << lb, init=[],
                            attrs=BLOCK_RAM_ATTRS)
            m.submodules[f"events_{name}"] = events
            m.submodules[f"counts_{name}"] = counts
            cnt_w = counts.write_port()
            cnt_r = counts.read_port(transparent_for=(cnt_w,))
            events_rd.append(events)
            counts_rd.append(cnt_r)
            m.d.comb += [
                cnt_r.addr.eq(Mux(reader, self.scan.list, s1_list)),
            ]

            bitmap = Memory(shape=unsigned(row_bits), depth=1 << hb, init=[])
            m.submodules[f"nonempty_{name}"] = bitmap
            map_w = bitmap.write_port()
            map_r = bitmap.read_port(transparent_for=(map_w,))
            maps_rd.append(map_r)
            m.d.comb += map_r.addr.eq(Mux(reader, self.scan.row, s1.y))

            # stage 2: the read length counts only while the list's bit is set
            row_now = Signal(row_bits, name=f"row_now_{name}")
            m.d.comb += row_now.eq(map_r.data)
            had = Signal(name=f"had_{name}")
            m.d.comb += had.eq((row_now & bit).any())
            length = Signal(g["count"], name=f"length_{name}")
            m.d.comb += length.eq(Mux(had, cnt_r.data, 0))
            m.d.comb += [
                events.addr.eq(Mux(writing, (s2_base | length)[:eb], self.fetch.addr)),
                events.w_data.eq(s2.index), events.w_en.eq(writing),
                cnt_w.addr.eq(s2.list),
                # the increment beside the bit test, not after it
                cnt_w.data.eq(Mux(had, cnt_r.data + 1, 1)), cnt_w.en.eq(writing),
            ]
            clearing = Signal(name=f"clearing_{name}")
            m.d.comb += clearing.eq(self.clear.valid & (wbuf == half))
            with m.If(clearing):
                m.d.comb += [map_w.addr.eq(self.clear.row), map_w.data.eq(0), map_w.en.eq(1)]
            with m.Elif(writing):
                m.d.comb += [map_w.addr.eq(s2.y),
                             map_w.data.eq(row_now | bit),
                             map_w.en.eq(1)]

        # the walker side's read data, from the half it reads
        m.d.comb += [
            self.fetch.event.eq(Mux(self.src, events_rd[1].r_data, events_rd[0].r_data)),
            self.scan.count.eq(Mux(self.src, counts_rd[1].data, counts_rd[0].data)),
        ]
        m.d.comb += self.scan.bits.eq(Mux(self.src, maps_rd[1].data, maps_rd[0].data))
        return m
