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


def test_rtl_simulates_test_images_with_a_waveform(tmp_path, capsys):
    """--simulate runs images through the RTL and checks them; --vcd writes the waveform."""
    ckpt, prog, out = tmp_path / "m.pt", tmp_path / "prog", tmp_path / "rtl"
    assert main(["train", "--arch", "digits-mlp", "--epochs", "1", "--quiet", "--out",
                 str(ckpt)]) == 0
    assert main(["convert", str(ckpt), "--method", "srp", "--steps", "3", "--tau", "1",
                 "--out", str(prog)]) == 0
    capsys.readouterr()
    vcd = tmp_path / "engine.vcd"
    assert main(["rtl", str(prog), "--lanes", "16", "--out", str(out), "--images", "4",
                 "--simulate", "2", "--vcd", str(vcd)]) == 0
    text = capsys.readouterr()
    assert "logits equal on 2, classes equal on 2, cycles equal to the cycle model on 2" in \
        text.out
    assert "simulated image 2/2" in text.err
    assert vcd.stat().st_size > 0 and "$timescale" in vcd.read_text()[:2000]


def test_rtl_runs_rate_programs_too(tmp_path, capsys, quick_checkpoint):
    prog = tmp_path / "prog"
    assert main(["convert", str(quick_checkpoint), "--method", "srp", "--steps", "2",
                 "--tau", "1", "--out", str(prog)]) == 0
    capsys.readouterr()
    assert main(["rtl", str(prog), "--lanes", "16", "--out", str(tmp_path / "rtl"),
                 "--images", "5", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["config"]["modes"] == ["rate"]
    assert result["cycles"]["mean"] >= result["cycles"]["lower_bound_mean"] > 0
    assert "module bitspike_engine" in (tmp_path / "rtl" / "bitspike_engine.v").read_text()


def test_rtl_refuses_what_the_engine_cannot_run(tmp_path, capsys):
    import numpy as np

    from bitspike.sw.program import InputSpec, Layer, Program
    layers = [Layer("pool0", "sumpool2x2", (1, 4, 4), (1, 2, 2), 1, 3, 4, True),
              Layer("out", "dense", (1, 2, 2), (2,), 3, 0, 0, False,
                    weights=np.ones((2, 4), int), bias=np.zeros(2, int))]
    program = Program("bitserial", InputSpec((1, 4, 4), 1, 1), layers, 3, t_steps=0)
    program.save(tmp_path / "prog")
    assert main(["rtl", str(tmp_path / "prog"), "--out", str(tmp_path / "rtl")]) == 1
    err = capsys.readouterr().err
    assert "layer 0 (pool0)" in err and "fuses 2x2 sum pooling" in err
