"""Conversion of a trained QCFS network into an integer :class:`~bitspike.sw.program.Program`.

Three small passes (docs/conversion-math.md, sections 1-2):

1. :func:`extract_layers` walks the model's leaf modules in order, checks that each is a kind the
   engine runs exactly, and folds BatchNorm into the preceding conv/linear -> ``FloatLayer`` list.
2. :func:`fold_input_normalization` moves the dataset normalization into the first layer, so that
   the engine takes raw pixel levels (non-negative) as bit planes.
3. :func:`quantize` picks the per-layer threshold step ``D`` as large as the weight width allows,
   rounds the weights ``w = round(W' / s_w)`` and the bias-plus-half-step ``B = round(b'/U + D/2)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from .data import Normalization
from .errors import UnsupportedLayerError, WidthError
from .program import InputSpec, Layer, Program, signed_bits
from .qcfs import QCFS, ThresholdReLU, time_steps_for_levels


@dataclass
class FloatLayer:
    """A conv/linear layer with BatchNorm folded in, or an average pooling, in float64.

    ``act`` is the activation after it (``"qcfs"``, ``"trelu"``, ``"relu"``; ``None`` for the
    non-firing output layer and for pooling); ``lam`` (shape ``[1]`` or ``[C_out]``) is its
    threshold (QCFS lambda or the threshold-ReLU clip; ``None`` for ReLU) and ``levels`` the
    QCFS ``L``. ``act_name`` is the activation module's name (for hooks and reports).
    """

    name: str
    kind: str  # "conv3x3" | "dense" | "avgpool2x2"
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    lam: torch.Tensor | None = None
    levels: int | None = None
    act_name: str | None = None
    act: str | None = None


_SKIP = (nn.Dropout, nn.Identity)
_INSTEAD = {
    nn.MaxPool2d: "max pooling cannot be computed exactly from spikes: retrain with "
                  "nn.AvgPool2d(2) (the engine's sum pooling)",
    nn.AdaptiveAvgPool2d: "use nn.AvgPool2d(2) steps (2x2 sum pooling) and a Linear head",
    nn.AdaptiveMaxPool2d: "use nn.AvgPool2d(2) steps (2x2 sum pooling) and a Linear head",
}


def _unsupported(name: str, module: nn.Module, why: str) -> UnsupportedLayerError:
    return UnsupportedLayerError(f"layer {name!r} ({module.__class__.__name__}) is not supported: "
                                 f"{why}")


def extract_layers(model: nn.Module) -> list[FloatLayer]:
    """Walk the leaf modules of a feed-forward ``model`` in definition order; fold BatchNorm.

    Raises
    ------
    UnsupportedLayerError
        For any module the engine cannot run exactly, saying what to use instead.
    """
    layers: list[FloatLayer] = []
    open_layer: FloatLayer | None = None  # conv/linear still waiting for its BN/QCFS
    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    for name, m in leaves:
        for kind, why in _INSTEAD.items():
            if isinstance(m, kind):
                raise _unsupported(name, m, why)
        if isinstance(m, _SKIP) or isinstance(m, nn.Flatten):
            continue  # Flatten: dense layers read the (C, H, W) input in flattened order
        if isinstance(m, nn.Conv2d):
            if (m.kernel_size != (3, 3) or m.stride != (1, 1) or m.padding != (1, 1)
                    or m.dilation != (1, 1) or m.groups != 1 or m.padding_mode != "zeros"):
                raise _unsupported(name, m, "the engine runs 3x3 convolutions with stride 1, zero "
                                   f"padding 1, no dilation or groups (got kernel {m.kernel_size}, "
                                   f"stride {m.stride}, padding {m.padding}, groups {m.groups})")
            _close(open_layer, layers)
            bias = m.bias.detach().double() if m.bias is not None else torch.zeros(m.out_channels,
                                                                                 dtype=torch.float64)
            open_layer = FloatLayer(name, "conv3x3", m.weight.detach().double().clone(), bias)
        elif isinstance(m, nn.Linear):
            _close(open_layer, layers)
            bias = m.bias.detach().double() if m.bias is not None else torch.zeros(m.out_features,
                                                                                 dtype=torch.float64)
            open_layer = FloatLayer(name, "dense", m.weight.detach().double().clone(), bias)
        elif isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            if open_layer is None or open_layer.act is not None:
                raise _unsupported(name, m, "BatchNorm can only be folded when it directly follows "
                                   "a convolution or linear layer")
            _fold_bn(open_layer, m)
        elif isinstance(m, QCFS | ThresholdReLU | nn.ReLU):
            if open_layer is None or open_layer.act is not None:
                raise _unsupported(name, m, "an activation must follow a convolution or linear "
                                   "layer (and its BatchNorm)")
            if isinstance(m, nn.ReLU):
                open_layer.act = "relu"
            else:
                lam = m.thresh.detach().double().clone()
                if (lam <= 0).any():
                    raise _unsupported(name, m, f"its threshold lambda must be positive, got "
                                       f"{lam.tolist()}")
                open_layer.lam = lam
                open_layer.act = "qcfs" if isinstance(m, QCFS) else "trelu"
                open_layer.levels = m.levels if isinstance(m, QCFS) else None
            open_layer.act_name = name
            _close(open_layer, layers)
            open_layer = None
        elif isinstance(m, nn.AvgPool2d):
            ks = m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size,) * 2
            st = m.stride if isinstance(m.stride, tuple) else (m.stride,) * 2
            if ks != (2, 2) or st != (2, 2) or m.padding not in (0, (0, 0)) or m.ceil_mode:
                raise _unsupported(name, m, "the engine pools 2x2 windows with stride 2 and no "
                                   "padding: use nn.AvgPool2d(2)")
            if open_layer is not None:
                raise _unsupported(name, m, "pooling must come after a QCFS activation (pool "
                                   "spike levels, not membrane potentials)")
            layers.append(FloatLayer(name, "avgpool2x2", None, None))
        else:
            raise _unsupported(name, m, "supported are Conv2d(3x3, stride 1, padding 1), Linear, "
                               "BatchNorm1d/2d, QCFS, AvgPool2d(2), Flatten, Dropout")
    if open_layer is None or open_layer.kind != "dense":
        raise UnsupportedLayerError("the network must end in a Linear layer without activation "
                                    "(the engine's non-firing output layer with argmax)")
    layers.append(open_layer)
    return layers


def _close(layer: FloatLayer | None, layers: list[FloatLayer]) -> None:
    if layer is None:
        return
    if layer.act is None:
        raise UnsupportedLayerError(f"layer {layer.name!r} has no activation after it: only "
                                    "the last layer may be without one")
    layers.append(layer)


def _fold_bn(layer: FloatLayer, bn: nn.Module) -> None:
    """Fold BN: ``W' = W g / sqrt(var + eps)``, ``b' = (b - mean) g / sqrt(var + eps) + beta``."""
    gamma = bn.weight.detach().double() if bn.affine else torch.ones_like(bn.running_mean).double()
    beta = bn.bias.detach().double() if bn.affine else torch.zeros_like(bn.running_mean).double()
    scale = gamma / torch.sqrt(bn.running_var.double() + bn.eps)
    shape = [-1] + [1] * (layer.weight.dim() - 1)
    layer.weight = layer.weight * scale.view(shape)
    layer.bias = (layer.bias - bn.running_mean.double()) * scale + beta


def fold_input_normalization(layers: list[FloatLayer], norm: Normalization,
                             in_shape: tuple[int, ...]) -> tuple[list[FloatLayer], list[str]]:
    """Make the first layer take raw levels: ``x = (k / max - mean) / std`` folded into W and b.

    Returns the new layer list and notes about anything inexact (a nonzero mean under zero
    padding: the float net pads with normalized zeros, the engine with level 0).
    """
    first = layers[0]
    notes: list[str] = []
    if first.kind == "avgpool2x2":
        raise UnsupportedLayerError("the first layer must be a convolution or linear layer")
    channels = in_shape[0]
    if len(norm.mean) != channels:
        raise UnsupportedLayerError(f"the input normalization has {len(norm.mean)} channels, the "
                                    f"input {channels}")
    scale = 1.0 / (norm.max_level * torch.tensor(norm.std, dtype=torch.float64))
    shift = -torch.tensor(norm.mean, dtype=torch.float64) / torch.tensor(norm.std,
                                                                         dtype=torch.float64)
    if first.kind == "conv3x3":
        w = first.weight * scale.view(1, -1, 1, 1)
        b = first.bias + (first.weight * shift.view(1, -1, 1, 1)).sum(dim=(1, 2, 3))
        if bool((shift != 0).any()):
            notes.append("the input normalization has a nonzero mean and the first layer is a "
                         "zero-padded convolution: border pixels differ from the float network "
                         "(retrain with mean 0 to make this exact)")
    else:
        per_elem = int(np.prod(in_shape[1:]))
        w = first.weight * scale.repeat_interleave(per_elem).view(1, -1)
        b = first.bias + first.weight @ shift.repeat_interleave(per_elem)
    return [replace(first, weight=w, bias=b), *layers[1:]], notes


def _channel_units(unit: torch.Tensor, kind: str, in_shape: tuple[int, ...]) -> torch.Tensor:
    """Per-weight-input-column value of one input level unit."""
    if kind == "conv3x3":
        return unit.view(1, -1, 1, 1)
    if len(in_shape) == 3:  # dense after a (C, H, W) map: flattened in (C, H, W) order
        return unit.repeat_interleave(in_shape[1] * in_shape[2]).view(1, -1)
    return unit.view(1, -1) if unit.numel() > 1 else unit.view(1, 1)


def quantize(layers: list[FloatLayer], *, input_spec: InputSpec, weight_bits: int = 8,
             acc_bits: int = 32, meta: dict | None = None, notes: list[str] | None = None
             ) -> Program:
    """Integer Program from folded float layers whose first layer takes raw levels.

    Raises
    ------
    WidthError
        When a layer's weights cannot be represented with ``weight_bits`` at a threshold step
        ``D >= 1``, or its accumulator would need more than ``acc_bits``.
    """
    if not isinstance(weight_bits, int) or not 2 <= weight_bits <= 16:
        raise WidthError(f"weight bits must be an integer in 2..16, not {weight_bits!r}")
    qmax = 2 ** (weight_bits - 1) - 1
    shape = tuple(input_spec.shape)
    t_in, in_levels = input_spec.t, input_spec.max_level
    unit = torch.ones(shape[0], dtype=torch.float64)  # value of one level, per input channel
    out: list[Layer] = []
    counts: dict[str, int] = {}

    def next_name(prefix: str) -> str:
        counts[prefix] = counts.get(prefix, 0) + 1
        return f"{prefix}{counts[prefix]}"

    for fl in layers:
        if fl.kind == "avgpool2x2":
            if len(shape) != 3 or shape[1] % 2 or shape[2] % 2:
                raise UnsupportedLayerError(f"layer {fl.name!r}: 2x2 pooling needs a (C, H, W) "
                                            f"input with even H and W, got {shape}")
            new_shape = (shape[0], shape[1] // 2, shape[2] // 2)
            out.append(Layer(next_name("pool"), "sumpool2x2", shape, new_shape, t_in, t_in + 2,
                             4 * in_levels, True, unit=float(unit.mean()) / 4, source=fl.name))
            shape, t_in, in_levels, unit = new_shape, t_in + 2, 4 * in_levels, unit / 4
            continue
        c_out = fl.weight.shape[0]
        if fl.kind == "dense" and fl.weight.shape[1] != int(np.prod(shape)):
            raise UnsupportedLayerError(f"layer {fl.name!r}: expects {fl.weight.shape[1]} inputs, "
                                        f"the previous layer gives {int(np.prod(shape))}")
        if fl.kind == "conv3x3" and (len(shape) != 3 or fl.weight.shape[1] != shape[0]):
            raise UnsupportedLayerError(f"layer {fl.name!r}: expects {fl.weight.shape[1]} input "
                                        f"channels, the previous layer gives shape {shape}")
        if fl.act not in (None, "qcfs"):
            what = "nn.ReLU" if fl.act == "relu" else "the threshold ReLU"
            raise UnsupportedLayerError(
                f"layer {fl.act_name!r} ({fl.act}) is not supported by the bit-serial conversion: "
                f"it needs QCFS activations: replace {what} with bitspike.sw.qcfs.QCFS(levels=L) "
                'and fine-tune (about 30 epochs, appendix A.9 of "When SNN Meets ANN"), or '
                "convert with a rate method (--method data-driven or deng-gu)")
        w_units = fl.weight * _channel_units(unit, fl.kind, shape)  # W'' acting on levels
        wmax = w_units.reshape(c_out, -1).abs().amax(dim=1)
        fires = fl.act is not None
        if fires:
            L = fl.levels
            lam = fl.lam.expand(c_out) if fl.lam.numel() == 1 else fl.lam
            if fl.lam.numel() == 1:  # one threshold per layer: one D for all channels
                d_real = qmax * lam[0] / (L * wmax.max()) if wmax.max() > 0 else torch.tensor(qmax)
                d_real = d_real.expand(c_out)
            else:
                d_real = torch.where(wmax > 0, qmax * lam / (L * wmax.clamp_min(1e-300)),
                                     torch.full_like(lam, qmax))
            if float(d_real.min()) < 1 - 1e-9:
                need = weight_bits + math.ceil(math.log2(1 / float(d_real.min())))
                raise WidthError(f"layer {fl.name!r}: its weights are too large for the threshold "
                                 f"step lambda/L at {weight_bits}-bit weights (the integer "
                                 f"threshold D would be {float(d_real.min()):.3g} < 1); convert "
                                 f"with --weight-bits {need} or more")
            # A ratio that is an integer up to float rounding (3.9999999) must give that integer;
            # the weight check below steps D back down where rounding pushed a weight over qmax.
            D = torch.floor(d_real * (1 + 1e-9)).to(torch.int64).clamp_min(1)
            t_out, out_levels = time_steps_for_levels(L), L
        else:
            D, t_out, out_levels = None, 0, 0
        shape_w = [-1] + [1] * (fl.weight.dim() - 1)
        while True:
            if fires:
                s_w = lam / (L * D.double())
            else:
                s_w = (wmax.max() / qmax if wmax.max() > 0 else torch.tensor(1.0)).expand(c_out)
            w = torch.round(w_units / s_w.view(shape_w)).to(torch.int64)
            over = w.reshape(c_out, -1).abs().amax(dim=1) > qmax
            if not over.any():
                break
            if not fires or int(D.min()) <= 1:
                raise WidthError(f"layer {fl.name!r}: a rounded weight {int(w.abs().max())} "
                                 f"exceeds the {weight_bits}-bit range; convert with more "
                                 "--weight-bits")
            D = D - (over.to(torch.int64) if fl.lam.numel() > 1 else 1)
        half = D.double() / 2 if fires else 0.0
        b_real = fl.bias / s_w + half
        B = torch.round(b_real).to(torch.int64)
        new_shape = (c_out, shape[1], shape[2]) if fl.kind == "conv3x3" else (c_out,)
        prefix = "conv" if fl.kind == "conv3x3" else ("fc" if fires else "out")
        layer = Layer(next_name(prefix), fl.kind, shape, new_shape, t_in, t_out, out_levels, fires,
                      weights=w.numpy(), bias=B.numpy(),
                      threshold=D.numpy() if fires else None,
                      unit=float(s_w.mean()), source=fl.act_name or fl.name)
        need = signed_bits(layer.acc_magnitude(2**t_in - 1))
        if need > acc_bits:
            raise WidthError(f"layer {fl.name!r}: the accumulator needs {need} bits (weights, "
                             f"bias B up to {int(np.abs(B.numpy()).max())} and {t_in} input "
                             f"steps) but --acc-bits is {acc_bits}: raise --acc-bits or lower "
                             "--weight-bits")
        out.append(layer)
        if fires:
            shape, t_in, in_levels = new_shape, t_out, out_levels
            unit = (fl.lam / fl.levels).expand(c_out).clone()
    hidden_t = [lay.t_out for lay in out if lay.fires and lay.kind != "sumpool2x2"]
    program = Program("bitserial", input_spec, out, weight_bits, method="bitserial",
                      t_steps=max(hidden_t, default=0), meta=dict(meta or {}),
                      notes=list(notes or []))
    program.validate()
    return program


def convert_model(model: nn.Module, *, input_shape: tuple[int, ...], normalization: Normalization,
                  weight_bits: int = 8, acc_bits: int = 32, meta: dict | None = None) -> Program:
    """All three passes: ``extract_layers``, ``fold_input_normalization``, ``quantize``."""
    layers = extract_layers(model)
    layers, notes = fold_input_normalization(layers, normalization, tuple(input_shape))
    spec = InputSpec(tuple(input_shape), normalization.max_level,
                     time_steps_for_levels(normalization.max_level))
    meta = {**(meta or {}), "normalization": normalization.to_dict()}
    return quantize(layers, input_spec=spec, weight_bits=weight_bits, acc_bits=acc_bits,
                    meta=meta, notes=notes)
