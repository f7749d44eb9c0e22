"""The engine against the golden model: logits, class and cycle count, exactly."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from amaranth.back import verilog
from hypothesis import given, settings
from hypothesis import strategies as st

from bitspike.hw.config import EngineConfig, EngineFitError
from bitspike.hw.engine import Engine, EngineUnsupported
from bitspike.sim.engine_sim import run_engine
from bitspike.sim.reference import golden_trace
from bitspike.sw.convert import convert_model
from bitspike.sw.cycles import engine_cycles
from bitspike.sw.golden import run_program
from bitspike.sw.models import build_model
from bitspike.sw.program import InputSpec, Layer, Program

from .programs import (
    conv_pool_program,
    dense_chain,
    draw_images,
    random_conv_program,
    random_dense_program,
    random_rate_program,
)

WAVES = os.environ.get("WAVES") == "1"


def check(program: Program, images: torch.Tensor, lanes: int, config=None, **kw) -> list:
    config = config or EngineConfig.for_program(program, lanes=lanes)
    dut = Engine(config=config, program=program)
    got = run_engine(dut, list(images), vcd=f"engine_P{lanes}.vcd" if WAVES else None, **kw)
    golden = run_program(program, images)
    assert len(got) == len(images)
    for n, (logits, klass, cycles) in enumerate(got):
        assert [i for i, _ in logits] == list(range(program.classes))
        assert [v for _, v in logits] == golden.logits[n].tolist(), f"image {n}: logits differ"
        assert klass == int(golden.classes[n]), f"image {n}: class differs"
        if kw.get("ready_prob", 1.0) == 1.0:
            expected = engine_cycles(program, golden, n, lanes=lanes).total
            assert cycles == expected, f"image {n}: {cycles} cycles, model says {expected}"
    return got


@pytest.fixture(scope="module")
def mlp(digits):
    torch.manual_seed(0)
    model = build_model("digits-mlp", levels=15).eval()
    return convert_model(model, input_shape=(1, 8, 8), normalization=digits.normalization)


@pytest.mark.parametrize("lanes", [8, 32])
def test_digits_mlp_matches_golden(mlp, digits, lanes):
    check(mlp, digits.x_test[:3], lanes)


def test_trained_digits_mlp_classifies_like_golden(digits, tmp_path):
    from bitspike.sw.train import TrainConfig, train
    model, _ = train(TrainConfig(arch="digits-mlp", epochs=5), digits, progress=False)
    program = convert_model(model, input_shape=(1, 8, 8), normalization=digits.normalization)
    got = check(program, digits.x_test[:4], 16)
    assert sum(k == int(y) for (_, k, _), y in zip(got, digits.y_test[:4], strict=True)) >= 3


def test_all_zero_and_saturating_inputs(mlp, digits):
    images = torch.stack([torch.zeros(1, 8, 8, dtype=torch.int64),
                          torch.full((1, 8, 8), 16, dtype=torch.int64)])
    check(mlp, images, 8)


def test_back_pressure_loses_nothing(mlp, digits):
    check(mlp, digits.x_test[:2], 8, ready_prob=0.4, seed=3)


def test_reset_mid_inference_then_correct_results(mlp, digits):
    got = check(mlp, digits.x_test[:2], 8, reset_after=300)
    assert len(got) == 2


@settings(max_examples=25, deadline=None)
@given(data=st.data(), lanes=st.sampled_from([1, 3, 4]))
def test_random_dense_programs(data, lanes):
    program = random_dense_program(data.draw)
    check(program, draw_images(data.draw, program, 3), lanes)


@settings(max_examples=20, deadline=None)
@given(data=st.data(), lanes=st.sampled_from([1, 2, 4]))
def test_random_conv_pool_programs(data, lanes):
    program = random_conv_program(data.draw)
    check(program, draw_images(data.draw, program, 2), lanes)


@pytest.mark.slow
def test_trained_digits_cnn_matches_golden(digits):
    """The demo's network (digits-cnn, L = 15, trained) on the engine: exact."""
    from bitspike.sw.train import TrainConfig, train
    model, _ = train(TrainConfig(arch="digits-cnn", epochs=5), digits, progress=False)
    program = convert_model(model, input_shape=(1, 8, 8), normalization=digits.normalization)
    got = check(program, digits.x_test[:1], 32)
    assert got[0][1] == int(digits.y_test[0])
    _check_trace(program, digits.x_test[1:2], 32)  # every group's u0 and levels, pooled sums


