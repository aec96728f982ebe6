"""The backend process under faults: its parent dies, stdin closes, signals, SIGKILL mid-training,
a second backend on the same job. Real subprocesses throughout; small image jobs (a 32x24 image
trains at ~100 steps/s on one CPU core), so each test takes seconds."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from inr_backend import imageio, protocol


def image_job(job_dir: Path, **config) -> Path:
    y, x = np.mgrid[0:24, 0:32] / 24.0
    pixels = np.stack([0.5 + 0.5 * np.sin(6 * x), 0.5 + 0.5 * np.cos(5 * y), x * y / 1.5], -1).astype(np.float32)
    (job_dir / "inputs").mkdir(parents=True, exist_ok=True)
    imageio.write_png(job_dir / "inputs" / "image.png", pixels, bits=8)
    config = {"preset": "fast", "device": "cpu", **config}
    protocol.write_job(job_dir, protocol.make_job("image", inputs={"image": "inputs/image.png"}, config=config))
    return job_dir


def start_backend(job_dir: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "inr_backend", "run", str(job_dir), *extra], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})


def read_messages(process: subprocess.Popen, *, until=None) -> list[dict]:
    messages = []
    for line in process.stdout:
        messages.append(protocol.parse_message(line))
        if until is not None and until(messages[-1]):
            break
    return messages


def is_training(message: dict) -> bool:
    return message["type"] == "progress" and message["total"] > 0 and not message.get("heartbeat")


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


@pytest.mark.parametrize("mode", ["--keep-running", "INR_KEEP_RUNNING=1", "default"])
def test_closed_stdin_cancels_unless_keep_running(tmp_path, mode):
    job_dir = image_job(tmp_path / "job", max_steps=150)
    flags = ("--keep-running",) if mode == "--keep-running" else ()
    process = start_backend(job_dir, *flags, env={"INR_KEEP_RUNNING": "1"} if mode.startswith("INR") else None)
    process.stdin.close()                 # the parent closes our input at once
    started = read_messages(process, until=lambda m: m["type"] == "started")
    assert started[-1]["type"] == "started"
    # backend.pid names this process while it runs, with the mode it runs in.
    pid_file = json.loads((job_dir / "backend.pid").read_text())
    keep_running = mode != "default"
    assert pid_file["pid"] == process.pid and pid_file["keep_running"] is keep_running
    assert isinstance(pid_file["started"], float) and abs(pid_file["started"] - time.time()) < 120
    rest = read_messages(process)
    assert process.wait(timeout=120) == 0
    assert rest[-1]["type"] == "done"
    assert protocol.read_result(job_dir)["status"] == rest[-1]["status"] == ("done" if keep_running else "cancelled")
    assert not (job_dir / "backend.pid").exists()


PARENT = textwrap.dedent("""
    # A stand-in for Blender: starts the backend with pipes, reads until training runs, then waits
    # to be killed (so the backend's stdin ends and its stdout has no reader any more).
    import subprocess, sys
    backend = subprocess.Popen([sys.executable, "-m", "inr_backend", "run", *sys.argv[1:]], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    print(backend.pid, flush=True)
    for line in backend.stdout:
        if '"phase":"training"' in line and '"heartbeat"' not in line and '"step":0,' not in line:
            print("training", flush=True)
            break
    import time
    time.sleep(600)
""")


@pytest.mark.parametrize("keep_running", [True, False], ids=["keep-running", "default"])
def test_the_job_outlives_a_killed_parent_only_with_keep_running(tmp_path, keep_running):
    job_dir = image_job(tmp_path / "job", seconds=4.0, checkpoint_seconds=0)
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(job_dir)] + (["--keep-running"] if keep_running else []),
                              stdout=subprocess.PIPE, text=True)
    backend_pid = int(parent.stdout.readline())
    assert parent.stdout.readline().strip() == "training"
    parent.kill()                                    # Blender crashed
    parent.wait(timeout=30)
    killed_at = time.time()
    # The orphaned backend goes on (or stops) by itself; it removes backend.pid as it exits.
    wait_for(lambda: not (job_dir / "backend.pid").exists(), 120, "the backend to finish")
    result = protocol.read_result(job_dir)
    events = protocol.read_events(job_dir)
    assert events[-1]["type"] == "done" and events[-1]["status"] == result["status"]
    if keep_running:
        assert result["status"] == "done"
        # events.jsonl kept the story after stdout was gone: training went on to the end.
        assert result["metrics"]["steps"] > max(m["step"] for m in events if is_training(m)) / 2
        assert (job_dir / result["outputs"]["image"]).stat().st_mtime > killed_at
        assert "stdout is gone" in (job_dir / "backend.log").read_text()   # it did write into the dead pipe
    else:
        # Without the flag the end of stdin cancels (no orphan outlives Blender), with a checkpoint.
        assert result["status"] == "cancelled" and result["checkpoint_step"] > 0
        assert json.loads((job_dir / "checkpoints" / "resume.json").read_text())["step"] == result["checkpoint_step"]
    wait_for(lambda: not _alive(backend_pid), 30, "the backend process to be gone")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_writes_a_checkpoint_then_cancelled(tmp_path, signum):
    job_dir = image_job(tmp_path / "job", seconds=30.0, checkpoint_seconds=0)
    process = start_backend(job_dir)
    seen = read_messages(process, until=is_training)
    process.send_signal(signum)
    rest = read_messages(process)
    assert process.wait(timeout=60) == 0
    done = rest[-1]
    assert done["type"] == "done" and done["status"] == "cancelled"
    assert done["checkpoint_step"] >= seen[-1]["step"]
    pointer = json.loads((job_dir / "checkpoints" / "resume.json").read_text())
    assert pointer["step"] == done["checkpoint_step"] == protocol.read_result(job_dir)["checkpoint_step"]


def test_sigkill_loses_at_most_the_work_since_the_last_checkpoint(tmp_path):
    job_dir = image_job(tmp_path / "job", seconds=6.0, checkpoint_seconds=1)
    process = start_backend(job_dir)
    checkpoints: list[int] = []

    def two_checkpoints(message: dict) -> bool:
        step = message.get("checkpoint_step")
        if step is not None and step not in checkpoints:
            checkpoints.append(step)
        return len(checkpoints) >= 2

    messages = read_messages(process, until=two_checkpoints)
    process.kill()
    process.wait(timeout=30)
    last_checkpoint = checkpoints[-1]
    assert checkpoints == sorted(checkpoints) and last_checkpoint > 0
    # SIGKILL leaves no result and a stale backend.pid; the checkpoint on disk is whole.
    assert not (job_dir / "result.json").exists() and (job_dir / "backend.pid").exists()
    pointer = json.loads((job_dir / "checkpoints" / "resume.json").read_text())
    assert pointer["step"] >= last_checkpoint

    resumed = start_backend(job_dir, "--resume")       # the stale backend.pid does not block it
    messages = read_messages(resumed)
    assert resumed.wait(timeout=120) == 0, (messages[-3:], resumed.stderr.read())
    resumed.stdin.close()
    assert messages[0]["type"] == "started"
    # Lost at most the steps since the last checkpoint the killed run reported (it may have
    # written one more before the kill).
    assert messages[0]["resumed_from_step"] >= last_checkpoint
    assert [m["step"] for m in messages if is_training(m)][0] > messages[0]["resumed_from_step"]
    result = protocol.read_result(job_dir)
    assert result["status"] == "done" and result["resumed_from_step"] == messages[0]["resumed_from_step"]
    # The time budget carries over: the resumed run trained only what was left of the 6 s.
    assert result["resumed_training_seconds"] >= 1.0
    assert result["timings"]["training"] < 6.0 - result["resumed_training_seconds"] + 2.0
    assert not (job_dir / "backend.pid").exists()


def test_a_second_backend_on_a_running_job_is_refused(tmp_path):
    job_dir = image_job(tmp_path / "job", seconds=30.0, checkpoint_seconds=0)
    first = start_backend(job_dir)
    read_messages(first, until=is_training)
    second = subprocess.run([sys.executable, "-m", "inr_backend", "run", str(job_dir), "--resume"],
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    messages = [protocol.parse_message(line) for line in second.stdout.splitlines()]
    assert second.returncode == 1 and [m["type"] for m in messages] == ["error", "done"]
    assert f"process {first.pid}" in messages[0]["message"] and "already running" in messages[0]["message"]
    # The running job's files are not touched by the refused one.
    assert not any("already running" in m.get("message", "") for m in protocol.read_events(job_dir))
    assert json.loads((job_dir / "backend.pid").read_text())["pid"] == first.pid
    first.stdin.write("cancel\n")
    first.stdin.flush()
    rest = read_messages(first)
    assert first.wait(timeout=60) == 0 and rest[-1]["status"] == "cancelled"
