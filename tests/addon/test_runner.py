"""BackendRunner: the child process, its messages, and every way it can end (no Blender)."""

from __future__ import annotations

import importlib.util
import os
import sys
import time

import numpy as np
import pytest

from blender_addon import jobs, runner
from blender_addon._backend import protocol
from fake_backend import make_fake_backend

PYTHON = sys.executable


@pytest.fixture
def fake(tmp_path):
    return str(make_fake_backend(tmp_path / "fake"))


def start_fake(fake, job_dir, mode, **kwargs):
    backend = runner.BackendRunner(pythonpath=fake, env={"FAKE_MODE": mode}, **kwargs)
    return backend.start(PYTHON, job_dir)


def drain(backend, timeout=30.0):
    messages = []
    deadline = time.monotonic() + timeout
    while not backend.is_finished:
        assert time.monotonic() < deadline, f"no done within {timeout} s; got {messages}"
        messages += backend.poll(max_messages=5)
        time.sleep(0.01)
    return messages


def check_ends_with_one_done(messages):
    kinds = [m["type"] for m in messages]
    assert kinds.count("done") == 1 and kinds[-1] == "done", kinds
    for message in messages:  # everything handed out is a valid protocol message
        protocol.parse_message(protocol.encode_message(message))


def test_scripted_happy_path(fake, tmp_path):
    backend = start_fake(fake, tmp_path / "job", "happy")
    messages = drain(backend)
    check_ends_with_one_done(messages)
    assert [m["type"] for m in messages] == ["started", "progress", "progress", "progress", "done"]
    assert backend.status == "done" and backend.error_message is None
    assert backend.last_progress["step"] == 100
    assert backend.poll() == []  # nothing after done


def test_poll_is_bounded_and_non_blocking(fake, tmp_path):
    backend = start_fake(fake, tmp_path / "job", "happy")
    started = time.monotonic()
    first = backend.poll(max_messages=1)
    assert time.monotonic() - started < 0.05
    assert len(first) <= 1
    messages = first + drain(backend)
    check_ends_with_one_done(messages)


def test_crash_mid_run_gives_error_with_log_tail_then_failed(fake, tmp_path):
    job_dir = tmp_path / "job"
    backend = start_fake(fake, job_dir, "crash")
    messages = drain(backend)
    check_ends_with_one_done(messages)
    assert backend.status == "failed"
    error = [m for m in messages if m["type"] == "error"][-1]
    text = error["message"]
    assert "exited with code 1" in text
    assert "INFO training step 1" in text                      # the tail of backend.log
    assert "segfault-like crash in the middle of training" in text  # the tail of stderr
    assert str(job_dir.resolve()) in text
    assert messages[-1]["synthesized"] is True
    # the half line the crash cut short became a warning, not an exception
    assert any(m["type"] == "warning" and '"tot' in m["message"] for m in messages)


def test_child_killed_by_signal(fake, tmp_path):
    if os.name == "nt":
        pytest.skip("signals are POSIX")
    backend = start_fake(fake, tmp_path / "job", "killed")
    messages = drain(backend)
    check_ends_with_one_done(messages)
    assert backend.status == "failed"
    assert "killed by signal 9" in backend.error_message
    assert "about to die" in backend.error_message


def test_garbage_lines_become_warnings(fake, tmp_path):
    backend = start_fake(fake, tmp_path / "job", "garbage")
    messages = drain(backend)
    check_ends_with_one_done(messages)
    warnings = [m for m in messages if m["type"] == "warning"]
    assert len(warnings) == 5
    assert all(w["synthesized"] for w in warnings)
    assert "hello from a stray print()" in warnings[0]["message"]
    assert backend.status == "done"


def test_error_then_exit_without_done_keeps_the_backends_reason(fake, tmp_path):
    backend = start_fake(fake, tmp_path / "job", "error_then_exit")
    messages = drain(backend)
    check_ends_with_one_done(messages)
    assert backend.status == "failed"
    assert "the mesh has no inside" in backend.error_message


def test_nothing_after_done_is_handed_out(fake, tmp_path):
    backend = start_fake(fake, tmp_path / "job", "after_done")
    messages = drain(backend)
    assert [m["type"] for m in messages] == ["started", "done"]
    time.sleep(0.2)
    assert backend.poll() == []


