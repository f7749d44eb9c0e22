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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import ProgramError

PROGRAM_FORMAT_VERSION = 1
LAYER_KINDS = ("conv3x3", "dense", "sumpool2x2")
NEURON_MODES = ("bitserial",)


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

    def acc_magnitude(self, in_max_level: int) -> int:
        """Worst-case ``|u|`` the accumulator must hold: ``sum|w| * max level + |B|``, or the
        largest threshold compared against, whichever is larger."""
        if self.kind == "sumpool2x2":
            return 4 * in_max_level
        per_out = np.abs(self.weights.reshape(self.weights.shape[0], -1)).sum(axis=1)
        bound = int((per_out * in_max_level + np.abs(self.bias)).max())
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
        Neuron mode of the firing layers (``"bitserial"``).
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
    meta: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    format_version: int = PROGRAM_FORMAT_VERSION

    @property
    def classes(self) -> int:
        return self.layers[-1].out_shape[0]

    def requirements(self) -> dict:
        """The engine parameters this Program needs (recorded in the bundle's manifest)."""
        acc = max(signed_bits(lay.acc_magnitude(2**lay.t_in - 1)) for lay in self.layers)
        biases = [int(np.abs(lay.bias).max()) for lay in self.layers if lay.bias is not None]
        thresholds = [int(lay.threshold.max()) for lay in self.layers if lay.threshold is not None]
        return {
            "mode": self.mode,
            "weight_bits": self.weight_bits,
            "acc_bits": acc,
            "bias_bits": signed_bits(max(biases, default=0)),
            "threshold_bits": unsigned_bits(max(thresholds, default=1)),
            "max_t": max(max(lay.t_in, lay.t_out) for lay in self.layers),
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
            if lay.kind == "sumpool2x2":
                if lay.weights is not None or lay.bias is not None or lay.threshold is not None:
                    raise ProgramError(f"{where}: a sum-pooling layer has no weights, bias or "
                                       "threshold")
                if lay.t_out != t + 2 or lay.levels != 4 * prev_levels:
                    raise ProgramError(f"{where}: sum pooling must send T_in + 2 = {t + 2} steps "
                                       f"and levels up to {4 * prev_levels}")
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
                        raise ProgramError(f"{where}: threshold steps D must be >= 1")
                    if not 1 <= lay.levels <= 2**lay.t_out - 1:
                        raise ProgramError(f"{where}: levels {lay.levels} do not fit "
                                           f"{lay.t_out} time steps")
                elif lay.threshold is not None or lay.t_out != 0 or lay.levels != 0:
                    raise ProgramError(f"{where}: the output layer has no threshold, t_out 0 and "
                                       "levels 0")
            shape, t, prev_levels = tuple(lay.out_shape), lay.t_out, lay.levels

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
                "input": {"shape": list(self.input.shape), "max_level": self.input.max_level,
                          "t": self.input.t},
                "weight_bits": self.weight_bits, "classes": self.classes,
                "layers": [lay.summary() for lay in self.layers],
                "requirements": self.requirements(), "meta": self.meta, "notes": self.notes}
