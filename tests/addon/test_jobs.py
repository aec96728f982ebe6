"""Job folders from the add-on's side: input checks, atomic writing, reading results (no Blender)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from blender_addon import jobs
from blender_addon._backend import plyio, protocol

TETRA_V = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
TETRA_F = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], np.int32)


def make(tmp_path, **config):
    return jobs.create_job(tmp_path / "jobs", TETRA_V, TETRA_F, config=jobs.make_config(**config),
                           source={"object": "Cube.001 / weird name!"})


def test_job_round_trips_through_the_protocol(tmp_path):
    job_dir = make(tmp_path, preset="balanced", network="siren", resolution=128, device="cpu", seed=7, max_steps=42)
    job = protocol.read_job(job_dir)  # the backend's own reader accepts it
    assert job["schema_version"] == protocol.SCHEMA_VERSION
    assert job["task"] == "sdf"
    assert job["inputs"] == {"mesh": "inputs/mesh.ply"}
    assert job["outputs"] == {"mesh": "outputs/mesh.ply"}
    assert job["config"] == {"preset": "balanced", "network": "siren", "resolution": 128, "device": "cpu",
                             "seed": 7, "max_steps": 42}
    assert job["source"]["object"] == "Cube.001 / weird name!"
    vertices, faces, colors = plyio.read_ply(job_dir / "inputs" / "mesh.ply")
    np.testing.assert_array_equal(vertices, TETRA_V)
    np.testing.assert_array_equal(faces, TETRA_F)
    assert colors is None


def test_max_steps_zero_means_the_preset_decides():
    assert "max_steps" not in jobs.make_config(max_steps=0)
    assert "max_steps" not in jobs.make_config(max_steps=None)


@pytest.mark.parametrize("bad", [{"preset": "ultra"}, {"network": "mlp"}, {"device": "tpu"}])
def test_make_config_rejects_unknown_choices(bad):
    with pytest.raises(jobs.InputError):
        jobs.make_config(**bad)


def test_job_names_are_unique_readable_and_sortable(tmp_path):
    names = {make(tmp_path).name for _ in range(20)}
    assert len(names) == 20
    for name in names:
        assert "Cube.001_weird_name" in name
        assert "/" not in name and " " not in name
    assert jobs.new_job_name("a", now=0) < jobs.new_job_name("a", now=10**9)


def test_job_is_written_atomically(tmp_path, monkeypatch):
    """A reader polling the jobs folder sees no job, or a complete one: never half of one."""
    root = tmp_path / "jobs"
    root.mkdir()
    seen_incomplete = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            for entry in root.iterdir():
                if entry.name.startswith("."):
                    continue
                if not ((entry / "job.json").is_file() and (entry / "inputs" / "mesh.ply").is_file()):
                    seen_incomplete.append(entry.name)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        big_v = np.random.default_rng(0).random((200_000, 3), dtype=np.float32)
        big_f = np.random.default_rng(1).integers(0, len(big_v), (400_000, 3), dtype=np.int32)
        for _ in range(3):
            jobs.create_job(root, big_v, big_f, config=jobs.make_config(), source={"object": "Big"})
    finally:
        stop.set()
        watcher.join()
    assert not seen_incomplete
    assert len([p for p in root.iterdir() if not p.name.startswith(".")]) == 3
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken_write_job(job_dir, job):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(jobs.protocol, "write_job", broken_write_job)
    with pytest.raises(OSError):
        make(tmp_path)
    assert list((tmp_path / "jobs").iterdir()) == []


def test_existing_job_folder_is_never_overwritten(tmp_path):
    job_dir = make(tmp_path)
    with pytest.raises(FileExistsError):
        jobs.create_job(job_dir.parent, TETRA_V, TETRA_F, config=jobs.make_config(), name=job_dir.name)


# --------------------------------------------------------------------------- input checks

def test_validate_mesh_accepts_a_real_surface():
    jobs.validate_mesh(TETRA_V, TETRA_F)


@pytest.mark.parametrize("vertices, faces, words", [
    (np.zeros((0, 3)), np.zeros((0, 3), int), "no faces"),
    (TETRA_V, np.zeros((0, 3), int), "no faces"),
    (np.zeros((4, 3)), TETRA_F, "zero surface area"),                                   # coincident
    (np.array([[0, 0, 0], [1, 1, 1], [2, 2, 2], [3, 3, 3]], float), TETRA_F, "zero surface area"),  # collinear
    (np.array([[0, 0, 0], [1, 0, 0], [np.nan, 1, 0], [0, 0, 1]]), TETRA_F, "non-finite"),
    (TETRA_V, np.array([[0, 1, 9]]), "missing vertices"),
])
def test_validate_mesh_rejects(vertices, faces, words):
    with pytest.raises(jobs.InputError, match=words):
        jobs.validate_mesh(vertices, faces, "Thing")


# --------------------------------------------------------------------------- results

def finish(job_dir, status="done", mesh=True, **extra):
    if mesh:
        plyio.write_ply(Path(job_dir) / "outputs" / "mesh.ply", TETRA_V * 2, TETRA_F)
    protocol.write_json_atomic(Path(job_dir) / "result.json",
                               {"schema_version": 1, "status": status, "metrics": {"chamfer_l1": 0.002},
                                "outputs": {"mesh": "outputs/mesh.ply"}, **extra})


def test_import_result_reads_mesh_and_result(tmp_path):
    job_dir = make(tmp_path)
    finish(job_dir)
    vertices, faces, result = jobs.import_result(job_dir)
    np.testing.assert_array_equal(vertices, TETRA_V * 2)
    np.testing.assert_array_equal(faces, TETRA_F)
    assert result["metrics"]["chamfer_l1"] == 0.002


def test_import_result_without_result_json(tmp_path):
    job_dir = make(tmp_path)
    with pytest.raises(jobs.JobError, match="no valid result"):
        jobs.import_result(job_dir)
    assert jobs.read_status(job_dir) is None


def test_import_result_of_a_failed_job_says_why(tmp_path):
    job_dir = make(tmp_path)
    finish(job_dir, status="failed", mesh=False, error="the mesh has no inside")
    with pytest.raises(jobs.JobError, match="The job failed. the mesh has no inside"):
        jobs.import_result(job_dir)


def test_import_result_of_a_cancelled_job(tmp_path):
    job_dir = make(tmp_path)
    finish(job_dir, status="cancelled", mesh=False)
    with pytest.raises(jobs.JobError, match="cancelled"):
        jobs.import_result(job_dir)


def test_import_result_with_a_missing_or_broken_mesh(tmp_path):
    job_dir = make(tmp_path)
    finish(job_dir, mesh=False)
    with pytest.raises(jobs.JobError, match="cannot be read"):
        jobs.import_result(job_dir)
    (job_dir / "outputs").mkdir(exist_ok=True)
    (job_dir / "outputs" / "mesh.ply").write_bytes(b"not a ply")
    with pytest.raises(jobs.JobError, match="cannot be read"):
        jobs.import_result(job_dir)


def test_import_result_refuses_a_path_outside_the_job(tmp_path):
    job_dir = make(tmp_path)
    finish(job_dir)
    result = json.loads((job_dir / "result.json").read_text())
    result["outputs"]["mesh"] = "../../elsewhere.ply"
    (job_dir / "result.json").write_text(json.dumps(result))
    with pytest.raises(jobs.JobError, match="leaves the job folder"):
        jobs.import_result(job_dir)


def test_import_result_with_an_empty_mesh(tmp_path):
    job_dir = make(tmp_path)
    finish(job_dir, mesh=False)
    plyio.write_ply(job_dir / "outputs" / "mesh.ply", np.zeros((0, 3)), np.zeros((0, 3), int))
    with pytest.raises(jobs.JobError, match="empty"):
        jobs.import_result(job_dir)
