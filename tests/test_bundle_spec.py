"""docs/memory-images.md is complete: an independent reader written from it alone.

The reader below uses only json, hashlib and numpy (never ``bitspike.sw.images``' reader). It
verifies and decodes a bundle that bitspike wrote, rebuilds every layer's arrays with the doc's
address formulas, decodes the layer descriptors, recomputes the requirements, and runs the doc's
bit-serial arithmetic in plain integer numpy; everything must equal the Program and the golden
model exactly.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bitspike.sw.convert import convert_model
from bitspike.sw.data import Normalization, load_dataset
from bitspike.sw.golden import run_program
from bitspike.sw.images import write_bundle
from bitspike.sw.models import build_model
from bitspike.sw.qcfs import QCFS

MEMORIES = ("weights", "bias", "threshold", "layers")
KINDS = {0: "conv3x3", 1: "dense", 2: "sumpool2x2"}


class SpecError(Exception):
    """The bundle breaks docs/memory-images.md."""


# ---------------------------------------------------------------------------------------------
# the reader (docs/memory-images.md sections 2, 3, 4, 5, 7)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def decode_hex(text: str, width: int, signed: bool, name: str) -> list[int]:
    digits = -(-width // 4)
    if text and not text.endswith("\n"):
        raise SpecError(f"{name}: the last word has no newline")
    line_re = re.compile(f"[0-9a-fA-F]{{{digits}}}")
    words = []
    for n, line in enumerate(text.split("\n")[:-1] if text else [], 1):
        if not line_re.fullmatch(line):
            raise SpecError(f"{name}: line {n} is not {digits} hex digits: {line!r}")
        raw = int(line, 16)
        if raw >= 1 << width:
            raise SpecError(f"{name}: line {n} exceeds {width} bits")
        words.append(raw - (1 << width) if signed and raw >> (width - 1) else raw)
    return words


def decode_bin(data: bytes, width: int, signed: bool, name: str) -> list[int]:
    nbytes = -(-width // 8)
    if len(data) % nbytes:
        raise SpecError(f"{name}: not a whole number of {nbytes}-byte words")
    return [int.from_bytes(data[i:i + nbytes], "little", signed=signed)
            for i in range(0, len(data), nbytes)]


def shape3(shape: list[int]) -> list[int]:
    return list(shape) + [1] * (3 - len(shape))


def signed_bits(m: int) -> int:
    return int(m).bit_length() + 1


def unsigned_bits(v: int) -> int:
    return max(1, int(v).bit_length())


def read_spec_bundle(folder: Path) -> dict:
    """Verify and decode a bundle; return the manifest with decoded ``arrays`` per layer."""
    mpath = folder / "manifest.json"
    if not mpath.is_file():
        raise SpecError(f"{mpath}: missing")
    man = json.loads(mpath.read_text())
    if man.get("format") != "bitspike-image-bundle" or man.get("format_version") != 1:
        raise SpecError(f"{mpath}: not a version-1 bitspike-image-bundle")
    req = man["requirements"]
    widths = {"weights": (req["weight_bits"], True), "bias": (req["bias_bits"], True),
              "threshold": (req["threshold_bits"], False), "layers": (32, False)}
    mem = {}
    for name in MEMORIES:
        entry = man["memories"][name]
        if (entry["width"], entry["signed"]) != widths[name]:
            raise SpecError(f"{mpath}: memory {name} has the wrong width or signedness")
        if entry["bytes_per_word"] != -(-entry["width"] // 8):
            raise SpecError(f"{mpath}: memory {name} has the wrong bytes_per_word")
        decoded = {}
        for kind in ("hex", "bin"):
            path = folder / entry["files"][kind]
            if not path.is_file():
                raise SpecError(f"{path}: missing")
            if _sha256(path) != man["sha256"].get(path.name):
                raise SpecError(f"{path}: sha256 does not match manifest.json")
            if kind == "hex":
                words = decode_hex(path.read_text(), entry["width"], entry["signed"], str(path))
            else:
                words = decode_bin(path.read_bytes(), entry["width"], entry["signed"], str(path))
            if len(words) != entry["depth"]:
                raise SpecError(f"{path}: {len(words)} words, manifest.json says "
                                f"{entry['depth']}")
            decoded[kind] = words
        if decoded["hex"] != decoded["bin"]:
            raise SpecError(f"{folder / entry['files']['bin']}: disagrees with the hex file")
        mem[name] = np.asarray(decoded["hex"], dtype=np.int64)
    layers = man["layers"]
    if len(mem["layers"]) != 16 * len(layers):
        raise SpecError(f"{folder / 'layers.hex'}: not 16 words per layer")
    # contiguous placement, in layer order (section 2.4)
    at = {"weight": 0, "bias": 0, "threshold": 0}
    for n, lay in enumerate(layers):
        c_out = lay["out_shape"][0]
        fires_counted = lay["fires"] and lay["kind"] != "sumpool2x2"
        expect = {"weight": 0 if lay["kind"] == "sumpool2x2" else lay["fan_in"] * c_out,
                  "bias": 0 if lay["kind"] == "sumpool2x2" else c_out,
                  "threshold": c_out if fires_counted else 0}
        fan_in = {"conv3x3": lay["in_shape"][0] * 9, "sumpool2x2": 4,
                  "dense": int(np.prod(lay["in_shape"]))}[lay["kind"]]
        if lay["fan_in"] != fan_in:
            raise SpecError(f"{mpath}: layer {n} fan_in")
        for m, words in expect.items():
            base, count = lay[f"{m}_base"], lay[f"{m}_words"]
            depth = len(mem["weights" if m == "weight" else m])
            if base != at[m] or count != words or base + count > depth:
                raise SpecError(f"{mpath}: layer {n} {m} extent {base}+{count}")
            at[m] += count
        desc = [int(v) for v in mem["layers"][16 * n:16 * n + 16]]
        flags = (1 if lay["fires"] else 0) | (2 if n == len(layers) - 1 else 0)
        table = [[k for k, v in KINDS.items() if v == lay["kind"]][0], flags,
                 *shape3(lay["in_shape"]), *shape3(lay["out_shape"]), lay["t_in"],
                 lay["t_out"], lay["levels"], lay["weight_base"], lay["bias_base"],
                 lay["threshold_base"], lay["fan_in"], 0]
        if desc != table:
            raise SpecError(f"{folder / 'layers.hex'}: descriptor {n} {desc} != table {table}")
        lay["descriptor"] = desc
        lay["arrays"] = _layer_arrays(lay, mem)
    if at["weight"] != len(mem["weights"]) or at["bias"] != len(mem["bias"]) \
            or at["threshold"] != len(mem["threshold"]):
        raise SpecError(f"{mpath}: memories hold words no layer uses")
    if recompute_requirements(man) != req:
        raise SpecError(f"{mpath}: requirements do not match the memories")
    return man


def _layer_arrays(lay: dict, mem: dict) -> dict:
    """Section 4: address(w[o,c,dy,dx]) = b + ((c*3+dy)*3+dx)*C_out + o; w[o,i]: b + i*C_out + o."""
    c_out = lay["out_shape"][0]
    out = {"weights": None, "bias": None, "threshold": None}
    b = lay["weight_base"]
    if lay["kind"] == "conv3x3":
        c_in = lay["in_shape"][0]
        w = np.zeros((c_out, c_in, 3, 3), dtype=np.int64)
        for o in range(c_out):
            for c in range(c_in):
                for dy in range(3):
                    for dx in range(3):
                        w[o, c, dy, dx] = mem["weights"][b + ((c * 3 + dy) * 3 + dx) * c_out + o]
        out["weights"] = w
    elif lay["kind"] == "dense":
        n_in = int(np.prod(lay["in_shape"]))
        w = np.zeros((c_out, n_in), dtype=np.int64)
        for o in range(c_out):
            for i in range(n_in):
                w[o, i] = mem["weights"][b + i * c_out + o]
        out["weights"] = w
    if lay["bias_words"]:
        out["bias"] = mem["bias"][lay["bias_base"]:lay["bias_base"] + lay["bias_words"]]
    if lay["threshold_words"]:
        base = lay["threshold_base"]
        out["threshold"] = mem["threshold"][base:base + lay["threshold_words"]]
    return out


def recompute_requirements(man: dict) -> dict:
    """Section 2.3."""
    layers = man["layers"]
    acc, biases, thresholds = [], [], []
    for lay in layers:
        a = lay["arrays"]
        m = 2 ** lay["t_in"] - 1
        if lay["kind"] == "sumpool2x2":
            bound = 4 * m
        else:
            per_out = np.abs(a["weights"].reshape(a["weights"].shape[0], -1)).sum(axis=1)
            bound = int((per_out * m + np.abs(a["bias"])).max())
            if lay["fires"]:
                d = int(a["threshold"].max())
                bound = max(bound, d * (lay["levels"] + 1), d << (lay["t_out"] - 1))
        acc.append(signed_bits(bound))
        if a["bias"] is not None:
            biases.append(int(np.abs(a["bias"]).max()))
        if a["threshold"] is not None:
            thresholds.append(int(a["threshold"].max()))
    return {
        "mode": man["program"]["mode"],
        "weight_bits": man["program"]["weight_bits"],
        "acc_bits": max(acc),
        "bias_bits": signed_bits(max(biases, default=0)),
        "threshold_bits": unsigned_bits(max(thresholds, default=1)),
        "max_t": max(max(lay["t_in"], lay["t_out"]) for lay in layers),
        "max_neurons": max(int(np.prod(lay[s])) for lay in layers
                           for s in ("in_shape", "out_shape")),
        "max_channels": max(lay["out_shape"][0] for lay in layers),
        "weight_words": sum(lay["weight_words"] for lay in layers),
        "bias_words": sum(lay["bias_words"] for lay in layers),
        "threshold_words": sum(lay["threshold_words"] for lay in layers),
        "layers": len(layers),
    }


# ---------------------------------------------------------------------------------------------
# the engine's arithmetic (section 6), integer numpy


def bit(k: np.ndarray, n: int) -> np.ndarray:
    return (k >> n) & 1


def synaptic_sum(lay: dict, s: np.ndarray) -> np.ndarray:
    """Sum of the weights of the inputs that spike (``s`` in {0, 1}) in one step."""
    w = lay["arrays"]["weights"]
    if lay["kind"] == "conv3x3":
        c_in, h, wd = s.shape
        pad = np.zeros((c_in, h + 2, wd + 2), dtype=np.int64)
        pad[:, 1:h + 1, 1:wd + 1] = s  # zero padding: level 0 outside
        out = np.zeros((w.shape[0], h, wd), dtype=np.int64)
        for dy in range(3):
            for dx in range(3):
                window = pad[:, dy:dy + h, dx:dx + wd]  # k[c, y+dy-1, x+dx-1]
                out += np.tensordot(w[:, :, dy, dx], window, axes=([1], [0]))
        return out
    if lay["kind"] == "dense":
        return w @ s.reshape(-1)  # C-major flattening
    c, h, wd = s.shape
    return s.reshape(c, h // 2, 2, wd // 2, 2).sum(axis=(2, 4))


def run_layer(lay: dict, k: np.ndarray) -> np.ndarray:
    t_in = lay["t_in"]
    acc = None
    for t in range(1, t_in + 1):  # Horner, MSB first
        add = synaptic_sum(lay, bit(k, t_in - t))
        acc = add if acc is None else (acc << 1) + add
    if lay["kind"] == "sumpool2x2":
        u0, d = acc, np.ones_like(acc)
    else:
        view = (-1,) + (1,) * (acc.ndim - 1)
        u0 = acc + lay["arrays"]["bias"].reshape(view)
        if not lay["fires"]:
            return u0  # logits
        d = np.broadcast_to(lay["arrays"]["threshold"].reshape(view), u0.shape)
    t_out, L = lay["t_out"], lay["levels"]
    u = u0.copy()
    level = np.zeros_like(u0)
    for t in range(1, t_out + 1):  # successive approximation
        thr = d << (t_out - t)
        s = (u >= thr).astype(np.int64)
        u = u - s * thr
        level = (level << 1) | s
    if L < 2**t_out - 1:
        level = np.where(u0 >= (L + 1) * d, L, level)
    assert np.array_equal(level, np.clip(np.floor_divide(u0, d), 0, L))
    return level


def infer(man: dict, image: np.ndarray) -> np.ndarray:
    k = np.asarray(image, dtype=np.int64)
    assert k.min() >= 0 and k.max() <= man["program"]["input"]["max_level"]
    for lay in man["layers"]:
        k = run_layer(lay, k)
    return k


# ---------------------------------------------------------------------------------------------
# tests


def _program(levels: int, per_channel: bool):
    torch.manual_seed(1234)
    model = build_model("digits-cnn", levels=levels, per_channel=per_channel)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(0.3 * torch.randn(n))
                m.running_var.copy_(0.5 + torch.rand(n))
                m.weight.copy_(1.0 + 0.3 * torch.randn(n))
                m.bias.copy_(0.5 + 0.5 * torch.randn(n))
            elif isinstance(m, QCFS):
                m.thresh.copy_(1.0 + 2.0 * torch.rand(m.thresh.shape))
    model.eval()
    return convert_model(model, input_shape=(1, 8, 8),
                         normalization=Normalization(16, (0.0,), (0.4,)))


# L = 15 fills T = 4 bits; L = 12 (T = 4) exercises the clip at L, with one D per channel.
CASES = {"L15-per-layer": (15, False), "L12-per-channel": (12, True)}


@pytest.fixture(scope="module", params=list(CASES))
def bundle(request, tmp_path_factory):
    program = _program(*CASES[request.param])
    folder = tmp_path_factory.mktemp(request.param)
    write_bundle(program, folder)
    return program, folder


@pytest.fixture(scope="module")
def images():
    return load_dataset("digits").x_test[:5]


def test_memories_decode_to_the_program(bundle):
    program, folder = bundle
    man = read_spec_bundle(folder)
    assert len(man["layers"]) == len(program.layers)
    for lay, ref in zip(man["layers"], program.layers, strict=True):
        assert (lay["name"], lay["kind"]) == (ref.name, ref.kind)
        for field in ("weights", "bias", "threshold"):
            got, want = lay["arrays"][field], getattr(ref, field)
            assert (got is None) == (want is None), (ref.name, field)
            if want is not None:
                assert got.shape == want.shape and np.array_equal(got, want), (ref.name, field)
    assert recompute_requirements(man) == program.requirements()


def test_descriptors_decode_to_the_layer_table(bundle):
    program, folder = bundle
    man = read_spec_bundle(folder)
    for n, (lay, ref) in enumerate(zip(man["layers"], program.layers, strict=True)):
        d = lay["descriptor"]
        assert KINDS[d[0]] == ref.kind
        assert bool(d[1] & 1) == ref.fires and bool(d[1] & 2) == (n == len(man["layers"]) - 1)
        assert d[1] & ~3 == 0 and d[15] == 0
        assert d[2:5] == list(ref.in_shape) + [1] * (3 - len(ref.in_shape))
        assert d[5:8] == list(ref.out_shape) + [1] * (3 - len(ref.out_shape))
        assert d[8:11] == [ref.t_in, ref.t_out, ref.levels]
        assert d[11:14] == [lay["weight_base"], lay["bias_base"], lay["threshold_base"]]
        assert d[14] == ref.fan_in


def test_bit_serial_inference_matches_golden(bundle, images):
    program, folder = bundle
    man = read_spec_bundle(folder)
    golden = run_program(program, images)
    logits = np.stack([infer(man, img.numpy()) for img in images])
    assert np.array_equal(logits, golden.logits.numpy())
    assert np.array_equal(np.argmax(logits, axis=1), golden.classes.numpy())
    # the case is not degenerate: hidden layers fire, and the logits differ between images
    hidden = golden.levels[0].numpy()
    assert 0 < (hidden > 0).mean() < 1
    assert len({tuple(row) for row in logits}) > 1


def test_clip_at_L_is_exercised():
    program = _program(12, True)
    golden = run_program(program, load_dataset("digits").x_test[:5])
    firing = [lv for lay, lv in zip(program.layers, golden.levels, strict=True)
              if lay.fires and lay.kind != "sumpool2x2"]
    assert any(int(lv.max()) == 12 for lv in firing)


@pytest.mark.parametrize("damage", ["flip-bin-byte", "rehash-bin", "bad-hex-line", "width"])
def test_reader_refuses_a_damaged_bundle(bundle, tmp_path, damage):
    _, folder = bundle
    copy = tmp_path / "b"
    copy.mkdir()
    for f in folder.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    man = json.loads((copy / "manifest.json").read_text())
    if damage == "flip-bin-byte":
        data = bytearray((copy / "bias.bin").read_bytes())
        data[0] ^= 1
        (copy / "bias.bin").write_bytes(bytes(data))
        expect = "bias.bin"
    elif damage == "rehash-bin":  # consistent hash, but the bin disagrees with the hex
        data = bytearray((copy / "bias.bin").read_bytes())
        data[0] ^= 1
        (copy / "bias.bin").write_bytes(bytes(data))
        man["sha256"]["bias.bin"] = _sha256(copy / "bias.bin")
        expect = "bias.bin"
    elif damage == "bad-hex-line":
        text = (copy / "threshold.hex").read_text().replace("\n", "\n0x", 1)
        (copy / "threshold.hex").write_text(text)
        man["sha256"]["threshold.hex"] = _sha256(copy / "threshold.hex")
        expect = "threshold.hex"
    else:
        man["memories"]["threshold"]["width"] += 3
        expect = "manifest.json"
    (copy / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(SpecError, match=re.escape(expect)):
        read_spec_bundle(copy)
