"""A built wheel works from any directory, independent of the source tree."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_built_wheel_runs_from_elsewhere(tmp_path, quick_checkpoint):
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheels,
                    ROOT], check=True, timeout=300, capture_output=True)
    (wheel,) = wheels.glob("bitspike-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    target, wheel], check=True, timeout=300, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(target)}
    work = tmp_path / "elsewhere"
    work.mkdir()
    probe = subprocess.run(
        [sys.executable, "-c", "import bitspike.sw.golden as g, bitspike.hw, bitspike.sim, "
         "bitspike.boards; print(g.__file__)"],
        cwd=work, env=env, capture_output=True, text=True, timeout=120, check=True)
    assert probe.stdout.strip().startswith(str(target))  # the wheel, not the source tree
    r = subprocess.run([sys.executable, "-m", "bitspike.sw.cli", "convert", quick_checkpoint,
                        "--out", "prog", "--json"], cwd=work, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["program"]["mode"] == "bitserial"
    assert (work / "prog" / "manifest.json").is_file()
