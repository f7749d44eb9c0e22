"""The neuron units of bitspike.hw against the golden model, in amaranth.sim.

SuccessiveApproximationFire must emit bit for bit what golden.successive_approximation emits,
IntegrateFire what golden.integrate_and_fire emits (spikes and potentials), with and without
back-pressure, at the cycle cost their ``cycles`` methods report.
"""

import gc
import random
import warnings

import pytest
import torch
from amaranth.back import verilog
from amaranth.hdl import Fragment, UnusedElaboratable
from amaranth.sim import Simulator
from hypothesis import given, settings
from hypothesis import strategies as st

from bitspike.hw.neuron import IntegrateFire, SuccessiveApproximationFire
from bitspike.sw.golden import integrate_and_fire, successive_approximation

# ---------------------------------------------------------------------------------------------
# stream helpers (amaranth.lib.stream rules: transfer when valid & ready at a clock edge). They
# wait with plain one-shot ticks rather than ``ctx.tick().until(...)``: when a broken unit hangs,
# run_until leaves them suspended, and a suspended ``until`` (an async generator) cannot be closed
# cleanly afterwards, which turns a plain test failure into a pytest INTERNALERROR.


async def stream_put(ctx, stream, payload, *, gap: int = 0):
    """Offer ``payload`` (after ``gap`` idle cycles) and wait for its transfer."""
    for _ in range(gap):
        await ctx.tick()
    ctx.set(stream.payload, payload)
    ctx.set(stream.valid, 1)
    while not (await ctx.tick().sample(stream.ready))[2]:
        pass
    ctx.set(stream.valid, 0)


async def stream_get(ctx, stream, *, stall: int = 0):
    """Hold ``ready`` low for ``stall`` cycles, then take one transfer and return its payload."""
    ctx.set(stream.ready, 0)
    for _ in range(stall):
        await ctx.tick()
    ctx.set(stream.ready, 1)
    while True:
        _, _, valid, payload = await ctx.tick().sample(stream.valid, stream.payload)
        if valid:
            break
    ctx.set(stream.ready, 0)
    return payload


async def _cycles(ctx, *exprs):
    """Yield the sampled ``exprs`` at every clock edge (for background monitors)."""
    while True:
        _, _, *values = await ctx.tick().sample(*exprs)
        yield values


def _stalls(rng: random.Random | None, p: float):
    """Idle cycles before each transfer: none without ``rng``, else geometric with ``p``."""
    while True:
        n = 0
        while rng is not None and rng.random() < p:
            n += 1
        yield n


def _simulate(dut, testbenches, *, monitors=(), max_cycles: int):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    for tb in testbenches:
        sim.add_testbench(tb)
    for mon in monitors:
        sim.add_testbench(mon, background=True)
    sim.run_until(max_cycles * 1e-6)


def _protocol_monitor(stream, violations: list):
    """Record a stream rule break: valid dropped, or payload changed, before a transfer."""
    async def monitor(ctx):
        held = None
        async for valid, ready, payload in _cycles(ctx, stream.valid, stream.ready,
                                                   stream.payload):
            if held is not None and (not valid or payload.as_value().value != held):
                violations.append((held, valid, payload))
            held = payload.as_value().value if valid and not ready else None
    return monitor


def _transfer_monitor(dut, accepts: list, outs: list):
    """Record the cycle of every input transfer in ``accepts`` and output one in ``outs``."""
    async def monitor(ctx):
        cycle = 0
        async for iv, ir, ov, orr in _cycles(ctx, dut.i_stream.valid, dut.i_stream.ready,
                                             dut.o_stream.valid, dut.o_stream.ready):
            if iv and ir:
                accepts.append(cycle)
            if ov and orr:
                outs.append(cycle)
            cycle += 1
    return monitor


# ---------------------------------------------------------------------------------------------
# SuccessiveApproximationFire


def golden_sa_bits(u0: int, d: int, t_out: int, levels: int) -> list[int]:
    bits = successive_approximation(torch.tensor([u0]), torch.tensor([d]), t_out, levels)
    return bits[0].tolist()


