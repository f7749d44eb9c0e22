"""Property tests of the arithmetic identities of docs/conversion-math.md section 2."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitspike.sw.golden import argmax_lowest, bit_planes, successive_approximation

potentials = st.lists(st.integers(-(2**20), 2**20), min_size=1, max_size=64)


def _levels(bits: torch.Tensor) -> torch.Tensor:
    steps = bits.shape[1]
    return (bits.to(torch.int64) * (1 << torch.arange(steps - 1, -1, -1)).view(1, -1)).sum(1)


@settings(max_examples=300, deadline=None)
@given(u=potentials, d=st.integers(1, 5000), steps=st.integers(1, 8))
def test_successive_approximation_is_clipped_floor_division(u, d, steps):
    u0 = torch.tensor(u, dtype=torch.int64)
    bits = successive_approximation(u0, torch.tensor(d), steps, 2**steps - 1)
    assert bits.shape == (len(u), steps)
    expected = torch.clamp(torch.div(u0, d, rounding_mode="floor"), 0, 2**steps - 1)
    assert torch.equal(_levels(bits), expected)


@settings(max_examples=300, deadline=None)
@given(u=potentials, d=st.integers(1, 5000), steps=st.integers(1, 8), data=st.data())
def test_successive_approximation_clips_at_L_below_full_range(u, d, steps, data):
    levels = data.draw(st.integers(1, 2**steps - 1))
    u0 = torch.tensor(u, dtype=torch.int64)
    bits = successive_approximation(u0, torch.tensor(d), steps, levels)
    expected = torch.clamp(torch.div(u0, d, rounding_mode="floor"), 0, levels)
    assert torch.equal(_levels(bits), expected)


def test_clip_at_16_with_five_steps():
    # L = 16 needs T = 5; without the clip the emitter would send up to 31
    u0 = torch.tensor([16 * 3, 17 * 3, 31 * 3, 100 * 3])
    bits = successive_approximation(u0, torch.tensor(3), 5, 16)
    assert _levels(bits).tolist() == [16, 16, 16, 16]


@settings(max_examples=200, deadline=None)
@given(k=st.lists(st.integers(0, 255), min_size=1, max_size=16),
       w=st.lists(st.integers(-128, 127), min_size=16, max_size=16))
def test_horner_over_bit_planes_equals_weighted_sum(k, w):
    levels = torch.tensor(k, dtype=torch.int64).view(1, -1)
    weights = torch.tensor(w[: len(k)], dtype=torch.int64)
    planes = bit_planes(levels, 8)[0]  # (8, n), MSB first
    acc = torch.tensor(0)
    for t in range(8):
        acc = (acc << 1) + (planes[t].to(torch.int64) * weights).sum()
    assert int(acc) == int((levels[0] * weights).sum())


def test_argmax_ties_go_to_lowest_index():
    logits = torch.tensor([[3, 7, 7, 1], [5, 5, 5, 5], [-2, -1, -1, -3]])
    assert argmax_lowest(logits).tolist() == [1, 0, 1]
