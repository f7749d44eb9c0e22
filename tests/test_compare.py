"""The method comparison and the bit-serial ablation switches."""

import csv
import json

import numpy as np
import pytest
import torch

from bitspike.sw.cli import main
from bitspike.sw.convert import convert_model
from bitspike.sw.data import Normalization
from bitspike.sw.errors import BitspikeError
from bitspike.sw.golden import Ablation, bit_planes, run_layer, run_program
from bitspike.sw.models import build_model


@pytest.fixture(scope="module")
def program():
    torch.manual_seed(0)
    model = build_model("digits-mlp", levels=15).eval()
    return convert_model(model, input_shape=(1, 8, 8),
                         normalization=Normalization(16, (0.0,), (0.4,)))


def _plane_sums(layer, x):
    w = torch.from_numpy(layer.weights)
    planes = bit_planes(x.flatten(1), layer.t_in).to(torch.int64)  # (N, T, inputs)
    return torch.einsum("nti,oi->nto", planes, w)  # per-step synaptic sums


def test_all_switches_on_is_the_exact_model(program, digits):
    x = digits.x_test[:20]
    assert torch.equal(run_program(program, x, ablation=Ablation()).logits,
                       run_program(program, x).logits)


def test_left_shift_off_adds_planes_with_equal_weight(program, digits):
    layer = program.layers[0]
    x = digits.x_test[:20]
    _, _, acc = run_layer(layer, x, trace=True, ablation=Ablation(left_shift=False))
    assert torch.equal(acc[:, -1], _plane_sums(layer, x).sum(dim=1))
    _, _, exact = run_layer(layer, x, trace=True)
    assert torch.equal(exact[:, -1], x.flatten(1) @ torch.from_numpy(layer.weights).T)


def test_bias_every_step_is_weighted_by_the_shifts(program, digits):
    layer = program.layers[-1]
    k = program.layers[-2].levels
    x = torch.randint(0, k + 1, (10, *layer.in_shape))
    exact, _, _ = run_layer(layer, x)
    every, _, _ = run_layer(layer, x, ablation=Ablation(bias_once=False))
    bias = torch.from_numpy(layer.bias)
    assert torch.equal(every, exact - bias + bias * (2**layer.t_in - 1))


def test_early_firing_decides_bits_from_partial_sums():
    from bitspike.sw.program import Layer
    # one dense neuron, weight 1 on each of 2 inputs, D = 1, T_in = T_out = 2, B = 0
    layer = Layer("fc", "dense", (2,), (1,), 2, 2, 3, True, weights=np.array([[1, 1]]),
                  bias=np.array([0]), threshold=np.array([1]))
    x = torch.tensor([[1, 1]])  # levels 1 + 1 = 2 = 0b10: the MSB plane is empty
    exact, _, _ = run_layer(layer, x)
    early, bits, _ = run_layer(layer, x, ablation=Ablation(deferred=False))
    assert exact.tolist() == [[2]]
    # step 1 sees only the MSB plane (sum 0) -> bit 0; step 2 sees 2 -> residual 2 >= 1 -> bit 1
    assert bits[0, :, 0].tolist() == [0, 1] and early.tolist() == [[1]]


def test_ablation_is_bitserial_only(quick_checkpoint, digits):
    from bitspike.sw.pipeline import convert_checkpoint
    conv = convert_checkpoint(quick_checkpoint, method="qcfs", steps=2)
    with pytest.raises(BitspikeError, match="bit-serial scheme only"):
        run_program(conv.program, digits.x_test[:2], ablation=Ablation(left_shift=False))


@pytest.mark.slow
def test_compare_writes_table_csv_plots_and_ablation(tmp_path, capsys):
    out = tmp_path / "cmp"
    rc = main(["compare", "--steps", "1,4,40", "--epochs", "2", "--out", str(out), "--json"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    rows = result["rows"]
    methods = {r["method"] for r in rows}
    assert methods == {"bitserial", "qcfs", "deng-gu", "data-driven", "srp"}
    by = {(r["method"], r["steps"]): r for r in rows}
    # bit-serial at T = ceil(log2(L+1)) loses nothing against the integer ANN it equals
    assert by[("bitserial", 4)]["int_accuracy"] is not None
    # srp counts its probe steps in the latency
    assert by[("srp", 4)]["latency"] == 8
    # a T the method cannot use is reported, not hidden
    assert by[("bitserial", 40)]["int_accuracy"] is None and "n/a" in by[("bitserial", 40)]["note"]
    for r in rows:
        if r["int_accuracy"] is not None:
            assert 0 <= r["int_accuracy"] <= 1 and r["energy_pj"] > 0 and r["synaptic_ops"] > 0
    assert set(result["per_method_seconds"]) == methods
    for name in ("results.md", "results.csv", "ablation.csv", "accuracy_vs_steps.png",
                 "accuracy_vs_energy.png"):
        assert (out / name).stat().st_size > 0
    with (out / "results.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 15
    ablation = result["ablation"]
    assert len(ablation) == 8
    exact = next(a for a in ablation if a["left_shift"] and a["bias_once"] and a["deferred"])
    assert exact["accuracy"] == by[("bitserial", 4)]["int_accuracy"]
    md = (out / "results.md").read_text()
    assert "| bitserial |" in md and "Ablation" in md and "Time per method" in md


def test_compare_rejects_unknown_method(tmp_path):
    from bitspike.sw.compare import run_compare
    with pytest.raises(BitspikeError, match="unknown method 'magic'"):
        run_compare(methods=("magic",), out=tmp_path)
    with pytest.raises(BitspikeError, match="positive integers"):
        run_compare(steps=(0,), out=tmp_path)
    with pytest.raises(BitspikeError, match=r"vgg-small expects inputs \(3, 32, 32\)"):
        run_compare(arch="vgg-small", out=tmp_path / "v")
    assert not (tmp_path / "v").exists()  # refused before any work
