"""Operation counts and energy (bitspike.sw.energy): hand-counted tiny networks, invariants on
real Programs, the energy table and its errors, and the ``bitspike energy`` command."""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import pytest
import torch

from bitspike.sw.energy import (
    COMPUTE_KINDS,
    MEMORY_KINDS,
    EnergyTable,
    add_energy_command,
    count_ops,
    energy,
    format_table,
    main,
    plot_energy,
)
from bitspike.sw.errors import BitspikeError
from bitspike.sw.golden import run_program
from bitspike.sw.program import InputSpec, Layer, Program

# The input of every tiny network: one 2x2 image, levels 0..3 as 2 bit planes (MSB first).
#   levels [[3, 0], [1, 2]] -> plane 1 [[1, 0], [0, 1]], plane 2 [[1, 0], [1, 0]]: 4 events.
IMAGE = torch.tensor([[[[3, 0], [1, 2]]]])
SPEC = InputSpec((1, 2, 2), max_level=3, t=2)
# conv1: channel 0 sums the whole 3x3 window (= all 4 pixels of a 2x2 image: 6 everywhere),
# channel 1 passes its own pixel (center tap only).
CONV_W = np.zeros((2, 1, 3, 3), dtype=np.int64)
CONV_W[0] = 1
CONV_W[1, 0, 1, 1] = 1
OUT_W = np.array([[1, 2], [3, -1]], dtype=np.int64)
OUT_B = np.array([0, 5], dtype=np.int64)


def ints(*v):
    return np.array(v, dtype=np.int64)


def bitserial_program() -> Program:
    """conv1 (2 channels, T = 2, L = 2 < 3: clip compare) -> sumpool -> dense (2 classes)."""
    layers = [
        Layer("conv1", "conv3x3", (1, 2, 2), (2, 2, 2), 2, 2, 2, True, weights=CONV_W.copy(),
              bias=ints(0, 0), threshold=ints(2, 1)),
        Layer("pool1", "sumpool2x2", (2, 2, 2), (2, 1, 1), 2, 4, 8, True),
        Layer("out1", "dense", (2, 1, 1), (2,), 4, 0, 0, False, weights=OUT_W.copy(),
              bias=OUT_B.copy()),
    ]
    p = Program("bitserial", SPEC, layers, 8, t_steps=2)
    p.validate()
    return p


def rate_program(*, method="qcfs", tau=0, t_steps=3, bias1=0, v_init1=1) -> Program:
    """conv1 (IF, Theta [8, 2], V0 [4, v_init1]) -> sumpool -> dense; S = tau + t_steps."""
    s = tau + t_steps
    layers = [
        Layer("conv1", "conv3x3", (1, 2, 2), (2, 2, 2), 2, s, 1, True, weights=CONV_W.copy(),
              bias=ints(0, bias1), threshold=ints(8, 2), v_init=ints(4, v_init1)),
        Layer("pool1", "sumpool2x2", (2, 2, 2), (2, 1, 1), s, s, 4, True),
        Layer("out1", "dense", (2, 1, 1), (2,), s, 0, 0, False, weights=OUT_W.copy(),
              bias=OUT_B.copy()),
    ]
    p = Program("rate", SPEC, layers, 8, method=method, t_steps=t_steps, tau=tau)
    p.validate()
    return p


def ops_of(report, name):
    row = next(r for r in report.layers if r.name == name)
    return {**row.ops, **{f"{k}_words": v for k, v in row.memory_words.items()}}


def check(actual: dict, expected: dict):
    for k, v in expected.items():
        assert actual[k] == v, f"{k}: counted {actual[k]}, expected {v}"


# ---------------------------------------------------------------------------------------------
# (a) hand-computed counts


