"""Operation counts and energy per inference, from the golden model's actual spikes.

The counts follow the engine's schedule (docs/energy.md section 1; docs/engine.md):

* **Layer by layer.** A layer runs to completion (all its time steps) before the next starts; its
  output events go to the other half of a ping-pong activation buffer.
* **Output-stationary.** A group of ``P`` output neurons (``lanes``; for a conv layer ``P``
  consecutive output channels at one output pixel, for a dense layer ``P`` consecutive outputs)
  keeps its ``P`` accumulators / membrane potentials in registers while all time steps of its
  inputs stream past, and fires from those registers. There is **no membrane-potential RAM
  traffic inside a layer**, so none is counted.
* **Event-driven.** The previous layer writes, per time step, the list of its active neurons
  (a 1-bit in bit-serial mode, a spike in rate mode, a nonzero 2x2 count after rate-mode
  pooling). A group walks only the events that feed it; zero inputs cost nothing. Each event
  costs one accumulate per synapse it feeds, i.e. per output neuron whose receptive field
  contains it: for ``conv3x3`` (zero padding 1) that is ``C_out`` times the number of output
  pixels whose 3x3 window holds the input pixel (9 inside, 6 on an edge, 4 in a corner), for
  ``dense`` every output, for ``sumpool2x2`` the one window it lies in.
* **Weights** are read one word per (event, synapse): a group gets its ``P`` words for one event
  in one wide access (input-major layout). A rate-mode pooled count ``c`` (1..4) costs ``c``
  accumulates from the one word.

Counted per layer (rules in docs/energy.md; ``N`` = output neurons of the layer):

==================  ==========================================================================
accumulate          one add into an accumulator per input spike per synapse (count-weighted)
pool_add            the same for a sumpool2x2 layer (implicit weight 1)
shift               bit-serial Horner ``acc << 1``: ``N (T_in - 1)``; rate: only the first
                    layer, whose input current is computed once bit-serially
bias_add            bit-serial: ``N`` (``u0 = acc + B`` once); rate: one per neuron per step
                    (the first layer forms ``current + B`` once, then adds it every step); the
                    output layer adds ``B`` in each of the ``t_steps`` counted steps
compare             bit-serial: ``T_out`` per neuron (successive approximation) plus one clip
                    compare when ``L < 2^T_out - 1`` (not for pooling: the sum cannot exceed
                    4 L); rate: one per neuron per step, plus SRP's sign check at ``tau``;
                    the output layer: ``classes - 1`` for the argmax
subtract            one per emitted 1-bit (bit-serial) or spike (rate): the reset
threshold_shift     bit-serial ``D << (T_out - t)``: ``N T_out`` (pooling too, with D = 1)
weight_read         words: one per (input event, synapse to an active neuron)
event_read          event-list entries read: each group reads each event that feeds it
                    (conv: ``ceil(C_out/P)`` times per output pixel whose window holds it;
                    dense: ``ceil(N/P)`` times; pooling: once)
event_write         entries written: one per emitted 1-bit / spike / nonzero pooled count
param_read          words of ``B``, ``D`` and (rate) ``V0``: one each per output neuron
==================  ==========================================================================

SRP (rate, ``tau > 0``): neurons masked at ``tau`` are gated off for the remaining ``t_steps``
steps (no accumulates, bias adds, compares or subtracts; their output is discarded anyway); event
reads ignore the masks. The output layer walks only the last ``t_steps`` steps, the only ones its
logits sum.

Accumulator-width operations (everything above except the memories) use the table's 32-bit costs
when the Program's ``acc_bits`` (``Program.requirements()``) exceeds 8, else the 8-bit costs.
Memory energy is per bit: ``words x width x sram_{read,write}_bit`` with the weight width, the
event-entry width (the neuron index, plus 3 count bits after rate-mode pooling) and the
parameter widths of the manifest. The source ANN (same architecture) is counted as MACs (conv:
``C_out H W C_in 9``, dense: ``in out``) plus 3 adds per 2x2 pooling output, compute only, at
FP32 (``fp32_mac``, ``fp32_add``) and at INT8 (``mult_8 + add_8`` per MAC, ``add_8`` per add).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import BitspikeError
from .program import Layer, Program, unsigned_bits

ENERGY_TABLE_FORMAT_VERSION = 1
META_KEYS = ("extends", "name", "format_version")
DEFAULT_LANES = 8

COMPUTE_KINDS = ("accumulate", "pool_add", "shift", "bias_add", "compare", "subtract",
                 "threshold_shift")
MEMORY_KINDS = ("weight_read", "event_read", "event_write", "param_read")
KIND_LABELS = {"accumulate": "accumulate", "pool_add": "pool add", "shift": "shift",
               "bias_add": "bias add", "compare": "compare", "subtract": "subtract",
               "threshold_shift": "thr shift", "weight_read": "weight rd",
               "event_read": "event rd", "event_write": "event wr", "param_read": "param rd"}
# compute kind -> operation of the table (width suffix added per Program)
COMPUTE_OPS = {"accumulate": "add", "pool_add": "add", "shift": "shift", "bias_add": "add",
               "compare": "compare", "subtract": "add", "threshold_shift": "shift"}
MEMORY_OPS = {"weight_read": "sram_read_bit", "event_read": "sram_read_bit",
              "event_write": "sram_write_bit", "param_read": "sram_read_bit"}
POOL_COUNT_BITS = unsigned_bits(4)  # a rate-mode 2x2 count 1..4 travels with its index

_PAPER = '"When SNN Meets ANN" Table 6 (45 nm)'
_HOROWITZ = "Horowitz, ISSCC 2014, 45 nm"


# ---------------------------------------------------------------------------------------------
# the energy table


@dataclass(frozen=True)
class OpCost:
    """Energy of one operation in pJ (per bit for the memories) and where the number comes from."""

    pj: float
    source: str

    def to_dict(self) -> dict:
        return {"pj": self.pj, "source": self.source}


@dataclass(frozen=True)
class EnergyTable:
    """Per-operation energy in pJ; every entry carries its source.

    The defaults are docs/conversion-math.md section 5: Horowitz (ISSCC 2014, 45 nm) as quoted in
    Table 6 of the error-free conversion paper ("When SNN Meets ANN"), plus FP32 and SRAM figures
    from Horowitz 2014.
    :meth:`load` reads a user TOML or JSON file (docs/energy.md).
    """

    add_32: OpCost = OpCost(0.1, f"{_HOROWITZ}: 32-bit integer add ({_PAPER})")
    add_8: OpCost = OpCost(0.03, f"{_HOROWITZ}: 8-bit integer add ({_PAPER})")
    mult_32: OpCost = OpCost(3.1, f"{_HOROWITZ}: 32-bit integer multiply ({_PAPER})")
    mult_8: OpCost = OpCost(0.2, f"{_HOROWITZ}: 8-bit integer multiply ({_PAPER})")
    shift_32: OpCost = OpCost(0.13, f"{_PAPER}: 32-bit left shift (the authors' in-house figure)")
    shift_8: OpCost = OpCost(0.024, f"{_PAPER}: 8-bit left shift (the authors' in-house figure)")
    compare_32: OpCost = OpCost(0.08, f"{_PAPER}: 32-bit comparator")
    compare_8: OpCost = OpCost(0.03, f"{_PAPER}: 8-bit comparator")
    fp32_mac: OpCost = OpCost(4.6, f"{_HOROWITZ}: FP32 multiply 3.7 + FP32 add 0.9 (the usual "
                                   "ANN baseline of SNN papers)")
    fp32_add: OpCost = OpCost(0.9, f"{_HOROWITZ}: FP32 add")
    sram_read_bit: OpCost = OpCost(10 / 64, f"{_HOROWITZ}: 64-bit read of an 8 KB SRAM, 10 pJ, "
                                            "per bit")
    sram_write_bit: OpCost = OpCost(10 / 64, "assumed equal to the SRAM read (Horowitz 2014 "
                                             "quotes reads only)")
    name: str = 'default (Horowitz ISSCC 2014, 45 nm; "When SNN Meets ANN" Table 6)'

    @classmethod
    def operations(cls) -> tuple[str, ...]:
        """The operation keys, in table order."""
        return tuple(f.name for f in fields(cls) if f.name != "name")

    def cost(self, op: str) -> float:
        """pJ of operation ``op``."""
        return getattr(self, op).pj

    def to_dict(self) -> dict:
        """``{"format_version": 1, "name": ..., op: {"pj": ..., "source": ...}, ...}``.

        The same form :meth:`load` reads: saved as JSON it is a complete table.
        """
        return {"format_version": ENERGY_TABLE_FORMAT_VERSION, "name": self.name,
                **{op: getattr(self, op).to_dict() for op in self.operations()}}

    def sources(self, ops=None) -> list[str]:
        """One line per operation: key, pJ and source."""
        ops = self.operations() if ops is None else ops
        return [f"{op} = {getattr(self, op).pj:g} pJ: {getattr(self, op).source}" for op in ops]

    @classmethod
    def from_mapping(cls, data, where: str) -> EnergyTable:
        """A table from a parsed TOML/JSON mapping (see :meth:`load` for the rules)."""
        if not isinstance(data, dict):
            raise BitspikeError(f"{where}: an energy table must be a table/object of operations, "
                                f"not {type(data).__name__}")
        ops = cls.operations()
        extends = data.get("extends")
        if extends is not None and extends != "default":
            raise BitspikeError(f"{where}: extends = {extends!r}: the only table to extend is "
                                "\"default\"")
        version = data.get("format_version", ENERGY_TABLE_FORMAT_VERSION)
        if version != ENERGY_TABLE_FORMAT_VERSION or isinstance(version, bool):
            raise BitspikeError(f"{where}: format_version {version!r} is not supported (this "
                                f"bitspike reads {ENERGY_TABLE_FORMAT_VERSION})")
        name = data.get("name", f"{'default + ' if extends else ''}{where}")
        if not isinstance(name, str):
            raise BitspikeError(f"{where}: name must be a string, not {name!r}")
        costs: dict[str, OpCost] = {}
        for key, value in data.items():
            if key in META_KEYS:
                continue
            if key not in ops:
                raise BitspikeError(f"{where}: unknown operation {key!r}; known operations are "
                                    f"{', '.join(ops)} (and the keys {', '.join(META_KEYS)})")
            source = f"user table {where}"
            if isinstance(value, dict):
                unknown = sorted(set(value) - {"pj", "source"})
                if unknown or "pj" not in value:
                    raise BitspikeError(f"{where}: {key} must be a number or a table with pj "
                                        f"(and optionally source), got keys {sorted(value)}")
                source = value.get("source", source)
                if not isinstance(source, str):
                    raise BitspikeError(f"{where}: {key}.source must be a string")
                value = value["pj"]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise BitspikeError(f"{where}: {key} = {value!r} is not a number: give the "
                                    "energy in pJ, e.g. 0.1")
            if not math.isfinite(value) or value < 0:
                raise BitspikeError(f"{where}: {key} = {value!r}: an energy must be a finite "
                                    "number of pJ >= 0")
            costs[key] = OpCost(float(value), source)
        if extends is None:
            missing = [op for op in ops if op not in costs]
            if missing:
                raise BitspikeError(f"{where}: the table does not define {', '.join(missing)}; "
                                    "define every operation, or add extends = \"default\" to "
                                    "take the others from the default table")
        return cls(**costs, name=name)

    @classmethod
    def load(cls, path) -> EnergyTable:
        """Read a TOML (``.toml``) or JSON (``.json``) energy table.

        Rules: keys are operation names (:meth:`operations`) with a number of pJ or a table
        ``{pj = ..., source = "..."}``; the file must define every operation unless it sets
        ``extends = "default"``, in which case the others keep their default values. ``name``
        (optional) labels the table in reports; ``format_version`` (optional) must be 1.

        Raises
        ------
        BitspikeError
            Naming the file and the key: a missing file, a malformed file, an unknown or missing
            operation, a cost that is not a number or is negative.
        """
        path = Path(path)
        where = str(path)
        suffix = path.suffix.lower()
        if suffix not in (".toml", ".json"):
            raise BitspikeError(f"{where}: an energy table must be a .toml or .json file")
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise BitspikeError(f"{where}: energy table not found") from None
        except OSError as e:
            raise BitspikeError(f"{where}: cannot read the energy table ({e.strerror})") from None
        try:
            if suffix == ".toml":
                try:
                    import tomllib
                except ModuleNotFoundError:  # Python 3.10
                    raise BitspikeError(f"{where}: TOML tables need Python 3.11 or later; "
                                        "write the table as JSON") from None
                data = tomllib.loads(raw.decode("utf-8"))
            else:
                data = json.loads(raw.decode("utf-8"))
        except BitspikeError:
            raise
        except (ValueError, UnicodeDecodeError) as e:
            kind = "TOML" if suffix == ".toml" else "JSON"
            raise BitspikeError(f"{where}: malformed {kind} ({e}); fix the file (docs/energy.md "
                                "has an example)") from None
        return cls.from_mapping(data, where)


# ---------------------------------------------------------------------------------------------
# operation counts


@dataclass
class LayerOps:
    """Counts of one layer per inference (averaged over the images counted)."""

    name: str
    kind: str
    neurons: int
    ops: dict[str, float]
    memory_words: dict[str, float]
    memory_bits: dict[str, float]
    weight_accesses: float  # wide reads of P words
    input_events: float  # spikes/1-bits into the layer (count-weighted)
    output_events: float  # entries it writes
    ann_macs: int
    ann_adds: int

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "neurons": self.neurons,
                "ops": dict(self.ops), "memory_words": dict(self.memory_words),
                "memory_bits": dict(self.memory_bits), "weight_accesses": self.weight_accesses,
                "input_events": self.input_events, "output_events": self.output_events,
                "ann_macs": self.ann_macs, "ann_adds": self.ann_adds}


def _sum_rows(rows: list[LayerOps], name: str = "total") -> LayerOps:
    def total(get):
        keys = get(rows[0]).keys()
        return {k: sum(get(r)[k] for r in rows) for k in keys}

    return LayerOps(name, "", sum(r.neurons for r in rows), total(lambda r: r.ops),
                    total(lambda r: r.memory_words), total(lambda r: r.memory_bits),
                    sum(r.weight_accesses for r in rows), sum(r.input_events for r in rows),
                    sum(r.output_events for r in rows), sum(r.ann_macs for r in rows),
                    sum(r.ann_adds for r in rows))


@dataclass
class OpReport:
    """Per-layer operation counts per inference, and what they were counted on."""

    mode: str
    method: str
    latency: int
    images: int
    lanes: int
    acc_bits: int
    weight_bits: int
    layers: list[LayerOps]
    source: str = ""

    @property
    def op_width(self) -> int:
        """Width of the accumulator-width costs: 32 when ``acc_bits > 8``, else 8."""
        return 32 if self.acc_bits > 8 else 8

    @property
    def totals(self) -> LayerOps:
        return _sum_rows(self.layers)

    def to_dict(self) -> dict:
        return {"mode": self.mode, "method": self.method, "latency": self.latency,
                "images": self.images, "lanes": self.lanes, "acc_bits": self.acc_bits,
                "weight_bits": self.weight_bits, "op_width": self.op_width,
                "source": self.source, "layers": [r.to_dict() for r in self.layers],
                "totals": self.totals.to_dict()}


def _f64(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float64)


def _receptive(layer: Layer, x: torch.Tensor) -> torch.Tensor:
    """Per step, how many input events (weighted by ``x``) reach one output neuron.

    ``x``: ``(N, T, *in_shape)`` integer multiplicities. Returns a float64 tensor broadcastable to
    ``(N, T, *out_shape)``: conv3x3 ``(N, T, 1, H, W)`` (the same for every output channel),
    dense ``(N, T, 1)``, sumpool2x2 ``(N, T, C, H/2, W/2)``. Reductions run in int64 (exact).
    """
    n, t = x.shape[:2]
    if layer.kind == "conv3x3":
        _, h, w = layer.in_shape
        per_pixel = _f64(x.sum(dim=2, dtype=torch.int64)).reshape(n * t, 1, h, w)
        window = F.conv2d(per_pixel, torch.ones(1, 1, 3, 3, dtype=torch.float64), padding=1)
        return window.reshape(n, t, 1, h, w)
    if layer.kind == "dense":
        return _f64(x.reshape(n, t, -1).sum(dim=2, keepdim=True, dtype=torch.int64))
    c, h, w = layer.in_shape
    return _f64(x.reshape(n, t, c, h // 2, 2, w // 2, 2).sum(dim=(4, 6), dtype=torch.int64))


def _neuron_steps(per_step: torch.Tensor, out_shape, *, keep=None, tau: int = 0,
                  start: int = 0) -> float:
    """``sum over steps t >= start, active neurons o of per_step[n, t, o]`` over the batch.

    ``per_step`` broadcasts against ``(N, T, *out_shape)``; with an SRP ``keep`` mask
    ``(N, *out_shape)`` only kept neurons are active from step ``tau`` on.
    """
    n = per_step.shape[0]
    full = (n, *out_shape)
    if keep is None:
        return float(per_step[:, start:].sum(dim=1).expand(full).sum())
    total = 0.0
    if tau > start:
        total += float(per_step[:, start:tau].sum(dim=1).expand(full).sum())
    total += float((per_step[:, max(tau, start):].sum(dim=1) * _f64(keep)).sum())
    return total


def _groups(layer: Layer, lanes: int) -> int:
    return -(-layer.out_shape[0] // lanes)


def _ann_counts(layer: Layer) -> tuple[int, int]:
    """The source ANN's MACs and pooling adds for this layer."""
    if layer.kind == "conv3x3":
        c_out, h, w = layer.out_shape
        return c_out * h * w * layer.in_shape[0] * 9, 0
    if layer.kind == "dense":
        return int(np.prod(layer.in_shape)) * layer.out_shape[0], 0
    return 0, 3 * int(np.prod(layer.out_shape))


