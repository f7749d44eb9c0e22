"""The engine's schedule: its layer plan and its cycle count per layer, predicted exactly.

:func:`bitspike.sw.plan.layer_plan` is the engine's view of a Program (the typed rows of its
layer-table ROM), used by :class:`bitspike.hw.engine.Engine` and by the cycle model here, so the
two cannot drift apart; it is re-exported here with ``TAPS`` and ``PlanError``.
:func:`engine_cycles` counts the engine's schedule (docs/engine.md) from the golden model's
actual events for ``P`` lanes; the engine's own cycle counter must equal it for every Program,
input and configuration it runs (tests/test_hw_engine.py).

The schedule in one paragraph. The engine runs the *executed* layers: every conv3x3 and dense
layer; a 2x2 sum-pooling layer is fused into the firing conv3x3 layer before it (the conv walks
its outputs window by window and its firing stage adds the four levels, or, in rate mode,
appends each spike to the pooled position's list). Per output position and group of ``P``
channels the walker issues one accumulate per input event (a *segment*: all bit planes of the
receptive field in bit-serial mode and in rate mode's first layer, one time step otherwise; an
empty segment costs one cycle). The last accumulate of a segment hands the ``P`` sums to the
firing stage through a one-entry buffer, so firing and writing one group overlaps the
accumulation of the next. Per segment ``i`` with ``n_i = max(1, events)`` issue cycles and a
firing-stage occupancy ``f_i``::

    l_i    = max(s_i + n_i - 1, take_{i-1})        # its last accumulate issues (waits for space)
    take_i = max(l_i + 3, take_{i-1} + f_{i-1})    # the firing stage takes it (2-stage pipeline)
    s_{i+1} = l_i + 1

and the layer ends at ``take_N + f_N``. Per layer: 1 (start) + for a firing layer one cycle per
row of the lists it writes (clearing their nonempty bitmap) + ``take_N + f_N + 1`` + 1 to swap
buffers (all but the last layer). The load costs 1 per pixel plus 1 per 1-bit of its level.

``f_i`` (output streams always ready; ``+`` trace records, one cycle each, with ``trace``):

==========================  =========================================================
bit-serial firing           ``1 + T_out + 1 + writes`` (take, successive approximation,
                            clip; writes = emitted 1-bits, or for a fused pool the pooled
                            levels' 1-bits after the window's 4th position) ``+ 2 (+1)``
bit-serial output           ``1 + valid outputs`` ``+ 1``
rate, first layer           ``1 + sum_t (1 + spikes_t)`` (``S`` IF steps on one current)
                            ``+ 2 S``
rate, later firing layer    ``1 + spikes_t`` per step ``+ 2``
rate output layer           ``1`` per step, ``+ valid outputs (+ 1)`` after the last
==========================  =========================================================

The lower bound the schedule is measured against is ``ceil(active synaptic ops / P)`` per Program
layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .golden import GoldenResult, run_program
from .plan import SCAN_LATENCY, TAPS, LayerKind, LayerRow, PlanError, layer_plan
from .program import Program

__all__ = ["TAPS", "PlanError", "layer_plan", "CycleReport", "engine_cycles", "fixed_cycles",
           "predict"]  # TAPS, PlanError and layer_plan live in bitspike.sw.plan


@dataclass
class CycleReport:
    """Cycles of one inference: ``load``, then one entry per executed layer, and the total.

    ``layers[k]`` is executed layer ``k`` (a fused pool's cycles are inside its conv's);
    ``synaptic_ops`` has one entry per Program layer (the bound counts every layer).
    """

    lanes: int
    load: int
    layers: list[int] = field(default_factory=list)
    synaptic_ops: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.load + sum(self.layers)

    @property
    def lower_bound(self) -> int:
        """``ceil(active synaptic ops / P)`` summed over the Program's layers."""
        return sum(-(-ops // self.lanes) for ops in self.synaptic_ops)

    def to_dict(self) -> dict:
        return {"lanes": self.lanes, "load": self.load, "layers": self.layers,
                "names": self.names, "synaptic_ops": self.synaptic_ops, "total": self.total,
                "lower_bound": self.lower_bound}


def _as_map(x: torch.Tensor) -> torch.Tensor:
    """(T, C, H, W) or (T, N) per-plane values -> (T, C, H, W)."""
    return x if x.dim() == 4 else x.view(x.shape[0], x.shape[1], 1, 1)


def _receptive_counts(row: LayerRow, counts: torch.Tensor, oy: int, ox: int) -> torch.Tensor:
    """Events per plane in the receptive field of output (oy, ox): ``(planes,)``."""
    if row.kind == LayerKind.DENSE:
        return counts.sum(dim=(1, 2))
    h, w = counts.shape[1:]
    y0, y1, x0, x1 = max(oy - 1, 0), min(oy + 2, h), max(ox - 1, 0), min(ox + 2, w)
    return counts[:, y0:y1, x0:x1].sum(dim=(1, 2))


def _synaptic_ops(program: Program, inputs: list[torch.Tensor]) -> list[int]:
    """Active synaptic operations per Program layer: every input event times its fan-out."""
    ops = []
    for lay, events in zip(program.layers, inputs, strict=True):
        ev = _as_map(events)
        if lay.kind == "sumpool2x2":
            ops.append(int(ev.sum()))  # an event feeds its own channel's pooled output
        elif lay.kind == "dense":
            ops.append(int(ev.sum()) * lay.out_shape[0])
        else:  # conv3x3: an event at (y, x) feeds the 3x3 outputs around it inside the map
            h, w = ev.shape[2:]
            ny = torch.tensor([min(y + 2, h) - max(y - 1, 0) for y in range(h)])
            nx = torch.tensor([min(x + 2, w) - max(x - 1, 0) for x in range(w)])
            fan = ny.view(-1, 1) * nx.view(1, -1)
            ops.append(int((ev.sum(dim=(0, 1)) * fan).sum()) * lay.out_shape[0])
    return ops


def _segments(row: LayerRow, events: torch.Tensor, out: torch.Tensor | None,
              pooled: torch.Tensor | None, lanes: int, trace: bool):
    """``(issue cycles, firing-stage cycles)`` of every segment of one executed layer."""
    counts = _as_map(events).sum(dim=1)  # (planes, H, W): events per list
    c_out, quads, steps = row.c_out, row.quads, row.steps
    out_map = None if out is None else _as_map(out)
    pooled_map = None if pooled is None else _as_map(pooled)
    for wy in range(row.win_h):
        for wx in range(row.win_w):
            for g in range(0, c_out, lanes):
                valid = min(lanes, c_out - g)
                for q in range(quads):
                    oy, ox = (2 * wy + q // 2, 2 * wx + q % 2) if row.pool else (wy, wx)
                    per_plane = _receptive_counts(row, counts, oy, ox).tolist()
                    lane_spikes = (None if out_map is None
                                   else out_map[:, g:g + valid, oy, ox].sum(dim=1).tolist())
                    if not row.rate:
                        n = max(1, sum(per_plane))
                        if not row.fires:
                            yield n, 1 + valid + int(trace)
                            continue
                        if row.pool:
                            writes = (int(pooled_map[:, g:g + valid, wy, wx].sum())
                                      if q == 3 else 0)
                            records = 2 + int(q == 3)
                        else:
                            writes, records = sum(lane_spikes), 2
                        yield n, 2 + row.t_out + writes + records * int(trace)
                    elif row.analog:
                        n = max(1, sum(per_plane))
                        if row.fires:
                            yield n, 1 + steps + sum(lane_spikes) + 2 * steps * int(trace)
                        else:
                            yield n, 1 + steps + valid + int(trace)
                    else:
                        for t in range(steps):
                            n = max(1, per_plane[t])
                            if row.fires:
                                yield n, 1 + lane_spikes[t] + 2 * int(trace)
                            else:
                                yield n, 1 + ((valid + int(trace)) if t == steps - 1 else 0)


def _walk_cycles(segments) -> int:
    """Cycles from the first walk cycle until the firing stage is idle after the last segment
    (the recurrence in the module docstring), plus the cycle that sees it idle."""
    s, take, busy = SCAN_LATENCY, None, 0
    for n, f in segments:
        last = s + n - 1 if take is None else max(s + n - 1, take)
        take = last + 3 if take is None else max(last + 3, take + busy)
        s, busy = last + 1, f
    return take + busy + 1


def engine_cycles(program: Program, result: GoldenResult, index: int, *, lanes: int,
                  trace: bool = False) -> CycleReport:
    """Cycles the engine with ``lanes`` lanes takes for image ``index`` of a golden run.

    ``trace``: the engine was built with its trace port (one cycle per trace record).
    """
    plan = layer_plan(program, lanes)
    pixels = result.input_spikes[index].to(torch.int64)  # (T_in, ...) bit planes
    report = CycleReport(lanes, int(pixels.numel() // pixels.shape[0] + pixels.sum()))
    layer_inputs = [pixels] + [s[index].to(torch.int64) for s in result.spikes[:-1]]
    report.synaptic_ops = _synaptic_ops(program, layer_inputs)
    for row in plan:
        i = row.index
        out = result.spikes[i][index].to(torch.int64) if row.fires else None
        pooled = result.spikes[i + 1][index].to(torch.int64) if row.pool else None
        walk = _walk_cycles(_segments(row, layer_inputs[i], out, pooled, lanes, trace))
        report.layers.append(1 + row.clear_rows + walk + (0 if row.last else 1))
        report.names.append(program.layers[i].name + ("+pool" if row.pool else ""))
    return report


def fixed_cycles(program: Program, *, lanes: int) -> int:
    """The input-independent cycles of one inference (the schedule's fixed overhead): the load's
    one cycle per pixel, and per executed layer its start, bitmap row clears, pipeline fill (3),
    the cycle that sees the firing stage idle and the buffer swap (all but the last layer)."""
    pixels = 1
    for size in program.input.shape:
        pixels *= size
    return pixels + sum(1 + row.clear_rows + SCAN_LATENCY + 3 + 1 + (0 if row.last else 1)
                        for row in layer_plan(program, lanes))


def predict(program: Program, inputs: torch.Tensor, *, lanes: int) -> list[CycleReport]:
    """Cycle reports for a batch of inputs (runs the golden model)."""
    result = run_program(program, inputs)
    return [engine_cycles(program, result, i, lanes=lanes) for i in range(len(result.logits))]
