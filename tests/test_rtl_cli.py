"""`bitspike rtl`: Verilog, config and cycle estimate for a Program the engine runs."""

import json

from bitspike.sw.cli import main


def test_rtl_writes_verilog_and_estimates_cycles(tmp_path, capsys):
    ckpt, prog, out = tmp_path / "m.pt", tmp_path / "prog", tmp_path / "rtl"
    assert main(["train", "--arch", "digits-mlp", "--epochs", "2", "--quiet", "--out",
                 str(ckpt)]) == 0
    assert main(["convert", str(ckpt), "--out", str(prog)]) == 0
    capsys.readouterr()
    assert main(["rtl", str(prog), "--lanes", "4", "--out", str(out), "--images", "20",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    text = (out / "bitspike_engine.v").read_text()
    assert "module bitspike_engine" in text and "o_result__payload" in text
    assert json.loads((out / "engine_config.json").read_text())["lanes"] == 4
    cycles = result["cycles"]
    assert cycles["images"] == 20 and cycles["min"] <= cycles["mean"] <= cycles["max"]
    assert cycles["mean"] > cycles["lower_bound_mean"] > 0


def test_rtl_refuses_what_the_engine_cannot_run(tmp_path, capsys, quick_checkpoint):
    prog = tmp_path / "prog"
    assert main(["convert", str(quick_checkpoint), "--method", "qcfs", "--steps", "2",
                 "--out", str(prog)]) == 0
    capsys.readouterr()
    assert main(["rtl", str(prog), "--out", str(tmp_path / "rtl")]) == 1
    assert "rate datapath is not built" in capsys.readouterr().err
