"""Simulator speed on the engine: Verilator, Icarus and amaranth.sim in one run, with the ratios.

Run: ``.venv/bin/python bench/bench_sim.py`` (about three minutes on 2 shared cores, including
a Verilator build of digits-cnn of about 35-45 s; a later run reuses the build when the trained
Program, and so the Verilog, is the same). docs/benchmarks.md holds a real run.

The subject is digits-cnn (bit-serial, L = 15, trained ``--epochs`` epochs with seed 0 as in
bench_engine.py) on an engine with P = ``--lanes`` lanes, or any bundle given with
``--program``. Each simulator runs the first N digits test images (``--verilator-images``,
``--icarus-images``, ``--amaranth-images``; 0 skips one) and every result is checked: the
cocotb bench's scoreboard (:mod:`bitspike.sim.engine_tb`) for Verilator and Icarus, and for
amaranth.sim the logits and class against the golden model and the cycle count against the cycle
model, as bench_engine.py does. Any mismatch makes the run exit with status 1.

Per simulator: images, simulated cycles, the wall seconds of the simulation alone, cycles/s and
images/s, then the ratios of cycles/s between the simulators (the fair comparison, since each
runs a different number of images), and whether Verilator meets the target of 1 M simulated
cycles/s.

* Verilator and Icarus (through :func:`bitspike.sim.runner.run_engine_rtl`): simulated cycles and
  seconds are the bench's own (:class:`~bitspike.sim.runner.SimReport`): simulated time from
  after reset to the last result, and wall time from the clock's start (after the reference is
  computed, so neither the simulator's start-up nor the golden model counts). The build is
  reported separately, with whether it was reused from the cache (``--build-root``).
* amaranth.sim (through :func:`bitspike.sim.engine_sim.run_engine`): simulated cycles are the
  sum of the engine's per-image cycle counts (the testbench ticks one more cycle per image to
  take the result); seconds are the wall time of amaranth's ``Simulator.run()`` inside
  ``run_engine`` (the bench wraps the class for that call). The rest of the call, elaboration
  and the simulator's compilation of the design, is reported as the build.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from bench_golden import CpuMonitor, machine_facts

SIMULATORS = ("verilator", "icarus", "amaranth.sim")
TARGET_CYCLES_PER_S = 1_000_000
SEED = 0


def tool_versions() -> dict:
    def dist(name):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None
    try:
        icarus = subprocess.run(["iverilog", "-V"], capture_output=True, text=True,
                                timeout=10).stdout.splitlines()[0]
        icarus = icarus.replace("Icarus Verilog version ", "").replace(" ()", "")
    except (OSError, IndexError, subprocess.TimeoutExpired):
        icarus = None
    return {"verilator": dist("verilator"), "icarus": icarus, "cocotb": dist("cocotb"),
            "amaranth": dist("amaranth")}


def subject(args):
    """The Program under test, its images (the largest count any simulator needs) and how the
    Program was made."""
    from bitspike.sw.data import load_dataset

    data = load_dataset("digits")
    if args.program:
        from bitspike.sw.images import read_bundle

        program = read_bundle(args.program)
        provenance = f"bundle {args.program}"
    else:
        from bitspike.sw.convert import convert_model
        from bitspike.sw.train import TrainConfig, train

        t0 = time.perf_counter()
        model, _ = train(TrainConfig(arch=args.arch, epochs=args.epochs, seed=SEED), data,
                         progress=False)
        program = convert_model(model, input_shape=(1, 8, 8), normalization=data.normalization)
        provenance = (f"{args.arch} trained {args.epochs} epochs, seed {SEED}, converted "
                      f"bit-serial ({time.perf_counter() - t0:.1f} s)")
    count = max(args.verilator_images, args.icarus_images, args.amaranth_images, 1)
    shape = tuple(program.input.shape)
    if shape == tuple(data.x_test.shape[1:]):
        images = data.x_test[:count]
        provenance += "; images: the first digits test images"
    else:  # a Program of another shape (the smoke test's tiny one): random levels
        rng = np.random.default_rng(SEED)
        images = torch.from_numpy(rng.integers(0, program.input.max_level + 1,
                                               (count, *shape)))
        provenance += f"; images: random levels 0..{program.input.max_level} (seed {SEED})"
    return program, images, provenance


def run_cocotb(simulator: str, program, images, lanes: int, root: str) -> dict:
    from bitspike.sim.runner import run_engine_rtl

    monitor = CpuMonitor()
    t0 = time.perf_counter()
    report = run_engine_rtl(program, np.asarray(images), lanes=lanes, simulator=simulator,
                            stop_on_first=False, root=root)
    total = time.perf_counter() - t0
    return {"simulator": simulator, "images": report.images, "mismatches": report.mismatches,
            "first_mismatch": report.first_mismatch,
            "simulated_cycles": report.simulated_cycles,
            "engine_cycles": int(sum(report.cycles)), "sim_seconds": report.sim_seconds,
            "cycles_per_second": report.cycles_per_second,
            "images_per_second": report.images_per_second,
            "build_seconds": report.build["seconds"], "build_reused": report.build["reused"],
            "total_seconds": total, "other_cpus": monitor.other_cpus()}


def run_amaranth(program, images, lanes: int) -> dict:
    from bitspike.hw.config import EngineConfig
    from bitspike.hw.engine import Engine
    from bitspike.sim import engine_sim
    from bitspike.sw.cycles import engine_cycles
    from bitspike.sw.golden import run_program

    monitor = CpuMonitor()
    t0 = time.perf_counter()
    golden = run_program(program, images)
    expected = [engine_cycles(program, golden, i, lanes=lanes).total for i in range(len(images))]
    dut = Engine(config=EngineConfig.for_program(program, lanes=lanes), program=program)
    t1 = time.perf_counter()
    runs = []

    class TimedSimulator(engine_sim.Simulator):
        """amaranth's simulator, timing ``run()`` alone: the simulation without the
        elaboration and compilation done before it."""

        def run(self):
            t = time.perf_counter()
            super().run()
            runs.append(time.perf_counter() - t)

    saved, engine_sim.Simulator = engine_sim.Simulator, TimedSimulator
    try:
        got = engine_sim.run_engine(dut, list(images))
    finally:
        engine_sim.Simulator = saved
    (sim_seconds,) = runs
    setup = time.perf_counter() - t1 - sim_seconds
    total = time.perf_counter() - t0
    mismatches, first = 0, None
    for i, (logits, klass, cycles) in enumerate(got):
        want = golden.logits[i].tolist()
        if ([v for _, v in logits] != want or klass != int(golden.classes[i])
                or cycles != expected[i]):
            mismatches += 1
            first = first or (f"image {i}: logits {[v for _, v in logits]} class {klass} "
                              f"cycles {cycles}, expected {want} class "
                              f"{int(golden.classes[i])} cycles {expected[i]}")
    mismatches += len(images) - len(got)
    cycles = int(sum(c for _, _, c in got))
    return {"simulator": "amaranth.sim", "images": len(got), "mismatches": mismatches,
            "first_mismatch": first, "simulated_cycles": cycles, "engine_cycles": cycles,
            "sim_seconds": sim_seconds, "cycles_per_second": cycles / sim_seconds,
            "images_per_second": len(got) / sim_seconds, "build_seconds": setup,
            "build_reused": False, "total_seconds": total, "other_cpus": monitor.other_cpus()}


def ratios(rows: dict) -> dict:
    out = {}
    for i, a in enumerate(SIMULATORS):
        for b in SIMULATORS[i + 1:]:
            if a in rows and b in rows:
                out[f"{a}/{b}"] = {
                    "cycles_per_second": rows[a]["cycles_per_second"]
                    / rows[b]["cycles_per_second"],
                    "images_per_second": rows[a]["images_per_second"]
                    / rows[b]["images_per_second"]}
    return out


def _num(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:,.2f}" if v >= 1 else f"{v:.4f}"


def format_report(result: dict) -> str:
    m, tools = result["machine"], result["tools"]
    out = [f"bitspike simulator benchmark: the engine at P = {result['lanes']}",
           f"subject: {result['subject']}",
           f"machine: {m['cpu_model']}; {m['cpu_count']} CPUs ({m['cpus_usable']} usable); "
           f"python {m['python']}",
           f"tools: verilator {tools['verilator']}, icarus {tools['icarus']}, "
           f"cocotb {tools['cocotb']}, amaranth {tools['amaranth']}",
           "",
           "sim s = wall seconds of the simulation alone; build s = compile (verilator, icarus) "
           "or elaboration + set-up (amaranth.sim), not in sim s; other CPUs = busy with other "
           "processes meanwhile",
           f"{'simulator':<13} {'images':>6} {'sim. cycles':>12} {'sim s':>8} {'cycles/s':>10} "
           f"{'images/s':>9} {'build s':>14} {'total s':>8} {'mismatches':>10} "
           f"{'other CPUs':>10}"]
    out.append("-" * len(out[-1]))
    for name in SIMULATORS:
        r = result["simulators"].get(name)
        if r is None:
            out.append(f"{name:<13} {'skipped':>6}")
            continue
        build = f"{r['build_seconds']:.1f}" + (" (reused)" if r["build_reused"] else "")
        other = "n/a" if r["other_cpus"] is None else f"{r['other_cpus']:.2f}"
        out.append(f"{name:<13} {r['images']:>6} {r['simulated_cycles']:>12,} "
                   f"{r['sim_seconds']:>8.3f} {_num(r['cycles_per_second']):>10} "
                   f"{_num(r['images_per_second']):>9} {build:>14} {r['total_seconds']:>8.1f} "
                   f"{r['mismatches']:>10} {other:>10}")
    if result["ratios"]:
        out += ["", "ratios (cycles/s; images/s in brackets, which also reflect the images' "
                    "different cycle counts):"]
        for pair, r in result["ratios"].items():
            out.append(f"  {pair:<26} {r['cycles_per_second']:>8.1f}x "
                       f"({r['images_per_second']:.1f}x)")
    target = result["target"]
    if target["met"] is not None:
        verdict = "met" if target["met"] else (
            f"NOT met ({target['cycles_per_second'] / 1e6:.3f} M cycles/s, "
            f"{target['cycles_per_second_target'] / target['cycles_per_second']:.1f}x short)")
        out += ["", f"target: Verilator >= {target['cycles_per_second_target'] / 1e6:g} M "
                    f"simulated cycles/s: {verdict}"]
    busy = [r["other_cpus"] for r in result["simulators"].values() if r["other_cpus"]]
    if busy and max(busy) > 0.25:
        out.append(f"WARNING: other processes kept up to {max(busy):.2f} CPUs busy during the "
                   "runs; the figures are lower than on an idle machine")
    out.append(f"mismatches: {result['mismatches']} (every result checked against the golden "
               "and cycle models)")
    out.append(f"total benchmark time {result['total_seconds']:.1f} s")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, print the table, optionally write JSON; return the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lanes", type=int, default=8, help="engine lanes P (default: 8)")
    parser.add_argument("--arch", default="digits-cnn",
                        help="architecture trained here (default: digits-cnn)")
    parser.add_argument("--epochs", type=int, default=5, help="training epochs (default: 5)")
    parser.add_argument("--program", metavar="PATH", default=None,
                        help="use this Program bundle instead of training one")
    parser.add_argument("--verilator-images", type=int, default=40,
                        help="images simulated on Verilator (default: 40; 0 skips)")
    parser.add_argument("--icarus-images", type=int, default=3,
                        help="images simulated on Icarus (default: 3; 0 skips)")
    parser.add_argument("--amaranth-images", type=int, default=1,
                        help="images simulated in amaranth.sim (default: 1; 0 skips)")
    parser.add_argument("--build-root", default="build/sim",
                        help="where the cocotb builds are cached (default: build/sim)")
    parser.add_argument("--json", metavar="PATH", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    start = time.perf_counter()
    program, images, provenance = subject(args)
    counts = {"verilator": args.verilator_images, "icarus": args.icarus_images,
              "amaranth.sim": args.amaranth_images}
    rows = {}
    for name in SIMULATORS:
        n = counts[name]
        if n <= 0:
            continue
        print(f"simulating {n} image(s) on {name} ...", file=sys.stderr, flush=True)
        rows[name] = (run_amaranth(program, images[:n], args.lanes) if name == "amaranth.sim"
                      else run_cocotb(name, program, images[:n], args.lanes, args.build_root))
    verilator = rows.get("verilator")
    result = {
        "lanes": args.lanes, "subject": provenance, "machine": machine_facts(),
        "tools": tool_versions(), "simulators": rows, "ratios": ratios(rows),
        "target": {"cycles_per_second_target": TARGET_CYCLES_PER_S,
                   "cycles_per_second": verilator["cycles_per_second"] if verilator else None,
                   "met": (verilator["cycles_per_second"] >= TARGET_CYCLES_PER_S
                           if verilator else None)},
        "mismatches": sum(r["mismatches"] for r in rows.values()),
        "total_seconds": time.perf_counter() - start}
    result["table"] = format_report(result)
    print(result["table"], flush=True)
    for r in rows.values():
        if r["first_mismatch"]:
            print(f"{r['simulator']}: first mismatch: {r['first_mismatch']}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    sys.exit(1 if main(sys.argv[1:])["mismatches"] else 0)
