"""NeRF jobs from the add-on's side (blender_addon/nerf_jobs.py, no Blender): datasets copied into
job folders, progress from messages, render/extract requests and their results."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from blender_addon import nerf_jobs
from blender_addon._backend import cameras, datasets, protocol

INTR = cameras.Intrinsics(fl_x=40.0, fl_y=40.0, cx=16.0, cy=16.0, w=32, h=32)


def look_at(eye):
    forward = -np.asarray(eye, float) / np.linalg.norm(eye)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, np.cross(right, forward), -forward, eye
    return c2w


def make_capture(root: Path, count: int = 12, masks: bool = True) -> Path:
    frames = []
    for index in range(count):
        angle = 2 * np.pi * index / count
        name = f"{index:04d}"
        (root / "images").mkdir(parents=True, exist_ok=True)
        Image.new("RGBA", (32, 32), (255, 0, 0, 255)).save(root / "images" / f"{name}.png")
        extra = {"camera_name": f"Capture.{index:03d}"}
        if masks:
            (root / "masks").mkdir(exist_ok=True)
            Image.new("L", (32, 32), 255).save(root / "masks" / f"{name}.png")
            extra["mask_file_path"] = f"masks/{name}.png"
        frames.append(datasets.Frame(file_path=f"images/{name}.png", c2w=look_at([4 * np.cos(angle), 4 * np.sin(angle), 1.0]),
                                     intrinsics=INTR, extra=extra))
    datasets.write_transforms(root / "transforms.json", frames)
    datasets.write_normalization(root / "normalization.json",
                                 datasets.normalization_for_cameras([], roi_min=[-1, -1, -1], roi_max=[1, 1, 1]))
    (root / "unrelated.blend1").write_bytes(b"not part of the dataset")
    return root


# --------------------------------------------------------------------------- datasets and train jobs


def test_find_dataset_errors(tmp_path):
    with pytest.raises(nerf_jobs.NerfInputError, match="No capture or dataset"):
        nerf_jobs.find_dataset("")
    with pytest.raises(nerf_jobs.NerfInputError, match="does not exist"):
        nerf_jobs.find_dataset(tmp_path / "nope")
    with pytest.raises(nerf_jobs.NerfInputError, match="holds no transforms.json"):
        nerf_jobs.find_dataset(tmp_path)
    make_capture(tmp_path / "cap")
    assert nerf_jobs.find_dataset(tmp_path / "cap" / "transforms.json") == (tmp_path / "cap").absolute()


def test_train_job_copies_the_dataset(tmp_path):
    capture = make_capture(tmp_path / "capture")
    config = nerf_jobs.NerfSettings(seconds=30, device="cpu", mesh=True,
                                    mesh_resolution=128).config()
    job_dir = nerf_jobs.create_train_job(tmp_path / "jobs", capture, config, source={"label": "My Capture!"})
    job = protocol.read_job(job_dir)            # the backend's own reader accepts it
    assert job["task"] == "nerf" and job["inputs"] == {"dataset": "inputs/dataset"}
    assert job["config"] == {"preset": "fast", "model": "ngp", "device": "cpu", "seed": 0, "background": "random",
                             "preview_seconds": 10.0, "seconds": 30.0, "mesh": True, "mesh_resolution": 128}
    assert job["source"]["dataset"] == str(capture.absolute())
    copied = job_dir / "inputs" / "dataset"
    names = sorted(p.relative_to(copied).as_posix() for p in copied.rglob("*") if p.is_file())
    assert names == sorted(["transforms.json", "normalization.json"] + [f"images/{i:04d}.png" for i in range(12)]
                           + [f"masks/{i:04d}.png" for i in range(12)])   # not the unrelated file
    frames = datasets.read_transforms(copied / "transforms.json")
    assert [Path(f.file_path).parent for f in frames] == [copied.absolute() / "images"] * 12
    assert nerf_jobs.job_label(job_dir) == "My_Capture"
    assert not list((tmp_path / "jobs").glob(".*"))      # no partial folder left


def test_train_job_with_a_missing_image_leaves_nothing(tmp_path):
    capture = make_capture(tmp_path / "capture", masks=False)
    (capture / "images" / "0003.png").unlink()
    with pytest.raises((nerf_jobs.NerfInputError, datasets.DatasetError)):
        nerf_jobs.create_train_job(tmp_path / "jobs", capture, nerf_jobs.NerfSettings().config())
    assert list((tmp_path / "jobs").iterdir()) == []


def test_train_job_on_a_full_disk_says_so_and_leaves_nothing(tmp_path):
    """A file-size limit below the dataset's largest file (what a full disk does to a copy: the
    write fails with EFBIG, as ENOSPC would): the clear "disk is full" error, no partial folder."""
    import subprocess
    import sys
    import textwrap
    capture = make_capture(tmp_path / "capture")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 96, 4), dtype=np.uint8)).save(
        capture / "images" / "0005.png")      # ~37 KB of noise, above the 16 KB limit
    script = textwrap.dedent(f"""
        import resource, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from blender_addon import nerf_jobs
        resource.setrlimit(resource.RLIMIT_FSIZE, (16_000, 16_000))
        try:
            nerf_jobs.create_train_job({str(tmp_path / "jobs")!r}, {str(capture)!r}, nerf_jobs.NerfSettings().config())
        except nerf_jobs.DiskFullError as exc:
            print("DISK FULL:", exc)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert "DISK FULL: the disk is full or a file is too large" in done.stdout, (done.stdout, done.stderr)
    assert "free some space on that disk" in done.stdout
    assert list((tmp_path / "jobs").iterdir()) == []


