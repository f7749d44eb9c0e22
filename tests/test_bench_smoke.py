"""Smoke test of the golden-model benchmark (bench/bench_golden.py --quick), run in-process."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_golden.py"
ARCHS = {"digits-cnn": (1, 32, 360), "digits-mlp": (1, 32, 360), "vgg-small": (1, 16)}


def _load_bench(monkeypatch: pytest.MonkeyPatch):
    """Import bench/bench_golden.py (not a package) as a module, for this test only."""
    spec = importlib.util.spec_from_file_location("bench_golden", BENCH)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _positive(v) -> bool:
    return isinstance(v, int | float) and math.isfinite(v) and v > 0


@pytest.mark.slow
def test_quick_benchmark_reports_positive_figures(tmp_path, capsys, monkeypatch):
    bench = _load_bench(monkeypatch)
    threads = torch.get_num_threads()
    out = tmp_path / "bench.json"
    returned = bench.main(["--quick", "--json", str(out)])
    printed = capsys.readouterr().out
    assert torch.get_num_threads() == threads  # the benchmark restores the caller's setting

    result = json.loads(out.read_text())
    assert result["quick"] is True
    assert result["throughput"] == json.loads(json.dumps(returned["throughput"]))
    for key in ("cpu_count", "torch", "torch_threads"):
        assert key in result["machine"]
    assert result["machine"]["torch_threads"] == 2

    rows = {(r["arch"], r["batch"]): r for r in result["throughput"]}
    assert set(rows) == {(a, b) for a, batches in ARCHS.items() for b in batches}
    for (arch, batch), r in rows.items():
        for key in ("float_img_s", "golden_img_s", "golden_trace_img_s", "cost_golden_vs_float",
                    "cost_trace_vs_float"):
            assert _positive(r[key]), (arch, batch, key, r[key])
        assert r["golden"]["min"] <= r["golden"]["median"] <= r["golden"]["max"]

    conv = {c["arch"]: c for c in result["conversion"]}
    assert set(conv) == set(ARCHS)
    for arch, c in conv.items():
        for key in ("convert", "write", "read"):
            assert _positive(c[key]["median"]), (arch, key)
        assert c["roundtrip_identical"] is True
        assert c["bundle_bytes"] > 0

    for key in ("float_images_per_second", "bitserial_images_per_second",
                "rate_images_per_second", "bitserial_slowdown", "rate_slowdown"):
        assert _positive(result[key]), key
    ratios = result["ratios"]
    assert (ratios["batch"], ratios["threads"], ratios["rate_steps"]) == (360, 1, 8)
    assert ratios["bitserial_slowdown"] == pytest.approx(
        ratios["float_images_per_second"] / ratios["bitserial_images_per_second"])
    assert "Golden model vs float ANN" in printed and "target" in printed

    assert result["models"]["digits-cnn"]["trained"] is True
    assert result["models"]["vgg-small"]["trained"] is False

    # the printed table has one line per (arch, batch) with positive throughput figures
    assert "torch" in printed and "threads" in printed
    section = printed.split("Throughput", 1)[1].split("Conversion", 1)[0]
    for arch, batches in ARCHS.items():
        lines = [ln.split() for ln in section.splitlines() if ln.startswith(arch + " ")]
        table = {int(f[1]): f for f in lines if len(f) >= 5 and f[1].isdigit()}
        assert set(batches) <= set(table), (arch, printed)
        for b in batches:
            figures = [float(v.replace(",", "")) for v in table[b][2:5]]
            assert all(v > 0 for v in figures), (arch, b, table[b])


@pytest.mark.slow
def test_json_flag_prints_one_object(capsys, monkeypatch):
    """``--json`` alone: one JSON object on stdout with the three speeds, the table on stderr."""
    bench = _load_bench(monkeypatch)
    bench.main(["--quick", "--json"])
    out, err = capsys.readouterr()
    result = json.loads(out)
    for key in ("float_images_per_second", "bitserial_images_per_second",
                "rate_images_per_second"):
        assert _positive(result[key]), key
    assert "Golden model vs float ANN" in err
