#!/usr/bin/env python3
"""Build the installable Blender extension zip.

    python build_addon.py [--out dist/neural_fields-0.1.0.zip]
    python build_addon.py --legacy [--out dist/neural_fields-0.1.0-legacy.zip]

The zip holds blender_addon/ (the manifest at its root) plus a copy of the inr_backend
package's .py files at _vendor/inr_backend/, so the add-on imports the protocol it speaks,
and starts the backend it shipped with, from the same release. Standard library only.

--legacy writes the same files under one top folder ``neural_fields/``, without the manifest:
the layout Blender's *Preferences > Add-ons > Install...* expects from a legacy add-on
(``bl_info``), for Blender 3.4-4.1.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
ADDON_DIR = ROOT / "blender_addon"
BACKEND_DIR = ROOT / "inr_backend"
VENDOR_PREFIX = "_vendor"

_SKIP_DIRS = {"__pycache__", VENDOR_PREFIX, ".pytest_cache"}
_SKIP_SUFFIXES = {".pyc", ".pyo", ".orig", ".rej", ".swp"}


def manifest() -> dict:
    with open(ADDON_DIR / "blender_manifest.toml", "rb") as handle:
        return tomllib.load(handle)


def default_out(*, legacy: bool = False) -> Path:
    data = manifest()
    suffix = "-legacy" if legacy else ""
    return ROOT / "dist" / f"{data['id']}-{data['version']}{suffix}.zip"


def _addon_files() -> list[tuple[Path, str]]:
    files = []
    for path in sorted(ADDON_DIR.rglob("*")):
        relative = path.relative_to(ADDON_DIR)
        if not path.is_file() or any(part in _SKIP_DIRS or part.startswith(".") for part in relative.parts):
            continue
        if path.suffix in _SKIP_SUFFIXES:
            continue
        files.append((path, relative.as_posix()))
    return files


def _backend_files() -> list[tuple[Path, str]]:
    files = []
    for path in sorted(BACKEND_DIR.rglob("*.py")):
        relative = path.relative_to(BACKEND_DIR)
        if any(part in _SKIP_DIRS or part.startswith(".") for part in relative.parts):
            continue
        files.append((path, f"{VENDOR_PREFIX}/inr_backend/{relative.as_posix()}"))
    return files


def vendored_files() -> dict[str, Path]:
    """Zip member name -> source file, for every vendored backend file."""
    return {name: path for path, name in _backend_files()}


def build(out_path: str | Path | None = None, *, legacy: bool = False) -> Path:
    """Write the zip (the extension, or with ``legacy`` the bl_info add-on) and return its path."""
    out = Path(out_path) if out_path else default_out(legacy=legacy)
    out.parent.mkdir(parents=True, exist_ok=True)
    entries = _addon_files() + [(None, f"{VENDOR_PREFIX}/__init__.py")] + _backend_files()
    if legacy:
        top = manifest()["id"]
        entries = [(path, f"{top}/{name}") for path, name in entries if name != "blender_manifest.toml"]
    tmp = out.with_name(out.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path, name in entries:
            if path is None:
                archive.writestr(name, '"""A copy of the backend package that shipped with this add-on."""\n')
            else:
                archive.write(path, name)
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0].strip())
    parser.add_argument("--out", type=Path, default=None, help=f"zip to write (default: {default_out().relative_to(ROOT)})")
    parser.add_argument("--legacy", action="store_true",
                        help="a legacy add-on zip (bl_info, one top folder) for Blender 3.4-4.1 "
                             f"(default name: {default_out(legacy=True).relative_to(ROOT)})")
    args = parser.parse_args(argv)
    print(build(args.out, legacy=args.legacy))
    return 0


if __name__ == "__main__":
    sys.exit(main())