def test_check_dataset_reports_coverage(tmp_path):
    capture = make_capture(tmp_path / "capture", count=12)
    report = nerf_jobs.check_dataset(capture)
    assert report.ok and any("Only 12 camera views" in w for w in report.warnings)


def test_settings_validation():
    with pytest.raises(nerf_jobs.NerfInputError, match="unknown background"):
        nerf_jobs.NerfSettings(background="green").config()
    with pytest.raises(nerf_jobs.NerfInputError, match="unknown model"):
        nerf_jobs.NerfSettings(model="mip").config()
    config = nerf_jobs.NerfSettings().config()
    assert "seconds" not in config and "max_steps" not in config and "mesh" not in config


# --------------------------------------------------------------------------- training progress


def test_progress_from_messages(tmp_path):
    progress = nerf_jobs.TrainProgress(job_dir=tmp_path)
    progress.handle(protocol.make_message("started", task="nerf", device="cpu"))
    assert progress.status_text == "Training on cpu..."
    progress.handle(protocol.make_message("progress", step=50, total=200, loss=0.0123, psnr=21.5, elapsed=10.0, eta=30.0))
    assert progress.fraction == 0.25
    assert progress.status_text == "Training: step 50/200, loss 0.0123, PSNR 21.50 dB, 30 s left"
    progress.handle(protocol.make_message("progress", step=0, total=0, loss=None, elapsed=11.0, eta=None, phase="mesh"))
    assert progress.fraction == 0.25                       # a phase marker does not move the bar back
    progress.handle(protocol.make_message("preview", path="outputs/preview.png", step=50, psnr=20.0))
    assert progress.preview_path == (tmp_path / "outputs" / "preview.png").resolve()
    assert progress.preview_serial == 1 and progress.preview_psnr == 20.0
    progress.handle(protocol.make_message("preview", path="../../etc/passwd"))
    assert progress.preview_serial == 1                    # outside the job: ignored
    progress.handle(protocol.make_message("warning", message="slow"))
    progress.handle(protocol.make_message("done", status="cancelled"))
    assert progress.warnings == ["slow"] and progress.status_text == "Cancelled"


def write_result(job_dir: Path, status="done", **extra):
    protocol.write_json_atomic(job_dir / "result.json", {"status": status, **extra})


def test_trained_job_problem(tmp_path):
    assert "No trained NeRF yet" in nerf_jobs.trained_job_problem("")
    assert "is gone" in nerf_jobs.trained_job_problem(tmp_path / "missing")
    capture = make_capture(tmp_path / "capture")
    job_dir = nerf_jobs.create_train_job(tmp_path / "jobs", capture, nerf_jobs.NerfSettings().config())
    assert "No trained NeRF in this job" in nerf_jobs.trained_job_problem(job_dir)
    write_result(job_dir, "failed", error="out of memory")
    assert "failed. out of memory" in nerf_jobs.trained_job_problem(job_dir)
    write_result(job_dir, "done", metrics={"psnr": 31.2, "ssim": 0.95, "n_eval_views": 4}, timings={"total": 75})
    assert nerf_jobs.trained_job_problem(job_dir) is None
    rows = nerf_jobs.metrics_summary(nerf_jobs.read_train_result(job_dir))
    assert rows == [("PSNR", "31.20 dB"), ("SSIM", "0.950"), ("Held-out views", "4"), ("Time", "1 min 15 s")]
    sdf = tmp_path / "sdfjob"
    protocol.write_job(sdf, protocol.make_job("sdf", inputs={"mesh": "inputs/mesh.ply"}))
    assert "is a sdf job, not a NeRF" in nerf_jobs.trained_job_problem(sdf)


