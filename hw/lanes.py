"""The engine's accumulate datapath: ``P`` lanes of signed accumulators driven by one command.

A group of ``P`` output neurons keeps its accumulators here while the inputs of all time steps
stream past (output-stationary). Bit-serial Horner accumulation is ``CLEAR``, then per input time
step one ``SHIFT`` followed by one ``ADD`` per active input, then ``ADD_BIAS`` (``u0 = acc + B``);
a rate-mode step is ``ADD`` per active input and ``ADD_BIAS``. The engine uses the fused form that
costs one cycle per event and nothing per plane: ``LOAD`` for a segment's first event, then
``SHIFT_ADD`` with the number of planes crossed since the previous event (``acc = (acc << s) +
w``); the bias and the trailing shift are applied where the potential is handed to the firing
stage. There is no multiplier: a weight
is only ever added, and the input bit planes' place values come from the left shifts.
"""

# No ``from __future__ import annotations`` here: wiring.Component reads real annotations.

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, enum, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["LaneCommand", "AccumulateLanes", "AccumulateLanesModel"]


class LaneCommand(enum.Enum, shape=3):
    """What every lane does in one cycle."""

    NOP = 0  #: keep the accumulators
    CLEAR = 1  #: ``acc[p] = 0``
    SHIFT = 2  #: ``acc[p] <<= 1``: the bit-serial time-step boundary (Horner)
    ADD = 3  #: ``acc[p] += weights[p]``, the sign-extended weight of lane ``p``
    ADD_BIAS = 4  #: ``acc[p] += bias[p]``
    LOAD = 5  #: ``acc[p] = weights[p]``: the first event of a segment (no clear cycle)
    SHIFT_ADD = 6  #: ``acc[p] = (acc[p] << shift) + weights[p]``: Horner across ``shift``
    #: plane boundaries and the add of the next event in one cycle (``shift = 0``: plain add)


def _positive(name, value, low):
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        what = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise TypeError(f"{name} must be {what}, not {value!r}")
    return value