def _layer_sums(program: Program, result, index: int, lanes: int, req: dict) -> dict:
    """Counts of layer ``index`` summed over the batch (not yet averaged)."""
    layer = program.layers[index]
    rate = program.mode == "rate"
    tau, S = program.tau, program.rate_steps
    last = index == len(program.layers) - 1
    first = index == 0
    n_out = int(np.prod(layer.out_shape))
    n_img = int(result.levels[index].shape[0])
    pool = layer.kind == "sumpool2x2"

    x = result.input_spikes if first else result.spikes[index - 1]
    in_pooled = rate and not first and program.layers[index - 1].kind == "sumpool2x2"
    keep = None
    if rate and tau and layer.fires and not pool and index < len(result.srp_masks):
        keep = result.srp_masks[index]
    # steps this layer walks: the rate output layer only the last t_steps (its logits)
    start = tau if (rate and last and not first) else 0
    # the rate first layer computes its current once over the input bit planes: no masks
    mask = None if (rate and first) else keep

    # bits and spikes are 0/1: the events are the multiplicities; only a rate-mode 2x2 count
    # (1..4) is one event worth several spikes
    nz = (x > 0) if in_pooled else x
    recv_cnt = _receptive(layer, x)
    recv_nz = _receptive(layer, nz) if in_pooled else recv_cnt
    syn = _neuron_steps(recv_cnt, layer.out_shape, keep=mask, tau=tau, start=start)
    words = 0.0 if pool else _neuron_steps(recv_nz, layer.out_shape, keep=mask, tau=tau,
                                           start=start)
    if layer.kind == "conv3x3":
        event_reads = _groups(layer, lanes) * float(recv_nz[:, start:].sum())
    elif layer.kind == "dense":
        event_reads = _groups(layer, lanes) * float(nz[:, start:].sum(dtype=torch.int64))
    else:
        event_reads = float(nz[:, start:].sum(dtype=torch.int64))
    accesses = 0.0 if pool else event_reads

    ops = dict.fromkeys(COMPUTE_KINDS, 0.0)
    ops["pool_add" if pool else "accumulate"] = syn
    t_in = layer.t_in if not rate else (program.input.t if first else 0)
    ops["shift"] = float(n_img * n_out * max(t_in - 1, 0))

    spikes = result.spikes[index]
    out_events = 0.0
    if layer.fires:
        if rate and pool:
            out_events = float((spikes > 0).sum(dtype=torch.int64))
        else:
            out_events = float(spikes.sum(dtype=torch.int64))
            ops["subtract"] = out_events
    if not rate:
        if not pool:
            ops["bias_add"] = float(n_img * n_out)
        if layer.fires:
            clip = 0 if pool or layer.levels >= 2**layer.t_out - 1 else 1
            ops["compare"] = float(n_img * n_out * (layer.t_out + clip))
            ops["threshold_shift"] = float(n_img * n_out * layer.t_out)
    elif not pool:
        ones = torch.ones((n_img, S) + (1,) * len(layer.out_shape), dtype=torch.float64)
        if layer.fires:
            active = _neuron_steps(ones, layer.out_shape, keep=keep, tau=tau)
            ops["bias_add"] = active + (n_img * n_out if first else 0)
            ops["compare"] = active + (n_img * n_out if tau else 0)
        else:
            ops["bias_add"] = float(n_img * n_out * (program.t_steps + (1 if first else 0)))
    if last:
        ops["compare"] += float(n_img * (layer.out_shape[0] - 1))  # the argmax

    params = 0.0
    param_bits = 0.0
    if not pool:
        params += n_img * n_out
        param_bits += n_img * n_out * req["bias_bits"]
        if layer.fires:
            params += n_img * n_out
            param_bits += n_img * n_out * req["threshold_bits"]
            if rate:
                params += n_img * n_out
                param_bits += n_img * n_out * req["v_init_bits"]
    in_bits = unsigned_bits(int(np.prod(layer.in_shape)) - 1) + (POOL_COUNT_BITS if in_pooled
                                                                else 0)
    out_bits = unsigned_bits(n_out - 1) + (POOL_COUNT_BITS if rate and pool else 0)
    memory_words = {"weight_read": words, "event_read": event_reads, "event_write": out_events,
                    "param_read": float(params)}
    memory_bits = {"weight_read": words * program.weight_bits,
                   "event_read": event_reads * in_bits, "event_write": out_events * out_bits,
                   "param_read": float(param_bits)}
    macs, adds = _ann_counts(layer)
    return {"images": n_img, "ops": ops, "memory_words": memory_words,
            "memory_bits": memory_bits, "weight_accesses": accesses,
            "input_events": float(x[:, start:].sum(dtype=torch.int64)), "output_events": out_events,
            "ann_macs": macs, "ann_adds": adds}


