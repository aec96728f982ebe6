"""`python -m inr_backend extract` on sdf and occupancy jobs: another resolution, threshold or
smoothing from the stored field, no training, nothing in the job folder touched."""

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh

from inr_backend import protocol
from inr_backend.geometry.metrics import mesh_metrics
from inr_backend.plyio import read_ply, write_ply
from inr_backend.tasks.reextract import taubin_smooth

CENTRE = np.array([2.0, -1.0, 0.5])


def torus_job(job_dir: Path, task: str, config: dict) -> Path:
    """A torus (radii 1.2 and 0.45) away from the origin: a hole, so a wrong sign or a misplaced
    mesh shows."""
    torus = trimesh.creation.torus(major_radius=1.2, minor_radius=0.45, major_sections=48, minor_sections=24)
    write_ply(job_dir / "inputs" / "mesh.ply", torus.vertices + CENTRE, torus.faces)
    protocol.write_job(job_dir, protocol.make_job(task, inputs={"mesh": "inputs/mesh.ply"}, config=config))
    return job_dir


def run_job(job_dir: Path) -> dict:
    completed = subprocess.run([sys.executable, "-m", "inr_backend", "run", str(job_dir), "--ignore-stdin"],
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-2000:]
    return protocol.read_result(job_dir)


def extract(job_dir: Path, out: Path, *options: str) -> tuple[int, list[dict], str]:
    completed = subprocess.run([sys.executable, "-m", "inr_backend", "extract", str(job_dir), "--out", str(out),
                                "--json", *options], capture_output=True, text=True, timeout=600)
    # --json: stdout holds protocol messages only (parse_message raises on anything else).
    return completed.returncode, [protocol.parse_message(line) for line in completed.stdout.splitlines()], \
        completed.stderr


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def chamfer(a_path: Path, b_path: Path) -> float:
    a, b = read_ply(a_path), read_ply(b_path)
    return mesh_metrics(a[0], a[1], b[0], b[1], n_samples=20000)["chamfer_l1"]


@pytest.fixture(scope="module")
def sdf_job(tmp_path_factory):
    job_dir = torus_job(tmp_path_factory.mktemp("sdf") / "job", "sdf",
                        {"preset": "fast", "max_steps": 80, "resolution": 40, "device": "cpu"})
    result = run_job(job_dir)
    assert result["status"] == "done"
    return job_dir


@pytest.mark.parametrize("task", ["sdf", "occupancy"])
def test_reextract_at_another_resolution_without_training(tmp_path, task, sdf_job):
    if task == "sdf":
        job_dir = sdf_job
    else:
        job_dir = torus_job(tmp_path / "job", "occupancy", {"preset": "fast", "max_steps": 80, "resolution": 40,
                                                            "device": "cpu"})
        assert run_job(job_dir)["status"] == "done"
    original = job_dir / "outputs" / "mesh.ply"
    before = digests(job_dir)

    out = tmp_path / "finer.ply"
    code, messages, stderr = extract(job_dir, out, "--resolution", "56")
    assert code == 0, stderr
    assert messages[0]["type"] == "started" and messages[-1]["type"] == "done" and messages[-1]["status"] == "done"
    # No training: no progress message counts steps of anything but the one extraction.
    assert not [m for m in messages if m["type"] == "progress" and (m.get("phase") == "training" or m["total"] > 1)]
    assert digests(job_dir) == before     # checkpoints, outputs, events: nothing in the job folder changed

    vertices, faces, _ = read_ply(out)
    assert messages[-1]["n_vertices"] == len(vertices) and messages[-1]["n_faces"] == len(faces)
    assert len(vertices) != len(read_ply(original)[0])     # another grid: another mesh
    # The same surface in the same (world) coordinates: within one cell of the coarser grid
    # (the job's 40^3), in units of the bounding-box diagonal as chamfer_l1 is.
    scale = protocol.read_json(job_dir / "normalization.json", "normalization")["scale"]
    diagonal = np.linalg.norm(np.ptp(read_ply(job_dir / "inputs" / "mesh.ply")[0], axis=0))
    cell = 2.0 / (40 - 1) / scale / diagonal
    assert chamfer(out, original) < cell, (chamfer(out, original), cell)


