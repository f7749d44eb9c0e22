"""The simulator benchmark runs on all three simulators (a tiny Program, one image each) and
reports consistent figures with no mismatch."""

import json
import sys
from pathlib import Path

import pytest

from bitspike.sw.images import write_bundle

from .programs import dense_chain

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


@pytest.mark.rtl
def test_bench_sim_tiny_program(tmp_path):
    import bench_sim

    prog = tmp_path / "prog"
    write_bundle(dense_chain(t_in=3, t_hidden=3, bias=4, seed=1), prog)
    out = tmp_path / "sim.json"
    result = bench_sim.main(["--program", str(prog), "--lanes", "4", "--verilator-images", "2",
                             "--icarus-images", "1", "--amaranth-images", "1",
                             "--build-root", str(tmp_path / "build"), "--json", str(out)])
    assert json.loads(out.read_text())["mismatches"] == result["mismatches"] == 0
    rows = result["simulators"]
    assert list(rows) == ["verilator", "icarus", "amaranth.sim"]
    for name, images in (("verilator", 2), ("icarus", 1), ("amaranth.sim", 1)):
        r = rows[name]
        assert r["images"] == images and r["mismatches"] == 0, r
        assert r["simulated_cycles"] >= r["engine_cycles"] > 0
        assert r["sim_seconds"] > 0 and r["build_seconds"] > 0
        assert r["cycles_per_second"] == pytest.approx(r["simulated_cycles"] / r["sim_seconds"])
        assert r["images_per_second"] == pytest.approx(images / r["sim_seconds"])
    assert not rows["verilator"]["build_reused"]  # a fresh build root
    # one image's engine cycles are the same on every simulator
    assert rows["icarus"]["engine_cycles"] == rows["amaranth.sim"]["engine_cycles"]
    ratios = result["ratios"]
    assert set(ratios) == {"verilator/icarus", "verilator/amaranth.sim",
                           "icarus/amaranth.sim"}
    assert ratios["verilator/icarus"]["cycles_per_second"] == pytest.approx(
        rows["verilator"]["cycles_per_second"] / rows["icarus"]["cycles_per_second"])
    target = result["target"]
    assert target["met"] == (target["cycles_per_second"] >= 1_000_000)
    assert "verilator/amaranth.sim" in result["table"] and "target:" in result["table"]
