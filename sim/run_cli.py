"""``bitspike sim``: whole-network inference on the engine's RTL under Verilator or Icarus, every
image checked by the cocotb bench's scoreboard against the golden model and the cycle model."""

from __future__ import annotations

import sys
import time

import numpy as np

from bitspike.sw.errors import BitspikeError

__all__ = ["add_sim_command", "simulate_program"]


def _image_count(text: str) -> int | None:
    if text == "all":
        return None
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise BitspikeError(f"--images must be a positive number or 'all', not {text!r}")
    return n


def simulate_program(program, data, *, simulator: str | None, lanes: int, images: int | None,
                     trace: bool = False, waves: str | None = None, seed: int = 0,
                     ready_prob: float = 1.0, idle_prob: float = 0.0,
                     progress: bool = True) -> dict:
    """Run the first ``images`` test images (all when ``None``) through the RTL; the result
    dict of ``bitspike sim --json``."""
    from bitspike.sw.golden import run_program

    from .runner import choose_simulator, run_engine_rtl

    sim = choose_simulator(simulator)
    x = data.x_test if images is None else data.x_test[:images]
    y = data.y_test[:len(x)]
    golden = run_program(program, x)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(x), desc=f"RTL ({sim.value}, P = {lanes})", unit="img",
                   file=sys.stderr)

    def advance(done, _total):
        if bar is not None:
            bar.update(done - bar.n)

    if progress:
        print(f"building the engine for {sim.value} (cached after the first time) ...",
              file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        report = run_engine_rtl(program, x.numpy(), lanes=lanes, simulator=sim, trace=trace,
                                waves=waves, seed=seed, ready_prob=ready_prob,
                                idle_prob=idle_prob, stop_on_first=False, progress=advance)
    finally:
        if bar is not None:
            bar.close()
    classes = np.asarray(report.classes)
    labels = y.numpy()[:len(classes)]
    accuracy = float((classes == labels).mean()) if len(classes) else 0.0
    golden_accuracy = float((golden.classes.numpy()[:len(classes)] == labels).mean()) \
        if len(classes) else 0.0
    # images the bench never finished (it stopped early) count as mismatches too
    mismatches = report.mismatches + (len(x) - report.images)
    return {"simulator": report.simulator, "lanes": lanes, "trace": trace,
            "images": len(x), "simulated_images": report.images, "mismatches": mismatches,
            "first_mismatch": report.first_mismatch, "accuracy": accuracy,
            "golden_accuracy": golden_accuracy,
            "cycles_per_image": float(np.mean(report.cycles)) if report.cycles else 0.0,
            "cycles_min": min(report.cycles, default=0), "cycles_max": max(report.cycles,
                                                                           default=0),
            "simulated_cycles": report.simulated_cycles, "sim_seconds": report.sim_seconds,
            "cycles_per_second": report.cycles_per_second,
            "images_per_second": report.images_per_second, "build": report.build,
            "waves": report.waves, "seconds": time.perf_counter() - start,
            "back_pressure": {"ready_prob": ready_prob, "idle_prob": idle_prob, "seed": seed}}


def format_result(result: dict, target: str) -> str:
    ok = result["mismatches"] == 0
    build = result["build"]
    built = "reused" if build["reused"] else f"{build['seconds']:.0f} s"
    lines = [
        f"bitspike sim {target}: {result['simulator']}, P = {result['lanes']}, "
        f"{result['images']} test images{' (traced)' if result['trace'] else ''}",
        f"  accuracy    RTL {100 * result['accuracy']:.2f} %, golden model "
        f"{100 * result['golden_accuracy']:.2f} %",
        f"  mismatches  {result['mismatches']} (logits, class, cycle count"
        f"{', trace records' if result['trace'] else ''} against the golden and cycle models)"
        + ("" if ok else f"\n  first       {result['first_mismatch']}"),
        f"  cycles      {result['cycles_per_image']:.0f} per image (min {result['cycles_min']}, "
        f"max {result['cycles_max']})",
        f"  speed       {result['cycles_per_second']:,.0f} simulated cycles/s, "
        f"{result['images_per_second']:.2f} images/s ({result['sim_seconds']:.1f} s simulating; "
        f"build {built}: {build['directory']})",
    ]
    if result["waves"]:
        lines.append(f"  waveform    {result['waves']}")
    return "\n".join(lines)


def cmd_sim(args) -> int:
    from bitspike.sw.cli import _emit
    from bitspike.sw.evaluate import dataset_for
    from bitspike.sw.images import read_bundle

    images = _image_count(args.images)
    if args.lanes < 1:
        raise BitspikeError(f"--lanes must be a positive integer, not {args.lanes}")
    program = read_bundle(args.bundle)
    data = dataset_for(program.meta)
    result = simulate_program(program, data, simulator=args.simulator, lanes=args.lanes,
                              images=images, trace=args.trace, waves=args.waves,
                              seed=args.seed, ready_prob=args.ready_prob,
                              idle_prob=args.idle_prob, progress=True)
    _emit(args, result, format_result(result, args.bundle))
    if result["mismatches"]:
        print(f"bitspike sim: error: {result['mismatches']} image(s) disagree with the golden "
              f"model; first: {result['first_mismatch']}", file=sys.stderr)
        return 1
    return 0


def _probability(text: str) -> float:
    import argparse

    try:
        p = float(text)
    except ValueError:
        p = -1.0
    if not 0.0 <= p <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a probability in 0..1, not {text!r}")
    return p


def add_sim_command(sub, common) -> None:
    sp = sub.add_parser(
        "sim", help="run test images through the engine's RTL (Verilator or Icarus)",
        description="Build the engine's Verilog for the Program with P lanes (cached per "
                    "design and simulator under build/sim), run test images through it under "
                    "cocotb and compare every logit, class and cycle count (and with --trace "
                    "every trace record) with the golden model and the cycle model. Prints "
                    "accuracy, mismatches (must be 0), cycles per image and the simulation "
                    "speed; exits non-zero on any mismatch.")
    sp.add_argument("bundle", metavar="PROG_DIR", help="Program bundle folder")
    sp.add_argument("--simulator", choices=["verilator", "icarus"], default=None,
                    help="HDL simulator (default: $BITSPIKE_SIM, else verilator)")
    sp.add_argument("--lanes", type=int, default=8, metavar="P",
                    help="parallel output lanes (default: 8)")
    sp.add_argument("--images", default="10", metavar="N|all",
                    help="how many test images, or 'all' for the whole test split (default: 10)")
    sp.add_argument("--trace", action="store_true",
                    help="build the trace port and compare every record (potentials, levels, "
                         "spikes of every layer; slower)")
    sp.add_argument("--waves", default=None, metavar="FILE",
                    help="write the waveform to FILE (FST from Verilator, VCD from Icarus; a "
                         "separate build)")
    sp.add_argument("--ready-prob", type=_probability, default=1.0, metavar="P",
                    help="random back-pressure: outputs ready with this probability "
                         "(default: 1.0; below 1 the cycle count is not compared)")
    sp.add_argument("--idle-prob", type=_probability, default=0.0, metavar="P",
                    help="random idle input cycles before a pixel with this probability "
                         "(default: 0.0)")
    sp.add_argument("--seed", type=int, default=0,
                    help="seed of the random idles and back-pressure (default: 0)")
    common(sp)
    sp.set_defaults(func=cmd_sim)