def run_sa(dut, jobs, *, rng=None, p_in=0.3, p_out=0.5, violations=None):
    """Run ``jobs`` (dicts of the job layout) through ``dut``; return the bits per job."""
    got = []
    stalls_in, stalls_out = _stalls(rng, p_in), _stalls(rng, p_out)

    async def producer(ctx):
        for job in jobs:
            await stream_put(ctx, dut.i_stream, job, gap=next(stalls_in))

    async def consumer(ctx):
        for job in jobs:
            bits = []
            for i in range(job["t_out"]):
                payload = await stream_get(ctx, dut.o_stream, stall=next(stalls_out))
                bits.append(payload.spike)
                assert payload.last == (i == job["t_out"] - 1)
            got.append(bits)

    monitors = [] if violations is None else [_protocol_monitor(dut.o_stream, violations)]
    total = sum(job["t_out"] for job in jobs)
    _simulate(dut, [producer, consumer], monitors=monitors, max_cycles=40 * (total + len(jobs)))
    assert len(got) == len(jobs), "the unit stopped emitting"
    return got


@st.composite
def sa_job(draw, acc_bits, threshold_bits, max_t):
    t_out = draw(st.one_of(st.just(1), st.just(max_t), st.integers(1, max_t)))
    d = draw(st.integers(1, 2**threshold_bits - 1))
    levels = draw(st.one_of(
        st.integers(0, 2**t_out - 2) if t_out > 1 else st.just(0),   # the clip is active
        st.just(2**t_out - 1),                                       # full range, no clip
        st.integers(0, 2**max_t - 1),                                # anything the field holds
    ))
    lo, hi = -(2 ** (acc_bits - 1)), 2 ** (acc_bits - 1) - 1
    u0 = draw(st.one_of(
        st.integers(lo, hi),
        st.sampled_from([lo, -1, 0, hi]),                               # negative, saturating
        st.integers(-2, 2).map(lambda e: (levels + 1) * d + e),         # at the clip boundary
        st.integers(0, 2**t_out).map(lambda k: k * d - 1),              # at each level's edge
    ).map(lambda u: min(max(u, lo), hi)))
    return {"u0": u0, "threshold": d, "t_out": t_out, "levels": levels}


@st.composite
def sa_cases(draw):
    acc_bits = draw(st.integers(2, 14))
    threshold_bits = draw(st.integers(1, 6))
    max_t = draw(st.integers(1, 6))
    jobs = draw(st.lists(sa_job(acc_bits, threshold_bits, max_t), min_size=1, max_size=6))
    seed = draw(st.none() | st.integers(0, 2**16))
    return (acc_bits, threshold_bits, max_t), jobs, seed


@settings(max_examples=60, deadline=None)
@given(case=sa_cases())
def test_sa_fire_equals_golden(case):
    (acc_bits, threshold_bits, max_t), jobs, seed = case
    dut = SuccessiveApproximationFire(acc_bits=acc_bits, threshold_bits=threshold_bits,
                                      max_t=max_t)
    rng = None if seed is None else random.Random(seed)
    got = run_sa(dut, jobs, rng=rng)
    for job, bits in zip(jobs, got, strict=True):
        assert bits == golden_sa_bits(job["u0"], job["threshold"], job["t_out"], job["levels"]), job


@pytest.mark.parametrize("u0, d, t_out, levels, bits", [
    (100, 7, 4, 15, [1, 1, 1, 0]),     # floor(100 / 7) = 14
    (77, 7, 4, 10, [1, 0, 1, 0]),      # 11 >= L + 1: clipped to 10
    (76, 7, 4, 10, [1, 0, 1, 0]),      # 10 exactly
    (69, 7, 4, 10, [1, 0, 0, 1]),      # 9
    (-5, 7, 4, 10, [0, 0, 0, 0]),      # negative: all zeros
    (2047, 7, 4, 15, [1, 1, 1, 1]),    # saturates at 2^T - 1
    (2047, 3, 5, 16, [1, 0, 0, 0, 0]),  # L = 16 needs T = 5; clipped from 31
    (16 * 3, 3, 5, 16, [1, 0, 0, 0, 0]),
    (7, 7, 1, 1, [1]),                 # T = 1
    (7, 7, 1, 0, [0]),                 # L = 0 < 2^T - 1: the clip emits 0
    (100, 7, 2, 5, [1, 1]),            # L >= 2^T: no clip, saturates at 3
])
def test_sa_fire_table(u0, d, t_out, levels, bits):
    assert golden_sa_bits(u0, d, t_out, levels) == bits
    dut = SuccessiveApproximationFire(acc_bits=12, threshold_bits=3, max_t=5)
    assert run_sa(dut, [{"u0": u0, "threshold": d, "t_out": t_out, "levels": levels}]) == [bits]


