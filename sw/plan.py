"""The engine's layer plan, typed: the rows of its layer-table ROM and the bound of every field.

This module is the one definition of the engine's layer table. It imports the standard library
and the numpy-only :mod:`bitspike.sw.program` and :mod:`bitspike.sw.errors`, nothing else, so
that the hardware side (:mod:`bitspike.hw`) can read it without torch.

- :class:`LayerKind` numbers the Program's layer kinds (the bundle's descriptor word 0,
  docs/memory-images.md, and the ROM's ``kind`` field); :class:`NeuronMode` numbers its neuron
  modes. Nothing else assigns these numbers.
- :class:`LayerRow` is one executed layer (one ROM row). Every field declares, as dataclass field
  metadata, the largest value it can take on an engine configuration: :meth:`LayerRow.bounds`
  is what :meth:`bitspike.hw.config.EngineConfig.layer_table_limits` returns, the engine sizes
  its ROM from it, and :meth:`bitspike.hw.config.EngineConfig.cost` prices the table from it.
- :func:`layer_plan` turns a Program into its rows; the engine (:mod:`bitspike.hw.engine`) and
  the cycle model (:mod:`bitspike.sw.cycles`) both read it, so they cannot drift apart.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field, fields

from .errors import BitspikeError, ProgramError
from .program import Program

__all__ = ["TAPS", "LayerKind", "NeuronMode", "PlanError", "LayerRow", "layer_plan",
           "field_bits"]

TAPS = 9  # the walker's tap slots per plane (a dense layer uses slot 0)


class PlanError(BitspikeError):
    """The Program has a layer sequence the engine's schedule does not run."""


class LayerKind(enum.IntEnum):
    """A layer's kind as a number: the bundle's descriptor code and the ROM's ``kind`` field.

    The member names are the Program's kind strings upper-cased (``"conv3x3"`` is
    ``CONV3X3``). The engine executes conv3x3 and dense layers; a sumpool2x2 layer is fused into
    the conv3x3 layer before it and never has a row of its own.
    """

    CONV3X3 = 0
    DENSE = 1
    SUMPOOL2X2 = 2

    @classmethod
    def from_program(cls, kind: str) -> LayerKind:
        """The member for a Program layer kind string (``"conv3x3"``, ``"dense"``,
        ``"sumpool2x2"``); :class:`ProgramError` for any other."""
        member = cls.__members__.get(kind.upper()) if isinstance(kind, str) else None
        if member is None or member.program_name != kind:
            raise ProgramError(f"unknown layer kind {kind!r}; known: "
                               f"{', '.join(m.program_name for m in cls)}")
        return member

    @property
    def program_name(self) -> str:
        """The Program's string for this kind (``Layer.kind``)."""
        return self.name.lower()


class NeuronMode(enum.IntEnum):
    """A Program's neuron mode as a number (the ROM's ``rate`` flag is ``mode == RATE``)."""

    BITSERIAL = 0
    RATE = 1

    @classmethod
    def from_program(cls, mode: str) -> NeuronMode:
        """The member for a Program mode string (``"bitserial"``, ``"rate"``);
        :class:`ProgramError` for any other."""
        member = cls.__members__.get(mode.upper()) if isinstance(mode, str) else None
        if member is None or member.program_name != mode:
            raise ProgramError(f"unknown neuron mode {mode!r}; known: "
                               f"{', '.join(m.program_name for m in cls)}")
        return member

    @property
    def program_name(self) -> str:
        """The Program's string for this mode (``Program.mode``)."""
        return self.name.lower()


def field_bits(bound: int) -> int:
    """Bits of an unsigned field holding ``0..bound`` (at least 1): the ROM's field width."""
    return max(1, int(bound).bit_length())


# A bound is a function of an EngineConfig-like object: attributes lanes, max_t, max_channels,
# max_height, max_width, act_depth, weight_depth, bias_depth, layer_depth, and the method
# list_field_bits() (bitspike.hw.config.EngineConfig).
Bound = Callable[[object], int]


def _bounded(bound: Bound):
    return field(metadata={"bound": bound})


def _flag():
    return _bounded(lambda c: 1)


def _channels(c) -> int:
    return c.max_channels


def _height(c) -> int:
    return c.max_height


def _width(c) -> int:
    return c.max_width


def _steps(c) -> int:
    return c.max_t


def _list_bits(key: str) -> Bound:
    return lambda c: c.list_field_bits()[key]


