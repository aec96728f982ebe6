"""The legacy add-on (bl_info) for Blender 3.4-4.1: what Blender reads from it without running it,
and the zip layout its *Install...* button expects. Plain Python, no Blender needed."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = Path(__file__).resolve().parent / "scripts"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import build_addon  # noqa: E402
from blender_addon import compat  # noqa: E402


def bl_info_as_blender_reads_it(init_text: str) -> dict:
    """addon_utils.fake_module: the lines from `bl_info` to the first blank line, ast.literal_eval'd."""
    lines = init_text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("bl_info"))
    block = []
    for line in lines[start:]:
        if not line.strip():
            break
        block.append(line)
    tree = ast.parse("\n".join(block))
    assignment = tree.body[0]
    assert isinstance(assignment, ast.Assign) and assignment.targets[0].id == "bl_info"
    return ast.literal_eval(assignment.value)


def test_bl_info_is_a_literal_that_agrees_with_the_manifest():
    info = bl_info_as_blender_reads_it((REPO / "blender_addon" / "__init__.py").read_text())
    manifest = tomllib.loads((REPO / "blender_addon" / "blender_manifest.toml").read_text())
    assert info["name"] == manifest["name"]
    assert ".".join(str(part) for part in info["version"]) == manifest["version"]
    assert info["blender"] == compat.MINIMUM_BLENDER
    assert info["description"] == manifest["tagline"]


def test_legacy_zip_has_one_top_folder_and_no_manifest(tmp_path):
    out = build_addon.build(tmp_path / "legacy.zip", legacy=True)
    extension = build_addon.build(tmp_path / "extension.zip")
    names = zipfile.ZipFile(out).namelist()
    assert {name.split("/")[0] for name in names} == {"neural_fields"}
    assert "neural_fields/__init__.py" in names and "neural_fields/compat.py" in names
    assert "neural_fields/_vendor/inr_backend/protocol.py" in names
    assert not any(name.endswith("blender_manifest.toml") for name in names)
    # The same files as the extension, less the manifest, one folder down.
    extension_names = {name for name in zipfile.ZipFile(extension).namelist() if name != "blender_manifest.toml"}
    assert {name.removeprefix("neural_fields/") for name in names} == extension_names
    assert build_addon.default_out(legacy=True).name.endswith("-legacy.zip")


def test_version_problem_names_the_blender_to_install():
    assert compat.version_problem((3, 4, 1)) is None
    assert compat.version_problem((5, 0, 1)) is None
    message = compat.version_problem((3, 3, 0))
    assert "3.4.0 or newer" in message and "3.3.0" in message


def test_addon_id_and_extension_detection():
    assert compat.addon_id("bl_ext.user_default.neural_fields") == "neural_fields"
    assert compat.addon_id("neural_fields") == "neural_fields"
    assert compat.is_extension("bl_ext.user_default.neural_fields")
    assert not compat.is_extension("neural_fields")


@pytest.mark.blender
def test_legacy_zip_installs_and_enables_in_this_blender(tmp_path):
    """The legacy path in the main venv's Blender (4.5): installed into user scripts, jobs under config."""
    import importlib.util
    if importlib.util.find_spec("bpy") is None:
        pytest.skip("the bpy module is not installed in this Python: run `make setup`")
    out = build_addon.build(tmp_path / "legacy.zip", legacy=True)
    result_path = tmp_path / "result.json"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["BLENDER_USER_RESOURCES"] = str(tmp_path / "blender_user")
    process = subprocess.run([sys.executable, str(SCRIPTS / "legacy_install.py"),
                              json.dumps({"zip": str(out), "result": str(result_path)})],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    output = process.stdout[-3000:] + process.stderr[-3000:]
    assert result_path.exists(), output
    data = json.loads(result_path.read_text())
    assert not data.get("exception"), data["exception"] + output
    assert process.returncode == 0 and "Traceback" not in output, output
    assert data["install"] == ["FINISHED"] and data["enable"] == ["FINISHED"] and data["enabled"]
    user = tmp_path / "blender_user"
    assert Path(data["module_file"]) == user / "scripts" / "addons" / "neural_fields" / "__init__.py"
    assert not data["is_extension"]
    assert Path(data["jobs_root"]) == user / "config" / "neural_fields" / "jobs"
    assert data["operator"] and data["panel"] and not data["panel_after_disable"]