def test_bitserial_tiny_network_hand_counts():
    prog = bitserial_program()
    result = run_program(prog, IMAGE)
    # conv1 levels: ch0 u0 = 6, D = 2 -> 3, clipped to L = 2 ("10") everywhere; ch1 = own
    # pixel with D = 1, clipped at 2: [[2, 0], [1, 2]] -> bits 10, 00, 01, 10. 7 one-bits.
    assert result.levels[0][0].tolist() == [[[2, 2], [2, 2]], [[2, 0], [1, 2]]]
    # pool1: ch0 8 = 1000, ch1 5 = 0101: 3 one-bits. out1: [8 + 10, 24 - 5 + 5] = [18, 24].
    assert result.levels[1][0].flatten().tolist() == [8, 5]
    assert result.logits[0].tolist() == [18, 24]
    rep = count_ops(prog, result, lanes=8)
    assert rep.images == 1 and rep.acc_bits == 8 and rep.op_width == 8
    # conv1: 4 input events, each in the 3x3 window of all 4 output pixels x 2 channels = 8
    # synapses -> 32 accumulates and 32 weight words; Horner: 8 neurons x (T_in - 1) shifts;
    # one bias add per neuron; compares 8 x (T_out 2 + clip 1); threshold shifts 8 x 2;
    # subtracts = event writes = the 7 emitted one-bits; event reads: 1 group (P = 8) per pixel,
    # each pixel's window holds every event of the step: 4 pixels x 4 events; params B + D.
    check(ops_of(rep, "conv1"), {
        "accumulate": 32, "pool_add": 0, "shift": 8, "bias_add": 8, "compare": 24,
        "subtract": 7, "threshold_shift": 16, "weight_read_words": 32,
        "event_read_words": 16, "event_write_words": 7, "param_read_words": 16})
    # pool1: 7 input bits, one add each; 2 neurons x 1 shift; compares 2 x T_out 4 (no clip:
    # a 2x2 sum never exceeds 4 L); threshold shifts 2 x 4; 3 one-bits out; no weights/params.
    check(ops_of(rep, "pool1"), {
        "accumulate": 0, "pool_add": 7, "shift": 2, "bias_add": 0, "compare": 8,
        "subtract": 3, "threshold_shift": 8, "weight_read_words": 0, "event_read_words": 7,
        "event_write_words": 3, "param_read_words": 0})
    # out1: 3 input bits x 2 outputs; 2 x 3 shifts; 2 bias adds; argmax 1 compare; no firing.
    check(ops_of(rep, "out1"), {
        "accumulate": 6, "pool_add": 0, "shift": 6, "bias_add": 2, "compare": 1,
        "subtract": 0, "threshold_shift": 0, "weight_read_words": 6, "event_read_words": 3,
        "event_write_words": 0, "param_read_words": 2})
    check({**rep.totals.ops, **{f"{k}_words": v for k, v in rep.totals.memory_words.items()}}, {
        "accumulate": 38, "pool_add": 7, "shift": 16, "bias_add": 10, "compare": 33,
        "subtract": 10, "threshold_shift": 24, "weight_read_words": 38,
        "event_read_words": 26, "event_write_words": 10, "param_read_words": 18})
    # memory bits: weights 8 bits; event entries are neuron indices (4 inputs: 2 bits, conv1's
    # 8 outputs: 3 bits, pool1's 2 outputs: 1 bit)
    conv1, pool1, out1 = rep.layers
    req = prog.requirements()
    assert conv1.memory_bits == {"weight_read": 32 * 8, "event_read": 16 * 2,
                                 "event_write": 7 * 3,
                                 "param_read": 8 * (req["bias_bits"] + req["threshold_bits"])}
    assert pool1.memory_bits["event_read"] == 7 * 3 and pool1.memory_bits["event_write"] == 3
    assert out1.memory_bits["event_read"] == 3 * 1
    # the source ANN: conv 2*2*2*1*9 MACs, pooling 3 adds per output, dense 2*2 MACs
    assert [(r.ann_macs, r.ann_adds) for r in rep.layers] == [(72, 0), (0, 6), (4, 0)]
    assert (conv1.input_events, pool1.input_events, out1.input_events) == (4, 7, 3)


