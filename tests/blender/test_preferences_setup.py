"""The preferences' Set Up Backend / Check Backend operators in real Blender (bpy, background mode).

Check Backend runs the real self-test in this repo's .venv Python (the one running the tests);
the failure paths use paths that do not exist, so no environment is created and nothing is
downloaded. The full set-up (a new environment with torch) is tested without Blender in
tests/addon/test_backend_setup.py.
"""

from __future__ import annotations

import json
import sys

import pytest

from blender_harness import run_blender_script

pytestmark = pytest.mark.blender


def _labels(calls):
    return [call["kwargs"].get("text", "") for call in calls if call["call"] == "label"]


@pytest.fixture(scope="module")
def results(addon_zip, tmp_path_factory):
    work = tmp_path_factory.mktemp("preferences_setup")
    return run_blender_script("preferences_setup.py", work, {
        "zip": str(addon_zip), "python": sys.executable,
        "missing_python": str(work / "no-such-folder" / "python3")}, timeout=240)


def test_keep_jobs_on_quit_preference(results):
    assert results["keep_jobs_on_quit"] == {"value": False, "name": "Keep Jobs Running When Blender Quits"}
    assert any(call["call"] == "prop" and call["args"][-1] == "keep_jobs_on_quit" for call in results["draw_idle"])
    assert any("Not checked yet" in text for text in _labels(results["draw_idle"]))


def test_check_backend_on_a_working_python(results):
    assert results["check_good"] == {"returned": ["FINISHED"], "error": None}
    status = results["status_good"]
    import torch
    assert status["ok"] is True and status["problems"] == []
    assert status["python"] == sys.executable
    assert status["torch"] == torch.__version__
    assert status["device"] == ("cpu" if not torch.cuda.is_available() else status["device"])
    labels = _labels(results["draw_good"])
    assert any(text == f"Backend works: torch {torch.__version__} on {status['device']}" for text in labels), labels


def test_check_backend_on_a_missing_python(results):
    check = results["check_missing"]
    assert check["returned"] == ["CANCELLED"]
    assert "Python not found" in check["error"] and "Traceback" not in check["error"]
    assert "Set Up Backend" in check["error"]
    status = results["status_missing"]
    assert status["ok"] is False and "Python not found" in status["problems"][0]
    assert results["python_after_check_missing"].endswith("python3")   # the preference is left as the user set it
    labels = _labels(results["draw_missing"])
    assert any(text.startswith("Backend Python: Python not found") for text in labels), labels


def test_setup_without_a_base_python_says_what_to_do(results):
    setup = results["setup_missing_base"]
    assert setup["returned"] == ["CANCELLED"]
    assert "Base Python: Python not found" in setup["error"] and "Install Python 3.11" in setup["error"]
    assert "Traceback" not in setup["error"]
    assert results["python_after_setup"] == sys.executable       # unchanged by a failed set-up
    assert results["status_setup"]["ok"] is False
    # The environment's folder is the add-on's user folder (in the test's temporary Blender user folder).
    assert "/extensions/" in results["venv_dir"].replace("\\", "/") and results["venv_dir"].endswith("backend-venv")


def test_running_task_draws_progress_and_cancels(results):
    assert results["poll_blocked"]["returned"] == ["CANCELLED"]
    assert "is running" in results["poll_blocked"]["error"]
    calls = results["draw_running"]
    progress = [call for call in calls if call["call"] == "progress"]
    assert len(progress) == 1 and 0.0 <= progress[0]["kwargs"]["factor"] <= 1.0
    assert progress[0]["kwargs"]["text"].startswith("Checking backend")
    assert any(call["call"] == "operator" and call["args"][0] == "neural_fields.cancel_backend_task" for call in calls)
    assert results["cancel_operator"] == {"returned": ["FINISHED"], "error": None}
    assert results["running_result"]["cancelled"] is True and results["running_result"]["ok"] is False
