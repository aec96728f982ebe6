"""The Jobs panel's view of job folders (blender_addon/job_registry.py), without Blender.

Job folders are written with the backend's own protocol helpers (make_job, write_job,
encode_message, write_json_atomic), as the backend and the add-on write them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from blender_addon import job_registry as registry
from inr_backend import protocol


def make_job_folder(root: Path, name: str, *, task: str = "sdf", source: dict | None = None,
                    events: list[dict] | None = None, result: dict | None = None, checkpoint: bool = False,
                    resume_point: bool = False, outputs: tuple[str, ...] = ()) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    inputs = {"mesh": "inputs/mesh.ply"} if task in ("sdf", "occupancy") else {"image": "inputs/image.png"}
    protocol.write_job(folder, protocol.make_job(task, inputs=inputs, config={"preset": "fast"},
                                                 source=source or {"object": "Suzanne"}))
    if events is not None:
        with open(folder / protocol.EVENTS_FILE, "w", encoding="utf-8") as handle:
            for message in events:
                handle.write(protocol.encode_message(message) + "\n")
    if result is not None:
        protocol.write_json_atomic(folder / protocol.RESULT_FILE, result)
    if checkpoint:   # the trained field, where the backend writes it
        field = folder / "checkpoints" / ("field" if task in ("image", "nerf") else "")
        field.mkdir(parents=True, exist_ok=True)
        (field / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
        protocol.write_json_atomic(field / "model.json", {"task": task})
    if resume_point:   # a training state for `run --resume` (checkpoint.py's layout)
        state = folder / "checkpoints" / "resume" / "step-00000010"
        state.mkdir(parents=True)
        (state / "weights.safetensors").write_bytes(b"w" * 100)
        (state / "trainer.safetensors").write_bytes(b"t" * 200)
        protocol.write_json_atomic(state / "state.json", {"step": 10})
        protocol.write_json_atomic(folder / "checkpoints" / "resume.json", {"path": "resume/step-00000010"})
    for output in outputs:
        (folder / "outputs").mkdir(exist_ok=True)
        (folder / "outputs" / output).write_bytes(b"ply\n")
    return folder


def progress(step, total, loss=0.5, elapsed=1.0, **extra):
    return protocol.make_message("progress", phase="training", step=step, total=total, loss=loss, elapsed=elapsed,
                                 eta=None, **extra)


def heartbeat(elapsed):
    return protocol.make_message("progress", phase="extracting", step=0, total=0, loss=None, elapsed=elapsed, eta=None,
                                 heartbeat=True)


def test_statuses_progress_and_messages(tmp_path):
    started = protocol.make_message("started", task="sdf", device="cpu")
    make_job_folder(tmp_path, "20250101-000001-done", events=[started, progress(100, 100),
                                                              protocol.make_message("done", status="done")],
                    result={"status": "done", "timings": {"total": 12.5}, "outputs": {"mesh": "outputs/mesh.ply"}},
                    checkpoint=True, outputs=("mesh.ply",))
    make_job_folder(tmp_path, "20250101-000002-failed", events=[started, progress(10, 100)],
                    result={"status": "failed", "error": "no surface found at level 0\nmore text"}, resume_point=True)
    make_job_folder(tmp_path, "20250101-000003-cancelled", task="image", source={"image": "photo.png"},
                    events=[started, progress(30, 120, elapsed=4.0)],
                    result={"status": "cancelled", "message": "cancelled by the user"})
    make_job_folder(tmp_path, "20250101-000004-killed", events=[started, progress(40, 80, elapsed=7.0),
                                                                heartbeat(8.0)], resume_point=True)
    (tmp_path / ".20250101-000005-being-written.partial").mkdir()          # hidden: skipped
    (tmp_path / "not-a-job").mkdir()                                        # no job.json: skipped

    jobs = {info.name.split("-")[-1]: info for info in registry.list_jobs(tmp_path)}
    assert set(jobs) == {"done", "failed", "cancelled", "killed"}

    done = jobs["done"]
    assert (done.status, done.task, done.source, done.progress) == ("done", "sdf", "Suzanne", 1.0)
    assert done.elapsed == 12.5 and done.outputs == ["mesh.ply"] and done.extractable and not done.resumable
    failed = jobs["failed"]
    assert failed.status == "failed" and failed.message == "no surface found at level 0"
    assert failed.progress == pytest.approx(0.1) and failed.resumable
    assert failed.extractable                         # an sdf job's last resume checkpoint can be extracted
    cancelled = jobs["cancelled"]
    assert (cancelled.status, cancelled.task, cancelled.source) == ("cancelled", "image", "photo.png")
    assert not cancelled.resumable and not cancelled.extractable           # no checkpoint; an image has no surface
    killed = jobs["killed"]
    assert killed.status == "interrupted" and killed.resumable
    assert killed.progress == pytest.approx(0.5) and killed.elapsed == 8.0
    assert "Training: step 40/80" in killed.message                        # a heartbeat is no news

    # The caller's own running backends count as running before backend.pid exists.
    running = registry.list_jobs(tmp_path, running_dirs=[jobs["killed"].path])
    assert [info.status for info in running if info.name.endswith("killed")] == ["running"]


def test_running_by_backend_pid(tmp_path):
    folder = make_job_folder(tmp_path, "20250101-000001-live", events=[progress(5, 50)])
    # A live process whose command line mentions inr_backend: what pid_alive requires on Linux.
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "inr_backend"])
    try:
        started = time.time() - 3.0
        (folder / registry.PID_FILE).write_text(json.dumps({"pid": process.pid, "started": started,
                                                             "keep_running": True}))
        info = registry.read_job_info(folder)
        assert info.status == "running" and info.pid == process.pid and info.keep_running
        assert 2.5 < info.elapsed < 60
        with pytest.raises(registry.JobRegistryError, match="still running: cancel it first"):
            registry.delete_job(tmp_path, folder)
        assert folder.is_dir()
        # The backend wrote its result.json after it started: it is finishing, not running.
        protocol.write_json_atomic(folder / protocol.RESULT_FILE, {"status": "done"})
        assert registry.read_job_info(folder).status == "done"
        # A result.json older than the backend (a resumed job's earlier run) does not count.
        os.utime(folder / protocol.RESULT_FILE, (started - 10, started - 10))
        assert registry.read_job_info(folder).status == "running"
        (folder / protocol.RESULT_FILE).unlink()
        # Stop: SIGTERM to the process backend.pid names (the backend cancels cleanly on it).
        if sys.platform != "win32":
            assert registry.stop_backend(folder) == process.pid
            assert process.wait(timeout=10) != 0
            assert registry.stop_backend(folder) is None             # nothing runs any more
    finally:
        process.kill()
        process.wait()
    # The process is gone but its backend.pid stayed (a crash): not running any more.
    info = registry.read_job_info(folder)
    assert info.status == "interrupted" and info.pid is None
    # A pid reused by an unrelated program is not our backend.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (folder / registry.PID_FILE).write_text(json.dumps({"pid": other.pid, "started": time.time()}))
        if sys.platform.startswith("linux"):
            assert registry.read_job_info(folder).status == "interrupted"
    finally:
        other.kill()
        other.wait()


def test_big_events_tail_is_fast(tmp_path):
    """100k messages (~13 MB): the summary reads one tail, not the file. Measured here: see the report."""
    lines = [protocol.encode_message(progress(step, 100_000, elapsed=step * 0.01)) for step in range(1, 100_001)]
    folder = make_job_folder(tmp_path, "20250101-000001-big", result=None)
    (folder / protocol.EVENTS_FILE).write_text("\n".join(lines) + "\n")
    assert (folder / protocol.EVENTS_FILE).stat().st_size > 10_000_000
    registry._SUMMARY_CACHE.clear()
    clock = time.perf_counter()
    info = registry.read_job_info(folder)
    first = time.perf_counter() - clock
    assert info.progress == 1.0 and "step 100000/100000" in info.message
    # Every call after the first: nothing changed, the cached summary is used.
    clock = time.perf_counter()
    for _ in range(100):
        registry.read_job_info(folder)
    cached = (time.perf_counter() - clock) / 100
    # Parsing the whole file takes ~0.5 s here; the tail ~1 ms. Loose bounds for a busy 2-core machine.
    assert first < 0.1, first
    assert cached < 0.02, cached
    print(f"events.jsonl 100k lines: first read {first * 1000:.2f} ms, cached {cached * 1000:.3f} ms per call")


def test_tail_survives_cut_lines_and_long_heartbeats(tmp_path):
    path = tmp_path / "events.jsonl"
    body = [protocol.encode_message(progress(7, 10))] + [protocol.encode_message(heartbeat(t)) for t in range(2000)]
    path.write_text("\n".join(body) + "\n" + '{"type": "progress", "st')   # a line being written
    summary = registry.events_summary(path)
    assert (summary.step, summary.total) == (7, 10)                       # found behind 64 KiB of heartbeats
    assert summary.text == "Extracting..."                                # the phase the heartbeats name
    assert summary.elapsed == 1999.0


def test_event_follower_reads_appended_lines(tmp_path):
    folder = make_job_folder(tmp_path, "job", events=[progress(1, 3)])
    follower = registry.EventFollower(folder)
    assert [m["step"] for m in follower.poll()] == [1]
    with open(folder / protocol.EVENTS_FILE, "a") as handle:
        handle.write(protocol.encode_message(progress(2, 3)) + "\n" + '{"type": "done", ')
    assert [m["step"] for m in follower.poll()] == [2] and follower.done is None
    with open(folder / protocol.EVENTS_FILE, "a") as handle:
        handle.write('"status": "done"}\n')
    assert [m["type"] for m in follower.poll()] == ["done"] and follower.done["status"] == "done"
    assert follower.poll() == []


def test_delete_is_confined_to_job_folders(tmp_path):
    root = tmp_path / "jobs"
    keep = make_job_folder(root, "20250101-000001-keep", result={"status": "done"})
    victim = make_job_folder(root, "20250101-000002-victim", result={"status": "done"}, checkpoint=True)
    outside = make_job_folder(tmp_path / "elsewhere", "20250101-000003-outside", result={"status": "done"})
    nested = make_job_folder(keep / "sub", "nested", result={"status": "done"})
    (root / "plain").mkdir()
    (root / "plain" / "precious.txt").write_text("keep me")
    link = root / "link-to-outside"
    link.symlink_to(outside)

    for target, words in ((outside, "only a job folder directly inside"), (nested, "only a job folder directly inside"),
                          (root / "plain", "holds no job.json"), (link, "is a link"), (root, "directly inside"),
                          (root / "20250101-000002-victim" / ".." / ".." / "elsewhere" / "20250101-000003-outside",
                           "directly inside")):
        with pytest.raises(registry.JobRegistryError, match=words):
            registry.delete_job(root, target)
    with pytest.raises(registry.JobRegistryError, match="still running"):
        registry.delete_job(root, victim, running_dirs=[victim])
    assert outside.is_dir() and nested.is_dir() and (root / "plain" / "precious.txt").exists() and victim.is_dir()

    registry.delete_job(root, victim)
    assert not victim.exists() and keep.is_dir()
    assert sorted(p.name for p in root.iterdir()) == ["20250101-000001-keep", "link-to-outside", "plain"]


def test_pack_keeps_the_field_not_the_data(tmp_path):
    folder = make_job_folder(tmp_path / "jobs", "20250101-000001-Suzanne", result={"status": "done"},
                             checkpoint=True, outputs=("mesh.ply",), events=[progress(1, 1)])
    protocol.write_json_atomic(folder / "normalization.json", protocol.make_normalization([0, 0, 0], 1.0))
    protocol.write_json_atomic(folder / "config.json", {"preset": "fast"})
    (folder / "checkpoints" / "trainer").mkdir()
    (folder / "checkpoints" / "trainer" / "state.safetensors").write_bytes(b"weights")
    (folder / "inputs").mkdir()
    (folder / "inputs" / "mesh.ply").write_bytes(b"ply" * 1000)
    (folder / "backend.log").write_text("log")
    (folder / "inputs" / "dataset").mkdir()
    (folder / "inputs" / "dataset" / "transforms.json").write_text("{}")
    (folder / "inputs" / "dataset" / "r_0.png").write_bytes(b"png")

    assert registry.packable_files(folder) == [
        "checkpoints/model.json", "checkpoints/model.safetensors", "checkpoints/trainer/state.safetensors",
        "config.json", "inputs/dataset/transforms.json", "job.json", "normalization.json", "result.json"]
    data = registry.pack_job(folder)
    assert registry.pack_manifest(data)["job_name"] == folder.name

    elsewhere = tmp_path / "colleague" / "jobs"
    restored = registry.unpack_job(data, elsewhere)
    assert restored == elsewhere / folder.name
    for name in registry.packable_files(folder):
        assert (restored / name).read_bytes() == (folder / name).read_bytes(), name
    assert not (restored / "backend.log").exists() and not (restored / "outputs").exists()
    assert registry.read_job_info(restored).status == "done"
    assert [p.name for p in elsewhere.iterdir()] == [folder.name]          # no temporary folder left
    # Unpacking again finds the folder there and leaves it alone.
    (restored / "marker.json").write_text("{}")
    assert registry.unpack_job(data, elsewhere) == restored and (restored / "marker.json").exists()

    with pytest.raises(registry.JobRegistryError, match="no checkpoint"):
        registry.pack_job(make_job_folder(tmp_path / "jobs", "untrained"))


def test_pack_leaves_resume_state_out_of_finished_fields(tmp_path):
    finished = make_job_folder(tmp_path, "finished", result={"status": "done"}, checkpoint=True, resume_point=True)
    stopped = make_job_folder(tmp_path, "stopped", result={"status": "cancelled"}, resume_point=True)
    assert not any("resume" in name for name in registry.packable_files(finished))
    assert {"checkpoints/resume.json", "checkpoints/resume/step-00000010/weights.safetensors",
            "checkpoints/resume/step-00000010/trainer.safetensors"} <= set(registry.packable_files(stopped))
    restored = registry.unpack_job(registry.pack_job(stopped), tmp_path / "elsewhere")
    assert registry.read_job_info(restored).resumable                      # resumable from the pack


def test_unpack_refuses_unsafe_members(tmp_path):
    import io

    def pack(members):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr(registry.PACK_MANIFEST, json.dumps({"format": 1, "job_name": "evil"}))
            for name, payload in members.items():
                archive.writestr(name, payload)
        return buffer.getvalue()

    for members, words in (({"job.json": "{}", "../escape.json": "{}"}, "unsafe"),
                           ({"job.json": "{}", "/abs.json": "{}"}, "unsafe"),
                           ({"job.json": "{}", "run.py": "print()"}, "unexpected"),
                           ({"config.json": "{}"}, "no job.json")):
        with pytest.raises(registry.JobRegistryError, match=words):
            registry.unpack_job(pack(members), tmp_path / "jobs")
    assert not (tmp_path / "escape.json").exists()
    assert not (tmp_path / "jobs").exists() or list((tmp_path / "jobs").iterdir()) == []
    with pytest.raises(registry.JobRegistryError, match="damaged"):
        registry.unpack_job(b"not a zip", tmp_path / "jobs")


def test_job_properties_and_locate(tmp_path):
    folder = make_job_folder(tmp_path / "a", "20250101-000001-Suzanne")
    props = registry.job_properties(folder, "sdf", {"resolution": 128, "threshold": None, "preset": "fast",
                                                     "size": (4, 3), "nested": {"x": 1}})
    assert props == {registry.JOB_KEY: str(folder), registry.JOB_NAME_KEY: folder.name, registry.TASK_KEY: "sdf",
                     registry.SETTINGS_KEY: {"resolution": 128, "preset": "fast", "size": [4, 3]}}
    target: dict = {}
    registry.record_job(target, folder, "sdf", {"resolution": 128})
    assert target[registry.TASK_KEY] == "sdf"
    assert registry.locate_job(folder, None, []) == folder
    moved = tmp_path / "b"
    moved.mkdir()
    os.rename(folder, moved / folder.name)
    assert registry.locate_job(folder, folder.name, [tmp_path / "c", moved]) == moved / folder.name
    assert registry.locate_job(folder, None, [moved]) == moved / folder.name
    assert registry.locate_job(folder, folder.name, [tmp_path / "c"]) is None
