"""COLMAP text models, seen from the add-on (no bpy): ``cameras.txt`` + ``images.txt`` -> Dataset.

``read_colmap(folder)`` looks for the model in ``folder``, ``folder/sparse/0`` or
``folder/sparse`` (the first holding ``cameras.txt``), and for each image in
``folder/images/NAME`` then ``folder/NAME`` (both confined to ``folder``).

Conventions (COLMAP's documentation, "Output Format" and "Camera Models"):

- ``cameras.txt``: ``CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]`` with the parameters
  SIMPLE_PINHOLE ``f cx cy``, PINHOLE ``fx fy cx cy``, SIMPLE_RADIAL ``f cx cy k``,
  RADIAL ``f cx cy k1 k2``, OPENCV ``fx fy cx cy k1 k2 p1 p2``. Distortion is kept in
  ``Frame.distortion`` (k1 k2 p1 p2, OpenCV model), not applied.
- Pixel coordinates: COLMAP puts the image origin at the upper-left image corner, with the
  centre of the upper-left pixel at (0.5, 0.5), x right and y down. That is exactly the
  convention of ``cameras.Intrinsics`` (pixel ``i`` covers ``[i, i+1)``, so a symmetric image
  has ``cx = w/2``): COLMAP's cx, cy are used unchanged.
- ``images.txt``: two lines per image, ``IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME`` then
  the 2D points (possibly an empty line). ``(q, t)`` is the world-to-camera transform in the
  OpenCV camera axes (x right, y down, z forward): ``x_cam = R(q) x_world + t`` with ``R(q)``
  the rotation of the Hamilton quaternion ``qw + qx i + qy j + qz k`` (Eigen's convention).
  So the camera centre is ``C = -R^T t``, the OpenCV camera-to-world is ``[[R^T, C], [0, 1]]``,
  and ``cameras.opencv_to_opengl`` gives the OpenGL / Blender ``matrix_world``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from ._backend import cameras, datasets

Intrinsics, opencv_to_opengl = cameras.Intrinsics, cameras.opencv_to_opengl
Dataset, DatasetError, Frame, confined_path = datasets.Dataset, datasets.DatasetError, datasets.Frame, datasets.confined_path

# model name -> (number of params, names of the params)
CAMERA_MODELS: dict[str, tuple[str, ...]] = {
    "SIMPLE_PINHOLE": ("f", "cx", "cy"),
    "PINHOLE": ("fx", "fy", "cx", "cy"),
    "SIMPLE_RADIAL": ("f", "cx", "cy", "k1"),
    "RADIAL": ("f", "cx", "cy", "k1", "k2"),
    "OPENCV": ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2"),
}
MODEL_DIRS = (".", "sparse/0", "sparse")
# a quaternion whose length is within this of 1 is normalized; further off, it is refused
QUATERNION_TOLERANCE = 1e-2


class _Camera:
    __slots__ = ("intrinsics", "distortion", "model")

    def __init__(self, intrinsics: Intrinsics, distortion: dict[str, float], model: str):
        self.intrinsics = intrinsics
        self.distortion = distortion
        self.model = model


def _lines(path: Path):
    """(line number, stripped text) of every line, comments included; DatasetError if unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"COLMAP model: {path} is missing (export the model as text: "
                           "File > Export model as text in COLMAP)") from None
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path} is not a text file ({exc}); binary models (.bin) are not read: "
                           "export the model as text") from None
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), start=1)]


def _float(token: str, what: str, where: str) -> float:
    try:
        value = float(token)
    except ValueError:
        raise DatasetError(f"{where}: {what} is not a number: {token!r}") from None
    if not math.isfinite(value):
        raise DatasetError(f"{where}: {what} is {token!r} (NaN or infinite)")
    return value


def _int(token: str, what: str, where: str) -> int:
    try:
        return int(token)
    except ValueError:
        raise DatasetError(f"{where}: {what} must be a whole number, got {token!r}") from None


def quaternion_to_matrix(qw: float, qx: float, qy: float, qz: float) -> np.ndarray:
    """The 3x3 rotation of a unit Hamilton quaternion (w first, as COLMAP and Eigen write it)."""
    return np.array([
        [1 - 2 * (qy * qy + qz * qz), 2 * (qx * qy - qw * qz), 2 * (qx * qz + qw * qy)],
        [2 * (qx * qy + qw * qz), 1 - 2 * (qx * qx + qz * qz), 2 * (qy * qz - qw * qx)],
        [2 * (qx * qz - qw * qy), 2 * (qy * qz + qw * qx), 1 - 2 * (qx * qx + qy * qy)],
    ], dtype=np.float64)


