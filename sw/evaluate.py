"""Accuracy of the float ANN and of the integer golden model, and where the two differ.

The integer model differs from the float QCFS network only by weight and bias rounding
(docs/conversion-math.md 2.3); :func:`compare_float_int` measures that difference per layer as the
fraction of neurons whose level differs, so it is reported, never hidden.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import DatasetSplit, load_dataset
from .errors import BitspikeError
from .golden import run_program
from .program import Program
from .qcfs import QCFS


@dataclass
class LayerMismatch:
    name: str
    neurons: int
    mismatched: float  # fraction of (image, neuron) pairs whose levels differ
    mean_abs_diff: float
    max_abs_diff: int

    def to_dict(self) -> dict:
        return self.__dict__.copy()


@dataclass
class EvalReport:
    dataset: str
    images: int
    int_accuracy: float
    float_accuracy: float | None = None
    class_agreement: float | None = None
    layers: list[LayerMismatch] = field(default_factory=list)
    float_snn_accuracy: float | None = None
    compared: str = ""

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "images": self.images,
                "int_accuracy": self.int_accuracy, "float_accuracy": self.float_accuracy,
                "float_snn_accuracy": self.float_snn_accuracy, "compared": self.compared,
                "accuracy_gap_points": (None if self.float_accuracy is None else
                                        round(100 * (self.float_accuracy - self.int_accuracy), 4)),
                "class_agreement": self.class_agreement,
                "layers": [m.to_dict() for m in self.layers]}


def dataset_for(meta: dict) -> DatasetSplit:
    """The test data a Program or checkpoint was made for, from its metadata."""
    name = meta.get("dataset")
    if not name:
        raise BitspikeError("no dataset recorded in the checkpoint/Program metadata: it was not "
                            "trained by bitspike; evaluate it with --dataset")
    return load_dataset(name, split_seed=int(meta.get("split_seed", 0)))


@torch.no_grad()
def float_levels(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Float logits and the integer level of every QCFS module (by module name)."""
    levels: dict[str, torch.Tensor] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, QCFS):
            def hook(mod, inputs, _out, name=name):
                levels[name] = mod.level(inputs[0]).to(torch.int64)
            hooks.append(m.register_forward_hook(hook))
    try:
        model.eval()
        logits = model(x)
    finally:
        for h in hooks:
            h.remove()
    return logits, levels


