"""Engine cycles per inference versus the lower bound ceil(active synaptic ops / P).

Run: ``.venv/bin/python bench/bench_engine.py`` (a few minutes). For digits-cnn and digits-mlp
(bit-serial, L = 15, trained 5 epochs, seed 0) over the first ``--images`` digits test images,
the cycle counts come from the exact cycle model (:mod:`bitspike.sw.cycles`); the RTL is
simulated on ``--rtl-images`` images for P >= ``--rtl-min-lanes`` in the same run to show that
the engine's own cycle counter agrees.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


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
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    from bitspike.hw.config import EngineConfig
    from bitspike.hw.engine import Engine
    from bitspike.sim.engine_sim import run_engine
    from bitspike.sw.convert import convert_model
    from bitspike.sw.cycles import engine_cycles
    from bitspike.sw.data import load_dataset
    from bitspike.sw.golden import run_program
    from bitspike.sw.train import TrainConfig, train

    torch.set_num_threads(2)
    data = load_dataset("digits")
    rows = []
    for arch in args.archs.split(","):
        model, _ = train(TrainConfig(arch=arch, epochs=5), data, progress=False)
        program = convert_model(model, input_shape=(1, 8, 8), normalization=data.normalization)
        x = data.x_test[:args.images]
        golden = run_program(program, x)
        print(f"\nengine cycles per inference, {arch} (bit-serial, L = 15), {len(x)} test images")
        print(f"{'P':>3} {'cycles (mean)':>14} {'lower bound':>12} {'ratio':>6} "
              f"{'overhead':>9} {'RTL check':>24}")
        for lanes in (int(p) for p in args.lanes.split(",")):
            reports = [engine_cycles(program, golden, i, lanes=lanes) for i in range(len(x))]
            mean = sum(r.total for r in reports) / len(reports)
            bound = sum(r.lower_bound for r in reports) / len(reports)
            check = "skipped"
            if args.rtl_images and lanes >= args.rtl_min_lanes:
                start = time.perf_counter()
                dut = Engine(config=EngineConfig.for_program(program, lanes=lanes),
                             program=program)
                got = run_engine(dut, list(x[:args.rtl_images]))
                same = all(c == reports[i].total and k == int(golden.classes[i])
                           for i, (_, k, c) in enumerate(got))
                check = (f"{'equal' if same else 'DIFFERENT'} on {len(got)} "
                         f"({time.perf_counter() - start:.1f} s)")
            rows.append({"arch": arch, "lanes": lanes, "cycles_mean": mean,
                         "lower_bound_mean": bound, "ratio": mean / bound,
                         "overhead_mean": mean - bound, "rtl": check})
            print(f"{lanes:>3} {mean:>14.0f} {bound:>12.0f} {mean / bound:>5.2f}x "
                  f"{mean - bound:>9.0f} {check:>24}")
    print("overhead = cycles - bound: pixel loading, and per group of P outputs the clear, "
          "plane shifts, bias, pipeline drain, T_out fire cycles, clip and the event writes "
          "(docs/engine.md)")
    print("bit-serial vs rate-coded qcfs on the same engine: not measurable yet (the rate "
          "datapath is not built)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return {"rows": rows}


if __name__ == "__main__":
    main()
