"""Backend set-up and self-test without Blender: real child processes, real pip, real virtual environments.

Every environment a test makes lives in a temporary folder that the test removes. Nothing here
downloads a CUDA build: the full set-up asks for torch==2.13.0+cpu from a local wheel folder.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import pytest

from blender_addon import backend_setup
from blender_addon.backend_setup import (BackendCheck, BackendSetup, SetupConfig, SetupError, find_base_python,
                                         pip_failure_message, torch_pip_args)

ROOT = Path(__file__).resolve().parents[2]
# A folder holding the torch CPU wheel (pip's find-links on the development machine); override
# with NEURAL_FIELDS_TORCH_WHEELS.
TORCH_WHEELS = os.environ.get("NEURAL_FIELDS_TORCH_WHEELS", "/opt/wheels")
LOCAL_TORCH = "2.13.0+cpu"


@pytest.fixture
def scratch():
    """A temporary folder removed at the end of the test (pytest keeps its tmp_path folders: a venv is 1 GB)."""
    path = Path(tempfile.mkdtemp(prefix="nf_backend_setup_"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _bare_python(folder: Path) -> str:
    """A real Python without torch or anything else: a venv without pip (no site packages)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
    return str(backend_setup.venv_python(folder))


# --------------------------------------------------------------------------- the self-test command