def _sum_pool(levels: torch.Tensor) -> torch.Tensor:
    n, c, h, w = levels.shape
    return levels.view(n, c, h // 2, 2, w // 2, 2).sum(dim=(3, 5))


@torch.no_grad()
def evaluate_program(program: Program, data: DatasetSplit) -> EvalReport:
    r = run_program(program, data.x_test)
    acc = float((r.classes == data.y_test).double().mean())
    return EvalReport(data.name, len(data.y_test), acc)


def _accuracy(classes: torch.Tensor, labels: torch.Tensor) -> float:
    return float((classes == labels).double().mean())


@torch.no_grad()
def compare_float_int(model: nn.Module, program: Program, data: DatasetSplit, *,
                      float_program: Program | None = None) -> EvalReport:
    """Accuracies, class agreement and the per-layer mismatch on the test split.

    Bit-serial: the float ANN's QCFS levels against the integer model's levels (the float SNN
    *is* the ANN here). Rate mode (``float_program`` = the unrounded twin from
    :func:`bitspike.sw.rate.quantize_rate`): also the float SNN's accuracy, and per layer the
    spike counts of the float SNN against the integer SNN's (weight rounding only).
    """
    x = data.x_test
    logits, fl = float_levels(model, data.normalization.apply(x))
    r = run_program(program, x)
    ann_classes = logits.argmax(1)
    if float_program is not None:
        rf = run_program(float_program, x)
        report = EvalReport(data.name, len(data.y_test), _accuracy(r.classes, data.y_test),
                            _accuracy(ann_classes, data.y_test),
                            _accuracy(rf.classes, r.classes),
                            float_snn_accuracy=_accuracy(rf.classes, data.y_test),
                            compared="spike counts, float SNN vs integer SNN")
        for layer, got, ref in zip(program.layers, r.levels, rf.levels, strict=True):
            if layer.fires:
                diff = (ref.round().to(torch.int64) - got).abs()
                report.layers.append(LayerMismatch(
                    layer.name, int(got[0].numel()), float((diff > 0).double().mean()),
                    float(diff.double().mean()), int(diff.max())))
        return report
    report = EvalReport(data.name, len(data.y_test), _accuracy(r.classes, data.y_test),
                        _accuracy(ann_classes, data.y_test), _accuracy(ann_classes, r.classes),
                        compared="levels, float ANN vs integer model")
    prev = None
    for layer, int_levels in zip(program.layers, r.levels, strict=True):
        if not layer.fires:
            break
        if layer.kind == "sumpool2x2":
            ref = _sum_pool(prev)
        else:
            ref = fl.get(layer.source)
            if ref is None:
                raise BitspikeError(f"no QCFS module named {layer.source!r} in the model: the "
                                    "Program was not converted from this checkpoint")
        diff = (ref.reshape(int_levels.shape) - int_levels).abs()
        report.layers.append(LayerMismatch(layer.name, int(int_levels[0].numel()),
                                           float((diff > 0).double().mean()),
                                           float(diff.double().mean()), int(diff.max())))
        prev = ref.reshape(int_levels.shape)
    return report


# ---------------------------------------------------------------------------------------------
# per-image reference results for testbenches outside Python (docs/memory-images.md section 10)

OUTPUT_SUFFIXES = (".npz", ".csv")


def check_outputs_path(path) -> Path:
    """``path`` as a Path, if its suffix names a format :func:`write_outputs` writes."""
    path = Path(path)
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise BitspikeError(f"--outputs {path}: the file name must end in .npz (numpy arrays) or "
                            ".csv (one row per image), not {path.suffix or 'no suffix'!r}")
    return path


@torch.no_grad()
def reference_outputs(program: Program, data: DatasetSplit, *, lanes: int) -> dict[str, np.ndarray]:
    """Per test image: index, dataset_index, label, class, logits, cycles and the input levels.

    ``cycles`` is :func:`bitspike.sw.cycles.engine_cycles` for the engine with ``lanes`` lanes
    (exact for every Program the engine runs); ``inputs`` are the pixel levels fed to the engine.
    """
    from .cycles import PlanError, engine_cycles, layer_plan

    try:
        layer_plan(program, lanes)
    except PlanError as e:
        raise BitspikeError(f"the engine does not run this Program, so there are no cycle counts "
                            f"to write: {e}") from None
    x = data.x_test
    result = run_program(program, x)
    n = len(x)
    index = np.arange(n, dtype=np.int64)
    dataset_index = (data.test_index.numpy().astype(np.int64) if data.test_index is not None
                     else np.full(n, -1, dtype=np.int64))
    cycles = np.array([engine_cycles(program, result, i, lanes=lanes).total for i in range(n)],
                      dtype=np.int64)
    return {"index": index, "dataset_index": dataset_index,
            "label": data.y_test.numpy().astype(np.int64),
            "class": result.classes.numpy().astype(np.int64),
            "logits": result.logits.numpy().astype(np.int64).reshape(n, -1),
            "cycles": cycles, "inputs": x.numpy().astype(np.int64),
            "lanes": np.int64(lanes)}


def write_outputs(path, outputs: dict[str, np.ndarray]) -> Path:
    """Write :func:`reference_outputs` as ``.npz`` (the arrays) or ``.csv`` (one row per image).

    CSV columns: ``index,label,class,cycles,logit0..logit{K-1},dataset_index,input0..input{M-1}``
    (the input levels flattened in (C, H, W) order), decimal integers, a header line, LF endings.
    """
    path = check_outputs_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".npz":
        with path.open("wb") as f:  # np.savez would append .npz to a name that ends in .NPZ
            np.savez(f, **outputs)
        return path
    logits, inputs = outputs["logits"], outputs["inputs"].reshape(len(outputs["index"]), -1)
    header = (["index", "label", "class", "cycles"]
              + [f"logit{k}" for k in range(logits.shape[1])] + ["dataset_index"]
              + [f"input{j}" for j in range(inputs.shape[1])])
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        for i in range(len(outputs["index"])):
            writer.writerow([int(outputs[k][i]) for k in ("index", "label", "class", "cycles")]
                            + logits[i].tolist() + [int(outputs["dataset_index"][i])]
                            + inputs[i].tolist())
    return path