def test_sdf_threshold_and_smoothing(tmp_path, sdf_job):
    plain, grown, smooth = tmp_path / "plain.ply", tmp_path / "grown.ply", tmp_path / "smooth.ply"
    for out, options in ((plain, ()), (grown, ("--threshold", "0.05")), (smooth, ("--smoothing", "5"))):
        code, messages, stderr = extract(sdf_job, out, "--resolution", "40", *options)
        assert code == 0 and messages[-1]["status"] == "done", stderr
    # The job's own settings by default: its 40^3 mesh again, vertex for vertex.
    np.testing.assert_allclose(read_ply(plain)[0], read_ply(sdf_job / "outputs" / "mesh.ply")[0], atol=1e-5)
    # A positive level is an offset surface outside: larger volume.
    assert trimesh.Trimesh(*read_ply(grown)[:2]).volume > 1.05 * trimesh.Trimesh(*read_ply(plain)[:2]).volume
    # Smoothing keeps the mesh's connectivity, moves vertices, and evens out face normals.
    plain_mesh, smooth_mesh = trimesh.Trimesh(*read_ply(plain)[:2], process=False), \
        trimesh.Trimesh(*read_ply(smooth)[:2], process=False)
    assert len(smooth_mesh.faces) == len(plain_mesh.faces) and len(smooth_mesh.vertices) == len(plain_mesh.vertices)
    assert np.abs(smooth_mesh.vertices - plain_mesh.vertices).max() > 0
    assert smooth_mesh.face_adjacency_angles.mean() < plain_mesh.face_adjacency_angles.mean()
    assert chamfer(smooth, plain) < 0.005


def test_unfinished_job_is_extracted_from_its_checkpoint(tmp_path, sdf_job):
    job_dir = tmp_path / "unfinished"
    shutil.copytree(sdf_job, job_dir)
    for name in ("model.safetensors", "model.json"):   # as if it had died after training, before the end
        (job_dir / "checkpoints" / name).unlink()
    out = tmp_path / "from_checkpoint.ply"
    code, messages, stderr = extract(job_dir, out, "--resolution", "40")
    assert code == 0, stderr
    assert any(m["type"] == "warning" and "has not finished" in m["message"] for m in messages)
    np.testing.assert_allclose(read_ply(out)[0], read_ply(sdf_job / "outputs" / "mesh.ply")[0], atol=1e-5)


def test_taubin_smoothing_keeps_the_volume_of_a_noisy_sphere():
    sphere = trimesh.creation.icosphere(subdivisions=3)
    noisy = sphere.vertices * (1 + 0.03 * np.random.default_rng(0).standard_normal((len(sphere.vertices), 1)))
    smoothed = taubin_smooth(noisy, sphere.faces, iterations=10)
    radius_spread = lambda v: np.linalg.norm(v, axis=1).std()  # noqa: E731
    assert radius_spread(smoothed) < 0.5 * radius_spread(noisy)   # 0.37 measured: Taubin is a gentle low-pass
    # Taubin's mu step undoes the shrinking a plain Laplacian smoothing would show.
    assert abs(np.linalg.norm(smoothed, axis=1).mean() - 1.0) < 0.02
    np.testing.assert_array_equal(taubin_smooth(noisy, sphere.faces, iterations=0), noisy)


def extract_in_process(job_dir: Path, out: Path, *options: str, capsys) -> tuple[int, list[dict]]:
    """The same command in this process (argument checks need no subprocess); torch's thread
    count, which the command sets for the CPU, is put back."""
    import torch
    from inr_backend.cli import main
    threads = torch.get_num_threads()
    try:
        code = main(["extract", str(job_dir), "--out", str(out), "--json", *options])
    finally:
        torch.set_num_threads(threads)
    return code, [protocol.parse_message(line) for line in capsys.readouterr().out.splitlines()]


@pytest.mark.parametrize("options, expected", [
    (("--threshold", "1.5"), "strictly between 0 and 1"),
    (("--resolution", "8"), "between 16 and 2048"),
    (("--smoothing", "-1"), "smoothing"),
])
def test_bad_extract_options_are_explained(tmp_path, options, expected, capsys):
    job_dir = torus_job(tmp_path / "job", "occupancy", {"preset": "fast", "device": "cpu"})
    code, messages = extract_in_process(job_dir, tmp_path / "out.ply", "--device", "cpu", *options, capsys=capsys)
    assert code == 1 and messages[-1] == {**messages[-1], "type": "done", "status": "failed"}
    assert expected in messages[-2]["message"], messages[-2]


def test_extract_before_training_or_of_an_image_job_says_what_to_do(tmp_path, capsys):
    job_dir = torus_job(tmp_path / "job", "sdf", {"preset": "fast", "device": "cpu"})
    code, messages = extract_in_process(job_dir, tmp_path / "out.ply", "--device", "cpu", capsys=capsys)
    assert code == 1 and "no trained field" in messages[-2]["message"] and "--resume" in messages[-2]["message"]
    assert not (tmp_path / "out.ply").exists()
    image_dir = tmp_path / "image"
    (image_dir / "inputs").mkdir(parents=True)
    protocol.write_job(image_dir, protocol.make_job("image", inputs={"image": "inputs/image.png"}))
    code, messages = extract_in_process(image_dir, tmp_path / "out.ply", "--device", "cpu", capsys=capsys)
    assert code == 1 and "sdf, occupancy and nerf" in messages[-2]["message"]