def test_refuses_a_pool_it_cannot_fuse():
    """The engine fuses 2x2 pooling into the conv before it; a pool right after the input is
    refused at elaboration, naming the layer and what to do."""
    layers = [Layer("pool0", "sumpool2x2", (1, 4, 4), (1, 2, 2), 1, 3, 4, True),
              Layer("out", "dense", (1, 2, 2), (2,), 3, 0, 0, False,
                    weights=np.ones((2, 4), int), bias=np.zeros(2, int))]
    program = Program("bitserial", InputSpec((1, 4, 4), 1, 1), layers, 3, t_steps=0)
    program.validate()
    with pytest.raises(EngineUnsupported, match=r"layer 0 \(pool0\).*fuses 2x2 sum pooling"):
        Engine(config=EngineConfig.for_program(program, lanes=2), program=program)


def test_refuses_a_program_that_does_not_fit(mlp):
    small = EngineConfig.for_program(mlp, lanes=8)
    from dataclasses import replace
    small = replace(small, acc_bits=small.acc_bits - 3)
    with pytest.raises(EngineFitError, match="acc_bits: needs"):
        Engine(config=small, program=mlp)


def test_verilog_has_no_multiplier(mlp):
    dut = Engine(config=EngineConfig.for_program(mlp, lanes=4), program=mlp)
    text = verilog.convert(dut, name="bitspike_engine", emit_src=False)
    assert "module bitspike_engine" in text and "i_stream__valid" in text
    assert " * " not in text  # no multiplication anywhere


def _check_trace(program: Program, images: torch.Tensor, lanes: int, **kw) -> None:
    dut = Engine(config=EngineConfig.for_program(program, lanes=lanes), program=program,
                 trace=True)
    got = run_engine(dut, list(images), **kw)
    golden = run_program(program, images, trace=True)
    for n, (logits, klass, cycles, records) in enumerate(got):
        assert [v for _, v in logits] == golden.logits[n].tolist()
        assert klass == int(golden.classes[n])
        expected = golden_trace(program, golden, n, lanes)
        assert [{k: v for k, v in r.items() if k != "cycles"} for r in records] == expected
        stamps = [r["cycles"] for r in records]
        assert stamps == sorted(stamps) and stamps[-1] < cycles
        if kw.get("ready_prob", 1.0) == 1.0:
            assert cycles == engine_cycles(program, golden, n, lanes=lanes, trace=True).total


def test_trace_records_potentials_levels_and_stamps(mlp, digits):
    _check_trace(mlp, digits.x_test[:1], 8)


def test_trace_under_back_pressure(mlp, digits):
    _check_trace(mlp, digits.x_test[:1], 16, ready_prob=0.5, seed=5)


@settings(max_examples=8, deadline=None)
@given(data=st.data(), lanes=st.sampled_from([1, 3]))
def test_trace_of_random_conv_pool_programs(data, lanes):
    program = random_conv_program(data.draw)
    _check_trace(program, draw_images(data.draw, program, 1), lanes)


def test_no_trace_port_unless_asked(mlp):
    from amaranth.hdl import Fragment
    dut = Engine(config=EngineConfig.for_program(mlp, lanes=4), program=mlp)
    assert not hasattr(dut, "o_trace") and "o_trace" not in dict(dut.signature.members)
    Fragment.get(dut, None)  # elaborates without it


def test_input_larger_than_every_weight_block():
    """Regression: the layer table's fields must hold the pixel count (32 > 22 weight rows)."""
    layers = [Layer("conv0", "conv3x3", (2, 4, 4), (1, 4, 4), 1, 1, 1, True,
                    weights=np.zeros((1, 2, 3, 3), int), bias=np.array([0]),
                    threshold=np.array([1])),
              Layer("pool0", "sumpool2x2", (1, 4, 4), (1, 2, 2), 1, 3, 4, True),
              Layer("out", "dense", (1, 2, 2), (1,), 3, 0, 0, False,
                    weights=np.zeros((1, 4), int), bias=np.array([0]))]
    program = Program("bitserial", InputSpec((2, 4, 4), 1, 1), layers, 3, t_steps=1)
    program.validate()
    images = torch.stack([torch.zeros(2, 4, 4, dtype=torch.int64),
                          torch.ones(2, 4, 4, dtype=torch.int64)])
    check(program, images, 1)