def test_lanes_change_only_event_reads():
    prog = bitserial_program()
    result = run_program(prog, IMAGE)
    wide, narrow = count_ops(prog, result, lanes=8), count_ops(prog, result, lanes=1)
    # P = 1: conv1 has 2 groups per pixel (reads each event twice), out1 2 groups
    assert [r.memory_words["event_read"] for r in narrow.layers] == [32, 7, 6]
    assert [r.weight_accesses for r in narrow.layers] == [32, 0, 6]
    assert [r.weight_accesses for r in wide.layers] == [16, 0, 3]
    for a, b in zip(wide.layers, narrow.layers, strict=True):
        assert a.ops == b.ops
        assert a.memory_words["weight_read"] == b.memory_words["weight_read"]
    with pytest.raises(BitspikeError, match="lanes"):
        count_ops(prog, result, lanes=0)
    counts_only = format_table(narrow)
    assert "conv1" in counts_only and "P = 1 lanes" in counts_only and "pJ" not in counts_only


def test_rate_tiny_network_hand_counts():
    prog = rate_program()
    result = run_program(prog, IMAGE)
    # conv1 currents (computed once, bit-serially): ch0 6 everywhere, ch1 [[3, 0], [1, 2]].
    # ch0 (Theta 8, V0 4): v 10 -> spike, 8 -> spike, 6 -> none: 2 spikes per pixel, steps 1-2.
    # ch1 (Theta 2, V0 1): pixel 3: 3 spikes; 0: none; 1: steps 1, 3; 2: 3 spikes. 16 in all.
    s = result.spikes[0][0]
    assert s[:, 0].sum(dim=(1, 2)).tolist() == [4, 4, 0]
    assert s[:, 1].sum(dim=(1, 2)).tolist() == [3, 2, 3]
    # pool1 counts per step: ch0 4, 4, 0; ch1 3, 2, 3 (5 nonzero entries, 16 spikes)
    assert result.spikes[1][0].flatten(1).tolist() == [[4, 3], [4, 2], [0, 3]]
    # logits: sum over steps of (c0 + 2 c1) and (3 c0 - c1 + 5): [24, 31]
    assert result.logits[0].tolist() == [24, 31]
    rep = count_ops(prog, result, lanes=8)
    assert rep.acc_bits <= 8 and rep.op_width == 8
    # conv1: the current over the bit planes as in bit-serial mode (32 accumulates, 8 shifts);
    # bias adds: current + B once (8) then once per neuron per step (8 x 3); one compare per
    # neuron per step; a subtract and an event write per spike; params B, Theta, V0.
    check(ops_of(rep, "conv1"), {
        "accumulate": 32, "pool_add": 0, "shift": 8, "bias_add": 32, "compare": 24,
        "subtract": 16, "threshold_shift": 0, "weight_read_words": 32,
        "event_read_words": 16, "event_write_words": 16, "param_read_words": 24})
    # pool1: one add per input spike; one entry (index + count) per nonzero count
    check(ops_of(rep, "pool1"), {
        "accumulate": 0, "pool_add": 16, "shift": 0, "bias_add": 0, "compare": 0,
        "subtract": 0, "threshold_shift": 0, "weight_read_words": 0, "event_read_words": 16,
        "event_write_words": 5, "param_read_words": 0})
    # out1: 5 events (counts 4, 3, 4, 2, 3 = 16 spikes) x 2 outputs: 10 weight words, 32 adds
    # (a count c is c adds of one word); B added in each of the 3 steps; argmax 1 compare.
    check(ops_of(rep, "out1"), {
        "accumulate": 32, "pool_add": 0, "shift": 0, "bias_add": 6, "compare": 1,
        "subtract": 0, "threshold_shift": 0, "weight_read_words": 10, "event_read_words": 5,
        "event_write_words": 0, "param_read_words": 2})
    conv1, pool1, out1 = rep.layers
    # pooled entries carry a 3-bit count next to the 1-bit index
    assert pool1.memory_bits["event_write"] == 5 * (1 + 3)
    assert out1.memory_bits["event_read"] == 5 * (1 + 3)
    assert rep.totals.ops["accumulate"] == 64 and rep.totals.ops["bias_add"] == 38
    assert rep.totals.memory_words["event_read"] == 37


