"""The ``bitspike`` command line.

Every command that prints results also takes ``--json`` (one JSON object on stdout, progress bars
and messages on stderr) and exits non-zero with the error on stderr when it fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .errors import BitspikeError

DEFAULT_DEMO_DIR = "out/demo"
DEFAULT_LANES = 8  # engine lanes P of `eval --outputs` (the same default as `rtl --lanes`)


def _emit(args, result: dict, text: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(result, default=_json_default))
    else:
        print(text)


def _json_default(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "to_dict"):
        return o.to_dict()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f} %"


# ---------------------------------------------------------------------------------------------
# train


def cmd_train(args) -> int:
    import torch

    from .checkpoint import save_checkpoint
    from .data import load_dataset
    from .train import TrainConfig, train

    torch.set_num_threads(max(1, args.threads))
    try:
        cfg = TrainConfig(arch=args.arch, levels=args.levels, epochs=args.epochs,
                          batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                          bit_l1=args.bit_l1, per_channel=args.per_channel,
                          activation=args.activation)
    except ValueError as e:
        raise BitspikeError(str(e)) from None
    data = load_dataset(args.dataset, split_seed=args.split_seed)
    model, meta = train(cfg, data, progress=not args.quiet)
    save_checkpoint(args.out, model, meta)
    result = {"checkpoint": str(args.out), **meta.to_dict()}
    _emit(args, result,
          f"trained {cfg.arch} (L={cfg.levels}) on {data.name} in "
          f"{meta.metrics['train_seconds']:.1f} s: float test accuracy "
          f"{_pct(meta.metrics['test_accuracy'])}\ncheckpoint: {args.out}")
    return 0


# ---------------------------------------------------------------------------------------------
# convert


def _convert(args, path: str):
    from .pipeline import convert_checkpoint

    return convert_checkpoint(path, method=args.method, steps=args.steps, tau=args.tau,
                              weight_bits=args.weight_bits, acc_bits=args.acc_bits,
                              arch=args.arch, levels=args.levels, activation=args.activation,
                              dataset=args.dataset)


def _describe(program, source: str) -> str:
    if program.mode == "bitserial":
        return (f"method bitserial on a {source} source: T = {program.t_steps} steps per layer, "
                "deferred fire/reset")
    probe = f" + tau = {program.tau} probe steps" if program.tau else ""
    return (f"method {program.method} on a {source} source: rate-coded IF, T = "
            f"{program.t_steps}{probe} (latency {program.latency} steps)")


def _span(values) -> str:
    if values is None:
        return "-"
    lo, hi = int(values.min()), int(values.max())
    return str(lo) if lo == hi else f"{lo}..{hi}"


def _program_table(program) -> str:
    rate = program.mode == "rate"
    thr = "Theta" if rate else "D"
    rows = [f"{'layer':<7} {'kind':<11} {'in':<12} {'out':<12} {'T_in':>4} {'T_out':>5} "
            f"{'L':>4} {thr:>10} {'|B|max':>7}" + (f" {'V0':>10}" if rate else "")]
    for lay in program.layers:
        b = "-" if lay.bias is None else str(int(abs(lay.bias).max()))
        rows.append(f"{lay.name:<7} {lay.kind:<11} {'x'.join(map(str, lay.in_shape)):<12} "
                    f"{'x'.join(map(str, lay.out_shape)):<12} {lay.t_in:>4} {lay.t_out:>5} "
                    f"{lay.levels:>4} {_span(lay.threshold):>10} {b:>7}"
                    + (f" {_span(lay.v_init):>10}" if rate else ""))
    return "\n".join(rows)


def cmd_convert(args) -> int:
    from .images import write_bundle

    t0 = time.perf_counter()
    conv = _convert(args, args.checkpoint)
    program = conv.program
    manifest = write_bundle(program, args.out)
    seconds = time.perf_counter() - t0
    req = manifest["requirements"]
    notes = "".join(f"\nnote: {n}" for n in program.notes)
    _emit(args, {"bundle": str(args.out), "seconds": round(seconds, 3), "source": conv.source,
                 "program": program.summary()},
          f"{_describe(program, conv.source)}\n{_program_table(program)}\n\n"
          f"needs: {req['weight_bits']}-bit weights, "
          f"{req['acc_bits']}-bit accumulators, T up to {req['max_t']}, "
          f"{req['weight_words']} weight words\nwrote {args.out}/ ({len(manifest['sha256'])} "
          f"files + manifest.json) in {seconds:.2f} s{notes}")
    return 0


# ---------------------------------------------------------------------------------------------
# eval


def _format_eval(report, source: str) -> str:
    lines = [f"{source}: {report.images} test images of {report.dataset}"]
    if report.float_accuracy is not None:
        lines.append(f"  float ANN accuracy     {_pct(report.float_accuracy)}")
    if report.float_snn_accuracy is not None:
        lines.append(f"  float SNN accuracy     {_pct(report.float_snn_accuracy)}")
    lines.append(f"  integer model accuracy {_pct(report.int_accuracy)}")
    if report.float_accuracy is not None:
        ref = report.float_snn_accuracy if report.float_snn_accuracy is not None else \
            report.float_accuracy
        what = "float SNN" if report.float_snn_accuracy is not None else "float"
        lines.append(f"  gap ({what} - int)  {100 * (ref - report.int_accuracy):+.2f} points; "
                     f"classes agree on {_pct(report.class_agreement)}")
        lines.append(f"  per-layer mismatch ({report.compared}):")
        for m in report.layers:
            lines.append(f"    {m.name:<7} {m.neurons:>6} neurons  {100 * m.mismatched:6.2f} % "
                         f"differ  mean |diff| {m.mean_abs_diff:.4f}  max {m.max_abs_diff}")
    return "\n".join(lines)


def cmd_eval(args) -> int:
    from .evaluate import (
        check_outputs_path,
        compare_float_int,
        dataset_for,
        evaluate_program,
        reference_outputs,
        write_outputs,
    )
    from .images import read_bundle

    target = Path(args.target)
    if args.outputs:
        check_outputs_path(args.outputs)  # before any work
    if target.is_dir():
        if args.backend == "float":
            raise BitspikeError(f"{target} is a Program bundle: it holds only integers; pass the "
                                "checkpoint for --backend float")
        program = read_bundle(target)
        report = evaluate_program(program, dataset_for(program.meta))
    else:
        conv = _convert(args, str(target))
        program = conv.program
        report = compare_float_int(conv.model, program, dataset_for(program.meta),
                                   float_program=conv.float_program)
    result = {"target": str(target), "backend": args.backend, "method": program.method,
              "t_steps": program.t_steps, "tau": program.tau, "latency": program.latency,
              "accuracy": (report.float_snn_accuracy if report.float_snn_accuracy is not None
                           else report.float_accuracy) if args.backend == "float"
              else report.int_accuracy, **report.to_dict()}
    text = _format_eval(report, f"{target} ({program.method}, latency {program.latency})")
    if args.outputs:
        outputs = reference_outputs(program, dataset_for(program.meta), lanes=args.lanes)
        path = write_outputs(args.outputs, outputs)
        result["outputs"] = {"file": str(path), "images": len(outputs["index"]),
                             "lanes": args.lanes}
        text += (f"\nwrote {path}: per test image index, label, class, logits, engine cycles "
                 f"(P = {args.lanes}) and input levels")
    _emit(args, result, text)
    return 0


# ---------------------------------------------------------------------------------------------
# demo


def cmd_demo(args) -> int:
    from .demo import run_demo

    result = run_demo(Path(args.out), retrain=args.retrain, progress=not args.json)
    _emit(args, result, result.pop("text"))
    return 0


# ---------------------------------------------------------------------------------------------
# compare


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, not {text!r}") \
            from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one value")
    return values


def cmd_compare(args) -> int:
    from .compare import run_compare

    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    result = run_compare(dataset=args.dataset, arch=args.arch, levels=args.levels,
                         steps=args.steps, methods=methods, tau=args.tau, epochs=args.epochs,
                         out=Path(args.out), progress=not args.json)
    text = Path(result["files"]["markdown"]).read_text()
    _emit(args, result, text + "\nwrote " + ", ".join(result["files"].values()))
    return 0


# ---------------------------------------------------------------------------------------------
# rtl


def cmd_rtl(args) -> int:
    from amaranth.back import verilog

    from ..hw.config import EngineConfig
    from ..hw.engine import Engine
    from .cycles import predict
    from .evaluate import dataset_for
    from .images import read_bundle

    program = read_bundle(args.bundle)
    config = EngineConfig.for_program(program, lanes=args.lanes)
    engine = Engine(config=config, program=program)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = verilog.convert(engine, name="bitspike_engine", emit_src=False)
    (out / "bitspike_engine.v").write_text(text)
    (out / "engine_config.json").write_text(config.to_json() + "\n")
    data = dataset_for(program.meta)
    reports = predict(program, data.x_test[:args.images], lanes=args.lanes)
    totals = [r.total for r in reports]
    bound = sum(r.lower_bound for r in reports) / len(reports)
    mean = sum(totals) / len(totals)
    result = {"verilog": str(out / "bitspike_engine.v"), "config": config.to_dict(),
              "cost": config.cost(), "list_memory_bits": engine.list_memory_bits(),
              "cycles": {"images": len(totals), "mean": mean, "min": min(totals),
                         "max": max(totals), "lower_bound_mean": bound}}
    lines = []
    if args.simulate or args.vcd:
        sim = _simulate_rtl(engine, program, data, args)
        result["simulation"] = sim
        lines.append(
            f"RTL simulation (amaranth.sim, {sim['images']} test images"
            f"{', waveform ' + sim['vcd'] if sim['vcd'] else ''}, {sim['seconds']:.1f} s): "
            f"logits equal on {sim['logits_equal']}, classes equal on {sim['classes_equal']}, "
            f"cycles equal to the cycle model on {sim['cycles_equal']}")
    _emit(args, result, "\n".join([
        f"wrote {out / 'bitspike_engine.v'} ({len(text.splitlines())} lines) and "
        f"{out / 'engine_config.json'}",
        "config: " + ", ".join(f"{k}={v}" for k, v in config.to_dict().items()
                               if k not in ("format", "format_version")),
        "memory bits: " + ", ".join(f"{k} {v:,}" for k, v in config.cost().items()) + "; "
        "event lists " + ", ".join(f"{k} {v:,}" for k, v in engine.list_memory_bits().items()),
        f"cycles per inference over {len(totals)} test images (cycle model, exact for this "
        f"engine): mean {mean:.0f}, min {min(totals)}, max {max(totals)}; lower bound "
        f"ceil(active synaptic ops / P) = {bound:.0f} ({mean / bound:.2f}x)"] + lines))
    sim = result.get("simulation")
    if sim and not sim["logits_equal"] == sim["classes_equal"] == sim["cycles_equal"] == \
            sim["images"]:
        print("error: the RTL disagrees with the golden model or the cycle model (a bug: "
              "please report it with this bundle)", file=sys.stderr)
        return 1
    return 0


def _simulate_rtl(engine, program, data, args) -> dict:
    """Run the first ``--simulate`` test images through the engine in amaranth.sim."""
    import time

    from ..sim.engine_sim import run_engine
    from .cycles import engine_cycles
    from .golden import run_program

    count = max(args.simulate, 1)
    x = data.x_test[:count]
    golden = run_program(program, x)
    start = time.perf_counter()

    def progress(n, _result):
        if not args.json:
            print(f"simulated image {n + 1}/{count} ({time.perf_counter() - start:.1f} s)",
                  file=sys.stderr, flush=True)

    got = run_engine(engine, list(x), vcd=args.vcd, on_result=progress)
    logits_ok = sum([v for _, v in logits] == golden.logits[i].tolist()
                    for i, (logits, _, _) in enumerate(got))
    classes_ok = sum(k == int(golden.classes[i]) for i, (_, k, _) in enumerate(got))
    cycles_ok = sum(c == engine_cycles(program, golden, i, lanes=args.lanes).total
                    for i, (_, _, c) in enumerate(got))
    return {"images": len(got), "logits_equal": logits_ok, "classes_equal": classes_ok,
            "cycles_equal": cycles_ok, "cycles": [c for _, _, c in got],
            "seconds": time.perf_counter() - start, "vcd": args.vcd}


# ---------------------------------------------------------------------------------------------
# doctor


def cmd_doctor(args) -> int:
    from .doctor import all_required_ok, format_report, run_checks

    progress = None if args.json else (lambda name: print(f"checking {name} ...",
                                                          file=sys.stderr, flush=True))
    checks = run_checks(full=not args.quick, progress=progress)
    ok = all_required_ok(checks)
    _emit(args, {"ok": ok, "checks": [c.to_dict() for c in checks]}, format_report(checks))
    return 0 if ok else 1


# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from .compare import DEFAULT_STEPS
    from .models import ARCHS
    from .program import METHODS
    from .qcfs import ACTIVATIONS
    from .rate import DEFAULT_TAU

    p = argparse.ArgumentParser(
        prog="bitspike",
        description="Converted spiking neural networks (bit-serial QCFS conversion) on open FPGAs.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sp):
        sp.add_argument("--json", action="store_true",
                        help="print one JSON object on stdout instead of text")

    def width_args(sp):
        sp.add_argument("--method", choices=list(METHODS), default="bitserial",
                        help="conversion: bitserial (exact, T = ceil(log2(L+1))), or a rate-coded "
                             "IF method: qcfs, deng-gu, data-driven, srp (default: bitserial)")
        sp.add_argument("--steps", type=int, default=None, metavar="T",
                        help="time steps T (rate methods; default: L)")
        sp.add_argument("--tau", type=int, default=None, metavar="N",
                        help=f"srp probe steps before the T steps (default: {DEFAULT_TAU})")
        sp.add_argument("--activation", choices=ACTIVATIONS, default=None,
                        help="source activation of a bare state_dict (default: qcfs)")
        sp.add_argument("--weight-bits", type=int, default=8, metavar="N",
                        help="signed weight width (default: 8)")
        sp.add_argument("--acc-bits", type=int, default=32, metavar="N",
                        help="largest accumulator width allowed (default: 32); the Program "
                             "records the width it needs")
        sp.add_argument("--arch", choices=sorted(ARCHS), default=None,
                        help="architecture (only needed for a bare state_dict)")
        sp.add_argument("--levels", type=int, default=None, metavar="L",
                        help="QCFS levels L (only needed for a bare state_dict)")
        sp.add_argument("--dataset", default=None,
                        help="dataset (only needed when the checkpoint records none)")

    sp = sub.add_parser("train", help="train a QCFS source network",
                        description="Train a QCFS network on a fixed split with a fixed seed; "
                                    "the checkpoint carries its metadata.")
    sp.add_argument("--dataset", default="digits", help="dataset (default: digits, embedded)")
    sp.add_argument("--arch", choices=sorted(ARCHS), default="digits-cnn",
                    help="architecture (default: digits-cnn)")
    sp.add_argument("--levels", type=int, default=15, metavar="L",
                    help="QCFS levels L; bit-serial needs T = ceil(log2(L+1)) (default: 15)")
    sp.add_argument("--epochs", type=int, default=40, help="epochs (default: 40)")
    sp.add_argument("--batch-size", type=int, default=64, help="batch size (default: 64)")
    sp.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default: 3e-3)")
    sp.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    sp.add_argument("--split-seed", type=int, default=0, help="train/test split seed (default: 0)")
    sp.add_argument("--bit-l1", type=float, default=0.0, metavar="COEF",
                    help='bit-sparsity regularizer coefficient (Eq. 10-11 of "When SNN Meets '
                         'ANN"; default: off)')
    sp.add_argument("--per-channel", action="store_true",
                    help="one QCFS threshold per channel instead of per layer")
    sp.add_argument("--activation", choices=ACTIVATIONS, default="qcfs",
                    help="source activation: qcfs (bit-serial, qcfs, srp), trelu = threshold "
                         "ReLU (deng-gu), relu (data-driven) (default: qcfs)")
    sp.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.add_argument("--out", required=True, help="checkpoint file to write (e.g. model.pt)")
    common(sp)
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser("convert", help="convert a checkpoint to an integer Program bundle",
                        description="Fold BN, quantize, and write the Program's memory-image "
                                    "bundle (hex + bin per memory, manifest.json).")
    sp.add_argument("checkpoint", help="checkpoint (.pt) from `bitspike train` or a state_dict")
    sp.add_argument("--out", required=True, help="bundle folder to write")
    width_args(sp)
    common(sp)
    sp.set_defaults(func=cmd_convert)

    sp = sub.add_parser("eval", help="accuracy of the float ANN and the integer model",
                        description="Accuracy on the test split recorded in the metadata. A "
                                    "checkpoint is converted on the fly and compared layer by "
                                    "layer with its integer model. --outputs writes the "
                                    "reference results a testbench compares against.")
    sp.add_argument("target", help="checkpoint file or Program bundle folder")
    sp.add_argument("--backend", choices=("float", "int"), default="int",
                    help="whose accuracy is the headline 'accuracy' (default: int)")
    sp.add_argument("--outputs", default=None, metavar="FILE",
                    help="also write the integer model's per-image reference results (index, "
                         "label, class, logits, engine cycles, input levels) to FILE, .npz or "
                         ".csv")
    sp.add_argument("--lanes", type=int, default=DEFAULT_LANES, metavar="P",
                    help=f"engine lanes for the --outputs cycle counts (default: {DEFAULT_LANES}, "
                         "as for rtl)")
    width_args(sp)
    common(sp)
    sp.set_defaults(func=cmd_eval)

    sp = sub.add_parser("demo", help="train, convert, evaluate and write a bundle on digits",
                        description="The whole flow on the embedded digits dataset; reuses a "
                                    "cached model when its settings match.")
    sp.add_argument("--out", default=DEFAULT_DEMO_DIR,
                    help=f"working folder (default: {DEFAULT_DEMO_DIR})")
    sp.add_argument("--retrain", action="store_true", help="ignore a cached model")
    common(sp)
    sp.set_defaults(func=cmd_demo)

    from .energy import add_energy_command

    add_energy_command(sub)

    sp = sub.add_parser("compare", help="every conversion method over time steps T",
                        description="Train the source each method expects, convert with every "
                                    "method at every T, and write a markdown table, a CSV and "
                                    "plots (accuracy vs T, accuracy vs energy), plus the "
                                    "bit-serial ablation.")
    sp.add_argument("--dataset", default="digits", help="dataset (default: digits)")
    sp.add_argument("--arch", choices=sorted(ARCHS), default="digits-cnn",
                    help="architecture (default: digits-cnn)")
    sp.add_argument("--levels", type=int, default=15, metavar="L",
                    help="QCFS levels of the qcfs/srp source (default: 15)")
    sp.add_argument("--steps", type=_int_list, default=DEFAULT_STEPS, metavar="T,T,...",
                    help=f"time steps (default: {','.join(map(str, DEFAULT_STEPS))})")
    sp.add_argument("--methods", default=",".join(METHODS), metavar="M,M,...",
                    help=f"methods (default: {','.join(METHODS)})")
    sp.add_argument("--tau", type=int, default=DEFAULT_TAU,
                    help=f"srp probe steps (default: {DEFAULT_TAU})")
    sp.add_argument("--epochs", type=int, default=40, help="training epochs per source "
                    "(default: 40)")
    sp.add_argument("--out", default="out/compare", help="output folder (default: out/compare)")
    common(sp)
    sp.set_defaults(func=cmd_compare)

    sp = sub.add_parser("rtl", help="write the engine's Verilog for a Program bundle",
                        description="Size an EngineConfig that fits the Program with P lanes, "
                                    "write the engine as Verilog (no source annotations) and "
                                    "print the config and the cycle estimate. The engine runs "
                                    "bit-serial and rate Programs (dense, conv3x3, 2x2 sum "
                                    "pooling after a conv3x3). --simulate runs test images "
                                    "through the RTL in amaranth.sim and checks them against "
                                    "the golden model and the cycle model; --vcd writes the "
                                    "waveform.")
    sp.add_argument("bundle", metavar="PROG_DIR", help="Program bundle folder")
    sp.add_argument("--lanes", type=int, default=8, metavar="P",
                    help="parallel output lanes (default: 8)")
    sp.add_argument("--out", default="build/rtl", help="output folder (default: build/rtl)")
    sp.add_argument("--images", type=int, default=360, metavar="N",
                    help="test images for the cycle estimate (default: 360)")
    sp.add_argument("--simulate", type=int, default=0, metavar="N",
                    help="also simulate the first N test images in amaranth.sim (default: 0; "
                         "seconds per image)")
    sp.add_argument("--vcd", default=None, metavar="FILE",
                    help="write the simulation's waveform to FILE (simulates 1 image unless "
                         "--simulate says more)")
    common(sp)
    sp.set_defaults(func=cmd_rtl)

    from ..sim.run_cli import add_sim_command

    add_sim_command(sub, common)

    from ..boards.cli import add_board_command, add_build_command

    add_build_command(sub, common)
    add_board_command(sub, common)

    sp = sub.add_parser("doctor", help="check the toolchain",
                        description="Report each tool, its version and whether it works.")
    sp.add_argument("--quick", action="store_true", help="skip the cocotb simulation run")
    common(sp)
    sp.set_defaults(func=cmd_doctor)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BitspikeError as e:
        print(f"bitspike {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `bitspike ... | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