# ------------------------------------------------------------------ rate-coded IF mode


@settings(max_examples=25, deadline=None)
@given(data=st.data(), lanes=st.sampled_from([1, 2, 4]))
def test_random_rate_programs(data, lanes):
    """Rate-coded IF (qcfs and srp) on random dense and conv+pool Programs: logits, class and
    cycles equal the golden model's."""
    program = random_rate_program(data.draw)
    check(program, draw_images(data.draw, program, 2), lanes)


@settings(max_examples=8, deadline=None)
@given(data=st.data(), lanes=st.sampled_from([1, 3]))
def test_trace_of_random_rate_programs(data, lanes):
    """Every step's potentials and spikes (after SRP's mask) against the golden model."""
    program = random_rate_program(data.draw)
    _check_trace(program, draw_images(data.draw, program, 1), lanes)


@pytest.fixture(scope="module")
def rate_cnns(quick_checkpoint):
    from bitspike.sw.pipeline import convert_checkpoint
    return {method: convert_checkpoint(quick_checkpoint, method=method, steps=4, **kw).program
            for method, kw in (("qcfs", {}), ("srp", {"tau": 2}))}


@pytest.mark.parametrize("method", ["qcfs", "srp"])
def test_converted_rate_cnns_match_golden(rate_cnns, digits, method):
    """digits-cnn converted to rate Programs (qcfs, and srp with its probe steps): exact."""
    program = rate_cnns[method]
    assert program.mode == "rate" and program.tau == (2 if method == "srp" else 0)
    check(program, digits.x_test[:1], 32)


@pytest.fixture(scope="module")
def rate_mlp(digits, tmp_path_factory):
    from bitspike.sw.checkpoint import save_checkpoint
    from bitspike.sw.pipeline import convert_checkpoint
    from bitspike.sw.train import TrainConfig, train
    model, meta = train(TrainConfig(arch="digits-mlp", epochs=2), digits, progress=False)
    path = tmp_path_factory.mktemp("mlp") / "model.pt"
    save_checkpoint(path, model, meta)
    return convert_checkpoint(path, method="srp", steps=4, tau=2).program


def test_rate_back_pressure_loses_nothing(rate_mlp, digits):
    check(rate_mlp, digits.x_test[:2], 4, ready_prob=0.4, seed=7)


def test_rate_reset_mid_inference_then_correct_results(rate_mlp, digits):
    check(rate_mlp, digits.x_test[:2], 8, reset_after=150)


@pytest.mark.parametrize("t_in, t_hidden", [(1, 1), (8, 8), (1, 8), (8, 1)])
@pytest.mark.parametrize("lanes", [1, 20, 32])
def test_one_and_max_time_steps_with_one_and_many_lanes(t_in, t_hidden, lanes):
    """T = 1 and T = 8 (the widest here) on input and hidden layer, with a single lane, one
    lane per hidden neuron, and more lanes than neurons."""
    program = dense_chain(t_in, t_hidden, bias=3, seed=t_in * 10 + t_hidden)
    rng = np.random.default_rng(lanes)
    images = torch.from_numpy(rng.integers(0, 2**t_in, (2, 8)))
    images[1] = 2**t_in - 1  # saturating
    check(program, images, lanes)


def test_negative_potentials_fire_nothing_and_are_traced():
    """A large negative bias drives every hidden potential below zero: level 0, no events for
    the output layer (its logits are its bias), and the trace shows the negative u0."""
    program = dense_chain(4, 3, bias=-10_000, seed=1)
    images = torch.full((1, 8), 15, dtype=torch.int64)
    golden = run_program(program, images, trace=True)
    assert int(golden.levels[0].max()) == 0
    assert golden.logits[0].tolist() == [5, -5, 0]
    _check_trace(program, images, 4)
    dut = Engine(config=EngineConfig.for_program(program, lanes=4), program=program, trace=True)
    (_, _, _, records), = run_engine(dut, [images[0]])
    assert all(v < 0 for r in records if r["kind"] == 0 and r["layer"] == 0
               for v in r["values"])


def test_rate_all_zero_and_saturating_inputs_and_trace(rate_mlp):
    """srp digits-mlp (trained): all-zero and saturating images, then every step's potentials
    and spikes of one image against the golden model."""
    images = torch.stack([torch.zeros(1, 8, 8, dtype=torch.int64),
                          torch.full((1, 8, 8), 16, dtype=torch.int64)])
    check(rate_mlp, images, 8)
    _check_trace(rate_mlp, images[1:], 16)


