"""The reference reader refuses every bundle that does not check out, naming the file."""

import copy
import hashlib
import json
import re

import pytest
import torch

from bitspike.sw.convert import convert_model
from bitspike.sw.data import Normalization
from bitspike.sw.errors import BundleError
from bitspike.sw.golden import run_program
from bitspike.sw.images import read_bundle, write_bundle
from bitspike.sw.models import build_model
from bitspike.sw.program import InputSpec, Program


@pytest.fixture
def bundle(tmp_path):
    torch.manual_seed(0)
    model = build_model("digits-cnn", levels=15).eval()
    program = convert_model(model, input_shape=(1, 8, 8),
                            normalization=Normalization(16, (0.0,), (0.4,)))
    write_bundle(program, tmp_path / "prog")
    return tmp_path / "prog", program


def _rehash(folder, name):
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["sha256"][name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _edit_manifest(folder, edit):
    manifest = json.loads((folder / "manifest.json").read_text())
    edit(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_round_trip_is_exact(bundle):
    folder, program = bundle
    back = read_bundle(folder)
    x = torch.randint(0, 17, (8, 1, 8, 8))
    assert torch.equal(run_program(program, x).logits, run_program(back, x).logits)
    assert back.meta == program.meta and back.summary() == program.summary()
    again = Program.load(folder)  # the Program's own entry points use the same reader
    assert again.summary() == program.summary()
    again.save(folder.parent / "copy")
    assert (folder.parent / "copy" / "weights.hex").read_text() == (
        folder / "weights.hex").read_text()


def test_tampered_hex_names_the_file(bundle):
    folder, _ = bundle
    text = (folder / "weights.hex").read_text()
    (folder / "weights.hex").write_text(("ff" if text[:2] != "ff" else "00") + text[2:])
    with pytest.raises(BundleError, match=r"weights\.hex: sha256 does not match"):
        read_bundle(folder)


def test_tampered_hex_with_forged_hash_disagrees_with_bin(bundle):
    folder, _ = bundle
    text = (folder / "bias.hex").read_text()
    first, rest = text.split("\n", 1)
    (folder / "bias.hex").write_text(f"{(int(first, 16) ^ 1):0{len(first)}x}\n{rest}")
    _rehash(folder, "bias.hex")
    with pytest.raises(BundleError, match=r"bias\.bin: disagrees with bias\.hex"):
        read_bundle(folder)


def test_missing_file(bundle):
    folder, _ = bundle
    (folder / "threshold.bin").unlink()
    with pytest.raises(BundleError, match=r"threshold\.bin: missing"):
        read_bundle(folder)


def test_edited_manifest_field_is_named(bundle):
    folder, _ = bundle
    _edit_manifest(folder, lambda m: m["layers"][1].update(levels=7))
    with pytest.raises(BundleError, match=r"layers\[1\]\.levels|levels"):
        read_bundle(folder)


def test_edited_fan_in_is_named(bundle):
    folder, _ = bundle
    _edit_manifest(folder, lambda m: m["layers"][0].update(fan_in=12345))
    with pytest.raises(BundleError, match=r"field layers\[0\]\.fan_in"):
        read_bundle(folder)


def test_edited_memory_width_is_named(bundle):
    folder, _ = bundle
    _edit_manifest(folder, lambda m: m["memories"]["threshold"].update(width=12))
    with pytest.raises(BundleError, match=r"threshold"):
        read_bundle(folder)


def test_unknown_version(bundle):
    folder, _ = bundle
    _edit_manifest(folder, lambda m: m.update(format_version=99))
    with pytest.raises(BundleError, match="format version 99 is not supported"):
        read_bundle(folder)


def test_not_json(bundle):
    folder, _ = bundle
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match=r"manifest\.json: not valid JSON"):
        read_bundle(folder)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="manifest.json is missing"):
        read_bundle(tmp_path)
    with pytest.raises(BundleError, match="is not a bundle folder"):
        read_bundle(tmp_path / "nowhere")


