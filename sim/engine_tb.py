"""cocotb bench of the engine's generated Verilog: driver, monitors, reference and scoreboard.

Run by :func:`bitspike.sim.runner.run`, which builds the Verilog and points the bench at a job
folder (``$BITSPIKE_SIM_JOB``): the Program's bundle, the images (``images.npy``), the bench
settings and the payload layouts (``job.json``). The bench writes ``report.json`` there.

The parts, as in cocotb's own examples:

:class:`PixelDriver`
    Feeds each image's pixel levels on ``i_stream``, optionally with random idle cycles
    (``valid`` low). It counts the cycles in which the engine was ready but the driver idle
    between an image's first and last pixel: those stretch the engine's count exactly.
:class:`StreamMonitor`
    Collects the transfers of one output stream (``o_logits``, ``o_result``, ``o_trace``),
    optionally with random back-pressure (``ready`` low).
:class:`ReferenceModel`
    The golden model plus the cycle model (:func:`bitspike.sim.reference.expected_results`).
:class:`Scoreboard`
    Compares every logit, the class, the cycle count and every trace record of each image with
    the reference, exactly; the first mismatch is reported as one line naming the image, layer,
    group and neuron, position, time step, cycle, expected and got.

Speed: no Python runs in a cycle in which nothing happens on a stream. The clock is generated
inside the simulated model (:func:`bitspike.sim.runner.with_clock`, period ``clock_ns``);
monitors sleep until their stream's ``valid`` rises and the driver until the engine's ``ready``
rises, so the long accumulate phases run at the simulator's own speed. Cycle counts come from
simulated time.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import cocotb
import numpy as np
from cocotb.simtime import get_sim_time
from cocotb.triggers import Event, First, ReadOnly, RisingEdge, Timer

__all__ = ["Bench", "Mismatch", "PixelDriver", "ReferenceModel", "Scoreboard", "StreamMonitor"]


class Mismatch(AssertionError):
    """The engine disagreed with the reference; the message is the one-line report."""


def _decode(raw: int, fields: dict) -> dict:
    """A flat payload vector as a dict of its fields (arrays as lists)."""
    out = {}
    for name, (offset, width, signed, count) in fields.items():
        values = []
        for i in range(max(count, 1)):
            v = (raw >> (offset + i * width)) & ((1 << width) - 1)
            if signed and v >> (width - 1):
                v -= 1 << width
            values.append(v)
        out[name] = values if count else values[0]
    return out


class PixelDriver:
    """Drives ``i_stream`` with the pixels of a list of images, back to back."""

    def __init__(self, dut, clock_ns: int, *, idle_prob: float, rng: random.Random):
        self._dut, self._clock_ns = dut, clock_ns
        self._idle_prob, self._rng = idle_prob, rng
        self.first_accept_ns: list[int] = []  # per image: the edge that took its first pixel
        self.stalls: list[int] = []  # per image: ready-but-idle cycles inside its load

    async def send(self, images, on_error) -> None:
        try:
            await self._send(images)
        except Exception as error:  # noqa: BLE001 - handed to the bench, which reports it
            on_error(error)

    async def _send(self, images) -> None:
        dut, rng = self._dut, self._rng
        for pixels in images:
            stalls, started = 0, False
            for level in pixels:
                idle = rng.randint(1, 3) if rng.random() < self._idle_prob else 0
                while True:
                    busy = idle > 0
                    dut.i_stream__valid.value = 0 if busy else 1
                    dut.i_stream__payload.value = 0 if busy else int(level)
                    await ReadOnly()
                    ready = int(dut.i_stream__ready.value)
                    now = get_sim_time("ns")
                    if busy:
                        idle -= 1
                        stalls += int(ready and started)
                        await RisingEdge(dut.clk)
                        continue
                    if ready:  # transfers at the next edge
                        if not started:
                            self.first_accept_ns.append(int(now) + self._clock_ns)
                            started = True
                        await RisingEdge(dut.clk)
                        break
                    await RisingEdge(dut.i_stream__ready)  # the engine is busy: sleep
            self.stalls.append(stalls)
        dut.i_stream__valid.value = 0


class StreamMonitor:
    """Collects ``(time_ns, payload)`` of every transfer on one output stream."""

    def __init__(self, dut, name: str, fields: dict, *, ready_prob: float,
                 rng: random.Random, on_transfer=None):
        self._valid = getattr(dut, f"{name}__valid")
        self._ready = getattr(dut, f"{name}__ready")
        self._payload = getattr(dut, f"{name}__payload")
        self._clk, self._fields = dut.clk, fields
        self._ready_prob, self._rng = ready_prob, rng
        self._on_transfer = on_transfer
        self.name = name
        self.first_valid_ns: int | None = None  # when valid was first seen since the last take
        self.taken_first_valid_ns: int | None = None  # ... for the transfer just taken
        self.items: list[tuple[int, dict]] = []

    def _draw_ready(self) -> int:
        return 1 if self._ready_prob >= 1.0 or self._rng.random() < self._ready_prob else 0

    async def run(self, on_error) -> None:
        """Collect until cancelled; an X on ``valid`` (or any other error) goes to
        ``on_error`` so that the bench ends with a report."""
        try:
            await self._collect()
        except Exception as error:  # noqa: BLE001 - handed to the bench, which reports it
            on_error(error)

    async def _collect(self) -> None:
        self._ready.value = self._draw_ready()
        await RisingEdge(self._clk)
        while True:
            self._ready.value = self._draw_ready()
            await ReadOnly()
            valid = self._valid.value
            if not valid.is_resolvable:
                raise Mismatch(f"{self.name}__valid is {valid} at "
                               f"{get_sim_time('ns')} ns, after reset")
            if not int(valid):
                await RisingEdge(self._valid)  # sleep through the cycles without data
                continue
            now = int(get_sim_time("ns"))
            if self.first_valid_ns is None:
                self.first_valid_ns = now
            if int(self._ready.value):
                item = (now, _decode(int(self._payload.value), self._fields))
                self.items.append(item)
                self.taken_first_valid_ns, self.first_valid_ns = self.first_valid_ns, None
                if self._on_transfer is not None:
                    self._on_transfer(item)
            await RisingEdge(self._clk)


class ReferenceModel:
    """What the engine must produce for each image: the golden model and the cycle model."""

    def __init__(self, program, images: np.ndarray, *, lanes: int, trace: bool):
        import torch

        from bitspike.sim.reference import expected_results

        torch.set_num_threads(1)

        self.expected = expected_results(program, torch.from_numpy(images), lanes=lanes,
                                         trace=trace)


class Scoreboard:
    """Compares each image's transfers with the reference; names the first difference."""

    def __init__(self, reference: ReferenceModel, *, layer_names: list[str], lanes: int,
                 check_cycles: bool, stop_on_first: bool, clock_ns: int, seed: int):
        self._expected = reference.expected
        self._names, self._lanes = layer_names, lanes
        self._check_cycles, self.stop_on_first = check_cycles, stop_on_first
        self._clock_ns, self._seed = clock_ns, seed
        self.mismatches = 0
        self.first_mismatch: str | None = None
        self.classes: list[int] = []
        self.cycles: list[int] = []

    def _layer(self, index: int) -> str:
        name = self._names[index] if index < len(self._names) else "?"
        return f"layer {index} ({name})"

    def fail(self, n: int, at_ns: int, what: str) -> None:
        line = (f"image {n}: {what} (cycle {at_ns // self._clock_ns} of the simulation; "
                f"bench seed {self._seed})")
        self.mismatches += 1
        if self.first_mismatch is None:
            self.first_mismatch = line
        if self.stop_on_first:
            raise Mismatch(line)

    def check_image(self, n: int, result: tuple[int, dict], logits: list, trace: list,
                    bench_cycles: int, stalls: int) -> None:
        """Check image ``n``: its result transfer, its logit and trace transfers, and the
        bench's own cycle count. Records the first mismatch (and raises when stopping)."""
        exp = self._expected[n]
        at, res = result
        self.classes.append(res["klass"])
        self.cycles.append(res["cycles"])
        before = self.mismatches
        # in the order the engine emits them: the trace (layer by layer) precedes the logits,
        # so the first report is the earliest difference, nearest its cause
        self._check_trace(n, trace, exp.trace)
        want = list(range(len(exp.logits)))
        got = [item["index"] for _, item in logits]
        if self.mismatches == before and got != want:
            self.fail(n, at, f"o_logits carried indices {got}, expected {want}")
        elif self.mismatches == before:
            for (t, item), value in zip(logits, exp.logits, strict=True):
                if item["value"] != value:
                    self.fail(n, t, f"logit {item['index']}: expected {value}, "
                                     f"got {item['value']}")
                    break
        if self.mismatches == before and res["klass"] != exp.klass:
            self.fail(n, at, f"class: expected {exp.klass}, got {res['klass']}")
        if self.mismatches == before and self._check_cycles:
            if res["cycles"] != exp.cycles + stalls:
                extra = f" + {stalls} input idle cycles" if stalls else ""
                self.fail(n, at, f"cycles: expected {exp.cycles + stalls} (cycle model "
                                  f"{exp.cycles}{extra}), got {res['cycles']}")
            elif bench_cycles != res["cycles"]:
                self.fail(n, at, f"the engine reports {res['cycles']} cycles, the bench "
                                  f"counted {bench_cycles} from the first pixel to the result")
        if self.mismatches == before and trace:
            stamps = [item["cycles"] for _, item in trace]
            if stamps != sorted(stamps) or stamps[-1] >= res["cycles"]:
                self.fail(n, at, f"trace cycle stamps out of order or past the result "
                                  f"({stamps[:8]}... last {stamps[-1]}, result {res['cycles']})")

    def _check_trace(self, n: int, got: list, expected: list[dict]) -> None:
        keys = ("kind", "layer", "oy", "ox", "group", "step")
        for i, want in enumerate(expected):
            if i >= len(got):
                self.fail(n, got[-1][0] if got else 0,
                           f"trace ended after {len(got)} records, expected {len(expected)}; "
                           f"missing record {i}: {self._where(want)}")
                return
            t, item = got[i]
            if any(item[k] != want[k] for k in keys) or item["values"] != want["values"]:
                self.fail(n, t, self._trace_difference(i, item, want))
                return
        if len(got) > len(expected):
            t, item = got[len(expected)]
            self.fail(n, t, f"{len(got) - len(expected)} trace records more than expected; "
                             f"the first extra: {self._where(item)}")

    def _where(self, rec: dict) -> str:
        kind = {0: "potentials", 1: "levels/spikes"}[rec["kind"]]
        return (f"{kind} of {self._layer(rec['layer'])}, group {rec['group']}, "
                f"position (y={rec['oy']}, x={rec['ox']}), step {rec['step']}")

    def _trace_difference(self, i: int, item: dict, want: dict) -> str:
        keys = ("kind", "layer", "oy", "ox", "group", "step")
        if any(item[k] != want[k] for k in keys):
            return (f"trace record {i} is out of order: expected {self._where(want)}, "
                    f"got {self._where(item)}")
        lane = next(p for p, (a, b) in enumerate(zip(item["values"], want["values"],
                                                       strict=True)) if a != b)
        neuron = want["group"] * self._lanes + lane
        return (f"{self._where(want)}, neuron {neuron} (lane {lane}): expected "
                f"{want['values'][lane]}, got {item['values'][lane]} (trace record {i}, "
                f"engine cycle {item['cycles']})")


