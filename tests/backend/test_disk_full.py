"""A full disk fails the job cleanly: an `error` that says the disk is full, where, and what to do,
then `done` {failed}; no traceback, no hang, no temporary files left, and the job's earlier
outputs and checkpoints byte for byte as they were. Real backend subprocesses throughout.

Two ways to fill a disk: a 96 MB tmpfs filled to the last few pages (needs root to mount; the
case skips with the reason otherwise), and, always, a file-size limit in the child
(RLIMIT_FSIZE: writes past it fail with EFBIG, which CPython reports as OSError because it
ignores SIGXFSZ), handled like ENOSPC.
"""

import contextlib
import hashlib
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh

from inr_backend import protocol
from inr_backend.checkpoint import load_training_state
from inr_backend.plyio import write_ply

CENTRE = np.array([10.0, -5.0, 3.0])
# Fast hash-grid sdf on a 1280-face sphere: a 12.6 MB field, 38 MB of training state, a ~250 KB
# mesh at 40^3; the JSON files, events.jsonl and backend.log stay under 20 KB.
CONFIG = {"preset": "fast", "resolution": 40, "device": "cpu", "checkpoint_seconds": 0.5}
FILE_LIMIT = 200_000                  # RLIMIT_FSIZE: the logs and JSON files fit, a mesh or a checkpoint not
DISK_FULL = "the disk is full or the file is too large"


def sphere_job(job_dir: Path, config: dict) -> Path:
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=3.5)
    write_ply(job_dir / "inputs" / "mesh.ply", sphere.vertices + CENTRE, sphere.faces)
    protocol.write_job(job_dir, protocol.make_job("sdf", inputs={"mesh": "inputs/mesh.ply"}, config=config))
    return job_dir