class _Accumulator:
    """Sums of the per-layer counts over batches; :meth:`report` averages per image."""

    def __init__(self, program: Program, lanes: int):
        if not isinstance(lanes, int) or isinstance(lanes, bool) or lanes < 1:
            raise BitspikeError(f"lanes must be a positive integer, not {lanes!r}")
        self.program, self.lanes = program, lanes
        self.req = program.requirements()
        self.images = 0
        self.sums: list[dict] | None = None

    def add(self, result) -> None:
        if len(result.levels) != len(self.program.layers):
            raise BitspikeError(f"the golden result has {len(result.levels)} layers but the "
                                f"Program {len(self.program.layers)}: count the result of "
                                "run_program on this Program")
        rows = [_layer_sums(self.program, result, i, self.lanes, self.req)
                for i in range(len(self.program.layers))]
        self.images += rows[0]["images"]
        if self.sums is None:
            self.sums = rows
            return
        for acc, row in zip(self.sums, rows, strict=True):
            for key in ("ops", "memory_words", "memory_bits"):
                for k, v in row[key].items():
                    acc[key][k] += v
            for key in ("weight_accesses", "input_events", "output_events"):
                acc[key] += row[key]

    def report(self, source: str = "") -> OpReport:
        if not self.images:
            raise BitspikeError("no images were counted: give at least one input")
        n = self.images
        layers = []
        for lay, s in zip(self.program.layers, self.sums, strict=True):
            layers.append(LayerOps(
                lay.name, lay.kind, int(np.prod(lay.out_shape)),
                {k: v / n for k, v in s["ops"].items()},
                {k: v / n for k, v in s["memory_words"].items()},
                {k: v / n for k, v in s["memory_bits"].items()},
                s["weight_accesses"] / n, s["input_events"] / n, s["output_events"] / n,
                s["ann_macs"], s["ann_adds"]))
        p = self.program
        return OpReport(p.mode, p.method, p.latency, n, self.lanes, self.req["acc_bits"],
                        p.weight_bits, layers, source)


