"""Rate-coded IF conversions: qcfs, deng-gu, data-driven and srp on the same integer engine.

All four use the classic IF neuron with reset by subtraction (docs/conversion-math.md section 3);
they differ in the threshold ``Theta``, the initial potential ``V0``, the per-step bias and (srp)
the probe phase:

============  ==================================  ==============  =====================  =======
method        Theta                               V0              per-step bias          source
============  ==================================  ==============  =====================  =======
qcfs          lambda (Bu et al. 2022)             Theta / 2       b'                     QCFS
deng-gu       trained clip, or max activation     0               b' + Theta / (2T)      TReLU
data-driven   Alg. 1 (T=1) / Alg. 2 (T>1)         from the same   b'                     any
srp           lambda, probe tau steps, mask       Theta / 2       b'                     QCFS
============  ==================================  ==============  =====================  =======

:func:`plan_neurons` chooses the float ``Theta``/``V0``/bias per layer; :func:`quantize_rate`
turns them into an integer :class:`~bitspike.sw.program.Program` (and, with ``exact=True``, into a
float Program with the same structure and unrounded parameters: the float SNN).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .convert import FloatLayer, _channel_units, extract_layers, fold_input_normalization
from .data import Normalization
from .errors import BitspikeError, UnsupportedLayerError, WidthError
from .program import METHODS, InputSpec, Layer, Program, signed_bits
from .qcfs import time_steps_for_levels

RATE_METHODS = tuple(m for m, mode in METHODS.items() if mode == "rate")
SOURCE_FOR_METHOD = {"bitserial": "qcfs", "qcfs": "qcfs", "srp": "qcfs", "deng-gu": "trelu",
                     "data-driven": "relu"}
SOURCE_NAMES = {"qcfs": "QCFS", "trelu": "threshold ReLU", "relu": "ReLU"}
DEFAULT_TAU = 4  # the SRP paper's recommendation for CIFAR


@dataclass
class NeuronPlan:
    """Float neuron parameters of one firing layer (per output channel)."""

    theta: torch.Tensor
    v0: torch.Tensor
    bias_step: torch.Tensor


def check_method(method: str, steps: int, tau: int) -> None:
    """Refuse an unknown method or a time-step count the method cannot use."""
    if method not in METHODS:
        raise BitspikeError(f"unknown method {method!r}: known methods are "
                            f"{', '.join(METHODS)}")
    if method == "bitserial":
        return
    if not isinstance(steps, int) or steps < 1:
        raise BitspikeError(f"method {method} needs --steps T >= 1, not {steps!r}")
    if method == "srp":
        if not isinstance(tau, int) or tau < 1:
            raise BitspikeError(f"srp needs --tau >= 1 probe steps, not {tau!r}")
    elif tau:
        raise BitspikeError(f"--tau is the srp method's probe phase; {method} has none")


@torch.no_grad()
def collect_activations(model: nn.Module, x: torch.Tensor, names: list[str],
                        batch_size: int = 256) -> dict[str, np.ndarray]:
    """Output values of the named activation modules over ``x`` (the calibration pass)."""
    modules = dict(model.named_modules())
    store: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    hooks = [modules[n].register_forward_hook(
        lambda _m, _i, out, n=n: store[n].append(out.detach().double().flatten(1)))
        for n in names]
    try:
        model.eval()
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size])
    finally:
        for h in hooks:
            h.remove()
    return {n: torch.cat(v).numpy() for n, v in store.items()}


def plan_neurons(layers: list[FloatLayer], method: str, steps: int,
                 activations: dict[str, np.ndarray] | None = None) -> list[NeuronPlan | None]:
    """Per firing layer: the method's ``Theta``, ``V0`` and per-step bias (None elsewhere)."""
    plans: list[NeuronPlan | None] = []
    for fl in layers:
        if fl.act is None:
            plans.append(None)
            continue
        c_out = fl.weight.shape[0]

        def channels(v, c_out=c_out) -> torch.Tensor:
            v = torch.as_tensor(v, dtype=torch.float64).flatten()
            return v.expand(c_out).clone() if v.numel() == 1 else v.clone()

        if method in ("qcfs", "srp"):
            if fl.act != "qcfs":
                raise UnsupportedLayerError(
                    f"method {method} needs a QCFS source network, but layer {fl.act_name!r} is "
                    f"{SOURCE_NAMES[fl.act]}: train with --activation qcfs")
            theta = channels(fl.lam)
            plans.append(NeuronPlan(theta, theta / 2, fl.bias.clone()))
        elif method == "deng-gu":
            if fl.lam is not None:
                theta = channels(fl.lam)
            else:  # plain ReLU source: threshold balancing with the maximum activation
                acts = _layer_activations(activations, fl)
                theta = channels(float(acts.max()))
                if float(theta[0]) <= 0:
                    raise BitspikeError(f"layer {fl.act_name!r} never activates on the "
                                        "calibration data: no threshold can be set")
            plans.append(NeuronPlan(theta, torch.zeros(c_out, dtype=torch.float64),
                                    fl.bias + theta / (2 * steps)))
        elif method == "data-driven":
            from .datadriven import calibrate

            acts = _layer_activations(activations, fl)
            try:
                theta, v0 = calibrate(acts, steps)
            except ValueError as e:
                raise BitspikeError(f"layer {fl.act_name!r}: {e}") from None
            plans.append(NeuronPlan(channels(theta), channels(v0), fl.bias.clone()))
        else:
            raise BitspikeError(f"{method} is not a rate method")
    return plans