def backend(*args, file_limit: int | None = None, stdin=subprocess.DEVNULL,
            timeout: float = 180) -> tuple[int, list[dict], str]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    completed = subprocess.run([sys.executable, "-m", "inr_backend", *map(str, args)], capture_output=True,
                               text=True, timeout=timeout, stdin=stdin,
                               preexec_fn=limit if file_limit is not None else None)
    return completed.returncode, [protocol.parse_message(line) for line in completed.stdout.splitlines()], \
        completed.stderr


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    """Two job folders to copy: one finished (mesh, final field, training state), one cancelled
    mid-training (a resumable checkpoint)."""
    root = tmp_path_factory.mktemp("disk_full_jobs")
    finished = sphere_job(root / "finished", {**CONFIG, "max_steps": 30})
    code, messages, stderr = backend("run", finished, "--ignore-stdin")
    assert code == 0 and messages[-1]["status"] == "done", stderr[-2000:]
    cancelled = sphere_job(root / "cancelled", {**CONFIG, "max_steps": 100_000})
    process = subprocess.Popen([sys.executable, "-m", "inr_backend", "run", str(cancelled)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        message = protocol.parse_message(line)
        if message["type"] == "progress" and message["total"] and message["step"] > 0:
            break
    process.stdin.write("cancel\n")
    process.stdin.flush()
    process.stdout.read()
    assert process.wait(timeout=60) == 0
    assert protocol.read_result(cancelled)["status"] == "cancelled"
    assert (cancelled / "checkpoints" / "resume.json").is_file()
    return {"finished": finished, "cancelled": cancelled}


@contextlib.contextmanager
def full_disk(where: str, tmp_path: Path, *, leave: int):
    """A folder on a disk with ``leave`` bytes free ("tmpfs"), or a plain folder for the
    RLIMIT_FSIZE runs ("limit"). Yields (folder, file_limit)."""
    if where == "limit":
        folder = tmp_path / "plain"
        folder.mkdir()
        yield folder, FILE_LIMIT
        return
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (not root?): {mounted.stderr.strip()[:200]}")
    try:
        yield mount_point, None
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(folder: Path, *, leave: int) -> Path:
    """Fill the disk under ``folder`` until ``leave`` bytes (rounded to pages) are free."""
    filler = folder / "filler.bin"
    stat = os.statvfs(folder)
    size = max(0, stat.f_bavail * stat.f_frsize - leave)
    with open(filler, "wb") as handle:
        block = b"\0" * (1 << 20)
        while size > 0:
            size -= handle.write(block[:min(size, len(block))])
    return filler


def copy_job(source: Path, folder: Path) -> Path:
    return Path(shutil.copytree(source, folder / source.name))


def digests(folder: Path) -> dict[str, str]:
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def temporary_leftovers(folder: Path) -> list[str]:
    return [str(path) for path in folder.rglob("*") if path.name.endswith((".tmp", ".partial"))]


def assert_failed_cleanly(code: int, messages: list[dict], stderr: str, folder: Path) -> str:
    assert code == 1, (messages[-3:], stderr[-2000:])
    assert "Traceback" not in stderr, stderr[-3000:]
    assert messages[-1]["type"] == "done" and messages[-1]["status"] == "failed", messages[-3:]
    errors = [m["message"] for m in messages if m["type"] == "error"]
    assert errors and errors[0].startswith(DISK_FULL), errors
    assert str(folder) in errors[0] and "Free some space on that disk" in errors[0], errors[0]
    assert "choose another jobs folder in the add-on preferences" in errors[0]
    return errors[0]


@pytest.mark.parametrize("where", ["tmpfs", "limit"])
def test_reextract_on_a_full_disk_keeps_the_earlier_mesh(jobs, tmp_path, where):
    with full_disk(where, tmp_path, leave=8192) as (folder, file_limit):
        job_dir = copy_job(jobs["finished"], folder)
        before = digests(job_dir)
        if where == "tmpfs":
            fill(folder, leave=8192)
        # The new mesh goes onto the old one's path: only the temporary file may fail.
        code, messages, stderr = backend("extract", job_dir, "--out", job_dir / "outputs" / "mesh.ply", "--json",
                                         file_limit=file_limit)
        error = assert_failed_cleanly(code, messages, stderr, job_dir / "outputs")
        assert "mesh.ply" in error
        assert digests(job_dir) == before
        assert temporary_leftovers(folder) == []


@pytest.mark.parametrize("where", ["tmpfs", "limit"])
def test_resume_on_a_full_disk_fails_at_the_checkpoint_and_keeps_the_earlier_one(jobs, tmp_path, where):
    with full_disk(where, tmp_path, leave=65536) as (folder, file_limit):
        job_dir = copy_job(jobs["cancelled"], folder)
        before = {name: digest for name, digest in digests(job_dir).items() if name.startswith("checkpoints")}
        pointer = (job_dir / "checkpoints" / "resume.json").read_text()
        if where == "tmpfs":
            fill(folder, leave=65536)
        # Training runs until its first checkpoint (0.5 s), which has no room: the job stops there.
        code, messages, stderr = backend("run", job_dir, "--resume", "--ignore-stdin", file_limit=file_limit)
        assert_failed_cleanly(code, messages, stderr, job_dir)
        assert messages[0]["type"] == "started" and messages[0]["resumed_from_step"] > 0
        after = {name: digest for name, digest in digests(job_dir).items() if name.startswith("checkpoints")}
        assert after == before and (job_dir / "checkpoints" / "resume.json").read_text() == pointer
        assert temporary_leftovers(folder) == []
        # The earlier checkpoint is whole: a resume with room again starts from it.
        state = load_training_state(job_dir / "checkpoints")
        assert state is not None and state.step == messages[0]["resumed_from_step"]


def test_no_room_even_for_the_pid_file_still_ends_with_error_and_done_on_stdout(jobs, tmp_path):
    job_dir = copy_job(jobs["cancelled"], tmp_path)
    before = digests(job_dir)
    code, messages, stderr = backend("run", job_dir, "--resume", "--ignore-stdin", file_limit=1)
    assert_failed_cleanly(code, messages, stderr, job_dir)
    assert [m["type"] for m in messages] == ["error", "done"]
    assert digests(job_dir) == before and temporary_leftovers(job_dir) == []


def test_events_log_and_result_unwritable_still_end_with_error_and_done_on_stdout(jobs, tmp_path):
    job_dir = copy_job(jobs["cancelled"], tmp_path)
    for name in ("backend.log", "events.jsonl"):  # both as a job with a longer history (several runs) has them
        (job_dir / name).write_text((job_dir / name).read_text() * 8)
    sizes = {name: (job_dir / name).stat().st_size for name in ("events.jsonl", "backend.log", "result.json")}
    result_before = (job_dir / "result.json").read_bytes()
    # Above what a resume rewrites before training (backend.pid, config.json, normalization.json),
    # below what events.jsonl and backend.log already hold: every append to them fails, then the
    # checkpoint does; result.json's new text may or may not fit.
    limit = max((job_dir / name).stat().st_size for name in ("config.json", "normalization.json")) + 300
    assert limit < min(sizes["events.jsonl"], sizes["backend.log"]), (limit, sizes)
    code, messages, stderr = backend("run", job_dir, "--resume", "--ignore-stdin", file_limit=limit)
    assert_failed_cleanly(code, messages, stderr, job_dir)
    assert messages[0]["type"] == "started" and any(m["type"] == "progress" and m["total"] for m in messages)
    assert (job_dir / "events.jsonl").stat().st_size == sizes["events.jsonl"]   # nothing appended, nothing cut
    assert (job_dir / "backend.log").stat().st_size == sizes["backend.log"]
    result = (job_dir / "result.json").read_bytes()
    if result == result_before:                 # the failed run's result did not fit: stdout says so
        assert any(m["type"] == "error" and m["message"].startswith("could not write result.json: " + DISK_FULL)
                   for m in messages), messages[-3:]
    else:
        assert protocol.read_result(job_dir)["status"] == "failed"
    assert temporary_leftovers(job_dir) == []


def test_a_cancel_whose_checkpoint_has_no_room_says_the_job_stops(tmp_path):
    """Cancelled before any checkpoint, with no room for one: the job ends `cancelled` (not a
    failure: the person asked it to stop), and the warning says it stops with nothing to
    resume from, not that training goes on."""
    job_dir = sphere_job(tmp_path / "job", {**CONFIG, "max_steps": 100_000, "checkpoint_seconds": 0})

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))

    process = subprocess.Popen([sys.executable, "-m", "inr_backend", "run", str(job_dir)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=limit)
    messages = []
    for line in process.stdout:
        messages.append(protocol.parse_message(line))
        if messages[-1]["type"] == "progress" and messages[-1]["total"] and messages[-1]["step"] > 0:
            break
    process.stdin.write("cancel\n")
    process.stdin.flush()
    messages += [protocol.parse_message(line) for line in process.stdout.read().splitlines()]
    stderr = process.stderr.read()
    assert process.wait(timeout=60) == 0, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert messages[-1]["type"] == "done" and messages[-1]["status"] == "cancelled", messages[-3:]
    warnings = [m["message"] for m in messages if m["type"] == "warning" and "checkpoint" in m["message"]]
    assert len(warnings) == 1, warnings
    assert "the job stops here and there is no earlier checkpoint to resume from" in warnings[0], warnings
    assert "training goes on" not in warnings[0]
    assert temporary_leftovers(job_dir) == []


def test_the_disk_full_message_names_the_file_being_written_not_its_temporary_name():
    import errno

    temporary = "/jobs/lamp/outputs/.mesh-0001.ply.k3j2x9_q.tmp"
    message = protocol.disk_full_message(OSError(errno.ENOSPC, "No space left on device", temporary))
    assert message.startswith(f"{DISK_FULL} (No space left on device writing /jobs/lamp/outputs/mesh-0001.ply)")
    assert "in /jobs/lamp/outputs." in message and ".tmp" not in message
    # a checkpoint's state folder, written under a temporary name and renamed when whole
    state = "/jobs/lamp/checkpoints/states/.state-000120.ab12cd34.tmp/field.safetensors"
    message = protocol.disk_full_message(OSError(errno.EDQUOT, "Disk quota exceeded", state))
    assert "writing /jobs/lamp/checkpoints/states/state-000120/field.safetensors" in message, message
    assert protocol.final_name("/jobs/lamp/result.json") == "/jobs/lamp/result.json"
    assert protocol.final_name("/jobs/lamp/.result.json.4711.tmp") == "/jobs/lamp/result.json"
