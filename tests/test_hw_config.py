"""EngineConfig: sizing for real Programs, fit errors, the P-wide weight image, JSON, validation."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from bitspike.hw.config import (
    ENGINE_CONFIG_VERSION,
    EngineConfig,
    EngineConfigError,
    EngineFitError,
    pack_weights,
    unpack_weights,
    weight_rows,
)
from bitspike.sw.convert import convert_model
from bitspike.sw.data import Normalization
from bitspike.sw.errors import BitspikeError
from bitspike.sw.images import weights_to_words
from bitspike.sw.models import build_model
from bitspike.sw.program import InputSpec, Layer, Program
from bitspike.sw.rate import convert_rate

NORM = Normalization(16, (0.0,), (0.4,))
LANES = (1, 3, 4, 8, 32)


def _bitserial(arch, seed):
    torch.manual_seed(seed)
    model = build_model(arch, levels=15).eval()
    return convert_model(model, input_shape=(1, 8, 8), normalization=NORM)


@pytest.fixture(scope="module")
def programs():
    torch.manual_seed(2)
    rate, _ = convert_rate(build_model("digits-cnn", levels=15).eval(), method="qcfs", steps=4,
                           input_shape=(1, 8, 8), normalization=NORM)
    return {"digits-cnn": _bitserial("digits-cnn", 0), "digits-mlp": _bitserial("digits-mlp", 1),
            "rate-qcfs": rate}


def _dense_program(n_in, c_out, bias):
    """One non-firing dense layer, inputs 0/1 in one bit plane: every number known by hand."""
    layer = Layer("out1", "dense", (n_in,), (c_out,), 1, 0, 0, False,
                  weights=np.ones((c_out, n_in), dtype=np.int64),
                  bias=np.full(c_out, bias, dtype=np.int64))
    program = Program("bitserial", InputSpec((n_in,), 1, 1), [layer], 8)
    program.validate()
    return program


# ---------------------------------------------------------------------------------------------
# sizing


@pytest.mark.parametrize("name", ["digits-cnn", "digits-mlp", "rate-qcfs"])
@pytest.mark.parametrize("lanes", LANES)
def test_for_program_fits_and_takes_the_requirements(programs, name, lanes):
    program = programs[name]
    req = program.requirements()
    cfg = EngineConfig.for_program(program, lanes=lanes)
    cfg.check_fits(program)
    assert cfg.misfits(program) == []
    assert cfg.lanes == lanes
    assert cfg.modes == (program.mode,)
    for key in ("weight_bits", "acc_bits", "bias_bits", "threshold_bits", "v_init_bits",
                "max_t"):
        assert getattr(cfg, key) == req[key], key
    assert (cfg.act_depth, cfg.bias_depth, cfg.threshold_depth, cfg.v_init_depth,
            cfg.layer_depth) == (req["max_neurons"], req["bias_words"], req["threshold_words"],
                                 req["v_init_words"], req["layers"])
    rows = sum(lay.fan_in * -(-lay.out_channels // lanes) for lay in program.layers
               if lay.weights is not None)
    assert cfg.weight_depth == rows
    if lanes == 1:
        assert cfg.weight_depth == req["weight_words"]


def test_digits_cnn_rows_by_hand(programs):
    """conv1 9 x 2 groups, conv2 144 x 4, conv3 288 x 4, out1 128 x ceil(10 / 8) = 2."""
    program = programs["digits-cnn"]
    assert weight_rows(program, 8) == [18, 576, 0, 1152, 0, 256]
    assert EngineConfig.for_program(program, lanes=8).weight_depth == 2002
    assert weight_rows(program, 32) == [9, 144, 0, 288, 0, 128]


@pytest.mark.parametrize("name", ["digits-cnn", "digits-mlp", "rate-qcfs"])
def test_for_program_is_the_smallest(programs, name):
    """One less of any parameter the Program uses makes check_fits name exactly that one."""
    program = programs[name]
    cfg = EngineConfig.for_program(program, lanes=8)
    names = {"weight_bits": "weight_bits", "acc_bits": "acc_bits", "bias_bits": "bias_bits",
             "threshold_bits": "threshold_bits", "max_t": "max_t", "weight_depth": "weights",
             "act_depth": "activations", "bias_depth": "bias", "threshold_depth": "threshold",
             "layer_depth": "layers"}
    if program.mode == "rate":
        names |= {"v_init_bits": "v_init_bits", "v_init_depth": "v_init"}
    names |= {"max_channels": "max_channels", "max_height": "max_height",
              "max_width": "max_width", "event_depth": "event_depth", "list_depth": "list_depth"}
    for field, label in names.items():
        value = getattr(cfg, field)
        less = value // 2 if field in ("event_depth", "list_depth") else value - 1  # powers of 2
        if less < EngineConfig._MINIMA[field]:
            continue  # nothing smaller exists (e.g. a width-1 map)
        smaller = dataclasses.replace(cfg, **{field: less})
        problems = smaller.misfits(program)
        assert len(problems) == 1 and problems[0].startswith(f"{label}: "), (field, problems)
        with pytest.raises(EngineFitError, match=f"{label}: needs"):
            smaller.check_fits(program)


def test_a_bigger_engine_fits(programs):
    program = programs["digits-cnn"]
    cfg = EngineConfig.for_program(program, lanes=8)
    big = dataclasses.replace(cfg, weight_bits=16, acc_bits=32, weight_depth=4096, act_depth=4096,
                              modes=("bitserial", "rate"), v_init_bits=16, v_init_depth=128,
                              event_depth=4 * cfg.event_depth, list_depth=2 * cfg.list_depth)
    big.check_fits(program)
    big.check_fits(programs["rate-qcfs"])


def test_fit_error_names_every_shortfall_exactly():
    """The example of the docs: 2,048 rows of 8 x 8 bits and a 21-bit accumulator."""
    program = _dense_program(256, 64, 600_000)  # |u| <= 256 + 600000 < 2^20: 21 bits
    cfg = EngineConfig.for_program(program, lanes=8)
    assert (cfg.weight_depth, cfg.acc_bits) == (2048, 21)
    small = dataclasses.replace(cfg, weight_depth=1024, acc_bits=16)
    with pytest.raises(EngineFitError) as info:
        small.check_fits(program)
    assert isinstance(info.value, BitspikeError)
    assert str(info.value) == (
        "the Program does not fit this engine (P = 8): weights: needs 2,048 rows of 8 x 8 bits, "
        "the engine has 1,024 (2x too small); acc_bits: needs 21, the engine has 16 (5 bits "
        "short). Build the engine with EngineConfig.for_program(program, lanes=8) or raise the "
        "parameters named above (converting with fewer weight bits, bitspike convert "
        "--weight-bits, shrinks the weights and the accumulators)")


def test_fit_error_lists_many_shortfalls_together(programs):
    program = programs["digits-cnn"]
    req = program.requirements()
    cfg = EngineConfig.for_program(program, lanes=8)
    small = dataclasses.replace(cfg, weight_depth=1001, act_depth=1024, bias_depth=60,
                                threshold_depth=79, layer_depth=4, weight_bits=6,
                                acc_bits=req["acc_bits"] - 5, bias_bits=req["bias_bits"] - 1,
                                threshold_bits=req["threshold_bits"] - 2, max_t=4)
    with pytest.raises(EngineFitError) as info:
        small.check_fits(program)
    parts = str(info.value).split(": ", 1)[1].split(". Build")[0].split("; ")
    assert parts == [
        "weights: needs 2,002 rows of 8 x 6 bits, the engine has 1,001 (2x too small)",
        "activations: needs 2,048 neurons per buffer, the engine has 1,024 (2x too small)",
        "bias: needs 90 words, the engine has 60 (1.5x too small)",
        "threshold: needs 80 words, the engine has 79 (1 word short)",
        "layers: needs 6 layers, the engine has 4 (1.5x too small)",
        "weight_bits: needs 8, the engine has 6 (2 bits short)",
        f"acc_bits: needs {req['acc_bits']}, the engine has {req['acc_bits'] - 5} (5 bits short)",
        f"bias_bits: needs {req['bias_bits']}, the engine has {req['bias_bits'] - 1} "
        "(1 bit short)",
        f"threshold_bits: needs {req['threshold_bits']}, the engine has "
        f"{req['threshold_bits'] - 2} (2 bits short)",
        "max_t: needs 6 time steps, the engine has 4 (2 steps short)",
    ]


def test_rate_program_on_a_bitserial_engine(programs):
    rate = programs["rate-qcfs"]
    cfg = EngineConfig.for_program(programs["digits-cnn"], lanes=8)
    problems = cfg.misfits(rate)
    assert problems[0] == "mode: the Program is rate, the engine supports bitserial only"
    assert "v_init: needs 80 words, the engine has 0 (80 words short)" in problems
    assert any(p.startswith("v_init_bits: needs ") for p in problems)
    with pytest.raises(EngineFitError, match="mode: the Program is rate"):
        cfg.check_fits(rate)


def test_check_fits_refuses_a_non_program():
    cfg = EngineConfig.for_program(_dense_program(4, 2, 0), lanes=2)
    with pytest.raises(TypeError, match="program must be a bitspike.sw.program.Program"):
        cfg.check_fits({"layers": []})


# ---------------------------------------------------------------------------------------------
# cost


def test_cost_of_digits_cnn_at_8_lanes(programs):
    program = programs["digits-cnn"]
    req = program.requirements()
    cost = EngineConfig.for_program(program, lanes=8).cost()
    cfg = EngineConfig.for_program(program, lanes=8)
    # lists: conv2's input, 16 channels x 8 x 8 positions x 4 planes = 2^12 entries of an index
    # below max(act_depth, channels) = 2048 (11 bits); conv1's input has the most lists,
    # 8 x 8 positions x 5 pixel planes = 2^(3 + 3 + 3), with 14-bit lengths; bitmaps: 8 rows
    # of 6 planes x 8 columns; the layer-table ROM: 6 rows of LayerRow's 40 fields, each as wide
    # as its bound on this config (148 bits), not the bundle's 16 descriptor words of 32 bits
    assert (cfg.event_depth, cfg.list_depth, cfg.max_channels) == (4096, 512, 32)
    # parameters: one row of 8 values per group of 8 channels, 12 groups (16 + 32 + 32 + 10
    # channels) within the bound of ceil(90 / 8) + 6 - 1 = 17 rows
    assert cfg.param_rows == 17
    expected = {"weights": 2002 * 8 * 8, "bias": 17 * 8 * req["bias_bits"],
                "threshold": 17 * 8 * req["threshold_bits"], "v_init": 0, "layers": 6 * 148,
                "event_lists": 2 * 4096 * 11, "list_lengths": 2 * 512 * 14,
                "nonempty_bitmaps": 2 * 8 * 6 * 8}
    assert {k: cost[k] for k in expected} == expected
    assert cost["memory_bits"] == sum(expected.values())
    assert cost["accumulators"] == cost["register_bits"] == 8 * req["acc_bits"]


def test_cost_counts_v_init_in_rate_mode(programs):
    cfg = EngineConfig.for_program(programs["rate-qcfs"], lanes=4)
    assert cfg.cost()["v_init"] == cfg.param_rows * 4 * cfg.v_init_bits > 0
    bitserial = EngineConfig.for_program(programs["digits-cnn"], lanes=4)
    assert bitserial.cost()["v_init"] == 0 and bitserial.memories()["v_init"].count == 0


# ---------------------------------------------------------------------------------------------
# the P-wide weight image


def _lane(row: int, p: int, bits: int) -> int:
    raw = (row >> (p * bits)) & ((1 << bits) - 1)
    return raw - (1 << bits) if raw >> (bits - 1) else raw


@pytest.mark.parametrize("name", ["digits-cnn", "digits-mlp", "rate-qcfs"])
@pytest.mark.parametrize("lanes", LANES)
def test_pack_weights_matches_the_bundle_layout(programs, name, lanes):
    """Row base + g * fan_in + j holds the bundle's words of input j (conv: tap-major j)."""
    program = programs[name]
    bits = program.weight_bits
    rows, bases = pack_weights(program, lanes)
    counts = weight_rows(program, lanes)
    assert len(rows) == sum(counts) == EngineConfig.for_program(program, lanes=lanes).weight_depth
    assert bases == [sum(counts[:i]) for i in range(len(counts))]
    assert all(0 <= r < 1 << (lanes * bits) for r in rows)
    for lay, base in zip(program.layers, bases, strict=True):
        if lay.weights is None:
            continue
        c_out, fan_in = lay.out_channels, lay.fan_in
        groups = -(-c_out // lanes)
        words = np.zeros((fan_in, groups * lanes), dtype=np.int64)
        bundle = weights_to_words(lay).reshape(fan_in, c_out)  # bundle input j_b, channel
        if lay.kind == "conv3x3":  # engine j = (dy * 3 + dx) * C_in + c; bundle j_b = c * 9 + tap
            c_in = lay.in_shape[0]
            bundle = bundle.reshape(c_in, 9, c_out).transpose(1, 0, 2).reshape(fan_in, c_out)
        words[:, :c_out] = bundle
        got = np.array([[_lane(rows[base + g * fan_in + j], p, bits) for p in range(lanes)]
                        for g in range(groups) for j in range(fan_in)])
        want = words.reshape(fan_in, groups, lanes).transpose(1, 0, 2).reshape(-1, lanes)
        assert np.array_equal(got, want), lay.name


@pytest.mark.parametrize("name", ["digits-cnn", "digits-mlp", "rate-qcfs"])
@pytest.mark.parametrize("lanes", LANES)
def test_pack_weights_round_trips(programs, name, lanes):
    program = programs[name]
    rows, bases = pack_weights(program, lanes)
    back = unpack_weights(rows, bases, program, lanes)
    for lay, w in zip(program.layers, back, strict=True):
        if lay.weights is None:
            assert w is None
        else:
            assert w.shape == lay.weights.shape and np.array_equal(w, lay.weights), lay.name


def test_pack_weights_sign_extends_to_a_wider_engine(programs):
    program = programs["digits-mlp"]
    rows, bases = pack_weights(program, 4, weight_bits=12)
    back = unpack_weights(rows, bases, program, 4, weight_bits=12)
    assert all(np.array_equal(w, lay.weights) for w, lay in zip(back, program.layers,
                                                                 strict=True))
    first = program.layers[0].weights
    assert _lane(rows[0], 1, 12) == first[1, 0]
    cfg = dataclasses.replace(EngineConfig.for_program(program, lanes=4), weight_bits=12)
    assert cfg.pack_weights(program) == (rows, bases)


def test_pack_weights_refusals(programs):
    program = programs["digits-cnn"]
    with pytest.raises(ValueError, match="layer conv1: a weight does not fit 4 bits"):
        pack_weights(program, 8, weight_bits=4)
    with pytest.raises(TypeError, match="lanes must be a positive integer, not 0"):
        pack_weights(program, 0)
    small = dataclasses.replace(EngineConfig.for_program(program, lanes=8), weight_depth=100)
    with pytest.raises(EngineFitError, match="weights: needs 2,002 rows"):
        small.pack_weights(program)


def test_padded_lanes_are_zero(programs):
    """digits-cnn's out1 has 10 outputs: at P = 8 its second group holds lanes 10..15 as 0."""
    program = programs["digits-cnn"]
    rows, bases = pack_weights(program, 8)
    out1 = program.layers[-1]
    for j in range(out1.fan_in):
        row = rows[bases[-1] + out1.fan_in + j]
        assert row >> (2 * 8) == 0
        assert [_lane(row, p, 8) for p in range(2)] == list(out1.weights[8:10, j])


# ---------------------------------------------------------------------------------------------
# JSON


@pytest.mark.parametrize("name", ["digits-cnn", "digits-mlp", "rate-qcfs"])
def test_json_round_trip(programs, name):
    cfg = EngineConfig.for_program(programs[name], lanes=8)
    text = cfg.to_json()
    data = json.loads(text)
    assert data["format"] == "bitspike-engine-config"
    assert data["format_version"] == ENGINE_CONFIG_VERSION == 2
    assert data["modes"] == [programs[name].mode]
    assert EngineConfig.from_json(text) == cfg
    both = dataclasses.replace(cfg, modes=["rate", "bitserial"], v_init_bits=max(
        1, cfg.v_init_bits))
    assert both.modes == ("bitserial", "rate")
    assert EngineConfig.from_json(both.to_json()) == both


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(format_version=1), "format_version 1 is not supported"),
    (lambda d: d.update(format="bitspike-image-bundle"), "format 'bitspike-image-bundle'"),
    (lambda d: d.pop("acc_bits"), "missing key(s) acc_bits"),
    (lambda d: d.update(lanez=8), "unknown key(s) lanez"),
    (lambda d: d.update(lanes="8"), "lanes must be an integer, not '8'"),
    (lambda d: d.update(lanes=0), "lanes must be an integer >= 1, not 0"),
    (lambda d: d.update(modes="bitserial"), "modes must be a list"),
    (lambda d: d.update(modes=["spiking"]), "unknown neuron mode(s) ['spiking']"),
])
def test_from_json_refusals(programs, edit, message):
    data = EngineConfig.for_program(programs["digits-cnn"], lanes=8).to_dict()
    edit(data)
    with pytest.raises(EngineConfigError) as info:
        EngineConfig.from_json(json.dumps(data), where="engine.json")
    assert str(info.value).startswith("engine.json: ")
    assert message in str(info.value)


