"""Conversion passes: BN folding, input-normalization folding, quantization, and their errors."""

import numpy as np
import pytest
import torch
from torch import nn

from bitspike.sw.convert import convert_model, extract_layers, fold_input_normalization
from bitspike.sw.data import Normalization
from bitspike.sw.errors import UnsupportedLayerError, WidthError
from bitspike.sw.golden import run_program
from bitspike.sw.models import build_model
from bitspike.sw.qcfs import QCFS

NORM = Normalization(16, (0.0,), (0.4,))


def _randomize_bn(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = torch.randn(n, generator=g) * 0.2
    return model.eval()


def test_batchnorm_folding_preserves_preactivations():
    torch.manual_seed(0)
    model = _randomize_bn(build_model("digits-cnn", levels=15)).double()
    layers = extract_layers(model)
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    ref = model[1](model[0](x))  # conv + BN
    folded = torch.nn.functional.conv2d(x, layers[0].weight, layers[0].bias, padding=1)
    assert torch.allclose(folded, ref, atol=1e-10)


def test_input_normalization_folding_is_exact_for_dense_with_mean():
    torch.manual_seed(1)
    model = _randomize_bn(build_model("digits-mlp", levels=15)).double()
    norm = Normalization(16, (0.3,), (0.2,))
    layers, notes = fold_input_normalization(extract_layers(model), norm, (1, 8, 8))
    k = torch.randint(0, 17, (3, 1, 8, 8))
    ref = model[2](model[1](model[0](norm.apply(k).double())))  # flatten, linear, BN
    got = k.double().flatten(1) @ layers[0].weight.T + layers[0].bias
    assert torch.allclose(got, ref, atol=1e-5) and notes == []  # apply() is float32


def test_nonzero_mean_under_padding_is_reported():
    model = _randomize_bn(build_model("digits-cnn", levels=15))
    program = convert_model(model, input_shape=(1, 8, 8),
                            normalization=Normalization(16, (0.5,), (0.3,)))
    assert any("nonzero mean" in n for n in program.notes)


def test_digits_cnn_program_structure():
    model = _randomize_bn(build_model("digits-cnn", levels=15))
    p = convert_model(model, input_shape=(1, 8, 8), normalization=NORM)
    assert [lay.kind for lay in p.layers] == ["conv3x3", "conv3x3", "sumpool2x2", "conv3x3",
                                             "sumpool2x2", "dense"]
    assert [lay.t_in for lay in p.layers] == [5, 4, 4, 6, 4, 6]
    assert [lay.t_out for lay in p.layers] == [4, 4, 6, 4, 6, 0]
    assert [lay.levels for lay in p.layers] == [15, 15, 60, 15, 60, 0]
    assert p.input.t == 5 and p.classes == 10
    for lay in p.layers:
        if lay.weights is not None:
            assert np.abs(lay.weights).max() <= 127
            # D as large as the weight width allows: the largest weight is near qmax
            assert np.abs(lay.weights).max() >= 64


def test_levels_16_need_five_steps_and_clip():
    model = _randomize_bn(build_model("digits-mlp", levels=16))
    p = convert_model(model, input_shape=(1, 8, 8), normalization=NORM)
    assert p.layers[0].t_out == 5 and p.layers[0].levels == 16
    r = run_program(p, torch.full((1, 1, 8, 8), 16))
    assert int(r.levels[0].max()) <= 16


def test_per_channel_thresholds_give_per_channel_D():
    model = _randomize_bn(build_model("digits-mlp", levels=15, per_channel=True))
    model[3].thresh.data = torch.linspace(1.0, 8.0, 128)
    p = convert_model(model, input_shape=(1, 8, 8), normalization=NORM)
    assert p.layers[0].threshold.shape == (128,)
    assert len(set(p.layers[0].threshold.tolist())) > 1


def test_vgg_small_converts_and_runs_on_random_data():
    torch.manual_seed(2)
    model = _randomize_bn(build_model("vgg-small", levels=7))
    norm = Normalization(255, (0.0, 0.0, 0.0), (0.25, 0.25, 0.25))
    p = convert_model(model, input_shape=(3, 32, 32), normalization=norm)
    assert p.input.t == 8 and p.layers[0].t_out == 3
    assert [lay.out_shape for lay in p.layers if lay.kind == "sumpool2x2"] == [
        (64, 16, 16), (128, 8, 8), (256, 4, 4)]
    r = run_program(p, torch.randint(0, 256, (2, 3, 32, 32)))
    assert r.logits.shape == (2, 10) and r.classes.shape == (2,)
    assert p.requirements()["acc_bits"] <= 32


class _Wrap(nn.Module):
    def __init__(self, *mods):
        super().__init__()
        self.net = nn.Sequential(*mods)


@pytest.mark.parametrize("modules,match", [
    ([nn.Conv2d(1, 2, 3, padding=1), QCFS(levels=3), nn.MaxPool2d(2), nn.Flatten(),
      nn.Linear(32, 10)], r"MaxPool2d.*AvgPool2d\(2\)"),
    ([nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 10)], r"ReLU.*QCFS"),
    ([nn.Conv2d(1, 2, 5, padding=2), QCFS(levels=3), nn.Flatten(), nn.Linear(128, 10)],
     r"3x3 convolutions with stride 1"),
    ([nn.Conv2d(1, 2, 3, padding=1, stride=2), QCFS(levels=3), nn.Flatten(),
      nn.Linear(32, 10)], r"stride \(2, 2\)"),
    ([nn.Flatten(), nn.Linear(64, 8), nn.Linear(8, 10)], r"no activation after it"),
    ([nn.Flatten(), nn.Linear(64, 8), QCFS(levels=3)], r"must end in a Linear layer"),
    ([nn.Flatten(), nn.Linear(64, 8), QCFS(levels=3), nn.Sigmoid(), nn.Linear(8, 10)],
     r"Sigmoid.*supported are"),
    ([nn.Conv2d(1, 2, 3, padding=1), QCFS(levels=3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
      nn.Linear(2, 10)], r"AdaptiveAvgPool2d.*AvgPool2d\(2\)"),
    ([nn.Conv2d(1, 2, 3, padding=1), QCFS(levels=3), nn.AvgPool2d(4), nn.Flatten(),
      nn.Linear(8, 10)], r"2x2 windows with stride 2"),
    ([nn.Flatten(), nn.BatchNorm1d(64), nn.Linear(64, 10)], r"BatchNorm can only be folded"),
])
def test_unsupported_layers_say_what_to_use(modules, match):
    with pytest.raises(UnsupportedLayerError, match=match):
        convert_model(_Wrap(*modules).eval(), input_shape=(1, 8, 8), normalization=NORM)


def test_weights_that_cannot_fit_the_width():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4), QCFS(levels=15, thresh=1e-4),
                          nn.Linear(4, 10)).eval()
    nn.init.constant_(model[1].weight, 0.5)
    with pytest.raises(WidthError, match=r"weights are too large.*--weight-bits \d+"):
        convert_model(model, input_shape=(1, 8, 8), normalization=NORM)


def test_accumulator_that_cannot_fit_the_width():
    model = _randomize_bn(build_model("digits-cnn", levels=15))
    with pytest.raises(WidthError, match=r"accumulator needs \d+ bits.*--acc-bits is 12"):
        convert_model(model, input_shape=(1, 8, 8), normalization=NORM, acc_bits=12)


def test_huge_bias_cannot_fit_the_accumulator():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4), QCFS(levels=15, thresh=1.0),
                          nn.Linear(4, 10)).eval()
    model[1].bias.data.fill_(1e9)
    with pytest.raises(WidthError, match=r"bias B up to \d+"):
        convert_model(model, input_shape=(1, 8, 8), normalization=NORM)


@pytest.mark.parametrize("bits", [1, 17, 8.5])
def test_weight_bits_out_of_range(bits):
    with pytest.raises(WidthError, match="weight bits must be an integer in 2..16"):
        convert_model(build_model("digits-mlp", levels=3).eval(), input_shape=(1, 8, 8),
                      normalization=NORM, weight_bits=bits)
