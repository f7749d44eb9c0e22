"""docs/memory-images.md is complete: an independent reader written from it alone.

The reader below uses only json, hashlib and numpy (never ``bitspike.sw.images``' reader). It
verifies and decodes a bundle that bitspike wrote (bit-serial or rate mode), rebuilds every
layer's arrays with the doc's address formulas, decodes the layer descriptors, checks the manifest
fields that the doc derives from the memories, recomputes the requirements, and runs the doc's
arithmetic (section 6: bit-serial, and rate-coded IF with the SRP probe phase) in plain integer
numpy; everything must equal the Program and the golden model exactly.
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
from bitspike.sw.rate import convert_rate

MEMORIES = ("weights", "bias", "threshold", "layers")  # + "v_init" in rate mode (2.5)
KINDS = {0: "conv3x3", 1: "dense", 2: "sumpool2x2"}
METHOD_MODES = {"bitserial": "bitserial", "qcfs": "rate", "deng-gu": "rate",
                "data-driven": "rate", "srp": "rate"}
# section 2: the exact key sets (the strict reader refuses missing and unknown keys, section 7)
TOP_KEYS = {"format", "format_version", "program", "requirements", "layers", "memories",
            "sha256"}
PROGRAM_KEYS = {"format_version", "mode", "method", "t_steps", "tau", "weight_bits", "classes",
                "input", "meta", "notes"}
REQUIREMENT_KEYS = {"mode", "weight_bits", "acc_bits", "bias_bits", "threshold_bits", "max_t",
                    "v_init_words", "v_init_bits", "max_neurons", "max_channels", "weight_words",
                    "bias_words", "threshold_words", "layers"}
LAYER_KEYS = {"name", "kind", "in_shape", "out_shape", "t_in", "t_out", "levels", "fires", "unit",
              "source", "weight_base", "weight_words", "bias_base", "bias_words",
              "threshold_base", "threshold_words", "v_init_base", "v_init_words", "fan_in"}
MEMORY_KEYS = {"width", "signed", "depth", "bytes_per_word", "files"}
BLOCKS = ("weight", "bias", "threshold", "v_init")  # <block>_base / <block>_words
BLOCK_MEMORY = {"weight": "weights", "bias": "bias", "threshold": "threshold", "v_init": "v_init"}


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


def rate_steps(program: dict) -> int:
    """``S = tau + t_steps`` in rate mode (section 2.2); 0 in bit-serial mode."""
    return program["tau"] + program["t_steps"] if program["mode"] == "rate" else 0


def _keys(obj: dict, keys: set, where: str) -> None:
    if not isinstance(obj, dict) or set(obj) != keys:
        got = set(obj) if isinstance(obj, dict) else obj
        raise SpecError(f"{where}: keys {sorted(got ^ keys) if isinstance(got, set) else got}")


def check_header(man: dict, mpath: Path) -> None:
    """Section 2.2 and the program rules of 2.4."""
    p = man["program"]
    if p["format_version"] != 1:
        raise SpecError(f"{mpath}: program format version {p['format_version']}")
    if METHOD_MODES.get(p["method"]) != p["mode"]:
        raise SpecError(f"{mpath}: method {p['method']!r} is not a {p['mode']} method")
    if p["mode"] == "rate" and (p["t_steps"] < 1 or p["tau"] < 0):
        raise SpecError(f"{mpath}: rate mode needs t_steps >= 1 and tau >= 0")
    if p["tau"] and p["method"] != "srp":
        raise SpecError(f"{mpath}: only srp has probe steps")
    if p["input"]["max_level"] > 2 ** p["input"]["t"] - 1:
        raise SpecError(f"{mpath}: input levels do not fit input.t planes")
    if p["classes"] != man["layers"][-1]["out_shape"][0]:
        raise SpecError(f"{mpath}: classes")


def check_table(man: dict, mpath: Path) -> None:
    """The layer-table constraints of section 2.4, per neuron mode."""
    p = man["program"]
    rate, S = p["mode"] == "rate", rate_steps(p)
    shape, t, prev_levels = list(p["input"]["shape"]), p["input"]["t"], p["input"]["max_level"]
    if len(shape) not in (1, 3):
        raise SpecError(f"{mpath}: input shape {shape}")
    layers = man["layers"]
    for n, lay in enumerate(layers):
        where = f"{mpath}: layer {n} ({lay['name']})"
        last = n == len(layers) - 1
        if lay["in_shape"] != shape or lay["t_in"] != t:
            raise SpecError(f"{where}: does not chain")
        if lay["fires"] == last or (last and lay["kind"] != "dense"):
            raise SpecError(f"{where}: only the last layer, a dense one, does not fire")
        if lay["kind"] == "conv3x3":
            expect = [lay["out_shape"][0], *shape[1:]]
        elif lay["kind"] == "sumpool2x2":
            if rate and n == 0:
                raise SpecError(f"{where}: a rate program cannot start with pooling")
            if len(shape) != 3 or shape[1] % 2 or shape[2] % 2:
                raise SpecError(f"{where}: pooling input {shape}")
            expect = [shape[0], shape[1] // 2, shape[2] // 2]
            if lay["t_out"] != (t if rate else t + 2) or lay["levels"] != 4 * prev_levels:
                raise SpecError(f"{where}: pooling times or levels")
        else:
            expect = [lay["out_shape"][0]]
        if lay["kind"] != "dense" and len(shape) != 3:
            raise SpecError(f"{where}: needs a [C, H, W] input")
        if lay["out_shape"] != expect:
            raise SpecError(f"{where}: out_shape {lay['out_shape']} != {expect}")
        if lay["kind"] != "sumpool2x2":
            if not lay["fires"]:
                if lay["t_out"] != 0 or lay["levels"] != 0:
                    raise SpecError(f"{where}: the output layer has t_out 0 and levels 0")
            elif rate:
                if lay["levels"] != 1 or lay["t_out"] != S:
                    raise SpecError(f"{where}: a rate layer emits 0/1 for S steps")
            elif not 1 <= lay["levels"] <= 2 ** lay["t_out"] - 1:
                raise SpecError(f"{where}: levels do not fit t_out")
        shape, t, prev_levels = lay["out_shape"], lay["t_out"], lay["levels"]


def read_spec_bundle(folder: Path) -> dict:
    """Verify and decode a bundle; return the manifest with decoded ``arrays`` per layer."""
    mpath = folder / "manifest.json"
    if not mpath.is_file():
        raise SpecError(f"{mpath}: missing")
    man = json.loads(mpath.read_text())
    if man.get("format") != "bitspike-image-bundle" or man.get("format_version") != 1:
        raise SpecError(f"{mpath}: not a version-1 bitspike-image-bundle")
    _keys(man, TOP_KEYS, f"{mpath}: top level")
    _keys(man["program"], PROGRAM_KEYS, f"{mpath}: program")
    _keys(man["program"]["input"], {"shape", "max_level", "t"}, f"{mpath}: program.input")
    _keys(man["requirements"], REQUIREMENT_KEYS, f"{mpath}: requirements")
    for n, lay in enumerate(man["layers"]):
        _keys(lay, LAYER_KEYS, f"{mpath}: layers[{n}]")
    p, req = man["program"], man["requirements"]
    rate = p["mode"] == "rate"
    names = MEMORIES + (("v_init",) if rate else ())
    _keys(man["memories"], set(names), f"{mpath}: memories")
    widths = {"weights": (req["weight_bits"], True), "bias": (req["bias_bits"], True),
              "threshold": (req["threshold_bits"], False), "layers": (32, False),
              "v_init": (req["v_init_bits"], True)}
    depths = {"weights": req["weight_words"], "bias": req["bias_words"],
              "threshold": req["threshold_words"], "layers": 16 * req["layers"],
              "v_init": req["v_init_words"]}
    mem = {}
    for name in names:
        entry = man["memories"][name]
        _keys(entry, MEMORY_KEYS, f"{mpath}: memories.{name}")
        if (entry["width"], entry["signed"]) != widths[name]:
            raise SpecError(f"{mpath}: memory {name} has the wrong width or signedness")
        if entry["bytes_per_word"] != -(-entry["width"] // 8) or entry["depth"] != depths[name]:
            raise SpecError(f"{mpath}: memory {name} has the wrong bytes_per_word or depth")
        if entry["files"] != {"hex": f"{name}.hex", "bin": f"{name}.bin"}:
            raise SpecError(f"{mpath}: memory {name} file names")
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
    check_header(man, mpath)
    check_table(man, mpath)
    layers = man["layers"]
    if len(mem["layers"]) != 16 * len(layers):
        raise SpecError(f"{folder / 'layers.hex'}: not 16 words per layer")
    # contiguous placement, in layer order (section 2.4)
    at = dict.fromkeys(BLOCKS, 0)
    for n, lay in enumerate(layers):
        c_out = lay["out_shape"][0]
        pool = lay["kind"] == "sumpool2x2"
        fan_in = {"conv3x3": lay["in_shape"][0] * 9, "sumpool2x2": 4,
                  "dense": int(np.prod(lay["in_shape"]))}[lay["kind"]]
        if lay["fan_in"] != fan_in:
            raise SpecError(f"{mpath}: layer {n} fan_in")
        expect = {"weight": 0 if pool else fan_in * c_out, "bias": 0 if pool else c_out,
                  "threshold": c_out if lay["fires"] and not pool else 0,
                  "v_init": c_out if rate and lay["fires"] and not pool else 0}
        for m, words in expect.items():
            base, count = lay[f"{m}_base"], lay[f"{m}_words"]
            depth = len(mem[BLOCK_MEMORY[m]]) if BLOCK_MEMORY[m] in mem else 0
            if base != at[m] or count != words or base + count > depth:
                raise SpecError(f"{mpath}: layer {n} {m} extent {base}+{count}")
            at[m] += count
        desc = [int(v) for v in mem["layers"][16 * n:16 * n + 16]]
        flags = (1 if lay["fires"] else 0) | (2 if n == len(layers) - 1 else 0)
        table = [[k for k, v in KINDS.items() if v == lay["kind"]][0], flags,
                 *shape3(lay["in_shape"]), *shape3(lay["out_shape"]), lay["t_in"],
                 lay["t_out"], lay["levels"], lay["weight_base"], lay["bias_base"],
                 lay["threshold_base"], lay["fan_in"], lay["v_init_base"]]
        if desc != table:
            raise SpecError(f"{folder / 'layers.hex'}: descriptor {n} {desc} != table {table}")
        lay["descriptor"] = desc
        lay["arrays"] = _layer_arrays(lay, mem)
        a, qmax = lay["arrays"], 2 ** (p["weight_bits"] - 1) - 1
        if a["weights"] is not None and np.abs(a["weights"]).max() > qmax:
            raise SpecError(f"{mpath}: layer {n} uses the most negative weight code")
        if a["threshold"] is not None and a["threshold"].min() < 1:
            raise SpecError(f"{mpath}: layer {n} has a threshold below 1")
    if any(at[m] != len(mem.get(BLOCK_MEMORY[m], ())) for m in BLOCKS):
        raise SpecError(f"{mpath}: memories hold words no layer uses")
    if recompute_requirements(man) != req:
        raise SpecError(f"{mpath}: requirements do not match the memories")
    return man


def _layer_arrays(lay: dict, mem: dict) -> dict:
    """Section 4: address(w[o,c,dy,dx]) = b + ((c*3+dy)*3+dx)*C_out + o; w[o,i]: b + i*C_out + o."""
    c_out = lay["out_shape"][0]
    out = {"weights": None, "bias": None, "threshold": None, "v_init": None}
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
    for field, memory in (("bias", "bias"), ("threshold", "threshold"), ("v_init", "v_init")):
        base, count = lay[f"{field}_base"], lay[f"{field}_words"]
        if count:
            out[field] = mem[memory][base:base + count]
    return out


def input_maxima(man: dict) -> list[int]:
    """Section 2.3: the largest value one input of each layer carries in one step."""
    p = man["program"]
    if p["mode"] == "bitserial":
        return [2 ** lay["t_in"] - 1 for lay in man["layers"]]
    out, prev = [], 2 ** p["input"]["t"] - 1
    for lay in man["layers"]:
        out.append(prev)
        prev = lay["levels"]
    return out


def acc_bound(lay: dict, m: int, S: int) -> int:
    """Section 2.3: ``acc_magnitude`` of one layer whose inputs carry up to ``m`` per step."""
    a = lay["arrays"]
    if lay["kind"] == "sumpool2x2":
        return 4 * m
    per_out = np.abs(a["weights"].reshape(a["weights"].shape[0], -1)).sum(axis=1)
    per_step = int((per_out * m + np.abs(a["bias"])).max())
    if S:  # rate: S steps of integration, plus the start value and one threshold
        bound = S * per_step
        if lay["fires"]:
            bound += int(np.abs(a["v_init"]).max()) + int(a["threshold"].max())
        return bound
    if lay["fires"]:
        d = int(a["threshold"].max())
        return max(per_step, d * (lay["levels"] + 1), d << (lay["t_out"] - 1))
    return per_step


def recompute_requirements(man: dict) -> dict:
    """Section 2.3."""
    layers, p = man["layers"], man["program"]
    S = rate_steps(p)
    acc = [signed_bits(acc_bound(lay, m, S))
           for lay, m in zip(layers, input_maxima(man), strict=True)]

    def largest(field: str, magnitude: bool) -> list[int]:
        arrays = [lay["arrays"][field] for lay in layers if lay["arrays"][field] is not None]
        return [int((np.abs(v) if magnitude else v).max()) for v in arrays]

    v_inits = largest("v_init", True)
    return {
        "mode": p["mode"],
        "weight_bits": p["weight_bits"],
        "acc_bits": max(acc),
        "bias_bits": signed_bits(max(largest("bias", True), default=0)),
        "threshold_bits": unsigned_bits(max(largest("threshold", False), default=1)),
        "max_t": max(max(lay["t_in"], lay["t_out"]) for lay in layers),
        "v_init_words": sum(lay["v_init_words"] for lay in layers),
        "v_init_bits": signed_bits(max(v_inits, default=0)) if p["mode"] == "rate" else 0,
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
    """Sum of ``w * x`` over the inputs, ``x`` = a spike (0/1) or a pooled count, in one step."""
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


def horner(lay: dict, k: np.ndarray, t_in: int, seen: list[int]) -> np.ndarray:
    """``sum_j w[o, j] * k_j`` from ``t_in`` bit planes, MSB first; ``seen`` collects |acc|."""
    acc = None
    for t in range(1, t_in + 1):
        add = synaptic_sum(lay, bit(k, t_in - t))
        acc = add if acc is None else (acc << 1) + add
        seen.append(int(np.abs(acc).max()))
    return acc


def channel(v: np.ndarray, like: np.ndarray) -> np.ndarray:
    return np.broadcast_to(v.reshape((-1,) + (1,) * (like.ndim - 1)), like.shape)


def run_layer(lay: dict, k: np.ndarray, seen: list[int]) -> np.ndarray:
    """One bit-serial layer (section 6.1): levels in, levels (or logits) out."""
    acc = horner(lay, k, lay["t_in"], seen)
    if lay["kind"] == "sumpool2x2":
        u0, d = acc, np.ones_like(acc)
    else:
        u0 = acc + channel(lay["arrays"]["bias"], acc)
        seen.append(int(np.abs(u0).max()))
        if not lay["fires"]:
            return u0  # logits
        d = channel(lay["arrays"]["threshold"], u0)
    t_out, L = lay["t_out"], lay["levels"]
    u = u0.copy()
    level = np.zeros_like(u0)
    for t in range(1, t_out + 1):  # successive approximation
        thr = d << (t_out - t)
        seen.append(int(thr.max()))
        s = (u >= thr).astype(np.int64)
        u = u - s * thr
        level = (level << 1) | s
    if L < 2**t_out - 1:
        seen.append(int(((L + 1) * d).max()))
        level = np.where(u0 >= (L + 1) * d, L, level)
    assert np.array_equal(level, np.clip(np.floor_divide(u0, d), 0, L))
    return level


def infer(man: dict, image: np.ndarray) -> tuple[np.ndarray, dict]:
    """Section 6.1 or 6.2 on one image: the logits, and what the run exercised."""
    k = np.asarray(image, dtype=np.int64)
    assert k.min() >= 0 and k.max() <= man["program"]["input"]["max_level"]
    seen: list[int] = []
    if man["program"]["mode"] == "rate":
        logits, stats = infer_rate(man, k, seen)
    else:
        for lay in man["layers"]:
            k = run_layer(lay, k, seen)
        logits, stats = k, {}
    stats["largest"] = max(seen)
    return logits, stats


def infer_rate(man: dict, k: np.ndarray, seen: list[int]) -> tuple[np.ndarray, dict]:
    """Section 6.2: rate-coded IF, reset by subtraction, S = tau + t_steps steps per layer."""
    p = man["program"]
    tau, S = p["tau"], rate_steps(p)
    stats = {"spikes": [], "masked": [], "dropped": 0}
    x = None  # x[t]: the layer's input in step t (spikes 0/1, or pooled counts)
    for n, lay in enumerate(man["layers"]):
        if lay["kind"] == "sumpool2x2":
            x = [synaptic_sum(lay, xt) for xt in x]  # per-step window sums, no state
            continue
        a = lay["arrays"]
        if n == 0:  # the pixel current, bit-serially from input.t planes, once
            current = horner(lay, k, lay["t_in"], seen)
            adds = [current] * S
        else:
            adds = [synaptic_sum(lay, xt) for xt in x]
        bias = channel(a["bias"], adds[0])
        if not lay["fires"]:  # logits: the counted steps tau+1..S (0-based tau..S-1)
            logits = np.zeros_like(adds[0])
            for t in range(tau, S):
                logits = logits + adds[t] + bias
                seen.append(int(np.abs(logits).max()))
            return logits, stats
        theta, v0 = channel(a["threshold"], adds[0]), channel(a["v_init"], adds[0])
        v = v0.copy()
        keep = np.ones_like(v, dtype=bool)
        out = []
        for t in range(S):  # 0-based: step t + 1 of the doc
            if tau and t == tau:  # end of the probe phase
                keep = v >= 0
                v = v0.copy()
                stats["masked"].append(float(1 - keep.mean()))
            v = v + adds[t] + bias
            seen.append(int(np.abs(v).max()))
            s = (v >= theta).astype(np.int64)
            v = v - s * theta  # also for masked neurons
            seen.append(int(np.abs(v).max()))
            if t >= tau:
                stats["dropped"] += int((s * ~keep).sum())
                s = s * keep
            out.append(s)
        stats["spikes"].append(float(np.mean([o.mean() for o in out])))
        x = out
    raise AssertionError("the last layer fires")


# ---------------------------------------------------------------------------------------------
# tests


def _model(levels: int, per_channel: bool) -> nn.Module:
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
    return model.eval()


NORM = Normalization(16, (0.0,), (0.4,))


def _program(levels: int, per_channel: bool, method: str = "bitserial", steps: int = 0,
             tau: int = 0):
    model = _model(levels, per_channel)
    if method == "bitserial":
        return convert_model(model, input_shape=(1, 8, 8), normalization=NORM)
    program, _ = convert_rate(model, method=method, steps=steps, tau=tau, input_shape=(1, 8, 8),
                              normalization=NORM)
    return program


# Bit-serial: L = 15 fills T = 4 bits; L = 12 (T = 4) exercises the clip at L, one D per channel.
# Rate: qcfs (tau = 0, V0 = Theta/2), srp (tau = 2 probe steps, per-channel thresholds) and
# deng-gu (V0 = 0: a 1-bit v_init memory).
CASES = {"L15-per-layer": (15, False), "L12-per-channel": (12, True),
         "rate-qcfs-T4": (15, False, "qcfs", 4, 0), "rate-srp-T4-tau2": (15, True, "srp", 4, 2),
         "rate-deng-gu-T3": (15, False, "deng-gu", 3, 0)}


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
    p = man["program"]
    assert (p["mode"], p["method"], p["t_steps"], p["tau"]) == (
        program.mode, program.method, program.t_steps, program.tau)
    assert set(man["memories"]) == set(MEMORIES) | ({"v_init"} if program.mode == "rate" else set())
    assert len(man["layers"]) == len(program.layers)
    for lay, ref in zip(man["layers"], program.layers, strict=True):
        assert (lay["name"], lay["kind"]) == (ref.name, ref.kind)
        for field in ("weights", "bias", "threshold", "v_init"):
            got, want = lay["arrays"][field], getattr(ref, field)
            assert (got is None) == (want is None), (ref.name, field)
            if want is not None:
                assert got.shape == want.shape and np.array_equal(got, want), (ref.name, field)
    assert recompute_requirements(man) == program.requirements()
    assert input_maxima(man) == program.input_maxima()


def test_descriptors_decode_to_the_layer_table(bundle):
    program, folder = bundle
    man = read_spec_bundle(folder)
    v_at = 0
    for n, (lay, ref) in enumerate(zip(man["layers"], program.layers, strict=True)):
        d = lay["descriptor"]
        assert KINDS[d[0]] == ref.kind
        assert bool(d[1] & 1) == ref.fires and bool(d[1] & 2) == (n == len(man["layers"]) - 1)
        assert d[1] & ~3 == 0
        assert d[2:5] == list(ref.in_shape) + [1] * (3 - len(ref.in_shape))
        assert d[5:8] == list(ref.out_shape) + [1] * (3 - len(ref.out_shape))
        assert d[8:11] == [ref.t_in, ref.t_out, ref.levels]
        assert d[11:14] == [lay["weight_base"], lay["bias_base"], lay["threshold_base"]]
        assert d[14] == ref.fan_in
        assert d[15] == lay["v_init_base"] == v_at  # word 15: v_init base (0 in bit-serial)
        v_at += 0 if ref.v_init is None else ref.v_init.size
    if program.mode == "rate":  # section 2.4: times and levels of the rate mode
        S = program.tau + program.t_steps
        first, *rest = man["layers"]
        assert first["t_in"] == program.input.t and first["t_out"] == S
        assert all(lay["t_in"] == S for lay in rest)
        assert all(lay["levels"] == (4 if lay["kind"] == "sumpool2x2" else 1)
                   for lay in man["layers"][:-1])  # digits-cnn: no pool after a pool


def test_inference_matches_golden(bundle, images):
    program, folder = bundle
    man = read_spec_bundle(folder)
    golden = run_program(program, images)
    runs = [infer(man, img.numpy()) for img in images]
    logits = np.stack([r[0] for r in runs])
    assert np.array_equal(logits, golden.logits.numpy())
    assert np.array_equal(np.argmax(logits, axis=1), golden.classes.numpy())
    # requirements.acc_bits holds every value the register took (section 2.3)
    assert max(s["largest"] for _, s in runs) <= 2 ** (man["requirements"]["acc_bits"] - 1) - 1
    # the case is not degenerate: hidden layers fire, and the logits differ between images
    hidden = golden.levels[0].numpy()
    assert 0 < (hidden > 0).mean() < 1
    assert len({tuple(row) for row in logits}) > 1
    if program.mode == "rate":
        assert all(0 < f < 1 for _, s in runs for f in s["spikes"])
    if program.tau:  # the probe phase masks neurons that would have fired later
        assert all(0 < f < 1 for _, s in runs for f in s["masked"])
        assert sum(s["dropped"] for _, s in runs) > 0


def test_clip_at_L_is_exercised():
    program = _program(12, True)
    golden = run_program(program, load_dataset("digits").x_test[:5])
    firing = [lv for lay, lv in zip(program.layers, golden.levels, strict=True)
              if lay.fires and lay.kind != "sumpool2x2"]
    assert any(int(lv.max()) == 12 for lv in firing)


def _copy(folder: Path, dest: Path) -> dict:
    dest.mkdir()
    for f in folder.iterdir():
        (dest / f.name).write_bytes(f.read_bytes())
    return json.loads((dest / "manifest.json").read_text())


DAMAGES = ["flip-bin-byte", "rehash-bin", "bad-hex-line", "width", "unknown-key",
           "v-init-base", "descriptor-word-15", "acc-bits"]


@pytest.mark.parametrize("damage", DAMAGES)
def test_reader_refuses_a_damaged_bundle(bundle, tmp_path, damage):
    program, folder = bundle
    copy = tmp_path / "b"
    man = _copy(folder, copy)
    expect = "manifest.json"
    if damage in ("flip-bin-byte", "rehash-bin"):
        data = bytearray((copy / "bias.bin").read_bytes())
        data[0] ^= 1
        (copy / "bias.bin").write_bytes(bytes(data))
        if damage == "rehash-bin":  # consistent hash, but the bin disagrees with the hex
            man["sha256"]["bias.bin"] = _sha256(copy / "bias.bin")
        expect = "bias.bin"
    elif damage == "bad-hex-line":
        text = (copy / "threshold.hex").read_text().replace("\n", "\n0x", 1)
        (copy / "threshold.hex").write_text(text)
        man["sha256"]["threshold.hex"] = _sha256(copy / "threshold.hex")
        expect = "threshold.hex"
    elif damage == "width":
        man["memories"]["threshold"]["width"] += 3
    elif damage == "unknown-key":
        man["layers"][0]["comment"] = "not in version 1"
    elif damage == "v-init-base":
        man["layers"][-1]["v_init_base"] += 1
    elif damage == "descriptor-word-15":  # the descriptor must equal the table, word 15 too
        lines = (copy / "layers.hex").read_text().split("\n")
        lines[15] = f"{int(lines[15], 16) + 1:08x}"
        (copy / "layers.hex").write_text("\n".join(lines))
        words = [int(x, 16) for x in lines[:-1]]
        (copy / "layers.bin").write_bytes(b"".join(w.to_bytes(4, "little") for w in words))
        for f in ("layers.hex", "layers.bin"):
            man["sha256"][f] = _sha256(copy / f)
        expect = "layers.hex"
    else:
        man["requirements"]["acc_bits"] -= 1
    (copy / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(SpecError, match=re.escape(expect)):
        read_spec_bundle(copy)


def test_v_init_memory_exists_only_in_rate_mode(bundle, tmp_path):
    program, folder = bundle
    copy = tmp_path / "b"
    man = _copy(folder, copy)
    if program.mode == "rate":  # a rate bundle without its v_init memory
        del man["memories"]["v_init"]
    else:  # a bit-serial bundle that lists one
        man["memories"]["v_init"] = dict(man["memories"]["bias"], files={
            "hex": "v_init.hex", "bin": "v_init.bin"})
    (copy / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(SpecError, match=r"manifest\.json: memories"):
        read_spec_bundle(copy)


@pytest.mark.parametrize("case", ["L15-per-layer", "rate-srp-T4-tau2"])
def test_a_non_minimal_input_t_decodes_and_runs_the_same(case, tmp_path, images):
    """Section 2.2: any input.t with max_level <= 2^t - 1 is valid; the extra planes are 0."""
    import copy

    from bitspike.sw.program import InputSpec

    program = _program(*CASES[case])
    wider = copy.deepcopy(program)
    t = program.input.t + 2
    wider.input = InputSpec(program.input.shape, program.input.max_level, t)
    wider.layers[0].t_in = t
    write_bundle(wider, tmp_path / "wide")
    man = read_spec_bundle(tmp_path / "wide")
    assert man["program"]["input"]["t"] == t
    assert recompute_requirements(man) == wider.requirements()
    logits = np.stack([infer(man, img.numpy())[0] for img in images])
    assert np.array_equal(logits, run_program(program, images).logits.numpy())


def test_extra_sha256_entries_are_ignored(tmp_path):
    """Section 2.6: entries of sha256 for names the bundle does not list are ignored."""
    program = _program(*CASES["L15-per-layer"])
    write_bundle(program, tmp_path / "b")
    path = tmp_path / "b" / "manifest.json"
    man = json.loads(path.read_text())
    man["sha256"]["notes.txt"] = "0" * 64
    path.write_text(json.dumps(man))
    assert read_spec_bundle(tmp_path / "b")["program"] == man["program"]
