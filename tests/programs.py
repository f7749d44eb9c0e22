"""Program builders shared by the engine benches (amaranth.sim and cocotb): random Programs drawn
by hypothesis (bit-serial dense, conv3x3 + fused pool, rate-coded qcfs/srp) and fixed chains."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import strategies as st

from bitspike.sw.program import InputSpec, Layer, Program


def draw_images(draw, program: Program, count: int) -> torch.Tensor:
    """``count`` random input images of ``program`` (levels 0..max_level)."""
    n = int(np.prod(program.input.shape))
    levels = draw(st.lists(st.integers(0, program.input.max_level), min_size=count * n,
                           max_size=count * n))
    return torch.tensor(levels).view(count, *program.input.shape)


def random_dense_program(draw) -> Program:
    weight_bits = draw(st.sampled_from([2, 4, 8]))
    qmax = 2 ** (weight_bits - 1) - 1
    n_in = draw(st.integers(1, 12))
    t_in = draw(st.integers(1, 5))
    sizes = [n_in] + draw(st.lists(st.integers(1, 11), min_size=0, max_size=2)) + [
        draw(st.integers(1, 6))]
    layers, prev_t = [], t_in
    for i in range(len(sizes) - 1):
        last = i == len(sizes) - 2
        n, m = sizes[i], sizes[i + 1]
        w = np.asarray(draw(st.lists(st.integers(-qmax, qmax), min_size=n * m,
                                     max_size=n * m))).reshape(m, n)
        b = np.asarray(draw(st.lists(st.integers(-300, 300), min_size=m, max_size=m)))
        if last:
            layers.append(Layer(f"out{i}", "dense", (n,), (m,), prev_t, 0, 0, False,
                                weights=w, bias=b))
        else:
            t_out = draw(st.integers(1, 5))
            levels = draw(st.integers(1, 2**t_out - 1))
            d = np.asarray(draw(st.lists(st.integers(1, 60), min_size=m, max_size=m)))
            layers.append(Layer(f"fc{i}", "dense", (n,), (m,), prev_t, t_out, levels, True,
                                weights=w, bias=b, threshold=d))
            prev_t = t_out
    hidden = [lay.t_out for lay in layers if lay.fires]
    program = Program("bitserial", InputSpec((n_in,), 2**t_in - 1, t_in), layers, weight_bits,
                      t_steps=max(hidden, default=0))
    program.validate()
    return program


def random_conv_program(draw) -> Program:
    """conv3x3 [+ sumpool2x2] [+ conv3x3 [+ sumpool2x2]] + dense output, random integers."""
    weight_bits = draw(st.sampled_from([3, 8]))
    qmax = 2 ** (weight_bits - 1) - 1
    c, h = draw(st.integers(1, 2)), draw(st.sampled_from([2, 4]))
    t_in = draw(st.integers(1, 4))
    shape, prev_t, prev_levels = (c, h, h), t_in, 2**t_in - 1
    layers = []

    def ints(n, lo, hi):
        return np.asarray(draw(st.lists(st.integers(lo, hi), min_size=n, max_size=n)))

    for i in range(draw(st.integers(1, 2))):
        c_out = draw(st.integers(1, 5))
        t_out = draw(st.integers(1, 3))
        levels = draw(st.integers(1, 2**t_out - 1))
        layers.append(Layer(f"conv{i}", "conv3x3", shape, (c_out, shape[1], shape[2]), prev_t,
                            t_out, levels, True,
                            weights=ints(c_out * shape[0] * 9, -qmax, qmax).reshape(
                                c_out, shape[0], 3, 3),
                            bias=ints(c_out, -200, 200), threshold=ints(c_out, 1, 50)))
        shape, prev_t, prev_levels = (c_out, shape[1], shape[2]), t_out, levels
        if shape[1] % 2 == 0 and draw(st.booleans()):
            out = (shape[0], shape[1] // 2, shape[2] // 2)
            layers.append(Layer(f"pool{i}", "sumpool2x2", shape, out, prev_t, prev_t + 2,
                                4 * prev_levels, True))
            shape, prev_t, prev_levels = out, prev_t + 2, 4 * prev_levels
    n_in, classes = int(np.prod(shape)), draw(st.integers(1, 5))
    layers.append(Layer("out", "dense", shape, (classes,), prev_t, 0, 0, False,
                        weights=ints(classes * n_in, -qmax, qmax).reshape(classes, n_in),
                        bias=ints(classes, -300, 300)))
    hidden = [lay.t_out for lay in layers if lay.fires and lay.kind != "sumpool2x2"]
    program = Program("bitserial", InputSpec((c, h, h), 2**t_in - 1, t_in), layers,
                      weight_bits, t_steps=max(hidden))
    program.validate()
    return program


def random_rate_program(draw) -> Program:
    """Random rate Program: [conv3x3 [+ pool]] or dense hidden layers, then a dense output;
    qcfs (tau = 0) or srp (tau >= 1) with random thresholds and initial potentials."""
    weight_bits = draw(st.sampled_from([3, 6]))
    qmax = 2 ** (weight_bits - 1) - 1
    t_steps, tau = draw(st.integers(1, 4)), draw(st.integers(0, 2))
    steps = t_steps + tau
    t_in = draw(st.integers(1, 3))

    def ints(n, lo, hi):
        return np.asarray(draw(st.lists(st.integers(lo, hi), min_size=n, max_size=n)))

    layers = []
    if draw(st.booleans()):  # conv [+ pool]
        c, h = draw(st.integers(1, 2)), draw(st.sampled_from([2, 4]))
        shape = (c, h, h)
        c_out = draw(st.integers(1, 5))
        theta = ints(c_out, 1, 60)
        layers.append(Layer("conv0", "conv3x3", shape, (c_out, h, h), t_in, steps, 1, True,
                            weights=ints(c_out * c * 9, -qmax, qmax).reshape(c_out, c, 3, 3),
                            bias=ints(c_out, -20, 20), threshold=theta,
                            v_init=ints(c_out, 0, 30)))
        out_shape = (c_out, h, h)
        if draw(st.booleans()):
            pooled = (c_out, h // 2, h // 2)
            layers.append(Layer("pool0", "sumpool2x2", out_shape, pooled, steps, steps, 4,
                                True))
            out_shape = pooled
        input_shape, in_t = shape, t_in
    else:
        n_in = draw(st.integers(1, 10))
        input_shape, out_shape, in_t = (n_in,), (n_in,), t_in
        layers_before = draw(st.integers(0, 2))
        prev = n_in
        for i in range(layers_before):
            m = draw(st.integers(1, 9))
            layers.append(Layer(f"fc{i}", "dense", (prev,), (m,), t_in if i == 0 else steps,
                                steps, 1, True, weights=ints(m * prev, -qmax, qmax).reshape(
                                    m, prev), bias=ints(m, -20, 20), threshold=ints(m, 1, 60),
                                v_init=ints(m, -10, 30)))
            prev = m
            out_shape = (m,)
    n_in, classes = int(np.prod(out_shape)), draw(st.integers(1, 5))
    layers.append(Layer("out", "dense", out_shape, (classes,), steps if layers else in_t, 0, 0,
                        False, weights=ints(classes * n_in, -qmax, qmax).reshape(classes, n_in),
                        bias=ints(classes, -30, 30)))
    program = Program("rate", InputSpec(input_shape, 2**in_t - 1, in_t), layers, weight_bits,
                      method="srp" if tau else "qcfs", t_steps=t_steps, tau=tau)
    program.validate()
    return program


def dense_chain(t_in: int, t_hidden: int, bias: int, seed: int) -> Program:
    """8 inputs -> 20 hidden (T = t_hidden, L = 2^T - 1) -> 3 outputs, fixed random weights."""
    rng = np.random.default_rng(seed)
    levels = 2**t_hidden - 1
    layers = [Layer("fc0", "dense", (8,), (20,), t_in, t_hidden, levels, True,
                    weights=rng.integers(-7, 8, (20, 8)), bias=np.full(20, bias),
                    threshold=rng.integers(1, 9, 20)),
              Layer("out", "dense", (20,), (3,), t_hidden, 0, 0, False,
                    weights=rng.integers(-7, 8, (3, 20)), bias=np.array([5, -5, 0]))]
    program = Program("bitserial", InputSpec((8,), 2**t_in - 1, t_in), layers, 4,
                      t_steps=t_hidden)
    program.validate()
    return program


def conv_pool_program() -> Program:
    rng = np.random.default_rng(5)
    layers = [Layer("conv0", "conv3x3", (2, 4, 4), (3, 4, 4), 2, 2, 3, True,
                    weights=rng.integers(-3, 4, (3, 2, 3, 3)), bias=rng.integers(-9, 9, 3),
                    threshold=rng.integers(1, 6, 3)),
              Layer("pool0", "sumpool2x2", (3, 4, 4), (3, 2, 2), 2, 4, 12, True),
              Layer("out", "dense", (3, 2, 2), (4,), 4, 0, 0, False,
                    weights=rng.integers(-3, 4, (4, 12)), bias=rng.integers(-9, 9, 4))]
    program = Program("bitserial", InputSpec((2, 4, 4), 3, 2), layers, 3, t_steps=2)
    program.validate()
    return program
