"""Errors a user can act on.

Every error raised for bad input derives from :class:`BitspikeError`; the CLI prints its message
(one line saying what is wrong and what to do) on stderr and exits non-zero, without a traceback.
"""


class BitspikeError(Exception):
    """Base class of all user-facing errors."""


class CheckpointError(BitspikeError):
    """A checkpoint is missing, unreadable, or does not match its architecture."""


class UnsupportedLayerError(BitspikeError):
    """The network contains a layer the engine cannot run exactly."""


class WidthError(BitspikeError):
    """A weight, bias, threshold or accumulator does not fit the chosen bit width."""


class BundleError(BitspikeError):
    """A memory-image bundle is malformed, tampered with, or of an unknown version."""


class ProgramError(BitspikeError):
    """A Program is inconsistent (shapes, widths, time steps)."""
