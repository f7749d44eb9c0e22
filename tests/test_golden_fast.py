"""The golden model's trace-free paths against its traced ones (sw/golden.py).

Without a trace the bit-serial model computes one exact synaptic sum of the integer levels (Horner
over the bit planes is linear) and the levels as ``clip(floor(u0 / D), 0, L)``; the rate model
folds its time steps into the batch; both run in float32 where the Program's bounds prove it
exact. The traced paths run every step as the hardware does. Here the two agree exactly (every
logit, class, level, spike, SRP mask and residual, with the same dtypes and shapes) on random
Programs of every layer kind in both modes, on Programs whose bounds force float64, and on the
trained digits-cnn in three methods; the exactness witness fails loudly on an inexact sum.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitspike.sw import golden
from bitspike.sw.errors import BitspikeError
from bitspike.sw.golden import FLOAT32_EXACT, run_program

from .programs import (
    dense_chain,
    draw_images,
    random_conv_program,
    random_dense_program,
    random_rate_program,
)


def _same(a, b, what):
    if a is None or b is None:
        assert a is None and b is None, what
        return
    assert a.dtype == b.dtype and a.shape == b.shape, (what, a.dtype, b.dtype, a.shape, b.shape)
    assert a.is_contiguous() == b.is_contiguous(), what
    assert torch.equal(a, b), what


def assert_fast_equals_traced(program, images):
    fast, traced = run_program(program, images), run_program(program, images, trace=True)
    _same(fast.logits, traced.logits, "logits")
    _same(fast.classes, traced.classes, "classes")
    _same(fast.input_spikes, traced.input_spikes, "input spikes")
    assert len(fast.levels) == len(traced.levels) == len(program.layers)
    for i, (a, b) in enumerate(zip(fast.levels, traced.levels, strict=True)):
        _same(a, b, f"levels {i}")
    for i, (a, b) in enumerate(zip(fast.spikes, traced.spikes, strict=True)):
        _same(a, b, f"spikes {i}")
    for i, (a, b) in enumerate(zip(fast.srp_masks, traced.srp_masks, strict=True)):
        _same(a, b, f"srp mask {i}")
    for i, (a, b) in enumerate(zip(fast.residuals, traced.residuals, strict=True)):
        _same(a, b, f"residual {i}")
    assert fast.accumulators == []  # no trace: nothing stacked


@st.composite
def program_and_images(draw, kind):
    program = {"dense": random_dense_program, "conv": random_conv_program,
               "rate": random_rate_program}[kind](draw)
    return program, draw_images(draw, program, draw(st.integers(1, 4)))


@pytest.mark.parametrize("kind", ["dense", "conv", "rate"])
@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_fast_path_equals_traced_path_on_random_programs(kind, data):
    program, images = data.draw(program_and_images(kind))
    assert_fast_equals_traced(program, images)


def test_float64_where_the_bounds_exceed_float32():
    """Weights large enough that sums pass 2^24: float64 is chosen, and the result is exact."""
    program = dense_chain(t_in=5, t_hidden=3, bias=0, seed=1)
    big = program.layers[0]
    big.weights = big.weights * 40_000
    big.threshold = big.threshold * 40_000
    assert big.acc_magnitude(31) >= FLOAT32_EXACT
    assert golden._float_for(big.acc_magnitude(31)) is torch.float64
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 32, (16, 8)))
    assert_fast_equals_traced(program, images)


def test_the_exactness_witness_fails_on_an_inexact_sum(monkeypatch):
    program = dense_chain(t_in=3, t_hidden=3, bias=0, seed=2)
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 8, (4, 8)))
    # a matrix product that is off by a third: not an integer any more
    monkeypatch.setattr(torch.Tensor, "__matmul__", lambda a, b: torch.matmul(a, b) + 1 / 3)
    with pytest.raises(BitspikeError, match="synaptic sum is not integral"):
        run_program(program, images)


@pytest.fixture(scope="module")
def trained(quick_checkpoint):
    from bitspike.sw.pipeline import convert_checkpoint

    return {m: convert_checkpoint(quick_checkpoint, method=m, **kw).program
            for m, kw in (("bitserial", {}), ("qcfs", {"steps": 8}),
                          ("srp", {"steps": 4, "tau": 2}))}


@pytest.mark.parametrize("method", ["bitserial", "qcfs", "srp"])
def test_fast_path_equals_traced_path_on_trained_digits(trained, digits, method):
    assert_fast_equals_traced(trained[method], digits.x_test)