def test_srp_masks_gate_neurons_and_output_skips_probe():
    # ch1 with B = -1 and V0 = 0: pixel 0 ends the probe step at v = -1 and is masked.
    prog = rate_program(method="srp", tau=1, t_steps=2, bias1=-1, v_init1=0)
    result = run_program(prog, IMAGE)
    keep = result.srp_masks[0][0]
    assert keep.sum() == 7 and not keep[1, 0, 1]
    # ch0: a spike every step (12); ch1: pixel 3 every step, pixel 2 in step 3 (4)
    assert int(result.spikes[0].sum()) == 16
    assert result.spikes[1][0].flatten(1).tolist() == [[4, 1], [4, 1], [4, 2]]
    assert result.logits[0].tolist() == [14, 31]
    rep = count_ops(prog, result, lanes=8)
    # conv1: active neuron-steps = 8 (probe) + 7 kept x 2 = 22; bias adds 8 + 22; compares
    # 22 + 8 sign checks at tau; the current itself is unmasked (computed before the probe)
    check(ops_of(rep, "conv1"), {"accumulate": 32, "shift": 8, "bias_add": 30,
                                 "compare": 30, "subtract": 16, "event_write_words": 16})
    check(ops_of(rep, "pool1"), {"pool_add": 16, "event_write_words": 6})
    # out1 walks only the last t_steps = 2 steps: counts 4, 1, 4, 2 -> 4 events, 11 spikes
    check(ops_of(rep, "out1"), {"accumulate": 22, "weight_read_words": 8, "bias_add": 4,
                                "event_read_words": 4, "compare": 1})
    assert rep.layers[2].input_events == 11


@pytest.mark.parametrize("y,x,fan_out", [(0, 0, 4), (0, 1, 6), (1, 0, 6), (1, 1, 9),
                                         (3, 3, 4), (2, 3, 6), (3, 1, 6), (2, 2, 9)])
def test_conv_fan_out_counts_borders_exactly(y, x, fan_out):
    """One input pixel of level 1 on a 4x4 map feeds fan_out output pixels x C_out channels."""
    c_out = 3
    w = np.ones((c_out, 1, 3, 3), dtype=np.int64)
    layers = [
        Layer("conv1", "conv3x3", (1, 4, 4), (c_out, 4, 4), 1, 1, 1, True, weights=w,
              bias=np.zeros(c_out, dtype=np.int64), threshold=np.ones(c_out, dtype=np.int64)),
        Layer("out1", "dense", (c_out, 4, 4), (2,), 1, 0, 0, False,
              weights=np.ones((2, c_out * 16), dtype=np.int64), bias=ints(0, 0)),
    ]
    prog = Program("bitserial", InputSpec((1, 4, 4), 1, 1), layers, 8, t_steps=1)
    prog.validate()
    image = torch.zeros(1, 1, 4, 4, dtype=torch.int64)
    image[0, 0, y, x] = 1
    rep = count_ops(prog, run_program(prog, image), lanes=2)
    conv = rep.layers[0]
    assert conv.ops["accumulate"] == c_out * fan_out
    assert conv.memory_words["event_read"] == 2 * fan_out  # ceil(3 / 2) groups per pixel
    # every output it reaches fires a 1 (u0 = 1 = D): the dense layer sees them all
    assert conv.output_events == c_out * fan_out
    assert rep.layers[1].ops["accumulate"] == 2 * c_out * fan_out


def test_counts_are_averaged_over_images():
    prog = bitserial_program()
    zero = torch.zeros_like(IMAGE)
    both = count_ops(prog, run_program(prog, torch.cat([IMAGE, zero])))
    one = count_ops(prog, run_program(prog, IMAGE))
    assert both.images == 2
    # an all-zero image still pays the data-independent work (shifts, compares, bias adds)
    assert both.layers[0].ops["accumulate"] == one.layers[0].ops["accumulate"] / 2
    assert both.layers[0].ops["shift"] == one.layers[0].ops["shift"]