def test_selftest_json_verdict_on_this_python():
    done = subprocess.run([sys.executable, "-m", "inr_backend", "selftest", "--json"], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    verdict = json.loads(done.stdout.strip().splitlines()[-1])
    import platform

    import torch
    assert verdict["ok"] is True and verdict["problems"] == []
    assert verdict["python"] == platform.python_version()
    assert verdict["torch"] == torch.__version__
    assert verdict["device"] == "cpu" or verdict["device"].startswith("cuda: ")
    assert set(verdict["versions"]) == {"torch", *backend_setup.BACKEND_REQUIREMENTS}
    training = verdict["training"]
    assert training["steps"] == 50 and training["loss_last"] < 0.5 * training["loss_first"]
    assert 0 < verdict["seconds"] < 120


def test_python_without_torch_fails_the_check_with_what_to_do(scratch):
    python = _bare_python(scratch / "bare")
    done = subprocess.run([python, "-m", "inr_backend", "selftest", "--json"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": backend_setup.BACKEND_PYTHONPATH,
                                            "PYTHONNOUSERSITE": "1"})
    assert done.returncode == 1
    verdict = json.loads(done.stdout)
    assert verdict["ok"] is False and verdict["torch"] is None and verdict["training"] is None
    assert verdict["problems"][0].startswith("cannot import torch (not installed)")
    assert "scikit-image" in verdict["problems"][1]   # the other libraries: one problem, one pip command

    result = BackendCheck(python=python).run()
    assert not result.ok and not result.cancelled
    assert "cannot import torch" in result.message and "run Set Up Backend" in result.message
    record = result.status_record()
    assert record["ok"] is False and record["python"] == python and record["torch"] is None


@pytest.mark.parametrize("kind", ["missing", "folder", "not_executable", "not_python"])
def test_broken_interpreter_paths_give_clear_messages(scratch, kind):
    if kind == "missing":
        python, expected = str(scratch / "nowhere" / "python3"), "Python not found"
    elif kind == "folder":
        python, expected = str(scratch), "is a folder, not a Python interpreter"
    elif kind == "not_executable":
        python = scratch / "python3"
        python.write_text("not a program\n")
        python, expected = str(python), "cannot be run"
    else:
        python = scratch / "python3"
        python.write_text("#!/bin/sh\necho 'I am not Python'\nexit 3\n")
        python.chmod(0o755)
        python, expected = str(python), "did not run as Python (exit code 3)"
    if os.name == "nt" and kind in ("not_executable", "not_python"):
        pytest.skip("POSIX permissions and shebang scripts")
    result = BackendCheck(python=python).run()
    assert not result.ok
    assert expected in result.message and "Traceback" not in result.message
    assert "Set Up Backend" in result.message
    if kind == "not_python":
        assert "I am not Python" in result.message  # what it printed, to recognise the program


def test_requirements_are_pyprojects_dependencies():
    with open(ROOT / "pyproject.toml", "rb") as handle:
        dependencies = tomllib.load(handle)["project"]["dependencies"]
    names = {dependency.split(";")[0].split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip().lower()
             for dependency in dependencies}
    assert names == set(backend_setup.BACKEND_REQUIREMENTS)


# --------------------------------------------------------------------------- choices and messages


def test_torch_build_by_gpu_and_platform():
    config = SetupConfig(venv_dir="unused")
    assert torch_pip_args(config, gpu=False, system="Linux") == [
        "torch==2.13.0", "--index-url", "https://download.pytorch.org/whl/cpu"]
    assert torch_pip_args(config, gpu=True, system="Linux") == ["torch==2.13.0"]          # PyPI's Linux torch: CUDA
    assert torch_pip_args(config, gpu=False, system="Windows") == ["torch==2.13.0"]       # PyPI's Windows torch: CPU
    assert torch_pip_args(config, gpu=True, system="Windows")[1:] == [
        "--index-url", backend_setup.WINDOWS_CUDA_TORCH_INDEX]
    local = SetupConfig(venv_dir="unused", torch_version=LOCAL_TORCH, torch_index_url="")
    assert torch_pip_args(local, gpu=False, system="Linux") == ["torch==2.13.0+cpu"]


def test_no_usable_base_python_says_install_python(scratch):
    with pytest.raises(SetupError) as caught:
        find_base_python(candidates=[[str(scratch / "python3.11")], ["neural-fields-no-such-python"]])
    assert "No Python 3.10-3.12 that can create environments was found" in str(caught.value)
    assert "Install Python 3.11" in str(caught.value)
    # A candidate that runs but cannot make environments is named with its reason.
    fake = scratch / "python3"
    fake.write_text("#!/bin/sh\necho nope\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(SetupError) as caught:
        find_base_python(candidates=[[str(fake)]])
    assert f"{fake} did not run as Python" in str(caught.value)
    # The Python running the tests can make environments, so it is found first.
    assert find_base_python(candidates=[[str(fake)], [sys.executable]]).argv == [sys.executable]


def test_pip_failures_say_what_to_do():
    full = ["Collecting torch==2.13.0", "ERROR: Could not install packages due to an OSError: [Errno 28] No space "
            "left on device"]
    assert pip_failure_message("torch", 1, full).startswith("The disk is full")
    offline = ["WARNING: Retrying (Retry(total=0, connect=None, read=None, redirect=None, status=None)) after "
               "connection broken by 'NewConnectionError('<pip._vendor.urllib3.connection.HTTPSConnection object>: "
               "Failed to establish a new connection: [Errno -3] Temporary failure in name resolution')': /simple/torch/",
               "ERROR: Could not find a version that satisfies the requirement torch==2.13.0 (from versions: none)",
               "ERROR: No matching distribution found for torch==2.13.0"]
    message = pip_failure_message("torch", 1, offline)
    assert message.startswith("Could not download torch: no connection") and "Wheel Folder" in message
    other = ["ERROR: some resolver conflict", "ERROR: more detail"]
    message = pip_failure_message("numpy", 2, other, log_path="/x/backend-setup.log")
    assert "exit code 2" in message and "ERROR: more detail" in message and "/x/backend-setup.log" in message


def test_unreachable_index_is_reported_as_no_network(scratch):
    """A real pip run against an index nothing listens on (port 9): classified as no network. pip names the
    refused connection only when it retries, hence --retries 1 (the set-up keeps pip's default, 5)."""
    argv = [sys.executable, "-m", "pip", "install", "--no-cache-dir", "--retries", "1", "--timeout", "2",
            "--index-url", "http://127.0.0.1:9/simple", "--target", str(scratch / "target"),
            "neural-fields-test-no-such-package"]
    env = {**backend_setup.clean_child_env(), "PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": ""}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode != 0
    lines = (done.stdout + done.stderr).splitlines()
    assert pip_failure_message("torch", done.returncode, lines).startswith("Could not download torch: no connection")


# --------------------------------------------------------------------------- the set-up task


def test_setup_reports_pip_failure_and_keeps_the_environment(scratch):
    """Creates a real environment, then pip finds no such torch offline: the message names it, nothing is lost."""
    venv = scratch / "backend-venv"
    task = BackendSetup(SetupConfig(venv_dir=str(venv), base_python=sys.executable, gpu=False,
                                    torch_version="0.0.1", torch_index_url="", extra_pip_args=("--no-index",),
                                    min_free_gb=0))
    result = task.run()
    assert not result.ok and not result.cancelled
    assert result.message.startswith("pip found no torch 0.0.1 (CPU build) for "), result.message
    assert f"Python {'.'.join(map(str, sys.version_info[:3]))}" in result.message
    assert backend_setup.venv_python(venv).exists()         # kept: the next set-up resumes in it
    assert not (venv / "neural_fields_setup.json").exists()  # but it is not marked as set up
    log = Path(result.log_path)
    assert log == scratch / backend_setup.SETUP_LOG and "No matching distribution" in log.read_text()


def test_setup_refuses_a_folder_that_is_not_an_environment(scratch):
    venv = scratch / "backend-venv"
    venv.mkdir()
    (venv / "notes.txt").write_text("mine")
    result = BackendSetup(SetupConfig(venv_dir=str(venv), gpu=False, min_free_gb=0)).run()
    assert not result.ok and "is not a Python environment" in result.message
    assert (venv / "notes.txt").read_text() == "mine"


def test_setup_needs_disk_space(scratch):
    result = BackendSetup(SetupConfig(venv_dir=str(scratch / "venv"), gpu=False, min_free_gb=1e9)).run()
    assert not result.ok and result.message.startswith("Not enough disk space")
    assert not (scratch / "venv").exists()


def test_setup_on_a_thread_reports_progress_and_cancels(scratch):
    venv = scratch / "backend-venv"
    task = BackendSetup(SetupConfig(venv_dir=str(venv), base_python=sys.executable, gpu=False,
                                    torch_index_url="", extra_pip_args=("--no-index",), min_free_gb=0)).start()
    seen, deadline = [], time.monotonic() + 120
    while time.monotonic() < deadline and not task.finished:
        seen += task.poll()
        if any(getattr(event, "step", "") == backend_setup.STEP_VENV for event in seen):
            break
        time.sleep(0.02)
    started = time.monotonic()
    task.cancel()
    result = task.wait(timeout=60)
    assert result is not None and result.cancelled and not result.ok, result
    assert time.monotonic() - started < 15
    assert "not changed" in result.message
    fractions = [event.fraction for event in seen if isinstance(event, backend_setup.Progress)]
    assert fractions == sorted(fractions) and 0 < fractions[-1] < 0.2


@pytest.mark.slow  # ~75 s on 2 busy cores: pip installs torch (from a local wheel) and five libraries
def test_full_setup_from_local_wheels_passes_its_selftest(scratch):
    if not glob.glob(os.path.join(TORCH_WHEELS, f"torch-{LOCAL_TORCH}-*.whl")):
        pytest.skip(f"no torch {LOCAL_TORCH} wheel in {TORCH_WHEELS} (set NEURAL_FIELDS_TORCH_WHEELS); "
                    f"this test never downloads torch")
    venv = scratch / "backend-venv"
    # --no-compile: no .pyc for all of torch's files, which halves the files pip writes and the
    # teardown deletes (66 s of rmtree on 2 busy cores); imports compile what they use.
    config = SetupConfig(venv_dir=str(venv), gpu=False, torch_version=LOCAL_TORCH, torch_index_url="",
                         find_links=(TORCH_WHEELS,), extra_pip_args=("--no-compile",))
    events = []
    started = time.monotonic()
    result = BackendSetup(config).run(on_event=events.append)
    seconds = time.monotonic() - started
    assert result.ok, result.message
    print(f"full set-up: {seconds:.1f} s")
    progress = [event for event in events if isinstance(event, backend_setup.Progress)]
    steps = list(dict.fromkeys(event.step for event in progress))
    assert steps == [backend_setup.STEP_FIND_PYTHON, backend_setup.STEP_VENV, backend_setup.STEP_TORCH,
                     backend_setup.STEP_LIBRARIES, backend_setup.STEP_CHECK]
    fractions = [event.fraction for event in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any(event.line.startswith("Successfully installed") for event in progress)  # pip's lines reach the UI
    assert events[-1] is result
    assert result.python == str(backend_setup.venv_python(venv))
    verdict = result.verdict
    assert verdict["torch"] == LOCAL_TORCH and verdict["device"] == "cpu" and verdict["cuda"] is None
    assert verdict["executable"] == result.python and verdict["problems"] == []
    assert json.loads((venv / "neural_fields_setup.json").read_text())["build"] == "CPU"
    # The environment stands alone: no PYTHONPATH, no user site, a clean check from outside.
    check = BackendCheck(python=result.python).run()
    assert check.ok, check.message