@pytest.mark.parametrize("python", ["/nonexistent/bin/python3", "relative/missing-python"])
def test_missing_interpreter(python, tmp_path):
    backend = runner.BackendRunner().start(python, tmp_path / "job")
    messages = drain(backend, timeout=5)
    check_ends_with_one_done(messages)
    assert backend.status == "failed"
    assert backend.error_message == (f"Backend Python not found: {python}. "
                                     "Set it in Edit > Preferences > Add-ons > Neural Fields.")


def test_interpreter_not_executable(tmp_path):
    if os.name == "nt":
        pytest.skip("POSIX permissions")
    not_executable = tmp_path / "python"
    not_executable.write_text("#!/bin/sh\n")
    backend = runner.BackendRunner().start(str(not_executable), tmp_path / "job")
    drain(backend, timeout=5)
    assert backend.status == "failed"
    assert backend.error_message.startswith(f"Backend Python is not executable: {not_executable}")
    assert "Edit > Preferences > Add-ons > Neural Fields" in backend.error_message


def test_python_lacking_a_module_gets_an_actionable_message(fake, tmp_path):
    backend = start_fake(fake, tmp_path / "job", "missing_module")
    drain(backend)
    assert backend.status == "failed"
    assert "cannot import 'torch_that_is_not_installed_xyz'" in backend.error_message
    assert "Edit > Preferences > Add-ons > Neural Fields" in backend.error_message


def test_python_without_the_backend_package(tmp_path):
    backend = runner.BackendRunner(pythonpath=str(tmp_path / "empty"), env={"PYTHONNOUSERSITE": "1"})
    # -I would hide PYTHONPATH; instead run a Python whose sys.path cannot see inr_backend:
    # the interpreter is started with -S (no site-packages, so no editable install).
    backend.start(PYTHON, tmp_path / "job", args=["-S", "-m", "inr_backend", "run", str(tmp_path / "job")])
    drain(backend)
    assert backend.status == "failed"
    assert "cannot find the inr_backend package" in backend.error_message


def test_cancel_gives_done_cancelled(fake, tmp_path):
    job_dir = tmp_path / "job"
    backend = start_fake(fake, job_dir, "wait_for_cancel")
    messages = []
    while not any(m["type"] == "progress" for m in messages):
        messages += backend.poll()
        time.sleep(0.01)
    started = time.monotonic()
    backend.cancel()
    assert time.monotonic() - started < 0.1  # cancel() never blocks the UI
    messages += drain(backend, timeout=10)
    check_ends_with_one_done(messages)
    assert backend.status == "cancelled"
    assert not any(m.get("synthesized") for m in messages)  # the child itself confirmed it
    assert protocol.read_result(job_dir)["status"] == "cancelled"


def test_cancel_escalates_to_kill_for_a_stubborn_child(fake, tmp_path):
    backend = start_fake(fake, tmp_path / "job", "ignore_cancel", grace=0.5, kill_after=0.5)
    while backend.last_progress is None:
        backend.poll()
        time.sleep(0.01)
    backend.cancel()
    messages = drain(backend, timeout=10)
    assert backend.status == "cancelled"
    assert messages[-1]["synthesized"] is True
    assert not backend.is_alive


def test_stop_all_ends_every_child(fake, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "_LIMIT", [2])  # both children at once (limit 1 would queue the second)
    backends = [start_fake(fake, tmp_path / f"job{i}", mode, grace=1.0, kill_after=1.0)
                for i, mode in enumerate(["wait_for_cancel", "ignore_cancel"])]
    for backend in backends:
        while backend.last_progress is None:
            backend.poll()
            time.sleep(0.01)
    assert set(backends) <= set(runner.running_runners())
    started = time.monotonic()
    stopped = runner.stop_all(timeout=2.0)
    assert stopped >= 2
    assert time.monotonic() - started < 8
    for backend in backends:
        assert not backend.is_alive
        assert backend.process.poll() is not None
        drain(backend, timeout=5)
        assert backend.status == "cancelled"
    assert not [b for b in runner.running_runners() if b in backends]


