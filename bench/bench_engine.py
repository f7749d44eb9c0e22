"""Engine cycles per inference versus the lower bound, and bit-serial versus rate on one engine.

Run: ``.venv/bin/python bench/bench_engine.py`` (about five minutes on 2 cores).

Part 1: for digits-cnn and digits-mlp (bit-serial, L = 15, trained 5 epochs, seed 0) over the
first ``--images`` digits test images, cycles per inference from the exact cycle model
(:mod:`bitspike.sw.cycles`) against ``ceil(active synaptic ops / P)`` for each P, with the
per-layer fixed overhead the docs state; the RTL is simulated on ``--rtl-images`` images for
P >= ``--rtl-min-lanes`` in the same run to show that the engine's own counter agrees.

Part 2: the same trained digits-cnn converted bit-serially (T = 4) and to rate-coded qcfs for
T in ``--rate-steps``; qcfs runs at the smallest T whose test accuracy (golden model, all test
images) is within ``--tolerance`` points of bit-serial's. Both run on the same engine
configuration kind (P lanes), cycles per inference from the cycle model, RTL-checked on one
image at the largest P.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def rtl_check(program, x, golden, reports, lanes: int) -> str:
    from bitspike.hw.config import EngineConfig
    from bitspike.hw.engine import Engine
    from bitspike.sim.engine_sim import run_engine
    start = time.perf_counter()
    dut = Engine(config=EngineConfig.for_program(program, lanes=lanes), program=program)
    got = run_engine(dut, list(x))
    same = all(c == reports[i].total and k == int(golden.classes[i])
               and [v for _, v in logits] == golden.logits[i].tolist()
               for i, (logits, k, c) in enumerate(got))
    return f"{'equal' if same else 'DIFFERENT'} on {len(got)} ({time.perf_counter() - start:.1f} s)"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lanes", default="1,4,8,16,32", help="P values (default: 1,4,8,16,32)")
    parser.add_argument("--rtl-images", type=int, default=1,
                        help="images simulated in RTL per P (default: 1; 0 skips)")
    parser.add_argument("--rtl-min-lanes", type=int, default=8,
                        help="simulate the RTL only for P >= this (default: 8)")
    parser.add_argument("--images", type=int, default=100,
                        help="test images for the cycle model (default: 100)")
    parser.add_argument("--archs", default="digits-cnn,digits-mlp",
                        help="architectures (default: digits-cnn,digits-mlp)")
    parser.add_argument("--rate-steps", default="4,8,16,32",
                        help="qcfs time steps tried in part 2 (default: 4,8,16,32; empty skips)")
    parser.add_argument("--tolerance", type=float, default=0.5,
                        help="accuracy points qcfs may trail bit-serial by (default: 0.5)")
    parser.add_argument("--epochs", type=int, default=5, help="training epochs (default: 5)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    from bitspike.sw.convert import convert_model
    from bitspike.sw.cycles import engine_cycles, fixed_cycles
    from bitspike.sw.data import load_dataset
    from bitspike.sw.golden import run_program
    from bitspike.sw.pipeline import convert_with
    from bitspike.sw.train import TrainConfig, train

    torch.set_num_threads(2)
    data = load_dataset("digits")
    lanes_list = [int(p) for p in args.lanes.split(",")]
    rows, trained = [], {}
    for arch in args.archs.split(","):
        model, meta = train(TrainConfig(arch=arch, epochs=args.epochs), data, progress=False)
        trained[arch] = (model, meta)
        program = convert_model(model, input_shape=(1, 8, 8), normalization=data.normalization)
        x = data.x_test[:args.images]
        golden = run_program(program, x)
        print(f"\nengine cycles per inference, {arch} (bit-serial, L = 15), {len(x)} test images")
        print(f"{'P':>3} {'cycles (mean)':>14} {'lower bound':>12} {'ratio':>6} "
              f"{'fixed':>6} {'(cycles-fixed)/bound':>21} {'RTL check':>24}")
        for lanes in lanes_list:
            reports = [engine_cycles(program, golden, i, lanes=lanes) for i in range(len(x))]
            mean = sum(r.total for r in reports) / len(reports)
            bound = sum(r.lower_bound for r in reports) / len(reports)
            fixed = fixed_cycles(program, lanes=lanes)
            check = "skipped"
            if args.rtl_images and lanes >= args.rtl_min_lanes:
                check = rtl_check(program, x[:args.rtl_images], golden, reports, lanes)
            rows.append({"arch": arch, "mode": "bitserial", "lanes": lanes,
                         "cycles_mean": mean, "lower_bound_mean": bound, "ratio": mean / bound,
                         "fixed": fixed, "ratio_after_fixed": (mean - fixed) / bound,
                         "rtl": check})
            print(f"{lanes:>3} {mean:>14.0f} {bound:>12.0f} {mean / bound:>5.3f}x {fixed:>6} "
                  f"{(mean - fixed) / bound:>20.3f}x {check:>24}")
    from bitspike.sw.plan import SCAN_LATENCY
    print("fixed = the load's cycle per pixel + per layer: start, bitmap row clears, the list "
          f"scanner's latency ({SCAN_LATENCY}), pipeline fill (3), idle check, buffer swap "
          "(docs/engine.md)")

    comparison = {}
    if args.rate_steps and "digits-cnn" in trained:
        comparison = compare_modes(args, data, *trained["digits-cnn"], lanes_list,
                                   convert_model, convert_with, run_program, engine_cycles)
    result = {"rows": rows, "bitserial_vs_rate": comparison}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return result


def compare_modes(args, data, model, meta, lanes_list, convert_model, convert_with, run_program,
                  engine_cycles) -> dict:
    """Part 2: bit-serial T = 4 against qcfs at the T that reaches the same accuracy."""
    x_all, y_all = data.x_test, data.y_test
    bitserial = convert_model(model, input_shape=(1, 8, 8), normalization=data.normalization)
    acc_bs = float((run_program(bitserial, x_all).classes == y_all).float().mean()) * 100
    print(f"\nbit-serial vs rate-coded qcfs on the same engine: digits-cnn (L = 15), accuracy "
          f"over {len(y_all)} test images")
    print(f"  bitserial T = {bitserial.t_steps}: {acc_bs:.2f} %")
    chosen = None
    tried = {}
    for steps in (int(s) for s in args.rate_steps.split(",")):
        rate = convert_with(model, meta, method="qcfs", steps=steps, data=data).program
        acc = float((run_program(rate, x_all).classes == y_all).float().mean()) * 100
        tried[steps] = acc
        print(f"  qcfs      T = {steps}: {acc:.2f} %")
        if chosen is None and acc >= acc_bs - args.tolerance:
            chosen = (steps, rate, acc)
    if chosen is None:
        print(f"  no qcfs T in {args.rate_steps} comes within {args.tolerance} points; "
              "comparing at the largest")
        steps = max(tried)
        chosen = (steps, convert_with(model, meta, method="qcfs", steps=steps,
                                      data=data).program, tried[steps])
    steps, rate, acc_rate = chosen
    x = x_all[:args.images]
    g_bs, g_rate = run_program(bitserial, x), run_program(rate, x)
    print(f"cycles per inference ({len(x)} test images): bitserial T = {bitserial.t_steps} vs "
          f"qcfs T = {steps} (accuracy {acc_bs:.2f} % vs {acc_rate:.2f} %)")
    print(f"{'P':>3} {'bitserial':>10} {'qcfs':>10} {'qcfs/bitserial':>15} {'RTL check':>40}")
    out = {"bitserial_accuracy": acc_bs, "qcfs_accuracy": tried, "qcfs_steps": steps,
           "tolerance": args.tolerance, "rows": []}
    for lanes in lanes_list:
        r_bs = [engine_cycles(bitserial, g_bs, i, lanes=lanes) for i in range(len(x))]
        r_rate = [engine_cycles(rate, g_rate, i, lanes=lanes) for i in range(len(x))]
        c_bs = sum(r.total for r in r_bs) / len(r_bs)
        c_rate = sum(r.total for r in r_rate) / len(r_rate)
        check = "skipped"
        if args.rtl_images and lanes == max(lanes_list):
            check = ("bitserial " + rtl_check(bitserial, x[:1], g_bs, r_bs, lanes) + ", qcfs "
                     + rtl_check(rate, x[:1], g_rate, r_rate, lanes))
        out["rows"].append({"lanes": lanes, "bitserial": c_bs, "qcfs": c_rate,
                            "ratio": c_rate / c_bs, "rtl": check})
        print(f"{lanes:>3} {c_bs:>10.0f} {c_rate:>10.0f} {c_rate / c_bs:>14.2f}x {check:>40}")
    return out


if __name__ == "__main__":
    main()