def test_accumulator_width_selects_32_bit_costs():
    prog = bitserial_program()
    assert count_ops(prog, run_program(prog, IMAGE)).op_width == 8
    prog.layers[2].bias = ints(0, 5000)  # the output layer now needs a 14-bit accumulator
    rep = count_ops(prog, run_program(prog, IMAGE))
    assert rep.acc_bits > 8 and rep.op_width == 32
    e = energy(rep)
    assert e.costs["accumulate"] == "add_32" and e.costs["compare"] == "compare_32"
    assert e.layers[0].pj["accumulate"] == pytest.approx(32 * 0.1)


# ---------------------------------------------------------------------------------------------
# real Programs: (b) totals = sum of layers, (c) energy = counts x table, speed


@pytest.fixture(scope="module")
def real_programs(quick_checkpoint, digits):
    from bitspike.sw.checkpoint import load_checkpoint
    from bitspike.sw.convert import convert_model
    from bitspike.sw.rate import convert_rate

    model, meta = load_checkpoint(quick_checkpoint)
    bitserial = convert_model(model, input_shape=(1, 8, 8), normalization=meta.normalization)
    rate, _ = convert_rate(model, method="srp", steps=4, tau=2, input_shape=(1, 8, 8),
                           normalization=meta.normalization)
    x = digits.x_test
    return {"bitserial": (bitserial, run_program(bitserial, x)),
            "srp": (rate, run_program(rate, x))}


@pytest.mark.parametrize("which", ["bitserial", "srp"])
def test_totals_are_the_sum_of_layers(real_programs, which):
    prog, result = real_programs[which]
    rep = count_ops(prog, result)
    assert rep.images == 360 and len(rep.layers) == len(prog.layers)
    tot = rep.totals
    for k in COMPUTE_KINDS:
        assert tot.ops[k] == pytest.approx(sum(r.ops[k] for r in rep.layers))
    for k in MEMORY_KINDS:
        assert tot.memory_words[k] == pytest.approx(sum(r.memory_words[k] for r in rep.layers))
        assert tot.memory_bits[k] == pytest.approx(sum(r.memory_bits[k] for r in rep.layers))
    assert tot.ann_macs == sum(r.ann_macs for r in rep.layers)
    # digits-cnn: conv 16*64*1*9 + 32*64*16*9 + 32*16*32*9, dense 128*10
    assert tot.ann_macs == 9216 + 294912 + 147456 + 1280
    e = energy(rep)
    t = e.totals
    assert t.total_pj == pytest.approx(sum(r.total_pj for r in e.layers))
    assert t.ann_fp32_pj == pytest.approx(sum(r.ann_fp32_pj for r in e.layers))
    d = e.to_dict()
    assert d["comparison"]["snn_total_pj"] == pytest.approx(t.total_pj)
    json.dumps(d)  # JSON-ready


@pytest.mark.parametrize("which", ["bitserial", "srp"])
def test_counts_match_golden_spikes(real_programs, which):
    prog, result = real_programs[which]
    rep = count_ops(prog, result)
    n = 360
    for i, (lay, row) in enumerate(zip(prog.layers, rep.layers, strict=True)):
        if lay.fires and lay.kind != "sumpool2x2":
            assert row.ops["subtract"] == pytest.approx(float(result.spikes[i].sum()) / n)
        if lay.kind == "dense" and i == len(prog.layers) - 1 and prog.mode == "bitserial":
            # a dense layer: every input bit reaches every output
            bits = float(result.spikes[i - 1].sum()) / n
            assert row.ops["accumulate"] == pytest.approx(bits * lay.out_shape[0])
    if prog.mode == "bitserial":
        # Horner: one shift per neuron per input step after the first
        assert rep.layers[1].ops["shift"] == 32 * 64 * (prog.layers[1].t_in - 1)


