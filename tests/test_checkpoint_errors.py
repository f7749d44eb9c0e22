"""Bad checkpoints get clear errors that name the problem and what to do."""

import pytest
import torch

from bitspike.sw.checkpoint import load_checkpoint
from bitspike.sw.errors import CheckpointError
from bitspike.sw.models import build_model


def test_missing_file_names_path_and_remedy(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pt not found: train one"):
        load_checkpoint(tmp_path / "nope.pt")


@pytest.mark.parametrize("content", [b"", b"this is not a checkpoint", b"PK\x03\x04garbage"])
def test_corrupt_file(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint.*corrupt"):
        load_checkpoint(path)


def test_truncated_checkpoint(tmp_path, quick_checkpoint):
    data = quick_checkpoint.read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)


def test_bitspike_checkpoint_round_trip(quick_checkpoint):
    model, meta = load_checkpoint(quick_checkpoint)
    assert meta.arch == "digits-cnn" and meta.levels == 15 and meta.dataset == "digits"
    assert meta.normalization.max_level == 16 and len(meta.sha256) == 64
    assert not model.training


def test_state_dict_of_another_architecture_names_keys(tmp_path):
    path = tmp_path / "mlp.pt"
    torch.save(build_model("digits-mlp", levels=15).state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, arch="digits-cnn", levels=15)
    msg = str(info.value)
    assert "does not match the architecture" in msg
    assert "missing keys: 0.weight" in msg and "unexpected keys:" in msg and "7.weight" in msg
    assert "--arch" in msg


def test_missing_and_reshaped_keys(tmp_path):
    state = build_model("digits-cnn", levels=15).state_dict()
    del state["3.weight"]
    state["12.weight"] = torch.zeros(10, 64)
    path = tmp_path / "broken.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, arch="digits-cnn", levels=15)
    msg = str(info.value)
    assert "missing keys: 3.weight" in msg
    assert "12.weight: checkpoint (10, 64) vs model (10, 128)" in msg


def test_bare_state_dict_needs_arch_and_levels(tmp_path):
    path = tmp_path / "bare.pt"
    torch.save(build_model("digits-cnn", levels=7).state_dict(), path)
    with pytest.raises(CheckpointError, match="bare state_dict.*--arch and --levels"):
        load_checkpoint(path)
    model, meta = load_checkpoint(path, arch="digits-cnn", levels=7)
    assert meta.levels == 7 and meta.normalization is None


def test_public_qcfs_naming_up_and_module_prefix(tmp_path):
    ref = build_model("digits-mlp", levels=8)
    state = {}
    for k, v in ref.state_dict().items():
        k = k.replace(".thresh", ".up")
        state["module." + k] = v.reshape(()) if k.endswith(".up") else v
    state["module.3.up"] = torch.tensor(5.5)
    path = tmp_path / "public.pth"
    torch.save({"state_dict": state}, path)
    model, meta = load_checkpoint(path, arch="digits-mlp", levels=8)
    assert float(model[3].thresh.detach()) == 5.5 and meta.levels == 8


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="holds no state_dict"):
        load_checkpoint(path, arch="digits-cnn", levels=15)
