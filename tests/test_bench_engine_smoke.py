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


@pytest.mark.slow
def test_bench_engine_compares_modes_on_one_engine(tmp_path):
    """Part 2 (bounded): bit-serial against qcfs at the T reaching its accuracy, same engine."""
    import bench_engine

    result = bench_engine.main(["--lanes", "32", "--rtl-images", "0", "--archs", "digits-cnn",
                                "--images", "3", "--epochs", "2", "--rate-steps", "2,4,8"])
    comp = result["bitserial_vs_rate"]
    assert set(comp["qcfs_accuracy"]) == {2, 4, 8}
    chosen = comp["qcfs_steps"]
    reached = [t for t, acc in comp["qcfs_accuracy"].items()
               if acc >= comp["bitserial_accuracy"] - comp["tolerance"]]
    assert chosen == (min(reached) if reached else 8)
    (row,) = comp["rows"]
    assert row["lanes"] == 32 and row["bitserial"] > 0 and row["qcfs"] > 0
    assert row["ratio"] == pytest.approx(row["qcfs"] / row["bitserial"])


def test_engine_capacity_reports_memories_and_cycles():
    import engine_capacity

    result = engine_capacity.main(["--arch", "digits-cnn", "--lanes", "4,16"])
    rows = result["rows"]
    assert [r["lanes"] for r in rows] == [4, 16]
    for r in rows:
        assert r["cycles"] >= r["lower_bound"] > 0 and r["list_bits"] > 0 < r["weight_bits"]