def test_energy_is_counts_times_table(real_programs, tmp_path):
    prog, result = real_programs["bitserial"]
    rep = count_ops(prog, result)
    costs = {op: 0.01 * (i + 1) for i, op in enumerate(EnergyTable.operations())}
    path = tmp_path / "t.json"
    path.write_text(json.dumps(costs))
    table = EnergyTable.load(path)
    e = energy(rep, table)
    w = rep.op_width
    assert w == 32
    op_for = {"accumulate": "add", "pool_add": "add", "shift": "shift", "bias_add": "add",
              "compare": "compare", "subtract": "add", "threshold_shift": "shift"}
    for r, le in zip(rep.layers, e.layers, strict=True):
        for k, op in op_for.items():
            assert le.pj[k] == pytest.approx(r.ops[k] * costs[f"{op}_{w}"])
        for k in ("weight_read", "event_read", "param_read"):
            assert le.pj[k] == pytest.approx(r.memory_bits[k] * costs["sram_read_bit"])
        assert le.pj["event_write"] == pytest.approx(r.memory_bits["event_write"]
                                                     * costs["sram_write_bit"])
        assert le.ann_fp32_pj == pytest.approx(r.ann_macs * costs["fp32_mac"]
                                               + r.ann_adds * costs["fp32_add"])
        assert le.ann_int8_pj == pytest.approx(r.ann_macs * (costs["mult_8"] + costs["add_8"])
                                               + r.ann_adds * costs["add_8"])
    c = e.comparison()
    assert c["ann_fp32_over_snn_compute"] == pytest.approx(c["ann_fp32_pj"] / c["snn_compute_pj"])
    text = format_table(e)
    assert "conv1" in text and "total" in text and str(path) in text
    assert "ANN" in text and "pJ" in text


def test_default_table_is_the_design_notes():
    t = EnergyTable()
    expected = {"add_32": 0.1, "add_8": 0.03, "mult_32": 3.1, "mult_8": 0.2, "shift_32": 0.13,
                "shift_8": 0.024, "compare_32": 0.08, "compare_8": 0.03, "fp32_mac": 4.6}
    for op, pj in expected.items():
        assert t.cost(op) == pj
        assert "Table 6" in getattr(t, op).source or "Horowitz" in getattr(t, op).source
    assert t.cost("sram_read_bit") == pytest.approx(10 / 64)
    d = t.to_dict()
    assert set(d) == {"format_version", "name", *EnergyTable.operations()}
    assert all(d[op]["source"] for op in EnergyTable.operations())
    # to_dict is a complete table file
    assert EnergyTable.from_mapping(json.loads(json.dumps(d)), "copy.json") == t


def test_counting_360_images_is_fast(real_programs):
    for prog, result in real_programs.values():
        best = math.inf
        for _ in range(3):
            t0 = time.perf_counter()
            count_ops(prog, result)
            best = min(best, time.perf_counter() - t0)
        assert best < 1.0, f"counting took {best:.2f} s"


# ---------------------------------------------------------------------------------------------
# (d) energy tables from files


def test_table_toml_extends_default(tmp_path):
    path = tmp_path / "fpga.toml"
    path.write_text('extends = "default"\nname = "my FPGA"\nadd_32 = 0.05\n'
                    '[sram_read_bit]\npj = 0.02\nsource = "vendor BRAM datasheet"\n')
    t = EnergyTable.load(path)
    assert t.name == "my FPGA"
    assert t.cost("add_32") == 0.05 and str(path) in t.add_32.source
    assert t.sram_read_bit.source == "vendor BRAM datasheet" and t.cost("sram_read_bit") == 0.02
    assert t.cost("mult_8") == 0.2 and "Horowitz" in t.mult_8.source


def test_table_complete_json(tmp_path):
    path = tmp_path / "all.json"
    path.write_text(json.dumps({op: 1 for op in EnergyTable.operations()}))
    t = EnergyTable.load(path)
    assert all(t.cost(op) == 1.0 for op in EnergyTable.operations())