def test_from_json_refuses_non_json():
    with pytest.raises(EngineConfigError, match="not valid JSON"):
        EngineConfig.from_json("{lanes: 8")
    with pytest.raises(EngineConfigError, match="must be a JSON object, not list"):
        EngineConfig.from_json("[]")


# ---------------------------------------------------------------------------------------------
# construction


GOOD = dict(lanes=8, weight_bits=8, acc_bits=21, bias_bits=14, threshold_bits=9, v_init_bits=0,
            max_t=6, weight_depth=2002, act_depth=2048, bias_depth=90, threshold_depth=80,
            v_init_depth=0, layer_depth=6, max_channels=32, max_height=8, max_width=8,
            event_depth=4096, list_depth=256, modes=("bitserial",))


@pytest.mark.parametrize("change, error, message", [
    ({"lanes": 0}, ValueError, "lanes must be an integer >= 1, not 0"),
    ({"lanes": True}, TypeError, "lanes must be an integer, not True"),
    ({"lanes": 8.0}, TypeError, "lanes must be an integer, not 8.0"),
    ({"weight_bits": 1}, ValueError, "weight_bits must be an integer >= 2, not 1"),
    ({"weight_bits": 33}, ValueError, "weight_bits must be 2..32, not 33"),
    ({"acc_bits": 0}, ValueError, "acc_bits must be an integer >= 1, not 0"),
    ({"weight_depth": 0}, ValueError, "weight_depth must be an integer >= 1, not 0"),
    ({"threshold_depth": -1}, ValueError, "threshold_depth must be an integer >= 0, not -1"),
    ({"modes": ()}, ValueError, "modes must name each supported neuron mode once"),
    ({"max_width": 0}, ValueError, "max_width must be an integer >= 1, not 0"),
    ({"event_depth": 3000}, ValueError, "event_depth must be a power of two, not 3000"),
    ({"list_depth": 6}, ValueError, "list_depth must be a power of two, not 6"),
    ({"modes": ("rate", "rate"), "v_init_bits": 4}, ValueError, "name each supported"),
    ({"modes": "rate"}, TypeError, "modes must be a tuple of neuron modes"),
    ({"modes": ("spiking",)}, ValueError, "unknown neuron mode(s) ['spiking']"),
    ({"modes": ("rate",)}, ValueError, "v_init_bits must be >= 1 when the engine supports the "
                                       "rate mode"),
    ({"v_init_depth": 5}, ValueError, "v_init_bits and v_init_depth must be 0 without the rate "
                                      "mode"),
])
def test_bad_constructor_arguments(change, error, message):
    with pytest.raises(error) as info:
        EngineConfig(**{**GOOD, **change})
    assert message in str(info.value)


def test_constructor_is_keyword_only_and_frozen():
    with pytest.raises(TypeError):
        EngineConfig(*GOOD.values())
    cfg = EngineConfig(**GOOD)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lanes = 4
    with pytest.raises(TypeError, match="lanes must be a positive integer, not 0"):
        EngineConfig.for_program(_dense_program(4, 2, 0), lanes=0)


def test_layer_table_backstop_names_the_field(programs, monkeypatch):
    """A layer-table field wider than the config allows is refused (named) even if no other
    field caught it first."""
    cfg = EngineConfig.for_program(programs["digits-cnn"], lanes=8)
    limits = cfg.layer_table_limits()
    monkeypatch.setattr(EngineConfig, "layer_table_limits",
                        lambda self: {**limits, "groups": 1})
    with pytest.raises(EngineFitError, match=r"layer table: layer 0 has groups = 2, the engine "
                                             r"holds at most 1"):
        cfg.check_fits(programs["digits-cnn"])
