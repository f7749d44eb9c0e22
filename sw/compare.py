"""``bitspike compare``: every conversion method over time steps T, on one footing.

Trains (or reuses) the source network each method expects, converts it with every method at
every T the method allows, runs the integer golden model (and the float twin) on the test split,
counts operations and energy from the actual spikes, and writes a markdown table, a CSV and
plots (accuracy vs T, accuracy vs energy per inference), plus the ablation of the bit-serial
scheme (left shift, bias placement, deferred firing), like Tables 1 and 4 and Fig. 1 of the
error-free conversion paper ("When SNN Meets ANN", docs/conversion-math.md section 7).
"""

from __future__ import annotations

import csv
import itertools
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .checkpoint import load_checkpoint, save_checkpoint
from .data import DatasetSplit, load_dataset
from .errors import BitspikeError, WidthError
from .golden import Ablation, run_program
from .models import ARCHS
from .pipeline import convert_with
from .program import METHODS
from .rate import DEFAULT_TAU, SOURCE_FOR_METHOD, SOURCE_NAMES
from .train import TrainConfig, train

DEFAULT_STEPS = (1, 2, 3, 4, 6, 8, 16, 32)


@dataclass
class Row:
    """One (method, T) result."""

    method: str
    steps: int
    latency: int
    source: str
    int_accuracy: float | None
    float_accuracy: float | None
    ann_accuracy: float
    energy_pj: float | None
    synaptic_ops: float | None
    seconds: float
    note: str = ""


def _source_key(method: str, steps: int, levels: int) -> tuple[str, int]:
    act = SOURCE_FOR_METHOD[method]
    if method == "bitserial":
        return act, 2**steps - 1  # the bit-serial source for T steps has L = 2^T - 1
    return act, levels


def _get_source(key, arch: str, data: DatasetSplit, folder: Path, epochs: int, progress: bool,
                cache: dict):
    if key in cache:
        return cache[key]
    act, levels = key
    path = folder / (f"{arch}-{act}" + (f"-L{levels}" if act == "qcfs" else "") + ".pt")
    cfg = TrainConfig(arch=arch, levels=levels, epochs=epochs, activation=act)
    model = meta = None
    if path.is_file():
        model, meta = load_checkpoint(path)
        if meta.train.get("epochs") != epochs or meta.activation != act:
            model = meta = None
    if model is None:
        model, meta = train(cfg, data, progress=progress)
        save_checkpoint(path, model, meta)
        model, meta = load_checkpoint(path)
    cache[key] = (model, meta)
    return model, meta


def _energy(program, result) -> tuple[float, float]:
    """Total energy (pJ, default table, compute + memory) and synaptic ops per inference."""
    from .energy import count_ops, energy

    ops = count_ops(program, result)
    report = energy(ops)
    return report.totals.total_pj, ops.totals.ops["accumulate"] + ops.totals.ops["pool_add"]


def run_compare(*, dataset: str = "digits", arch: str = "digits-cnn", levels: int = 15,
                steps: tuple[int, ...] = DEFAULT_STEPS, methods: tuple[str, ...] = tuple(METHODS),
                tau: int = DEFAULT_TAU, epochs: int = 40, out: Path = Path("out/compare"),
                progress: bool = True) -> dict:
    """Run the comparison; write results.md, results.csv, ablation.csv and the plots into out."""
    for m in methods:
        if m not in METHODS:
            raise BitspikeError(f"unknown method {m!r}: known methods are {', '.join(METHODS)}")
    if not steps or any(not isinstance(t, int) or t < 1 for t in steps):
        raise BitspikeError(f"time steps must be positive integers, not {steps!r}")
    torch.set_num_threads(2)
    data = load_dataset(dataset)
    if tuple(ARCHS[arch].input_shape) != tuple(data.input_shape):
        raise BitspikeError(f"architecture {arch} expects inputs {ARCHS[arch].input_shape}, but "
                            f"dataset {dataset} has {data.input_shape}: pick an architecture made "
                            "for it")
    out.mkdir(parents=True, exist_ok=True)
    cache: dict = {}
    rows: list[Row] = []
    per_method_seconds: dict[str, float] = {}
    jobs = [(m, t) for m in methods for t in steps]
    bar = tqdm(jobs, desc="compare", unit="run", disable=not progress)
    for method, t in bar:
        bar.set_postfix(method=method, T=t)
        start = time.perf_counter()
        key = _source_key(method, t, levels)
        row = _run_one(method, t, tau, key, arch, data, out / "sources", epochs, progress, cache)
        row.seconds = round(time.perf_counter() - start, 3)
        per_method_seconds[method] = per_method_seconds.get(method, 0.0) + row.seconds
        rows.append(row)
    ablation = run_ablation(cache, arch, levels, data, out / "sources", epochs, progress)
    files = write_results(rows, ablation, out, dataset=dataset, arch=arch, levels=levels, tau=tau,
                          per_method_seconds=per_method_seconds)
    return {"rows": [asdict(r) for r in rows], "ablation": ablation,
            "per_method_seconds": {k: round(v, 2) for k, v in per_method_seconds.items()},
            "files": {k: str(v) for k, v in files.items()}}


