"""Datasets as integer pixel levels, with a fixed train/test split and the input normalization.

Images are kept as integer levels (``0..max_level``) because that is what the engine receives: the
first layer takes them as bit planes. The float model sees ``normalize(levels)``; conversion folds
the same normalization into the first layer's weights and bias.

The embedded default is scikit-learn's ``load_digits`` (1797 8x8 images, levels 0..16), which ships
inside the package: nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from .errors import BitspikeError

DATASETS = ("digits",)


@dataclass(frozen=True)
class Normalization:
    """``x = (levels / max_level - mean[c]) / std[c]`` per input channel ``c``.

    A zero mean keeps zero padding exact after folding (a padded border pixel is level 0 in both
    the float and the integer network); the models trained here use ``mean = 0``.
    """

    max_level: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self):
        if not isinstance(self.max_level, int) or self.max_level < 1:
            raise BitspikeError(f"normalization max_level must be a positive integer, "
                                f"not {self.max_level!r}")
        if len(self.mean) != len(self.std) or any(s <= 0 for s in self.std):
            raise BitspikeError(f"normalization needs one positive std per mean, got mean="
                                f"{self.mean} std={self.std}")

    def apply(self, levels: torch.Tensor) -> torch.Tensor:
        """Float model input from integer levels of shape ``(N, C, ...)``."""
        x = levels.to(torch.float32) / self.max_level
        shape = [1, len(self.mean)] + [1] * (x.dim() - 2)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(shape)
        std = torch.tensor(self.std, dtype=torch.float32).view(shape)
        return (x - mean) / std

    def to_dict(self) -> dict:
        return {"max_level": self.max_level, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> Normalization:
        try:
            return cls(int(d["max_level"]), tuple(float(v) for v in d["mean"]),
                       tuple(float(v) for v in d["std"]))
        except (KeyError, TypeError, ValueError) as e:
            raise BitspikeError(f"malformed input normalization {d!r}: {e}") from None


@dataclass
class DatasetSplit:
    """A fixed split of an image dataset, as integer levels."""

    name: str
    x_train: torch.Tensor  # (N, C, H, W) int64 levels
    y_train: torch.Tensor  # (N,) int64
    x_test: torch.Tensor
    y_test: torch.Tensor
    normalization: Normalization
    split_seed: int
    classes: int
    test_index: torch.Tensor | None = None  # (N_test,) position of each test image in the dataset

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def describe(self) -> dict:
        return {"name": self.name, "train": len(self.y_train), "test": len(self.y_test),
                "input_shape": list(self.input_shape), "classes": self.classes,
                "split_seed": self.split_seed, "normalization": asdict(self.normalization)}


def load_dataset(name: str, *, split_seed: int = 0, test_fraction: float = 0.2) -> DatasetSplit:
    """Load ``name`` with a deterministic stratified split (docs/memory-images.md section 10).

    The split is scikit-learn's ``train_test_split(..., test_size=test_fraction,
    random_state=split_seed, stratify=labels)``; ``test_index`` records where each test image sits
    in the dataset's own order, so that the split can be reproduced without scikit-learn.

    Raises
    ------
    BitspikeError
        For an unknown dataset name.
    """
    if name != "digits":
        raise BitspikeError(f"unknown dataset {name!r}: available are {', '.join(DATASETS)} "
                            "(no dataset can be downloaded on these machines)")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    levels = bunch.images.astype(np.int64)[:, None, :, :]  # (1797, 1, 8, 8), levels 0..16
    labels = bunch.target.astype(np.int64)
    # The index array rides along: the permutation depends only on the labels and split_seed.
    x_tr, x_te, y_tr, y_te, _, i_te = train_test_split(
        levels, labels, np.arange(len(labels)), test_size=test_fraction,
        random_state=split_seed, stratify=labels)
    # Scale-only normalization (mean 0) from the training split: see Normalization.
    std = float((x_tr / 16.0).std())
    norm = Normalization(16, (0.0,), (round(std, 6),))
    return DatasetSplit("digits", torch.from_numpy(x_tr), torch.from_numpy(y_tr),
                        torch.from_numpy(x_te), torch.from_numpy(y_te), norm, split_seed, 10,
                        torch.from_numpy(i_te))
