"""The integer ``Program``: the one contract between the software and the engine.

A Program is a trained QCFS network reduced to integers: per layer its kind, shapes, integer
weights ``w``, per-output-channel bias-plus-half-step ``B`` and threshold step ``D``, the number of
input and output time steps, the clip level, and whether it fires. Its saved form is the
memory-image bundle (:mod:`bitspike.sw.images`, docs/memory-images.md); the arithmetic is that of
docs/conversion-math.md (``u0 = acc + B``, ``k = clip(floor(u0 / D), 0, L)``).

Layer kinds
-----------
``conv3x3``
    3x3 cross-correlation, stride 1, zero padding 1: ``acc[o,y,x] = sum w[o,c,dy,dx] *
    k[c, y+dy-1, x+dx-1]``. Weights ``(C_out, C_in, 3, 3)``.
``dense``
    ``acc[o] = sum_i w[o,i] * k[i]`` over the input flattened in (C, H, W) order. Weights
    ``(N_out, N_in)``.
``sumpool2x2``
    ``k_out[c,y,x] = sum of the 2x2 window``: no weights, ``D = 1``, ``B = 0``; ``T_out = T_in + 2``
    so that the sum is sent exactly (average pooling's 1/4 lives in the next layer's scale).

The last layer is ``dense`` and does not fire: its result is the logits ``acc + B``.

Neuron modes
------------
``bitserial`` (the error-free scheme)
    Levels travel as ``T`` binary digits, MSB first; Horner accumulation, then deferred
    successive-approximation fire/reset with threshold step ``D`` (``threshold``) after all steps.
``rate`` (classic IF with reset by subtraction: qcfs, deng-gu, data-driven, srp)
    Every layer runs ``S = tau + t_steps`` steps. Per step and output neuron:
    ``v += sum_{i} w[o,i] x_i(t) + B[o]; s = v >= Theta[o]; v -= s Theta[o]`` with ``v`` starting
    at ``v_init`` and ``Theta`` in ``threshold``. ``x_i(t)`` is a spike (0/1), or a 2x2 sum of
    the previous layer's per-step values after pooling (0..4 after spikes). The first layer's
    input current ``sum w k`` (pixel levels) is computed once, bit-serially, and added every step.
    With ``tau > 0`` (SRP) the first ``tau`` steps probe: at step ``tau`` neurons with ``v < 0``
    are masked (their later spikes are dropped) and every ``v`` restarts at ``v_init``. The
    output layer's logits are ``sum over the last t_steps steps of (acc(t) + B)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import ProgramError

PROGRAM_FORMAT_VERSION = 1
LAYER_KINDS = ("conv3x3", "dense", "sumpool2x2")
NEURON_MODES = ("bitserial", "rate")
METHODS = {"bitserial": "bitserial", "qcfs": "rate", "deng-gu": "rate", "data-driven": "rate",
           "srp": "rate"}


def signed_bits(magnitude: int) -> int:
    """Two's-complement width that holds every value in ``[-magnitude, magnitude]``."""
    return int(magnitude).bit_length() + 1


def unsigned_bits(value: int) -> int:
    """Width that holds ``0..value`` (at least 1)."""
    return max(1, int(value).bit_length())


@dataclass(frozen=True)
class InputSpec:
    """The engine's input: integer pixel levels ``0..max_level`` sent as ``t`` bit planes."""

    shape: tuple[int, ...]
    max_level: int
    t: int

    def __post_init__(self):
        if self.max_level < 1 or self.t < 1 or self.max_level > 2**self.t - 1:
            raise ProgramError(f"input levels 0..{self.max_level} do not fit {self.t} bit planes")