@torch.no_grad()
def count_ops(program: Program, result, *, lanes: int = DEFAULT_LANES,
              source: str = "") -> OpReport:
    """Operation counts per inference from a golden-model result.

    ``result`` is :func:`bitspike.sw.golden.run_program` on ``program`` for a batch of images
    (counts are averaged over them). ``lanes`` is the engine's ``P``: it only changes the event
    reads and the number of wide weight accesses. The rules are in the module docstring.
    """
    acc = _Accumulator(program, lanes)
    acc.add(result)
    return acc.report(source)


@torch.no_grad()
def count_inputs(program: Program, inputs: torch.Tensor, *, lanes: int = DEFAULT_LANES,
                 batch_size: int = 256, source: str = "") -> OpReport:
    """Run the golden model on ``inputs`` in batches and count (memory-bounded)."""
    from .golden import run_program

    acc = _Accumulator(program, lanes)
    for i in range(0, len(inputs), batch_size):
        acc.add(run_program(program, inputs[i:i + batch_size]))
    return acc.report(source)


# ---------------------------------------------------------------------------------------------
# energy


@dataclass
class LayerEnergy:
    """Energy of one layer per inference, pJ."""

    name: str
    kind: str
    pj: dict[str, float]  # per kind (COMPUTE_KINDS + MEMORY_KINDS)
    ann_fp32_pj: float
    ann_int8_pj: float

    @property
    def compute_pj(self) -> float:
        return sum(self.pj[k] for k in COMPUTE_KINDS)

    @property
    def memory_pj(self) -> float:
        return sum(self.pj[k] for k in MEMORY_KINDS)

    @property
    def total_pj(self) -> float:
        return self.compute_pj + self.memory_pj

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "pj": dict(self.pj),
                "compute_pj": self.compute_pj, "memory_pj": self.memory_pj,
                "total_pj": self.total_pj, "ann_fp32_pj": self.ann_fp32_pj,
                "ann_int8_pj": self.ann_int8_pj}