class Bench:
    """Owns reset, the driver and the monitors of one engine (the model makes its clock)."""

    def __init__(self, dut, job: dict):
        self.dut, self.job = dut, job
        self.clock_ns = job["clock_ns"]
        self.rng = random.Random(job["seed"])
        self.traced = job["trace"]  # the runner built the engine's trace port to match

    async def reset(self, cycles: int = 2) -> None:
        self.dut.rst.value = 1
        self.dut.i_stream__valid.value = 0
        await Timer(cycles * self.clock_ns, unit="ns")
        await RisingEdge(self.dut.clk)
        self.dut.rst.value = 0

    def start(self, images, on_result, on_error):
        """Start a driver and the monitors on ``images``; returns them and their tasks."""
        fields, job = self.job["fields"], self.job
        driver = PixelDriver(self.dut, self.clock_ns, idle_prob=job["idle_prob"], rng=self.rng)
        monitors = {name: StreamMonitor(self.dut, name, fields[name],
                                        ready_prob=job["ready_prob"], rng=self.rng,
                                        on_transfer=on_result if name == "o_result" else None)
                    for name in (["o_logits", "o_result"] + (["o_trace"] if self.traced
                                                            else []))}
        tasks = [cocotb.start_soon(driver.send(images, on_error))]
        tasks += [cocotb.start_soon(mon.run(on_error)) for mon in monitors.values()]
        return driver, monitors, tasks


