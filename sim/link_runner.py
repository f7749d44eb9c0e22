"""Run the board's host link (engine + UART) under cocotb, driven by the host API.

:func:`run_link` elaborates :class:`~bitspike.boards.link.LinkedEngine` for a Program (the
component :class:`~bitspike.boards.top.BoardTop` puts on a board's FTDI UART) behind the
bench's registered reset, builds it with :func:`bitspike.sim.runner.build` (cached), and runs
the bench :mod:`bitspike.sim.link_tb`, in which :class:`~bitspike.boards.host.BoardLink` talks
to it bit by bit over a UART model. Returns the bench's report (a dict).

The simulated board runs at 100 MHz with the UART at 12.5 Mbaud (8 cycles per bit) and a
50 us frame timeout: the protocol and the logic are those of a board build; only the divisor
and the timeout are scaled so that the simulation spends its time in the engine.
"""

from __future__ import annotations

import json
import os
import threading

import numpy as np

from .runner import (
    CLOCK_NS,
    DEFAULT_ROOT,
    TIMESCALE,
    SimError,
    _hidden_pytest,
    _runner,
    build,
    checked_images,
    choose_simulator,
    with_clock,
    write_job_folder,
)

__all__ = ["LINK_TOPLEVEL", "link_verilog", "run_link", "run_link_command"]

LINK_TOPLEVEL = "bitspike_board"
TEST_MODULE = "bitspike.sim.link_tb"
#: UART clock cycles per bit in the bench (12.5 Mbaud at the bench's 100 MHz).
BENCH_DIVISOR = 8
#: The bench's frame timeout.
BENCH_TIMEOUT_MS = 0.05


def link_verilog(program, *, lanes: int, config=None, fault=None):
    """The Verilog of the host link and engine for ``program`` (top :data:`LINK_TOPLEVEL`,
    with its own clock) and the :class:`~bitspike.boards.link.LinkConfig`."""
    from amaranth.back import verilog

    from bitspike.boards.link import LinkConfig, LinkedEngine
    from bitspike.hw.config import EngineConfig
    from bitspike.hw.engine import Engine

    from .bench_top import BenchTop

    config = config or EngineConfig.for_program(program, lanes=lanes)
    clock_hz = 1e9 / CLOCK_NS
    link = LinkConfig(program=program, engine_config=config, clock_hz=clock_hz,
                      baud=round(clock_hz / BENCH_DIVISOR), timeout_ms=BENCH_TIMEOUT_MS)
    kw = {} if fault is None else {"fault": fault}
    top = LinkedEngine(engine=Engine(config=config, program=program, **kw), link=link)
    text = verilog.convert(BenchTop(top), name=LINK_TOPLEVEL, emit_src=False)
    return with_clock(text, toplevel=LINK_TOPLEVEL), link


def run_link(program, images, *, lanes: int, count: int | None = None, malformed: bool = True,
             simulator=None, root=DEFAULT_ROOT, host_timeout: float = 60.0,
             fault=None) -> dict:
    """Serve ``program`` on the simulated link and run the bench's scenario (the docstring
    of :mod:`bitspike.sim.link_tb`): ``count`` images (default: all) through
    ``BoardLink.infer``, then, with ``malformed``, every malformed frame kind, a corrupted
    request and a reset mid-frame. Returns the report; raises :class:`SimError` when the bench
    fails (the message has its first failure). ``fault``: tests only, a deliberately broken
    engine (:class:`~bitspike.hw.faults.EngineFault`)."""
    images = checked_images(program, images)
    count = len(images) if count is None else count
    if malformed and len(images) < 4:
        raise SimError("the malformed-frame checks need at least 4 images")
    report = _run(program, images, lanes=lanes, simulator=simulator, root=root, fault=fault,
                  job={"count": count, "malformed": malformed, "host_timeout": host_timeout})
    failed = {k: v for k, v in report["checks"].items() if v != "ok"}
    if report["error"] or report["mismatches"] or failed:
        first = report["error"] or (report["mismatches"][:1] or [failed])[0]
        raise SimError(f"the host-link bench failed: {first} (log: {report['log']})")
    return report


def run_link_command(program, command: list[str], *, lanes: int, simulator=None,
                     root=DEFAULT_ROOT) -> dict:
    """Serve ``program`` on the simulated link behind a pseudo-terminal and run ``command``
    (``{port}`` in it replaced by the pty's path) against it; the report has its
    ``returncode``, ``stdout`` and ``stderr``."""
    images = np.zeros((1, *program.input.shape), dtype=np.int64)
    return _run(program, images, lanes=lanes, simulator=simulator, root=root, fault=None,
                job={"command": list(command)})


def _run(program, images, *, lanes, simulator, root, fault, job: dict) -> dict:
    sim = choose_simulator(simulator)
    text, link = link_verilog(program, lanes=lanes, fault=fault)
    built = build(text, simulator=sim, root=root, toplevel=LINK_TOPLEVEL)
    folder = (built.directory / "runs" / f"{os.getpid()}-{threading.get_ident()}").resolve()
    write_job_folder(folder, program, images, {
        "lanes": lanes, "clock_ns": CLOCK_NS, "bit_ns": CLOCK_NS * link.divisor, **job})
    log = folder / "sim.log"
    env = {"BITSPIKE_LINK_JOB": str(folder), "OMP_NUM_THREADS": "1",
           "COCOTB_LOG_LEVEL": os.environ.get("COCOTB_LOG_LEVEL", "WARNING")}
    try:
        with _hidden_pytest():
            _runner(sim).test(test_module=TEST_MODULE, hdl_toplevel=LINK_TOPLEVEL,
                              hdl_toplevel_lang="verilog", build_dir=built.directory,
                              test_dir=folder, results_xml=str(folder / "results.xml"),
                              extra_env=env, timescale=TIMESCALE, log_file=log)
    except SystemExit:
        pass  # a failing test exits the runner; the report says why
    path = folder / "report.json"
    if not path.is_file():
        raise SimError(f"the host-link simulation ended without a report; see {log}")
    report = json.loads(path.read_text())
    report["build"] = {"directory": str(built.directory), "reused": built.reused}
    report["log"] = str(log)
    return report
