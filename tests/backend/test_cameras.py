"""Camera maths and transforms.json datasets from the add-on's side (no Blender).

The Blender side of the same maths (our intrinsics against Blender's own projection) is in
tests/blender/test_cameras_blender.py.
"""

from __future__ import annotations

import itertools
import json
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from inr_backend import cameras, datasets
from inr_backend.cameras import CameraError, CameraModel, Intrinsics
from inr_backend.datasets import DatasetError, Frame

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
LEGO_TRAIN = SHARED_DATA / "lego" / "transforms_train.json"

GRID = list(itertools.product(
    [18.0, 50.0, 135.0],                              # lens
    ["AUTO", "HORIZONTAL", "VERTICAL"],               # sensor fit
    [(0.0, 0.0), (0.1, -0.2), (-0.35, 0.25)],         # shift
    [(1.0, 1.0), (2.0, 1.0), (1.0, 1.5)],             # pixel aspect
    [(640, 480, 100), (480, 640, 100), (1920, 1080, 33), (101, 77, 50), (300, 300, 100)]))


def model_of(lens, fit, shift, aspect, resolution, sensor=(32.0, 20.0)):
    return CameraModel(lens_mm=lens, sensor_width_mm=sensor[0], sensor_height_mm=sensor[1], sensor_fit=fit,
                       shift_x=shift[0], shift_y=shift[1], resolution_x=resolution[0],
                       resolution_y=resolution[1], resolution_percentage=resolution[2],
                       pixel_aspect_x=aspect[0], pixel_aspect_y=aspect[1])


