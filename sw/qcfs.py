"""The QCFS activation (quantization-clip-floor-shift) and the bit-sparsity regularizer.

QCFS (Bu et al., ICLR 2022) replaces ReLU in the source ANN::

    a = (lam / L) * clip(floor(h * L / lam + 1/2), 0, L)

``k = clip(...)`` is the integer level (0..L) that the bit-serial SNN sends as ``T`` binary digits.
``lam`` is trainable (one per layer, or one per channel); ``floor`` uses a straight-through
estimator. The parameter is named ``thresh`` as in the public QCFS code; ``up`` (the other public
name) is accepted when loading a state_dict. ``L`` is not stored in checkpoints: it is an argument.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def time_steps_for_levels(levels: int) -> int:
    """Bit-serial time steps needed to send levels ``0..levels``: ``ceil(log2(levels + 1))``."""
    if not isinstance(levels, int) or levels < 1:
        raise ValueError(f"levels must be a positive integer, not {levels!r}")
    return max(1, math.ceil(math.log2(levels + 1)))


class _FloorSTE(torch.autograd.Function):
    """``floor`` forward, identity backward (straight-through estimator)."""

    @staticmethod
    def forward(ctx, x):  # noqa: D102
        return torch.floor(x)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        return grad


class _BitCountSurrogate(torch.autograd.Function):
    """Number of 1-bits of the levels ``k`` (forward); the surrogate of Eq. 11 (backward).

    The surrogate of "When SNN Meets ANN" (Eq. 11): ``d a_t / d a = 1`` where ``0 < a < lam`` and
    0 elsewhere, for each of the ``T`` bits, so ``d popcount / d a = T`` inside the linear range.
    """

    @staticmethod
    def forward(ctx, a, k, lam, steps: int):  # noqa: D102
        inside = (a > 0) & (a < lam)
        ctx.save_for_backward(inside)
        ctx.steps = steps
        k = k.to(torch.int64)
        ones = torch.zeros_like(k)
        for bit in range(steps):
            ones += (k >> bit) & 1
        return ones.sum().to(a.dtype)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        (inside,) = ctx.saved_tensors
        return grad * ctx.steps * inside.to(grad.dtype), None, None, None


class QCFS(nn.Module):
    """Quantization-clip-floor-shift activation.

    Parameters
    ----------
    levels : int
        Quantization steps ``L`` (levels 0..L). Bit-serial conversion needs
        ``T = ceil(log2(L + 1))`` time steps; ``L = 2**T - 1`` uses them fully.
    thresh : float
        Initial threshold ``lam``.
    channels : int or None
        ``None`` for one threshold per layer (QCFS's choice), else one per channel (dim 1).

    Members
    -------
    thresh : Parameter, shape ``[1]`` or ``[channels]``
        The trainable threshold ``lam``.
    last_bit_count : Tensor or None
        When ``track_bits`` is set, the number of 1-bits in the last forward's levels (with the
        surrogate gradient of Eq. 11 of "When SNN Meets ANN"), for the bit-sparsity regularizer.
    """

    def __init__(self, *, levels: int, thresh: float = 8.0, channels: int | None = None):
        super().__init__()
        if not isinstance(levels, int) or levels < 1:
            raise TypeError(f"levels must be a positive integer, not {levels!r}")
        if channels is not None and (not isinstance(channels, int) or channels < 1):
            raise TypeError(f"channels must be None or a positive integer, not {channels!r}")
        self.levels = levels
        self.channels = channels
        self.thresh = nn.Parameter(torch.full((channels or 1,), float(thresh)))
        self.track_bits = False
        self.last_bit_count: torch.Tensor | None = None

    def extra_repr(self) -> str:
        per = "per-channel" if self.channels else "per-layer"
        return f"levels={self.levels}, {per} threshold"

    def _lam(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels is None:
            return self.thresh
        shape = [1, self.channels] + [1] * (x.dim() - 2)
        return self.thresh.view(shape)

    def level(self, x: torch.Tensor) -> torch.Tensor:
        """Integer levels ``k`` (a float tensor) of the pre-activation ``x``; no gradient path."""
        lam = self._lam(x)
        return torch.clamp(torch.floor(x * self.levels / lam + 0.5), 0, self.levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lam = self._lam(x)
        L = self.levels
        k = torch.clamp(_FloorSTE.apply(x * L / lam + 0.5), 0, L)
        a = k * (lam / L)
        if self.track_bits:
            steps = time_steps_for_levels(L)
            self.last_bit_count = _BitCountSurrogate.apply(a, k.detach(), lam.detach(), steps)
        return a

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The public QCFS code names the threshold `up` in some versions, `thresh` in others.
        alias = prefix + "up"
        if alias in state_dict and prefix + "thresh" not in state_dict:
            state_dict[prefix + "thresh"] = state_dict.pop(alias)
        key = prefix + "thresh"
        if key in state_dict and state_dict[key].dim() == 0:
            state_dict[key] = state_dict[key].reshape(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def bit_sparsity_loss(model: nn.Module) -> torch.Tensor:
    """L_SP of "When SNN Meets ANN" (Eq. 10): 1-bits of every hidden level, summed over the network.

    Call after a forward pass with :func:`track_bit_sparsity` enabled. Averaged over the batch by
    the caller (see :mod:`bitspike.sw.train`).
    """
    total = None
    for m in model.modules():
        if isinstance(m, QCFS) and m.last_bit_count is not None:
            total = m.last_bit_count if total is None else total + m.last_bit_count
    if total is None:
        raise RuntimeError("no QCFS layer tracked its bits: call track_bit_sparsity(model) first")
    return total


def track_bit_sparsity(model: nn.Module, enabled: bool = True) -> None:
    """Make every QCFS layer of ``model`` record its 1-bit count on each forward."""
    for m in model.modules():
        if isinstance(m, QCFS):
            m.track_bits = enabled
            m.last_bit_count = None


class ThresholdReLU(nn.Module):
    """``clip(h, 0, lam)`` with a trainable ``lam``: the source activation of Deng & Gu (2021).

    The clip makes every neuron reach its maximal rate within a short simulation; ``lam`` becomes
    the SNN threshold. Parameter name ``thresh`` as in :class:`QCFS`.
    """

    def __init__(self, *, thresh: float = 4.0, channels: int | None = None):
        super().__init__()
        self.channels = channels
        self.thresh = nn.Parameter(torch.full((channels or 1,), float(thresh)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lam = self.thresh if self.channels is None else self.thresh.view(
            [1, self.channels] + [1] * (x.dim() - 2))
        # min(relu(x), lam) keeps a gradient for lam where the clip is active
        return torch.minimum(torch.relu(x), lam)


ACTIVATIONS = ("qcfs", "trelu", "relu")


def make_activation(kind: str, *, levels: int, thresh: float, channels: int | None) -> nn.Module:
    """The activation module of a source network: QCFS, threshold ReLU, or plain ReLU."""
    if kind == "qcfs":
        return QCFS(levels=levels, thresh=thresh, channels=channels)
    if kind == "trelu":
        return ThresholdReLU(thresh=thresh, channels=channels)
    if kind == "relu":
        return nn.ReLU()
    raise ValueError(f"unknown activation {kind!r}; known: {', '.join(ACTIVATIONS)}")
