"""``bitspike eval PROG --outputs FILE``: per-image reference results for a testbench outside
Python (docs/memory-images.md section 10), equal to the golden model and the cycle model."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from bitspike.sw.cli import DEFAULT_LANES, build_parser, main
from bitspike.sw.cycles import engine_cycles
from bitspike.sw.golden import run_program
from bitspike.sw.images import read_bundle

from .test_cli import run_cli


@pytest.fixture(scope="module")
def bundle(quick_checkpoint, tmp_path_factory):
    folder = tmp_path_factory.mktemp("outputs") / "prog"
    assert main(["convert", str(quick_checkpoint), "--out", str(folder)]) == 0
    return folder


def _reference(folder, digits, lanes):
    program = read_bundle(folder)
    result = run_program(program, digits.x_test)
    cycles = [engine_cycles(program, result, i, lanes=lanes).total
              for i in range(len(digits.x_test))]
    return result, np.array(cycles)


def test_npz_holds_the_golden_results_and_cycles(bundle, digits, tmp_path, capsys):
    path = tmp_path / "ref.npz"
    rc, out, _ = run_cli(capsys, "eval", bundle, "--outputs", path, "--lanes", 4, "--json")
    assert rc == 0
    report = json.loads(out)
    assert report["outputs"] == {"file": str(path), "images": 360, "lanes": 4}
    result, cycles = _reference(bundle, digits, 4)
    with np.load(path) as z:
        assert set(z.files) == {"index", "dataset_index", "label", "class", "logits", "cycles",
                                "inputs", "lanes"}
        assert np.array_equal(z["index"], np.arange(360))
        assert np.array_equal(z["label"], digits.y_test.numpy())
        assert np.array_equal(z["class"], result.classes.numpy())
        assert np.array_equal(z["logits"], result.logits.numpy())
        assert z["logits"].shape == (360, 10) and z["logits"].dtype == np.int64
        assert np.array_equal(z["cycles"], cycles)
        assert np.array_equal(z["inputs"], digits.x_test.numpy())
        assert int(z["lanes"]) == 4
        # the dataset positions reproduce the inputs from the dataset's own order
        from sklearn.datasets import load_digits

        images = load_digits().images.astype(np.int64)
        assert np.array_equal(images[z["dataset_index"]], z["inputs"][:, 0])
        assert float((z["class"] == z["label"]).mean()) == report["int_accuracy"]


def test_csv_from_a_checkpoint_has_one_row_per_image(quick_checkpoint, bundle, digits, tmp_path,
                                                     capsys):
    path = tmp_path / "ref.csv"
    rc, out, _ = run_cli(capsys, "eval", quick_checkpoint, "--outputs", path)
    assert rc == 0 and f"wrote {path}" in out and f"P = {DEFAULT_LANES}" in out
    result, cycles = _reference(bundle, digits, DEFAULT_LANES)  # the same Program as the bundle
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], np.array(rows[1:], dtype=np.int64)
    assert header[:14] == ["index", "label", "class", "cycles"] + [f"logit{k}" for k in range(10)]
    assert header[14:] == ["dataset_index"] + [f"input{j}" for j in range(64)]
    assert body.shape == (360, 4 + 10 + 1 + 64)
    col = {name: body[:, i] for i, name in enumerate(header)}
    assert np.array_equal(col["index"], np.arange(360))
    assert np.array_equal(col["label"], digits.y_test.numpy())
    assert np.array_equal(col["class"], result.classes.numpy())
    assert np.array_equal(col["cycles"], cycles)
    assert np.array_equal(body[:, 4:14], result.logits.numpy())
    assert np.array_equal(col["dataset_index"], digits.test_index.numpy())
    assert np.array_equal(body[:, 15:], digits.x_test.reshape(360, -1).numpy())  # (C, H, W)
    assert path.read_bytes().endswith(b"\n") and b"\r" not in path.read_bytes()


@pytest.mark.parametrize("name", ["ref.json", "ref", "ref.npz.txt"])
def test_other_suffixes_are_refused_before_any_work(tmp_path, capsys, name):
    path = tmp_path / name
    rc, out, err = run_cli(capsys, "eval", tmp_path / "missing-bundle", "--outputs", path)
    assert rc == 1 and out == "" and not path.exists()
    assert "--outputs" in err and ".npz" in err and ".csv" in err


def test_lanes_must_be_positive(bundle, tmp_path, capsys):
    rc, _, err = run_cli(capsys, "eval", bundle, "--outputs", tmp_path / "r.npz", "--lanes", 0)
    assert rc == 1 and "lanes must be a positive integer" in err


def test_default_lanes_are_those_of_rtl():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    defaults = {name: next(a.default for a in sub.choices[name]._actions if a.dest == "lanes")
                for name in ("eval", "rtl")}
    assert defaults == {"eval": DEFAULT_LANES, "rtl": DEFAULT_LANES}


def test_test_index_locates_the_split_in_the_dataset(digits):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    idx = digits.test_index.numpy()
    assert len(set(idx.tolist())) == len(idx) == 360
    assert np.array_equal(bunch.images.astype(np.int64)[idx][:, None], digits.x_test.numpy())
    assert np.array_equal(bunch.target[idx], digits.y_test.numpy())
    assert torch.equal(digits.x_test, digits.x_test.to(torch.int64))