def test_sa_fire_back_pressure():
    """o_stream.ready low on most cycles: every bit exactly once, the payload held meanwhile."""
    rng = random.Random(1)
    dut = SuccessiveApproximationFire(acc_bits=10, threshold_bits=4, max_t=5)
    jobs = []
    for _ in range(40):
        t_out = rng.randint(1, 5)
        jobs.append({"u0": rng.randint(-512, 511), "threshold": rng.randint(1, 15),
                     "t_out": t_out, "levels": rng.randint(0, 2**t_out - 1)})
    violations = []
    got = run_sa(dut, jobs, rng=rng, p_in=0.2, p_out=0.7, violations=violations)
    assert violations == []
    assert got == [golden_sa_bits(j["u0"], j["threshold"], j["t_out"], j["levels"])
                   for j in jobs]


def test_sa_fire_cycles_per_job():
    """Back-to-back jobs are accepted every cycles(t_out) cycles; bits follow one per cycle."""
    dut = SuccessiveApproximationFire(acc_bits=10, threshold_bits=4, max_t=6)
    t_outs = [1, 6, 3, 1, 1, 4, 2, 6]
    jobs = [{"u0": 37 * i - 100, "threshold": 5, "t_out": t, "levels": 2**t - 1}
            for i, t in enumerate(t_outs)]
    accepts, bits = [], []
    monitor = _transfer_monitor(dut, accepts, bits)

    got = []

    async def consumer(ctx):
        for job in jobs:
            got.append([(await stream_get(ctx, dut.o_stream)).spike for _ in range(job["t_out"])])

    async def producer(ctx):
        for job in jobs:
            await stream_put(ctx, dut.i_stream, job)

    _simulate(dut, [producer, consumer], monitors=[monitor], max_cycles=200)
    assert got == [golden_sa_bits(j["u0"], 5, j["t_out"], j["levels"]) for j in jobs]
    gaps = [b - a for a, b in zip(accepts, accepts[1:], strict=False)]
    assert gaps == [dut.cycles(t) for t in t_outs[:-1]]
    assert bits[0] == accepts[0] + 1                      # latency 1
    assert bits == list(range(bits[0], bits[0] + sum(t_outs)))   # no idle cycle anywhere
    assert sum(dut.cycles(t) for t in t_outs) == len(bits)


# ---------------------------------------------------------------------------------------------
# IntegrateFire

IF_PARAMS = {"acc_bits": 16, "threshold_bits": 10, "bias_bits": 8, "v_init_bits": 10}


def golden_if(neuron) -> tuple[list[int], list[int]]:
    spikes, potentials, _, _ = integrate_and_fire(
        torch.tensor([neuron["adds"]], dtype=torch.int64),
        bias=torch.tensor([neuron["bias"]]), threshold=torch.tensor([neuron["threshold"]]),
        v_init=torch.tensor([neuron["v_init"]]), tau=neuron["tau"])
    return spikes[0].tolist(), potentials[0].tolist()


def run_if(dut, neurons, *, rng=None, p_in=0.3, p_out=0.5, violations=None):
    """Run each neuron's steps through ``dut``; return (spikes, potentials) per neuron."""
    got = []
    stalls_in, stalls_out = _stalls(rng, p_in), _stalls(rng, p_out)

    async def producer(ctx):
        for neuron in neurons:
            steps = len(neuron["adds"])
            for i, add in enumerate(neuron["adds"]):
                for port in ("bias", "threshold", "v_init", "tau"):
                    ctx.set(getattr(dut, port), neuron[port])
                await stream_put(ctx, dut.i_stream,
                                 {"add": add, "first": i == 0, "last": i == steps - 1},
                                 gap=next(stalls_in))

    async def consumer(ctx):
        for neuron in neurons:
            spikes, potentials = [], []
            steps = len(neuron["adds"])
            for i in range(steps):
                payload = await stream_get(ctx, dut.o_stream, stall=next(stalls_out))
                spikes.append(payload.spike)
                potentials.append(payload.potential)
                assert payload.last == (i == steps - 1)
            got.append((spikes, potentials))

    monitors = [] if violations is None else [_protocol_monitor(dut.o_stream, violations)]
    total = sum(len(n["adds"]) for n in neurons)
    _simulate(dut, [producer, consumer], monitors=monitors, max_cycles=40 * total + 10)
    assert len(got) == len(neurons), "the unit stopped emitting"
    return got