def test_end_of_stdin_cancels_the_child(fake, tmp_path):
    """What happens when Blender dies: its end of the pipe closes, the child stops by itself."""
    backend = start_fake(fake, tmp_path / "job", "wait_for_cancel")
    while backend.last_progress is None:
        backend.poll()
        time.sleep(0.01)
    backend.process.stdin.close()
    backend.process.wait(timeout=10)
    drain(backend)
    assert backend.status == "cancelled"


def test_run_to_completion_with_timeout_cancels(fake, tmp_path):
    backend = start_fake(fake, tmp_path / "job", "wait_for_cancel")
    seen = []
    done = runner.run_to_completion(backend, on_message=seen.append, timeout=0.5)
    assert done["status"] == "cancelled"
    assert seen[-1] is done
    assert any(m["type"] == "warning" and "timed out" in m["message"] for m in seen)


def test_tail_lines(tmp_path):
    path = tmp_path / "log.txt"
    path.write_text("\n".join(f"line {i}" for i in range(100)) + "\n\n")
    assert runner.tail_lines(path, 3) == ["line 97", "line 98", "line 99"]
    assert runner.tail_lines(tmp_path / "missing.txt") == []


# --------------------------------------------------------------------------- the real backend

def _backend_ready():
    if importlib.util.find_spec("inr_backend.cli") is None or importlib.util.find_spec("inr_backend.tasks.sdf") is None:
        return "inr_backend.cli / inr_backend.tasks.sdf is not there yet"
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed in this Python"
    return None


def _sphere(subdivisions=3):
    import trimesh
    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=0.8)
    return np.asarray(mesh.vertices, np.float32) + np.float32([2.0, -1.0, 0.5]), np.asarray(mesh.faces, np.int32)


@pytest.mark.slow
@pytest.mark.skipif(_backend_ready() is not None, reason=str(_backend_ready()))
def test_real_backend_happy_path(tmp_path):
    vertices, faces = _sphere()
    config = jobs.make_config(preset="fast", resolution=48, device="cpu", max_steps=100)
    job_dir = jobs.create_job(tmp_path / "jobs", vertices, faces, config=config, source={"object": "Sphere"})
    backend = runner.BackendRunner().start(PYTHON, job_dir)
    messages = []
    done = runner.run_to_completion(backend, on_message=messages.append, timeout=300)
    assert done["status"] == "done", backend.error_message
    kinds = [m["type"] for m in messages]
    assert kinds[0] == "started" and kinds[-1] == "done" and "progress" in kinds
    assert not [m for m in messages if m.get("synthesized")], messages
    assert backend.process.wait(timeout=10) == 0
    out_vertices, out_faces, result = jobs.import_result(job_dir)
    assert len(out_faces) > 100
    # The output is in the input's coordinates (not the backend's unit box).
    centre = out_vertices.mean(axis=0)
    np.testing.assert_allclose(centre, [2.0, -1.0, 0.5], atol=0.1)
    radius = np.linalg.norm(out_vertices - centre, axis=1)
    assert abs(np.median(radius) - 0.8) < 0.08
    assert "metrics" in result


@pytest.mark.slow
@pytest.mark.skipif(_backend_ready() is not None, reason=str(_backend_ready()))
def test_real_backend_cancel(tmp_path):
    vertices, faces = _sphere()
    config = jobs.make_config(preset="fast", resolution=64, device="cpu", max_steps=100000)
    job_dir = jobs.create_job(tmp_path / "jobs", vertices, faces, config=config, source={"object": "Sphere"})
    backend = runner.BackendRunner().start(PYTHON, job_dir)
    messages = []
    deadline = time.monotonic() + 120
    while not any(m["type"] == "progress" and m.get("total") for m in messages):
        assert time.monotonic() < deadline and not backend.is_finished, messages
        messages += backend.poll()
        time.sleep(0.05)
    backend.cancel()
    messages += drain(backend, timeout=60)
    check_ends_with_one_done(messages)
    assert backend.status == "cancelled"
    assert not [m for m in messages if m.get("synthesized")]
    assert protocol.read_result(job_dir)["status"] == "cancelled"
    assert backend.process.wait(timeout=10) == 0
