"""PLL settings for the boards' FPGAs: the divider search, and the primitive that uses them.

:func:`ecp5_pll` searches the ECP5 ``EHXPLLL`` dividers the way Project Trellis' ``ecppll``
does (feedback from ``CLKOP``)::

    f_pfd = f_in / CLKI_DIV             3.125 .. 400 MHz, CLKI_DIV 1..128
    f_vco = f_pfd * CLKFB_DIV * CLKOP_DIV 400 .. 800 MHz, CLKFB_DIV 1..80, CLKOP_DIV 1..128
    f_out = f_pfd * CLKFB_DIV             10 .. 400 MHz

:func:`ice40_pll` searches the iCE40 ``SB_PLL40_*`` dividers the way IceStorm's ``icepll``
does (``SIMPLE`` feedback)::

    f_pfd = f_in / (DIVR + 1)           10 .. 133 MHz, DIVR 0..15
    f_vco = f_pfd * (DIVF + 1)          533 .. 1066 MHz, DIVF 0..127
    f_out = f_vco / 2**DIVQ             16 .. 275 MHz, DIVQ 1..6

Both pick the setting nearest the requested frequency and refuse (:class:`PllError`) a
frequency outside the PLL's output range or more than :data:`TOLERANCE` away from the nearest
one it can make, naming the nearest it can make. The achieved frequency (``output_mhz``) is the
engine's clock: the build constrains nextpnr to it and checks Fmax against it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..sw.errors import BitspikeError

__all__ = ["TOLERANCE", "PllError", "PllSettings", "ecp5_pll", "ice40_pll", "pll_instance"]

#: The largest relative deviation of the achieved frequency from the requested one.
TOLERANCE = 0.01


class PllError(BitspikeError):
    """The PLL cannot make the requested frequency from the board's oscillator."""


@dataclass(frozen=True)
class PllSettings:
    """One PLL configuration.

    ``family`` is ``"ecp5"`` or ``"ice40"``; ``dividers`` the primitive's parameters by name
    (ECP5: ``CLKI_DIV``, ``CLKFB_DIV``, ``CLKOP_DIV``; iCE40: ``DIVR``, ``DIVF``, ``DIVQ``,
    ``FILTER_RANGE``); ``vco_mhz`` the VCO frequency.
    """

    family: str
    input_mhz: float
    requested_mhz: float
    output_mhz: float
    vco_mhz: float
    dividers: dict

    @property
    def error_ppm(self) -> float:
        """The output's deviation from the requested frequency, in parts per million."""
        return (self.output_mhz - self.requested_mhz) / self.requested_mhz * 1e6

    def to_dict(self) -> dict:
        return {"family": self.family, "input_mhz": self.input_mhz,
                "requested_mhz": self.requested_mhz, "output_mhz": self.output_mhz,
                "vco_mhz": self.vco_mhz, "dividers": dict(self.dividers)}