@st.composite
def if_neuron(draw, max_tau):
    steps = draw(st.integers(1, 12))
    return {
        "adds": draw(st.lists(st.integers(-300, 300), min_size=steps, max_size=steps)),
        "bias": draw(st.integers(-128, 127)),
        "threshold": draw(st.integers(1, 1023)),
        "v_init": draw(st.integers(-512, 511)),
        "tau": 0 if not max_tau else draw(st.one_of(
            st.just(0),                                         # no SRP
            st.integers(1, max_tau),                            # may outlast the steps
            st.integers(1, max(1, min(max_tau, steps - 1))),    # a probe, then the mask
        )),
    }


@st.composite
def if_cases(draw):
    max_tau = draw(st.sampled_from([0, 1, 4, 7]))
    neurons = draw(st.lists(if_neuron(max_tau), min_size=1, max_size=4))
    seed = draw(st.none() | st.integers(0, 2**16))
    return max_tau, neurons, seed


@settings(max_examples=50, deadline=None)
@given(case=if_cases())
def test_integrate_fire_equals_golden(case):
    max_tau, neurons, seed = case
    dut = IntegrateFire(max_tau=max_tau, **IF_PARAMS)
    rng = None if seed is None else random.Random(seed)
    for neuron, got in zip(neurons, run_if(dut, neurons, rng=rng), strict=True):
        assert got == golden_if(neuron), neuron


def test_integrate_fire_srp_mask():
    """Negative after the probe: no spike again; exactly 0: kept; tau never reached: no mask."""
    neurons = [
        {"adds": [-50, -50, 40, 40, 40, 40], "bias": 0, "threshold": 30, "v_init": 15, "tau": 2},
        {"adds": [-15, 0, 40, 40, 40, 40], "bias": 0, "threshold": 30, "v_init": 15, "tau": 2},
        {"adds": [-50, 99], "bias": 0, "threshold": 30, "v_init": 15, "tau": 2},
    ]
    expected = [golden_if(n) for n in neurons]
    assert [spikes for spikes, _ in expected] == [[0] * 6, [0, 0, 1, 1, 1, 1], [0, 1]]
    dut = IntegrateFire(max_tau=2, **IF_PARAMS)
    assert run_if(dut, neurons) == expected


def test_integrate_fire_back_pressure():
    rng = random.Random(2)
    dut = IntegrateFire(max_tau=4, **IF_PARAMS)
    neurons = []
    for _ in range(12):
        steps = rng.randint(1, 10)
        neurons.append({"adds": [rng.randint(-300, 300) for _ in range(steps)],
                        "bias": rng.randint(-128, 127), "threshold": rng.randint(1, 1023),
                        "v_init": rng.randint(-512, 511), "tau": rng.randint(0, 4)})
    violations = []
    got = run_if(dut, neurons, rng=rng, p_in=0.2, p_out=0.7, violations=violations)
    assert violations == []
    assert got == [golden_if(n) for n in neurons]


def test_integrate_fire_cycles():
    """Steps stream at one per cycle; outputs follow one cycle later, one per cycle."""
    dut = IntegrateFire(max_tau=3, **IF_PARAMS)
    neurons = [{"adds": [100, -20, 55, 7, 300, 0, 12], "bias": 3, "threshold": 90, "v_init": 45,
                "tau": 3},
               {"adds": [10, 20, 30], "bias": -1, "threshold": 25, "v_init": 0, "tau": 0}]
    accepts, outs = [], []
    monitor = _transfer_monitor(dut, accepts, outs)

    got = run_if_with_monitor(dut, neurons, monitor)
    assert got == [golden_if(n) for n in neurons]
    total = sum(dut.cycles(len(n["adds"])) for n in neurons)
    assert accepts == list(range(accepts[0], accepts[0] + total))
    assert outs == [a + 1 for a in accepts]