@dataclass
class EnergyReport:
    """Energy per inference: per layer and kind, totals, the ANN baseline, the table used."""

    ops: OpReport
    table: EnergyTable
    layers: list[LayerEnergy]
    costs: dict[str, str] = field(default_factory=dict)  # kind -> table operation

    @property
    def totals(self) -> LayerEnergy:
        kinds = COMPUTE_KINDS + MEMORY_KINDS
        return LayerEnergy("total", "", {k: sum(r.pj[k] for r in self.layers) for k in kinds},
                           sum(r.ann_fp32_pj for r in self.layers),
                           sum(r.ann_int8_pj for r in self.layers))

    def comparison(self) -> dict:
        t = self.totals

        def ratio(a, b):
            return a / b if b else None

        return {"snn_compute_pj": t.compute_pj, "snn_memory_pj": t.memory_pj,
                "snn_total_pj": t.total_pj, "ann_fp32_pj": t.ann_fp32_pj,
                "ann_int8_pj": t.ann_int8_pj,
                "ann_fp32_over_snn_compute": ratio(t.ann_fp32_pj, t.compute_pj),
                "ann_int8_over_snn_compute": ratio(t.ann_int8_pj, t.compute_pj)}

    def used_operations(self) -> list[str]:
        ops = list(dict.fromkeys(self.costs.values()))
        return ops + [op for op in ("fp32_mac", "fp32_add", "mult_8", "add_8") if op not in ops]

    def to_dict(self) -> dict:
        return {"counts": self.ops.to_dict(), "layers": [r.to_dict() for r in self.layers],
                "totals": self.totals.to_dict(), "comparison": self.comparison(),
                "costs": dict(self.costs), "table": self.table.to_dict()}


