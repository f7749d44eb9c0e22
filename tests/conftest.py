"""Shared fixtures: the digits split and a quickly trained checkpoint (session-scoped)."""

from __future__ import annotations

import pytest
import torch

from bitspike.sw.checkpoint import save_checkpoint
from bitspike.sw.data import load_dataset
from bitspike.sw.train import TrainConfig, train

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="session")
def quick_checkpoint(digits, tmp_path_factory):
    """A digits-cnn trained for 3 epochs (accuracy is irrelevant; the metadata is real)."""
    model, meta = train(TrainConfig(arch="digits-cnn", epochs=3), digits, progress=False)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(path, model, meta)
    return path
