"""The bit-exact integer golden model of the engine's arithmetic (bit-serial mode).

For every layer, in the engine's order (docs/conversion-math.md section 2):

1. Horner accumulation over the input bit planes, most significant first:
   ``acc = (acc << 1) + sum_{i: s_i(t)=1} w[o, i]`` for ``t = 1..T_in``.
2. Deferred successive-approximation fire/reset after all input steps:
   ``u = acc + B``; if ``L < 2^T - 1`` and ``u >= (L + 1) D`` the neuron emits L; otherwise for
   ``t = 1..T``: ``s(t) = u >= D << (T - t)``, ``u -= s(t) (D << (T - t))``.
3. The output layer does not fire: logits ``acc + B``, class = argmax, ties to the lowest index.

Vectorized over a batch in torch; all arithmetic is integer (convolution sums are computed in
float64, exact for these magnitudes, and checked to be below 2**53 by the Program's width check).

Two paths give the same integers. With ``trace=True`` (or an ablation) every step above runs as
the hardware runs it, and every accumulator step is kept. Without a trace (what evaluation,
comparison and the RTL checks call) the model computes the same results directly: Horner over
the bit planes is linear, so it is one synaptic sum of the integer levels, and successive
approximation gives the bits of ``clip(floor(u0 / D), 0, L)``; the rate model folds its time
steps into the batch. Both run in float32 where the Program's bounds prove every value below
2^24 (else float64), with a witness that each sum came out integral. tests/test_golden_fast.py
holds the two paths equal on random Programs of every kind and on the trained digits models;
bench/bench_golden.py measures their speed against the float ANN.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .errors import BitspikeError
from .program import Layer, Program


@dataclass
class GoldenResult:
    """What the golden model returns for a batch of ``N`` inputs.

    ``levels[i]``: output levels of layer ``i`` ``(N, *out_shape)`` (the logits for the output
    layer); ``spikes[i]``: its emitted bits ``(N, T_out, *out_shape)`` as uint8, MSB first (``None``
    for the output layer); ``accumulators[i]`` (only with ``trace=True``): the accumulator after
    each input step ``(N, T_in, *out_shape)`` (rate mode: the potential after each step's
    integration). Rate mode with SRP: ``srp_masks[i]`` (neurons kept after the probe) and
    ``residuals[i]`` (their potential ``v(tau)``) per firing layer.
    """

    logits: torch.Tensor
    classes: torch.Tensor
    levels: list[torch.Tensor]
    spikes: list[torch.Tensor | None]
    input_spikes: torch.Tensor
    accumulators: list[torch.Tensor] = field(default_factory=list)
    srp_masks: list[torch.Tensor | None] = field(default_factory=list)
    residuals: list[torch.Tensor | None] = field(default_factory=list)


def bit_planes(levels: torch.Tensor, steps: int) -> torch.Tensor:
    """``(N, *shape)`` levels -> ``(N, steps, *shape)`` bits, most significant first."""
    if steps <= 8 and levels.numel() and int(levels.min()) >= 0 and int(levels.max()) < 256:
        # the common case (activation levels of at most 8 bits), on bytes: 8x less memory
        # traffic than int64 shifts, the same bits
        return _planes_u8(levels, steps)
    shifts = torch.arange(steps - 1, -1, -1, dtype=torch.int64)
    view = [1, steps] + [1] * (levels.dim() - 1)
    return ((levels.unsqueeze(1) >> shifts.view(view)) & 1).to(torch.uint8)


def argmax_lowest(logits: torch.Tensor) -> torch.Tensor:
    """Index of the largest logit per row; ties go to the lowest index."""
    top = logits.max(dim=1, keepdim=True).values
    idx = torch.arange(logits.shape[1]).expand_as(logits)
    return torch.where(logits == top, idx, logits.shape[1]).min(dim=1).values


def successive_approximation(u0: torch.Tensor, threshold: torch.Tensor, steps: int,
                             levels: int) -> torch.Tensor:
    """Deferred fire/reset: the ``steps`` output bits ``(N, steps, ...)`` of potentials ``u0``.

    ``threshold`` broadcasts against ``u0`` (one D per channel). Equals the bits of
    ``clip(floor(u0 / D), 0, levels)``.
    """
    u = u0.clone()
    bits = []
    for t in range(steps):
        thr = threshold << (steps - 1 - t)
        s = u >= thr
        u = u - s.to(u.dtype) * thr
        bits.append(s)
    out = torch.stack(bits, dim=1).to(torch.uint8)
    if levels < 2**steps - 1:  # the clip at L: compare with (L + 1) D first
        sat = u0 >= (levels + 1) * threshold
        out = torch.where(sat.unsqueeze(1), bit_planes(torch.full_like(u0, levels), steps), out)
    return out


def _synaptic_sum(layer: Layer, plane: torch.Tensor, weights: torch.Tensor | None,
                  integer: bool = True) -> torch.Tensor:
    """Sum of the weights of the inputs that spike in one step (an exact integer tensor).

    ``plane`` holds per-input multiplicities (bits, or 2x2 spike counts after pooling).
    ``integer=False`` keeps float64 (the float twin of a rate Program).
    """
    x = plane.to(torch.float64)
    if layer.kind == "conv3x3":
        y = F.conv2d(x, weights, padding=1)
    elif layer.kind == "dense":
        y = x.flatten(1) @ weights.T
    else:  # sumpool2x2: weight 1 on each of the 4 inputs of a window
        n, c, h, w = x.shape
        y = x.view(n, c, h // 2, 2, w // 2, 2).sum(dim=(3, 5))
    return y.round().to(torch.int64) if integer else y


#: Integers of at most this magnitude are exact in float32 (a 24-bit significand).
FLOAT32_EXACT = 1 << 24


def _float_for(bound: float) -> torch.dtype:
    """float32 when every integer met is below 2^24 in magnitude (exact whatever order sums
    run in), else float64 (exact below 2^53, far above any accumulator the Program's width
    check admits)."""
    return torch.float32 if bound < FLOAT32_EXACT else torch.float64


def _exact_sum(layer: Layer, x: torch.Tensor, in_max: int, *,
               dtype: torch.dtype | None = None) -> torch.Tensor:
    """The layer's synaptic sum of integer inputs ``x`` (levels, or per-step spike counts),
    exact, in one convolution or matrix product: int64, or with ``dtype`` that float type
    (integral values).

    Every partial sum is an integer of magnitude at most ``sum|w| * in_max``, so the float type
    of :func:`_float_for` is exact. A sample of the result is checked integral: a witness that
    no inexact algorithm (a Winograd transform) ran.
    """
    if layer.kind == "sumpool2x2":  # sums of four integers: exact in any type that holds them
        ft = dtype or _float_for(4 * in_max)
        xf = x.to(ft)
        pooled = (xf[..., 0::2, 0::2] + xf[..., 1::2, 0::2]) + (xf[..., 0::2, 1::2]
                                                                + xf[..., 1::2, 1::2])
        return pooled if dtype is not None else pooled.to(torch.int64)
    weights = np.asarray(layer.weights)
    bound = float(np.abs(weights.reshape(weights.shape[0], -1)).sum(axis=1).max()) * in_max
    ft = dtype if dtype is not None and bound < FLOAT32_EXACT else _float_for(bound)
    w = torch.from_numpy(weights.astype(np.float32 if ft is torch.float32 else np.float64))
    xf = x.to(ft)
    # contiguous: the library may hand back another memory format (channels last)
    y = (F.conv2d(xf, w, padding=1) if layer.kind == "conv3x3" else xf.flatten(1) @ w.T
         ).contiguous()
    sample = y[:4]
    if sample.numel() and float((sample - sample.round()).abs().max()) > 0.25:
        raise BitspikeError(f"layer {layer.name}: the {ft} synaptic sum is not integral: the "
                            "convolution library is not exact on integers here")  # pragma: no cover
    # with ``dtype``: that float type, or float64 where the bound needs it (never narrowed)
    return y if dtype is not None else y.to(torch.int64)


def _channel_view(v: np.ndarray, out_shape: tuple[int, ...]) -> torch.Tensor:
    view = [1, -1] + [1] * (len(out_shape) - 1)
    v = np.asarray(v)
    dtype = np.float64 if v.dtype.kind == "f" else np.int64
    return torch.from_numpy(v.astype(dtype)).view(view)


@dataclass(frozen=True)
class Ablation:
    """Switches for the bit-serial ablation (Table 4 of "When SNN Meets ANN"); all on = exact.

    ``left_shift``
        Off: the receiver adds every input bit plane with the same weight (no ``acc << 1``).
    ``bias_once``
        Off: ``B`` is added at every input step inside the accumulation (so it is counted
        ``2^T_in - 1`` times with the shift), instead of once before firing.
    ``deferred``
        Off: each output bit is decided as soon as its time step's input has arrived, from the
        partial sum (the input bits not yet arrived taken as 0), instead of after all input
        steps. The output stream ends with the input stream: output step ``t`` of ``T_out`` sees
        input step ``t + T_in - T_out``.
    """

    left_shift: bool = True
    bias_once: bool = True
    deferred: bool = True

    @property
    def exact(self) -> bool:
        return self.left_shift and self.bias_once and self.deferred

    def label(self) -> str:
        return ", ".join(f"{name} {'on' if getattr(self, name) else 'off'}"
                         for name in ("left_shift", "bias_once", "deferred"))


EXACT = Ablation()


def run_layer(layer: Layer, levels_in: torch.Tensor, *, trace: bool = False,
              ablation: Ablation = EXACT):
    """Run one bit-serial layer on input levels; return ``(levels_out, spikes_out, acc_trace)``."""
    weights = (torch.from_numpy(layer.weights).to(torch.float64)
               if layer.weights is not None else None)
    pool = layer.kind == "sumpool2x2"
    bias = None if pool else _channel_view(layer.bias, layer.out_shape)
    planes = bit_planes(levels_in, layer.t_in)
    acc = None
    steps = []
    for t in range(layer.t_in):
        add = _synaptic_sum(layer, planes[:, t], weights)
        if not ablation.bias_once and bias is not None:
            add = add + bias
        if acc is None:
            acc = add
        else:
            acc = ((acc << 1) if ablation.left_shift else acc) + add
        steps.append(acc)
    acc_trace = torch.stack(steps, dim=1) if trace else None
    once = bias if (ablation.bias_once and bias is not None) else 0
    if not pool and not layer.fires:
        return acc + once, None, acc_trace
    threshold = (torch.ones((), dtype=torch.int64) if pool
                 else _channel_view(layer.threshold, layer.out_shape))
    if ablation.deferred:
        spikes = successive_approximation(acc + once, threshold, layer.t_out, layer.levels)
    else:
        spikes = _early_firing(steps, once, threshold, layer, ablation.left_shift)
    weights_of_bits = (1 << torch.arange(layer.t_out - 1, -1, -1, dtype=torch.int64))
    view = [1, layer.t_out] + [1] * (spikes.dim() - 2)
    levels = (spikes.to(torch.int64) * weights_of_bits.view(view)).sum(dim=1)
    return levels, spikes, acc_trace


def _early_firing(partials, once, threshold, layer: Layer, left_shift: bool) -> torch.Tensor:
    """Non-deferred firing (ablation): bit ``t`` from the partial sum available at its step."""
    emitted = torch.zeros_like(partials[-1])
    bits = []
    lag = layer.t_in - layer.t_out
    for t in range(layer.t_out):
        j = min(max(t + lag, 0), layer.t_in - 1)
        partial = partials[j] << (layer.t_in - 1 - j) if left_shift else partials[j]
        thr = threshold << (layer.t_out - 1 - t)
        s = partial + once - emitted >= thr
        emitted = emitted + s.to(emitted.dtype) * thr
        bits.append(s)
    out = torch.stack(bits, dim=1).to(torch.uint8)
    if layer.levels < 2**layer.t_out - 1:  # keep the clip at L
        over = (out.to(torch.int64) * (1 << torch.arange(layer.t_out - 1, -1, -1)).view(
            [1, -1] + [1] * (out.dim() - 2))).sum(dim=1) > layer.levels
        out = torch.where(over.unsqueeze(1),
                          bit_planes(torch.full_like(emitted, layer.levels), layer.t_out), out)
    return out


def check_input(program: Program, levels: torch.Tensor) -> torch.Tensor:
    """Validate a batch of input levels against the Program's input spec."""
    levels = torch.as_tensor(levels)
    if levels.dtype.is_floating_point or levels.dtype == torch.bool:
        raise BitspikeError(f"inputs must be integer pixel levels, got dtype {levels.dtype}")
    levels = levels.to(torch.int64)
    shape = tuple(program.input.shape)
    if levels.dim() == len(shape):
        levels = levels.unsqueeze(0)
    if tuple(levels.shape[1:]) != shape:
        raise BitspikeError(f"inputs of shape {tuple(levels.shape[1:])} do not match the "
                            f"Program's input {shape}")
    if levels.numel() and (int(levels.min()) < 0 or int(levels.max()) > program.input.max_level):
        raise BitspikeError(f"input levels must lie in 0..{program.input.max_level}, got "
                            f"{int(levels.min())}..{int(levels.max())}")
    return levels


