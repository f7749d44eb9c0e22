"""Checkpoints: the ones ``bitspike train`` writes (with metadata) and bare public state_dicts.

A bitspike checkpoint is a ``torch.save`` dict::

    {"format": "bitspike-checkpoint", "version": 1, "arch": ..., "levels": L, "per_channel": bool,
     "classes": 10, "dataset": "digits", "split_seed": 0, "normalization": {...},
     "input_shape": [C, H, W], "train": {...}, "metrics": {...}, "state_dict": {...}}

so that later commands need no flags. A bare state_dict (the public QCFS checkpoints) carries no
metadata: the architecture and ``L`` must then be given (``--arch``, ``--levels``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .data import Normalization
from .errors import CheckpointError
from .models import ARCHS, build_model
from .qcfs import QCFS, ThresholdReLU

CHECKPOINT_FORMAT = "bitspike-checkpoint"
CHECKPOINT_VERSION = 1


@dataclass
class CheckpointMeta:
    """What a checkpoint says about its network and data."""

    arch: str
    levels: int
    classes: int = 10
    per_channel: bool = False
    activation: str = "qcfs"
    dataset: str | None = None
    split_seed: int = 0
    normalization: Normalization | None = None
    train: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    sha256: str | None = None

    def to_dict(self) -> dict:
        return {"arch": self.arch, "levels": self.levels, "classes": self.classes,
                "per_channel": self.per_channel, "activation": self.activation,
                "dataset": self.dataset,
                "split_seed": self.split_seed,
                "normalization": self.normalization.to_dict() if self.normalization else None,
                "train": self.train, "metrics": self.metrics, "sha256": self.sha256}


def save_checkpoint(path: str | Path, model: nn.Module, meta: CheckpointMeta) -> None:
    """Write ``model`` and its metadata to ``path``."""
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
               **{k: v for k, v in meta.to_dict().items() if k != "sha256"},
               "input_shape": list(ARCHS[meta.arch].input_shape),
               "state_dict": model.state_dict()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _unwrap_state_dict(obj) -> dict:
    # Public training scripts save the bare state_dict, or wrap it in "model"/"state_dict"/"net",
    # sometimes with DataParallel's "module." prefix.
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "net"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError("the checkpoint holds no state_dict (a mapping of parameter names to "
                              "tensors)")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def _canonical_keys(model: nn.Module, state: dict) -> dict:
    """Rename the public QCFS threshold alias ``up`` to ``thresh`` where a QCFS module sits."""
    qcfs_prefixes = {name + "." for name, m in model.named_modules()
                     if isinstance(m, QCFS | ThresholdReLU)}
    out = {}
    for k, v in state.items():
        prefix, _, leaf = k.rpartition(".")
        if leaf == "up" and prefix + "." in qcfs_prefixes:
            k = prefix + ".thresh"
        out[k] = v.reshape(1) if k.endswith(".thresh") and v.dim() == 0 else v
    return out


def check_state_dict(model: nn.Module, state: dict, *, source: str) -> dict:
    """Verify that ``state`` matches ``model`` exactly; return it with canonical key names.

    Raises
    ------
    CheckpointError
        Naming the missing keys, the unexpected keys and the shape mismatches.
    """
    state = _canonical_keys(model, state)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys: {', '.join(missing[:12])}"
                         + (f" (+{len(missing) - 12} more)" if len(missing) > 12 else ""))
        if unexpected:
            parts.append(f"unexpected keys: {', '.join(unexpected[:12])}"
                         + (f" (+{len(unexpected) - 12} more)" if len(unexpected) > 12 else ""))
        if shapes:
            parts.append(f"shape mismatches: {'; '.join(shapes[:8])}")
        raise CheckpointError(f"{source}: the state_dict does not match the architecture; "
                              + "; ".join(parts)
                              + ". Check --arch (and --per-channel) against the checkpoint.")
    return state


def load_checkpoint(path: str | Path, *, arch: str | None = None, levels: int | None = None,
                    per_channel: bool | None = None, activation: str | None = None
                    ) -> tuple[nn.Sequential, CheckpointMeta]:
    """Load a checkpoint into a freshly built model (in eval mode).

    Arguments override the checkpoint's metadata; for a bare state_dict ``arch`` and ``levels``
    are required.

    Raises
    ------
    CheckpointError
        File missing or unreadable, metadata missing, or a state_dict that does not match.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found: train one with "
                              "`bitspike train --out model.pt` or give the right path")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for truncated or foreign files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({first[:160]}); it "
                              "may be truncated or corrupt: re-save or re-train it") from None
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        if obj.get("version") != CHECKPOINT_VERSION:
            raise CheckpointError(f"{path}: checkpoint version {obj.get('version')!r} is not "
                                  f"supported (this bitspike reads version {CHECKPOINT_VERSION})")
        try:
            meta = CheckpointMeta(
                arch=arch or obj["arch"], levels=int(levels or obj["levels"]),
                classes=int(obj.get("classes", 10)),
                per_channel=bool(obj.get("per_channel", False) if per_channel is None
                                 else per_channel),
                activation=str(obj.get("activation", "qcfs")),
                dataset=obj.get("dataset"), split_seed=int(obj.get("split_seed", 0)),
                normalization=(Normalization.from_dict(obj["normalization"])
                               if obj.get("normalization") else None),
                train=dict(obj.get("train", {})), metrics=dict(obj.get("metrics", {})))
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: malformed bitspike checkpoint metadata ({e})") from None
        state = _unwrap_state_dict(obj["state_dict"])
    else:
        try:
            state = _unwrap_state_dict(obj)
        except CheckpointError as e:
            raise CheckpointError(f"{path}: {e}") from None
        if arch is None or levels is None:
            raise CheckpointError(f"{path} is a bare state_dict without bitspike metadata: pass "
                                  "--arch and --levels (L is not stored in QCFS checkpoints)")
        meta = CheckpointMeta(arch=arch, levels=int(levels), per_channel=bool(per_channel),
                              activation=activation or "qcfs")
    classes_key = [k for k in state if k.endswith(".weight")]
    if classes_key:
        meta.classes = int(state[classes_key[-1]].shape[0])
    if activation is not None:
        meta.activation = activation
    model = build_model(meta.arch, levels=meta.levels, classes=meta.classes,
                        per_channel=meta.per_channel, activation=meta.activation)
    state = check_state_dict(model, state, source=str(path))
    model.load_state_dict(state, strict=True)
    model.eval()
    meta.sha256 = _sha256(path)
    return model, meta
