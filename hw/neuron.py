"""Neuron units of the spiking layer engine.

:class:`ApproximationStep`, :class:`IntegrateFireStep`
    The per-lane arithmetic, combinational: one successive-approximation compare/subtract, and
    one integrate-and-fire step with reset by subtraction and SRP's mask. The engine's firing
    stage instantiates ``P`` of each (its lanes fire in lockstep); the stream units below use
    one each, so the arithmetic is written once.
:class:`SuccessiveApproximationFire`
    The bit-serial mode's deferred fire and reset: takes a neuron's potential ``u0 = acc + B``
    and emits its level ``clip(floor(u0 / D), 0, L)`` as ``t_out`` bits, most significant first.
:class:`IntegrateFire`
    The rate mode's integrate-and-fire neuron with reset by subtraction and the SRP mask.

Both compute exactly what :mod:`bitspike.sw.golden` computes
(:func:`~bitspike.sw.golden.successive_approximation` and
:func:`~bitspike.sw.golden.integrate_and_fire`), for every input that fits the declared widths;
sizing the widths so that nothing wraps is the converter's job (``Program.requirements()``).
"""

from contextlib import contextmanager

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["ApproximationStep", "IntegrateFire", "IntegrateFireStep",
           "SuccessiveApproximationFire"]


def _check_int(name: str, value, *, minimum: int) -> int:
    """``value`` as an int ``>= minimum``, or the clear error naming ``name``."""
    kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be {kind}, not {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be {kind}, not {value!r}")
    return value


@contextmanager
def _refusal(component):
    """Re-raise a constructor's argument error without Amaranth's "created but never used".

    Amaranth's ``__new__`` registers every elaboratable for that warning; a component whose
    constructor refused its arguments was never usable, so the warning would only bury the error.
    """
    try:
        yield
    except (TypeError, ValueError):
        component._MustUse__silence = True
        raise


class ApproximationStep(wiring.Component):
    """One successive-approximation step of one lane (combinational).

    ``fire = u >= thr``; ``u_next = u - thr`` when it fires, else ``u``. The caller loads
    ``thr = D << (T - 1)`` and shifts it right once per step: compare, subtract and shifts only.

    Parameters
    ----------
    u_bits : int
        Width of the signed remainder ``u``.
    thr_bits : int
        Width of the unsigned shifted threshold ``thr``.

    Members
    -------
    u : In(signed(u_bits))
    thr : In(unsigned(thr_bits))
    fire : Out(1)
    u_next : Out(signed(u_bits))
    """

    def __init__(self, *, u_bits: int, thr_bits: int):
        with _refusal(self):
            _check_int("u_bits", u_bits, minimum=1)
            _check_int("thr_bits", thr_bits, minimum=1)
        super().__init__({"u": In(signed(u_bits)), "thr": In(unsigned(thr_bits)),
                          "fire": Out(1), "u_next": Out(signed(u_bits))})

    def elaborate(self, platform):
        m = Module()
        m.d.comb += [self.fire.eq(self.u >= self.thr),
                     self.u_next.eq(Mux(self.fire, self.u - self.thr, self.u))]
        return m


class IntegrateFireStep(wiring.Component):
    """One integrate-and-fire step of one lane (combinational), as
    ``bitspike.sw.golden.integrate_and_fire`` defines it::

        base = v_init if first or probe_over else v      # (re)prime
        keep' = 1 if first, (v >= 0) if probe_over, else keep   # SRP's mask at step tau
        potential = base + add + bias
        s = potential >= threshold;  v_next = potential - s threshold
        spike = s & keep' & enable

    ``probe_over`` is ``tau > 0 and step == tau`` (the caller counts steps); ``enable`` lets the
    engine silence lanes beyond a layer's last channel.

    Parameters
    ----------
    v_bits : int
        Width of the signed potential ``v`` (and ``v_next``, ``potential``).
    add_bits, bias_bits, threshold_bits, v_init_bits : int
        Widths of the signed synaptic sum, signed bias, unsigned threshold, signed ``V0``.
    """

    def __init__(self, *, v_bits: int, add_bits: int, bias_bits: int, threshold_bits: int,
                 v_init_bits: int):
        with _refusal(self):
            for name, value in (("v_bits", v_bits), ("add_bits", add_bits),
                                ("bias_bits", bias_bits), ("threshold_bits", threshold_bits),
                                ("v_init_bits", v_init_bits)):
                _check_int(name, value, minimum=1)
        super().__init__({
            "v": In(signed(v_bits)), "keep": In(1), "add": In(signed(add_bits)),
            "bias": In(signed(bias_bits)), "threshold": In(unsigned(threshold_bits)),
            "v_init": In(signed(v_init_bits)), "first": In(1), "probe_over": In(1),
            "enable": In(1),
            "potential": Out(signed(v_bits)), "spike": Out(1), "v_next": Out(signed(v_bits)),
            "keep_next": Out(1)})

    def elaborate(self, platform):
        m = Module()
        fire = Signal()
        m.d.comb += [
            self.keep_next.eq(Mux(self.first, 1, Mux(self.probe_over, self.v >= 0, self.keep))),
            self.potential.eq(Mux(self.first | self.probe_over, self.v_init, self.v)
                              + self.add + self.bias),
            fire.eq(self.potential >= self.threshold),
            self.v_next.eq(Mux(fire, self.potential - self.threshold, self.potential)),
            self.spike.eq(fire & self.keep_next & self.enable),
        ]
        return m


class _Order(enum.Enum, shape=2):
    """The emitted level ``k`` against the clip level ``L``, over the bits emitted so far."""

    EQUAL = 0   # the bits of k and L agree so far: emit k & L
    BELOW = 1   # k < L is decided: emit k's bits
    ABOVE = 2   # k > L is decided: emit L's bits (the clip)


class SuccessiveApproximationFire(wiring.Component):
    """Deferred fire and reset by successive approximation, for one neuron lane.

    A job is one neuron's potential ``u0 = acc + B``, its threshold step ``D``, the number of
    output bits ``t_out`` and the clip level ``L``. The unit emits the ``t_out`` bits of
    ``min(clip(floor(u0 / D), 0, 2^t_out - 1), L)``, most significant first, one per transfer on
    ``o_stream``; ``last`` marks the final bit. This is bit for bit
    ``bitspike.sw.golden.successive_approximation(u0, D, t_out, L)``.

    Per bit ``t = 1..t_out``: ``thr = D << (t_out - t)``, ``s = u >= thr``, ``u -= s thr``. The
    threshold register is loaded with ``D << (t_out - 1)`` and shifted right one place per bit:
    only compare, subtract and shifts, no multiplier.

    **The clip at L, without a multiplier.** The golden model emits ``L``'s bits when
    ``L < 2^T - 1`` and ``u0 >= (L + 1) D``. Since ``(L + 1) D`` is a multiple of ``D``,
    ``u0 >= (L + 1) D`` holds exactly when ``floor(u0 / D) >= L + 1``, and (as ``L + 1 <= 2^T - 1``
    in that case) exactly when the saturated SA level ``k`` exceeds ``L``. So the output is
    ``min(k, L)`` (also when ``L >= 2^T - 1``, where ``min(k, L) = k``). A minimum of two numbers
    whose bits both arrive most significant first can be emitted online with no delay: a
    two-bit state remembers whether ``k`` and ``L`` agree so far, ``k < L`` or ``k > L``; while
    they agree the output bit is ``k & L``, after ``k < L`` it is ``k``'s bit, after ``k > L``
    it is ``L``'s bit. The saturation test thus costs a few gates per lane instead of a
    multiplier, an extra SA step, or a ``(L + 1) D`` field the layer descriptor would have to
    carry (and whose width the accumulator would have to hold). The SA itself keeps running on
    ``k`` after the clip has been decided; its remaining bits are simply not used.

    Parameters
    ----------
    acc_bits : int
        Width of the signed potential ``u0`` (the accumulator width, ``acc_bits`` of
        ``Program.requirements()``).
    threshold_bits : int
        Width of the unsigned threshold step ``D``.
    max_t : int
        Largest number of output bits per job.

    Members
    -------
    i_stream : ``In(stream.Signature(job_layout))``
        Jobs. ``job_layout`` is a :class:`~amaranth.lib.data.StructLayout`:
        ``u0`` ``signed(acc_bits)``, ``threshold`` (``D``) ``unsigned(threshold_bits)``,
        ``t_out`` ``range(max_t + 1)`` (must be ``1..max_t``; other values give unspecified
        bits), ``levels`` (``L``) ``unsigned(max_t)`` (any value; clips only when
        ``L < 2^t_out - 1``, as the golden model does).
    o_stream : ``Out(stream.Signature(bit_layout))``
        Output bits. ``bit_layout``: ``spike`` ``unsigned(1)`` (the bit), ``last``
        ``unsigned(1)`` (set on the job's final bit). ``valid`` is registered and never depends
        on ``ready``; the payload holds while ``ready`` is low.

    Cost
    ----
    :meth:`cycles` ``(t_out) = t_out`` cycles per job: one bit per cycle while ``o_stream.ready``
    is high. The next job is accepted in the same cycle as the last bit's transfer (so
    ``i_stream.ready`` depends combinationally on ``o_stream.ready``); an accepted job's first
    bit is offered in the following cycle (latency 1). Logic: one comparator and one subtractor
    of about ``max(acc_bits, threshold_bits + max_t)`` bits, a ``max_t``-way shifter used once
    per job; registers ``u`` (``acc_bits``), ``thr`` (``threshold_bits + max_t - 1``), ``L``
    (``max_t``), a bit counter and three state bits.

    Raises
    ------
    TypeError
        If a parameter is not an integer.
    ValueError
        If a parameter is not positive.
    """

    def __init__(self, *, acc_bits: int, threshold_bits: int, max_t: int):
        with _refusal(self):
            self._acc_bits = _check_int("acc_bits", acc_bits, minimum=1)
            self._threshold_bits = _check_int("threshold_bits", threshold_bits, minimum=1)
            self._max_t = _check_int("max_t", max_t, minimum=1)
        self._job_layout = data.StructLayout({
            "u0": signed(acc_bits),
            "threshold": unsigned(threshold_bits),
            "t_out": range(max_t + 1),
            "levels": unsigned(max_t),
        })
        self._bit_layout = data.StructLayout({"spike": 1, "last": 1})
        super().__init__({
            "i_stream": In(stream.Signature(self._job_layout)),
            "o_stream": Out(stream.Signature(self._bit_layout)),
        })

    @property
    def acc_bits(self) -> int:
        return self._acc_bits

    @property
    def threshold_bits(self) -> int:
        return self._threshold_bits

    @property
    def max_t(self) -> int:
        return self._max_t

    @property
    def job_layout(self) -> data.StructLayout:
        """Payload layout of ``i_stream``."""
        return self._job_layout

    @property
    def bit_layout(self) -> data.StructLayout:
        """Payload layout of ``o_stream``."""
        return self._bit_layout

    def cycles(self, t_out: int) -> int:
        """Cycles one job of ``t_out`` output bits occupies the unit (no back-pressure).

        Back-to-back jobs are accepted every ``cycles(t_out)`` cycles; each job's first bit
        comes one cycle after its acceptance.
        """
        t_out = _check_int("t_out", t_out, minimum=1)
        if t_out > self._max_t:
            raise ValueError(f"t_out must be at most max_t = {self._max_t}, not {t_out!r}")
        return t_out

    def elaborate(self, platform):
        m = Module()
        job = self.i_stream.payload
        thr_width = self._threshold_bits + self._max_t - 1

        u = Signal(signed(self._acc_bits))
        thr = Signal(thr_width)              # D << (bits still to emit - 1)
        levels = Signal(self._max_t)
        index = Signal(range(self._max_t))   # position of the current bit, t_out - 1 down to 0
        order = Signal(_Order)

        m.submodules.step = step = ApproximationStep(u_bits=self._acc_bits, thr_bits=thr_width)
        k_bit = Signal()                     # the unclipped SA bit: u >= D << index
        l_bit = Signal()
        out_bit = Signal()
        last = Signal()
        m.d.comb += [
            step.u.eq(u), step.thr.eq(thr),
            k_bit.eq(step.fire),
            l_bit.eq(levels.bit_select(index, 1)),
            last.eq(index == 0),
        ]
        with m.Switch(order):
            with m.Case(_Order.BELOW):
                m.d.comb += out_bit.eq(k_bit)
            with m.Case(_Order.ABOVE):
                m.d.comb += out_bit.eq(l_bit)
            with m.Default():
                m.d.comb += out_bit.eq(k_bit & l_bit)
        m.d.comb += [
            self.o_stream.payload.spike.eq(out_bit),
            self.o_stream.payload.last.eq(last),
        ]

        bit_taken = Signal()
        with m.FSM():
            with m.State("Idle"):
                m.d.comb += self.i_stream.ready.eq(1)
                with m.If(self.i_stream.valid):
                    m.next = "Emit"
            with m.State("Emit"):
                m.d.comb += [
                    self.o_stream.valid.eq(1),
                    bit_taken.eq(self.o_stream.ready),
                    # accept the next job in the cycle the last bit goes: no idle cycle between
                    self.i_stream.ready.eq(last & self.o_stream.ready),
                ]
                with m.If(bit_taken & last & ~self.i_stream.valid):
                    m.next = "Idle"

        with m.If(bit_taken):
            m.d.sync += [
                u.eq(step.u_next),
                thr.eq(thr >> 1),
                index.eq(index - 1),
            ]
            with m.If(order == _Order.EQUAL):
                with m.If(k_bit & ~l_bit):
                    m.d.sync += order.eq(_Order.ABOVE)
                with m.Elif(~k_bit & l_bit):
                    m.d.sync += order.eq(_Order.BELOW)

        # a new job (later statements win over the bit update above)
        with m.If(self.i_stream.valid & self.i_stream.ready):
            first_index = Signal(range(self._max_t))
            m.d.comb += first_index.eq(job.t_out - 1)
            m.d.sync += [
                u.eq(job.u0),
                thr.eq((job.threshold << first_index)[:thr_width]),
                levels.eq(job.levels),
                index.eq(first_index),
            ]
            # L >= 2^t_out exceeds every t_out-bit k: k is emitted unclipped
            with m.If((job.levels >> job.t_out) != 0):
                m.d.sync += order.eq(_Order.BELOW)
            with m.Else():
                m.d.sync += order.eq(_Order.EQUAL)
        return m


class IntegrateFire(wiring.Component):
    """Integrate-and-fire with reset by subtraction and the SRP mask, for one neuron lane.

    One transfer on ``i_stream`` is one time step of one neuron: its synaptic sum ``add``. The
    unit computes, as ``bitspike.sw.golden.integrate_and_fire`` does::

        at the neuron's first step (payload.first):  v = v_init, keep = 1, step = 0
        if tau > 0 and step == tau:  keep = v >= 0;  v = v_init       # SRP: probe over, re-prime
        v = v + add + bias;  potential = v
        s = v >= threshold;  v = v - s threshold
        out: spike = s & keep

    and sends one ``o_stream`` transfer per step. With ``tau = 0`` (or more steps than ``tau``
    never reached) there is no mask. The per-neuron constants ``bias``, ``threshold``,
    ``v_init`` and ``tau`` are plain inputs, read at every step's transfer: the engine holds them
    (from its parameter memories) while the neuron's steps run.

    Parameters
    ----------
    acc_bits : int
        Width of the signed membrane potential ``v`` and of ``add`` (``acc_bits`` of
        ``Program.requirements()``, which bounds the potential over all steps).
    threshold_bits : int
        Width of the unsigned threshold ``Theta``.
    max_tau : int
        Largest SRP probe length ``tau`` (0: no SRP; the ``tau`` port is then zero-width).
    bias_bits : int, optional
        Width of the signed per-step bias; ``acc_bits`` when omitted.
    v_init_bits : int, optional
        Width of the signed initial potential; ``acc_bits`` when omitted.

    Members
    -------
    i_stream : ``In(stream.Signature(step_layout))``
        Steps. ``step_layout`` is a :class:`~amaranth.lib.data.StructLayout`: ``add``
        ``signed(acc_bits)``, ``first`` ``unsigned(1)`` (the neuron's first step: restart),
        ``last`` ``unsigned(1)`` (passed through to ``o_stream``).
    o_stream : ``Out(stream.Signature(spike_layout))``
        One transfer per step. ``spike_layout``: ``spike`` ``unsigned(1)`` (masked by SRP),
        ``last`` ``unsigned(1)``, ``potential`` ``signed(acc_bits)`` (``v`` after integration,
        before firing: the golden model's trace; it costs nothing when left unconnected).
    bias : ``In(signed(bias_bits))``
    threshold : ``In(unsigned(threshold_bits))``
    v_init : ``In(signed(v_init_bits))``
    tau : ``In(range(max_tau + 1))``

    Cost
    ----
    :meth:`cycles` ``(steps) = steps``: one step per cycle while ``o_stream.ready`` is high, one
    cycle of latency (the output is a register stage; ``i_stream.ready`` is
    ``~o_stream.valid | o_stream.ready``). Logic: a three-input adder, a comparator and a
    subtractor of about ``acc_bits`` bits; registers ``v`` and ``potential`` (``acc_bits``
    each), the step counter, ``keep`` and three output bits.

    Raises
    ------
    TypeError
        If a parameter is not an integer.
    ValueError
        If a width is not positive or ``max_tau`` is negative.
    """

    def __init__(self, *, acc_bits: int, threshold_bits: int, max_tau: int,
                 bias_bits: int | None = None, v_init_bits: int | None = None):
        with _refusal(self):
            self._acc_bits = _check_int("acc_bits", acc_bits, minimum=1)
            self._threshold_bits = _check_int("threshold_bits", threshold_bits, minimum=1)
            self._max_tau = _check_int("max_tau", max_tau, minimum=0)
            self._bias_bits = acc_bits if bias_bits is None else _check_int(
                "bias_bits", bias_bits, minimum=1)
            self._v_init_bits = acc_bits if v_init_bits is None else _check_int(
                "v_init_bits", v_init_bits, minimum=1)
        self._step_layout = data.StructLayout({
            "add": signed(acc_bits),
            "first": 1,
            "last": 1,
        })
        self._spike_layout = data.StructLayout({
            "spike": 1,
            "last": 1,
            "potential": signed(acc_bits),
        })
        super().__init__({
            "i_stream": In(stream.Signature(self._step_layout)),
            "o_stream": Out(stream.Signature(self._spike_layout)),
            "bias": In(signed(self._bias_bits)),
            "threshold": In(unsigned(threshold_bits)),
            "v_init": In(signed(self._v_init_bits)),
            "tau": In(range(max_tau + 1)),
        })

    @property
    def acc_bits(self) -> int:
        return self._acc_bits

    @property
    def threshold_bits(self) -> int:
        return self._threshold_bits

    @property
    def max_tau(self) -> int:
        return self._max_tau

    @property
    def bias_bits(self) -> int:
        return self._bias_bits

    @property
    def v_init_bits(self) -> int:
        return self._v_init_bits

    @property
    def step_layout(self) -> data.StructLayout:
        """Payload layout of ``i_stream``."""
        return self._step_layout

    @property
    def spike_layout(self) -> data.StructLayout:
        """Payload layout of ``o_stream``."""
        return self._spike_layout

    def cycles(self, steps: int) -> int:
        """Cycles ``steps`` time steps of one neuron occupy the unit (no back-pressure)."""
        return _check_int("steps", steps, minimum=1)

    def elaborate(self, platform):
        m = Module()
        step_in = self.i_stream.payload
        out = self.o_stream.payload

        v = Signal(signed(self._acc_bits))   # after the reset of the previous step
        keep = Signal()
        # steps since the neuron's first one, saturating above max_tau so it never wraps to tau
        step = Signal(range(self._max_tau + 2))
        index = Signal.like(step)            # this step's index, 0 at the first step

        take = Signal()
        m.d.comb += [
            self.i_stream.ready.eq(~self.o_stream.valid | self.o_stream.ready),
            take.eq(self.i_stream.valid & self.i_stream.ready),
            index.eq(Mux(step_in.first, 0, step)),
        ]

        m.submodules.unit = unit = IntegrateFireStep(
            v_bits=max(self._acc_bits, self._v_init_bits, self._bias_bits) + 2,
            add_bits=self._acc_bits, bias_bits=self._bias_bits,
            threshold_bits=self._threshold_bits, v_init_bits=self._v_init_bits)
        m.d.comb += [
            unit.v.eq(v), unit.keep.eq(keep), unit.add.eq(step_in.add),
            unit.bias.eq(self.bias), unit.threshold.eq(self.threshold),
            unit.v_init.eq(self.v_init), unit.first.eq(step_in.first),
            unit.probe_over.eq((self.tau != 0) & (index == self.tau)), unit.enable.eq(1),
        ]

        with m.If(take):
            m.d.sync += [
                v.eq(unit.v_next),
                keep.eq(unit.keep_next),
                step.eq(Mux(index == self._max_tau + 1, index, index + 1)),
                self.o_stream.valid.eq(1),
                out.spike.eq(unit.spike),
                out.last.eq(step_in.last),
                out.potential.eq(unit.potential),
            ]
        with m.Elif(self.o_stream.ready):
            m.d.sync += self.o_stream.valid.eq(0)
        return m