def energy(report: OpReport, table: EnergyTable | None = None) -> EnergyReport:
    """Energy per inference from counts: ``count x cost`` per layer and kind.

    Compute kinds use the table's ``add``/``shift``/``compare`` at ``report.op_width`` (32 when
    ``acc_bits > 8``); memories ``bits x sram_read_bit`` / ``sram_write_bit``. The ANN baseline:
    FP32 ``macs x fp32_mac + adds x fp32_add``, INT8 ``macs x (mult_8 + add_8) + adds x add_8``.
    """
    table = EnergyTable() if table is None else table
    w = report.op_width
    costs = {k: f"{op}_{w}" for k, op in COMPUTE_OPS.items()}
    costs.update(MEMORY_OPS)
    int8_mac = table.cost("mult_8") + table.cost("add_8")
    layers = []
    for r in report.layers:
        pj = {k: r.ops[k] * table.cost(costs[k]) for k in COMPUTE_KINDS}
        pj.update({k: r.memory_bits[k] * table.cost(costs[k]) for k in MEMORY_KINDS})
        layers.append(LayerEnergy(
            r.name, r.kind, pj,
            r.ann_macs * table.cost("fp32_mac") + r.ann_adds * table.cost("fp32_add"),
            r.ann_macs * int8_mac + r.ann_adds * table.cost("add_8")))
    return EnergyReport(report, table, layers, costs)


# ---------------------------------------------------------------------------------------------
# text and plot


def _num(v: float) -> str:
    if v == 0:
        return "0"
    if float(v).is_integer() or abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:,.1f}"


def _pj(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}"


def _align(rows: list[list[str]], left: int = 2) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        cells = [c.ljust(widths[i]) if i < left else c.rjust(widths[i]) for i, c in enumerate(r)]
        out.append("  ".join(cells).rstrip())
    return out


def _describe(ops: OpReport) -> str:
    what = ("bit-serial" if ops.mode == "bitserial" else f"rate-coded IF, method {ops.method}")
    return (f"{what}, latency {ops.latency} steps per layer; {ops.images} image"
            f"{'s' if ops.images != 1 else ''}; P = {ops.lanes} lanes; {ops.acc_bits}-bit "
            f"accumulators -> {ops.op_width}-bit op costs; {ops.weight_bits}-bit weights")


