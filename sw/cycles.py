"""The engine's cycle model: cycles per layer and per inference, predicted exactly.

It counts the schedule of :class:`bitspike.hw.engine.Engine` (docs/engine.md) from the golden
model's actual events, for a given number of lanes ``P``. The engine's own cycle counter must
equal :func:`engine_cycles` for every Program, input and configuration it runs (checked in
tests/test_hw_engine.py).

Per inference (input stream valid every cycle, output streams always ready):

* load: ``sum over pixels of (1 + popcount(level))`` (accept, then one list append per 1-bit);
* per layer: 1 (start) + for a firing layer ``T_out x list positions`` (clearing the next
  layer's list counts; one list per plane for a dense successor) + per output position and
  group of ``P`` channels: ``1 + sum over planes and taps of (events + 1) + 2`` (clear, walk the
  receptive field: conv 9 taps, pooling 4, dense 1 flat list; the "+1" of a tap advances, or
  shifts between planes, or adds the bias; drain), then a firing layer
  ``1 + T_out + 1 + ones + 1`` (load, successive approximation, clip, one append per emitted
  1-bit, finish) or the output layer ``valid outputs + 1``; + 1 to swap buffers (all layers but
  the last).

The lower bound of issue 4 is ``ceil(active synaptic ops / P)`` per layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .errors import BitspikeError
from .golden import GoldenResult, run_program
from .program import Layer, Program


@dataclass
class CycleReport:
    """Cycles of one inference: ``load``, then one entry per layer, and the total."""

    lanes: int
    load: int
    layers: list[int] = field(default_factory=list)
    synaptic_ops: list[int] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.load + sum(self.layers)

    @property
    def lower_bound(self) -> int:
        """``ceil(active synaptic ops / P)`` summed over the layers."""
        return sum(-(-ops // self.lanes) for ops in self.synaptic_ops)

    def to_dict(self) -> dict:
        return {"lanes": self.lanes, "load": self.load, "layers": self.layers,
                "synaptic_ops": self.synaptic_ops, "total": self.total,
                "lower_bound": self.lower_bound}


def _as_map(x: torch.Tensor) -> torch.Tensor:
    """(T, C, H, W) or (T, N) per-plane values -> (T, C, H, W)."""
    return x if x.dim() == 4 else x.view(x.shape[0], x.shape[1], 1, 1)


def _walk(layer: Layer, events: torch.Tensor, oy: int, ox: int) -> tuple[int, int]:
    """(issue cycles, synaptic events walked) of one group at output position (oy, ox)."""
    counts = events.sum(dim=1)  # (T, H, W): events per list (channels summed)
    t_in, h, w = counts.shape
    if layer.kind == "dense":
        n = int(counts.sum())
        return n + t_in, n
    taps = ([(dy, dx) for dy in range(3) for dx in range(3)] if layer.kind == "conv3x3"
            else [(dy, dx) for dy in range(2) for dx in range(2)])
    total = 0
    for dy, dx in taps:
        iy, ix = (oy + dy - 1, ox + dx - 1) if layer.kind == "conv3x3" else (2 * oy + dy,
                                                                             2 * ox + dx)
        if 0 <= iy < h and 0 <= ix < w:
            total += int(counts[:, iy, ix].sum())
    return total + t_in * len(taps), total


def engine_cycles(program: Program, result: GoldenResult, index: int, *, lanes: int,
                  trace: bool = False) -> CycleReport:
    """Cycles the engine with ``lanes`` lanes takes for image ``index`` of a golden run.

    ``trace``: the engine was built with its trace port (one cycle per trace record: per group
    the potentials, and for firing layers the emitted levels).
    """
    if program.mode != "bitserial":
        raise BitspikeError("the cycle model covers the engine built so far: bit-serial "
                            "Programs")
    if not isinstance(lanes, int) or lanes < 1:
        raise BitspikeError(f"lanes must be a positive integer, not {lanes!r}")
    pixels = result.input_spikes[index].to(torch.int64)  # (T_in, ...) bit planes
    report = CycleReport(lanes, int(pixels.numel() // pixels.shape[0] + pixels.sum()))
    inputs = [pixels] + [s[index].to(torch.int64) for s in result.spikes[:-1]]
    layers = program.layers
    for li, lay in enumerate(layers):
        events = _as_map(inputs[li])
        c_out = lay.out_shape[0]
        oh, ow = (lay.out_shape[1], lay.out_shape[2]) if len(lay.out_shape) == 3 else (1, 1)
        last = li == len(layers) - 1
        cycles = 1
        if lay.fires:
            flat_next = layers[li + 1].kind == "dense"
            cycles += lay.t_out * (1 if flat_next else oh * ow)
            out_bits = _as_map(result.spikes[li][index].to(torch.int64))
        synops = 0
        for oy in range(oh):
            for ox in range(ow):
                issue, walked = _walk(lay, events, oy, ox)
                # a pooled event feeds only its own channel; a conv/dense event every output
                synops += walked if lay.kind == "sumpool2x2" else walked * c_out
                for g in range(0, c_out, lanes):
                    valid = min(lanes, c_out - g)
                    cycles += 1 + issue + 2 + (1 + int(lay.fires) if trace else 0)
                    if lay.fires:
                        ones = int(out_bits[:, g:g + valid, oy, ox].sum())
                        cycles += 1 + lay.t_out + 1 + ones + 1
                    else:
                        cycles += valid + 1
        if not last:
            cycles += 1
        report.layers.append(cycles)
        report.synaptic_ops.append(synops)
    return report


def predict(program: Program, inputs: torch.Tensor, *, lanes: int) -> list[CycleReport]:
    """Cycle reports for a batch of inputs (runs the golden model)."""
    result = run_program(program, inputs)
    return [engine_cycles(program, result, i, lanes=lanes) for i in range(len(result.logits))]