def run_if_with_monitor(dut, neurons, monitor):
    got = []

    async def producer(ctx):
        for neuron in neurons:
            for i, add in enumerate(neuron["adds"]):
                for port in ("bias", "threshold", "v_init", "tau"):
                    ctx.set(getattr(dut, port), neuron[port])
                await stream_put(ctx, dut.i_stream, {"add": add, "first": i == 0,
                                                     "last": i == len(neuron["adds"]) - 1})

    async def consumer(ctx):
        for neuron in neurons:
            outs = [await stream_get(ctx, dut.o_stream) for _ in neuron["adds"]]
            got.append(([o.spike for o in outs], [o.potential for o in outs]))

    _simulate(dut, [producer, consumer], monitors=[monitor], max_cycles=100)
    return got


# ---------------------------------------------------------------------------------------------
# constructors, cost methods, Verilog


@pytest.mark.parametrize("kwargs, error, message", [
    ({"acc_bits": 0, "threshold_bits": 4, "max_t": 4}, ValueError,
     "acc_bits must be a positive integer, not 0"),
    ({"acc_bits": "16", "threshold_bits": 4, "max_t": 4}, TypeError,
     "acc_bits must be a positive integer, not '16'"),
    ({"acc_bits": 16, "threshold_bits": 4.0, "max_t": 4}, TypeError,
     "threshold_bits must be a positive integer, not 4.0"),
    ({"acc_bits": 16, "threshold_bits": 4, "max_t": True}, TypeError,
     "max_t must be a positive integer, not True"),
    ({"acc_bits": 16, "threshold_bits": 4, "max_t": -1}, ValueError,
     "max_t must be a positive integer, not -1"),
])
def test_sa_fire_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=f"^{message}$"):
        SuccessiveApproximationFire(**kwargs)


def test_sa_fire_arguments_are_keyword_only():
    with warnings.catch_warnings():
        # Amaranth's __new__ ran, __init__ refused the call: that half-built object (kept in a
        # reference cycle until the next collection) warns that it was never used
        warnings.simplefilter("ignore", UnusedElaboratable)
        with pytest.raises(TypeError):
            SuccessiveApproximationFire(16, 4, 4)
        gc.collect()


@pytest.mark.parametrize("kwargs, error, message", [
    ({"acc_bits": 16, "threshold_bits": 8, "max_tau": -1}, ValueError,
     "max_tau must be an integer >= 0, not -1"),
    ({"acc_bits": 16, "threshold_bits": 8, "max_tau": 2.5}, TypeError,
     "max_tau must be an integer >= 0, not 2.5"),
    ({"acc_bits": 16, "threshold_bits": 0, "max_tau": 2}, ValueError,
     "threshold_bits must be a positive integer, not 0"),
    ({"acc_bits": 16, "threshold_bits": 8, "max_tau": 2, "bias_bits": None, "v_init_bits": 0},
     ValueError, "v_init_bits must be a positive integer, not 0"),
])
def test_integrate_fire_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=f"^{message}$"):
        IntegrateFire(**kwargs)


def _elaborated(dut):
    """``dut`` after elaboration (a component built but never used makes Amaranth warn)."""
    Fragment.get(dut, None)
    return dut


def test_cycles_rejects_bad_lengths():
    dut = _elaborated(SuccessiveApproximationFire(acc_bits=8, threshold_bits=4, max_t=4))
    assert [dut.cycles(t) for t in (1, 2, 3, 4)] == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="t_out must be at most max_t = 4, not 5"):
        dut.cycles(5)
    with pytest.raises(ValueError, match="t_out must be a positive integer, not 0"):
        dut.cycles(0)
    assert _elaborated(IntegrateFire(acc_bits=8, threshold_bits=4, max_tau=0)).cycles(9) == 9


