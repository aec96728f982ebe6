"""Helpers for the Blender tests: each runs a script from scripts/ in a subprocess of this Python (bpy is a module
here), under a timeout, with BLENDER_USER_RESOURCES in a temporary folder so nothing touches
~/.config/blender. A script reports facts as JSON in a file; the test asserts on them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = Path(__file__).resolve().parent / "scripts"
PYTHON = sys.executable

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def bpy_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("bpy") is not None


def blender_env(user_resources: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["BLENDER_USER_RESOURCES"] = str(user_resources)
    env.pop("PYTHONPATH", None)
    return env


def run_blender_script(script: str, work: Path, args: dict, timeout: float = 300) -> dict:
    """Run ``scripts/<script>`` with ``args`` (JSON); return the JSON it wrote."""
    work.mkdir(parents=True, exist_ok=True)
    result_path = work / f"{Path(script).stem}.result.json"
    if result_path.exists():
        result_path.unlink()
    args = {**args, "result": str(result_path), "work": str(work)}
    try:
        process = subprocess.run([PYTHON, str(SCRIPTS / script), json.dumps(args)], cwd=work,
                                 env=blender_env(work / "blender_user"), timeout=timeout,
                                 capture_output=True, text=True)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{script} did not finish within {timeout} s (hang at exit?)\n"
                    f"{(exc.stdout or b'')[-3000:]!r}\n{(exc.stderr or b'')[-3000:]!r}")
    output = f"--- stdout ---\n{process.stdout[-6000:]}\n--- stderr ---\n{process.stderr[-6000:]}"
    if not result_path.exists():
        pytest.fail(f"{script} exited with {process.returncode} and wrote no result\n{output}")
    data = json.loads(result_path.read_text())
    if data.get("exception"):
        pytest.fail(f"{script} raised:\n{data['exception']}\n{output}")
    assert process.returncode == 0, output
    data["_output"] = output
    return data
