"""Models and training: shapes, determinism, the bit-sparsity regularizer, the accuracy target."""

import time

import pytest
import torch

from bitspike.sw.convert import convert_model
from bitspike.sw.evaluate import compare_float_int, float_levels
from bitspike.sw.models import ARCHS, build_model
from bitspike.sw.qcfs import QCFS
from bitspike.sw.train import TrainConfig, train


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_architectures_forward_and_backward(arch):
    torch.manual_seed(0)
    model = build_model(arch, levels=15)
    x = torch.randn(4, *ARCHS[arch].input_shape)
    out = model(x)
    assert out.shape == (4, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert any(isinstance(m, QCFS) for m in model.modules())


def test_unknown_arch():
    from bitspike.sw.errors import BitspikeError
    with pytest.raises(BitspikeError, match="unknown architecture 'resnet'.*digits-cnn"):
        build_model("resnet", levels=3)


def test_training_is_deterministic(digits):
    cfg = TrainConfig(arch="digits-mlp", epochs=2)
    m1, _ = train(cfg, digits, progress=False)
    m2, _ = train(cfg, digits, progress=False)
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def _ones_per_neuron(model, digits):
    _, levels = float_levels(model, digits.normalization.apply(digits.x_test))
    total = sum(sum(((lv >> b) & 1).sum().item() for b in range(4)) for lv in levels.values())
    return total / sum(lv.numel() for lv in levels.values())


def test_bit_sparsity_regularizer_reduces_one_bits(digits):
    plain, _ = train(TrainConfig(arch="digits-mlp", epochs=8), digits, progress=False)
    sparse, meta = train(TrainConfig(arch="digits-mlp", epochs=8, bit_l1=0.05), digits,
                         progress=False)
    assert meta.train["bit_l1"] == 0.05
    assert _ones_per_neuron(sparse, digits) < 0.8 * _ones_per_neuron(plain, digits)


@pytest.mark.slow
def test_default_digits_cnn_reaches_target_in_time(digits):
    """The training target: >= 97 % float, < 3 min of training, integer within 1 point."""
    torch.set_num_threads(2)
    start = time.perf_counter()
    model, meta = train(TrainConfig(), digits, progress=False)
    seconds = time.perf_counter() - start
    assert meta.arch == "digits-cnn" and meta.levels == 15
    assert meta.metrics["test_accuracy"] >= 0.97
    assert seconds < 180
    program = convert_model(model, input_shape=(1, 8, 8), normalization=digits.normalization,
                            meta={"dataset": "digits"})
    report = compare_float_int(model, program, digits)
    assert report.float_accuracy >= 0.97
    assert abs(report.float_accuracy - report.int_accuracy) <= 0.01
