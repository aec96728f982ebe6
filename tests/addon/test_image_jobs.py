"""Image jobs and occupancy jobs from the add-on's side (no Blender): sizes, names, configs,
pixels as Blender stores them -> the job folder the backend reads."""

from __future__ import annotations

import json

import numpy as np
import pytest

from blender_addon import jobs
from blender_addon._backend import imageio, protocol

TETRA_V = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
TETRA_F = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], np.int32)


def blender_pixels(top_first: np.ndarray) -> np.ndarray:
    """What image.pixels.foreach_get gives for an (H, W, C) image: bottom row first, flat."""
    return np.ascontiguousarray(top_first[::-1]).ravel()


def test_occupancy_job_is_a_mesh_job_with_another_task(tmp_path):
    job_dir = jobs.create_job(tmp_path, TETRA_V, TETRA_F, config=jobs.make_config(network="fourier"),
                              source={"object": "Cube"}, task="occupancy")
    job = protocol.read_job(job_dir)
    assert job["task"] == "occupancy"
    assert job["inputs"] == {"mesh": "inputs/mesh.ply"} and job["outputs"] == {"mesh": "outputs/mesh.ply"}
    assert job["config"]["network"] == "fourier"
    with pytest.raises(jobs.InputError, match="unknown representation"):
        jobs.create_job(tmp_path, TETRA_V, TETRA_F, config=jobs.make_config(), task="nerf")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


@pytest.mark.parametrize("size, words", [((0, 0), "has no pixels"), ((0, 7), "has no pixels"),
                                         ((1, 1), "is 1x1 pixels"), ((1, 50), "is 1x50 pixels")])
def test_too_small_images_are_refused(size, words):
    with pytest.raises(jobs.InputError, match=words):
        jobs.validate_image_size(*size, name="tiny")
    jobs.validate_image_size(2, 2)


def test_target_sizes_and_names():
    assert jobs.target_size(32, 24, scale=4) == (128, 96)
    assert jobs.target_size(33, 25, scale=0.5) == (16, 12)     # round() like the backend's output_size
    assert jobs.target_size(32, 24, size=(100, 7)) == (100, 7)
    for bad in ({"scale": 0}, {"scale": -2.0}, {"scale": float("nan")}, {"size": (0, 10)},
                {"scale": 10_000.0}, {"scale": 2, "size": (4, 4)}, {}):
        with pytest.raises(jobs.InputError):
            jobs.target_size(32, 24, **bad)
    assert jobs.result_image_name("photo.png", scale=4.0) == "photo_x4"
    assert jobs.result_image_name("photo.png", scale=2.5) == "photo_x2.5"
    assert jobs.result_image_name("Render Result", size=(1920, 1080)) == "Render Result_1920x1080"
    assert jobs.result_image_name("v1.2", scale=8) == "v1.2_x8"                # not an image extension


def test_image_config():
    config = jobs.make_image_config(network="hashgrid", device="cpu", seed=3, max_steps=50, seconds=2.5, scale=4)
    assert config == {"preset": "fast", "network": "hashgrid", "device": "cpu", "seed": 3, "max_steps": 50,
                      "seconds": 2.5, "scale": 4.0}
    config = jobs.make_image_config(size=(64, 48))
    assert config["width"] == 64 and config["height"] == 48 and "scale" not in config
    assert "max_steps" not in config and "seconds" not in config
    for bad in ({"network": "frequency_typo"}, {"preset": "ultra"}, {"device": "tpu"}):
        with pytest.raises(jobs.InputError):
            jobs.make_image_config(**bad)


def test_prepare_pixels_flips_rows_and_drops_opaque_alpha():
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (5, 7, 4)).astype(np.float32) / 255
    image = jobs.prepare_pixels(blender_pixels(rgba), 7, 5, 4, is_float=False)
    np.testing.assert_array_equal(image, rgba)                    # top row first again, alpha kept
    rgba[:, :, 3] = 1.0
    assert jobs.prepare_pixels(blender_pixels(rgba), 7, 5, 4, is_float=False).shape == (5, 7, 3)
    grey = rgba[:, :, :1]
    np.testing.assert_array_equal(jobs.prepare_pixels(blender_pixels(grey), 7, 5, 1, is_float=False),
                                  np.repeat(grey, 3, axis=2))
    with pytest.raises(jobs.InputError, match="not 7x5x4"):
        jobs.prepare_pixels(np.zeros(10, np.float32), 7, 5, 4, is_float=False, name="loading")
    nan = rgba.copy()
    nan[2, 3, 0] = np.nan
    with pytest.raises(jobs.InputError, match="non-finite"):
        jobs.prepare_pixels(blender_pixels(nan), 7, 5, 4, is_float=True)
    clear = rgba.copy()
    clear[:, :, 3] = 0
    with pytest.raises(jobs.InputError, match="fully transparent"):
        jobs.prepare_pixels(blender_pixels(clear), 7, 5, 4, is_float=False)