def random_pose(rng) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    rotation = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                         [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                         [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
    c2w = np.eye(4)
    c2w[:3, :3] = rotation
    c2w[:3, 3] = rng.uniform(-3, 3, size=3)
    return c2w


# --------------------------------------------------------------------------- intrinsics


def test_a_plain_camera_has_the_textbook_intrinsics():
    intr = cameras.intrinsics_from_camera(CameraModel(lens_mm=50, sensor_width_mm=36, resolution_x=1920,
                                                      resolution_y=1080))
    assert (intr.w, intr.h) == (1920, 1080)
    assert intr.fl_x == pytest.approx(50 / 36 * 1920) and intr.fl_y == pytest.approx(intr.fl_x)
    assert (intr.cx, intr.cy) == (960.0, 540.0)
    assert intr.camera_angle_x == pytest.approx(2 * math.atan(18 / 50))


def test_percentage_rounds_down_like_blender():
    intr = cameras.intrinsics_from_camera(CameraModel(resolution_x=101, resolution_y=77, resolution_percentage=50))
    assert (intr.w, intr.h) == (50, 38)


def test_auto_fit_uses_the_sensor_width_on_the_long_side():
    portrait = cameras.intrinsics_from_camera(CameraModel(lens_mm=50, sensor_width_mm=36, sensor_height_mm=24,
                                                          resolution_x=480, resolution_y=640))
    assert portrait.fl_y == pytest.approx(50 / 36 * 640)   # AUTO: sensor *width* along the vertical
    vertical = cameras.intrinsics_from_camera(CameraModel(lens_mm=50, sensor_width_mm=36, sensor_height_mm=24,
                                                          sensor_fit="VERTICAL", resolution_x=480, resolution_y=640))
    assert vertical.fl_y == pytest.approx(50 / 24 * 640)   # explicit VERTICAL: sensor height


def test_pixel_aspect_and_shift():
    intr = cameras.intrinsics_from_camera(CameraModel(lens_mm=50, sensor_width_mm=36, resolution_x=640,
                                                      resolution_y=480, pixel_aspect_x=2.0, shift_x=0.1, shift_y=0.2))
    assert intr.fl_y == pytest.approx(2 * intr.fl_x)       # wide pixels: fewer pixels per radian across
    assert intr.cx == pytest.approx(320 - 0.1 * 640)
    assert intr.cy == pytest.approx(240 + 0.2 * 640 * 2)


@pytest.mark.parametrize("lens, fit, shift, aspect, resolution", GRID)
def test_intrinsics_round_trip_through_a_camera_model(lens, fit, shift, aspect, resolution):
    intr = cameras.intrinsics_from_camera(model_of(lens, fit, shift, aspect, resolution))
    model = cameras.camera_from_intrinsics(intr)
    assert model.lens_mm >= 1 and model.sensor_width_mm >= 1 and model.sensor_height_mm >= 1
    assert min(model.pixel_aspect_x, model.pixel_aspect_y) == 1.0
    assert model.resolution_percentage == 100 and model.sensor_fit in ("HORIZONTAL", "VERTICAL")
    back = cameras.intrinsics_from_camera(model)
    assert back.isclose(intr, 1e-6), (intr, back)


def test_camera_from_intrinsics_handles_odd_cameras():
    for intr in (Intrinsics(10.0, 10.0, 50.0, 40.0, 100, 80),            # 157 degrees: lens below 1 mm at 36
                 Intrinsics(800.0, 800.0, 320.0, 240.0, 640, 480),
                 Intrinsics(700.0, 900.0, 300.0, 260.0, 640, 480),        # non-square pixels, off centre
                 Intrinsics(1000.0, 500.0, 100.0, 700.0, 200, 800)):
        model = cameras.camera_from_intrinsics(intr)
        assert model.lens_mm >= 1
        assert cameras.intrinsics_from_camera(model).isclose(intr, 1e-9)
    with pytest.raises(CameraError, match="pixel aspect"):
        cameras.camera_from_intrinsics(Intrinsics(1.0, 500.0, 50.0, 50.0, 100, 100))
    with pytest.raises(CameraError, match="positive"):
        cameras.camera_from_intrinsics(Intrinsics(0.0, 500.0, 50.0, 50.0, 100, 100))
    with pytest.raises(CameraError, match="not finite"):
        cameras.camera_from_intrinsics(Intrinsics(float("nan"), 500.0, 50.0, 50.0, 100, 100))


def test_opengl_opencv_flip():
    c2w = random_pose(np.random.default_rng(1))
    cv = cameras.opengl_to_opencv(c2w)
    np.testing.assert_array_equal(cv[:, 0], c2w[:, 0])
    np.testing.assert_array_equal(cv[:, 1:3], -c2w[:, 1:3])
    np.testing.assert_array_equal(cameras.opencv_to_opengl(cv), c2w)


def test_camera_matrices_are_checked():
    good = random_pose(np.random.default_rng(2))
    assert cameras.validate_camera_matrix("Cam", good.tolist()).dtype == np.float64
    nan = good.copy()
    nan[1, 3] = np.nan
    with pytest.raises(CameraError, match="Camera 'Cam.001'.*NaN"):
        cameras.validate_camera_matrix("Cam.001", nan)
    scaled = good.copy()
    scaled[:3, :3] *= 1.5
    with pytest.raises(CameraError, match="Camera 'Big' is scaled"):
        cameras.validate_camera_matrix("Big", scaled)
    sheared = good.copy()
    sheared[:3, 1] += 0.2 * sheared[:3, 0]
    with pytest.raises(CameraError, match="Camera 'Shear'"):
        cameras.validate_camera_matrix("Shear", sheared)
    mirrored = good @ np.diag([-1.0, 1.0, 1.0, 1.0])
    with pytest.raises(CameraError, match="mirrored"):
        cameras.validate_camera_matrix("Mirror", mirrored)
    with pytest.raises(CameraError, match="4x4"):
        cameras.validate_camera_matrix("Small", np.eye(3))
    cameras.check_camera_type("Cam", "PERSP")
    with pytest.raises(CameraError, match="Camera 'Iso' is orthographic"):
        cameras.check_camera_type("Iso", "ORTHO")
    with pytest.raises(CameraError, match="panoramic"):
        cameras.check_camera_type("Pano", "PANO")


# --------------------------------------------------------------------------- transforms.json


def tiny_png(path: Path, w: int, h: int) -> None:
    """A valid w x h grey PNG written with the stdlib."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\x00" + b"\x80" * w for _ in range(h))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_write_read_round_trip_shared_intrinsics(tmp_path):
    rng = np.random.default_rng(3)
    intr = cameras.intrinsics_from_camera(model_of(35.0, "AUTO", (0.05, -0.1), (1.0, 1.0), (640, 480, 100)))
    frames = [Frame(file_path=f"images/{i:03d}.png", c2w=random_pose(rng), intrinsics=intr,
                    extra={"time": i / 10}) for i in range(5)]
    path = datasets.write_transforms(tmp_path / "data" / "transforms.json", frames,
                                     extra={"aabb_scale": 4, "scale": 0.5, "offset": [0.5, 0.5, 0.5]})
    data = json.loads(path.read_text())
    # The three flavours' top-level keys.
    assert data["camera_angle_x"] == pytest.approx(2 * math.atan(320 / intr.fl_x))
    for key in ("fl_x", "fl_y", "cx", "cy"):
        assert data[key] == getattr(intr, key)
    assert (data["w"], data["h"], data["camera_model"]) == (640, 480, "OPENCV")
    assert data["frames"][0]["file_path"] == "images/000.png"
    assert "fl_x" not in data["frames"][0]
    assert [p.name for p in path.parent.iterdir()] == ["transforms.json"]   # no temporary left over

    dataset = datasets.read_dataset(path)
    assert dataset.meta == {"aabb_scale": 4, "scale": 0.5, "offset": [0.5, 0.5, 0.5]}
    assert len(dataset.frames) == 5
    for written, read in zip(frames, dataset.frames):
        assert read.file_path == (tmp_path / "data" / written.file_path)
        assert read.name == written.file_path
        assert read.c2w.dtype == np.float64 and read.c2w.shape == (4, 4)
        np.testing.assert_array_equal(read.c2w, written.c2w)
        assert read.intrinsics == intr and read.extra == written.extra


def test_write_read_round_trip_per_frame_intrinsics(tmp_path):
    rng = np.random.default_rng(4)
    frames = []
    for i, (lens, aspect) in enumerate([(20.0, (1.0, 1.0)), (50.0, (2.0, 1.0)), (85.0, (1.0, 1.5))]):
        intr = cameras.intrinsics_from_camera(model_of(lens, "AUTO", (0.1 * i, 0.0), aspect, (320 + i, 240, 100)))
        frames.append(Frame(file_path=tmp_path / f"img{i}.png", c2w=random_pose(rng), intrinsics=intr,
                            distortion={"k1": 0.01 * i} if i else {}))
    path = datasets.write_transforms(tmp_path / "transforms.json", frames)
    data = json.loads(path.read_text())
    assert "fl_x" not in data and "camera_angle_x" not in data
    assert data["frames"][1]["file_path"] == "img1.png" and data["frames"][1]["k1"] == 0.01
    read = datasets.read_transforms(path)
    for written, back in zip(frames, read):
        assert back.intrinsics == written.intrinsics
        assert back.distortion == {key: v for key, v in written.distortion.items() if v}
        np.testing.assert_array_equal(back.c2w, written.c2w)


def test_nerf_synthetic_flavour_takes_the_size_from_the_images(tmp_path):
    tiny_png(tmp_path / "train" / "r_0.png", 40, 30)
    (tmp_path / "transforms.json").write_text(json.dumps({"camera_angle_x": 0.7, "frames": [
        {"file_path": "./train/r_0", "rotation": 0.1, "transform_matrix": np.eye(4).tolist()}]}))
    [frame] = datasets.read_transforms(tmp_path / "transforms.json")
    assert frame.file_path == tmp_path / "train" / "r_0.png" and frame.name == "./train/r_0"
    assert (frame.intrinsics.w, frame.intrinsics.h) == (40, 30)
    assert frame.intrinsics.fl_x == frame.intrinsics.fl_y == pytest.approx(20 / math.tan(0.35))
    assert (frame.intrinsics.cx, frame.intrinsics.cy) == (20.0, 15.0)


def test_missing_image_without_size_says_what_to_do(tmp_path):
    (tmp_path / "transforms.json").write_text(json.dumps({"camera_angle_x": 0.7, "frames": [
        {"file_path": "./train/r_9", "transform_matrix": np.eye(4).tolist()}]}))
    with pytest.raises(DatasetError, match=r"frame 0 \('./train/r_9'\).*give w and h"):
        datasets.read_transforms(tmp_path / "transforms.json")


def test_instant_ngp_and_nerfstudio_flavours(tmp_path):
    ngp = {"fl_x": 500.0, "cx": 300.0, "cy": 200.0, "w": 640, "h": 480, "k1": 0.1, "k2": -0.01, "p1": 0.001,
           "p2": 0.002, "aabb_scale": 16, "scale": 0.33, "offset": [0.5, 0.5, 0.5],
           "frames": [{"file_path": "images/a.jpg", "sharpness": 30.5, "transform_matrix": np.eye(4).tolist()}]}
    (tmp_path / "ngp.json").write_text(json.dumps(ngp))
    dataset = datasets.read_dataset(tmp_path / "ngp.json")
    [frame] = dataset.frames
    assert frame.intrinsics == Intrinsics(500.0, 500.0, 300.0, 200.0, 640, 480)   # fl_y defaults to fl_x
    assert frame.distortion == {"k1": 0.1, "k2": -0.01, "p1": 0.001, "p2": 0.002}
    assert dataset.meta == {"aabb_scale": 16, "scale": 0.33, "offset": [0.5, 0.5, 0.5]}
    assert frame.extra == {"sharpness": 30.5}

    studio = {"camera_model": "OPENCV", "fl_x": 500.0, "fl_y": 510.0, "cx": 320.0, "cy": 240.0, "w": 640,
              "h": 480, "frames": [
                  {"file_path": "images/frame_00001.png", "transform_matrix": np.eye(4).tolist()},
                  {"file_path": "images/frame_00002.png", "transform_matrix": np.eye(4).tolist(),
                   "fl_x": 700.0, "w": 800, "k1": 0.2}]}
    (tmp_path / "studio.json").write_text(json.dumps(studio))
    first, second = datasets.read_transforms(tmp_path / "studio.json")
    assert first.intrinsics == Intrinsics(500.0, 510.0, 320.0, 240.0, 640, 480)
    assert second.intrinsics == Intrinsics(700.0, 510.0, 320.0, 240.0, 800, 480)
    assert second.distortion == {"k1": 0.2} and first.distortion == {}


@pytest.mark.parametrize("bad, message", [
    ("../outside.png", "outside the dataset folder"),
    ("images/../../outside.png", "outside the dataset folder"),
    ("/etc/passwd", "is absolute"),
    ("C:\\images\\a.png", "is absolute"),
    ("..", "outside the dataset folder"),
])
def test_paths_that_escape_the_dataset_are_refused(tmp_path, bad, message):
    (tmp_path / "transforms.json").write_text(json.dumps({"fl_x": 100.0, "w": 10, "h": 10, "frames": [
        {"file_path": "ok/a.png", "transform_matrix": np.eye(4).tolist()},
        {"file_path": bad, "transform_matrix": np.eye(4).tolist()}]}))
    with pytest.raises(DatasetError, match=f"frame 1 .*{message}"):
        datasets.read_transforms(tmp_path / "transforms.json")
    with pytest.raises(DatasetError, match="outside the dataset folder|is absolute"):
        datasets.write_transforms(tmp_path / "out.json", [Frame(bad, np.eye(4), Intrinsics(1, 1, 1, 1, 2, 2))])


def test_inner_dot_dot_is_fine(tmp_path):
    (tmp_path / "transforms.json").write_text(json.dumps({"fl_x": 100.0, "w": 10, "h": 10, "frames": [
        {"file_path": "a/../b/c.png", "transform_matrix": np.eye(4).tolist()}]}))
    [frame] = datasets.read_transforms(tmp_path / "transforms.json")
    assert frame.file_path == tmp_path / "b" / "c.png"


def test_bad_frames_are_named(tmp_path):
    def read(frames, **top):
        (tmp_path / "t.json").write_text(json.dumps({"fl_x": 100.0, "w": 10, "h": 10, **top, "frames": frames}))
        return datasets.read_transforms(tmp_path / "t.json")

    eye = np.eye(4).tolist()
    nan = np.eye(4)
    nan[0, 3] = np.nan
    text = json.dumps({"fl_x": 100.0, "w": 10, "h": 10, "frames": [
        {"file_path": "a.png", "transform_matrix": eye}, {"file_path": "b.png", "transform_matrix": nan.tolist()}]})
    assert "NaN" in text  # Python's json writes NaN; other tools do too
    (tmp_path / "nan.json").write_text(text)
    with pytest.raises(DatasetError, match=r"frame 1 \('b.png'\): transform_matrix has NaN"):
        datasets.read_transforms(tmp_path / "nan.json")
    with pytest.raises(DatasetError, match=r"frame 0: missing 'transform_matrix'"):
        read([{"file_path": "a.png"}])
    with pytest.raises(DatasetError, match=r"frame 0: missing 'file_path'"):
        read([{"transform_matrix": eye}])
    with pytest.raises(DatasetError, match=r"frame 0 \('a.png'\): transform_matrix is \(2, 2\)"):
        read([{"file_path": "a.png", "transform_matrix": [[1, 0], [0, 1]]}])
    (tmp_path / "nofocal.json").write_text(json.dumps({"w": 10, "h": 10, "frames": [
        {"file_path": "a.png", "transform_matrix": eye}]}))
    with pytest.raises(DatasetError, match=r"frame 0 \('a.png'\): no focal length"):
        datasets.read_transforms(tmp_path / "nofocal.json")
    with pytest.raises(DatasetError, match="no 'frames'"):
        read([])
    with pytest.raises(DatasetError, match="not valid JSON"):
        (tmp_path / "broken.json").write_text("{")
        datasets.read_transforms(tmp_path / "broken.json")
    with pytest.raises(DatasetError, match=r"frame 0 \('a.png'\): w must be a positive"):
        read([{"file_path": "a.png", "transform_matrix": eye}], w=-3)
    with pytest.raises(DatasetError, match="c2w has NaN"):
        datasets.write_transforms(tmp_path / "out.json", [Frame("a.png", nan, Intrinsics(1, 1, 1, 1, 2, 2))])
    assert not (tmp_path / "out.json").exists()


@pytest.mark.skipif(not LEGO_TRAIN.exists(), reason=f"the shared lego data is absent ({LEGO_TRAIN})")
def test_lego_reads_with_the_nerf_synthetic_focal_length():
    raw = json.loads(LEGO_TRAIN.read_text())
    frames = datasets.read_transforms(LEGO_TRAIN)
    assert len(frames) == len(raw["frames"]) == 100
    focal = 0.5 * 400 / math.tan(0.5 * raw["camera_angle_x"])
    for frame, item in zip(frames, raw["frames"]):
        assert (frame.intrinsics.w, frame.intrinsics.h) == (400, 400)
        assert frame.intrinsics.fl_x == pytest.approx(focal, rel=1e-12)
        assert frame.intrinsics.fl_y == pytest.approx(focal, rel=1e-12)
        assert (frame.intrinsics.cx, frame.intrinsics.cy) == (200.0, 200.0)
        assert frame.file_path.is_file() and frame.file_path.suffix == ".png"
        np.testing.assert_array_equal(frame.c2w, np.array(item["transform_matrix"]))
        cameras.validate_camera_matrix(frame.name, frame.c2w)   # NeRF-synthetic cameras are rigid
    # Blender can hold every lego camera: the intrinsics survive a round trip through a camera model.
    model = cameras.camera_from_intrinsics(frames[0].intrinsics)
    assert cameras.intrinsics_from_camera(model).isclose(frames[0].intrinsics, 1e-9)


def test_other_images_take_their_size_from_pillow(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    Image.new("RGB", (24, 16)).save(tmp_path / "a.jpg")
    (tmp_path / "transforms.json").write_text(json.dumps({"camera_angle_x": 1.0, "camera_angle_y": 0.8, "frames": [
        {"file_path": "a.jpg", "transform_matrix": np.eye(4).tolist()}]}))
    [frame] = datasets.read_transforms(tmp_path / "transforms.json")
    assert (frame.intrinsics.w, frame.intrinsics.h) == (24, 16)
    assert frame.intrinsics.fl_y == pytest.approx(8 / math.tan(0.4))
