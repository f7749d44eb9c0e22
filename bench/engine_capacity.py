"""What the engine needs for a larger network: memories, Verilog size and cycles vs the bound.

Run: ``.venv/bin/python bench/engine_capacity.py --arch vgg-small`` (about two minutes). The
network is built untrained (seeded) and fed random images: the figures are the engine's sizes
and its schedule's efficiency on that shape, not an accuracy. No dataset is needed.
"""

from __future__ import annotations

import argparse
import time

import torch


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vgg-small", help="architecture (default: vgg-small)")
    parser.add_argument("--lanes", default="8,32", help="P values (default: 8,32)")
    parser.add_argument("--verilog", action="store_true",
                        help="also convert to Verilog at the largest P (a minute or more)")
    args = parser.parse_args(argv)
    from bitspike.hw.config import EngineConfig
    from bitspike.hw.engine import Engine
    from bitspike.sw.convert import convert_model
    from bitspike.sw.cycles import engine_cycles
    from bitspike.sw.data import Normalization
    from bitspike.sw.golden import run_program
    from bitspike.sw.models import ARCHS, build_model

    torch.manual_seed(0)
    shape = ARCHS[args.arch].input_shape
    channels = shape[0]
    model = build_model(args.arch, levels=15).eval()
    program = convert_model(model, input_shape=shape, normalization=Normalization(
        255, (0.5,) * channels, (0.25,) * channels))
    images = torch.randint(0, 256, (2, *shape))
    golden = run_program(program, images)
    print(f"{args.arch}: input {shape}, {len(program.layers)} layers, random images, "
          "untrained weights")
    result = {"arch": args.arch, "rows": []}
    for lanes in (int(p) for p in args.lanes.split(",")):
        report = engine_cycles(program, golden, 0, lanes=lanes)
        config = EngineConfig.for_program(program, lanes=lanes)
        engine = Engine(config=config, program=program)
        lists = engine.list_memory_bits()
        engine._MustUse__silence = True  # built to report its sizes; elaborated only for --verilog
        cost = config.cost()
        row = {"lanes": lanes, "cycles": report.total, "lower_bound": report.lower_bound,
               "ratio": report.total / report.lower_bound, "weight_bits": cost["weights"],
               "list_bits": lists["total"]}
        result["rows"].append(row)
        print(f"  P = {lanes:>2}: {report.total:,} cycles, bound {report.lower_bound:,} "
              f"({row['ratio']:.3f}x); weights {cost['weights']:,} bits, event lists "
              f"{lists['total']:,} bits")
    if args.verilog:
        from amaranth.back import verilog
        start = time.perf_counter()
        text = verilog.convert(engine, name="bitspike_engine", emit_src=False)
        result["verilog_lines"] = len(text.splitlines())
        print(f"  Verilog at P = {lanes}: {result['verilog_lines']:,} lines in "
              f"{time.perf_counter() - start:.0f} s")
    return result


if __name__ == "__main__":
    main()
