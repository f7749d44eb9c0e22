"""Rate-coded IF conversions: each method's defining property, the SRP mask, and bad input."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitspike.sw.checkpoint import CheckpointMeta, load_checkpoint
from bitspike.sw.convert import extract_layers
from bitspike.sw.errors import BitspikeError, UnsupportedLayerError
from bitspike.sw.evaluate import float_levels
from bitspike.sw.golden import _horner, integrate_and_fire, run_program
from bitspike.sw.images import read_bundle, write_bundle
from bitspike.sw.models import build_model
from bitspike.sw.pipeline import convert_checkpoint, convert_with
from bitspike.sw.rate import plan_neurons


@settings(max_examples=200, deadline=None)
@given(current=st.lists(st.integers(-500, 500), min_size=1, max_size=20),
       theta=st.integers(1, 300), steps=st.integers(1, 20), data=st.data())
def test_constant_current_gives_clipped_floor_count(current, theta, steps, data):
    v0 = data.draw(st.integers(0, theta))
    cur = torch.tensor(current).view(-1, 1)
    adds = cur.unsqueeze(1).expand(-1, steps, -1)
    spikes, *_ = integrate_and_fire(adds, bias=torch.tensor(0), threshold=torch.tensor(theta),
                                    v_init=torch.tensor(v0))
    count = spikes.sum(dim=1).view(-1).to(torch.int64)
    expected = torch.clamp(torch.div(steps * cur.view(-1) + v0, theta, rounding_mode="floor"),
                           0, steps)
    assert torch.equal(count, expected)


def test_qcfs_with_T_equal_L_reproduces_qcfs_levels(quick_checkpoint, digits):
    """Bu et al.: theta = lambda, V0 = theta/2, T = L, evenly timed input -> the QCFS level.

    The first layer receives its input current evenly (the same current every step), so its
    spike count over T = L steps must be exactly the ANN's QCFS level (float SNN), and the integer
    SNN's count exactly ``clip(floor((L (acc + B) + V0) / Theta), 0, L)``.
    """
    conv = convert_checkpoint(quick_checkpoint, method="qcfs", steps=15)
    assert conv.program.t_steps == 15 and conv.meta.levels == 15
    x = digits.x_test[:120]
    _, ann = float_levels(conv.model, digits.normalization.apply(x))
    first = conv.program.layers[0]
    rf = run_program(conv.float_program, x)
    assert torch.equal(rf.levels[0].round().to(torch.int64), ann[first.source])
    ri = run_program(conv.program, x)
    acc = _horner(first, x) + torch.from_numpy(first.bias).view(1, -1, 1, 1)
    theta = torch.from_numpy(first.threshold).view(1, -1, 1, 1)
    v0 = torch.from_numpy(first.v_init).view(1, -1, 1, 1)
    expected = torch.clamp(torch.div(15 * acc + v0, theta, rounding_mode="floor"), 0, 15)
    assert torch.equal(ri.levels[0], expected)
    # and the float and integer SNNs agree almost everywhere (weight rounding only)
    assert (ri.levels[0] == rf.levels[0].round().to(torch.int64)).double().mean() > 0.98


def _if_rate_errors(z, theta, steps, shifts):
    """Mean squared difference between threshold ReLU and the T-step IF rate, per shift
    (Deng & Gu Eq. 15), from the golden model's IF neuron with constant input ``z + shift``."""
    currents = z.view(1, -1) + shifts.view(-1, 1)  # (shifts, points)
    adds = currents.unsqueeze(1).expand(-1, steps, -1)
    spikes, *_ = integrate_and_fire(adds, bias=torch.tensor(0.0),
                                    threshold=torch.tensor(theta), v_init=torch.tensor(0.0))
    rate = theta / steps * spikes.sum(dim=1).double()
    return ((torch.clamp(z, 0, theta).view(1, -1) - rate) ** 2).mean(dim=1)


@pytest.mark.parametrize("steps", [1, 2, 4, 8, 16])
def test_deng_gu_shift_minimizes_error_on_uniform_inputs(steps):
    theta = 2.0
    z = torch.linspace(0, theta, 4001, dtype=torch.float64)[:-1]  # uniform on [0, theta)
    shifts = torch.linspace(0, theta / steps, 101, dtype=torch.float64)
    errors = _if_rate_errors(z, theta, steps, shifts)
    best = float(shifts[int(torch.argmin(errors))])
    assert abs(best - theta / (2 * steps)) <= theta / steps / 50 + 1e-12
    assert errors[50] < errors[0]  # shifts[50] = theta / 2T beats no shift