@pytest.mark.parametrize("line", ["0x1f", " 1f", "1_f", "zz", "1"])
def test_hex_lines_are_strict(bundle, line):
    folder, _ = bundle
    lines = (folder / "layers.hex").read_text().split("\n")
    lines[0] = line
    (folder / "layers.hex").write_text("\n".join(lines))
    _rehash(folder, "layers.hex")
    with pytest.raises(BundleError, match=r"layers\.hex: line 1"):
        read_bundle(folder)


# docs/memory-images.md section 2 and 2.6: unknown keys are refused everywhere except inside
# program.meta and the sha256 object, whose entries for other names are ignored.


def test_extra_sha256_entries_are_ignored(bundle):
    folder, program = bundle

    def edit(manifest):
        manifest["sha256"]["notes.txt"] = "0" * 64  # a file that exists, with another digest
        manifest["sha256"]["gone.bin"] = "not a digest"  # a file that does not exist
    _edit_manifest(folder, edit)
    (folder / "notes.txt").write_text("a tool's own file\n")
    assert read_bundle(folder).summary() == program.summary()


def test_sha256_must_be_an_object(bundle):
    folder, _ = bundle
    _edit_manifest(folder, lambda m: m.update(sha256=sorted(m["sha256"])))
    with pytest.raises(BundleError, match=r"manifest\.json: malformed manifest.*sha256 must be"):
        read_bundle(folder)


@pytest.mark.parametrize("where,path", [
    ((), "extra"), (("program",), "program.extra"), (("program", "input"), "program.input.extra"),
    (("requirements",), "requirements.extra"), (("layers", 1), "layers[1].extra"),
    (("memories", "bias"), "memories.bias.extra"), (("memories", "bias", "files"),
                                                    "memories.bias.files.extra"),
])
def test_an_unknown_key_elsewhere_is_refused(bundle, where, path):
    folder, _ = bundle

    def edit(manifest):
        obj = manifest
        for key in where:
            obj = obj[key]
        obj["extra"] = 1
    _edit_manifest(folder, edit)
    with pytest.raises(BundleError, match=rf"manifest\.json: field {re.escape(path)} does not"):
        read_bundle(folder)


def test_an_unknown_key_inside_meta_is_kept(bundle):
    folder, _ = bundle
    _edit_manifest(folder, lambda m: m["program"]["meta"].update(bench="any provenance"))
    assert read_bundle(folder).meta["bench"] == "any provenance"


# docs/memory-images.md 2.2: a non-minimal input.t is valid; a reader accepts it and keeps it.


def _with_input_planes(program: Program, t: int) -> Program:
    wider = copy.deepcopy(program)
    wider.input = InputSpec(program.input.shape, program.input.max_level, t)
    wider.layers[0].t_in = t
    wider.validate()
    return wider


@pytest.mark.parametrize("extra", [1, 3])
def test_a_non_minimal_input_t_is_accepted_and_kept(bundle, tmp_path, extra):
    _, program = bundle
    t = program.input.t + extra
    write_bundle(_with_input_planes(program, t), tmp_path / "wide")
    manifest = json.loads((tmp_path / "wide" / "manifest.json").read_text())
    assert manifest["program"]["input"]["t"] == t and manifest["layers"][0]["t_in"] == t
    assert manifest["requirements"]["max_t"] >= t
    back = read_bundle(tmp_path / "wide")
    assert back.input.t == t and back.layers[0].t_in == t
    x = torch.randint(0, program.input.max_level + 1, (8, 1, 8, 8))
    assert torch.equal(run_program(back, x).logits, run_program(program, x).logits)


def test_input_t_must_still_chain_into_the_first_layer(bundle):
    folder, program = bundle
    _edit_manifest(folder, lambda m: m["program"]["input"].update(t=program.input.t + 1))
    with pytest.raises(BundleError, match=r"manifest\.json: the layer table is inconsistent"):
        read_bundle(folder)
