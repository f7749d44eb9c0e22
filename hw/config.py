"""The engine's build parameters, whether a Program fits them, and the P-wide weight image.

The engine is generic: it is elaborated once for an :class:`EngineConfig` (lanes, widths, memory
depths, neuron modes) and reads any Program that fits from its memories. This module computes
the smallest config for a Program (:meth:`EngineConfig.for_program`), says exactly what does not
fit and by how much (:meth:`EngineConfig.check_fits`), prices a config in memory and register
bits (:meth:`EngineConfig.cost`), and builds the weight memory's image (:func:`pack_weights`).

Weight packing (the engine's weight memory, P lanes)
-----------------------------------------------------
The bundle stores each layer's weights input-major: for input ``j`` (``0 <= j < fan_in``; the
tap ``(c * 3 + dy) * 3 + dx`` of a conv3x3 layer, the flat input index of a dense layer) the
``C_out`` words ``w[0, j] .. w[C_out - 1, j]`` (docs/memory-images.md, section 4). The engine's
weight memory has rows of ``P`` words. For each layer with weights:

- the output channels are cut into ``G = ceil(C_out / P)`` groups of ``P`` consecutive channels,
  ``C_out`` padded with zero weights up to ``G * P``;
- the inputs are numbered in the engine's walk order: the flat input index of a dense layer (as
  in the bundle), and ``j = (dy * 3 + dx) * C_in + c`` for a conv3x3 layer (tap-major, so that
  one tap's channels are consecutive rows; the bundle's conv order is channel-major);
- the block is **group-major**: the row of group ``g`` (channels ``g P .. g P + P - 1``) and input
  ``j`` is::

      row(g, j) = layer_row_base + g * fan_in + j

  and holds the ``P`` weights ``w[g P + p, j]`` for ``p = 0..P-1``
  (0 where ``g P + p >= C_out``); lane ``p`` occupies bits ``p * W .. p * W + W - 1`` (lane 0 in
  the low bits) as a ``W``-bit two's-complement word, ``W`` = the engine's ``weight_bits``;
- a layer's block has ``fan_in * G`` rows; the blocks follow one another in layer order without
  gaps (``layer_row_base`` is the sum of the rows of the layers before it; a pool has 0 rows and
  the running offset as its base, as in the bundle).

Why group-major: the engine is output-stationary (a group keeps its ``P`` accumulators while all
inputs of all time steps stream past), so one group reads rows ``group_base + j`` for the active
inputs ``j``: an add, no multiply, and ``group_base`` steps by ``fan_in`` from one group to the
next. The row count is the same in either order. With ``P = 1`` a row is one word and the block
is output-major (``row = base + o * fan_in + j``), the transpose of the bundle's order.

Nothing here is stored in the bundle: the bundle is independent of ``P`` and the engine packs it
at elaboration (``Memory(init=rows)``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

import numpy as np

from bitspike.sw.errors import BitspikeError
from bitspike.sw.plan import LayerRow, PlanError, layer_plan
from bitspike.sw.program import NEURON_MODES, Program

__all__ = ["ENGINE_CONFIG_FORMAT", "ENGINE_CONFIG_VERSION", "EngineConfig", "EngineConfigError",
           "EngineFitError", "MemoryShape", "pack_weights", "unpack_weights", "weight_rows"]

ENGINE_CONFIG_FORMAT = "bitspike-engine-config"
ENGINE_CONFIG_VERSION = 2  # 2: the map, channel and event-list fields


@dataclass(frozen=True)
class MemoryShape:
    """One of the engine's memories: ``count`` copies of ``depth`` words of ``width`` bits,
    read synchronously (block RAM) or, for a handful of words, combinationally (``"comb"``)."""

    width: int
    depth: int
    count: int = 1
    read: str = "sync"
    #: ``"block"``: the engine asks yosys for block RAM (``BLOCK_RAM_ATTRS``), else yosys
    #: chooses (``"auto"``)
    style: str = "auto"

    @property
    def bits(self) -> int:
        return self.count * self.depth * self.width


class EngineConfigError(BitspikeError):
    """An engine configuration file or mapping is malformed or of an unknown version."""


class EngineFitError(BitspikeError):
    """A Program needs more than an engine provides (memory depths, widths, time steps, mode)."""


def _check_program(program) -> None:
    if not isinstance(program, Program):
        raise TypeError(f"program must be a bitspike.sw.program.Program, not {program!r}")
    program.validate()


def _check_lanes(lanes) -> None:
    if not isinstance(lanes, int) or isinstance(lanes, bool) or lanes < 1:
        raise TypeError(f"lanes must be a positive integer, not {lanes!r}")


def _groups(c_out: int, lanes: int) -> int:
    return -(-c_out // lanes)


def weight_rows(program: Program, lanes: int) -> list[int]:
    """Rows of ``lanes`` words each layer's weights take (0 for a pool): ``fan_in * G``.

    ``G = ceil(C_out / lanes)`` (see the module docstring for the packing).
    """
    _check_lanes(lanes)
    return [lay.fan_in * _groups(lay.out_channels, lanes) if lay.weights is not None else 0
            for lay in program.layers]


def _steps_needed(program: Program, req: dict) -> int:
    """``max_t``: the longest list of planes or steps (``req = program.requirements()``), and a
    rate Program's step count (its output layer runs ``tau + t_steps`` steps even when no hidden
    layer carries them)."""
    return max(req["max_t"], program.rate_steps)


def _plan(program: Program, lanes: int) -> list[LayerRow]:
    """The engine's layer plan, or ``[]`` for a Program it refuses (``Engine`` raises
    ``EngineUnsupported`` for that; the config sizes everything else)."""
    try:
        return layer_plan(program, lanes)
    except PlanError:
        return []


def _shape_needs(program: Program, plan: list[LayerRow]) -> dict[str, int]:
    """The map, channel and event-list fields of the smallest config for ``program``."""
    maps = [tuple(s) if len(s) == 3 else (s[0], 1, 1)
            for lay in program.layers for s in (lay.in_shape, lay.out_shape)]
    events = max((r.in_kb + r.in_wb + r.in_hb + r.in_tb for r in plan), default=0)
    lists = max((r.in_wb + r.in_hb + r.in_tb for r in plan), default=0)
    return {"max_channels": max(c for c, _, _ in maps), "max_height": max(h for _, h, _ in maps),
            "max_width": max(w for _, _, w in maps), "event_depth": 1 << events,
            "list_depth": 1 << lists}


def _walk_order(layer) -> np.ndarray:
    """``(C_out, fan_in)`` weights with the inputs in the order the engine walks them.

    Dense layers: the flattened input index (the bundle's order). 3x3 convolutions: tap-major,
    ``j = (dy * 3 + dx) * C_in + c``, so that one tap's channels are consecutive rows.
    """
    w = np.asarray(layer.weights, dtype=np.int64)
    if layer.kind == "conv3x3":  # (C_out, C_in, 3, 3) -> (C_out, 3, 3, C_in)
        w = w.transpose(0, 2, 3, 1)
    return w.reshape(w.shape[0], -1)


def _from_walk_order(walked: np.ndarray, layer) -> np.ndarray:
    """Inverse of :func:`_walk_order`."""
    if layer.kind == "conv3x3":
        c_out, c_in = layer.weights.shape[:2]
        return walked.reshape(c_out, 3, 3, c_in).transpose(0, 3, 1, 2).copy()
    return walked.reshape(layer.weights.shape)


def _group_major(weights: np.ndarray, lanes: int) -> np.ndarray:
    """``(C_out, ...)`` weights -> ``(G * fan_in, lanes)`` words, row ``g * fan_in + j``."""
    c_out = weights.shape[0]
    w = weights.reshape(c_out, -1)
    fan_in = w.shape[1]
    groups = _groups(c_out, lanes)
    padded = np.zeros((groups * lanes, fan_in), dtype=np.int64)
    padded[:c_out] = w
    # (G, P, fan_in) -> (G, fan_in, P): row (g, j) holds lanes p = 0..P-1
    return padded.reshape(groups, lanes, fan_in).transpose(0, 2, 1).reshape(-1, lanes)


def pack_weights(program: Program, lanes: int, *,
                 weight_bits: int | None = None) -> tuple[list[int], list[int]]:
    """The P-wide weight memory image of a Program.

    Parameters
    ----------
    program : Program
        A valid Program (bit-serial or rate; the layout is the same).
    lanes : int
        ``P``, the words per row.
    weight_bits : int, optional
        Width ``W`` of one word in the row; the Program's ``weight_bits`` by default. An engine
        with wider weights packs with its own width (the words are sign-extended).

    Returns
    -------
    rows : list of int
        One non-negative integer of ``P * W`` bits per row: lane ``p`` in bits
        ``p W .. p W + W - 1``, two's complement. Row order: the module docstring. Use it as
        ``Memory(shape=unsigned(P * W), depth=..., init=rows)``.
    layer_row_base : list of int
        For each layer, the row of its first group's first input (the running offset for a
        pool).

    Raises
    ------
    TypeError
        ``lanes`` or ``weight_bits`` is not a positive integer.
    ValueError
        A weight does not fit ``weight_bits``.
    """
    _check_program(program)
    _check_lanes(lanes)
    if weight_bits is None:
        weight_bits = program.weight_bits
    if not isinstance(weight_bits, int) or isinstance(weight_bits, bool) or weight_bits < 2:
        raise TypeError(f"weight_bits must be an integer >= 2, not {weight_bits!r}")
    mask = (1 << weight_bits) - 1
    lo, hi = -(1 << (weight_bits - 1)), (1 << (weight_bits - 1)) - 1
    rows: list[int] = []
    bases: list[int] = []
    for lay in program.layers:
        bases.append(len(rows))
        if lay.weights is None:
            continue
        words = _group_major(_walk_order(lay), lanes)
        if words.size and (words.min() < lo or words.max() > hi):
            raise ValueError(f"layer {lay.name}: a weight does not fit {weight_bits} bits")
        for row in words.tolist():
            value = 0
            for p, w in enumerate(row):
                value |= (w & mask) << (p * weight_bits)
            rows.append(value)
    return rows, bases


def unpack_weights(rows, layer_row_base, program: Program, lanes: int, *,
                   weight_bits: int | None = None) -> list[np.ndarray | None]:
    """Inverse of :func:`pack_weights`: each layer's weights in the Program's shape (None: pool).

    The padded lanes of a layer's last group must hold 0; ``ValueError`` otherwise.
    """
    _check_lanes(lanes)
    weight_bits = program.weight_bits if weight_bits is None else weight_bits
    mask, sign = (1 << weight_bits) - 1, 1 << (weight_bits - 1)
    out: list[np.ndarray | None] = []
    for lay, base, n in zip(program.layers, layer_row_base, weight_rows(program, lanes),
                            strict=True):
        if lay.weights is None:
            out.append(None)
            continue
        words = np.array([[(((int(r) >> (p * weight_bits)) & mask) ^ sign) - sign
                           for p in range(lanes)] for r in rows[base:base + n]],
                         dtype=np.int64).reshape(-1, lay.fan_in, lanes)
        full = words.transpose(0, 2, 1).reshape(-1, lay.fan_in)  # (G * P, fan_in)
        c_out = lay.out_channels
        if np.any(full[c_out:]):
            raise ValueError(f"layer {lay.name}: a padded lane holds a nonzero weight")
        out.append(_from_walk_order(full[:c_out], lay))
    return out


def _short(n: int, unit: str) -> str:
    """``"5 bits short"``, ``"1 bit short"`` (``unit`` is a plural ending in s)."""
    return f"{n:,} {unit if n != 1 else unit[:-1]} short"


def _ratio(need: int, have: int, unit: str) -> str:
    """``"2x too small"`` (3 significant digits), or the shortfall when it is under 10 %."""
    if have == 0 or need < 1.1 * have:
        return _short(need - have, unit)
    return f"{need / have:.3g}x too small"


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """Build parameters of the spiking layer engine.

    All fields are keyword-only and validated on construction.

    Parameters
    ----------
    lanes : int
        ``P``, output neurons processed in parallel (one accumulator register each), >= 1.
    weight_bits : int
        Width of a weight word (two's complement), 2..32; a weight-memory row is
        ``lanes * weight_bits`` bits.
    acc_bits : int
        Width of each lane's signed accumulator / membrane register, >= 1.
    bias_bits : int
        Width of the signed bias words, >= 1.
    threshold_bits : int
        Width of the unsigned threshold words (``D`` or ``Theta``), >= 1.
    v_init_bits : int
        Width of the signed initial-potential words: >= 1 when ``"rate"`` is in ``modes``, else
        0 (no ``v_init`` memory).
    max_t : int
        Longest bit-serial stream or rate step count, in time steps, >= 1.
    weight_depth : int
        Rows of the weight memory (``lanes`` words each, module docstring), >= 1.
    act_depth : int
        Neurons per ping-pong activation buffer (the largest layer input or output), >= 1.
    bias_depth, threshold_depth, v_init_depth : int
        Words of the bias (>= 1), threshold (>= 0) and initial-potential memories (>= 0;
        0 without the rate mode).
    layer_depth : int
        Rows of the layer-table ROM (one :class:`~bitspike.sw.plan.LayerRow` each, its fields
        as wide as their bounds on this config), >= 1.
    max_channels : int
        The most channels of any layer's input or output map (a dense layer's vector counts as
        channels), >= 1: sizes channel indices, groups and the logit index.
    max_height, max_width : int
        The largest map height and width, >= 1: size the position counters and the list
        addresses.
    event_depth : int
        Entries of each half of the engine's event-list memory, a power of two; a layer's lists
        take ``2^(kb + wb + hb + tb)`` entries (``bitspike.sw.plan.layer_plan``).
    list_depth : int
        Lists (length words) of each half, a power of two; a layer's lists number
        ``2^(wb + hb + tb)``.
    modes : tuple of str
        The neuron modes the build implements, a non-empty subset of ``("bitserial", "rate")``;
        stored in that order.

    Raises
    ------
    TypeError
        A field of the wrong type (an integer field given a bool, float or string).
    ValueError
        A field out of range, an unknown or repeated mode, or ``v_init_*`` inconsistent with the
        modes.
    """

    lanes: int
    weight_bits: int
    acc_bits: int
    bias_bits: int
    threshold_bits: int
    v_init_bits: int
    max_t: int
    weight_depth: int
    act_depth: int
    bias_depth: int
    threshold_depth: int
    v_init_depth: int
    layer_depth: int
    max_channels: int
    max_height: int
    max_width: int
    event_depth: int
    list_depth: int
    modes: tuple[str, ...] = ("bitserial",)

    _MINIMA = {"lanes": 1, "weight_bits": 2, "acc_bits": 1, "bias_bits": 1, "threshold_bits": 1,
               "v_init_bits": 0, "max_t": 1, "weight_depth": 1, "act_depth": 1, "bias_depth": 1,
               "threshold_depth": 0, "v_init_depth": 0, "layer_depth": 1, "max_channels": 1,
               "max_height": 1, "max_width": 1, "event_depth": 1, "list_depth": 1}

    def __post_init__(self):
        for name, low in self._MINIMA.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an integer, not {value!r}")
            if value < low:
                raise ValueError(f"{name} must be an integer >= {low}, not {value!r}")
        if self.weight_bits > 32:
            raise ValueError(f"weight_bits must be 2..32, not {self.weight_bits!r}")
        for name in ("event_depth", "list_depth"):
            value = getattr(self, name)
            if value & (value - 1):
                raise ValueError(f"{name} must be a power of two, not {value!r}")
        modes = self.modes
        if isinstance(modes, str) or not isinstance(modes, (tuple, list)):
            raise TypeError(f"modes must be a tuple of neuron modes such as ('bitserial',), not "
                            f"{modes!r}")
        unknown = [m for m in modes if m not in NEURON_MODES]
        if unknown:
            raise ValueError(f"unknown neuron mode(s) {unknown!r} in modes; known: "
                             f"{', '.join(NEURON_MODES)}")
        if not modes or len(set(modes)) != len(modes):
            raise ValueError(f"modes must name each supported neuron mode once, not {modes!r}")
        object.__setattr__(self, "modes", tuple(m for m in NEURON_MODES if m in modes))
        if "rate" in self.modes and self.v_init_bits < 1:
            raise ValueError("v_init_bits must be >= 1 when the engine supports the rate mode, "
                             f"not {self.v_init_bits!r}")
        if "rate" not in self.modes and (self.v_init_bits or self.v_init_depth):
            raise ValueError("v_init_bits and v_init_depth must be 0 without the rate mode (only "
                             "rate neurons have initial potentials), not "
                             f"{self.v_init_bits!r} and {self.v_init_depth!r}")

    # ---------------------------------------------------------------------------------------
    # sizing

    @classmethod
    def for_program(cls, program: Program, *, lanes: int) -> EngineConfig:
        """The smallest config that runs ``program`` with ``lanes`` lanes.

        Widths and depths are ``program.requirements()``; ``weight_depth`` is the packed row
        count (module docstring: ``sum of fan_in * ceil(C_out / lanes)``); ``act_depth`` is
        ``max_neurons``; ``modes`` is the Program's mode alone. Depths of memories the Program
        leaves empty are the minimum the constructor allows.
        """
        _check_program(program)
        _check_lanes(lanes)
        req = program.requirements()
        shape = _shape_needs(program, _plan(program, lanes))
        return cls(lanes=lanes, weight_bits=req["weight_bits"], acc_bits=req["acc_bits"],
                   bias_bits=req["bias_bits"], threshold_bits=req["threshold_bits"],
                   v_init_bits=req["v_init_bits"], max_t=_steps_needed(program, req),
                   weight_depth=max(1, sum(weight_rows(program, lanes))),
                   act_depth=req["max_neurons"], bias_depth=max(1, req["bias_words"]),
                   threshold_depth=req["threshold_words"], v_init_depth=req["v_init_words"],
                   layer_depth=req["layers"], **shape, modes=(req["mode"],))

    def misfits(self, program: Program) -> list[str]:
        """Every way ``program`` does not fit, one phrase each (empty if it fits)."""
        _check_program(program)
        req = program.requirements()
        out = []
        if req["mode"] not in self.modes:
            out.append(f"mode: the Program is {req['mode']}, the engine supports "
                       f"{' and '.join(self.modes)} only")
        rows = sum(weight_rows(program, self.lanes))
        if rows > self.weight_depth:
            out.append(f"weights: needs {rows:,} rows of {self.lanes} x {self.weight_bits} bits, "
                       f"the engine has {self.weight_depth:,} "
                       f"({_ratio(rows, self.weight_depth, 'rows')})")
        for name, key, depth, unit in (
                ("activations", "max_neurons", self.act_depth, "neurons per buffer"),
                ("bias", "bias_words", self.bias_depth, "words"),
                ("threshold", "threshold_words", self.threshold_depth, "words"),
                ("v_init", "v_init_words", self.v_init_depth, "words"),
                ("layers", "layers", self.layer_depth, "layers")):
            need = req[key]
            if need > depth:
                short_unit = unit.split()[0]
                out.append(f"{name}: needs {need:,} {unit}, the engine has {depth:,} "
                           f"({_ratio(need, depth, short_unit)})")
        for name in ("weight_bits", "acc_bits", "bias_bits", "threshold_bits") + (
                ("v_init_bits",) if req["mode"] == "rate" else ()):
            need, have = req[name], getattr(self, name)
            if need > have:
                out.append(f"{name}: needs {need}, the engine has {have} "
                           f"({_short(need - have, 'bits')})")
        steps = _steps_needed(program, req)
        if steps > self.max_t:
            out.append(f"max_t: needs {steps} time steps, the engine has {self.max_t} "
                       f"({_short(steps - self.max_t, 'steps')})")
        plan = _plan(program, self.lanes)
        shape = _shape_needs(program, plan)
        for name, what in (("max_channels", "channels"), ("max_height", "rows"),
                           ("max_width", "columns"), ("event_depth", "event-list entries"),
                           ("list_depth", "lists")):
            need, have = shape[name], getattr(self, name)
            if need > have:
                out.append(f"{name}: needs {need:,} {what}, the engine has {have:,} "
                           f"({_ratio(need, have, what.split()[-1])})")
        if not out:  # backstop: every layer-table field must fit the width the config gives it
            limits = self.layer_table_limits()
            out += [f"layer table: layer {row.index} has {key} = {value}, the engine holds "
                    f"at most {limits[key]}" for row in plan
                    for key, value in row.as_dict().items() if value > limits[key]]
        return out

    def check_fits(self, program: Program) -> None:
        """Raise :class:`EngineFitError` unless ``program`` runs on this engine.

        The message names every memory and width that does not fit and by how much, e.g.
        ``weights: needs 2,048 rows of 8 x 8 bits, the engine has 1,024 (2x too small);
        acc_bits: needs 21, the engine has 16 (5 bits short)``, and what to do.

        Raises
        ------
        EngineFitError
            The Program needs more than this engine has.
        bitspike.sw.errors.ProgramError
            The Program itself is inconsistent.
        """
        problems = self.misfits(program)
        if problems:
            raise EngineFitError(
                f"the Program does not fit this engine (P = {self.lanes}): "
                + "; ".join(problems)
                + f". Build the engine with EngineConfig.for_program(program, "
                f"lanes={self.lanes}) or raise the parameters named above (converting with "
                "fewer weight bits, bitspike convert --weight-bits, shrinks the weights and "
                "the accumulators)")

    def pack_weights(self, program: Program) -> tuple[list[int], list[int]]:
        """:func:`pack_weights` at this engine's lanes and weight width, after
        :meth:`check_fits`."""
        self.check_fits(program)
        return pack_weights(program, self.lanes, weight_bits=self.weight_bits)

    # ---------------------------------------------------------------------------------------
    # cost

    def layer_table_limits(self) -> dict[str, int]:
        """The largest value each layer-table field can take on this config,
        :meth:`bitspike.sw.plan.LayerRow.bounds` (every field of the typed row declares its own
        bound); the engine sizes its table ROM from these."""
        return LayerRow.bounds(self)

    def list_field_bits(self) -> dict[str, int]:
        """Widths the engine derives from this config: positions, planes, events, counts."""
        return {"row": max(1, (self.max_height - 1).bit_length()),
                "column": max(1, (self.max_width - 1).bit_length()),
                "plane": max(1, (self.max_t - 1).bit_length()),
                "event": max(1, (max(self.act_depth, self.max_channels) - 1).bit_length()),
                "event_address": max(1, (self.event_depth - 1).bit_length()),
                "list_address": max(1, (self.list_depth - 1).bit_length()),
                "count": self.event_depth.bit_length() + 1}

    @property
    def param_rows(self) -> int:
        """Rows of each parameter memory (bias, threshold, v_init): one row of ``lanes``
        values per group of ``lanes`` output channels of each weighted layer. A Program with at
        most ``bias_depth`` channels in at most ``layer_depth`` weighted layers needs at most
        ``ceil(bias_depth / lanes) + layer_depth - 1`` groups (each layer's rounding up adds at
        most one), and never more than ``bias_depth``."""
        return max(1, min(self.bias_depth,
                          -(-self.bias_depth // self.lanes) + self.layer_depth - 1))

    def memories(self) -> dict[str, MemoryShape]:
        """The engine's memories as it builds them: the one table that :meth:`cost`, the
        board budget (bitspike.boards.budget) and the engine's elaboration read.

        ``weights`` (``weight_depth`` rows of ``lanes`` weights); ``bias``, ``threshold`` and
        ``v_init`` (:attr:`param_rows` rows of ``lanes`` values; ``v_init`` only with the rate
        mode); ``layers``, the layer-table ROM (``layer_depth`` rows of the typed
        :class:`~bitspike.sw.plan.LayerRow`, each field as wide as its bound on this config,
        :meth:`~bitspike.sw.plan.LayerRow.widths`; read combinationally, the only such
        memory); and per ping-pong half (``count = 2``): ``event_lists`` (``2^event_address``
        entries of a channel or flattened index), ``list_lengths`` (``2^list_address``
        lengths) and ``nonempty_bitmaps`` (one row per map row, ``max_t`` planes of
        ``2^column`` bits). ``style="block"`` marks the memories the engine asks yosys to put
        in block RAM whatever their size.
        """
        f, P, rows = self.list_field_bits(), self.lanes, self.param_rows
        return {
            "weights": MemoryShape(P * self.weight_bits, max(1, self.weight_depth)),
            "bias": MemoryShape(P * self.bias_bits, rows, style="block"),
            "threshold": MemoryShape(P * self.threshold_bits, rows, style="block"),
            "v_init": MemoryShape(P * max(1, self.v_init_bits), rows,
                                  1 if "rate" in self.modes else 0, style="block"),
            "layers": MemoryShape(sum(LayerRow.widths(self).values()), self.layer_depth,
                                  read="comb"),
            "event_lists": MemoryShape(f["event"], 1 << f["event_address"], 2),
            "list_lengths": MemoryShape(f["count"], 1 << f["list_address"], 2, style="block"),
            "nonempty_bitmaps": MemoryShape(self.max_t << f["column"], 1 << f["row"], 2)}

    def cost(self) -> dict[str, int]:
        """What each memory costs, in bits (:meth:`memories`: ``count * depth * width``), then
        ``memory_bits`` (their sum), ``accumulators`` (``lanes * acc_bits`` register bits)
        and ``register_bits`` (the registers counted here: the accumulators; the sequencer is
        not counted)."""
        mem = {name: shape.bits for name, shape in self.memories().items()}
        acc = self.lanes * self.acc_bits
        return {**mem, "memory_bits": sum(mem.values()), "accumulators": acc,
                "register_bits": acc}

    # ---------------------------------------------------------------------------------------
    # JSON

    def to_dict(self) -> dict:
        """``{"format": "bitspike-engine-config", "format_version": 1, <fields>}``."""
        d = asdict(self)
        d["modes"] = list(self.modes)
        return {"format": ENGINE_CONFIG_FORMAT, "format_version": ENGINE_CONFIG_VERSION, **d}

    def to_json(self) -> str:
        """:meth:`to_dict` as JSON text (2-space indentation, final newline)."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data, *, where: str = "engine config") -> EngineConfig:
        """Inverse of :meth:`to_dict`; every field is required and no other key is allowed.

        Raises
        ------
        EngineConfigError
            Naming ``where`` and the key: wrong format or version, a missing or unknown key, a
            value of the wrong type or out of range.
        """
        if not isinstance(data, dict):
            raise EngineConfigError(f"{where}: an engine config must be a JSON object, not "
                                    f"{type(data).__name__}")
        if data.get("format") != ENGINE_CONFIG_FORMAT:
            raise EngineConfigError(f"{where}: format {data.get('format')!r} is not "
                                    f"{ENGINE_CONFIG_FORMAT!r}")
        version = data.get("format_version")
        if version != ENGINE_CONFIG_VERSION or isinstance(version, bool):
            raise EngineConfigError(f"{where}: format_version {version!r} is not supported "
                                    f"(this bitspike reads {ENGINE_CONFIG_VERSION})")
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in data]
        unknown = sorted(set(data) - set(names) - {"format", "format_version"})
        if missing or unknown:
            raise EngineConfigError(
                f"{where}: " + "; ".join(
                    ([f"missing key(s) {', '.join(missing)}"] if missing else [])
                    + ([f"unknown key(s) {', '.join(unknown)}"] if unknown else [])))
        modes = data["modes"]
        if not isinstance(modes, list):
            raise EngineConfigError(f"{where}: modes must be a list such as [\"bitserial\"], "
                                    f"not {modes!r}")
        try:
            return cls(**{n: data[n] for n in names if n != "modes"}, modes=tuple(modes))
        except (TypeError, ValueError) as e:
            raise EngineConfigError(f"{where}: {e}") from None

    @classmethod
    def from_json(cls, text: str | bytes, *, where: str = "engine config") -> EngineConfig:
        """Parse :meth:`to_json`'s text (see :meth:`from_dict` for the checks)."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise EngineConfigError(f"{where}: not valid JSON ({e})") from None
        return cls.from_dict(data, where=where)

