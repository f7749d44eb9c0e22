"""``bitspike demo``: the whole flow on the embedded digits dataset.

Trains digits-cnn with L = 15 (or reuses the cached checkpoint when its settings match), converts
it to an integer Program, evaluates float and integer, writes the memory-image bundle and
summarizes: energy per inference, one test image through the engine in amaranth.sim, and a few
test images through the engine's Verilog under Verilator (cocotb), checked against the golden
model and the cycle model.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .checkpoint import load_checkpoint, save_checkpoint
from .data import load_dataset
from .errors import BitspikeError
from .evaluate import compare_float_int
from .images import read_bundle, write_bundle
from .pipeline import convert_with
from .train import TrainConfig, train

DEMO_CONFIG = TrainConfig(arch="digits-cnn", levels=15)


def _cached(path: Path, cfg: TrainConfig):
    if not path.is_file():
        return None
    try:
        model, meta = load_checkpoint(path)
    except BitspikeError:
        return None
    same = (meta.arch == cfg.arch and meta.levels == cfg.levels
            and meta.train.get("epochs") == cfg.epochs and meta.train.get("seed") == cfg.seed
            and meta.train.get("lr") == cfg.lr and meta.dataset == "digits")
    return (model, meta) if same else None


def run_demo(out: Path, *, retrain: bool = False, progress: bool = True) -> dict:
    torch.set_num_threads(2)
    out.mkdir(parents=True, exist_ok=True)
    cfg = DEMO_CONFIG
    data = load_dataset("digits")
    ckpt = out / "model.pt"
    t0 = time.perf_counter()
    cached = None if retrain else _cached(ckpt, cfg)
    if cached is None:
        model, meta = train(cfg, data, progress=progress)
        save_checkpoint(ckpt, model, meta)
        model, meta = load_checkpoint(ckpt)
        trained = True
    else:
        model, meta = cached
        trained = False
    t_train = time.perf_counter() - t0
    t1 = time.perf_counter()
    program = convert_with(model, meta, data=data, checkpoint=str(ckpt)).program
    bundle = out / "prog"
    write_bundle(program, bundle)
    program = read_bundle(bundle)  # evaluate what was written, verified
    t_convert = time.perf_counter() - t1
    report = compare_float_int(model, program, data)
    req = program.requirements()
    from .energy import count_inputs, energy

    joules = energy(count_inputs(program, data.x_test)).comparison()
    rtl = _engine_run(program, data)
    verilated = _verilator_run(program, data, progress=progress)
    text = "\n".join([
        "bitspike demo: digits-cnn, QCFS L=15, bit-serial T=4 (input: 5 bit planes)",
        f"  model       {ckpt} ({'trained' if trained else 'cached'}, "
        f"{meta.metrics.get('train_seconds', 0):.1f} s of training)",
        f"  bundle      {bundle}/ ({req['weight_words']} weight words, {req['weight_bits']}-bit "
        f"weights, {req['acc_bits']}-bit accumulators)",
        f"  float ANN   {100 * report.float_accuracy:.2f} % on {report.images} test images",
        f"  integer SNN {100 * report.int_accuracy:.2f} % "
        f"({100 * (report.float_accuracy - report.int_accuracy):+.2f} points vs float; "
        f"classes agree on {100 * report.class_agreement:.2f} %)",
        f"  energy      {joules['snn_total_pj'] / 1000:.1f} nJ per inference: compute "
        f"{joules['snn_compute_pj'] / 1000:.1f} nJ + memory {joules['snn_memory_pj'] / 1000:.1f} "
        f"nJ (bitspike energy {bundle})",
        f"              the same ANN's compute: {joules['ann_fp32_pj'] / 1000:.1f} nJ in FP32, "
        f"{joules['ann_int8_pj'] / 1000:.1f} nJ in INT8",
        f"  engine      RTL (amaranth.sim, P = {rtl['lanes']}) on test image 0: class "
        f"{rtl['klass']} (golden {rtl['golden_klass']}), logits "
        f"{'equal to' if rtl['logits_equal'] else 'DIFFERENT from'} the golden model, "
        f"{rtl['cycles']} cycles (cycle model {rtl['model_cycles']})",
        f"  Verilog     Verilator (cocotb), P = {verilated['lanes']}, "
        f"{verilated['images']} test images: {verilated['mismatches']} mismatches in logits, "
        f"class and cycles; {verilated['cycles_per_image']:.0f} cycles per image; "
        f"{verilated['cycles_per_second'] / 1000:.0f} k simulated cycles/s (bitspike sim "
        f"{bundle})",
        "  levels that differ, float ANN vs integer model (weight rounding only; mean |diff|):",
        "    " + ", ".join(f"{m.name} {100 * m.mismatched:.1f} % ({m.mean_abs_diff:.2f})"
                          for m in report.layers),
    ])
    return {"checkpoint": str(ckpt), "trained": trained, "bundle": str(bundle),
            "train_seconds": round(t_train, 2), "convert_seconds": round(t_convert, 3),
            "requirements": req, "energy": joules, "engine": rtl, "verilator": verilated,
            **report.to_dict(),
            "text": text}


def _verilator_run(program, data, *, progress: bool, lanes: int = 8, images: int = 5) -> dict:
    """A few test images through the engine's Verilog under Verilator (``bitspike sim``)."""
    from ..sim.run_cli import simulate_program

    result = simulate_program(program, data, simulator="verilator", lanes=lanes, images=images,
                              progress=progress)
    if result["mismatches"]:
        raise BitspikeError(f"the engine's Verilog disagrees with the golden model: "
                            f"{result['first_mismatch']} (a bug: please report it)")
    return result


def _engine_run(program, data, lanes: int = 32) -> dict:
    """Simulate the engine RTL on one test image and compare with the golden model."""
    from ..hw.config import EngineConfig
    from ..hw.engine import Engine
    from ..sim.engine_sim import run_engine
    from .cycles import engine_cycles
    from .golden import run_program

    x = data.x_test[:1]
    golden = run_program(program, x)
    dut = Engine(config=EngineConfig.for_program(program, lanes=lanes), program=program)
    ((logits, klass, cycles),) = run_engine(dut, list(x))
    return {"lanes": lanes, "klass": klass, "golden_klass": int(golden.classes[0]),
            "logits_equal": [v for _, v in logits] == golden.logits[0].tolist(),
            "cycles": cycles, "model_cycles": engine_cycles(program, golden, 0,
                                                            lanes=lanes).total}