@dataclass(eq=False)
class Layer:
    """One engine layer; arrays are int64 numpy arrays.

    ``levels`` is the clip level ``L`` of the emitted output (``0`` for the output layer);
    ``unit`` is the float value of one accumulator unit (for reports and for the logits' scale).
    """

    name: str
    kind: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    t_in: int
    t_out: int
    levels: int
    fires: bool
    weights: np.ndarray | None = None
    bias: np.ndarray | None = None
    threshold: np.ndarray | None = None
    unit: float = 1.0
    source: str = ""
    v_init: np.ndarray | None = None

    @property
    def out_channels(self) -> int:
        return self.out_shape[0]

    @property
    def fan_in(self) -> int:
        """Synapses per output neuron."""
        if self.kind == "conv3x3":
            return self.in_shape[0] * 9
        if self.kind == "dense":
            return int(np.prod(self.in_shape))
        return 4

    def acc_magnitude(self, in_max_level: int, *, rate_steps: int = 0) -> int:
        """Worst-case ``|u|`` the accumulator must hold.

        Bit-serial: ``sum|w| * max level + |B|``, or the largest threshold compared against.
        Rate (``rate_steps = S > 0``): ``S (sum|w| * max input + |B|) + |v_init| + Theta``, since
        the potential integrates for ``S`` steps (the output layer sums only the last
        ``t_steps``, so ``S`` bounds it too).
        """
        if self.kind == "sumpool2x2":
            return 4 * in_max_level
        per_out = np.abs(self.weights.reshape(self.weights.shape[0], -1)).sum(axis=1)
        per_step = per_out * in_max_level + np.abs(self.bias)
        if rate_steps:
            bound = int(per_step.max()) * rate_steps
            if self.fires:
                bound += int(np.abs(self.v_init).max()) + int(self.threshold.max())
            return bound
        bound = int(per_step.max())
        if self.fires:
            bound = max(bound, int(self.threshold.max()) * (self.levels + 1),
                        int(self.threshold.max()) << (self.t_out - 1))
        return bound

    def summary(self) -> dict:
        return {"name": self.name, "kind": self.kind, "in_shape": list(self.in_shape),
                "out_shape": list(self.out_shape), "t_in": self.t_in, "t_out": self.t_out,
                "levels": self.levels, "fires": self.fires, "unit": self.unit,
                "source": self.source}


