"""The extension in Blender 4.2 LTS and 5.0 (4.5 LTS is the main venv's, where the whole suite runs).

Each Blender is the ``bpy`` wheel from PyPI in its own venv made by ``make versions-setup``
(.venv-bpy42, .venv-bpy50: bpy and numpy only). The smoke test installs the built extension
zip into that Blender like a user, converts an icosphere with the real backend (the main
venv's Python, which has torch) and checks the result lands on the source.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).resolve().parent / "scripts" / "smoke_convert.py"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import build_addon  # noqa: E402

pytestmark = pytest.mark.blender

# (Blender series, its venv): the versions a user can install from blender.org today besides 4.5.
BLENDERS = [("4.2", ".venv-bpy42"), ("5.0", ".venv-bpy50")]


def backend_python() -> str:
    """The main venv's Python (this one, under `make test`): the backend needs torch."""
    import importlib.util
    if importlib.util.find_spec("torch") is None:
        pytest.skip(f"{sys.executable} has no torch, so it cannot run the backend: run the tests with .venv/bin/python")
    return sys.executable


@pytest.fixture(scope="module")
def extension_zip(tmp_path_factory):
    return build_addon.build(tmp_path_factory.mktemp("dist") / "neural_fields.zip")


@pytest.mark.parametrize("series,venv_dir", BLENDERS, ids=[series for series, _ in BLENDERS])
def test_extension_converts_a_mesh(series, venv_dir, extension_zip, tmp_path):
    python = REPO / venv_dir / "bin" / "python"
    if not (REPO / venv_dir / ".installed").exists():  # written last by the Makefile: bpy imported
        pytest.skip(f"Blender {series} is not set up ({venv_dir}/ is missing): run `make versions-setup` "
                    f"(or `make test`, which makes it)")
    result_path = tmp_path / "result.json"
    args = {"zip": str(extension_zip), "backend_python": backend_python(), "result": str(result_path),
            "resolution": 48, "max_steps": 60}
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    # Blender's user folders (preferences, extensions, job folders) under tmp_path, never ~/.config.
    env["BLENDER_USER_RESOURCES"] = str(tmp_path / "blender_user")
    try:
        process = subprocess.run([str(python), str(SCRIPT), json.dumps(args)], cwd=tmp_path, env=env,
                                 capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"Blender {series} did not finish within 300 s\n{exc.stdout!r}\n{exc.stderr!r}")
    output = f"--- stdout ---\n{process.stdout[-5000:]}\n--- stderr ---\n{process.stderr[-5000:]}"
    assert result_path.exists(), f"Blender {series} exited with {process.returncode} and wrote no result\n{output}"
    data = json.loads(result_path.read_text())
    assert not data.get("exception"), data["exception"] + output
    assert process.returncode == 0, output
    assert "Traceback" not in process.stdout + process.stderr, output

    assert data["blender"].startswith(series), data["blender"]
    assert data["install"] == ["FINISHED"] and data["enabled"], output
    # Installed into Blender's user extension folder, not imported from this checkout.
    assert Path(data["module_file"]).is_relative_to(tmp_path / "blender_user"), data["module_file"]
    assert data["return"] == ["FINISHED"], (data["state"], output)
    assert data["state"]["last_status"] == "done", data["state"]
    assert Path(data["state"]["last_job_dir"]).is_relative_to(tmp_path / "blender_user"), data["state"]
    assert "Icosphere_sdf" in data["objects"], data["objects"]
    assert data["result_faces"] > 100

    source_low, source_high = (np.array(corner) for corner in data["source_bounds"])
    result_low, result_high = (np.array(corner) for corner in data["result_bounds"])
    diagonal = np.linalg.norm(source_high - source_low)
    # A short training run is coarse, but it sits on the source: same box to a tenth of its size.
    assert np.abs(result_low - source_low).max() < 0.1 * diagonal, (data["source_bounds"], data["result_bounds"])
    assert np.abs(result_high - source_high).max() < 0.1 * diagonal, (data["source_bounds"], data["result_bounds"])
