"""Deliberate engine bugs, for tests only (each proves that a bench catches a broken engine)."""

from enum import Enum

__all__ = ["EngineFault"]


class EngineFault(Enum):
    """Deliberate bugs, for tests only: each proves that a bench catches a broken engine.

    An engine built with a fault is wrong on purpose; nothing outside the tests builds one.
    """

    NONE = "none"
    #: Horner off by one: a plane change shifts the accumulator one place too far.
    HORNER_SHIFT = "horner-shift"
    #: The walker skips the last event of every list holding two or more.
    DROP_EVENT = "drop-event"
    #: Successive approximation compares ``u > thr`` instead of ``u >= thr``.
    FIRE_STRICT = "fire-strict"
    #: The reported cycle count is one too high.
    CYCLE_COUNT = "cycle-count"
