"""Benchmark of the integer golden model, the conversion and the bundle I/O (CPU only).

Run with ``.venv/bin/python bench/bench_golden.py`` (or ``make bench``); ``--quick`` is the short
CI smoke run, ``--json PATH`` also writes every figure as JSON. docs/benchmarks.md holds a real run.

What is measured, per architecture (digits-cnn and digits-mlp trained for a few epochs here,
vgg-small untrained with a fixed seed), all bit-serial with L = 15:

* golden-model throughput in images/s: ``run_program(program, levels)`` on one batch, with
  ``trace=False`` and ``trace=True`` (input validation included, as callers see it);
* the float ANN's throughput on the same batch: ``model(x)`` in float32 eval mode under
  ``torch.inference_mode()`` on the already-normalized input, and the cost of exactness, i.e.
  golden time / float time, from the same run;
* the speed ratios the golden model is held to, measured in one run on the whole digits test
  split (batch 360) with one torch thread and the three callables timed in interleaved rounds:
  the float ANN, the bit-serial golden model and the rate-coded one (qcfs, T = 8) of the same
  trained digits-cnn, without a trace; targets: bit-serial at most 3x, rate at most 7x slower
  than the float ANN;
* conversion time (``convert_model``: extract + fold + quantize) and bundle write/read time
  (``write_bundle`` / ``read_bundle``, which verifies hashes, hex == bin and the layer table);
  the read-back Program is checked to give the same golden logits as the converted one.

Each figure is the median of several timed samples after one warm-up call; calls shorter than the
sample length are repeated inside a sample (``inner``) so that timer noise does not dominate.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from bitspike.sw.convert import convert_model
from bitspike.sw.data import Normalization, load_dataset
from bitspike.sw.golden import run_program
from bitspike.sw.images import read_bundle, write_bundle
from bitspike.sw.models import ARCHS, build_model
from bitspike.sw.rate import convert_rate
from bitspike.sw.train import TrainConfig, train

LEVELS = 15
SEED = 0
DIGITS_ARCHS = ("digits-cnn", "digits-mlp")
DIGITS_BATCHES = (1, 32, 360)  # 360 = the whole digits test split
VGG_BATCHES = (1, 16)
VGG_NORM = Normalization(255, (0.0, 0.0, 0.0), (0.25, 0.25, 0.25))
#: The rate-coded Program of the ratio measurement: qcfs with T = 8 steps.
RATE_METHOD, RATE_STEPS = "qcfs", 8
#: At most this many times slower than the float ANN (batch 360, one thread).
TARGETS = {"bitserial": 3.0, "rate": 7.0}


@dataclass(frozen=True)
class Settings:
    """How hard to measure: samples per figure and the shortest sample in seconds."""

    repeats: int
    min_sample_s: float
    io_repeats: int
    train_epochs: int


FULL = Settings(repeats=9, min_sample_s=0.15, io_repeats=5, train_epochs=5)
QUICK = Settings(repeats=3, min_sample_s=0.01, io_repeats=2, train_epochs=5)


@dataclass
class Timing:
    """Seconds per call: median, min and max over ``repeats`` samples of ``inner`` calls each."""

    median: float
    min: float
    max: float
    repeats: int
    inner: int

    @property
    def spread(self) -> float:
        """(max - min) / median: how stable the figure is."""
        return (self.max - self.min) / self.median if self.median > 0 else 0.0


def time_call(fn: Callable[[], object], *, repeats: int, min_sample_s: float) -> Timing:
    """Warm up once, then time ``repeats`` samples of ``fn``; return seconds per call."""
    t0 = time.perf_counter()
    fn()  # warm-up (first-call allocations, lazy init)
    one = time.perf_counter() - t0
    if one < min_sample_s:  # a cheap call: time a warm one to size the inner loop
        t0 = time.perf_counter()
        fn()
        one = time.perf_counter() - t0
    inner = max(1, math.ceil(min_sample_s / max(one, 1e-9)))
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t0) / inner)
    return Timing(statistics.median(samples), min(samples), max(samples), repeats, inner)


# ---------------------------------------------------------------------------------------------
# machine and models


def machine_facts() -> dict:
    cpu_model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    return {"cpu_model": cpu_model, "cpu_count": os.cpu_count(), "cpus_usable": usable,
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "numpy": np.__version__, "python": platform.python_version(),
            "platform": platform.platform()}


class CpuMonitor:
    """CPU time used by *other* processes while the benchmark runs (Linux ``/proc/stat``).

    On a shared machine other processes steal the cores torch's threads wait on, and the figures
    become meaningless (tiny calls slow down 10-100x); this makes that visible in the report.
    This process's finished children count as its own (bench_sim's simulators are children).
    """

    def __init__(self):
        self.start = self._sample()

    @staticmethod
    def _sample():
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        busy = sum(fields[:3]) + sum(fields[5:8])  # user nice system . . irq softirq steal
        t = os.times()
        own = t.user + t.system + t.children_user + t.children_system
        return busy / os.sysconf("SC_CLK_TCK"), own, time.perf_counter()

    def other_cpus(self) -> float | None:
        """Average number of CPUs busy with other processes since construction."""
        end = self._sample()
        if self.start is None or end is None or end[2] <= self.start[2]:
            return None
        other = (end[0] - self.start[0]) - (end[1] - self.start[1])
        return max(0.0, other / (end[2] - self.start[2]))


def idle_check(seconds: float = 0.5) -> float | None:
    """CPUs busy with other processes right now (sampled over ``seconds``)."""
    mon = CpuMonitor()
    time.sleep(seconds)
    return mon.other_cpus()


@dataclass
class Subject:
    """One architecture under test: its float model, inputs and how the model was made."""

    arch: str
    model: torch.nn.Module
    normalization: Normalization
    inputs: torch.Tensor  # integer levels, the largest batch; smaller batches are prefixes
    batches: tuple[int, ...]
    provenance: str
    info: dict


def digits_subject(arch: str, data, epochs: int) -> Subject:
    t0 = time.perf_counter()
    model, meta = train(TrainConfig(arch=arch, levels=LEVELS, epochs=epochs, seed=SEED), data,
                        progress=False)
    seconds = time.perf_counter() - t0
    acc = meta.metrics["test_accuracy"]
    model.eval()
    return Subject(arch, model, data.normalization, data.x_test, DIGITS_BATCHES,
                   f"trained {epochs} epochs, seed {SEED} ({seconds:.1f} s, float test acc "
                   f"{100 * acc:.1f} %); inputs: the digits test split",
                   {"trained": True, "epochs": epochs, "seed": SEED, "train_seconds": seconds,
                    "float_test_accuracy": acc, "input": "digits test split (8x8, levels 0..16)"})


def vgg_subject() -> Subject:
    torch.manual_seed(SEED)
    model = build_model("vgg-small", levels=LEVELS).eval()
    gen = torch.Generator().manual_seed(SEED + 1)
    inputs = torch.randint(0, 256, (max(VGG_BATCHES), *ARCHS["vgg-small"].input_shape),
                           generator=gen, dtype=torch.int64)
    return Subject("vgg-small", model, VGG_NORM, inputs, VGG_BATCHES,
                   f"untrained, seed {SEED}; inputs: random 32x32x3 levels 0..255 "
                   f"(seed {SEED + 1})",
                   {"trained": False, "seed": SEED,
                    "input": "random 32x32x3 levels 0..255, Normalization(255, 0, 0.25)"})


def convert(subject: Subject):
    return convert_model(subject.model, input_shape=ARCHS[subject.arch].input_shape,
                         normalization=subject.normalization,
                         meta={"arch": subject.arch, "levels": LEVELS})


# ---------------------------------------------------------------------------------------------
# measurements


def bench_conversion(subject: Subject, settings: Settings, workdir: Path) -> tuple[dict, object]:
    kw = {"repeats": settings.io_repeats, "min_sample_s": 0.0}
    t_conv = time_call(lambda: convert(subject), **kw)
    program = convert(subject)
    folder = workdir / subject.arch
    t_write = time_call(lambda: write_bundle(program, folder), **kw)
    last = {}

    def read():
        last["program"] = read_bundle(folder)

    t_read = time_call(read, **kw)
    back = last["program"]
    x = subject.inputs[:min(len(subject.inputs), 32)]
    same = bool(torch.equal(run_program(program, x).logits, run_program(back, x).logits))
    if not same:
        raise AssertionError(f"{subject.arch}: the read-back bundle gives different logits")
    size = sum(f.stat().st_size for f in folder.iterdir())
    req = program.requirements()
    return {"arch": subject.arch, "convert": asdict(t_conv), "write": asdict(t_write),
            "read": asdict(t_read), "bundle_bytes": size, "roundtrip_identical": same,
            "layers": req["layers"], "weight_words": req["weight_words"],
            "acc_bits": req["acc_bits"]}, program


def bench_throughput(subject: Subject, program, settings: Settings) -> list[dict]:
    kw = {"repeats": settings.repeats, "min_sample_s": settings.min_sample_s}
    rows = []
    for batch in subject.batches:
        levels = subject.inputs[:batch].contiguous()
        x = subject.normalization.apply(levels)
        plain = run_program(program, levels)
        traced = run_program(program, levels, trace=True)
        if not torch.equal(plain.logits, traced.logits):
            raise AssertionError(f"{subject.arch}: trace=True changed the logits")

        def run_float(x=x):
            with torch.inference_mode():
                return subject.model(x)

        t_float = time_call(run_float, **kw)
        t_gold = time_call(lambda levels=levels: run_program(program, levels), **kw)
        t_trace = time_call(lambda levels=levels: run_program(program, levels, trace=True), **kw)
        rows.append({
            "arch": subject.arch, "batch": batch,
            "float_img_s": batch / t_float.median,
            "golden_img_s": batch / t_gold.median,
            "golden_trace_img_s": batch / t_trace.median,
            "golden_ms_per_batch": 1e3 * t_gold.median,
            "cost_golden_vs_float": t_gold.median / t_float.median,
            "cost_trace_vs_float": t_trace.median / t_float.median,
            "float": asdict(t_float), "golden": asdict(t_gold), "golden_trace": asdict(t_trace),
        })
    return rows


def bench_ratios(subject: Subject, program, settings: Settings) -> dict:
    """The golden models against the float ANN: the whole digits test split in one batch, one
    torch thread, interleaved rounds (each round times the float ANN, the bit-serial and the
    rate-coded golden model once), medians over the rounds."""
    rate_program, _ = convert_rate(subject.model, method=RATE_METHOD, steps=RATE_STEPS,
                                   input_shape=ARCHS[subject.arch].input_shape,
                                   normalization=subject.normalization,
                                   meta={"arch": subject.arch, "levels": LEVELS})
    levels = subject.inputs.contiguous()
    x = subject.normalization.apply(levels)

    def run_float():
        with torch.inference_mode():
            return subject.model(x)

    calls = {"float": run_float,
             "bitserial": lambda: run_program(program, levels),
             "rate": lambda: run_program(rate_program, levels)}
    # the fast paths are checked against the traced ones (which run every step) here too
    for prog in (program, rate_program):
        if not torch.equal(run_program(prog, levels).logits,
                           run_program(prog, levels, trace=True).logits):
            raise AssertionError(f"{prog.mode}: the trace-free golden model differs")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for fn in calls.values():
            fn()  # warm-up
        samples = {name: [] for name in calls}
        rounds = max(3, settings.repeats)
        for _ in range(rounds):
            for name, fn in calls.items():
                start, n = time.perf_counter(), 0
                while True:
                    fn()
                    n += 1
                    elapsed = time.perf_counter() - start
                    if elapsed >= settings.min_sample_s:
                        break
                samples[name].append(elapsed / n)
    finally:
        torch.set_num_threads(previous)
    median = {name: statistics.median(v) for name, v in samples.items()}
    batch = len(levels)
    return {
        "arch": subject.arch, "batch": batch, "threads": 1, "rounds": rounds,
        "rate_method": RATE_METHOD, "rate_steps": RATE_STEPS, "targets": dict(TARGETS),
        "float_images_per_second": batch / median["float"],
        "bitserial_images_per_second": batch / median["bitserial"],
        "rate_images_per_second": batch / median["rate"],
        "bitserial_slowdown": median["bitserial"] / median["float"],
        "rate_slowdown": median["rate"] / median["float"],
        "seconds": {name: {"median": median[name], "min": min(v), "max": max(v)}
                    for name, v in samples.items()},
    }


# ---------------------------------------------------------------------------------------------
# report


def _rate(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:,.1f}"


def _spread(t: dict) -> str:
    return f"{100 * (t['max'] - t['min']) / t['median']:.0f}%"


def format_report(result: dict) -> str:
    m = result["machine"]
    s = result["settings"]
    out = [
        "bitspike golden-model benchmark (bit-serial, L = 15)",
        f"machine: {m['cpu_model']}; {m['cpu_count']} CPUs ({m['cpus_usable']} usable); "
        f"torch {m['torch']} with {m['torch_threads']} threads; numpy {m['numpy']}; "
        f"python {m['python']}",
        f"mode: {'quick' if result['quick'] else 'full'} ({s['repeats']} samples of >= "
        f"{s['min_sample_s']} s per throughput figure, {s['io_repeats']} for conversion/IO; "
        "median after one warm-up call)",
        "",
        "models:",
    ]
    for arch, info in result["models"].items():
        out.append(f"  {arch:<11} {info['provenance']}")
    out += [
        "",
        "Throughput, images/s (median). cost = golden time / float time in this run; "
        "spread = (max-min)/median of the golden samples",
        f"{'arch':<11} {'batch':>5} {'float ANN':>10} {'golden':>9} {'golden+trace':>12} "
        f"{'ms/batch':>9} {'cost':>7} {'cost+trace':>10} {'spread':>7}",
    ]
    out.append("-" * len(out[-1]))
    for r in result["throughput"]:
        out.append(f"{r['arch']:<11} {r['batch']:>5} {_rate(r['float_img_s']):>10} "
                   f"{_rate(r['golden_img_s']):>9} {_rate(r['golden_trace_img_s']):>12} "
                   f"{r['golden_ms_per_batch']:>9.2f} {r['cost_golden_vs_float']:>6.1f}x "
                   f"{r['cost_trace_vs_float']:>9.1f}x {_spread(r['golden']):>7}")
    q = result["ratios"]
    verdict = {k: "meets" if q[f"{k}_slowdown"] <= q["targets"][k] else "MISSES"
               for k in ("bitserial", "rate")}
    out += [
        "",
        f"Golden model vs float ANN ({q['arch']}, batch {q['batch']} = the digits test split, "
        f"{q['threads']} torch thread, {q['rounds']} interleaved rounds, medians; no trace):",
        f"  float ANN             {_rate(q['float_images_per_second']):>9} images/s",
        f"  bit-serial golden     {_rate(q['bitserial_images_per_second']):>9} images/s  "
        f"{q['bitserial_slowdown']:5.2f}x slower ({verdict['bitserial']} the "
        f"{q['targets']['bitserial']:g}x target)",
        f"  rate golden ({q['rate_method']}, T = {q['rate_steps']}) "
        f"{_rate(q['rate_images_per_second']):>7} images/s  {q['rate_slowdown']:5.2f}x slower "
        f"({verdict['rate']} the {q['targets']['rate']:g}x target)",
    ]
    out += [
        "",
        "Conversion and bundle I/O, ms (median); read = read_bundle with full verification",
        f"{'arch':<11} {'layers':>6} {'weights':>9} {'convert':>9} {'write':>9} {'read':>9} "
        f"{'bundle':>10} {'round trip':>10}",
    ]
    out.append("-" * len(out[-1]))
    for c in result["conversion"]:
        out.append(f"{c['arch']:<11} {c['layers']:>6} {c['weight_words']:>9,} "
                   f"{1e3 * c['convert']['median']:>9.2f} {1e3 * c['write']['median']:>9.1f} "
                   f"{1e3 * c['read']['median']:>9.1f} {c['bundle_bytes'] / 1024:>7.0f} KiB "
                   f"{'identical' if c['roundtrip_identical'] else 'DIFFERS':>10}")
    out += ["", f"total benchmark time {result['total_seconds']:.1f} s"]
    during, before = result["other_cpus_during"], result["other_cpus_before"]
    if during is not None:
        out.append(f"other processes kept {during:.2f} CPUs busy on average during the run "
                   f"({before:.2f} just before it)")
        if max(during, before or 0.0) > 0.25:
            out.append("WARNING: the machine was not idle; the figures are unreliable "
                       "(torch threads wait for cores that other processes hold): rerun idle")
    return "\n".join(out)


def run(settings: Settings, *, quick: bool, threads: int) -> dict:
    busy_before = idle_check()
    monitor = CpuMonitor()
    start = time.perf_counter()
    machine = machine_facts()
    data = load_dataset("digits")
    subjects = [digits_subject(a, data, settings.train_epochs) for a in DIGITS_ARCHS]
    subjects.append(vgg_subject())
    conversion, throughput, models, ratios = [], [], {}, None
    with tempfile.TemporaryDirectory(prefix="bitspike-bench-") as tmp:
        for subject in subjects:
            conv, program = bench_conversion(subject, settings, Path(tmp))
            conversion.append(conv)
            throughput += bench_throughput(subject, program, settings)
            if subject.arch == "digits-cnn":
                ratios = bench_ratios(subject, program, settings)
            models[subject.arch] = {"provenance": subject.provenance, **subject.info,
                                    "summary": ARCHS[subject.arch].summary}
    keys = ("float_images_per_second", "bitserial_images_per_second", "rate_images_per_second",
            "bitserial_slowdown", "rate_slowdown")
    return {**{k: ratios[k] for k in keys}, "ratios": ratios,
            "quick": quick, "threads": threads, "machine": machine, "settings": asdict(settings),
            "levels": LEVELS, "models": models, "throughput": throughput,
            "conversion": conversion, "total_seconds": time.perf_counter() - start,
            "other_cpus_before": busy_before, "other_cpus_during": monitor.other_cpus()}


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark, print the table, optionally write JSON; return the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer, shorter samples (CI smoke run)")
    parser.add_argument("--json", metavar="PATH", nargs="?", const="-", default=None,
                        help="print every figure as one JSON object on stdout (the table goes "
                             "to stderr), or with PATH write it there")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args(argv)
    previous = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        result = run(QUICK if args.quick else FULL, quick=args.quick, threads=args.threads)
    finally:
        torch.set_num_threads(previous)  # leave an in-process caller (tests) as it was
    result["table"] = format_report(result)
    if args.json == "-":
        print(result["table"], file=sys.stderr, flush=True)
        print(json.dumps(result), flush=True)
        return result
    print(result["table"], flush=True)
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
