"""``bitspike sim``: RTL inference on test images, checked against the golden model."""

from __future__ import annotations

import json

import pytest

from bitspike.hw.engine import EngineFault

from .test_cli import run_cli

pytestmark = pytest.mark.rtl


@pytest.fixture(scope="module")
def bundle(quick_checkpoint, tmp_path_factory):
    """The quickly trained digits-cnn as a bit-serial bundle."""
    from bitspike.sw.pipeline import convert_checkpoint

    folder = tmp_path_factory.mktemp("prog")
    convert_checkpoint(quick_checkpoint).program.save(folder)
    return folder


def test_sim_json_reports_accuracy_mismatches_cycles_and_speed(bundle, capsys):
    rc, out, err = run_cli(capsys, "sim", bundle, "--simulator", "verilator", "--lanes", "8",
                           "--images", "3", "--json")
    assert rc == 0, err
    result = json.loads(out)
    for key in ("images", "mismatches", "accuracy", "golden_accuracy", "cycles_per_image",
                "cycles_per_second", "images_per_second"):
        assert key in result
    assert result["images"] == 3 and result["mismatches"] == 0
    assert result["accuracy"] == result["golden_accuracy"]
    assert result["cycles_per_image"] > 1000 and result["cycles_per_second"] > 0
    assert "RTL (verilator, P = 8)" in err  # the progress bar


def test_sim_text_on_icarus(bundle, capsys):
    rc, out, _ = run_cli(capsys, "sim", bundle, "--simulator", "icarus", "--images", "1",
                         "--lanes", "8")
    assert rc == 0
    assert "icarus, P = 8, 1 test images" in out and "mismatches  0" in out
    assert "simulated cycles/s" in out


def test_sim_fails_with_the_first_mismatch(bundle, capsys, monkeypatch):
    """An engine that disagrees makes the command exit non-zero, naming the first mismatch."""
    import bitspike.sim.runner as runner

    real = runner.run_engine_rtl
    monkeypatch.setattr(runner, "run_engine_rtl", lambda *a, **kw: real(
        *a, fault=EngineFault.CYCLE_COUNT, **kw))
    rc, out, err = run_cli(capsys, "sim", bundle, "--simulator", "icarus", "--images", "2",
                           "--lanes", "8", "--json")
    assert rc == 1
    result = json.loads(out)
    assert result["mismatches"] == 2
    assert "error: 2 image(s) disagree" in err and "image 0: cycles: expected" in err


@pytest.mark.parametrize("argv, message", [
    (["--images", "0"], "--images must be a positive number or 'all'"),
    (["--images", "many"], "--images must be a positive number or 'all'"),
    (["--lanes", "0"], "--lanes must be a positive integer"),
])
def test_sim_refuses_bad_arguments(bundle, capsys, argv, message):
    rc, _, err = run_cli(capsys, "sim", bundle, *argv)
    assert rc == 1 and message in err


def test_sim_refuses_a_missing_bundle(tmp_path, capsys):
    rc, _, err = run_cli(capsys, "sim", tmp_path / "nothing", "--images", "1")
    assert rc == 1 and "bitspike sim: error:" in err
