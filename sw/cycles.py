"""The engine's cycle model: cycles per layer and per inference, predicted exactly.

It counts the schedule of :class:`bitspike.hw.engine.DenseEngine` (docs/engine.md) from the
golden model's actual events, for a given number of lanes ``P``. The engine's own cycle counter
must equal :func:`engine_cycles` for every Program, input and configuration it runs (checked
cycle for cycle in tests/test_hw_engine.py).

Per inference (input stream valid every cycle, output streams always ready):

* load: ``sum over pixels of (1 + popcount(level))``;
* per layer after the first: 2 (swap the event buffers);
* per group of ``P`` outputs: ``1 + E + (T_in - 1) + 1 + 2`` (clear, one issue per input event
  ``E`` of all planes, shifts, bias, drain), then a firing layer ``1 + T_out + 1 + ones + 1``
  (load, successive approximation, clip, one write per emitted 1-bit, finish) or the output
  layer ``valid outputs + 1`` (one logit per cycle, finish).

The lower bound of issue 4 is ``ceil(active synaptic ops / P)``; the difference is the fixed
per-group overhead above, reported per layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .errors import BitspikeError
from .golden import GoldenResult, run_program
from .program import Program


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


def engine_cycles(program: Program, result: GoldenResult, index: int, *, lanes: int
                  ) -> CycleReport:
    """Cycles the engine with ``lanes`` lanes takes for image ``index`` of a golden run."""
    if program.mode != "bitserial" or any(lay.kind != "dense" for lay in program.layers):
        raise BitspikeError("the cycle model covers the engine built so far: bit-serial Programs "
                            "of dense layers")
    if not isinstance(lanes, int) or lanes < 1:
        raise BitspikeError(f"lanes must be a positive integer, not {lanes!r}")
    pixels = result.input_spikes[index].to(torch.int64)  # (T_in, ...) bit planes
    report = CycleReport(lanes, int(pixels.numel() // pixels.shape[0] + pixels.sum()))
    inputs = [pixels] + [s[index] if s is not None else None for s in result.spikes[:-1]]
    for li, lay in enumerate(program.layers):
        n_out = lay.out_shape[0]
        events = int(inputs[li].to(torch.int64).sum())
        cycles = 2 if li else 0
        for g in range(0, n_out, lanes):
            valid = min(lanes, n_out - g)
            cycles += 1 + events + (lay.t_in - 1) + 1 + 2
            if lay.fires:
                ones = int(result.spikes[li][index][:, g:g + valid].to(torch.int64).sum())
                cycles += 1 + lay.t_out + 1 + ones + 1
            else:
                cycles += valid + 1
        report.layers.append(cycles)
        report.synaptic_ops.append(events * n_out)
    return report


def predict(program: Program, inputs: torch.Tensor, *, lanes: int) -> list[CycleReport]:
    """Cycle reports for a batch of inputs (runs the golden model)."""
    result = run_program(program, inputs)
    return [engine_cycles(program, result, i, lanes=lanes) for i in range(len(result.logits))]