def test_byte_image_job_is_an_exact_8bit_png(tmp_path):
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, (6, 9, 4)).astype(np.float32) / 255
    pixels = jobs.prepare_pixels(blender_pixels(rgba), 9, 6, 4, is_float=False)
    config = jobs.make_image_config(network="siren", scale=4)
    job_dir = jobs.create_image_job(tmp_path, pixels, is_float=False, config=config, source={"image": "pat.png"})
    job = protocol.read_job(job_dir)
    assert job["task"] == "image" and job["inputs"] == {"image": "inputs/image.png"}
    assert job["outputs"] == {"image": "outputs/image.png"} and job["config"] == config
    assert "pat.png" in job_dir.name
    read, info = imageio.read_image(job_dir / "inputs" / "image.png")
    assert info["format"] == "png" and info["bit_depth"] == 8 and info["channels"] == 4
    np.testing.assert_array_equal(np.round(read * 255), np.round(rgba * 255))


def test_float_image_job_is_a_float_exr(tmp_path):
    rng = np.random.default_rng(2)
    rgb = rng.uniform(-0.5, 40.0, (4, 5, 3)).astype(np.float32)
    job_dir = jobs.create_image_job(tmp_path, rgb, is_float=True, config=jobs.make_image_config(size=(8, 8)))
    job = protocol.read_job(job_dir)
    assert job["inputs"] == {"image": "inputs/image.exr"} and job["outputs"] == {"image": "outputs/image.exr"}
    read, info = imageio.read_image(job_dir / "inputs" / "image.exr")
    assert info["format"] == "exr" and info["exr_pixel_type"] == "float"
    np.testing.assert_array_equal(read, rgb)


def test_png8_encoder_round_trips_every_channel_count(tmp_path):
    rng = np.random.default_rng(3)
    for channels in (1, 2, 3, 4):
        values = rng.integers(0, 256, (5, 7, channels), dtype=np.uint8)
        path = tmp_path / f"c{channels}.png"
        path.write_bytes(jobs.encode_png8(values))
        read, info = imageio.read_image(path)
        assert info["channels"] == channels and info["bit_depth"] == 8
        np.testing.assert_array_equal(np.round(read.reshape(5, 7, channels) * 255).astype(np.uint8), values)


def test_failed_writes_leave_no_job(tmp_path):
    def broken(path, pixels):
        raise OSError("disk full")

    with pytest.raises(OSError):
        jobs.create_image_job(tmp_path, np.zeros((4, 4, 3), np.float32), is_float=False,
                              config=jobs.make_image_config(), write_image=broken)
    assert list(tmp_path.iterdir()) == []


def finished_image_job(tmp_path, status="done"):
    job_dir = jobs.create_image_job(tmp_path, np.zeros((4, 4, 3), np.float32), is_float=False,
                                    config=jobs.make_image_config(), source={"image": "a", "width": 4, "height": 4})
    (job_dir / "outputs").mkdir()
    (job_dir / "outputs" / "image.png").write_bytes(jobs.encode_png8(np.zeros((16, 16, 3), np.uint8)))
    (job_dir / "result.json").write_text(json.dumps({"status": status, "outputs": {"image": "outputs/image.png"},
                                                     "metrics": {"psnr": 30.0}, "error": "out of memory"}))
    return job_dir


def test_image_result_and_resample_checks(tmp_path):
    job_dir = finished_image_job(tmp_path / "ok")
    path, result = jobs.image_result(job_dir)
    assert path == job_dir / "outputs" / "image.png" and result["metrics"]["psnr"] == 30.0
    assert jobs.resample_problem(job_dir) is None
    assert "not made by Fit Neural Image" in jobs.resample_problem("")
    assert "is gone" in jobs.resample_problem(tmp_path / "nowhere")
    failed = finished_image_job(tmp_path / "failed", status="failed")
    assert "failed. out of memory" in jobs.resample_problem(failed)
    with pytest.raises(jobs.JobError, match="out of memory"):
        jobs.image_result(failed)
    mesh_job = jobs.create_job(tmp_path / "mesh", TETRA_V, TETRA_F, config=jobs.make_config())
    assert "is a sdf job" in jobs.resample_problem(mesh_job)

    out = jobs.resample_output_path(job_dir, (64, 32), "png")
    assert out.parent == job_dir / "outputs" / "resampled" and out.name.startswith("64x32-")
    assert out != jobs.resample_output_path(job_dir, (64, 32), "png")
    assert jobs.resample_args(job_dir, out, scale=2.0, device="cpu") == [
        "-m", "inr_backend", "resample", str(job_dir), "--scale", "2", "--out", str(out), "--device", "cpu", "--json"]
    assert jobs.resample_args(job_dir, out, size=(64, 32))[4:6] == ["--size", "64x32"]
