"""The engine's output: the logits stream out and the class (argmax) at the end."""

# No ``from __future__ import annotations``: wiring.Component reads real annotations.
from amaranth.hdl import Module, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .firing import logit_layout

__all__ = ["ArgmaxOutput", "result_layout"]


def result_layout(config) -> data.StructLayout:
    """``klass`` (argmax) and ``cycles`` of one inference."""
    return data.StructLayout({"klass": unsigned(max(1, (config.max_channels - 1).bit_length())),
                              "cycles": unsigned(32)})


class ArgmaxOutput(wiring.Component):
    """Passes the output layer's logits on and keeps the largest (ties to the lowest index,
    since the logits arrive in index order and only a strictly larger one replaces it).

    Cost: one comparator of the logit width and the best value/index registers.

    Members
    -------
    i_logits : In(stream.Signature(logit_layout))
    o_logits : Out(stream.Signature(logit_layout))
        ``i_logits`` passed through (same cycle, same back-pressure).
    finish : In(1)
        The inference is over: offer the result.
    cycles : In(32)
        The cycle count the result carries.
    o_result : Out(stream.Signature(result_layout))
        ``klass`` and ``cycles`` while ``finish``; taking it clears the argmax for the next
        inference.
    """

    def __init__(self, *, config):
        super().__init__({
            "i_logits": In(stream.Signature(logit_layout(config))),
            "o_logits": Out(stream.Signature(logit_layout(config))),
            "finish": In(1), "cycles": In(32),
            "o_result": Out(stream.Signature(result_layout(config))),
        })

    def elaborate(self, platform):
        m = Module()
        best = Signal.like(self.i_logits.payload.value)
        best_idx = Signal.like(self.o_result.payload.klass)
        have_best = Signal()
        m.d.comb += [self.o_logits.valid.eq(self.i_logits.valid),
                     self.o_logits.payload.eq(self.i_logits.payload),
                     self.i_logits.ready.eq(self.o_logits.ready)]
        logit = self.i_logits.payload
        with m.If(self.i_logits.valid & self.o_logits.ready):
            with m.If(~have_best | (logit.value > best)):
                m.d.sync += [best.eq(logit.value), best_idx.eq(logit.index), have_best.eq(1)]
        m.d.comb += [self.o_result.valid.eq(self.finish),
                     self.o_result.payload.klass.eq(best_idx),
                     self.o_result.payload.cycles.eq(self.cycles)]
        with m.If(self.o_result.valid & self.o_result.ready):
            m.d.sync += have_best.eq(0)
        return m