def format_table(report: EnergyReport | OpReport) -> str:
    """Aligned per-layer counts and (for an :class:`EnergyReport`) energy, totals and sources."""
    ops = report.ops if isinstance(report, EnergyReport) else report
    head = f"energy per inference{f': {ops.source}' if ops.source else ''}"
    lines = [head, f"  {_describe(ops)}", "",
             "operations per inference (averaged over the images; memory in words)"]
    kinds = [k for k in COMPUTE_KINDS if any(r.ops[k] for r in ops.layers)] or ["accumulate"]
    mems = ["weight_read", "event_read", "event_write"]
    rows = [["layer", "kind", *(KIND_LABELS[k] for k in kinds), *(KIND_LABELS[k] for k in mems),
             "ANN MAC+add"]]
    for r in [*ops.layers, ops.totals]:
        rows.append([r.name, r.kind, *(_num(r.ops[k]) for k in kinds),
                     *(_num(r.memory_words[k]) for k in mems), _num(r.ann_macs + r.ann_adds)])
    table_lines = _align(rows)
    table_lines.insert(len(table_lines) - 1, "-" * len(table_lines[0]))
    lines += ["  " + s for s in table_lines]
    if not isinstance(report, EnergyReport):
        return "\n".join(lines)

    lines += ["", "energy per inference, pJ"]
    ekinds = [k for k in COMPUTE_KINDS if any(r.pj[k] for r in report.layers)] or ["accumulate"]
    rows = [["layer", "kind", *(KIND_LABELS[k] for k in ekinds), "compute", "memory", "total",
             "ANN FP32", "ANN INT8"]]
    for r in [*report.layers, report.totals]:
        rows.append([r.name, r.kind, *(_pj(r.pj[k]) for k in ekinds), _pj(r.compute_pj),
                     _pj(r.memory_pj), _pj(r.total_pj), _pj(r.ann_fp32_pj), _pj(r.ann_int8_pj)])
    table_lines = _align(rows)
    table_lines.insert(len(table_lines) - 1, "-" * len(table_lines[0]))
    lines += ["  " + s for s in table_lines]
    c = report.comparison()
    t = report.totals
    lines += [
        "",
        f"  SNN: compute {_pj(c['snn_compute_pj'])} pJ + memory {_pj(c['snn_memory_pj'])} pJ "
        f"(weights {_pj(t.pj['weight_read'])}, events "
        f"{_pj(t.pj['event_read'] + t.pj['event_write'])}, parameters "
        f"{_pj(t.pj['param_read'])}) = {_pj(c['snn_total_pj'])} pJ per inference",
        f"  ANN, same architecture, compute only (as the SNN papers count it): FP32 "
        f"{_pj(c['ann_fp32_pj'])}"
        f" pJ = {_ratio(c['ann_fp32_over_snn_compute'])} the SNN's compute; INT8 "
        f"{_pj(c['ann_int8_pj'])} pJ = {_ratio(c['ann_int8_over_snn_compute'])}",
        "  (the ANN's own weight and activation traffic is not modelled: compare compute with "
        "compute)",
        "",
        f"costs ({report.table.name}; {ops.op_width}-bit ops: accumulate, pool add, bias add and "
        f"subtract = add_{ops.op_width}, shifts = shift_{ops.op_width}, compare = "
        f"compare_{ops.op_width}; memories per bit):",
    ]
    lines += [f"  {s}" for s in report.table.sources(report.used_operations())]
    return "\n".join(lines)


def _ratio(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.2f}x"


