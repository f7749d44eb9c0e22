"""The typed layer plan (bitspike.sw.plan): torch-free, numbered once, every field in its bound."""

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitspike.hw.config import EngineConfig
from bitspike.sw.convert import convert_model
from bitspike.sw.data import Normalization
from bitspike.sw.errors import ProgramError
from bitspike.sw.images import decode_hex, memory_specs, read_bundle, write_bundle
from bitspike.sw.models import build_model
from bitspike.sw.plan import LayerKind, LayerRow, NeuronMode, PlanError, layer_plan
from bitspike.sw.program import LAYER_KINDS, NEURON_MODES
from bitspike.sw.rate import convert_rate

from .programs import (
    conv_pool_program,
    dense_chain,
    random_conv_program,
    random_dense_program,
    random_rate_program,
)

ROOT = Path(__file__).resolve().parents[1]
NORM = Normalization(16, (0.0,), (0.4,))
LANES = (1, 3, 8, 32)


@pytest.fixture(scope="module")
def digits_programs():
    torch.manual_seed(0)
    cnn = convert_model(build_model("digits-cnn", levels=15).eval(), input_shape=(1, 8, 8),
                        normalization=NORM)
    mlp = convert_model(build_model("digits-mlp", levels=15).eval(), input_shape=(1, 8, 8),
                        normalization=NORM)
    rate, _ = convert_rate(build_model("digits-cnn", levels=15).eval(), method="qcfs", steps=4,
                           input_shape=(1, 8, 8), normalization=NORM)
    return {"digits-cnn": cnn, "digits-mlp": mlp, "rate-qcfs": rate}


# ---------------------------------------------------------------------------------------------
# the contract imports numpy only