def test_deng_gu_plan_shifts_bias_and_starts_at_zero():
    torch.manual_seed(0)
    model = build_model("digits-mlp", levels=15, activation="trelu").eval()
    layers = extract_layers(model)
    plans = plan_neurons(layers, "deng-gu", 8)
    for fl, plan in zip(layers, plans, strict=True):
        if plan is None:
            continue
        assert torch.equal(plan.v0, torch.zeros_like(plan.v0))
        assert torch.allclose(plan.bias_step, fl.bias + plan.theta / 16)
        assert torch.allclose(plan.theta, fl.lam.expand_as(plan.theta))


def test_srp_mask_silences_exactly_negative_residuals(quick_checkpoint, digits):
    # Theorem 1 setting: L = T (= tau), theta = lambda
    conv = convert_checkpoint(quick_checkpoint, method="srp", steps=15, tau=15)
    program = conv.program
    assert program.tau == 15 and program.latency == 30
    r = run_program(program, digits.x_test[:64], trace=True)
    checked = 0
    for layer, spikes, keep, residual, v in zip(program.layers, r.spikes, r.srp_masks,
                                               r.residuals, r.accumulators, strict=True):
        if not layer.fires or layer.kind == "sumpool2x2":
            continue
        assert torch.equal(keep, residual >= 0)
        theta = torch.from_numpy(layer.threshold).view(1, -1, *[1] * (v.dim() - 3))
        would_fire = v[:, program.tau:] >= theta.unsqueeze(1)
        main = spikes[:, program.tau:].bool()
        assert torch.equal(main, would_fire & keep.unsqueeze(1))
        assert not main[~keep.unsqueeze(1).expand_as(main)].any()  # masked: silent
        assert (~keep).any() and keep.any()
        checked += 1
    assert checked == 3


def test_rate_bundle_round_trip(tmp_path, quick_checkpoint, digits):
    conv = convert_checkpoint(quick_checkpoint, method="srp", steps=3, tau=2)
    write_bundle(conv.program, tmp_path / "prog")
    back = read_bundle(tmp_path / "prog")
    assert (back.method, back.t_steps, back.tau, back.mode) == ("srp", 3, 2, "rate")
    x = digits.x_test[:16]
    assert torch.equal(run_program(back, x).logits, run_program(conv.program, x).logits)
    assert np.array_equal(back.layers[0].v_init, conv.program.layers[0].v_init)


@pytest.mark.parametrize("kwargs,match", [
    ({"method": "nope", "steps": 4}, "unknown method 'nope'"),
    ({"method": "qcfs", "steps": 0}, "needs --steps T >= 1"),
    ({"method": "srp", "steps": 4, "tau": 0}, "srp needs --tau >= 1"),
    ({"method": "qcfs", "steps": 4, "tau": 2}, "--tau is the srp method's probe phase"),
    ({"method": "bitserial", "steps": 8}, "exactly 4 steps; --steps 8 is not possible"),
])
def test_bad_method_or_steps(quick_checkpoint, kwargs, match):
    with pytest.raises(BitspikeError, match=match):
        convert_checkpoint(quick_checkpoint, **kwargs)


def test_qcfs_needs_a_qcfs_source(tmp_path, digits):
    model = build_model("digits-mlp", levels=15, activation="relu").eval()
    meta = CheckpointMeta(arch="digits-mlp", levels=15, activation="relu", dataset="digits",
                          normalization=digits.normalization)
    with pytest.raises(UnsupportedLayerError, match="needs a QCFS source.*--activation qcfs"):
        convert_with(model, meta, method="qcfs", steps=4, data=digits)
    with pytest.raises(UnsupportedLayerError, match="bit-serial conversion.*QCFS"):
        convert_with(model, meta, method="bitserial", data=digits)


def test_deng_gu_on_relu_source_uses_max_activation(digits):
    torch.manual_seed(3)
    model = build_model("digits-mlp", levels=15, activation="relu").eval()
    meta = CheckpointMeta(arch="digits-mlp", levels=15, activation="relu", dataset="digits",
                          normalization=digits.normalization)
    conv = convert_with(model, meta, method="deng-gu", steps=8, data=digits)
    assert conv.program.meta["source_activation"] == "ReLU"
    first = conv.float_program.layers[0]
    # Theta = max activation / s_w: the largest first-layer activation over the training split
    with torch.no_grad():
        h = model[2](model[1](model[0](digits.normalization.apply(digits.x_train))))
    s_w = first.unit
    assert abs(first.threshold[0] * s_w - float(torch.relu(h).max())) < 1e-6


def test_checkpoint_loaded_by_bitspike_reports_source(quick_checkpoint):
    model, meta = load_checkpoint(quick_checkpoint)
    assert meta.activation == "qcfs"