# --------------------------------------------------------------------------- render and extract requests


def test_cameras_file_round_trips(tmp_path):
    other = cameras.Intrinsics(fl_x=50.0, fl_y=50.0, cx=30.0, cy=20.0, w=64, h=40)
    path = nerf_jobs.write_cameras(tmp_path / "cameras.json", [("Camera", look_at([3, 0, 1]), INTR),
                                                              ("Camera", look_at([0, 3, 1]), other),
                                                              ("weird/name: ü", look_at([0, -3, 1]), INTR)])
    frames = datasets.read_transforms(path)         # no images needed: w and h are written per frame
    assert [f.name for f in frames] == ["Camera.png", "Camera_2.png", "weird_name.png"]
    assert frames[1].intrinsics.isclose(other, 1e-12)
    assert np.allclose(frames[2].c2w, look_at([0, -3, 1]))


def test_command_lines(tmp_path):
    args = nerf_jobs.render_args(tmp_path / "job", tmp_path / "c.json", tmp_path / "out", background="black",
                                 device="cpu")
    assert args == ["-m", "inr_backend", "render", str(tmp_path / "job"), "--cameras", str(tmp_path / "c.json"),
                    "--out", str(tmp_path / "out"), "--outputs", "rgb,alpha,depth,normal", "--background", "black",
                    "--device", "cpu", "--json"]
    with pytest.raises(nerf_jobs.NerfInputError):
        nerf_jobs.render_args(tmp_path, tmp_path, tmp_path, outputs=["rgb", "beauty"])
    args = nerf_jobs.extract_args(tmp_path / "job", tmp_path / "m.ply", resolution=128, threshold=5.0)
    assert args == ["-m", "inr_backend", "extract", str(tmp_path / "job"), "--out", str(tmp_path / "m.ply"),
                    "--resolution", "128", "--threshold", "5.0", "--json"]
    assert nerf_jobs.extract_args(tmp_path, tmp_path / "m.ply") == ["-m", "inr_backend", "extract", str(tmp_path),
                                                                     "--out", str(tmp_path / "m.ply"), "--json"]
    with pytest.raises(nerf_jobs.NerfInputError):
        nerf_jobs.extract_args(tmp_path, tmp_path / "m.ply", resolution=8)


def test_read_render(tmp_path):
    for name in ("view.png", "view_alpha.png", "view_depth.exr"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "render.json").write_text(json.dumps({"frames": [
        {"name": "view", "rgb": "view.png", "alpha": "view_alpha.png", "depth": "view_depth.exr", "psnr": 30.5}]}))
    frame, = nerf_jobs.read_render(tmp_path)
    assert frame.rgb == (tmp_path / "view.png").resolve() and frame.normal is None
    assert frame.metrics == {"psnr": 30.5}
    (tmp_path / "render.json").write_text(json.dumps({"frames": [{"name": "v", "rgb": "missing.png"}]}))
    with pytest.raises(nerf_jobs.NerfJobError, match="missing"):
        nerf_jobs.read_render(tmp_path)
    (tmp_path / "render.json").write_text(json.dumps({"frames": [{"name": "v", "rgb": "../x.png"}]}))
    with pytest.raises(nerf_jobs.NerfJobError, match="leaves"):
        nerf_jobs.read_render(tmp_path)
    (tmp_path / "render.json").unlink()
    with pytest.raises(nerf_jobs.NerfJobError, match="render.json"):
        nerf_jobs.read_render(tmp_path)


def test_new_render_dirs_are_unique(tmp_path):
    first = nerf_jobs.new_render_dir(tmp_path, "view")
    second = nerf_jobs.new_render_dir(tmp_path, "view")
    assert first != second and first.parent == second.parent == tmp_path / "renders"