def plot_energy(report: EnergyReport, path) -> Path:
    """Stacked bars of energy per layer by kind (nJ), with the ANN baseline marked.

    Left: per layer, compute kinds solid and memory kinds hatched, the source ANN's compute at
    FP32 and INT8 as markers. Right: totals (SNN compute, SNN compute + memory, ANN INT8 and
    FP32 compute). Saves a PNG (or any format matplotlib knows from the suffix) at ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    nj = 1e-3
    all_kinds = COMPUTE_KINDS + MEMORY_KINDS
    kinds = [k for k in all_kinds if any(r.pj[k] for r in report.layers)]
    cmap = plt.get_cmap("tab20")
    colors = {k: cmap(i) for i, k in enumerate(all_kinds)}
    hatch = {k: ("//" if k in MEMORY_KINDS else None) for k in all_kinds}
    names = [r.name for r in report.layers]
    x = np.arange(len(names))
    fig, (ax, ax_tot) = plt.subplots(1, 2, figsize=(max(9.0, 1.2 * len(names) + 6), 6.0),
                                     gridspec_kw={"width_ratios": [max(len(names), 3), 3]})
    bottom = np.zeros(len(names))
    for k in kinds:
        vals = np.array([r.pj[k] for r in report.layers]) * nj
        ax.bar(x, vals, 0.6, bottom=bottom, color=colors[k], hatch=hatch[k], edgecolor="white",
               linewidth=0.3, label=KIND_LABELS[k] + (" (memory)" if k in MEMORY_KINDS else ""))
        bottom += vals
    ax.scatter(x, [r.ann_fp32_pj * nj for r in report.layers], marker="_", s=900,
               linewidths=2.5, color="black", zorder=3, label="ANN FP32 MAC (compute)")
    ax.scatter(x, [r.ann_int8_pj * nj for r in report.layers], marker="_", s=900,
               linewidths=2.5, color="dimgray", zorder=3, label="ANN INT8 MAC (compute)")
    ax.set_xticks(x, names)
    ax.set_ylabel("energy per inference (nJ)")
    ax.set_xlabel("layer")
    ax.set_title("SNN per layer, by operation")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.12))

    t = report.totals
    compute = [k for k in kinds if k in COMPUTE_KINDS]
    for col, ks in ((0, compute), (1, kinds)):
        base = 0.0
        for k in ks:
            ax_tot.bar(col, t.pj[k] * nj, 0.6, bottom=base, color=colors[k], hatch=hatch[k],
                       edgecolor="white", linewidth=0.3)
            base += t.pj[k] * nj
    ax_tot.bar(2, t.ann_int8_pj * nj, 0.6, color="dimgray")
    ax_tot.bar(3, t.ann_fp32_pj * nj, 0.6, color="black")
    for i, v in enumerate([t.compute_pj, t.total_pj, t.ann_int8_pj, t.ann_fp32_pj]):
        ax_tot.annotate(f"{v * nj:,.1f}", (i, v * nj), ha="center", va="bottom", fontsize=8)
    ax_tot.set_xticks([0, 1, 2, 3], ["SNN\ncompute", "SNN\n+ memory", "ANN INT8\ncompute",
                                     "ANN FP32\ncompute"], fontsize=8)
    ax_tot.set_ylabel("energy per inference (nJ)")
    ax_tot.set_title("total")
    ax_tot.grid(axis="y", alpha=0.3)
    ops = report.ops
    fig.suptitle(f"{ops.source or 'Program'}: {ops.mode}"
                 f"{'' if ops.mode == 'bitserial' else f' ({ops.method})'}, latency "
                 f"{ops.latency}, {ops.images} images, {ops.op_width}-bit op costs; table: "
                 f"{report.table.name}", fontsize=9)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except (OSError, ValueError) as e:
        raise BitspikeError(f"{path}: cannot write the plot ({e}); give a writable .png "
                            "path") from None
    finally:
        plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# command line


def add_energy_command(subparsers) -> argparse.ArgumentParser:
    """Register ``bitspike energy`` on the CLI's subparsers (called from ``build_parser``)."""
    sp = subparsers.add_parser(
        "energy", help="operation counts and energy per inference of a Program bundle",
        description="Run the golden model on the test split recorded in the Program's metadata, "
                    "count the engine's operations and memory accesses from the actual spikes "
                    "(docs/energy.md), and convert them to pJ per inference with an energy "
                    "table (default: Horowitz ISSCC 2014, 45 nm), next to the source ANN's MACs.")
    sp.add_argument("bundle", metavar="PROG_DIR", help="Program bundle folder (bitspike convert)")
    sp.add_argument("--images", type=int, default=None, metavar="N",
                    help="count the first N test images (default: the whole test split)")
    sp.add_argument("--table", default=None, metavar="FILE",
                    help="energy table, .toml or .json (docs/energy.md; default: the built-in "
                         "Horowitz 45 nm table)")
    sp.add_argument("--lanes", type=int, default=DEFAULT_LANES, metavar="P",
                    help=f"the engine's parallel output lanes P; changes only the event reads "
                         f"and wide weight accesses (default: {DEFAULT_LANES})")
    sp.add_argument("--plot", default=None, metavar="PNG",
                    help="also write a stacked bar chart of energy per layer to this file")
    sp.add_argument("--json", action="store_true",
                    help="print one JSON object on stdout instead of text")
    sp.set_defaults(func=cmd_energy)
    return sp


def run_energy(bundle, *, images: int | None = None, table=None, lanes: int = DEFAULT_LANES
               ) -> EnergyReport:
    """Count and price a bundle on its test split (what ``bitspike energy`` prints)."""
    from .evaluate import dataset_for
    from .images import read_bundle

    if images is not None and images < 1:
        raise BitspikeError(f"--images must be at least 1, not {images}")
    if not isinstance(lanes, int) or lanes < 1:
        raise BitspikeError(f"--lanes must be at least 1, not {lanes}")
    energy_table = EnergyTable.load(table) if table is not None else EnergyTable()
    program = read_bundle(bundle)
    data = dataset_for(program.meta)
    x = data.x_test if images is None else data.x_test[:images]
    counts = count_inputs(program, x, lanes=lanes, source=str(bundle))
    return energy(counts, energy_table)


def cmd_energy(args) -> int:
    report = run_energy(args.bundle, images=args.images, table=args.table, lanes=args.lanes)
    plot = str(plot_energy(report, args.plot)) if args.plot else None
    if args.json:
        print(json.dumps({"bundle": str(args.bundle), "plot": plot, **report.to_dict()}))
    else:
        text = format_table(report)
        if plot:
            text += f"\n\nplot: {plot}"
        print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m bitspike.sw.energy PROG_DIR ...`` until the CLI registers the command."""
    parser = argparse.ArgumentParser(prog="bitspike")
    add_energy_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["energy", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except BitspikeError as e:
        print(f"bitspike energy: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
