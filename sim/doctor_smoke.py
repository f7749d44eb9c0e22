"""cocotb smoke test for ``bitspike doctor``: clock a tiny counter and check its value.

The design under test is the counter that :mod:`bitspike.sw.doctor` converts from Amaranth
(top ``doctor_counter``; ports ``clk``, ``rst``, ``en`` and an 8-bit ``count``). It is built and run
by :func:`bitspike.sw.doctor.run_cocotb_smoke`; this module only holds the cocotb test.
"""

from __future__ import annotations

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, ReadOnly, RisingEdge

#: Cycles counted while enabled, then held while disabled.
COUNT_CYCLES = 10
HOLD_CYCLES = 3


@cocotb.test()
async def counter_counts(dut) -> None:
    """The counter resets to 0, counts enabled cycles and holds while disabled."""
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.rst.value = 1
    dut.en.value = 0
    await ClockCycles(dut.clk, 2)
    await ReadOnly()
    assert int(dut.count.value) == 0, f"count after reset is {int(dut.count.value)}, not 0"

    # Drive between edges so that each rising edge sees settled inputs.
    await FallingEdge(dut.clk)
    dut.rst.value = 0
    dut.en.value = 1
    await ClockCycles(dut.clk, COUNT_CYCLES, rising=True)
    await ReadOnly()
    count = int(dut.count.value)
    assert count == COUNT_CYCLES, f"count after {COUNT_CYCLES} enabled cycles is {count}"

    await FallingEdge(dut.clk)
    dut.en.value = 0
    for _ in range(HOLD_CYCLES):
        await RisingEdge(dut.clk)
    await ReadOnly()
    count = int(dut.count.value)
    assert count == COUNT_CYCLES, f"count moved to {count} while disabled"
