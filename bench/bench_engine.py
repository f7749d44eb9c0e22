"""Engine cycles per inference versus the lower bound ceil(active synaptic ops / P).

Run: ``.venv/bin/python bench/bench_engine.py`` (about a minute). The engine built so far runs
bit-serial dense Programs, so the figures are for digits-mlp (L = 15, T = 4, trained 5 epochs,
seed 0) over the 360 digits test images; the cycle counts come from the exact cycle model
(:mod:`bitspike.sw.cycles`), and the RTL is simulated on a few images per P in the same run to
show that its own cycle counter agrees.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lanes", default="1,4,8,16,32", help="P values (default: 1,4,8,16,32)")
    parser.add_argument("--rtl-images", type=int, default=2,
                        help="images simulated in RTL per P (default: 2; 0 skips)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    from engine_bench import run_engine

    from bitspike.hw.config import EngineConfig
    from bitspike.hw.engine import DenseEngine
    from bitspike.sw.convert import convert_model
    from bitspike.sw.cycles import engine_cycles
    from bitspike.sw.data import load_dataset
    from bitspike.sw.golden import run_program
    from bitspike.sw.train import TrainConfig, train

    torch.set_num_threads(2)
    data = load_dataset("digits")
    model, _ = train(TrainConfig(arch="digits-mlp", epochs=5), data, progress=False)
    program = convert_model(model, input_shape=(1, 8, 8), normalization=data.normalization)
    golden = run_program(program, data.x_test)
    rows = []
    print("engine cycles per inference, digits-mlp (bit-serial, L = 15), 360 test images")
    print(f"{'P':>3} {'cycles (mean)':>14} {'lower bound':>12} {'ratio':>6} {'overhead':>9} "
          f"{'RTL check':>22}")
    for lanes in (int(p) for p in args.lanes.split(",")):
        reports = [engine_cycles(program, golden, i, lanes=lanes)
                   for i in range(len(golden.logits))]
        mean = sum(r.total for r in reports) / len(reports)
        bound = sum(r.lower_bound for r in reports) / len(reports)
        check = "skipped"
        if args.rtl_images:
            start = time.perf_counter()
            dut = DenseEngine(config=EngineConfig.for_program(program, lanes=lanes),
                              program=program)
            got = run_engine(dut, list(data.x_test[:args.rtl_images]))
            same = all(c == reports[i].total and k == int(golden.classes[i])
                       for i, (_, k, c) in enumerate(got))
            check = (f"{'equal' if same else 'DIFFERENT'} on {len(got)} "
                     f"({time.perf_counter() - start:.1f} s)")
        rows.append({"lanes": lanes, "cycles_mean": mean, "lower_bound_mean": bound,
                     "ratio": mean / bound, "overhead_mean": mean - bound, "rtl": check})
        print(f"{lanes:>3} {mean:>14.0f} {bound:>12.0f} {mean / bound:>5.2f}x "
              f"{mean - bound:>9.0f} {check:>22}")
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