def _check_mhz(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise TypeError(f"{name} must be a positive number of MHz, not {value!r}")
    return float(value)


def _choose(family: str, f_in: float, f_req: float, candidates, out_range) -> PllSettings:
    lo, hi = out_range
    what = f"the {family.upper()} PLL makes {lo:g}..{hi:g} MHz from the {f_in:g} MHz oscillator"
    if not lo <= f_req <= hi:
        raise PllError(f"cannot make a {f_req:g} MHz clock: {what}; choose --clock in that "
                       f"range (or {f_in:g}, the oscillator itself, without the PLL)")
    # the nearest output; on a tie the lower one, then the smallest input divider (the
    # fastest phase detector)
    best = min(candidates, key=lambda c: (round(abs(c[0] - f_req), 9), c[0],
                                          c[2].get("CLKI_DIV", c[2].get("DIVR", 0))))
    if abs(best[0] - f_req) <= TOLERANCE * f_req:
        return PllSettings(family, f_in, f_req, best[0], best[1], best[2])
    below = [c[0] for c in candidates if c[0] < f_req]
    above = [c[0] for c in candidates if c[0] > f_req]
    near = [f"{f:.4g}" for f in (max(below, default=None), min(above, default=None))
            if f is not None]
    raise PllError(f"cannot make a {f_req:g} MHz clock within {100 * TOLERANCE:g} %: {what}, "
                   f"the nearest being {' and '.join(near)} MHz; choose one of those")


def ecp5_pll(input_mhz: float, output_mhz: float) -> PllSettings:
    """``EHXPLLL`` dividers for ``output_mhz`` from ``input_mhz`` (module docstring).

    Raises
    ------
    PllError
        When no setting lies within :data:`TOLERANCE` of ``output_mhz``.
    """
    f_in, f_req = _check_mhz("input_mhz", input_mhz), _check_mhz("output_mhz", output_mhz)
    if not 8 <= f_in <= 400:
        raise PllError(f"the ECP5 PLL takes 8..400 MHz at its input, not {f_in:g} MHz")
    candidates = []
    for clki in range(1, 129):
        f_pfd = f_in / clki
        if not 3.125 <= f_pfd <= 400:
            continue
        for clkfb in range(1, 81):
            f_out = f_pfd * clkfb
            if not 10 <= f_out <= 400:
                continue
            # the output divider only sets the VCO: as ecppll, the one nearest 600 MHz
            ops = [op for op in range(1, 129) if 400 <= f_out * op <= 800]
            if ops:
                clkop = min(ops, key=lambda op: abs(f_out * op - 600))
                candidates.append((f_out, f_out * clkop, {
                    "CLKI_DIV": clki, "CLKFB_DIV": clkfb, "CLKOP_DIV": clkop,
                    "CLKOP_CPHASE": (clkop - 1) // 2, "CLKOP_FPHASE": 0}))
    return _choose("ecp5", f_in, f_req, candidates, (10, 400))


def _ice40_filter_range(f_pfd: float) -> int:
    # icepll's table: the loop filter setting by phase-detector frequency
    for limit, value in ((17, 1), (26, 2), (44, 3), (66, 4), (101, 5)):
        if f_pfd < limit:
            return value
    return 6


def ice40_pll(input_mhz: float, output_mhz: float) -> PllSettings:
    """``SB_PLL40_*`` dividers (``SIMPLE`` feedback) for ``output_mhz`` from ``input_mhz``.

    Raises
    ------
    PllError
        When no setting lies within :data:`TOLERANCE` of ``output_mhz``.
    """
    f_in, f_req = _check_mhz("input_mhz", input_mhz), _check_mhz("output_mhz", output_mhz)
    if not 10 <= f_in <= 133:
        raise PllError(f"the iCE40 PLL takes 10..133 MHz at its input, not {f_in:g} MHz")
    candidates = []
    for divr in range(16):
        f_pfd = f_in / (divr + 1)
        if not 10 <= f_pfd <= 133:
            continue
        for divf in range(128):
            f_vco = f_pfd * (divf + 1)
            if not 533 <= f_vco <= 1066:
                continue
            for divq in range(1, 7):
                f_out = f_vco / 2**divq
                if 16 <= f_out <= 275:
                    candidates.append((f_out, f_vco, {
                        "DIVR": divr, "DIVF": divf, "DIVQ": divq,
                        "FILTER_RANGE": _ice40_filter_range(f_pfd)}))
    return _choose("ice40", f_in, f_req, candidates, (16, 275))


def pll_instance(settings: PllSettings, *, clk_in, clk_out, lock):
    """The PLL primitive for ``settings`` as an Amaranth ``Instance``.

    ECP5: ``EHXPLLL`` fed by ``clk_in`` (a signal from the oscillator's input buffer), output
    ``CLKOP`` fed back, with the loop-filter attributes ``ecppll`` writes. iCE40:
    ``SB_PLL40_PAD`` whose ``PACKAGEPIN`` is ``clk_in``, the oscillator's raw I/O port (the
    iCEBreaker's 12 MHz oscillator sits on the PLL's pad), output on the global network.
    """
    from amaranth.hdl import Const, Instance

    d = settings.dividers
    if settings.family == "ecp5":
        return Instance(
            "EHXPLLL",
            a_FREQUENCY_PIN_CLKI=f"{settings.input_mhz:g}",
            a_FREQUENCY_PIN_CLKOP=f"{settings.output_mhz:.6g}",
            a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1",
            a_MFG_GMCREF_SEL="2",
            p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
            p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_OUTDIVIDER_MUXB="DIVB",
            p_OUTDIVIDER_MUXC="DIVC", p_OUTDIVIDER_MUXD="DIVD",
            p_CLKI_DIV=d["CLKI_DIV"], p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=d["CLKOP_DIV"],
            p_CLKOP_CPHASE=d["CLKOP_CPHASE"], p_CLKOP_FPHASE=d["CLKOP_FPHASE"],
            p_FEEDBK_PATH="CLKOP", p_CLKFB_DIV=d["CLKFB_DIV"],
            i_RST=0, i_STDBY=0, i_CLKI=clk_in, i_CLKFB=clk_out, i_PHASESEL0=0, i_PHASESEL1=0,
            i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1, i_PLLWAKESYNC=0, i_ENCLKOP=0,
            o_CLKOP=clk_out, o_LOCK=lock)
    if settings.family == "ice40":
        return Instance(
            "SB_PLL40_PAD",
            p_FEEDBACK_PATH="SIMPLE",
            p_DIVR=Const(d["DIVR"], 4), p_DIVF=Const(d["DIVF"], 7), p_DIVQ=Const(d["DIVQ"], 3),
            p_FILTER_RANGE=Const(d["FILTER_RANGE"], 3),
            i_PACKAGEPIN=clk_in, i_RESETB=1, i_BYPASS=0,
            o_PLLOUTGLOBAL=clk_out, o_LOCK=lock)
    raise ValueError(f"no PLL primitive for family {settings.family!r}")