@dataclass(frozen=True, kw_only=True)
class LayerRow:
    """One executed layer: a row of the engine's layer-table ROM (:func:`layer_plan`).

    Every field is a non-negative integer (``kind`` a :class:`LayerKind`) and carries its upper
    bound on a configuration in its metadata (``"bound"``, :meth:`bounds`). The field order is
    the ROM's layout order (the first field in the low bits). Map fields are ``(C, H, W)``; a
    dense layer's vector is ``(N, 1, 1)``.
    """

    kind: LayerKind = _bounded(lambda c: max(LayerKind.CONV3X3, LayerKind.DENSE))  # no pool row
    index: int = _bounded(lambda c: c.layer_depth)  # the Program layer it executes
    c_in: int = _bounded(_channels)
    h: int = _bounded(_height)
    w: int = _bounded(_width)
    in_flat: int = _flag()  # reads a flat vector (a dense layer)
    n_in: int = _bounded(lambda c: c.act_depth)  # c_in * h * w
    c_out: int = _bounded(_channels)
    oh: int = _bounded(_height)
    ow: int = _bounded(_width)
    groups: int = _bounded(lambda c: -(-c.max_channels // c.lanes))  # ceil(c_out / P)
    rows: int = _bounded(lambda c: max(c.act_depth, TAPS * c.max_channels))  # fan-in
    w_base: int = _bounded(lambda c: c.weight_depth)  # first weight-memory row
    b_base: int = _bounded(lambda c: c.bias_depth)  # first bias row (one per group)
    t_in: int = _bounded(_steps)
    t_out: int = _bounded(_steps)
    levels: int = _bounded(lambda c: (1 << c.max_t) - 1)  # the clip level L
    fires: int = _flag()
    last: int = _flag()
    pool: int = _flag()  # a 2x2 sum pool is fused into this conv3x3
    quads: int = _bounded(lambda c: 4)  # positions per window: 4 with a pool, else 1
    win_h: int = _bounded(_height)  # windows: the written map's height and width
    win_w: int = _bounded(_width)
    wr_t: int = _bounded(_steps)  # planes of the written lists
    wr_flat: int = _flag()  # the written lists are flat (the next layer is dense)
    wr_hw: int = _bounded(lambda c: c.max_height * c.max_width)  # win_h * win_w
    clear_rows: int = _bounded(_height)  # nonempty-bitmap rows cleared before firing
    rate: int = _flag()  # the Program's mode is rate (``mode``)
    analog: int = _flag()  # rate mode's first layer (one bit-serial current, S steps)
    per_step: int = _flag()  # rate mode's later layers (one segment per step)
    steps: int = _bounded(_steps)  # rate steps S = tau + t_steps
    tau: int = _bounded(_steps)
    in_kb: int = _bounded(_list_bits("event_address"))  # read lists' address fields
    in_wb: int = _bounded(_list_bits("column"))
    in_hb: int = _bounded(_list_bits("row"))
    in_tb: int = _bounded(_list_bits("plane"))
    out_kb: int = _bounded(_list_bits("event_address"))  # written lists' (the next in_*)
    out_wb: int = _bounded(_list_bits("column"))
    out_hb: int = _bounded(_list_bits("row"))
    out_tb: int = _bounded(_list_bits("plane"))

    def __post_init__(self):
        object.__setattr__(self, "kind", LayerKind(self.kind))
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"LayerRow.{f.name} must be a non-negative integer, not "
                                 f"{value!r}")

    @property
    def mode(self) -> NeuronMode:
        """The neuron mode (the ``rate`` flag as a :class:`NeuronMode`)."""
        return NeuronMode(self.rate)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The fields in ROM layout order."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def bounds(cls, config) -> dict[str, int]:
        """The largest value each field can take on ``config`` (an EngineConfig), in field
        order."""
        return {f.name: int(f.metadata["bound"](config)) for f in fields(cls)}

    @classmethod
    def widths(cls, config) -> dict[str, int]:
        """Bits of each field in the ROM built for ``config``: :func:`field_bits` of its
        bound."""
        return {name: field_bits(bound) for name, bound in cls.bounds(config).items()}

    def as_dict(self) -> dict[str, int]:
        """The row as plain integers in field order (``kind`` as its number): a ROM ``init``
        row."""
        return {f.name: int(getattr(self, f.name)) for f in fields(self)}


def _map(shape) -> tuple[int, int, int]:
    shape = tuple(shape)
    return shape if len(shape) == 3 else (shape[0], 1, 1)


def layer_plan(program: Program, lanes: int) -> list[LayerRow]:
    """The engine's executed layers (its layer-table rows), in order.

    Every field is a non-negative integer: shapes, groups, weight/bias row bases, time steps, the
    fused pool and where the layer writes its output lists. Raises :class:`PlanError` for a pool
    that does not follow a firing conv3x3 layer (the engine fuses pooling into that conv).
    """
    if not isinstance(lanes, int) or isinstance(lanes, bool) or lanes < 1:
        raise BitspikeError(f"lanes must be a positive integer, not {lanes!r}")
    layers, rows = program.layers, []
    mode = NeuronMode.from_program(program.mode)
    rate = mode == NeuronMode.RATE
    steps = program.rate_steps
    w_base = b_base = 0
    i = 0
    while i < len(layers):
        lay = layers[i]
        kind = LayerKind.from_program(lay.kind)
        if kind == LayerKind.SUMPOOL2X2:
            raise PlanError(f"layer {i} ({lay.name}): the engine fuses 2x2 sum pooling into the "
                            "firing conv3x3 layer before it; a pool after "
                            f"{'the input' if i == 0 else layers[i - 1].kind} is not supported "
                            "(put a conv3x3 layer first)")
        pool = i + 1 < len(layers) and layers[i + 1].kind == "sumpool2x2"
        if pool and kind != LayerKind.CONV3X3:
            raise PlanError(f"layer {i + 1} ({layers[i + 1].name}): sum pooling must follow a "
                            f"conv3x3 layer, not {lay.kind}")
        written = layers[i + 1] if pool else lay  # the layer whose output lists this one writes
        nxt_i = i + 2 if pool else i + 1
        nxt = layers[nxt_i] if nxt_i < len(layers) else None
        c_in, h, w = _map(lay.in_shape)
        c_out, oh, ow = _map(lay.out_shape)
        _, wr_h, wr_w = _map(written.out_shape)
        groups = -(-c_out // lanes)
        wr_flat = int(nxt is not None and nxt.kind == "dense")
        in_flat = int(kind == LayerKind.DENSE)
        rows.append({
            "kind": kind, "index": i,
            "c_in": c_in, "h": h, "w": w, "in_flat": in_flat,
            "n_in": c_in * h * w, "c_out": c_out, "oh": oh, "ow": ow, "groups": groups,
            "rows": lay.fan_in, "w_base": w_base, "b_base": b_base, "t_in": lay.t_in,
            "t_out": lay.t_out, "levels": lay.levels, "fires": int(lay.fires),
            "last": int(nxt is None), "pool": int(pool), "quads": 4 if pool else 1,
            "win_h": wr_h, "win_w": wr_w, "wr_t": written.t_out, "wr_flat": wr_flat,
            "wr_hw": wr_h * wr_w, "clear_rows": (1 if wr_flat else wr_h) if lay.fires else 0,
            "rate": int(rate), "analog": int(rate and i == 0), "per_step": int(rate and i > 0),
            "steps": steps, "tau": program.tau,
        })
        w_base += groups * lay.fan_in
        b_base += groups
        i = nxt_i
    # event-list address fields per layer: list (t, y, x) entry k of the lists a layer reads is
    # (the longest list, in_cap, counts rate pooling's duplicates: a channel once per spike of
    # each of the window's 4 positions)
    # at ((t << in_hb | y) << in_wb | x) << in_kb | k, each field just wide enough for that layer
    # (flat lists: in_wb = in_hb = 0); out_* are the next layer's in_* (the lists it writes)
    for n, row in enumerate(rows):
        if n == 0:
            in_cap = row["n_in"] if row["in_flat"] else row["c_in"]
        else:
            prev = rows[n - 1]
            in_cap = prev["c_out"] * (prev["wr_hw"] if prev["wr_flat"] else 1) * (
                4 if prev["rate"] and prev["pool"] else 1)
        row["in_kb"] = (in_cap - 1).bit_length()
        row["in_wb"] = 0 if row["in_flat"] else (row["w"] - 1).bit_length()
        row["in_hb"] = 0 if row["in_flat"] else (row["h"] - 1).bit_length()
        row["in_tb"] = (row["t_in"] - 1).bit_length()
    for n, row in enumerate(rows):
        nxt = rows[n + 1] if n + 1 < len(rows) else None
        for key in ("kb", "wb", "hb", "tb"):
            row[f"out_{key}"] = nxt[f"in_{key}"] if nxt is not None else 0
    return [LayerRow(**row) for row in rows]


#: Cycles from a layer's first walk cycle to its first issued accumulate: the list scanner's
#: pipeline (bitmap read, list selection, length read, queue) fills once per layer
#: (hw/walker.py); the cycle model (sw/cycles.py) adds it to every layer.
SCAN_LATENCY = 12