def _run_one(method, t, tau, key, arch, data, folder, epochs, progress, cache) -> Row:
    act, levels = key
    source = SOURCE_NAMES[act] + (f" L={levels}" if act == "qcfs" else "")
    try:
        if method == "bitserial" and levels > 2**16:
            raise WidthError(f"L = 2^{t} - 1 levels do not fit 32-bit accumulators")
        model, meta = _get_source(key, arch, data, folder, epochs, progress, cache)
        conv = convert_with(model, meta, method=method, steps=t,
                            tau=tau if method == "srp" else 0, data=data)
    except (WidthError, BitspikeError) as e:
        ann = None
        if key in cache:
            ann = cache[key][1].metrics.get("test_accuracy")
        return Row(method, t, t + (tau if method == "srp" else 0), source, None, None,
                   ann if ann is not None else float("nan"), None, None, 0.0,
                   note=f"n/a: {e}")
    program = conv.program
    result = run_program(program, data.x_test)
    int_acc = float((result.classes == data.y_test).double().mean())
    if conv.float_program is not None:
        rf = run_program(conv.float_program, data.x_test)
        float_acc = float((rf.classes == data.y_test).double().mean())
    else:
        float_acc = None
    ann_acc = float(meta.metrics.get("test_accuracy", float("nan")))
    with torch.no_grad():
        logits = model(data.normalization.apply(data.x_test))
        ann_acc = float((logits.argmax(1) == data.y_test).double().mean())
    pj, synops = _energy(program, result)
    return Row(method, t, program.latency, source, int_acc,
               ann_acc if method == "bitserial" else float_acc, ann_acc, pj, synops, 0.0)


def run_ablation(cache, arch, levels, data, folder, epochs, progress) -> list[dict]:
    """Table 4 of "When SNN Meets ANN": the bit-serial scheme with each part on or off (L = 15)."""
    key = ("qcfs", levels)
    model, meta = _get_source(key, arch, data, folder, epochs, progress, cache)
    program = convert_with(model, meta, method="bitserial", data=data).program
    rows = []
    for left_shift, bias_once, deferred in itertools.product([True, False], repeat=3):
        ab = Ablation(left_shift, bias_once, deferred)
        r = run_program(program, data.x_test, ablation=ab)
        rows.append({"left_shift": left_shift, "bias_once": bias_once, "deferred": deferred,
                     "T": program.t_steps,
                     "accuracy": float((r.classes == data.y_test).double().mean())})
    return rows


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or x != x else f"{100 * x:.2f}"


