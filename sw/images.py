"""Memory-image bundles: the saved form of a :class:`~bitspike.sw.program.Program`.

A bundle is a folder with, per memory, a ``.hex`` file for Verilog ``$readmemh`` and a raw ``.bin``
file, plus ``manifest.json`` (format version, the engine parameters the Program needs, the layer
table, the sha256 of every file). docs/memory-images.md is the complete specification; this module
is its reference writer and reader. The reader verifies everything and refuses, naming the file,
any bundle that does not check out.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import BundleError, ProgramError
from .plan import LayerKind
from .program import PROGRAM_FORMAT_VERSION, InputSpec, Layer, Program

BUNDLE_FORMAT = "bitspike-image-bundle"
BUNDLE_VERSION = 1
MANIFEST = "manifest.json"
KIND_CODES = {kind.program_name: int(kind) for kind in LayerKind}  # numbered in sw/plan.py
DESCRIPTOR_WORDS = 16
DESCRIPTOR_BITS = 32
FLAG_FIRES, FLAG_LAST = 1, 2
_HEX_WORD = re.compile(r"[0-9a-fA-F]+")


@dataclass(frozen=True)
class MemorySpec:
    """One memory: ``depth`` words of ``width`` bits, signed (two's complement) or not."""

    name: str
    width: int
    signed: bool

    @property
    def hex_digits(self) -> int:
        return -(-self.width // 4)

    @property
    def bytes_per_word(self) -> int:
        return -(-self.width // 8)


# ---------------------------------------------------------------------------------------------
# word encodings


def _check_range(values: np.ndarray, spec: MemorySpec) -> None:
    lo = -(2 ** (spec.width - 1)) if spec.signed else 0
    hi = 2 ** (spec.width - 1) - 1 if spec.signed else 2**spec.width - 1
    if values.size and (values.min() < lo or values.max() > hi):
        raise BundleError(f"memory {spec.name}: values {values.min()}..{values.max()} do not fit "
                          f"{spec.width} {'signed' if spec.signed else 'unsigned'} bits")


def _unsigned(values: np.ndarray, bits: int) -> list[int]:
    """Two's-complement words of ``bits`` bits as Python ints (vectorized masking)."""
    return (np.asarray(values, dtype=np.int64).astype(np.uint64)
            & np.uint64((1 << bits) - 1)).tolist()


def encode_hex(values: np.ndarray, spec: MemorySpec) -> str:
    """One word per line, ``hex_digits`` lowercase digits, two's complement masked to ``width``."""
    _check_range(values, spec)
    fmt = f"0{spec.hex_digits}x"
    return "".join(f"{v:{fmt}}\n" for v in _unsigned(values, spec.width))


def encode_bin(values: np.ndarray, spec: MemorySpec) -> bytes:
    """``bytes_per_word`` little-endian bytes per word, sign-extended to the full byte width."""
    _check_range(values, spec)
    nbytes = spec.bytes_per_word
    words = np.asarray(_unsigned(values, 8 * nbytes), dtype=np.uint64)
    return words.astype("<u8").view(np.uint8).reshape(-1, 8)[:, :nbytes].tobytes()


def decode_hex(text: str, spec: MemorySpec, *, filename: str) -> np.ndarray:
    """Strict inverse of :func:`encode_hex`: exactly ``hex_digits`` digits and ``\\n`` per line."""
    if text and not text.endswith("\n"):
        raise BundleError(f"{filename}: the last line has no newline (truncated?)")
    lines = text.split("\n")[:-1] if text else []
    if not re.fullmatch(rf"(?:[0-9a-fA-F]{{{spec.hex_digits}}}\n)*", text):
        for lineno, line in enumerate(lines, 1):  # find the first bad line for the message
            if len(line) != spec.hex_digits or not _HEX_WORD.fullmatch(line):
                raise BundleError(f"{filename}: line {lineno} is {line!r}, expected exactly "
                                  f"{spec.hex_digits} hex digits for a {spec.width}-bit word")
    raw = np.asarray([int(line, 16) for line in lines], dtype=np.uint64)
    too_wide = np.flatnonzero(raw >> np.uint64(spec.width)) if raw.size else []
    if len(too_wide):
        raise BundleError(f"{filename}: line {too_wide[0] + 1} exceeds {spec.width} bits")
    return _sign_extend(raw, spec.width, spec.signed)


def _sign_extend(raw: np.ndarray, bits: int, signed: bool) -> np.ndarray:
    values = raw.astype(np.int64)
    if signed and raw.size:
        negative = (raw >> np.uint64(bits - 1)) & np.uint64(1)
        values = values - (negative.astype(np.int64) << bits)
    return values


def decode_bin(data: bytes, spec: MemorySpec, *, filename: str) -> np.ndarray:
    nbytes = spec.bytes_per_word
    if len(data) % nbytes:
        raise BundleError(f"{filename}: {len(data)} bytes is not a whole number of "
                          f"{nbytes}-byte words")
    padded = np.zeros((len(data) // nbytes, 8), dtype=np.uint8)
    padded[:, :nbytes] = np.frombuffer(data, dtype=np.uint8).reshape(-1, nbytes)
    return _sign_extend(padded.view("<u8").reshape(-1), 8 * nbytes, spec.signed)


# ---------------------------------------------------------------------------------------------
# layout


def weights_to_words(layer: Layer) -> np.ndarray:
    """Input-major order: for each input tap (c, dy, dx) or input i, all output channels.

    One row of ``C_out`` consecutive words per input is what a group of output lanes reads in one
    access (the engine packs ``P`` of them into one wide word at elaboration).
    """
    w = layer.weights
    return w.reshape(w.shape[0], -1).T.reshape(-1)


def words_to_weights(words: np.ndarray, layer: Layer) -> np.ndarray:
    c_out = layer.out_shape[0]
    if layer.kind == "conv3x3":
        shape = (c_out, layer.in_shape[0], 3, 3)
    else:
        shape = (c_out, int(np.prod(layer.in_shape)))
    return words.reshape(-1, c_out).T.reshape(shape).copy()


def _shape3(shape) -> list[int]:
    s = list(shape)
    return s + [1] * (3 - len(s))


def layer_descriptor(layer: Layer, bases: dict, last: bool) -> list[int]:
    """The 16 words of the layer-descriptor memory for one layer (docs/memory-images.md)."""
    flags = (FLAG_FIRES if layer.fires else 0) | (FLAG_LAST if last else 0)
    return [KIND_CODES[layer.kind], flags, *_shape3(layer.in_shape), *_shape3(layer.out_shape),
            layer.t_in, layer.t_out, layer.levels, bases["weight_base"], bases["bias_base"],
            bases["threshold_base"], layer.fan_in, bases["v_init_base"]]


def _layout(program: Program) -> tuple[list[dict], dict[str, np.ndarray]]:
    bases, w_words, b_words, d_words, v_words = [], [], [], [], []
    w_at = b_at = d_at = v_at = 0
    for lay in program.layers:
        entry = {"weight_base": w_at, "weight_words": 0, "bias_base": b_at, "bias_words": 0,
                 "threshold_base": d_at, "threshold_words": 0, "v_init_base": v_at,
                 "v_init_words": 0}
        if lay.weights is not None:
            words = weights_to_words(lay)
            w_words.append(words)
            entry["weight_words"] = int(words.size)
            w_at += words.size
        if lay.bias is not None:
            b_words.append(lay.bias)
            entry["bias_words"] = int(lay.bias.size)
            b_at += lay.bias.size
        if lay.threshold is not None:
            d_words.append(lay.threshold)
            entry["threshold_words"] = int(lay.threshold.size)
            d_at += lay.threshold.size
        if lay.v_init is not None:
            v_words.append(lay.v_init)
            entry["v_init_words"] = int(lay.v_init.size)
            v_at += lay.v_init.size
        bases.append(entry)
    desc = [layer_descriptor(lay, b, i == len(program.layers) - 1)
            for i, (lay, b) in enumerate(zip(program.layers, bases, strict=True))]

    def cat(parts):
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    memories = {"weights": cat(w_words), "bias": cat(b_words), "threshold": cat(d_words),
                "layers": np.asarray(desc, dtype=np.int64).reshape(-1)}
    if program.mode == "rate":  # initial potentials exist only for rate-coded neurons
        memories["v_init"] = cat(v_words)
    return bases, memories


def memory_specs(program: Program) -> dict[str, MemorySpec]:
    req = program.requirements()
    specs = {"weights": MemorySpec("weights", program.weight_bits, True),
             "bias": MemorySpec("bias", req["bias_bits"], True),
             "threshold": MemorySpec("threshold", req["threshold_bits"], False),
             "layers": MemorySpec("layers", DESCRIPTOR_BITS, False)}
    if program.mode == "rate":
        specs["v_init"] = MemorySpec("v_init", req["v_init_bits"], True)
    return specs


# ---------------------------------------------------------------------------------------------
# writer


def build_manifest(program: Program) -> tuple[dict, dict[str, np.ndarray]]:
    """The manifest (without ``sha256``) and the memory contents of ``program``."""
    bases, memories = _layout(program)
    specs = memory_specs(program)
    mem_entries = {}
    for name, values in memories.items():
        spec = specs[name]
        mem_entries[name] = {"width": spec.width, "signed": spec.signed, "depth": int(values.size),
                             "bytes_per_word": spec.bytes_per_word,
                             "files": {"hex": f"{name}.hex", "bin": f"{name}.bin"}}
    layers = [{**lay.summary(), **b, "fan_in": lay.fan_in}
              for lay, b in zip(program.layers, bases, strict=True)]
    manifest = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "program": {"format_version": program.format_version, "mode": program.mode,
                    "method": program.method, "t_steps": program.t_steps, "tau": program.tau,
                    "weight_bits": program.weight_bits, "classes": program.classes,
                    "input": {"shape": list(program.input.shape),
                              "max_level": program.input.max_level, "t": program.input.t},
                    "meta": program.meta, "notes": program.notes},
        "requirements": program.requirements(),
        "layers": layers,
        "memories": mem_entries,
    }
    # normalize through JSON so that the reader's comparison sees exactly what is on disk
    return json.loads(json.dumps(manifest)), memories


def write_bundle(program: Program, folder: str | Path) -> dict:
    """Write ``program`` as a bundle into ``folder``; return the manifest."""
    program.validate()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    manifest, memories = build_manifest(program)
    specs = memory_specs(program)
    for name, values in memories.items():
        files = manifest["memories"][name]["files"]
        (folder / files["hex"]).write_text(encode_hex(values, specs[name]))
        (folder / files["bin"]).write_bytes(encode_bin(values, specs[name]))
    manifest["sha256"] = {f: _sha256(folder / f) for m in manifest["memories"].values()
                          for f in m["files"].values()}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# reader


def read_manifest(folder: str | Path) -> dict:
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise BundleError(f"{folder} is not a bundle folder (convert a checkpoint with "
                          "`bitspike convert model.pt --out DIR`)")
    if not path.is_file():
        raise BundleError(f"{path} is missing: {folder} is not a bitspike image bundle")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: not a {BUNDLE_FORMAT} manifest")
    if manifest.get("format_version") != BUNDLE_VERSION:
        raise BundleError(f"{path}: bundle format version {manifest.get('format_version')!r} is "
                          f"not supported (this bitspike reads version {BUNDLE_VERSION})")
    return manifest


def _read_memory(folder: Path, name: str, entry: dict, hashes: dict) -> np.ndarray:
    spec = MemorySpec(name, int(entry["width"]), bool(entry["signed"]))
    values = {}
    for kind in ("hex", "bin"):
        fname = entry["files"][kind]
        path = folder / fname
        if not path.is_file():
            raise BundleError(f"{path}: missing (listed in {MANIFEST})")
        if fname not in hashes:
            raise BundleError(f"{folder / MANIFEST}: no sha256 recorded for {fname}")
        if _sha256(path) != hashes[fname]:
            raise BundleError(f"{path}: sha256 does not match {MANIFEST}: the file was changed "
                              "or corrupted; re-run `bitspike convert`")
        if kind == "hex":
            values[kind] = decode_hex(path.read_text(), spec, filename=str(path))
        else:
            values[kind] = decode_bin(path.read_bytes(), spec, filename=str(path))
        if values[kind].size != int(entry["depth"]):
            raise BundleError(f"{path}: {values[kind].size} words, {MANIFEST} says "
                              f"{entry['depth']}")
    if not np.array_equal(values["hex"], values["bin"]):
        raise BundleError(f"{folder / entry['files']['bin']}: disagrees with "
                          f"{entry['files']['hex']}")
    return values["hex"]


def read_bundle(folder: str | Path) -> Program:
    """Read and verify a bundle; return its Program.

    Raises
    ------
    BundleError
        Naming the file that is missing, malformed, or does not match the manifest.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    where = folder / MANIFEST
    try:
        hashes = manifest["sha256"]
        if not isinstance(hashes, dict):  # file name -> digest; other names are ignored (2.6)
            raise TypeError(f"sha256 must be an object, not {type(hashes).__name__}")
        p = manifest["program"]
        names = ["weights", "bias", "threshold", "layers"]
        if p["mode"] == "rate":
            names.append("v_init")
        mems = {name: _read_memory(folder, name, manifest["memories"][name], hashes)
                for name in names}
        spec = InputSpec(tuple(p["input"]["shape"]), int(p["input"]["max_level"]),
                         int(p["input"]["t"]))
        layers = []
        for entry in manifest["layers"]:
            lay = Layer(entry["name"], entry["kind"], tuple(entry["in_shape"]),
                        tuple(entry["out_shape"]), int(entry["t_in"]), int(entry["t_out"]),
                        int(entry["levels"]), bool(entry["fires"]), unit=float(entry["unit"]),
                        source=entry.get("source", ""))
            wb, wn = int(entry["weight_base"]), int(entry["weight_words"])
            bb, bn = int(entry["bias_base"]), int(entry["bias_words"])
            db, dn = int(entry["threshold_base"]), int(entry["threshold_words"])
            vb, vn = int(entry["v_init_base"]), int(entry["v_init_words"])
            extents = [("weights", wb, wn), ("bias", bb, bn), ("threshold", db, dn)]
            if vn:
                extents.append(("v_init", vb, vn))
            for mem, base, n in extents:
                if mem not in mems:
                    raise BundleError(f"{where}: layer {lay.name} uses memory {mem}, which a "
                                      f"{p['mode']} bundle does not have")
                if base < 0 or n < 0 or base + n > mems[mem].size:
                    raise BundleError(f"{where}: layer {lay.name} reads {mem} words "
                                      f"{base}..{base + n - 1} beyond the memory's depth "
                                      f"{mems[mem].size}")
            if wn:
                lay.weights = words_to_weights(mems["weights"][wb:wb + wn], lay)
            if bn:
                lay.bias = mems["bias"][bb:bb + bn].copy()
            if dn:
                lay.threshold = mems["threshold"][db:db + dn].copy()
            if vn:
                lay.v_init = mems["v_init"][vb:vb + vn].copy()
            layers.append(lay)
        program = Program(p["mode"], spec, layers, int(p["weight_bits"]), method=p["method"],
                          t_steps=int(p["t_steps"]), tau=int(p["tau"]), meta=p.get("meta", {}),
                          notes=list(p.get("notes", [])),
                          format_version=int(p.get("format_version", PROGRAM_FORMAT_VERSION)))
    except BundleError:
        raise
    except (KeyError, TypeError, ValueError, ProgramError) as e:
        raise BundleError(f"{where}: malformed manifest ({type(e).__name__}: {e})") from None
    try:
        program.validate()
    except ProgramError as e:
        raise BundleError(f"{where}: the layer table is inconsistent: {e}") from None
    # Everything the manifest says must be what the memories imply: regenerate and compare.
    expected, memories = build_manifest(program)
    for name, values in memories.items():
        if not np.array_equal(values, mems[name]):
            raise BundleError(f"{folder / manifest['memories'][name]['files']['hex']}: contents "
                              f"do not match the layer table in {MANIFEST}")
    recorded = {k: v for k, v in manifest.items() if k != "sha256"}
    where_differs = _first_difference(expected, recorded, "")
    if where_differs is not None:
        raise BundleError(f"{where}: field {where_differs} does not match the memories and the "
                          "layer table (the manifest was edited or is inconsistent)")
    return program


def _first_difference(a, b, path: str) -> str | None:
    """Path of the first leaf where two JSON values differ, or ``None`` when equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            found = _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else key)
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = _first_difference(x, y, f"{path}[{i}]")
            if found:
                return found
        return None
    return None if a == b else path
