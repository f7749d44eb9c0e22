"""The board's host link in Verilator under cocotb, driven by the host API (sim/link_tb.py).

The trained digits-cnn engine behind the UART: the host checks the board's INFO, classifies 24
test digits bit by bit over the UART model (every class, logit and cycle count identical to the
golden model and the cycle model), then sends each malformed frame kind (each answered with its
error and followed by a correct inference), has the line corrupt a request (the host's retry
recovers), and resets the board in the middle of a frame.
"""

from __future__ import annotations

import pytest

from bitspike.boards.protocol import LinkError
from bitspike.hw.faults import EngineFault
from bitspike.sim.link_runner import run_link
from bitspike.sim.runner import SimError

pytestmark = pytest.mark.rtl


@pytest.fixture(scope="module")
def digits_program(quick_checkpoint):
    from bitspike.sw.pipeline import convert_checkpoint

    return convert_checkpoint(quick_checkpoint).program


def test_host_link_classifies_digits_and_survives_every_malformed_frame(digits_program,
                                                                         digits):
    images = digits.x_test[:24].numpy()
    report = run_link(digits_program, images, lanes=8)
    line_and_frame_errors = [k for k in LinkError if k is not LinkError.NOT_READY]
    assert report["inferences"] == 24
    assert len(report["classes"]) == 24 + len(line_and_frame_errors) + 2
    assert report["mismatches"] == [] and report["error"] is None
    expected_checks = {"info", "host refuses a level out of range", "board refusal raises",
                       "retry after a corrupted request", "reset mid-frame",
                       *(f"malformed {kind.name}" for kind in line_and_frame_errors)}
    assert set(report["checks"]) == expected_checks
    assert all(v == "ok" for v in report["checks"].values())
    assert report["retries"] == 1 and report["resets"] == 1
    assert report["info"]["pixels"] == 64 and report["info"]["classes"] == 10
    assert report["info"]["program_id"] == report["program_id"]


def test_host_link_bench_fails_on_a_wrong_cycle_count(digits_program, digits):
    """The comparison can fail: an engine whose cycle counter is off by one is caught."""
    with pytest.raises(SimError, match=r"batch: image 0: expected logits .* cycles; got"):
        run_link(digits_program, digits.x_test[:4].numpy(), lanes=8, malformed=False,
                 fault=EngineFault.CYCLE_COUNT)


def test_board_cli_runs_against_the_simulated_board_on_a_pty(digits_program, tmp_path):
    """`bitspike board info` and `bitspike board run` through pyserial on a pseudo-terminal to
    the simulated board: the CLI end to end, as a user would run it on a real board."""
    import json
    import sys

    from bitspike.sim.link_runner import run_link_command
    from bitspike.sw.images import write_bundle

    bundle = tmp_path / "prog"
    write_bundle(digits_program, bundle)
    cli = f"{sys.executable} -m bitspike.sw.cli"
    script = (f"{cli} board info --port {{port}} --json && "
              f"{cli} board run --port {{port}} {bundle} --images 20 --json")
    report = run_link_command(digits_program, ["sh", "-c", script], lanes=8)
    assert report["returncode"] == 0, report["stderr"][-2000:]
    info_line, run_line = report["stdout"].strip().splitlines()
    info, run = json.loads(info_line), json.loads(run_line)
    assert info["lanes"] == 8 and info["pixels"] == 64 and info["weights_ready"]
    assert run["images"] == 20 and run["golden_identical"] == 20 and run["mismatches"] == []
    assert 0 <= run["accuracy"] <= 1 and run["inferences_per_second"] > 0