def test_parameters_are_read_only_properties():
    dut = _elaborated(SuccessiveApproximationFire(acc_bits=12, threshold_bits=5, max_t=4))
    assert (dut.acc_bits, dut.threshold_bits, dut.max_t) == (12, 5, 4)
    assert dut.job_layout.size == 12 + 5 + 3 + 4
    with pytest.raises(AttributeError):
        dut.acc_bits = 3
    lane = _elaborated(IntegrateFire(acc_bits=12, threshold_bits=5, max_tau=3))
    assert (lane.bias_bits, lane.v_init_bits, lane.max_tau) == (12, 12, 3)


@pytest.mark.parametrize("cls, kwargs, name", [
    (SuccessiveApproximationFire, {"acc_bits": 21, "threshold_bits": 8, "max_t": 6},
     "sa_fire_top"),
    (SuccessiveApproximationFire, {"acc_bits": 4, "threshold_bits": 1, "max_t": 1},
     "sa_fire_top"),
    (IntegrateFire, {"acc_bits": 21, "threshold_bits": 12, "max_tau": 8}, "if_top"),
    (IntegrateFire, {"acc_bits": 8, "threshold_bits": 4, "max_tau": 0}, "if_top"),
], ids=["sa", "sa-t1", "if", "if-no-srp"])
def test_converts_to_verilog(cls, kwargs, name):
    text = verilog.convert(cls(**kwargs), name=name, emit_src=False)
    assert f"module {name}" in text
    for port in ("i_stream__valid", "i_stream__ready", "i_stream__payload",
                 "o_stream__valid", "o_stream__ready", "o_stream__payload"):
        assert port in text
    assert " * " not in text   # no multiplier anywhere


# ------------------------------------------------------------------ the per-lane step units


def _settle(dut, inputs: dict, outputs: list[str]) -> dict:
    """Drive a combinational unit's inputs and read its outputs (amaranth.sim)."""
    from amaranth.sim import Simulator
    seen = {}

    async def bench(ctx):
        for name, value in inputs.items():
            ctx.set(getattr(dut, name), value)
        await ctx.delay(1e-9)
        seen.update({name: ctx.get(getattr(dut, name)) for name in outputs})

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()
    return seen


@settings(max_examples=60, deadline=None)
@given(u=st.integers(-128, 127), thr=st.integers(0, 255))
def test_approximation_step(u, thr):
    from bitspike.hw.neuron import ApproximationStep
    got = _settle(ApproximationStep(u_bits=9, thr_bits=8), {"u": u, "thr": thr},
                  ["fire", "u_next"])
    assert got == {"fire": int(u >= thr), "u_next": u - thr if u >= thr else u}


@settings(max_examples=80, deadline=None)
@given(v=st.integers(-40, 40), keep=st.booleans(), add=st.integers(-30, 30),
       bias=st.integers(-8, 7), theta=st.integers(1, 31), v0=st.integers(-8, 7),
       first=st.booleans(), probe=st.booleans(), enable=st.booleans())
def test_integrate_fire_step_equals_golden(v, keep, add, bias, theta, v0, first, probe, enable):
    """One step against bitspike.sw.golden.integrate_and_fire's rule."""
    from bitspike.hw.neuron import IntegrateFireStep
    dut = IntegrateFireStep(v_bits=9, add_bits=7, bias_bits=4, threshold_bits=5, v_init_bits=4)
    got = _settle(dut, {"v": v, "keep": keep, "add": add, "bias": bias, "threshold": theta,
                        "v_init": v0, "first": first, "probe_over": probe, "enable": enable},
                  ["potential", "spike", "v_next", "keep_next"])
    keep_next = True if first else (v >= 0 if probe else keep)
    potential = (v0 if first or probe else v) + add + bias
    fired = potential >= theta
    assert got == {"potential": potential, "spike": int(fired and keep_next and enable),
                   "v_next": potential - theta if fired else potential,
                   "keep_next": int(keep_next)}


def test_step_units_refuse_bad_widths():
    from bitspike.hw.neuron import ApproximationStep, IntegrateFireStep
    with pytest.raises(ValueError, match="u_bits must be a positive integer, not 0"):
        ApproximationStep(u_bits=0, thr_bits=3)
    with pytest.raises(TypeError, match="v_init_bits must be a positive integer"):
        IntegrateFireStep(v_bits=8, add_bits=4, bias_bits=4, threshold_bits=4, v_init_bits=2.0)