def _horner(layer: Layer, levels_in: torch.Tensor, integer: bool = True) -> torch.Tensor:
    """The layer's accumulation over all input bit planes, MSB first (no bias)."""
    weights = torch.from_numpy(np.asarray(layer.weights, dtype=np.float64))
    planes = bit_planes(levels_in, layer.t_in)
    acc = None
    for t in range(layer.t_in):
        add = _synaptic_sum(layer, planes[:, t], weights, integer)
        acc = add if acc is None else acc * 2 + add
    return acc


@torch.no_grad()
def run_rate(program: Program, inputs: torch.Tensor, *, trace: bool = False) -> GoldenResult:
    """The rate-coded IF golden model (integer Program, or its float twin from quantize_rate).

    Layer by layer, ``S = tau + t_steps`` steps each (docs/conversion-math.md section 3).
    ``levels[i]`` is a firing layer's spike count over the last ``t_steps`` steps, ``spikes[i]``
    its per-step outputs ``(N, S, ...)`` (spikes, or 2x2 spike counts for pooling);
    ``accumulators[i]`` (with ``trace``) the potential after each step's integration, before
    firing. Dtypes follow the Program's arrays: int64 for a Program, float64 for its float twin.
    """
    x = check_input(program, inputs)
    S, tau = program.rate_steps, program.tau
    integer = program.layers[0].weights.dtype.kind != "f"
    if integer and not trace:
        return _run_rate_fast(program, x)
    levels, spikes, accs, srp_masks, residuals = [], [], [], [], []
    steps_in = None  # (N, S, *shape) per-step inputs of the current layer
    for index, layer in enumerate(program.layers):
        if layer.kind == "sumpool2x2":
            n = steps_in.shape[0]
            flat = steps_in.flatten(0, 1)
            c, h, w = flat.shape[1:]
            pooled = flat.view(-1, c, h // 2, 2, w // 2, 2).sum(dim=(3, 5))
            steps_in = pooled.view(n, S, *pooled.shape[1:])
            levels.append(steps_in[:, tau:].sum(dim=1))
            spikes.append(steps_in)
            srp_masks.append(None)
            residuals.append(None)
            if trace:
                accs.append(steps_in)
            continue
        weights = torch.from_numpy(np.asarray(layer.weights, dtype=np.float64))
        bias = _channel_view(layer.bias, layer.out_shape)
        if index == 0:  # the analog input current, computed once bit-serially
            current = _horner(layer, x, integer)
            steps_add = [current] * S
        else:
            steps_add = [_synaptic_sum(layer, steps_in[:, t], weights, integer) for t in range(S)]
        if not layer.fires:
            logits = sum(add + bias for add in steps_add[tau:])
            levels.append(logits)
            spikes.append(None)
            srp_masks.append(None)
            residuals.append(None)
            if trace:
                accs.append(None)
            continue
        out, potentials, keep, residual = integrate_and_fire(
            torch.stack(steps_add, dim=1), bias=bias,
            threshold=_channel_view(layer.threshold, layer.out_shape),
            v_init=_channel_view(layer.v_init, layer.out_shape), tau=tau)
        steps_in = out.to(torch.int64)
        levels.append(steps_in[:, tau:].sum(dim=1))
        spikes.append(out)
        if trace:
            accs.append(potentials)
        if tau:
            srp_masks.append(keep)
            residuals.append(residual)
        else:
            srp_masks.append(None)
            residuals.append(None)
    logits = levels[-1]
    result = GoldenResult(logits, argmax_lowest(logits), levels, spikes,
                          bit_planes(x, program.input.t), accs)
    result.srp_masks, result.residuals = srp_masks, residuals
    return result


def integrate_and_fire(adds: torch.Tensor, *, bias, threshold, v_init, tau: int = 0,
                       keep_potentials: bool = True):
    """IF neurons with reset by subtraction over ``S`` steps of synaptic input.

    ``adds``: ``(N, S, ...)`` synaptic sums per step; ``bias``, ``threshold``, ``v_init``
    broadcast against one step. Per step: ``v += add + bias; s = v >= threshold;
    v -= s threshold``. With ``tau > 0`` (SRP), at step ``tau`` the neurons with ``v < 0`` are
    masked (no spikes from then on) and every ``v`` restarts at ``v_init``.

    Returns ``(spikes uint8 (N, S, ...), potentials before firing (N, S, ...), keep mask,
    residual v(tau))``; the last two are ``None`` without ``tau``, the potentials ``None``
    without ``keep_potentials``.
    """
    v = v_init + torch.zeros_like(adds[:, 0])
    keep = residual = None
    outs, potentials = [], []
    for t in range(adds.shape[1]):
        if tau and t == tau:
            residual = v
            keep = v >= 0
            v = v_init + torch.zeros_like(v)
        v = v + adds[:, t] + bias
        if keep_potentials:
            potentials.append(v)
        s = v >= threshold
        v = v - s.to(v.dtype) * threshold
        outs.append(s & keep if keep is not None else s)
    return (torch.stack(outs, dim=1).to(torch.uint8),
            torch.stack(potentials, dim=1) if keep_potentials else None, keep, residual)


@torch.no_grad()
def run_program(program: Program, inputs: torch.Tensor, *, trace: bool = False,
                ablation: Ablation = EXACT) -> GoldenResult:
    """Run the golden model on a batch of input levels ``(N, *input.shape)``.

    Bit-serial Programs run the bit-serial model below (``ablation`` switches parts of the scheme
    off, as in Table 4 of "When SNN Meets ANN"); rate Programs :func:`run_rate`.
    """
    if program.mode == "rate":
        if not ablation.exact:
            raise BitspikeError("the ablation switches apply to the bit-serial scheme only")
        return run_rate(program, inputs, trace=trace)
    x = check_input(program, inputs)
    if not trace and ablation.exact:
        return _run_bitserial_fast(program, x)
    levels, spikes, accs = [], [], []
    cur = x
    for layer in program.layers:
        cur, s, a = run_layer(layer, cur, trace=trace, ablation=ablation)
        levels.append(cur)
        spikes.append(s)
        if trace:
            accs.append(a)
    logits = levels[-1]
    return GoldenResult(logits, argmax_lowest(logits), levels, spikes,
                        bit_planes(x, program.input.t), accs)


def _planes_u8(levels: torch.Tensor, steps: int) -> torch.Tensor:
    """:func:`bit_planes` of levels known to lie in ``0..255`` (bytes)."""
    small = levels.to(torch.uint8)
    return torch.stack([(small >> (steps - 1 - t)) & 1 for t in range(steps)], dim=1)


def _floor_div(u: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """``floor(u / d)`` of integral floats, exactly: the float quotient is within one of it
    (every value is an integer the float type holds exactly), and one step corrects it."""
    q = torch.floor(u / d)
    return q - (q * d > u).to(u.dtype) + ((q + 1) * d <= u).to(u.dtype)


def _run_bitserial_fast(program: Program, x: torch.Tensor) -> GoldenResult:
    """The bit-serial model without a trace: the same integers as :func:`run_layer`, computed
    directly. Horner over the input bit planes, ``acc = sum_t 2^(T-1-t) W x_t``, is the one
    synaptic sum of the integer levels ``W x`` (the sum is linear); successive approximation
    gives the bits of ``clip(floor(u0 / D), 0, L)`` (docs/conversion-math.md), so the levels
    are that and the spikes their bit planes. Each layer runs in float32 where its bound
    (:meth:`Layer.acc_magnitude`) proves every value exact, else float64.
    tests/test_golden_fast.py holds it equal to the traced path, which runs the steps."""
    levels, spikes = [], []
    cur = x
    for layer, in_max in zip(program.layers, program.input_maxima(), strict=True):
        ft = _float_for(layer.acc_magnitude(in_max))
        acc = _exact_sum(layer, cur, in_max, dtype=ft)
        if layer.kind == "sumpool2x2":
            level = acc.clamp(0, layer.levels)
        else:
            u0 = acc + _channel_view(layer.bias, layer.out_shape).to(ft)
            if not layer.fires:
                logits = u0.to(torch.int64)
                levels.append(logits)
                spikes.append(None)
                cur = logits
                continue
            threshold = _channel_view(layer.threshold, layer.out_shape).to(ft)
            level = _floor_div(u0, threshold).clamp(0, layer.levels)
        cur = level  # integral floats: the next layer's input
        levels.append(level.to(torch.int64))
        spikes.append(_planes_u8(level, layer.t_out) if layer.levels < 256
                      else bit_planes(levels[-1], layer.t_out))
    logits = levels[-1]
    return GoldenResult(logits, argmax_lowest(logits), levels, spikes,
                        bit_planes(x, program.input.t))


def _run_rate_fast(program: Program, x: torch.Tensor) -> GoldenResult:
    """The rate-coded model of an integer Program without a trace: the same integers as
    :func:`run_rate`, with each layer's synaptic sums of all ``S`` steps in one exact
    convolution (the steps folded into the batch, time-major so that each step is one
    contiguous block, :func:`_exact_sum`), the bias added once for all steps, the potentials
    not kept, and everything in float32 where the Program's bound on every potential
    (:meth:`Layer.acc_magnitude`) proves it exact (else float64). tests/test_golden_fast.py
    holds it equal to the traced path."""
    S, tau = program.rate_steps, program.tau
    maxima = program.input_maxima()
    bound = max(lay.acc_magnitude(m, rate_steps=S)
                for lay, m in zip(program.layers, maxima, strict=True))
    ft = _float_for(bound)
    levels, spikes, srp_masks, residuals = [], [], [], []
    steps_in = None  # (S, N, *shape): the layer's input at every step, as floats

    def batch_major(t, dtype):  # (S, N, ...) -> (N, S, ...) in ``dtype``: one copy
        out = torch.empty((t.shape[1], t.shape[0], *t.shape[2:]), dtype=dtype)
        return out.copy_(t.transpose(0, 1))

    for index, (layer, in_max) in enumerate(zip(program.layers, maxima, strict=True)):
        if layer.kind == "sumpool2x2":
            n = steps_in.shape[1]
            pooled = _exact_sum(layer, steps_in.flatten(0, 1), in_max, dtype=ft)
            steps_in = pooled.view(S, n, *pooled.shape[1:])
            levels.append(steps_in[tau:].sum(dim=0).to(torch.int64))
            spikes.append(batch_major(steps_in, torch.int64))
            srp_masks.append(None)
            residuals.append(None)
            continue
        bias = _channel_view(layer.bias, layer.out_shape).to(ft)
        if index == 0:  # the analog input current: Horner over the bit planes is W x
            current = _exact_sum(layer, x, in_max, dtype=ft) + bias
            adds = current.unsqueeze(0).expand(S, *current.shape)
        else:
            n = steps_in.shape[1]
            flat = _exact_sum(layer, steps_in.flatten(0, 1), in_max, dtype=ft)
            adds = flat.view(S, n, *flat.shape[1:]) + bias
        if not layer.fires:
            levels.append(adds[tau:].sum(dim=0).to(torch.int64))
            spikes.append(None)
            srp_masks.append(None)
            residuals.append(None)
            continue
        threshold = _channel_view(layer.threshold, layer.out_shape).to(ft)
        v_init = _channel_view(layer.v_init, layer.out_shape).to(ft)
        v = v_init.expand_as(adds[0]).clone()
        keep = keep_f = residual = None
        out = torch.empty((S, *adds.shape[1:]), dtype=torch.bool)  # the spikes
        steps_in = torch.empty((S, *adds.shape[1:]), dtype=ft)  # the same, the next input
        count = torch.zeros_like(v)
        for t in range(S):  # in place, step by step: each step's block stays in cache
            if tau and t == tau:  # SRP: mask the neurons below zero, restart every potential
                residual = v.to(torch.int64)
                keep = v >= 0
                keep_f = keep.to(ft)
                v = v_init.expand_as(v).clone()
            v += adds[t]
            fired = torch.ge(v, threshold, out=out[t])
            spike = steps_in[t]
            spike.copy_(fired)
            v.addcmul_(spike, threshold, value=-1)  # reset by subtraction
            if keep is not None:
                fired &= keep
                spike.mul_(keep_f)
            if t >= tau:
                count += spike
        levels.append(count.to(torch.int64))
        spikes.append(batch_major(out, torch.uint8))
        srp_masks.append(keep)
        residuals.append(residual)
    logits = levels[-1]
    result = GoldenResult(logits, argmax_lowest(logits), levels, spikes,
                          bit_planes(x, program.input.t), [])
    result.srp_masks, result.residuals = srp_masks, residuals
    return result
