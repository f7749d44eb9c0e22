"""The command line: results as text or one JSON object; errors on stderr with exit code 1."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bitspike.sw.cli import main

BIN = Path(sys.executable).parent


def run_cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_train_convert_eval_flow(tmp_path, capsys):
    ckpt = tmp_path / "m.pt"
    rc, out, _ = run_cli(capsys, "train", "--arch", "digits-mlp", "--levels", "7", "--epochs",
                         "3", "--out", ckpt, "--quiet", "--json")
    assert rc == 0
    trained = json.loads(out)
    assert trained["arch"] == "digits-mlp" and trained["levels"] == 7
    assert trained["dataset"] == "digits" and trained["normalization"]["max_level"] == 16
    assert 0.5 < trained["metrics"]["test_accuracy"] <= 1.0

    prog = tmp_path / "prog"
    rc, out, _ = run_cli(capsys, "convert", ckpt, "--out", prog, "--json")
    assert rc == 0
    converted = json.loads(out)
    assert converted["program"]["layers"][0]["t_out"] == 3  # L = 7 -> T = 3
    assert (prog / "manifest.json").is_file() and (prog / "weights.hex").is_file()

    rc, out, _ = run_cli(capsys, "eval", ckpt, "--json")
    assert rc == 0
    from_ckpt = json.loads(out)
    assert from_ckpt["images"] == 360 and from_ckpt["float_accuracy"] is not None
    assert [m["name"] for m in from_ckpt["layers"]] == ["fc1", "fc2"]
    assert all(0.0 <= m["mismatched"] <= 1.0 for m in from_ckpt["layers"])

    rc, out, _ = run_cli(capsys, "eval", prog, "--json")
    from_prog = json.loads(out)
    assert rc == 0 and from_prog["int_accuracy"] == from_ckpt["int_accuracy"]

    rc, out, _ = run_cli(capsys, "eval", ckpt, "--backend", "float")
    assert rc == 0 and "float ANN accuracy" in out and "per-layer mismatch (levels" in out

    rc, out, _ = run_cli(capsys, "convert", ckpt, "--out", tmp_path / "p2")
    assert rc == 0 and "fc1" in out and "wrote" in out


@pytest.mark.parametrize("argv,message", [
    (["convert", "missing.pt", "--out", "x"], "not found"),
    (["eval", "missing.pt"], "not found"),
    (["train", "--dataset", "mnist", "--out", "m.pt", "--epochs", "1"], "unknown dataset"),
    (["train", "--epochs", "0", "--out", "m.pt"], "epochs must be a positive integer"),
    (["train", "--arch", "vgg-small", "--out", "m.pt"], "expects inputs (3, 32, 32)"),
])
def test_errors_go_to_stderr_with_exit_code_1(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 1 and out == ""
    assert message in err and err.startswith("bitspike ")


def test_eval_float_of_a_bundle_is_refused(tmp_path, capsys, quick_checkpoint):
    prog = tmp_path / "prog"
    assert run_cli(capsys, "convert", quick_checkpoint, "--out", prog)[0] == 0
    rc, out, err = run_cli(capsys, "eval", prog, "--backend", "float")
    assert rc == 1 and "holds only integers" in err


def test_convert_width_error(tmp_path, capsys, quick_checkpoint):
    rc, _, err = run_cli(capsys, "convert", quick_checkpoint, "--out", tmp_path / "p",
                         "--acc-bits", "10")
    assert rc == 1 and "--acc-bits" in err


def test_demo_trains_then_reuses_its_model(tmp_path, capsys):
    rc, out, _ = run_cli(capsys, "demo", "--out", tmp_path / "demo", "--json")
    assert rc == 0
    first = json.loads(out)
    assert first["trained"] is True and first["float_accuracy"] >= 0.97
    assert abs(first["float_accuracy"] - first["int_accuracy"]) <= 0.01
    engine = first["engine"]  # one image through the RTL: exact logits and cycles
    assert engine["logits_equal"] and engine["klass"] == engine["golden_klass"]
    assert engine["cycles"] == engine["model_cycles"]
    verilated = first["verilator"]  # a few images through the Verilog under Verilator
    assert verilated["images"] == 5 and verilated["mismatches"] == 0
    assert verilated["accuracy"] == verilated["golden_accuracy"]
    rc, out, _ = run_cli(capsys, "demo", "--out", tmp_path / "demo")
    assert rc == 0 and "cached" in out and "integer SNN" in out
    assert "Verilator (cocotb), P = 8, 5 test images: 0 mismatches" in out


def test_console_script_from_another_directory(tmp_path):
    exe = BIN / "bitspike"
    env = {**os.environ, "PYTHONPATH": ""}
    r = subprocess.run([exe, "--help"], cwd=tmp_path, capture_output=True, text=True, env=env,
                       timeout=60)
    assert r.returncode == 0
    for command in ("train", "convert", "eval", "demo", "doctor"):
        assert command in r.stdout
    r = subprocess.run([exe, "convert", "--help"], cwd=tmp_path, capture_output=True, text=True,
                       env=env, timeout=60)
    assert "--weight-bits" in r.stdout and "--json" in r.stdout
    r = subprocess.run([exe, "eval", "nothing.pt"], cwd=tmp_path, capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 1 and "not found" in r.stderr and r.stdout == ""


def test_cli_reference_lists_every_option():
    from bitspike.sw.cli import build_parser

    doc = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, sp in sub.choices.items():
        assert f"## bitspike {name}" in doc, name
        for action in sp._actions:
            for opt in action.option_strings:
                assert opt in doc, f"docs/cli.md lacks {name} {opt}"
