"""COLMAP text models -> Dataset (blender_addon.colmap), and instant-ngp transforms.json reading,
each checked against an independent computation (no Blender)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from blender_addon import colmap
from inr_backend import datasets
from inr_backend.cameras import Intrinsics
from inr_backend.datasets import DatasetError

FLIP = np.diag([1.0, -1.0, -1.0, 1.0])


def random_blender_cameras(rng, n):
    """OpenGL camera-to-world matrices (Blender matrix_world) with random rotations and positions."""
    out = []
    for rotation in Rotation.random(n, random_state=rng):
        c2w = np.eye(4)
        c2w[:3, :3] = rotation.as_matrix()
        c2w[:3, 3] = rng.uniform(-5, 5, 3)
        out.append(c2w)
    return out


def colmap_pose(c2w_gl, rng):
    """Independent writer: (qw qx qy qz, t) world-to-camera in OpenCV axes, via scipy."""
    c2w_cv = c2w_gl @ FLIP
    r_wc = c2w_cv[:3, :3].T
    t = -r_wc @ c2w_cv[:3, 3]
    x, y, z, w = Rotation.from_matrix(r_wc).as_quat()
    q = np.array([w, x, y, z])
    if rng.random() < 0.5:  # q and -q are the same rotation
        q = -q
    return q, t


def project_gl(c2w_gl, intr, points):
    """Pixels of world points through an OpenGL camera (looking down -z, y up; image y down)."""
    w2c = np.linalg.inv(c2w_gl)
    cam = (w2c[:3, :3] @ points.T).T + w2c[:3, 3]
    depth = -cam[:, 2]
    return np.stack([intr.fl_x * cam[:, 0] / depth + intr.cx, intr.fl_y * -cam[:, 1] / depth + intr.cy], axis=1)


def project_colmap(q, t, intr, points):
    """Pixels the way COLMAP computes them: x_cam = R(q) X + t, u = fx x/z + cx, v = fy y/z + cy."""
    rotation = Rotation.from_quat([q[1], q[2], q[3], q[0]]).as_matrix()
    cam = (rotation @ points.T).T + t
    return np.stack([intr.fl_x * cam[:, 0] / cam[:, 2] + intr.cx, intr.fl_y * cam[:, 1] / cam[:, 2] + intr.cy], axis=1)


CAMERAS = {
    1: ("PINHOLE", Intrinsics(fl_x=800.5, fl_y=790.25, cx=320.0, cy=240.0, w=640, h=480), {}),
    7: ("OPENCV", Intrinsics(fl_x=1200.0, fl_y=1210.0, cx=955.3, cy=541.7, w=1920, h=1080),
        {"k1": -0.12, "k2": 0.03, "p1": 0.001, "p2": -0.0005}),
}


def write_model(folder: Path, poses, *, model_dir="sparse/0", image_dir="images", cameras_text=None,
                images_text=None):
    """cameras.txt + images.txt as COLMAP writes them (comments, blank 2D-point lines)."""
    model = folder / model_dir
    model.mkdir(parents=True, exist_ok=True)
    if cameras_text is None:
        lines = ["# Camera list with one line of data per camera:",
                 "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]", f"# Number of cameras: {len(CAMERAS)}"]
        for camera_id, (model_name, intr, dist) in CAMERAS.items():
            params = [intr.fl_x, intr.fl_y, intr.cx, intr.cy] + [dist[k] for k in ("k1", "k2", "p1", "p2") if k in dist]
            lines.append(f"{camera_id} {model_name} {intr.w} {intr.h} " + " ".join(repr(float(p)) for p in params))
        cameras_text = "\n".join(lines) + "\n"
    (model / "cameras.txt").write_text(cameras_text)
    if images_text is None:
        lines = ["# Image list with two lines of data per image:",
                 "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
                 "#   POINTS2D[] as (X, Y, POINT3D_ID)"]
        for index, (q, t, camera_id, name) in enumerate(poses):
            lines.append(f"{index + 1} " + " ".join(repr(float(v)) for v in (*q, *t)) + f" {camera_id} {name}")
            lines.append("" if index % 2 == 0 else "12.5 30.25 -1 100.0 200.0 5")
        images_text = "\n".join(lines) + "\n"
    (model / "images.txt").write_text(images_text)
    for _, _, _, name in poses:
        image = folder / image_dir / name
        image.parent.mkdir(parents=True, exist_ok=True)
        image.write_bytes(b"")
    return model


def make_scene(tmp_path, n=8, seed=3, **kwargs):
    rng = np.random.default_rng(seed)
    originals = random_blender_cameras(rng, n)
    poses = []
    for index, c2w in enumerate(originals):
        q, t = colmap_pose(c2w, rng)
        poses.append((q, t, 1 if index % 2 == 0 else 7, f"frame_{index:03d}.jpg"))
    write_model(tmp_path, poses, **kwargs)
    return originals, poses


@pytest.mark.parametrize("layout", [dict(model_dir="sparse/0", image_dir="images"),
                                    dict(model_dir=".", image_dir="."),
                                    dict(model_dir="sparse", image_dir="images")])
def test_round_trip_from_blender_cameras(tmp_path, layout):
    originals, poses = make_scene(tmp_path, **layout)
    dataset = colmap.read_colmap(tmp_path)
    assert dataset.root == tmp_path.absolute()
    assert len(dataset.frames) == len(originals)
    rng = np.random.default_rng(11)
    for frame, c2w, (q, t, camera_id, name) in zip(dataset.frames, originals, poses):
        model_name, intr, dist = CAMERAS[camera_id]
        assert frame.name == name
        assert Path(frame.file_path).samefile(tmp_path / layout["image_dir"] / name)
        np.testing.assert_allclose(frame.c2w, c2w, atol=1e-9, rtol=0)
        assert frame.intrinsics == intr
        assert frame.distortion == dist
        assert frame.extra["colmap_camera_id"] == camera_id
        # points in front of the camera: through the original, the read and COLMAP's own projection
        cam_points = np.stack([rng.uniform(-1, 1, 50), rng.uniform(-1, 1, 50), -rng.uniform(1, 10, 50)], axis=1)
        world = (c2w[:3, :3] @ cam_points.T).T + c2w[:3, 3]
        expected = project_gl(c2w, intr, world)
        np.testing.assert_allclose(project_gl(frame.c2w, frame.intrinsics, world), expected, atol=1e-6, rtol=0)
        np.testing.assert_allclose(project_colmap(q, t, intr, world), expected, atol=1e-6, rtol=0)


def test_dataset_writes_as_transforms_json(tmp_path):
    originals, _ = make_scene(tmp_path, n=4)
    dataset = colmap.read_colmap(tmp_path)
    out = datasets.write_transforms(tmp_path / "transforms.json", dataset.frames)
    again = datasets.read_dataset(out)
    for a, b in zip(dataset.frames, again.frames):
        np.testing.assert_allclose(a.c2w, b.c2w, atol=1e-12)
        assert a.intrinsics.isclose(b.intrinsics, 1e-12)
        assert {k: v for k, v in a.distortion.items() if v} == b.distortion
        assert Path(a.file_path).samefile(b.file_path)


@pytest.mark.parametrize("line, intr, dist", [
    ("SIMPLE_PINHOLE 100 50 500 25 26", Intrinsics(500, 500, 25, 26, 100, 50), {}),
    ("SIMPLE_RADIAL 100 50 500 25 26 0.1", Intrinsics(500, 500, 25, 26, 100, 50), {"k1": 0.1}),
    ("RADIAL 100 50 500 25 26 0.1 -0.2", Intrinsics(500, 500, 25, 26, 100, 50), {"k1": 0.1, "k2": -0.2}),
    ("PINHOLE 100 50 500 510 25 26", Intrinsics(500, 510, 25, 26, 100, 50), {}),
    ("OPENCV 100 50 500 510 25 26 0.1 0.2 0.3 0.4", Intrinsics(500, 510, 25, 26, 100, 50),
     {"k1": 0.1, "k2": 0.2, "p1": 0.3, "p2": 0.4}),
])
def test_camera_models(tmp_path, line, intr, dist):
    write_model(tmp_path, [((1, 0, 0, 0), (0, 0, 0), 3, "a.png")], cameras_text=f"3 {line}\n")
    frame = colmap.read_colmap(tmp_path).frames[0]
    assert frame.intrinsics == intr
    assert frame.distortion == dist
    # identity world-to-camera (OpenCV) is the OpenGL camera at the origin with y, z flipped
    np.testing.assert_allclose(frame.c2w, FLIP, atol=0)


def test_nearly_unit_quaternion_is_normalized(tmp_path):
    rng = np.random.default_rng(5)
    c2w = random_blender_cameras(rng, 1)[0]
    q, t = colmap_pose(c2w, rng)
    write_model(tmp_path, [(q * 1.004, t, 1, "a.png")])
    np.testing.assert_allclose(colmap.read_colmap(tmp_path).frames[0].c2w, c2w, atol=1e-9)


def test_image_name_with_spaces_and_missing_images(tmp_path):
    write_model(tmp_path, [((1, 0, 0, 0), (0, 0, 0), 1, "my photo 1.png")])
    assert colmap.read_colmap(tmp_path).frames[0].name == "my photo 1.png"
    (tmp_path / "images" / "my photo 1.png").unlink()
    with pytest.raises(DatasetError, match=r"images\.txt, line 4: image 'my photo 1.png' not found"):
        colmap.read_colmap(tmp_path)
    frame = colmap.read_colmap(tmp_path, require_images=False).frames[0]
    assert frame.file_path == tmp_path.absolute() / "images" / "my photo 1.png"


GOOD_CAMERA = "1 PINHOLE 640 480 800 800 320 240\n"
GOOD_IMAGE = "1 1 0 0 0 0 0 0 1 a.png\n\n"


@pytest.mark.parametrize("cameras_text, images_text, pattern", [
    ("1 FISHEYE_X 640 480 1 2 3\n", GOOD_IMAGE, r"cameras\.txt, line 1: camera model 'FISHEYE_X' is not supported"),
    ("# c\n1 PINHOLE 640 480 800 abc 320 240\n", GOOD_IMAGE, r"cameras\.txt, line 2: fy is not a number: 'abc'"),
    ("1 PINHOLE 640 480 800 nan 320 240\n", GOOD_IMAGE, r"cameras\.txt, line 1: fy is 'nan'"),
    ("1 PINHOLE 640 480 800 800 320\n", GOOD_IMAGE, r"cameras\.txt, line 1: a PINHOLE camera has 4 parameters"),
    ("1 PINHOLE 640 x 800 800 320 240\n", GOOD_IMAGE, r"cameras\.txt, line 1: HEIGHT must be a whole number"),
    ("1 PINHOLE 0 480 800 800 320 240\n", GOOD_IMAGE, r"cameras\.txt, line 1: the image size must be positive"),
    ("1 PINHOLE 640 480 -800 800 320 240\n", GOOD_IMAGE, r"cameras\.txt, line 1: focal lengths must be positive"),
    (GOOD_CAMERA + GOOD_CAMERA, GOOD_IMAGE, r"cameras\.txt, line 2: camera 1 is defined twice"),
    ("# nothing\n", GOOD_IMAGE, r"cameras\.txt: no cameras"),
    (GOOD_CAMERA, "# x\n1 1 0 0 0 0 0 0 2 a.png\n\n", r"images\.txt, line 2: camera 2 is not in cameras\.txt \(it has 1\)"),
    (GOOD_CAMERA, "1 1 0 0 0 0 0 zz 1 a.png\n\n", r"images\.txt, line 1: TZ is not a number: 'zz'"),
    (GOOD_CAMERA, "1 1 0 0 nan 0 0 0 1 a.png\n\n", r"images\.txt, line 1: QZ is 'nan'"),
    (GOOD_CAMERA, "1 0 0 0 0 0 0 0 1 a.png\n\n", r"images\.txt, line 1: the quaternion .* has length 0.*zero"),
    (GOOD_CAMERA, "1 2 0 0 0 0 0 0 1 a.png\n\n", r"images\.txt, line 1: the quaternion .* has length 2, expected 1"),
    (GOOD_CAMERA, "1 1 0 0 0 0 0 0 1\n\n", r"images\.txt, line 1: expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME"),
    (GOOD_CAMERA, "1 1 0 0 0 0 0 0 1 ../../etc/passwd\n\n", r"images\.txt, line 1: .*outside the dataset folder"),
    (GOOD_CAMERA, "# only comments\n", r"images\.txt: no images"),
])
def test_bad_input(tmp_path, cameras_text, images_text, pattern):
    write_model(tmp_path, [((1, 0, 0, 0), (0, 0, 0), 1, "a.png")], cameras_text=cameras_text, images_text=images_text)
    with pytest.raises(DatasetError, match=pattern):
        colmap.read_colmap(tmp_path)


def test_missing_files(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        colmap.read_colmap(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match=r"no COLMAP text model in .*cameras\.txt is missing"):
        colmap.read_colmap(tmp_path)
    write_model(tmp_path, [((1, 0, 0, 0), (0, 0, 0), 1, "a.png")])
    (tmp_path / "sparse" / "0" / "images.txt").unlink()
    with pytest.raises(DatasetError, match=r"images\.txt is missing"):
        colmap.read_colmap(tmp_path)


# --------------------------------------------------------------------------- instant-ngp transforms.json


def test_instant_ngp_transforms(tmp_path):
    rng = np.random.default_rng(8)
    originals = random_blender_cameras(rng, 5)
    top = dict(fl_x=1111.5, fl_y=1100.25, cx=401.5, cy=299.0, w=800, h=600,
               k1=-0.05, k2=0.01, p1=0.002, p2=-0.001, aabb_scale=16, scale=0.33, offset=[0.5, 0.5, 0.5])
    frames = [{"file_path": f"images/{i:04d}.png", "transform_matrix": c2w.tolist(), "sharpness": 30.0 + i}
              for i, c2w in enumerate(originals)]
    # one frame with its own field of view (NeRF-synthetic style) and size
    frames[2].update(camera_angle_x=0.9, w=400, h=300)
    path = tmp_path / "transforms.json"
    path.write_text(json.dumps({**top, "frames": frames}))
    dataset = datasets.read_dataset(path)
    assert dataset.meta == {"aabb_scale": 16, "scale": 0.33, "offset": [0.5, 0.5, 0.5]}
    for i, (frame, c2w) in enumerate(zip(dataset.frames, originals)):
        np.testing.assert_array_equal(frame.c2w, c2w)  # kept as written: scale/offset are instant-ngp's own box
        assert frame.distortion == {"k1": -0.05, "k2": 0.01, "p1": 0.002, "p2": -0.001}
        assert frame.extra == {"sharpness": 30.0 + i}
        assert frame.file_path == tmp_path.absolute() / "images" / f"{i:04d}.png"
        if i == 2:
            # frame keys override the top level: but fl_x at the top level still wins over the
            # frame's camera_angle_x, as in instant-ngp (fl_x is read first)
            assert frame.intrinsics == Intrinsics(1111.5, 1100.25, 401.5, 299.0, 400, 300)
        else:
            assert frame.intrinsics == Intrinsics(1111.5, 1100.25, 401.5, 299.0, 800, 600)


def test_nerf_synthetic_focal_from_angle(tmp_path):
    rng = np.random.default_rng(9)
    originals = random_blender_cameras(rng, 3)
    angle = 0.6911112070083618
    frames = [{"file_path": f"./train/r_{i}", "transform_matrix": c2w.tolist()} for i, c2w in enumerate(originals)]
    path = tmp_path / "transforms.json"
    path.write_text(json.dumps({"camera_angle_x": angle, "w": 800, "h": 800, "frames": frames}))
    dataset = datasets.read_dataset(path)
    focal = 0.5 * 800 / math.tan(0.5 * angle)  # the NeRF loaders' formula
    for frame, c2w in zip(dataset.frames, originals):
        np.testing.assert_array_equal(frame.c2w, c2w)
        assert frame.intrinsics.fl_x == pytest.approx(focal, rel=1e-12)
        assert frame.intrinsics.fl_y == pytest.approx(focal, rel=1e-12)
        assert (frame.intrinsics.cx, frame.intrinsics.cy) == (400.0, 400.0)
        assert frame.file_path.suffix == ".png"
