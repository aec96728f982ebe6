"""build_addon.py: the zip builds, Blender's own validator accepts it, the vendored backend is exact."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from blender_harness import PYTHON, REPO

import build_addon


def blender_ext_cli() -> Path:
    """Blender's extension command line (bl_pkg/cli/blender_ext.py) inside the installed bpy package."""
    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the bpy module is not installed in this Python")
    bpy_dir = Path(list(spec.submodule_search_locations)[0])
    found = sorted(bpy_dir.glob("*/scripts/addons_core/bl_pkg/cli/blender_ext.py"))
    if not found:
        pytest.skip(f"no bl_pkg/cli/blender_ext.py under {bpy_dir}")
    return found[-1]


def test_zip_builds_and_lists_the_addon_and_vendored_backend(tmp_path):
    out = build_addon.build(tmp_path / "addon.zip")
    assert out == tmp_path / "addon.zip" and out.is_file()
    names = zipfile.ZipFile(out).namelist()
    for required in ("blender_manifest.toml", "__init__.py", "_backend.py", "runner.py", "jobs.py", "conversion.py",
                     "operators.py", "panel.py", "preferences.py", "properties.py",
                     "_vendor/__init__.py", "_vendor/inr_backend/__init__.py", "_vendor/inr_backend/__main__.py",
                     "_vendor/inr_backend/protocol.py", "_vendor/inr_backend/plyio.py"):
        assert required in names, required
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".pyo"))]
    assert not [n for n in names if n.startswith("inr_backend/") or n.startswith("blender_addon/")]
    assert len(names) == len(set(names))


@pytest.mark.blender
def test_blenders_validator_accepts_the_zip(tmp_path):
    out = build_addon.build(tmp_path / "addon.zip")
    process = subprocess.run([PYTHON, str(blender_ext_cli()), "validate", str(out)],
                             capture_output=True, text=True, timeout=120)
    assert process.returncode == 0, process.stdout + process.stderr
    assert "Success" in process.stdout, process.stdout


def test_every_vendored_file_is_byte_identical_to_the_source(tmp_path):
    out = build_addon.build(tmp_path / "addon.zip")
    archive = zipfile.ZipFile(out)
    vendored = {n for n in archive.namelist() if n.startswith("_vendor/inr_backend/")}
    sources = {f"_vendor/inr_backend/{p.relative_to(REPO / 'inr_backend').as_posix()}"
               for p in (REPO / "inr_backend").rglob("*.py") if "__pycache__" not in p.parts}
    assert vendored == sources
    assert "_vendor/inr_backend/protocol.py" in vendored
    for name in vendored:
        source = REPO / "inr_backend" / name.removeprefix("_vendor/inr_backend/")
        assert archive.read(name) == source.read_bytes(), name


def test_addon_files_are_identical_and_manifest_matches(tmp_path):
    archive = zipfile.ZipFile(build_addon.build(tmp_path / "addon.zip"))
    for path in (REPO / "blender_addon").rglob("*"):
        relative = path.relative_to(REPO / "blender_addon")
        if path.is_file() and "__pycache__" not in relative.parts and relative.parts[0] != "_vendor":
            assert archive.read(relative.as_posix()) == path.read_bytes(), relative
    manifest = tomllib.loads(archive.read("blender_manifest.toml").decode())
    assert manifest["schema_version"] == "1.0.0"
    assert manifest["id"] == "neural_fields" and manifest["type"] == "add-on"
    assert manifest["blender_version_min"] >= "4.2.0"
    assert manifest["license"] == ["SPDX:GPL-3.0-or-later"]
    reason = manifest["permissions"]["files"]
    assert len(reason) <= 64 and not reason.endswith(".")


def test_command_line_prints_the_zip_path(tmp_path):
    out = tmp_path / "cli" / "neural_fields.zip"
    process = subprocess.run([PYTHON, str(REPO / "build_addon.py"), "--out", str(out)],
                             capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert process.returncode == 0, process.stderr
    assert process.stdout.strip() == str(out)
    assert zipfile.is_zipfile(out)


def test_default_output_name():
    assert build_addon.default_out() == REPO / "dist" / "neural_fields-0.1.0.zip"


def test_vendored_protocol_imports_without_the_installed_backend(tmp_path):
    """The zip's add-on modules import protocol/plyio from _vendor, not from an installed inr_backend."""
    out = build_addon.build(tmp_path / "addon.zip")
    target = tmp_path / "extracted" / "neural_fields"
    zipfile.ZipFile(out).extractall(target)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "import neural_fields._backend as b, neural_fields.runner, neural_fields.jobs; "
            "print(b.protocol.__file__); print(b.BACKEND_PYTHONPATH)")
    process = subprocess.run([PYTHON, "-S", "-c", code, str(target.parent)], capture_output=True, text=True,
                             timeout=60, cwd=tmp_path, env={"PYTHONPATH": str(Path(importlib.util.find_spec('numpy').origin).parents[1])})
    assert process.returncode == 0, process.stderr
    protocol_file, pythonpath = process.stdout.split()
    assert Path(protocol_file) == target / "_vendor" / "inr_backend" / "protocol.py"
    assert Path(pythonpath) == target / "_vendor"
