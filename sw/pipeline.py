"""From a checkpoint to a Program with any conversion method: the one path that the CLI, the demo
and the method comparison share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from .checkpoint import CheckpointMeta, load_checkpoint
from .convert import convert_model
from .data import DatasetSplit, load_dataset
from .errors import BitspikeError
from .models import ARCHS
from .program import Program
from .rate import DEFAULT_TAU, SOURCE_NAMES, check_method, convert_rate


@dataclass
class Converted:
    """A checkpoint's model and its Program; ``float_program`` is the rate mode's float twin."""

    model: nn.Module
    meta: CheckpointMeta
    program: Program
    float_program: Program | None
    data: DatasetSplit | None

    @property
    def source(self) -> str:
        return SOURCE_NAMES.get(self.meta.activation, self.meta.activation)


def default_steps(method: str, levels: int) -> int:
    """T for a method when none is given: ``ceil(log2(L+1))`` bit-serially, else ``L``."""
    from .qcfs import time_steps_for_levels

    return time_steps_for_levels(levels) if method == "bitserial" else levels


def convert_with(model: nn.Module, meta: CheckpointMeta, *, method: str = "bitserial",
                 steps: int | None = None, tau: int | None = None, weight_bits: int = 8,
                 acc_bits: int = 32, data: DatasetSplit | None = None,
                 checkpoint: str | None = None) -> Converted:
    """Convert a loaded model with ``method`` (bitserial, qcfs, deng-gu, data-driven, srp)."""
    if tau is None:
        tau = DEFAULT_TAU if method == "srp" else 0
    steps = default_steps(method, meta.levels) if steps is None else steps
    check_method(method, steps, tau)
    if data is None and meta.dataset:
        data = load_dataset(meta.dataset, split_seed=meta.split_seed)
    norm = meta.normalization or (data.normalization if data is not None else None)
    if norm is None:
        raise BitspikeError("the checkpoint records no input normalization: pass --dataset")
    info = {"arch": meta.arch, "levels": meta.levels, "activation": meta.activation,
            "dataset": meta.dataset or (data.name if data is not None else None),
            "split_seed": meta.split_seed, "checkpoint": checkpoint,
            "checkpoint_sha256": meta.sha256}
    shape = ARCHS[meta.arch].input_shape
    if method == "bitserial":
        if steps != default_steps("bitserial", meta.levels):
            raise BitspikeError(f"bitserial sends L = {meta.levels} in exactly "
                                f"{default_steps('bitserial', meta.levels)} steps; --steps "
                                f"{steps} is not possible (retrain with another --levels)")
        program = convert_model(model, input_shape=shape, normalization=norm,
                                weight_bits=weight_bits, acc_bits=acc_bits, meta=info)
        return Converted(model, meta, program, None, data)
    program, float_program = convert_rate(
        model, method=method, steps=steps, tau=tau, input_shape=shape, normalization=norm,
        calibration=data.x_train if data is not None else None, weight_bits=weight_bits,
        acc_bits=acc_bits, meta=info)
    return Converted(model, meta, program, float_program, data)


def convert_checkpoint(path: str | Path, *, method: str = "bitserial", steps: int | None = None,
                       tau: int | None = None, weight_bits: int = 8, acc_bits: int = 32,
                       arch: str | None = None, levels: int | None = None,
                       activation: str | None = None, dataset: str | None = None) -> Converted:
    """Load ``path`` (bitspike checkpoint or bare state_dict) and convert it."""
    model, meta = load_checkpoint(path, arch=arch, levels=levels, activation=activation)
    data = None
    if dataset is not None or meta.dataset is not None:
        data = load_dataset(dataset or meta.dataset, split_seed=meta.split_seed)
    return convert_with(model, meta, method=method, steps=steps, tau=tau,
                        weight_bits=weight_bits, acc_bits=acc_bits, data=data,
                        checkpoint=str(path))
