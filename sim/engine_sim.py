"""Drive :class:`bitspike.hw.engine.Engine` in amaranth.sim: the demo, the tests and the
engine benchmark stream images through it with this one function."""

from __future__ import annotations

import random

from amaranth.hdl import ResetInserter, Signal
from amaranth.sim import Simulator

from bitspike.hw.engine import Engine


def run_engine(dut: Engine, images, *, ready_prob: float = 1.0, seed: int = 0,
               reset_after: int | None = None, vcd: str | None = None,
               max_cycles: int = 2_000_000, on_result=None, background=()):
    """Stream ``images`` (integer level tensors) through the engine.

    Returns one ``(logits, klass, cycles)`` per image, logits as a list of ``(index, value)``;
    with a traced engine, ``(logits, klass, cycles, trace)`` with the trace records as dicts.
    ``ready_prob < 1`` applies random back-pressure to both output streams. ``reset_after``
    asserts reset after that many cycles of the first image and then streams every image (the
    interrupted one again) from the start. ``vcd`` writes a waveform (tests: ``WAVES=1``).
    ``on_result(n, result)`` is called as each image's result arrives (progress reports).
    ``background``: more async testbench functions to run beside the bench (models of what the
    device is attached to, such as a flash chip); they may run forever.
    """
    rng = random.Random(seed)
    traced = hasattr(dut, "o_trace")
    rst = Signal()
    top = ResetInserter({"sync": rst})(dut)
    out = []

    async def bench(ctx):
        todo = list(images)
        interrupt = reset_after
        while todo:
            pix = [int(v) for v in todo[0].flatten().tolist()]
            i, logits, cycle, records = 0, [], 0, []
            while True:
                ctx.set(dut.i_stream.valid, i < len(pix))
                ctx.set(dut.i_stream.payload, pix[i] if i < len(pix) else 0)
                ctx.set(dut.o_logits.ready, rng.random() < ready_prob)
                ctx.set(dut.o_result.ready, rng.random() < ready_prob)
                extra = ()
                if traced:
                    ctx.set(dut.o_trace.ready, rng.random() < ready_prob)
                    extra = (dut.o_trace.valid, dut.o_trace.ready, dut.o_trace.payload)
                _, _, iv, ir, lv, lr, lp, rv, rr, rp, *tr = await ctx.tick().sample(
                    dut.i_stream.valid, dut.i_stream.ready, dut.o_logits.valid,
                    dut.o_logits.ready, dut.o_logits.payload, dut.o_result.valid,
                    dut.o_result.ready, dut.o_result.payload, *extra)
                if traced and tr[0] and tr[1]:
                    t = tr[2]
                    records.append({"kind": int(t.kind), "layer": int(t.layer), "oy": int(t.oy),
                                    "ox": int(t.ox), "group": int(t.group),
                                    "step": int(t.step), "cycles": int(t.cycles),
                                    "values": [int(v) for v in t.values]})
                cycle += 1
                if cycle > max_cycles:
                    raise AssertionError(f"no result after {max_cycles} cycles: the engine hangs")
                if iv and ir:
                    i += 1
                if lv and lr:
                    logits.append((int(lp.index), int(lp.value)))
                if rv and rr:
                    out.append((logits, int(rp.klass), int(rp.cycles))
                               + ((records,) if traced else ()))
                    if on_result is not None:
                        on_result(len(out) - 1, out[-1])
                    todo.pop(0)
                    break
                if interrupt is not None and cycle == interrupt:
                    interrupt = None
                    ctx.set(dut.i_stream.valid, 0)
                    ctx.set(rst, 1)
                    await ctx.tick()
                    ctx.set(rst, 0)
                    break  # stream the interrupted image again

    sim = Simulator(top)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    for process in background:
        sim.add_testbench(process, background=True)
    if vcd:
        with sim.write_vcd(vcd):
            sim.run()
    else:
        sim.run()
    return out