@dataclass(eq=False)
class Program:
    """A whole integer network.

    Members
    -------
    mode : str
        Neuron mode of the firing layers (``"bitserial"`` or ``"rate"``).
    method : str
        The conversion method (``bitserial``, ``qcfs``, ``deng-gu``, ``data-driven``, ``srp``).
    t_steps, tau : int
        Rate mode: time steps ``T`` and SRP probe steps ``tau`` (latency ``tau + T``). Bit-serial:
        ``t_steps`` is the hidden layers' ``T = ceil(log2(L + 1))`` and ``tau`` is 0.
    input : InputSpec
    layers : list of Layer
    weight_bits : int
        Width of every weight word (two's complement).
    meta : dict
        Provenance: architecture, L, dataset, split seed, input normalization, checkpoint sha256.
    notes : list of str
        Anything the conversion had to approximate beyond weight rounding.
    """

    mode: str
    input: InputSpec
    layers: list[Layer]
    weight_bits: int
    method: str = "bitserial"
    t_steps: int = 0
    tau: int = 0
    meta: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    format_version: int = PROGRAM_FORMAT_VERSION

    @property
    def classes(self) -> int:
        return self.layers[-1].out_shape[0]

    @property
    def rate_steps(self) -> int:
        """Steps every rate-mode layer runs (``tau + t_steps``); 0 in bit-serial mode."""
        return self.tau + self.t_steps if self.mode == "rate" else 0

    @property
    def latency(self) -> int:
        """Time steps per layer as the papers count them: ``tau + T`` (rate) or ``T``."""
        return self.rate_steps if self.mode == "rate" else self.t_steps

    def input_maxima(self) -> list[int]:
        """Largest value one input of each layer carries in one accumulation step.

        Bit-serial: the largest ``T_in``-bit level (``2^T_in - 1``). Rate: the first layer's
        pixels (its current is one bit-serial accumulation), then the per-step spike count
        (1, or 4 per 2x2 pooling).
        """
        if self.mode == "bitserial":
            return [2**lay.t_in - 1 for lay in self.layers]
        out, prev = [], 2**self.input.t - 1
        for lay in self.layers:
            out.append(prev)
            prev = lay.levels
        return out

    def requirements(self) -> dict:
        """The engine parameters this Program needs (recorded in the bundle's manifest)."""
        acc = max(signed_bits(lay.acc_magnitude(m, rate_steps=self.rate_steps))
                  for lay, m in zip(self.layers, self.input_maxima(), strict=True))
        biases = [int(np.abs(lay.bias).max()) for lay in self.layers if lay.bias is not None]
        thresholds = [int(lay.threshold.max()) for lay in self.layers if lay.threshold is not None]
        v_inits = [int(np.abs(lay.v_init).max()) for lay in self.layers if lay.v_init is not None]
        return {
            "mode": self.mode,
            "weight_bits": self.weight_bits,
            "acc_bits": acc,
            "bias_bits": signed_bits(max(biases, default=0)),
            "threshold_bits": unsigned_bits(max(thresholds, default=1)),
            "max_t": max(max(lay.t_in, lay.t_out) for lay in self.layers),
            "v_init_words": sum(lay.v_init.size for lay in self.layers
                                if lay.v_init is not None),
            "v_init_bits": signed_bits(max(v_inits, default=0)) if self.mode == "rate" else 0,
            "max_neurons": max(int(np.prod(s)) for lay in self.layers
                               for s in (lay.in_shape, lay.out_shape)),
            "max_channels": max(lay.out_channels for lay in self.layers),
            "weight_words": sum(lay.weights.size for lay in self.layers
                                if lay.weights is not None),
            "bias_words": sum(lay.bias.size for lay in self.layers if lay.bias is not None),
            "threshold_words": sum(lay.threshold.size for lay in self.layers
                                   if lay.threshold is not None),
            "layers": len(self.layers),
        }

    def validate(self) -> None:
        """Check internal consistency; raise :class:`ProgramError` naming the first problem."""
        if self.format_version != PROGRAM_FORMAT_VERSION:
            raise ProgramError(f"Program format version {self.format_version} is not supported "
                               f"(this bitspike reads {PROGRAM_FORMAT_VERSION})")
        if self.mode not in NEURON_MODES:
            raise ProgramError(f"unknown neuron mode {self.mode!r}; known: {NEURON_MODES}")
        if METHODS.get(self.method) != self.mode:
            raise ProgramError(f"method {self.method!r} is not a {self.mode} method; known: "
                               f"{', '.join(f'{k} ({v})' for k, v in METHODS.items())}")
        if self.mode == "rate" and (self.t_steps < 1 or self.tau < 0):
            raise ProgramError(f"rate mode needs t_steps >= 1 and tau >= 0, not "
                               f"{self.t_steps} and {self.tau}")
        if self.tau and self.method != "srp":
            raise ProgramError("only the srp method has probe steps (tau)")
        if self.method == "srp" and self.tau < 1:
            raise ProgramError("the srp method needs tau >= 1 probe steps")
        if not self.layers:
            raise ProgramError("a Program needs at least one layer")
        if not 2 <= self.weight_bits <= 32:
            raise ProgramError(f"weight_bits must be 2..32, not {self.weight_bits}")
        if len(self.input.shape) not in (1, 3):
            raise ProgramError(f"the input shape must be (C, H, W) or (N,), not "
                               f"{tuple(self.input.shape)}")
        shape, t, prev_levels = tuple(self.input.shape), self.input.t, self.input.max_level
        qmax = 2 ** (self.weight_bits - 1) - 1
        for i, lay in enumerate(self.layers):
            where = f"layer {i} ({lay.name})"
            last = i == len(self.layers) - 1
            if lay.kind not in LAYER_KINDS:
                raise ProgramError(f"{where}: unknown kind {lay.kind!r}; known: {LAYER_KINDS}")
            in_shape = tuple(lay.in_shape)
            if in_shape != shape:
                raise ProgramError(f"{where}: input shape {in_shape} but the previous layer "
                                   f"produces {shape}")
            if lay.t_in != t:
                raise ProgramError(f"{where}: t_in={lay.t_in} but its input has {t} time steps")
            if last and (lay.kind != "dense" or lay.fires):
                raise ProgramError(f"{where}: the last layer must be a non-firing dense layer")
            if not last and not lay.fires:
                raise ProgramError(f"{where}: only the last layer may be non-firing")
            expect = self._out_shape(lay, where)
            if tuple(lay.out_shape) != expect:
                raise ProgramError(f"{where}: output shape {tuple(lay.out_shape)}, expected "
                                   f"{expect}")
            c_out = lay.out_shape[0]
            if lay.v_init is not None and not (self.mode == "rate" and lay.fires
                                               and lay.kind != "sumpool2x2"):
                raise ProgramError(f"{where}: only rate-mode firing conv/dense layers have v_init")
            if lay.kind == "sumpool2x2":
                if lay.weights is not None or lay.bias is not None or lay.threshold is not None:
                    raise ProgramError(f"{where}: a sum-pooling layer has no weights, bias or "
                                       "threshold")
                t_pool = t if self.mode == "rate" else t + 2
                if lay.t_out != t_pool or lay.levels != 4 * prev_levels:
                    raise ProgramError(f"{where}: sum pooling must send {t_pool} steps and "
                                       f"levels up to {4 * prev_levels}")
            else:
                wshape = ((c_out, in_shape[0], 3, 3) if lay.kind == "conv3x3"
                          else (c_out, int(np.prod(in_shape))))
                if lay.weights is None or tuple(lay.weights.shape) != wshape:
                    got = None if lay.weights is None else tuple(lay.weights.shape)
                    raise ProgramError(f"{where}: weights of shape {got}, expected {wshape}")
                if np.abs(lay.weights).max(initial=0) > qmax:
                    raise ProgramError(f"{where}: a weight exceeds {self.weight_bits}-bit range")
                if lay.bias is None or lay.bias.shape != (c_out,):
                    raise ProgramError(f"{where}: bias must have shape ({c_out},)")
                if lay.fires:
                    if lay.threshold is None or lay.threshold.shape != (c_out,):
                        raise ProgramError(f"{where}: threshold must have shape ({c_out},)")
                    if lay.threshold.min() < 1:
                        raise ProgramError(f"{where}: thresholds must be >= 1")
                    if self.mode == "bitserial":
                        if not 1 <= lay.levels <= 2**lay.t_out - 1:
                            raise ProgramError(f"{where}: levels {lay.levels} do not fit "
                                               f"{lay.t_out} time steps")
                        if lay.v_init is not None:
                            raise ProgramError(f"{where}: bit-serial layers have no v_init")
                    else:
                        if lay.levels != 1 or lay.t_out != self.rate_steps:
                            raise ProgramError(f"{where}: a rate layer emits one spike per step "
                                               f"for {self.rate_steps} steps")
                        if lay.v_init is None or lay.v_init.shape != (c_out,):
                            raise ProgramError(f"{where}: v_init must have shape ({c_out},)")
                elif lay.threshold is not None or lay.t_out != 0 or lay.levels != 0:
                    raise ProgramError(f"{where}: the output layer has no threshold, t_out 0 and "
                                       "levels 0")
            if self.mode == "rate" and i == 0 and lay.kind == "sumpool2x2":
                raise ProgramError(f"{where}: the first layer must be a conv or dense layer")
            shape, t, prev_levels = tuple(lay.out_shape), lay.t_out, lay.levels
        if self.mode == "bitserial":
            hidden = [lay.t_out for lay in self.layers if lay.fires and lay.kind != "sumpool2x2"]
            if self.t_steps != max(hidden, default=0):
                raise ProgramError(f"bit-serial t_steps must be the hidden layers' T "
                                   f"({max(hidden, default=0)}), not {self.t_steps}")

    @staticmethod
    def _out_shape(lay: Layer, where: str) -> tuple[int, ...]:
        s = tuple(lay.in_shape)
        if lay.kind == "conv3x3":
            if len(s) != 3:
                raise ProgramError(f"{where}: conv3x3 needs a (C, H, W) input, got {s}")
            return (lay.out_shape[0], s[1], s[2])
        if lay.kind == "sumpool2x2":
            if len(s) != 3 or s[1] % 2 or s[2] % 2:
                raise ProgramError(f"{where}: sumpool2x2 needs a (C, H, W) input with even H "
                                   f"and W, got {s}")
            return (s[0], s[1] // 2, s[2] // 2)
        return (lay.out_shape[0],)

    def save(self, folder) -> dict:
        """Write the Program's saved form, its memory-image bundle; return the manifest."""
        from .images import write_bundle

        return write_bundle(self, folder)

    @staticmethod
    def load(folder) -> Program:
        """Read and verify a bundle (:func:`bitspike.sw.images.read_bundle`)."""
        from .images import read_bundle

        return read_bundle(folder)

    def summary(self) -> dict:
        """JSON-ready description without the arrays."""
        return {"format_version": self.format_version, "mode": self.mode,
                "method": self.method, "t_steps": self.t_steps, "tau": self.tau,
                "latency": self.latency,
                "input": {"shape": list(self.input.shape), "max_level": self.input.max_level,
                          "t": self.input.t},
                "weight_bits": self.weight_bits, "classes": self.classes,
                "layers": [lay.summary() for lay in self.layers],
                "requirements": self.requirements(), "meta": self.meta, "notes": self.notes}