def write_results(rows: list[Row], ablation: list[dict], out: Path, *, dataset: str, arch: str,
                  levels: int, tau: int, per_method_seconds: dict) -> dict[str, Path]:
    files = {"markdown": out / "results.md", "csv": out / "results.csv",
             "ablation_csv": out / "ablation.csv", "json": out / "results.json",
             "plot_steps": out / "accuracy_vs_steps.png",
             "plot_energy": out / "accuracy_vs_energy.png"}
    with files["csv"].open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
        w.writeheader()
        for r in rows:
            w.writerow(asdict(r))
    with files["ablation_csv"].open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(ablation[0]))
        w.writeheader()
        w.writerows(ablation)
    files["json"].write_text(json.dumps({"rows": [asdict(r) for r in rows],
                                         "ablation": ablation}, indent=1) + "\n")
    methods = list(dict.fromkeys(r.method for r in rows))
    steps = sorted({r.steps for r in rows})
    by = {(r.method, r.steps): r for r in rows}
    lines = [f"# Method comparison: {arch} on {dataset}", "",
             f"Integer golden-model accuracy (%) on the {dataset} test split by time steps T. "
             f"Sources: bit-serial uses a QCFS net with L = 2^T - 1 per T; qcfs and srp a QCFS "
             f"net with L = {levels}; deng-gu a threshold-ReLU net; data-driven a ReLU net. "
             f"srp adds tau = {tau} probe steps (latency tau + T).", "",
             "| method | source | " + " | ".join(f"T={t}" for t in steps) + " |",
             "|---|---|" + "---|" * len(steps)]
    for m in methods:
        src = next(r.source for r in rows if r.method == m)
        cells = [_fmt(by[(m, t)].int_accuracy) if (m, t) in by else "" for t in steps]
        lines.append(f"| {m} | {src if m != 'bitserial' else 'QCFS L=2^T-1'} | "
                     + " | ".join(cells) + " |")

    def table(title: str, cell) -> list[str]:
        """A method x T table whose cells ``cell(row)`` come from each (method, T) row."""
        out = ["", title, "", "| method | " + " | ".join(f"T={t}" for t in steps) + " |",
               "|---|" + "---|" * len(steps)]
        for m in methods:
            out.append(f"| {m} | " + " | ".join(
                cell(by[(m, t)]) if (m, t) in by else "" for t in steps) + " |")
        return out

    def points_lost(r: Row) -> str:
        if r.int_accuracy is None or r.ann_accuracy != r.ann_accuracy:
            return "n/a"
        return f"{100 * (r.ann_accuracy - r.int_accuracy):.2f}"

    lines += table("Points lost by the integer SNN against its float source ANN (bit-serial: "
                   "the integer SNN equals the weight-quantized ANN level for level, so this is "
                   "weight rounding only):", points_lost)
    lines += table("Float accuracy (%) of the same SNN before weight rounding (bit-serial: the "
                   "float QCFS ANN, which the unrounded bit-serial SNN equals exactly):",
                   lambda r: _fmt(r.float_accuracy))
    lines += table("Energy per inference (nJ, default table) and synaptic operations:",
                   lambda r: "n/a" if r.energy_pj is None else
                   f"{r.energy_pj / 1000:.1f} ({r.synaptic_ops / 1e3:.0f}k)")
    notes = sorted({f"{r.method} T={r.steps}: {r.note}" for r in rows if r.note})
    if notes:
        lines += ["", "Not run:", ""] + [f"- {n}" for n in notes]
    lines += ["", f"Ablation of the bit-serial scheme (L = {levels}, T = {ablation[0]['T']}), "
              'like Table 4 of "When SNN Meets ANN":', "",
              "| left shift | bias once | deferred fire/reset | accuracy (%) |",
              "|---|---|---|---|"]
    for a in ablation:
        lines.append(f"| {'on' if a['left_shift'] else 'off'} | "
                     f"{'on' if a['bias_once'] else 'off'} | {'on' if a['deferred'] else 'off'} "
                     f"| {_fmt(a['accuracy'])} |")
    lines += ["", "Time per method (s, training included where a source was trained): "
              + ", ".join(f"{m} {s:.1f}" for m, s in per_method_seconds.items()), ""]
    files["markdown"].write_text("\n".join(lines))
    _plot(rows, files["plot_steps"], files["plot_energy"], arch, dataset)
    return files


def _plot(rows: list[Row], path_steps: Path, path_energy: Path, arch: str, dataset: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r.method for r in rows))
    done = [r for r in rows if r.int_accuracy is not None]
    ann = [r.ann_accuracy for r in rows if r.method == "qcfs" and r.ann_accuracy == r.ann_accuracy]
    figures = [
        (path_steps, lambda r: r.latency, {"base": 2}, "latency (time steps; srp: tau + T)",
         "accuracy vs time steps (integer SNN)"),
        (path_energy, lambda r: r.energy_pj / 1000, {}, "energy per inference (nJ, 45 nm op costs)",
         "accuracy vs energy"),
    ]
    for path, x_of, scale, xlabel, title in figures:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for m in methods:
            pts = [(x_of(r), 100 * r.int_accuracy) for r in done
                   if r.method == m and r.energy_pj is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=m)
        if ann and path == path_steps:
            ax.axhline(100 * ann[0], color="gray", linestyle="--", linewidth=1, label="QCFS ANN")
        ax.set_xscale("log", **scale)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{arch} on {dataset}: {title}")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
