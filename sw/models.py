"""Source ANN architectures built from the layer kinds the engine runs exactly.

Every model is an ``nn.Sequential`` of: 3x3 stride-1 padding-1 ``Conv2d`` or ``Linear``, optional
``BatchNorm``, :class:`~bitspike.sw.qcfs.QCFS`, ``AvgPool2d(2)`` and ``Flatten``, ending in a
``Linear`` head (the non-firing output layer). Conversion walks this sequence (see
:mod:`bitspike.sw.convert`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from .errors import BitspikeError
from .qcfs import ACTIVATIONS, make_activation


@dataclass(frozen=True)
class ArchSpec:
    """A named architecture: the input shape it expects and how to build it."""

    name: str
    input_shape: tuple[int, int, int]
    build: Callable[..., nn.Sequential]
    summary: str


def _conv_block(c_in: int, c_out: int, levels: int, per_channel: bool, thresh: float,
                act: str):
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
            make_activation(act, levels=levels, thresh=thresh,
                            channels=c_out if per_channel else None)]


def _dense_block(n_in: int, n_out: int, levels: int, per_channel: bool, thresh: float,
                 act: str):
    return [nn.Linear(n_in, n_out, bias=False), nn.BatchNorm1d(n_out),
            make_activation(act, levels=levels, thresh=thresh,
                            channels=n_out if per_channel else None)]


def digits_mlp(*, levels: int, classes: int = 10, per_channel: bool = False,
               thresh: float = 4.0, activation: str = "qcfs") -> nn.Sequential:
    """64-128-128-10 MLP for 8x8 digits."""
    return nn.Sequential(
        nn.Flatten(),
        *_dense_block(64, 128, levels, per_channel, thresh, activation),
        *_dense_block(128, 128, levels, per_channel, thresh, activation),
        nn.Linear(128, classes),
    )


def digits_cnn(*, levels: int, classes: int = 10, per_channel: bool = False,
               thresh: float = 4.0, activation: str = "qcfs") -> nn.Sequential:
    """conv16-conv32-pool-conv32-pool-fc10 for 8x8 digits (8x8 -> 4x4 -> 2x2)."""
    return nn.Sequential(
        *_conv_block(1, 16, levels, per_channel, thresh, activation),
        *_conv_block(16, 32, levels, per_channel, thresh, activation),
        nn.AvgPool2d(2),
        *_conv_block(32, 32, levels, per_channel, thresh, activation),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 2 * 2, classes),
    )


def vgg_small(*, levels: int, classes: int = 10, per_channel: bool = False,
              thresh: float = 8.0, activation: str = "qcfs") -> nn.Sequential:
    """CIFAR-shaped VGG (32x32x3): 2x64, pool, 2x128, pool, 2x256, pool, fc."""
    layers: list[nn.Module] = []
    c_in = 3
    for widths in ((64, 64), (128, 128), (256, 256)):
        for c in widths:
            layers += _conv_block(c_in, c, levels, per_channel, thresh, activation)
            c_in = c
        layers.append(nn.AvgPool2d(2))
    layers += [nn.Flatten(), nn.Linear(256 * 4 * 4, classes)]
    return nn.Sequential(*layers)


ARCHS: dict[str, ArchSpec] = {
    "digits-mlp": ArchSpec("digits-mlp", (1, 8, 8), digits_mlp, "MLP 64-128-128-10"),
    "digits-cnn": ArchSpec("digits-cnn", (1, 8, 8), digits_cnn,
                           "conv16-conv32-pool-conv32-pool-fc10"),
    "vgg-small": ArchSpec("vgg-small", (3, 32, 32), vgg_small,
                          "conv64x2-pool-conv128x2-pool-conv256x2-pool-fc10"),
}


def build_model(arch: str, *, levels: int, classes: int = 10, per_channel: bool = False,
                activation: str = "qcfs") -> nn.Sequential:
    """Build architecture ``arch`` with QCFS levels ``levels`` (or another source activation).

    Raises
    ------
    BitspikeError
        For an unknown architecture name.
    """
    try:
        spec = ARCHS[arch]
    except KeyError:
        raise BitspikeError(f"unknown architecture {arch!r}: available are "
                            f"{', '.join(ARCHS)}") from None
    if activation not in ACTIVATIONS:
        raise BitspikeError(f"unknown activation {activation!r}: available are "
                            f"{', '.join(ACTIVATIONS)}")
    return spec.build(levels=levels, classes=classes, per_channel=per_channel,
                      activation=activation)
