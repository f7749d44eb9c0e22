"""Formal proofs of the neuron step units (bitspike.sim.formal): they PASS at the widths of the
trained digits-cnn's engine configs (P = 8) and of a config EngineConfig.for_program sizes, and a
mutated unit makes its proof FAIL with a counterexample that really tells the two apart.

Each proof runs yowasp-sby with the z3 binary of the z3-solver wheel; the seconds each took are
recorded as the ``proof_seconds`` property (``pytest --junitxml`` keeps them) and printed.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from amaranth.hdl import Fragment, Module, Mux, Signal

from bitspike.hw.config import EngineConfig
from bitspike.hw.engine import Engine
from bitspike.hw.neuron import ApproximationStep, IntegrateFireStep
from bitspike.sim import formal
from bitspike.sim.formal import (
    ApproximationWidths,
    FormalError,
    IntegrateFireWidths,
    find_solver,
    neuron_unit_proofs,
    prove,
)
from bitspike.sw.golden import integrate_and_fire, successive_approximation

from .programs import dense_chain

pytestmark = pytest.mark.formal


@pytest.fixture(scope="module")
def digits_cnn_configs(quick_checkpoint):
    """EngineConfig.for_program(P = 8) of the trained digits-cnn, converted bit-serial and to
    SRP rate coding (4 steps after 2 probe steps, as tests/test_hw_engine.py runs it)."""
    from bitspike.sw.pipeline import convert_checkpoint
    return {method: EngineConfig.for_program(
                convert_checkpoint(quick_checkpoint, method=method, **kw).program, lanes=8)
            for method, kw in (("bitserial", {}), ("srp", {"steps": 4, "tau": 2}))}


def _digits_cnn_proofs():
    """(config key, proof name) of every proof at the digits-cnn widths: the approximation chain
    for every t_out the engine can run (1..max_t = 6)."""
    names = ["approximation_step", *[f"approximation_chain_t{t}" for t in range(1, 7)]]
    return [("bitserial", n) for n in names] + [
        ("srp", "integrate_fire_step"), ("srp", "integrate_fire_run_s3")]


def _run(proof, tmp_path, record_property):
    result = prove(proof, tmp_path, timeout=600)
    record_property("proof_seconds", round(result.seconds, 1))
    print(f"{result.name}: {result.status} in {result.seconds:.1f} s ({result.solver}, "
          f"{result.widths})")
    return result


@pytest.mark.parametrize("key, name", _digits_cnn_proofs(),
                         ids=[f"{k}-{n}" for k, n in _digits_cnn_proofs()])
def test_units_proven_at_the_digits_cnn_widths(digits_cnn_configs, key, name, tmp_path,
                                               record_property):
    config = digits_cnn_configs[key]
    proofs = {p.name: p for p in neuron_unit_proofs(config, chain_steps=range(1, config.max_t + 1))}
    if name not in proofs:  # a differently trained digits-cnn with fewer steps
        pytest.skip(f"max_t = {config.max_t}: no {name}")
    result = _run(proofs[name], tmp_path, record_property)
    assert result.status == "PASS", (result.failed, result.counterexample)


def test_units_proven_at_the_widths_for_program_sizes(tmp_path, record_property):
    """A bit-serial dense chain (T = 4), its config sized by EngineConfig.for_program; then the
    same config with the rate mode added (V0 of 5 bits) for the integrate-and-fire unit (the
    3-step run is proven at the digits-cnn widths above; here the step proof only)."""
    config = EngineConfig.for_program(dense_chain(4, 4, bias=3, seed=1), lanes=4)
    both = dataclasses.replace(config, modes=("bitserial", "rate"), v_init_bits=5,
                               v_init_depth=config.threshold_depth)
    proofs = neuron_unit_proofs(both, run_steps=0)
    assert [p.name for p in proofs] == ["approximation_step", f"approximation_chain_t{both.max_t}",
                                        "integrate_fire_step"]
    for proof in proofs:
        result = _run(proof, tmp_path, record_property)
        assert result.status == "PASS", (proof.name, result.failed, result.counterexample)


def _units(fragment):
    for sub, _, _ in fragment.subfragments:
        yield from (o for o in sub.origins or () if isinstance(o, (ApproximationStep,
                                                                    IntegrateFireStep)))
        yield from _units(sub)


def test_widths_are_the_engines():
    """for_config gives the widths the engine really builds its per-lane units with."""
    config = EngineConfig.for_program(dense_chain(4, 3, bias=3, seed=1), lanes=3)
    config = dataclasses.replace(config, modes=("bitserial", "rate"), v_init_bits=7,
                                 v_init_depth=config.threshold_depth)
    engine = Engine(config=config, program=dense_chain(4, 3, bias=3, seed=1))
    units = list(_units(Fragment.get(engine, None)))
    approximate = [u for u in units if isinstance(u, ApproximationStep)]
    integrate = [u for u in units if isinstance(u, IntegrateFireStep)]
    assert len(approximate) == len(integrate) == config.lanes
    aw, iw = ApproximationWidths.for_config(config), IntegrateFireWidths.for_config(config)
    for unit in approximate:
        assert (unit.u.shape().width, unit.thr.shape().width) == (aw.u_bits, aw.thr_bits)
    for unit in integrate:
        assert (unit.v.shape().width, unit.add.shape().width, unit.bias.shape().width,
                unit.threshold.shape().width, unit.v_init.shape().width) == (
                    iw.v_bits, iw.add_bits, iw.bias_bits, iw.threshold_bits, iw.v_init_bits)


# ---------------------------------------------------------------------------------------------
# mutated units: the proof must FAIL, and the counterexample must separate the mutant from the
# rule (checked here in Python against bitspike.sw.golden)


class StrictCompare(ApproximationStep):
    """Fires on ``u > thr`` instead of ``u >= thr``."""

    def elaborate(self, platform):
        m = Module()
        m.d.comb += [self.fire.eq(self.u > self.thr),
                     self.u_next.eq(Mux(self.fire, self.u - self.thr, self.u))]
        return m


class SubtractsOneMore(ApproximationStep):
    """Subtracts ``thr + 1`` when it fires."""

    def elaborate(self, platform):
        m = Module()
        m.d.comb += [self.fire.eq(self.u >= self.thr),
                     self.u_next.eq(Mux(self.fire, self.u - self.thr - 1, self.u))]
        return m


def _mutant_if(*, compare="ge", reset_offset=0, mask="ge", prime_first=True):
    """An IntegrateFireStep written out again with one fault."""

    class Mutant(IntegrateFireStep):
        def elaborate(self, platform):
            m = Module()
            fire = Signal()
            restart = (self.first | self.probe_over) if prime_first else self.probe_over
            probe = (self.v >= 0) if mask == "ge" else (self.v > 0)
            m.d.comb += [
                self.keep_next.eq(Mux(self.first, 1, Mux(self.probe_over, probe, self.keep))),
                self.potential.eq(Mux(restart, self.v_init, self.v) + self.add + self.bias),
                fire.eq(self.potential >= self.threshold if compare == "ge"
                        else self.potential > self.threshold),
                self.v_next.eq(Mux(fire, self.potential - self.threshold + reset_offset,
                                   self.potential)),
                self.spike.eq(fire & self.keep_next & self.enable),
            ]
            return m

    return Mutant


def _step_python(cex, mutant):
    """One ApproximationStep of the rule and of the mutant, on the counterexample."""
    u, thr = cex["u"], cex["thr"]
    fire = u >= thr
    rule = (fire, u - fire * thr)
    if mutant is StrictCompare:
        fire = u > thr
        return rule, (fire, u - fire * thr)
    return rule, (fire, u - fire * (thr + 1))


def _chain_python(cex, mutant, t):
    """The level of t chained steps: the golden model's, and the mutant's."""
    u0, d = cex["u0"], cex["d"]
    rule = successive_approximation(torch.tensor([u0]), torch.tensor([d]), t, 2**t - 1)
    rule = int("".join(str(int(b)) for b in rule[0].tolist()), 2)
    u, level = u0, 0
    for i in range(t):
        thr = d << (t - 1 - i)
        fire = u > thr if mutant is StrictCompare else u >= thr
        u -= fire * (thr + (mutant is SubtractsOneMore))
        level = 2 * level + fire
    return rule, level


@pytest.mark.parametrize("mutant", [StrictCompare, SubtractsOneMore])
def test_a_mutated_approximation_step_fails(mutant, tmp_path, record_property):
    widths = ApproximationWidths(u_bits=29, thr_bits=16, threshold_bits=10, steps=6)
    proofs = neuron_unit_proofs(approximation=widths, approximation_unit=mutant)
    assert [p.name for p in proofs] == ["approximation_step", "approximation_chain_t6"]
    step = _run(proofs[0], tmp_path, record_property)
    assert step.status == "FAIL"
    rule, got = _step_python(step.counterexample, mutant)
    assert rule != got, step.counterexample
    chain = _run(proofs[1], tmp_path, record_property)
    assert chain.status == "FAIL"
    assert chain.failed == ["level == clip(floor(u0 / D), 0, 63)"]
    rule, got = _chain_python(chain.counterexample, mutant, 6)
    assert rule != got, chain.counterexample


def _if_python(cex, **fault):
    """One IF step (spike, potential, v_next, keep_next): the golden model's, through
    golden.integrate_and_fire over the steps the flags stand for, and the mutant's."""
    v, keep, add, bias = cex["v"], cex["keep"], cex["add"], cex["bias"]
    thr, v_init, first, probe, enable = (cex["threshold"], cex["v_init"], cex["first"],
                                         cex["probe_over"], cex["enable"])

    def step(compare, reset_offset, mask, prime_first):
        restart = first or probe if prime_first else probe
        keep_next = 1 if first else (int(v >= 0 if mask == "ge" else v > 0) if probe else keep)
        potential = (v_init if restart else v) + add + bias
        fire = potential >= thr if compare == "ge" else potential > thr
        v_next = potential - thr + reset_offset if fire else potential
        return int(fire and keep_next and enable), potential, v_next, keep_next

    rule = step("ge", 0, "ge", True)
    if first:  # the golden model's first step, as a check of the rule above
        spikes, potentials, _, _ = integrate_and_fire(
            torch.tensor([[add]]), bias=bias, threshold=thr, v_init=v_init)
        assert (int(spikes[0, 0]) & enable, int(potentials[0, 0])) == rule[:2]
    faults = {"compare": "ge", "reset_offset": 0, "mask": "ge", "prime_first": True, **fault}
    return rule, step(**faults)