def test_hardware_side_imports_without_torch():
    code = ("import bitspike.hw, bitspike.hw.engine, bitspike.hw.config, bitspike.sw.plan, sys; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------------------------------------
# numbering


def test_kind_and_mode_names_are_the_programs():
    assert [k.program_name for k in LayerKind] == list(LAYER_KINDS)
    assert [m.program_name for m in NeuronMode] == list(NEURON_MODES)
    for kind in LAYER_KINDS:
        assert LayerKind.from_program(kind).program_name == kind
    for mode in NEURON_MODES:
        assert NeuronMode.from_program(mode).program_name == mode
    for bad in ("CONV3X3", "Dense", "pool", "", None):
        with pytest.raises(ProgramError, match="unknown layer kind"):
            LayerKind.from_program(bad)
    for bad in ("RATE", "bit-serial", None):
        with pytest.raises(ProgramError, match="unknown neuron mode"):
            NeuronMode.from_program(bad)


def test_kind_codes_round_trip_through_a_bundle(tmp_path):
    """The bundle's descriptor word 0 is LayerKind (docs/memory-images.md, section 5), and
    reading the codes back gives the Program's kinds."""
    program = conv_pool_program()  # conv3x3, sumpool2x2, dense
    manifest = write_bundle(program, tmp_path / "b")
    entry = manifest["memories"]["layers"]
    words = decode_hex((tmp_path / "b" / entry["files"]["hex"]).read_text(),
                       memory_specs(program)["layers"], filename="layers.hex")
    codes = words.reshape(len(program.layers), -1)[:, 0].tolist()
    assert codes == [LayerKind.from_program(lay.kind) for lay in program.layers]
    assert [LayerKind(c).program_name for c in codes] == [lay.kind for lay in program.layers]
    assert codes == [0, 2, 1]  # the bundle format's numbers: changing them is a new version
    back = read_bundle(tmp_path / "b")
    assert [lay.kind for lay in back.layers] == [lay.kind for lay in program.layers]
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["layers"][1]["kind"] == (
        "sumpool2x2")


def test_the_numbering_is_assigned_only_in_plan():
    """No .py file outside sw/plan.py assigns a number to a layer kind (a ``CONV3X3``,
    ``DENSE`` or ``KIND_*`` name set to a number, a kind string mapped to a number or a number to
    a kind string). tests/test_bundle_spec.py is the exception on purpose: its reader is written
    from docs/memory-images.md alone and must not import bitspike's numbering."""
    names = r"(?:CONV3X3|DENSE|SUMPOOL2X2|KIND_[A-Z0-9_]+)"
    kinds = r"(?:conv3x3|dense|sumpool2x2)"
    patterns = [re.compile(rf"\b{names}\b(?:\s*,\s*\w+)*\s*(?<![=!<>])=(?!=)\s*\(?\d"),
                re.compile(rf"[\"']{kinds}[\"']\s*:\s*\d"),
                re.compile(rf"\b\d+\s*:\s*[\"']{kinds}[\"']")]
    allowed = {"sw/plan.py", "tests/test_bundle_spec.py"}
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard",
                             "*.py"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.split()
    assert "sw/plan.py" in listed
    hits = [f"{path}:{n}: {line.strip()}" for path in listed if path not in allowed
            if (ROOT / path).exists()
            for n, line in enumerate((ROOT / path).read_text().splitlines(), 1)
            if any(p.search(line) for p in patterns)]
    assert hits == []
    plan = (ROOT / "sw/plan.py").read_text()
    assert all(len(re.findall(rf"^\s*{n} = \d+$", plan, re.M)) == 1
               for n in ("CONV3X3", "DENSE", "SUMPOOL2X2"))


# ---------------------------------------------------------------------------------------------
# the typed row


def test_row_is_frozen_keyword_only_and_typed():
    row = layer_plan(dense_chain(2, 3, 1, 0), 4)[0]
    assert isinstance(row.kind, LayerKind) and row.kind is LayerKind.DENSE
    assert row.mode is NeuronMode.BITSERIAL and row.rate == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        row.c_out = 3
    with pytest.raises(TypeError):
        LayerRow(*row.as_dict().values())
    assert LayerRow(**row.as_dict()) == row
    with pytest.raises(ValueError, match="LayerRow.groups must be a non-negative integer"):
        dataclasses.replace(row, groups=-1)
    d = row.as_dict()
    assert list(d) == list(LayerRow.field_names()) and len(d) == 40
    assert all(type(v) is int for v in d.values())


def test_every_field_declares_its_bound(digits_programs):
    cfg = EngineConfig.for_program(digits_programs["digits-cnn"], lanes=8)
    assert all("bound" in f.metadata for f in dataclasses.fields(LayerRow))
    assert list(LayerRow.bounds(cfg)) == list(LayerRow.field_names())
    assert cfg.layer_table_limits() == LayerRow.bounds(cfg)
    widths = LayerRow.widths(cfg)
    assert cfg.cost()["layers"] == cfg.layer_depth * sum(widths.values())


def test_rate_rows(digits_programs):
    rows = layer_plan(digits_programs["rate-qcfs"], 8)
    assert all(r.mode is NeuronMode.RATE and r.rate == 1 for r in rows)
    assert [r.analog for r in rows] == [1] + [0] * (len(rows) - 1)


def _check_within_bounds(program):
    for lanes in LANES:
        try:
            plan = layer_plan(program, lanes)
        except PlanError:
            return
        bounds = LayerRow.bounds(EngineConfig.for_program(program, lanes=lanes))
        for row in plan:
            for key, value in row.as_dict().items():
                assert 0 <= value <= bounds[key], (program.layers[row.index].name, key, value,
                                                   bounds[key], lanes)


@pytest.mark.parametrize("name", ["digits-cnn", "digits-mlp", "rate-qcfs"])
def test_digits_plans_within_bounds(digits_programs, name):
    _check_within_bounds(digits_programs[name])


def test_fixed_plans_within_bounds():
    _check_within_bounds(conv_pool_program())
    _check_within_bounds(dense_chain(3, 4, -2, 1))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_plans_within_bounds(data):
    build = data.draw(st.sampled_from([random_dense_program, random_conv_program,
                                       random_rate_program]))
    _check_within_bounds(data.draw(st.composite(lambda draw: build(draw))()))