def read_cameras_txt(path: Path) -> dict[int, _Camera]:
    cameras: dict[int, _Camera] = {}
    for number, line in _lines(path):
        if not line or line.startswith("#"):
            continue
        where = f"{path.name}, line {number}"
        tokens = line.split()
        if len(tokens) < 4:
            raise DatasetError(f"{where}: expected CAMERA_ID MODEL WIDTH HEIGHT PARAMS..., got {line!r}")
        camera_id = _int(tokens[0], "CAMERA_ID", where)
        model = tokens[1].upper()
        if model not in CAMERA_MODELS:
            raise DatasetError(f"{where}: camera model {tokens[1]!r} is not supported (supported: "
                               f"{', '.join(CAMERA_MODELS)}); undistort the images in COLMAP "
                               "(image_undistorter) to get PINHOLE cameras")
        w = _int(tokens[2], "WIDTH", where)
        h = _int(tokens[3], "HEIGHT", where)
        if w <= 0 or h <= 0:
            raise DatasetError(f"{where}: the image size must be positive, got {w}x{h}")
        names = CAMERA_MODELS[model]
        params = tokens[4:]
        if len(params) != len(names):
            raise DatasetError(f"{where}: a {model} camera has {len(names)} parameters "
                               f"({' '.join(names)}), got {len(params)}")
        values = {name: _float(token, name, where) for name, token in zip(names, params)}
        fl_x = values.get("fx", values.get("f"))
        fl_y = values.get("fy", values.get("f"))
        if not (fl_x > 0 and fl_y > 0):
            raise DatasetError(f"{where}: focal lengths must be positive, got {fl_x}, {fl_y}")
        if camera_id in cameras:
            raise DatasetError(f"{where}: camera {camera_id} is defined twice")
        distortion = {key: values[key] for key in ("k1", "k2", "p1", "p2") if key in values}
        cameras[camera_id] = _Camera(Intrinsics(fl_x=fl_x, fl_y=fl_y, cx=values["cx"], cy=values["cy"], w=w, h=h),
                                     distortion, model)
    if not cameras:
        raise DatasetError(f"{path}: no cameras")
    return cameras


def _pose(tokens: list[str], where: str) -> np.ndarray:
    """The OpenGL camera-to-world of an images.txt line's QW QX QY QZ TX TY TZ."""
    q = np.array([_float(t, name, where) for t, name in zip(tokens[1:5], ("QW", "QX", "QY", "QZ"))])
    t = np.array([_float(t, name, where) for t, name in zip(tokens[5:8], ("TX", "TY", "TZ"))])
    norm = float(np.linalg.norm(q))
    if abs(norm - 1.0) > QUATERNION_TOLERANCE:
        raise DatasetError(f"{where}: the quaternion (QW QX QY QZ) has length {norm:.6g}, expected 1"
                           + (" (it is zero)" if norm == 0.0 else ""))
    rotation = quaternion_to_matrix(*(q / norm))  # world -> camera, OpenCV axes
    c2w = np.eye(4)
    c2w[:3, :3] = rotation.T
    c2w[:3, 3] = -rotation.T @ t
    return opencv_to_opengl(c2w)


def _find_image(root: Path, name: str, where: str, require_images: bool) -> Path:
    candidates = [confined_path(root, f"images/{name}", where), confined_path(root, name, where)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    if require_images:
        raise DatasetError(f"{where}: image {name!r} not found (looked for {candidates[0]} and {candidates[1]})")
    return candidates[0]


def read_images_txt(path: Path, cameras: dict[int, _Camera], root: Path, *,
                    require_images: bool = True) -> list[Frame]:
    frames: list[Frame] = []
    lines = _lines(path)
    index = 0
    while index < len(lines):
        number, line = lines[index]
        index += 1
        if not line or line.startswith("#"):
            continue
        where = f"{path.name}, line {number}"
        tokens = line.split(maxsplit=9)
        if len(tokens) < 10:
            raise DatasetError(f"{where}: expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME, got {line!r}")
        image_id = _int(tokens[0], "IMAGE_ID", where)
        c2w = _pose(tokens, where)
        camera_id = _int(tokens[8], "CAMERA_ID", where)
        if camera_id not in cameras:
            known = ", ".join(str(key) for key in sorted(cameras))
            raise DatasetError(f"{where}: camera {camera_id} is not in cameras.txt (it has {known})")
        name = tokens[9].strip()
        camera = cameras[camera_id]
        frames.append(Frame(file_path=_find_image(root, name, where, require_images), c2w=c2w,
                            intrinsics=Intrinsics(**vars(camera.intrinsics)), distortion=dict(camera.distortion),
                            camera_model="OPENCV", name=name,
                            extra={"colmap_image_id": image_id, "colmap_camera_id": camera_id}))
        index += 1  # the 2D points line (possibly empty) that follows every image line
    if not frames:
        raise DatasetError(f"{path}: no images")
    return frames


def find_model(folder: str | os.PathLike) -> Path:
    """The folder holding cameras.txt: ``folder``, ``folder/sparse/0`` or ``folder/sparse``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"COLMAP folder {folder} does not exist")
    for sub in MODEL_DIRS:
        if (folder / sub / "cameras.txt").is_file():
            return (folder / sub).absolute()
    raise DatasetError(f"no COLMAP text model in {folder}: cameras.txt is missing (looked in "
                       f"{', '.join(str(folder / sub) for sub in MODEL_DIRS)}); export the model as text")


def read_colmap(folder: str | os.PathLike, *, require_images: bool = True) -> Dataset:
    """The cameras of a COLMAP text model as a Dataset rooted at ``folder``.

    Frames come in images.txt order, each with its camera's intrinsics and distortion,
    ``camera_model`` "OPENCV", ``name`` = COLMAP's image NAME and ``extra`` holding
    ``colmap_image_id`` and ``colmap_camera_id``. With ``require_images`` False a missing
    image is not an error (its file_path is ``folder/images/NAME``).
    """
    root = Path(folder).absolute()
    model = find_model(root)
    cameras = read_cameras_txt(model / "cameras.txt")
    images = model / "images.txt"
    frames = read_images_txt(images, cameras, root, require_images=require_images)
    return Dataset(root=root, frames=frames, meta={})