def _layer_activations(activations, fl: FloatLayer) -> np.ndarray:
    if activations is None or fl.act_name not in activations:
        raise BitspikeError(f"layer {fl.act_name!r} needs a calibration pass over training data "
                            "(pass the training images)")
    return activations[fl.act_name]


def quantize_rate(layers: list[FloatLayer], plans: list[NeuronPlan | None], *,
                  input_spec: InputSpec, method: str, steps: int, tau: int = 0,
                  weight_bits: int = 8, acc_bits: int = 32, meta: dict | None = None,
                  notes: list[str] | None = None, exact: bool = False) -> Program:
    """Integer rate-mode Program (or, with ``exact``, its unrounded float twin).

    Per firing layer the integer threshold is as large as the weight width allows:
    ``Theta = floor(qmax * theta / max|W''|)``, ``s_w = theta / Theta``, ``w = round(W''/s_w)``,
    ``V0 = round(v0 / s_w)``, ``B = round(bias_step / s_w)``. One input spike of a layer is worth
    the previous layer's ``theta`` (a pixel level is worth 1 after the normalization fold; pooling
    divides by 4).
    """
    if not isinstance(weight_bits, int) or not 2 <= weight_bits <= 16:
        raise WidthError(f"weight bits must be an integer in 2..16, not {weight_bits!r}")
    qmax = 2 ** (weight_bits - 1) - 1
    total = tau + steps
    shape = tuple(input_spec.shape)
    t_in, in_levels = input_spec.t, 2**input_spec.t - 1
    unit = torch.ones(shape[0], dtype=torch.float64)
    out: list[Layer] = []
    counts: dict[str, int] = {}

    def next_name(prefix: str) -> str:
        counts[prefix] = counts.get(prefix, 0) + 1
        return f"{prefix}{counts[prefix]}"

    for index, (fl, plan) in enumerate(zip(layers, plans, strict=True)):
        if fl.kind == "avgpool2x2":
            if index == 0:
                raise UnsupportedLayerError("the first layer must be a convolution or linear layer")
            new_shape = (shape[0], shape[1] // 2, shape[2] // 2)
            out.append(Layer(next_name("pool"), "sumpool2x2", shape, new_shape, t_in, total,
                             4 * in_levels, True, unit=float(unit.mean()) / 4, source=fl.name))
            shape, in_levels, unit = new_shape, 4 * in_levels, unit / 4
            continue
        c_out = fl.weight.shape[0]
        w_units = fl.weight * _channel_units(unit, fl.kind, shape)
        wmax = w_units.reshape(c_out, -1).abs().amax(dim=1)
        fires = plan is not None
        shape_w = [-1] + [1] * (fl.weight.dim() - 1)
        if fires:
            theta = plan.theta
            per_layer = bool((theta == theta[0]).all())
            if per_layer:
                ratio = qmax * theta[0] / wmax.max() if wmax.max() > 0 else torch.tensor(qmax)
                ratio = ratio.expand(c_out)
            else:
                ratio = torch.where(wmax > 0, qmax * theta / wmax.clamp_min(1e-300),
                                    torch.full_like(theta, qmax))
            if float(ratio.min()) < 1 - 1e-9:
                need = weight_bits + math.ceil(math.log2(1 / float(ratio.min())))
                raise WidthError(f"layer {fl.name!r}: its weights are too large for the "
                                 f"threshold at {weight_bits}-bit weights; convert with "
                                 f"--weight-bits {need} or more")
            Theta = torch.floor(ratio * (1 + 1e-9)).to(torch.int64).clamp_min(1)
        while True:
            s_w = theta / Theta.double() if fires else (
                (wmax.max() / qmax if wmax.max() > 0 else torch.tensor(1.0)).expand(c_out))
            w_real = w_units / s_w.view(shape_w)
            w = torch.round(w_real).to(torch.int64)
            over = w.reshape(c_out, -1).abs().amax(dim=1) > qmax
            if not over.any():
                break
            if not fires or int(Theta.min()) <= 1:
                raise WidthError(f"layer {fl.name!r}: a rounded weight exceeds the "
                                 f"{weight_bits}-bit range; convert with more --weight-bits")
            Theta = Theta - (over.to(torch.int64) if not per_layer else 1)
        b_real = (plan.bias_step if fires else fl.bias) / s_w
        new_shape = (c_out, shape[1], shape[2]) if fl.kind == "conv3x3" else (c_out,)
        prefix = "conv" if fl.kind == "conv3x3" else ("fc" if fires else "out")
        if exact:
            weights, bias = w_real.numpy(), b_real.numpy()
            threshold = Theta.double().numpy() if fires else None
            v_init = (plan.v0 / s_w).numpy() if fires else None
        else:
            weights, bias = w.numpy(), torch.round(b_real).to(torch.int64).numpy()
            threshold = Theta.numpy() if fires else None
            v_init = torch.round(plan.v0 / s_w).to(torch.int64).numpy() if fires else None
        layer = Layer(next_name(prefix), fl.kind, shape, new_shape, t_in,
                      total if fires else 0, 1 if fires else 0, fires, weights=weights,
                      bias=bias, threshold=threshold, unit=float(s_w.mean()),
                      source=fl.act_name or fl.name, v_init=v_init)
        if not exact:
            need = signed_bits(layer.acc_magnitude(in_levels, rate_steps=total))
            if need > acc_bits:
                raise WidthError(f"layer {layer.name!r}: the membrane potential needs {need} "
                                 f"bits over {total} steps but --acc-bits is {acc_bits}: raise "
                                 "--acc-bits or lower --weight-bits")
        out.append(layer)
        if fires:
            shape, t_in, in_levels, unit = new_shape, total, 1, theta.clone()
    program = Program("rate", input_spec, out, weight_bits, method=method, t_steps=steps,
                      tau=tau, meta=dict(meta or {}), notes=list(notes or []))
    if not exact:
        program.validate()
    return program


def convert_rate(model: nn.Module, *, method: str, steps: int, tau: int = 0,
                 input_shape: tuple[int, ...], normalization: Normalization,
                 calibration: torch.Tensor | None = None, weight_bits: int = 8,
                 acc_bits: int = 32, meta: dict | None = None) -> tuple[Program, Program]:
    """Integer rate Program and its float twin for ``method`` at ``steps`` (and ``tau``).

    ``calibration`` (integer pixel levels, e.g. the training split) feeds the activation
    statistics that data-driven (and deng-gu on a plain-ReLU source) need.
    """
    check_method(method, steps, tau)
    if method == "bitserial":
        raise BitspikeError("bitserial is not a rate method: use convert_model")
    layers = extract_layers(model)
    layers, notes = fold_input_normalization(layers, normalization, tuple(input_shape))
    activations = None
    needs_stats = method == "data-driven" or (
        method == "deng-gu" and any(fl.act == "relu" for fl in layers))
    if needs_stats:
        if calibration is None:
            raise BitspikeError(f"method {method} needs calibration images (the training split)")
        names = [fl.act_name for fl in layers if fl.act is not None]
        activations = collect_activations(model, normalization.apply(calibration), names)
    plans = plan_neurons(layers, method, steps, activations)
    spec = InputSpec(tuple(input_shape), normalization.max_level,
                     time_steps_for_levels(normalization.max_level))
    sources = sorted({SOURCE_NAMES[fl.act] for fl in layers if fl.act is not None})
    meta = {**(meta or {}), "normalization": normalization.to_dict(),
            "source_activation": ", ".join(sources)}
    kwargs = dict(input_spec=spec, method=method, steps=steps, tau=tau,
                  weight_bits=weight_bits, acc_bits=acc_bits, meta=meta, notes=notes)
    return quantize_rate(layers, plans, **kwargs), quantize_rate(layers, plans, exact=True,
                                                                 **kwargs)