@pytest.mark.parametrize("name,text,message", [
    ("missing.toml", "add_32 = 0.1\n", "does not define .*add_8.*extends = \"default\""),
    ("unknown.toml", 'extends = "default"\nadd_16 = 0.05\n', "unknown operation 'add_16'"),
    ("negative.toml", 'extends = "default"\nadd_32 = -0.1\n', "add_32 = -0.1.*>= 0"),
    ("text.toml", 'extends = "default"\nadd_32 = "cheap"\n', "add_32 = 'cheap' is not a number"),
    ("bool.json", '{"extends": "default", "add_32": true}', "add_32 = True is not a number"),
    ("nan.json", '{"extends": "default", "add_32": NaN}', "add_32 = nan"),
    ("nopj.toml", 'extends = "default"\n[add_32]\nsource = "x"\n', "add_32 must be a number or"),
    ("broken.toml", "add_32 = = 1\n", "malformed TOML"),
    ("broken.json", '{"add_32": 0.1', "malformed JSON"),
    ("list.json", "[1, 2]", "must be a table/object"),
    ("base.toml", 'extends = "fpga"\n', "only table to extend"),
    ("version.json", '{"format_version": 2}', "format_version 2 is not supported"),
    ("table.yaml", "add_32: 1\n", "must be a .toml or .json"),
])
def test_bad_tables_are_clear_errors(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(BitspikeError, match=message) as info:
        EnergyTable.load(path)
    assert str(path) in str(info.value)


def test_missing_table_file(tmp_path):
    with pytest.raises(BitspikeError, match="not found"):
        EnergyTable.load(tmp_path / "nope.toml")


# ---------------------------------------------------------------------------------------------
# (e) the command, on a real digits bundle


@pytest.fixture(scope="module")
def digits_bundle(quick_checkpoint, tmp_path_factory):
    from bitspike.sw.cli import main as cli_main

    out = tmp_path_factory.mktemp("energy") / "prog"
    assert cli_main(["convert", str(quick_checkpoint), "--out", str(out)]) == 0
    return out


def parse(*argv):
    parser = argparse.ArgumentParser(prog="bitspike")
    add_energy_command(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["energy", *map(str, argv)])


def test_energy_command_json_and_plot(digits_bundle, tmp_path, capsys):
    capsys.readouterr()
    png = tmp_path / "energy.png"
    args = parse(digits_bundle, "--json", "--plot", png, "--images", 40)
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out["plot"] == str(png) and out["counts"]["images"] == 40
    names = [r["name"] for r in out["layers"]]
    assert names == ["conv1", "conv2", "pool1", "conv3", "pool2", "out1"]
    assert all("accumulate" in r["pj"] and r["total_pj"] > 0 for r in out["layers"])
    assert [r["name"] for r in out["counts"]["layers"]] == names
    assert out["comparison"]["ann_fp32_pj"] > out["comparison"]["snn_compute_pj"] > 0
    assert out["table"]["add_32"]["source"]


def test_energy_command_text_and_table(digits_bundle, tmp_path, capsys):
    table = tmp_path / "t.toml"
    table.write_text('extends = "default"\nname = "half adds"\nadd_32 = 0.05\n')
    capsys.readouterr()
    args = parse(digits_bundle, "--images", 20, "--table", table, "--lanes", 4)
    assert args.func(args) == 0
    text = capsys.readouterr().out
    assert "operations per inference" in text and "energy per inference, pJ" in text
    assert "half adds" in text and "add_32 = 0.05 pJ" in text and "P = 4 lanes" in text
    assert "20 images" in text


@pytest.mark.parametrize("argv,message", [
    (["--images", "0"], "--images must be at least 1"),
    (["--table", "nope.toml"], "not found"),
])
def test_energy_command_errors(digits_bundle, capsys, argv, message):
    rc = main([str(digits_bundle), *argv])
    err = capsys.readouterr().err
    assert rc == 1 and message in err and "Traceback" not in err


def test_energy_command_missing_bundle(tmp_path, capsys):
    rc = main([str(tmp_path / "nothing")])
    assert rc == 1 and "bitspike energy: error:" in capsys.readouterr().err


def test_plot_unwritable_path(tmp_path):
    prog = bitserial_program()
    e = energy(count_ops(prog, run_program(prog, IMAGE)))
    with pytest.raises(BitspikeError, match="cannot write the plot"):
        plot_energy(e, tmp_path / "no" / "such" / "dir" / "e.png")
    assert plot_energy(e, tmp_path / "ok.png").is_file()
