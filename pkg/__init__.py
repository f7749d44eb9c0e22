"""bitspike: converted spiking neural networks on open FPGAs.

Subpackages: :mod:`bitspike.sw` (models, conversion, golden model, CLI),
:mod:`bitspike.hw` (Amaranth engine), :mod:`bitspike.sim` (cocotb benches),
:mod:`bitspike.boards` (bitstreams and host link).
"""

__version__ = "0.1.0"
