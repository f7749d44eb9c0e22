"""The top module the RTL benches simulate: the engine behind a registered reset.

:class:`BenchTop` has the engine's ports and passes them straight through; only its reset is
taken through one flip-flop (as a board's reset synchronizer would), so that no engine logic
depends combinationally on a top-level input but the streams' ``valid``/``ready``/payloads.

Why: Verilator re-evaluates everything that depends combinationally on a top-level input at
every evaluation (twice per clock cycle under cocotb's clock). Amaranth's synchronous reset
feeds every register's next-state logic, so with ``rst`` a top input that was the whole design:
the registered reset took the digits-cnn engine (P = 8) from about 0.17 to 0.6 M simulated
cycles/s on a loaded 2-core machine. The engine module inside is the one synthesis sees.
"""

from amaranth.hdl import ClockDomain, ClockSignal, DomainRenamer, Module, ResetSignal, Signal
from amaranth.lib import wiring

__all__ = ["BenchTop"]


class BenchTop(wiring.Component):
    """The engine with its ports passed through and its reset registered once.

    Parameters
    ----------
    engine : bitspike.hw.engine.Engine or bitspike.boards.link.LinkedEngine
        The engine (any configuration, traced or not), or the engine behind the host link.

    Members
    -------
    The engine's own (``i_stream``, ``o_logits``, ``o_result``, and ``o_trace`` when built),
    plus the ``sync`` domain's ``clk`` and ``rst``; ``rst`` reaches the engine one cycle later.
    """

    def __init__(self, engine):
        if not isinstance(engine, wiring.Component):
            raise TypeError(f"engine must be an Engine component, not {engine!r}")
        self._engine = engine
        super().__init__(dict(engine.signature.members))

    def elaborate(self, platform):
        m = Module()
        m.domains.engine = domain = ClockDomain("engine", local=True)
        reset = Signal(init=1)
        m.d.sync += reset.eq(ResetSignal("sync"))
        m.d.comb += [domain.clk.eq(ClockSignal("sync")), domain.rst.eq(reset)]
        m.submodules.engine = DomainRenamer("engine")(self._engine)
        for name, member in self.signature.members.items():
            if member.is_signature:
                wiring.connect(m, wiring.flipped(getattr(self, name)),
                               getattr(self._engine, name))
            elif member.flow is wiring.In:  # a plain port (the host link's UART lines)
                m.d.comb += getattr(self._engine, name).eq(getattr(self, name))
            else:
                m.d.comb += getattr(self, name).eq(getattr(self._engine, name))
        return m
