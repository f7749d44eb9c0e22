"""The engine's generated Verilog under Verilator and Icarus (cocotb), against the golden model
and the cycle model: every logit, class, cycle count and trace record, exactly.

Each case runs on both simulators. Builds are cached per (Verilog, simulator) in build/sim, so a
case that reuses a Program reuses its build. The bench's seed and the Program (hypothesis's
falsifying example) are printed on failure.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from bitspike.hw.engine import EngineFault
from bitspike.sim.runner import run_engine_rtl

from .programs import (
    conv_pool_program,
    dense_chain,
    draw_images,
    random_conv_program,
    random_dense_program,
    random_rate_program,
)

pytestmark = pytest.mark.rtl

SIMULATORS = ["verilator", "icarus"]


def _waves_file(simulator: str) -> str:
    """``WAVES=1``: each case writes its waveform to build/sim/waves/<test>.<fst|vcd>."""
    name = re.sub(r"[^\w.-]+", "_", os.environ["PYTEST_CURRENT_TEST"].split(" ")[0])
    folder = Path("build") / "sim" / "waves"
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder / f"{name}.{'fst' if simulator == 'verilator' else 'vcd'}")


def check_rtl(program, images, *, lanes: int, simulator: str, trace: bool = True, **kw):
    """Run ``images`` through the engine's RTL; the bench's scoreboard must find nothing."""
    if os.environ.get("WAVES") == "1" and "waves" not in kw:
        kw["waves"] = _waves_file(simulator)
    report = run_engine_rtl(program, np.asarray(images), lanes=lanes, simulator=simulator,
                            trace=trace, **kw)
    assert report.mismatches == 0, report.first_mismatch
    assert report.images == len(images)
    return report


# hypothesis draws the Programs; derandomized so that CI builds the same few designs each run
# (a build is seconds to a minute), without shrinking (each shrink step would be a new build)
_RANDOM = settings(max_examples=2, derandomize=True, deadline=None, database=None,
                   phases=(Phase.generate,), suppress_health_check=list(HealthCheck))
_BUILDERS = {"dense": random_dense_program, "conv-pool": random_conv_program,
             "rate": random_rate_program}


@pytest.mark.parametrize("simulator", SIMULATORS)
@pytest.mark.parametrize("kind", sorted(_BUILDERS))
@_RANDOM
@given(data=st.data())
def test_random_programs(simulator, kind, data):
    """Random bit-serial dense and conv3x3 + fused pool Programs and rate (qcfs/srp) Programs,
    traced, with random lane counts."""
    program = _BUILDERS[kind](data.draw)
    lanes = data.draw(st.sampled_from([1, 2, 3]), label="lanes")
    images = draw_images(data.draw, program, 2)
    check_rtl(program, images, lanes=lanes, simulator=simulator, seed=11)


@pytest.mark.parametrize("simulator", SIMULATORS)
@pytest.mark.parametrize("t, lanes", [(1, 1), (8, 32)], ids=["T1-one-lane", "T8-32-lanes"])
def test_zero_and_saturating_inputs_at_one_and_max_time_steps(simulator, t, lanes):
    """T = 1 and T = 8 on the input and the hidden layer, with one lane and with more lanes
    than neurons; an all-zero image, a saturating one and a random one."""
    program = dense_chain(t, t, bias=3, seed=t)
    rng = np.random.default_rng(t)
    images = np.stack([np.zeros(8, int), np.full(8, 2**t - 1), rng.integers(0, 2**t, 8)])
    check_rtl(program, images, lanes=lanes, simulator=simulator)


@pytest.fixture(scope="module")
def conv_pool():
    """A fixed bit-serial conv3x3 + pool + dense Program and four images (one build each)."""
    program = conv_pool_program()
    rng = np.random.default_rng(7)
    images = rng.integers(0, program.input.max_level + 1, (4, *program.input.shape))
    return program, images


@pytest.mark.parametrize("simulator", SIMULATORS)
def test_back_pressure_and_idle_input_lose_nothing(simulator, conv_pool):
    """Random idle cycles on i_stream and random ready-low cycles on every output stream:
    every logit and trace record still arrives, in order, exactly."""
    program, images = conv_pool
    check_rtl(program, images, lanes=2, simulator=simulator, ready_prob=0.5, idle_prob=0.3,
              seed=5)


@pytest.mark.parametrize("simulator", SIMULATORS)
def test_idle_input_keeps_cycles_exact(simulator, conv_pool):
    """Idle input cycles stretch the count by exactly the cycles the engine waited for a pixel;
    the scoreboard still compares it with the cycle model."""
    program, images = conv_pool
    check_rtl(program, images, lanes=2, simulator=simulator, idle_prob=0.5, seed=6)


@pytest.mark.parametrize("simulator", SIMULATORS)
def test_reset_mid_inference_then_correct_inferences(simulator, conv_pool):
    program, images = conv_pool
    check_rtl(program, images, lanes=2, simulator=simulator, reset_after=40)


@pytest.fixture(scope="module")
def trained_programs(quick_checkpoint):
    """The trained digits-cnn as bit-serial, qcfs and srp Programs."""
    from bitspike.sw.pipeline import convert_checkpoint

    return {"bitserial": convert_checkpoint(quick_checkpoint).program,
            "qcfs": convert_checkpoint(quick_checkpoint, method="qcfs", steps=4).program,
            "srp": convert_checkpoint(quick_checkpoint, method="srp", steps=4, tau=2).program}


@pytest.mark.slow
@pytest.mark.parametrize("simulator", SIMULATORS)
@pytest.mark.parametrize("method", ["bitserial", "qcfs", "srp"])
def test_trained_digits_cnn(simulator, method, trained_programs, digits):
    """The trained digits-cnn at P = 8 in bit-serial mode and two rate-coded methods, with
    every trace record (Icarus: one image; Verilator: three)."""
    program = trained_programs[method]
    count = 3 if simulator == "verilator" else 1
    report = check_rtl(program, digits.x_test[:count].numpy(), lanes=8, simulator=simulator)
    assert report.simulated_cycles >= sum(report.cycles)


# ------------------------------------------------------------------ the checker can fail

_FAULTS = {
    EngineFault.HORNER_SHIFT: r"image 0: potentials of layer 0 \(fc0\), group 0, position "
                              r"\(y=0, x=0\), step 0, neuron \d+ \(lane \d\): expected -?\d+, "
                              r"got -?\d+ \(trace record \d+, engine cycle \d+\)",
    EngineFault.DROP_EVENT: r"image 0: potentials of layer 0 \(fc0\), .*neuron \d+ .*expected "
                            r"-?\d+, got -?\d+",
    EngineFault.FIRE_STRICT: r"image \d: levels/spikes of layer 0 \(fc0\), .*neuron \d+ "
                             r".*expected \d+, got \d+",
    EngineFault.CYCLE_COUNT: r"image 0: cycles: expected (\d+) \(cycle model \1\), got \d+",
}


@pytest.mark.parametrize("simulator", SIMULATORS)
@pytest.mark.parametrize("fault", list(_FAULTS), ids=[f.value for f in _FAULTS])
def test_scoreboard_catches_a_broken_engine(simulator, fault):
    """A deliberately broken engine fails, and the first mismatch names where: layer, group,
    neuron, position, step, the expected and the got value (or the cycle count)."""
    program = dense_chain(3, 2, bias=3, seed=1)
    rng = np.random.default_rng(0)
    images = np.concatenate([np.full((1, 8), 7), rng.integers(0, 8, (2, 8))])
    report = run_engine_rtl(program, images, lanes=4, simulator=simulator, trace=True,
                            fault=fault)
    assert report.mismatches == 1  # the bench stops at the first one
    assert re.search(_FAULTS[fault], report.first_mismatch), report.first_mismatch
    assert "bench seed 0" in report.first_mismatch


@pytest.mark.parametrize("simulator", SIMULATORS)
def test_all_mismatches_counted_when_not_stopping(simulator):
    """``bitspike sim`` counts every mismatching image: a cycle-count fault hits all of them."""
    program = dense_chain(3, 2, bias=3, seed=1)
    images = np.random.default_rng(1).integers(0, 8, (3, 8))
    report = run_engine_rtl(program, images, lanes=4, simulator=simulator, trace=False,
                            fault=EngineFault.CYCLE_COUNT, stop_on_first=False)
    assert report.images == 3 and report.mismatches == 3
    assert report.first_mismatch.startswith("image 0: cycles")


# ------------------------------------------------------------------ waveforms and the cache


@pytest.mark.parametrize("simulator, magic", [("verilator", b"\x00"), ("icarus", b"$")])
def test_waves_on_request(simulator, magic, tmp_path):
    """FST from Verilator, VCD from Icarus, only when asked for."""
    program = dense_chain(2, 2, bias=1, seed=2)
    images = np.full((1, 8), 3)
    target = tmp_path / f"engine.{'fst' if simulator == 'verilator' else 'vcd'}"
    report = check_rtl(program, images, lanes=2, simulator=simulator, waves=str(target))
    assert report.waves == str(target) and target.stat().st_size > 100
    head = target.read_bytes()[:64]
    assert head.startswith(magic)
    if simulator == "icarus":
        assert b"$date" in head or b"$version" in head or b"$timescale" in head
    plain = check_rtl(program, images, lanes=2, simulator=simulator)
    assert plain.waves is None and plain.build["directory"] != report.build["directory"]


def test_second_run_reuses_the_build():
    program = dense_chain(2, 3, bias=2, seed=3)
    images = np.full((1, 8), 2)
    check_rtl(program, images, lanes=3, simulator="verilator")
    again = check_rtl(program, images, lanes=3, simulator="verilator")
    assert again.build["reused"] is True


def test_simulator_from_the_environment(monkeypatch):
    from bitspike.sim.runner import SimError, Simulator, choose_simulator

    monkeypatch.setenv("BITSPIKE_SIM", "icarus")
    assert choose_simulator() is Simulator.ICARUS
    assert choose_simulator("verilator") is Simulator.VERILATOR
    monkeypatch.setenv("BITSPIKE_SIM", "modelsim")
    with pytest.raises(SimError, match=r"unknown simulator 'modelsim' \(from \$BITSPIKE_SIM\)"):
        choose_simulator()


def test_images_must_fit_the_program():
    """Images are checked before anything is built (the golden model's own input check)."""
    from bitspike.sw.errors import BitspikeError

    program = dense_chain(2, 2, bias=1, seed=2)
    with pytest.raises(BitspikeError):
        run_engine_rtl(program, torch.full((1, 8), 9).numpy(), lanes=2, simulator="icarus")