class AccumulateLanes(wiring.Component):
    """``P`` signed accumulators; one command for all lanes per cycle.

    Cost: one accumulate per lane per cycle (an ``acc_bits``-wide adder per lane, no
    multiplier), plus ``lanes * acc_bits`` register bits and one flag bit.

    The command and its operands are sampled in the same cycle and the result appears in ``acc``
    on the next one. The weight operand is laid out like a row of the engine's weight memory
    (:func:`bitspike.hw.config.pack_weights`: lane ``p`` in bits ``p W .. p W + W - 1``), so the
    sequencer drives ``weights`` from the memory's read port data directly
    (``m.d.comb += lanes.weights.eq(read_port.data)``) and issues ``ADD`` one cycle after the
    address of a synchronous read port (``cmd`` from a register that delays it by one).

    Parameters
    ----------
    lanes : int
        ``P``, the number of lanes (>= 1).
    acc_bits : int
        Width of each signed accumulator (>= 1).
    weight_bits : int
        Width of each signed weight word (>= 2).
    bias_bits : int
        Width of each signed bias word (>= 1).
    max_shift : int
        The largest ``SHIFT_ADD`` shift (>= 1; the engine's ``max_t``).

    Members
    -------
    cmd : In(LaneCommand)
        The command of this cycle.
    shift : In(range(max_shift + 1))
        The left shift of ``SHIFT_ADD``.
    weights : In(ArrayLayout(signed(weight_bits), lanes))
        The ``P`` weights ``ADD`` adds, lane 0 in the low bits.
    bias : In(ArrayLayout(signed(bias_bits), lanes))
        The ``P`` biases ``ADD_BIAS`` adds, lane 0 in the low bits.
    acc : Out(ArrayLayout(signed(acc_bits), lanes))
        The accumulators (registers; reset to 0).
    next : Out(ArrayLayout(signed(acc_bits), lanes))
        What ``acc`` becomes at the clock edge (combinational): the engine hands a finished
        segment's sum to the firing stage from here in the cycle of its last add.
    overflow : Out(1)
        Sticky: set from the cycle after any lane's exact result of ``SHIFT``, ``ADD`` or
        ``ADD_BIAS`` falls outside ``-2**(acc_bits-1) .. 2**(acc_bits-1) - 1`` (the register
        then keeps the result's low ``acc_bits`` bits, two's complement); cleared only by
        reset. A Program that fits the engine (``EngineConfig.check_fits``) never sets it.

    Raises
    ------
    TypeError
        A parameter that is not an integer in its range.
    """

    def __init__(self, *, lanes: int, acc_bits: int, weight_bits: int, bias_bits: int,
                 max_shift: int = 1):
        try:
            self._max_shift = _positive("max_shift", max_shift, 1)
            self._lanes = _positive("lanes", lanes, 1)
            self._acc_bits = _positive("acc_bits", acc_bits, 1)
            self._weight_bits = _positive("weight_bits", weight_bits, 2)
            self._bias_bits = _positive("bias_bits", bias_bits, 1)
        except TypeError:
            # an object that failed to construct should not also warn "created but never used"
            self._MustUse__silence = True
            raise
        super().__init__({
            "cmd": In(LaneCommand),
            "shift": In(range(max_shift + 1)),
            "weights": In(data.ArrayLayout(signed(weight_bits), lanes)),
            "bias": In(data.ArrayLayout(signed(bias_bits), lanes)),
            "acc": Out(data.ArrayLayout(signed(acc_bits), lanes)),
            "next": Out(data.ArrayLayout(signed(acc_bits), lanes)),
            "overflow": Out(1),
        })

    @classmethod
    def for_config(cls, config) -> "AccumulateLanes":
        """The lanes of an :class:`~bitspike.hw.config.EngineConfig`."""
        return cls(lanes=config.lanes, acc_bits=config.acc_bits,
                   weight_bits=config.weight_bits, bias_bits=config.bias_bits,
                   max_shift=config.max_t)

    @property
    def lanes(self) -> int:
        return self._lanes

    @property
    def max_shift(self) -> int:
        return self._max_shift

    @property
    def acc_bits(self) -> int:
        return self._acc_bits

    @property
    def weight_bits(self) -> int:
        return self._weight_bits

    @property
    def bias_bits(self) -> int:
        return self._bias_bits

    def elaborate(self, platform):
        m = Module()
        # wide enough for every exact result: acc << shift (+ weight), acc + bias
        wide = max(self._acc_bits + self._max_shift, self._weight_bits, self._bias_bits) + 1
        lo, hi = -(1 << (self._acc_bits - 1)), (1 << (self._acc_bits - 1)) - 1
        overflows = []
        for p in range(self._lanes):
            acc = self.acc[p]
            exact = Signal(signed(wide), name=f"exact{p}")
            write = Signal(name=f"write{p}")
            with m.Switch(self.cmd):
                with m.Case(LaneCommand.CLEAR):
                    m.d.comb += write.eq(1)  # exact = 0
                with m.Case(LaneCommand.SHIFT):
                    m.d.comb += [exact.eq(acc << 1), write.eq(1)]
                with m.Case(LaneCommand.ADD):
                    m.d.comb += [exact.eq(acc + self.weights[p]), write.eq(1)]
                with m.Case(LaneCommand.ADD_BIAS):
                    m.d.comb += [exact.eq(acc + self.bias[p]), write.eq(1)]
                with m.Case(LaneCommand.LOAD):
                    m.d.comb += [exact.eq(self.weights[p]), write.eq(1)]
                with m.Case(LaneCommand.SHIFT_ADD):
                    m.d.comb += [exact.eq((acc << self.shift) + self.weights[p]), write.eq(1)]
            m.d.comb += self.next[p].eq(Mux(write, exact[:self._acc_bits], acc))
            with m.If(write):
                m.d.sync += acc.eq(exact[:self._acc_bits])
            overflows.append(write & ((exact < lo) | (exact > hi)))
        any_overflow = overflows[0]
        for flag in overflows[1:]:
            any_overflow = any_overflow | flag
        with m.If(any_overflow):
            m.d.sync += self.overflow.eq(1)
        return m


class AccumulateLanesModel:
    """Python reference of :class:`AccumulateLanes`, cycle for cycle, in unbounded integers.

    ``step(cmd, weights, bias, shift)`` applies one command (``weights`` and ``bias`` are
    sequences of ``lanes`` integers) and returns the accumulators the hardware shows after the
    clock edge.
    """

    def __init__(self, *, lanes: int, acc_bits: int):
        self.lanes = _positive("lanes", lanes, 1)
        self.acc_bits = _positive("acc_bits", acc_bits, 1)
        self.acc = [0] * lanes
        self.overflow = False

    def _wrap(self, v: int) -> int:
        half = 1 << (self.acc_bits - 1)
        if not -half <= v < half:
            self.overflow = True
        return ((v + half) % (2 * half)) - half

    def step(self, cmd: LaneCommand, weights=None, bias=None, shift: int = 0) -> list[int]:
        cmd = LaneCommand(cmd)
        if cmd == LaneCommand.CLEAR:
            self.acc = [0] * self.lanes
        elif cmd == LaneCommand.SHIFT:
            self.acc = [self._wrap(a * 2) for a in self.acc]
        elif cmd == LaneCommand.ADD:
            self.acc = [self._wrap(a + int(w)) for a, w in zip(self.acc, weights, strict=True)]
        elif cmd == LaneCommand.ADD_BIAS:
            self.acc = [self._wrap(a + int(b)) for a, b in zip(self.acc, bias, strict=True)]
        elif cmd == LaneCommand.LOAD:
            self.acc = [self._wrap(int(w)) for w in weights]
        elif cmd == LaneCommand.SHIFT_ADD:
            self.acc = [self._wrap((a << shift) + int(w))
                        for a, w in zip(self.acc, weights, strict=True)]
        return list(self.acc)
