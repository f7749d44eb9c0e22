"""The QCFS activation and the bit-sparsity regularizer."""

import pytest
import torch

from bitspike.sw.qcfs import QCFS, bit_sparsity_loss, time_steps_for_levels, track_bit_sparsity


@pytest.mark.parametrize("levels,steps", [(1, 1), (3, 2), (7, 3), (15, 4), (16, 5), (31, 5),
                                          (255, 8)])
def test_time_steps_for_levels(levels, steps):
    assert time_steps_for_levels(levels) == steps


def test_forward_matches_definition():
    q = QCFS(levels=4, thresh=2.0)
    h = torch.tensor([-1.0, 0.0, 0.24, 0.26, 0.74, 1.0, 1.9, 2.0, 5.0])
    # a = lam/L * clip(floor(h L / lam + 1/2), 0, L) with lam/L = 0.5
    expected = 0.5 * torch.tensor([0, 0, 0, 1, 1, 2, 4, 4, 4], dtype=torch.float32)
    assert torch.equal(q(h), expected)
    assert torch.equal(q.level(h), expected / 0.5)


def test_straight_through_gradients():
    q = QCFS(levels=4, thresh=2.0)
    h = torch.tensor([0.3, 1.1, 3.0], requires_grad=True)
    q(h).sum().backward()
    # STE: d a / d h = 1 inside the clip range; 0 where clipped (3.0 -> level 6 clipped to 4)
    assert torch.equal(h.grad, torch.tensor([1.0, 1.0, 0.0]))
    assert q.thresh.grad is not None and q.thresh.grad.shape == (1,)


def test_per_channel_threshold_shape():
    q = QCFS(levels=3, thresh=1.0, channels=2)
    x = torch.zeros(1, 2, 2, 2)
    x[0, 1] = 0.5
    q.thresh.data = torch.tensor([1.0, 3.0])
    levels = q.level(x)
    assert levels[0, 0].max() == 0 and levels[0, 1].max() == 1  # 0.5 * 3 / 3 + 0.5 -> 1


def test_loads_public_up_alias_and_scalar():
    q = QCFS(levels=8)
    q.load_state_dict({"up": torch.tensor(3.5)})
    assert q.thresh.shape == (1,) and float(q.thresh.detach()) == 3.5


def test_rejects_bad_levels():
    with pytest.raises(TypeError, match="levels must be a positive integer"):
        QCFS(levels=0)


def test_bit_sparsity_forward_counts_one_bits_and_surrogate_gradient():
    net = torch.nn.Sequential(QCFS(levels=7, thresh=7.0))
    track_bit_sparsity(net)
    h = torch.tensor([0.0, 1.0, 3.0, 7.0, 20.0, -1.0], requires_grad=True)
    net(h)
    loss = bit_sparsity_loss(net)
    # levels 0, 1, 3, 7, 7, 0 -> 1-bits 0 + 1 + 2 + 3 + 3 + 0
    assert loss.item() == 9.0
    loss.backward()
    # Eq. 11: d/da = T (=3) where 0 < a < lam, else 0; chained through the STE (1 inside clip)
    assert torch.equal(h.grad, torch.tensor([0.0, 3.0, 3.0, 0.0, 0.0, 0.0]))


def test_bit_sparsity_needs_tracking():
    with pytest.raises(RuntimeError, match="track_bit_sparsity"):
        bit_sparsity_loss(torch.nn.Sequential(QCFS(levels=3)))