def _load_job():
    from bitspike.sw.images import read_bundle

    folder = Path(os.environ["BITSPIKE_SIM_JOB"])
    job = json.loads((folder / "job.json").read_text())
    program = read_bundle(folder / "program")
    images = np.load(folder / "images.npy")
    return folder, job, program, images


@cocotb.test()
async def engine_matches_golden(dut) -> None:
    """Every image of the job through the engine, checked by the scoreboard."""
    folder, job, program, images = _load_job()
    bench = Bench(dut, job)
    reference = ReferenceModel(program, images, lanes=job["lanes"], trace=bench.traced)
    scoreboard = Scoreboard(reference, layer_names=job["layer_names"], lanes=job["lanes"],
                            check_cycles=job["ready_prob"] >= 1.0,
                            stop_on_first=job["stop_on_first"], clock_ns=bench.clock_ns,
                            seed=job["seed"])
    flat = [img.reshape(-1).tolist() for img in images]
    report_path = folder / "report.json"
    wall = time.perf_counter()
    await bench.reset()
    start_ns = get_sim_time("ns")
    done = Event()
    state = {"n": 0, "logits": 0, "trace": 0, "error": None}
    run = {}  # the driver, monitors and tasks of the current run

    def write_report() -> None:
        sim_ns = get_sim_time("ns") - start_ns
        report_path.write_text(json.dumps({
            "images": len(scoreboard.classes), "mismatches": scoreboard.mismatches,
            "first_mismatch": scoreboard.first_mismatch,
            "classes": scoreboard.classes, "cycles": scoreboard.cycles,
            "simulated_cycles": int(sim_ns // bench.clock_ns),
            "sim_seconds": time.perf_counter() - wall}) + "\n")

    def on_error(error):
        if state["error"] is None:
            if not isinstance(error, Mismatch):  # not the scoreboard's: count it here
                error = Mismatch(f"image {state['n']}: the bench stopped: "
                                 f"{type(error).__name__}: {error} (bench seed {job['seed']})")
                scoreboard.mismatches += 1
                scoreboard.first_mismatch = scoreboard.first_mismatch or str(error)
            state["error"] = error
        done.set()

    def on_result(item):
        if state["error"] is not None:
            return
        n, monitors = state["n"], run["monitors"]
        logits = monitors["o_logits"].items[state["logits"]:]
        trace = monitors["o_trace"].items[state["trace"]:] if bench.traced else []
        state["logits"] += len(logits)
        state["trace"] += len(trace)
        first_valid = monitors["o_result"].taken_first_valid_ns
        bench_cycles = (first_valid - run["driver"].first_accept_ns[n]) // bench.clock_ns + 1
        try:
            scoreboard.check_image(n, item, logits, trace, bench_cycles, run["driver"].stalls[n])
        except Mismatch as error:
            on_error(error)
            return
        state["n"] = n + 1
        (folder / "progress").write_text(str(state["n"]))
        if state["n"] == len(flat):
            done.set()

    def start(images, on_result):
        run["driver"], run["monitors"], run["tasks"] = bench.start(images, on_result, on_error)

    try:
        if job["reset_after"] is not None:  # interrupt the first image, then start over
            start(flat, lambda item: None)
            while not run["driver"].first_accept_ns:
                await RisingEdge(dut.clk)
            await Timer(job["reset_after"] * bench.clock_ns, unit="ns")
            await RisingEdge(dut.clk)
            if run["monitors"]["o_result"].items:
                raise AssertionError(f"reset_after={job['reset_after']} is past the first "
                                     "result: choose fewer cycles")
            for task in run["tasks"]:
                task.cancel()
            await bench.reset()

        start(flat, on_result)
        # a broken engine may never answer: allow 4x the model's cycles plus a margin, per image
        budget = sum(4 * e.cycles + 20_000 for e in reference.expected)
        await First(done.wait(), Timer(budget * bench.clock_ns, unit="ns"))
        if state["error"] is None and not done.is_set():
            n = state["n"]
            on_error(Mismatch(f"image {n}: no result within {budget} cycles (the cycle model "
                              f"expects {reference.expected[n].cycles}): the engine hangs "
                              f"(bench seed {job['seed']})"))
            scoreboard.mismatches += 1
            scoreboard.first_mismatch = scoreboard.first_mismatch or str(state["error"])
        if state["error"] is None:
            await Timer(5 * bench.clock_ns, unit="ns")  # nothing may follow the last result
            monitors = run["monitors"]
            extra = [f"{len(m.items) - state[k]} {m.name} transfers"
                     for k, m in (("logits", monitors["o_logits"]),
                                  ("trace", monitors.get("o_trace")))
                     if m is not None and len(m.items) > state[k]]
            if extra:
                scoreboard.stop_on_first = False
                scoreboard.fail(len(flat) - 1, int(get_sim_time("ns")),
                                "after the last result: " + ", ".join(extra))
    except Exception as error:  # noqa: BLE001 - reported like a mismatch, then re-raised
        on_error(error)
    finally:
        for task in run.get("tasks", []):
            task.cancel()
        write_report()
    if state["error"] is not None:
        raise state["error"]
    if scoreboard.mismatches:
        raise Mismatch(f"{scoreboard.mismatches} of {len(flat)} images mismatched; first: "
                       f"{scoreboard.first_mismatch}")