def test_rate_trace_under_back_pressure(rate_mlp, digits):
    _check_trace(rate_mlp, digits.x_test[:1], 8, ready_prob=0.5, seed=11)


def test_rate_verilog_has_no_multiplier(rate_mlp):
    dut = Engine(config=EngineConfig.for_program(rate_mlp, lanes=4), program=rate_mlp)
    text = verilog.convert(dut, name="bitspike_engine", emit_src=False)
    assert "module bitspike_engine" in text and " * " not in text


# ------------------------------------------------------------------ one engine, many Programs


def _shared_config(programs, lanes: int) -> EngineConfig:
    """The smallest config every one of ``programs`` fits (field-wise maximum, both modes)."""
    configs = [EngineConfig.for_program(p, lanes=lanes) for p in programs]
    fields = {name: max(getattr(c, name) for c in configs) for name in EngineConfig._MINIMA}
    modes = tuple({m for c in configs for m in c.modes})
    if "rate" in modes:
        fields["v_init_bits"] = max(1, fields["v_init_bits"])
    return EngineConfig(**fields, modes=modes)


def _rate_dense_program() -> Program:
    rng = np.random.default_rng(6)
    layers = [Layer("fc0", "dense", (8,), (6,), 2, 3, 1, True, weights=rng.integers(-3, 4, (6, 8)),
                    bias=rng.integers(-3, 3, 6), threshold=rng.integers(2, 9, 6),
                    v_init=rng.integers(0, 4, 6)),
              Layer("out", "dense", (6,), (3,), 3, 0, 0, False,
                    weights=rng.integers(-3, 4, (3, 6)), bias=rng.integers(-3, 3, 3))]
    program = Program("rate", InputSpec((8,), 3, 2), layers, 3, method="srp", t_steps=2, tau=1)
    program.validate()
    return program


def _masked_memories(text: str) -> str:
    """Verilog with every memory's initial contents replaced by a placeholder."""
    import re
    return re.sub(r"^(\s*\S+ ?\[\d+\] = \d+'h)[0-9a-fA-Fxz_]+;$", r"\1X;", text,
                  flags=re.MULTILINE)


def test_one_config_one_logic_for_every_program_that_fits():
    """The engine is not regenerated per network. For one config, a bit-serial dense
    chain, a bit-serial conv+pool network and a rate (srp) network give the same Verilog except
    for the memories' initial contents, and each runs exactly on it."""
    programs = [dense_chain(3, 2, bias=1, seed=4), conv_pool_program(), _rate_dense_program()]
    config = _shared_config(programs, lanes=3)
    assert config.modes == ("bitserial", "rate")
    texts = {_masked_memories(verilog.convert(Engine(config=config, program=p),
                                              name="bitspike_engine", emit_src=False))
             for p in programs}
    assert len(texts) == 1
    for program in programs:
        n = int(np.prod(program.input.shape))
        images = torch.from_numpy(np.random.default_rng(n).integers(
            0, program.input.max_level + 1, (2, *program.input.shape)))
        check(program, images, 3, config=config)


def test_fixed_cycles_by_hand():
    """One output layer (4 inputs, 2 outputs, P = 2), an all-zero image: the load is 4 pixel
    cycles; the layer 1 start + the list scanner's latency (12) + one empty segment (1 issue,
    taken 3 cycles later, then 1 take + 2 logits) + the cycle that sees the firing stage idle =
    1 + 12 + 3 + 3 + 1. The fixed part leaves out only the segment's firing work (take + 2
    logits)."""
    from bitspike.sw.cycles import fixed_cycles
    layers = [Layer("out", "dense", (4,), (2,), 1, 0, 0, False,
                    weights=np.array([[1, 2, 3, 1], [-1, 0, 2, 1]]), bias=np.array([4, -4]))]
    program = Program("bitserial", InputSpec((4,), 1, 1), layers, 3, t_steps=0)
    program.validate()
    zeros = torch.zeros(1, 4, dtype=torch.int64)
    assert engine_cycles(program, run_program(program, zeros), 0, lanes=2).total == 24
    assert fixed_cycles(program, lanes=2) == 4 + 1 + 12 + 3 + 1 == 21
    (_, _, cycles), = check(program, zeros, 2)
    assert cycles == 24
