"""The reference every engine bench compares against: the golden model plus the cycle model.

:func:`expected_results` turns a Program and a batch of input images into what the engine must
produce for each image: its logits, its class, its cycle count (from
:func:`bitspike.sw.cycles.engine_cycles`) and, for a traced engine, every trace record in the
order the engine emits it. The amaranth.sim tests and the cocotb scoreboard both use it, so the
two benches check the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bitspike.sw.cycles import engine_cycles
from bitspike.sw.golden import run_program
from bitspike.sw.plan import layer_plan
from bitspike.sw.program import Program

__all__ = ["Expected", "expected_results", "golden_trace", "TRACE_KINDS"]

#: What a trace record's ``kind`` field means.
TRACE_KINDS = {0: "potentials", 1: "emitted levels/spikes"}


@dataclass
class Expected:
    """What the engine must produce for one image."""

    logits: list[int]
    klass: int
    cycles: int
    trace: list[dict] = field(default_factory=list)


def _grid(x: torch.Tensor) -> torch.Tensor:
    return x if x.dim() == 3 else x.view(-1, 1, 1)


def golden_trace(program: Program, golden, n: int, lanes: int) -> list[dict]:
    """The trace records the engine emits for image ``n`` (same order and contents, without the
    ``cycles`` stamp).

    Walk order per executed layer (:func:`bitspike.sw.plan.layer_plan`): window, group,
    position in the window (4 for a fused pool), then the rate steps. ``golden`` is a traced
    :class:`~bitspike.sw.golden.GoldenResult`.
    """

    def lane_values(x, oy, ox, c0):
        return [int(x[c, oy, ox]) if c < x.shape[0] else 0 for c in range(c0, c0 + lanes)]

    rate = program.mode == "rate"
    records = []
    for row in layer_plan(program, lanes):
        li = row.index
        lay = program.layers[li]
        for wy in range(row.win_h):
            for wx in range(row.win_w):
                for g, c0 in enumerate(range(0, row.c_out, lanes)):
                    for q in range(row.quads):
                        oy, ox = (2 * wy + q // 2, 2 * wx + q % 2) if row.pool else (wy, wx)
                        where = {"layer": li, "oy": oy, "ox": ox, "group": g}
                        if not lay.fires:
                            logits = _grid(golden.logits[n])
                            records.append({"kind": 0, **where, "step": 0,
                                            "values": lane_values(logits, oy, ox, c0)})
                        elif not rate:
                            acc = golden.accumulators[li][n][-1]
                            u0 = acc + torch.from_numpy(lay.bias).view(
                                -1, *[1] * (acc.dim() - 1))
                            records.append({"kind": 0, **where, "step": 0,
                                            "values": lane_values(_grid(u0), oy, ox, c0)})
                            records.append({"kind": 1, **where, "step": 0, "values": lane_values(
                                _grid(golden.levels[li][n]), oy, ox, c0)})
                            if row.pool and q == 3:
                                records.append({
                                    "kind": 1, "layer": li + 1, "oy": wy, "ox": wx, "group": g,
                                    "step": 0, "values": lane_values(
                                        _grid(golden.levels[li + 1][n]), wy, wx, c0)})
                        else:
                            for t in range(program.rate_steps):
                                for kind, x in ((0, golden.accumulators[li][n][t]),
                                                (1, golden.spikes[li][n][t])):
                                    records.append({"kind": kind, **where, "step": t,
                                                    "values": lane_values(_grid(x), oy, ox, c0)})
    return records


def expected_results(program: Program, images: torch.Tensor, *, lanes: int,
                     trace: bool = False) -> list[Expected]:
    """One :class:`Expected` per image: the golden model's logits and class, the cycle model's
    count for an engine with ``lanes`` lanes (with or without the trace port), and the trace
    records when ``trace``."""
    golden = run_program(program, images, trace=trace)
    out = []
    for n in range(len(images)):
        out.append(Expected(
            logits=[int(v) for v in golden.logits[n].tolist()],
            klass=int(golden.classes[n]),
            cycles=engine_cycles(program, golden, n, lanes=lanes, trace=trace).total,
            trace=golden_trace(program, golden, n, lanes) if trace else []))
    return out
