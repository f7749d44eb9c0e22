"""The engine benchmark runs (bounded) and its RTL check agrees with the cycle model."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


@pytest.mark.slow
def test_bench_engine_quick(tmp_path):
    import bench_engine

    result = bench_engine.main(["--lanes", "4,16", "--rtl-images", "1", "--rtl-min-lanes", "4",
                                "--archs", "digits-mlp", "--images", "10",
                                "--json", str(tmp_path / "e.json")])
    rows = result["rows"]
    assert [r["lanes"] for r in rows] == [4, 16]
    for r in rows:
        assert r["cycles_mean"] > r["lower_bound_mean"] > 0
        assert r["rtl"].startswith("equal")
    assert rows[1]["cycles_mean"] < rows[0]["cycles_mean"]  # more lanes, fewer cycles
    assert (tmp_path / "e.json").stat().st_size > 0
