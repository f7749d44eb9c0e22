"""The integer golden model equals the weight-quantized QCFS network, level for level.

Each example draws a random small network of every supported layer kind (3x3 conv, dense,
2x2 average pooling, flatten, per-layer or per-channel thresholds, any L, narrow and wide
weights) whose parameters are exactly representable at the drawn integers: weights
``W = w * s / unit`` (integer ``w`` reaching ``+-qmax`` in every output channel), biases
``b = (B - D/2) * s``, thresholds ``lam = L * D * s``. That network is

* built as a float torch model and converted by bitspike (which must recover ``w``, ``B``, ``D``),
* evaluated by a reference written here in exact rational arithmetic with the plain QCFS formula
  ``k = clip(floor(h L / lam + 1/2), 0, L)``, average pooling and ordinary convolution.

The golden model (Horner accumulation over bit planes, successive-approximation firing with the
clip at L, sum pooling) must produce exactly the reference's levels in every layer, and logits
equal to the reference's divided by the output scale.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from bitspike.sw.convert import convert_model
from bitspike.sw.data import Normalization
from bitspike.sw.golden import run_program
from bitspike.sw.qcfs import QCFS

F0 = Fraction(0)


def _obj(values) -> np.ndarray:
    return np.vectorize(Fraction, otypes=[object])(np.asarray(values))


# ---------------------------------------------------------------------------------------------
# exact reference


def _conv3x3(a: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    c, h, w = a.shape
    padded = np.full((c, h + 2, w + 2), F0, dtype=object)
    padded[:, 1:-1, 1:-1] = a
    out = np.empty((W.shape[0], h, w), dtype=object)
    for o in range(W.shape[0]):
        for y in range(h):
            for x in range(w):
                out[o, y, x] = (W[o] * padded[:, y:y + 3, x:x + 3]).sum() + b[o]
    return out


def _qcfs(h: np.ndarray, lam: np.ndarray, levels: int) -> np.ndarray:
    lam = lam.reshape([-1] + [1] * (h.ndim - 1))
    k = np.vectorize(lambda v: v.__floor__(), otypes=[object])(h * levels / lam + Fraction(1, 2))
    return np.clip(k, 0, levels)


def reference(spec: list[tuple], image: np.ndarray) -> list:
    """Per layer: integer levels (firing layers), pooled levels, and finally the logits."""
    a = _obj(image)
    unit = None  # value of one level of the current activation, per channel
    out = []
    for entry in spec:
        kind = entry[0]
        if kind == "flatten":
            unit = np.repeat(unit, a[0].size) if unit is not None and a.ndim == 3 else unit
            a = a.reshape(-1)
            continue
        if kind == "pool":
            c, h, w = a.shape
            a = a.reshape(c, h // 2, 2, w // 2, 2).sum(axis=(2, 4)) / 4
            unit = unit / 4
            levels = a / unit.reshape(-1, 1, 1)
            assert all(v.denominator == 1 for v in levels.flat)
            out.append(levels.astype(np.int64))
            continue
        _, W, b, lam, L = entry
        h = _conv3x3(a, W, b) if kind == "conv" else W.dot(a) + b
        if lam is None:
            out.append(h)
            continue
        k = _qcfs(h, lam, L)
        out.append(k.astype(np.int64))
        unit = lam / L
        a = k * unit.reshape([-1] + [1] * (k.ndim - 1))
    return out


# ---------------------------------------------------------------------------------------------
# random networks


@st.composite
def networks(draw):
    weight_bits = draw(st.sampled_from([3, 4, 8]))
    qmax = 2 ** (weight_bits - 1) - 1
    levels = draw(st.sampled_from([1, 2, 3, 5, 7, 15, 16]))
    per_channel = draw(st.booleans())
    c, size = draw(st.integers(1, 3)), draw(st.sampled_from([2, 4]))
    shape: tuple[int, ...] = (c, size, size)
    plan = draw(st.lists(st.sampled_from(["conv", "pool", "dense"]), min_size=1, max_size=3))
    plan = ["conv" if plan[0] == "pool" else plan[0], *plan[1:], "out"]
    unit = np.array([Fraction(1)] * c, dtype=object)  # input: one pixel level is worth 1
    spec: list[tuple] = []
    modules: list[nn.Module] = []
    expected_ints: list[tuple] = []

    def ints(n, lo, hi):
        return np.asarray(draw(st.lists(st.integers(lo, hi), min_size=n, max_size=n)), np.int64)

    for kind in plan:
        if kind == "pool":
            if len(shape) != 3 or shape[1] % 2:
                continue
            spec.append(("pool",))
            modules.append(nn.AvgPool2d(2))
            shape, unit = (shape[0], shape[1] // 2, shape[2] // 2), unit / 4
            continue
        if kind == "conv" and len(shape) != 3:
            kind = "dense"  # no convolution after flattening
        if kind != "conv" and len(shape) == 3:
            spec.append(("flatten",))
            modules.append(nn.Flatten())
            unit = np.repeat(unit, shape[1] * shape[2])
            shape = (int(np.prod(shape)),)
        c_out = 3 if kind == "out" else draw(st.integers(1, 4))
        w_shape = (c_out, shape[0], 3, 3) if kind == "conv" else (c_out, shape[0])
        w = ints(int(np.prod(w_shape)), -qmax, qmax).reshape(w_shape)
        w.reshape(c_out, -1)[:, 0] = qmax * draw(st.sampled_from([-1, 1]))  # reach +-qmax
        s = Fraction(2) ** draw(st.integers(-6, 2))
        col_unit = unit.reshape([1, -1] + [1] * (len(w_shape) - 2))
        W = _obj(w) * s / col_unit
        if kind == "out":
            B = ints(c_out, -300, 300)
            b, lam, D = _obj(B) * s, None, None
        else:
            D = ints(c_out, 1, 40) if per_channel else np.full(c_out, draw(st.integers(1, 40)))
            B = ints(c_out, -200, 200)
            b = (_obj(B) - _obj(D) / 2) * s
            lam = _obj(D) * levels * s
        layer = (nn.Conv2d(shape[0], c_out, 3, padding=1) if kind == "conv"
                 else nn.Linear(shape[0], c_out)).double()
        layer.weight.data = torch.tensor(W.astype(float))
        layer.bias.data = torch.tensor(b.astype(float))
        modules.append(layer)
        spec.append(("conv" if kind == "conv" else "dense", W, b, lam, levels))
        expected_ints.append((w, B, D, float(s)))
        if lam is not None:
            q = QCFS(levels=levels, channels=c_out if per_channel else None).double()
            q.thresh.data = torch.tensor(lam.astype(float) if per_channel
                                         else [float(lam[0])])
            modules.append(q)
            unit = lam / levels
            shape = (c_out, *shape[1:]) if kind == "conv" else (c_out,)
    max_level = draw(st.sampled_from([1, 15, 16, 255]))
    n_pixels = 2 * c * size * size
    images = ints(n_pixels, 0, max_level).reshape(2, c, size, size)
    return nn.Sequential(*modules).eval(), spec, expected_ints, (c, size, size), max_level, \
        weight_bits, images


@settings(max_examples=150, deadline=None)
@given(networks())
def test_integer_levels_equal_weight_quantized_qcfs_network(case):
    model, spec, expected_ints, shape, max_level, weight_bits, images = case
    # x = k / (max_level * std) = k: one input level is worth 1 in the float network
    norm = Normalization(max_level, (0.0,) * shape[0], (1.0 / max_level,) * shape[0])
    program = convert_model(model, input_shape=shape, normalization=norm,
                            weight_bits=weight_bits)

    # conversion recovers the integers the network was built from
    weighted = [lay for lay in program.layers if lay.weights is not None]
    assert len(weighted) == len(expected_ints)
    for lay, (w, B, D, _scale) in zip(weighted, expected_ints, strict=True):
        assert np.array_equal(lay.weights, w), lay.name
        assert np.array_equal(lay.bias, B), lay.name
        if D is not None:
            assert np.array_equal(lay.threshold, D), lay.name

    result = run_program(program, torch.from_numpy(images))
    for n, image in enumerate(images):
        ref = reference(spec, image)
        assert len(ref) == len(program.layers)
        for lay, got, want in zip(program.layers, result.levels, ref, strict=True):
            if lay.fires:
                assert np.array_equal(got[n].numpy(), want), f"{lay.name}: levels differ"
            else:  # logits in accumulator units of the output scale s
                s = Fraction(expected_ints[-1][3])
                assert [Fraction(int(v)) * s for v in got[n]] == list(want), "logits differ"