@pytest.mark.parametrize("fault, assertion", [
    ({"compare": "gt"}, "spike == s & keep & enable"),
    ({"reset_offset": 1}, "v_next == potential - s * threshold"),
    ({"mask": "gt"}, "keep_next == SRP mask"),
    ({"prime_first": False}, "potential == base + add + bias"),
], ids=["fires-on-greater", "reset-off-by-one", "srp-mask-v>0", "first-step-not-primed"])
def test_a_mutated_integrate_fire_step_fails(fault, assertion, tmp_path, record_property):
    widths = IntegrateFireWidths(v_bits=27, add_bits=25, bias_bits=12, threshold_bits=12,
                                 v_init_bits=12)
    proof, _ = neuron_unit_proofs(integrate_fire=widths,
                                  integrate_fire_unit=_mutant_if(**fault))
    result = _run(proof, tmp_path, record_property)
    assert result.status == "FAIL"
    assert assertion in result.failed
    rule, got = _if_python(result.counterexample, **fault)
    assert rule != got, result.counterexample


def test_main_proves_the_units_of_an_engine_config_json(tmp_path, capsys):
    """python -m bitspike.sim.formal engine_config.json --every-t: one PASS line per proof."""
    path = tmp_path / "engine_config.json"
    path.write_text(EngineConfig.for_program(dense_chain(2, 2, bias=3, seed=1), lanes=2).to_json())
    assert formal.main([str(path), "--work-dir", str(tmp_path / "work"), "--every-t"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["approximation_step", "PASS"], ["approximation_chain_t1", "PASS"],
        ["approximation_chain_t2", "PASS"]]


def test_no_solver_is_a_clear_error(monkeypatch, tmp_path):
    assert find_solver({"PATH": str(tmp_path)}) is None
    monkeypatch.setattr(formal, "tool_env", lambda: {"PATH": str(tmp_path)})
    widths = ApproximationWidths(u_bits=4, thr_bits=3, threshold_bits=2, steps=2)
    with pytest.raises(FormalError, match=r"no SMT solver.*pip install z3-solver"):
        prove(neuron_unit_proofs(approximation=widths)[0], tmp_path)
