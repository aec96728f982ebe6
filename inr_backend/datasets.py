"""transforms.json datasets, seen from the add-on (no bpy): read and write cameras + image paths.

One reader for the three common flavours, one writer whose output all three load:

- NeRF-synthetic: top-level ``camera_angle_x`` only; the image size comes from the image
  files (file paths without an extension mean ``.png``, as the original loaders assume).
- instant-ngp: ``fl_x fl_y cx cy w h`` (or ``camera_angle_x/_y``), distortion ``k1 k2 p1 p2``
  (+ ``k3 k4``), ``aabb_scale``, ``scale``, ``offset``; per-frame intrinsics allowed.
- nerfstudio: ``fl_x fl_y cx cy w h camera_model k1..`` top level, any of them overridable
  per frame.

``frames[].transform_matrix`` is the 4x4 OpenGL camera-to-world (x right, y up, looking down
-z), which is exactly a Blender camera's ``matrix_world``. Frames keep it as written: the
instant-ngp ``scale`` and ``offset`` (instant-ngp maps a camera position ``p`` to
``p * scale + offset`` inside its own unit cube, default 0.33 and (0.5, 0.5, 0.5), and cycles
the axes) describe instant-ngp's internal box, not the scene, so they are kept in
``Dataset.meta`` untouched and written back as they were; nerfstudio ignores them too.

Intrinsics use the convention of ``cameras.Intrinsics``: pixels, image y down, pixel ``i``
covering ``[i, i+1)``, so a symmetric image has ``cx = w/2``.

Every ``file_path`` must stay inside the dataset's folder: absolute paths and ``..`` that
climb out are refused (``DatasetError``), so a downloaded dataset cannot point the add-on at
arbitrary files.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Iterable

import numpy as np

from .cameras import Intrinsics

INTRINSIC_KEYS = ("camera_angle_x", "camera_angle_y", "fl_x", "fl_y", "cx", "cy", "w", "h")
DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")
FRAME_KEYS = ("file_path", "transform_matrix") + INTRINSIC_KEYS + DISTORTION_KEYS + ("camera_model",)
DEFAULT_CAMERA_MODEL = "OPENCV"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".exr")
MAX_IMAGE_SIDE = 65536          # Blender's limit on an image side, far above any camera's
MAX_NAME_BYTES = 255            # a longer file name cannot exist on common file systems


class DatasetError(ValueError):
    """A transforms.json that cannot be used; the text names the file (and frame) and says why."""


@dataclass
class Frame:
    """One camera of a dataset.

    ``file_path``: when read, the image's absolute path (inside the dataset folder; with
    ``.png`` etc. added when the JSON gives none, as NeRF-synthetic does), ``name`` being the
    string as written; when
    written, a path relative to the dataset folder (written as given) or an absolute path
    inside it. ``c2w``: 4x4 float64 OpenGL camera-to-world (= Blender ``matrix_world``).
    ``distortion``: any of k1 k2 k3 k4 p1 p2 (OpenCV model), kept, not applied.
    ``extra``: other per-frame keys (``rotation``, ``time``, ...), kept and written back.
    """

    file_path: Path | str
    c2w: np.ndarray
    intrinsics: Intrinsics | None = None
    distortion: dict[str, float] = field(default_factory=dict)
    camera_model: str = DEFAULT_CAMERA_MODEL
    name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Dataset:
    """A read transforms.json: its folder, its frames, and its other top-level keys (``meta``:
    aabb_scale, scale, offset, applied_transform, ... exactly as written)."""

    root: Path
    frames: list[Frame]
    meta: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- paths


def confined_path(root: Path, file_path: str, where: str = "") -> Path:
    """``root / file_path`` normalized, or DatasetError if it is absolute or climbs out of root.

    Symbolic links are checked separately, on the file itself (``check_inside``), since the
    name alone cannot tell where a link points.
    """
    label = f"{where}: " if where else ""
    if not isinstance(file_path, str) or not file_path.strip():
        raise DatasetError(f"{label}file_path must be a non-empty string, got {file_path!r:.100}")
    if any(ord(ch) < 32 for ch in file_path):
        raise DatasetError(f"{label}file_path {file_path!r:.100} holds control characters (NUL, newline, ...): "
                           "give the image's plain relative path")
    parts = file_path.replace("\\", "/").split("/")
    if any(len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES for part in parts):
        raise DatasetError(f"{label}file_path {file_path[:60]!r}... has a name longer than {MAX_NAME_BYTES} bytes, "
                           "which no file can have")
    if (PurePosixPath(file_path).is_absolute() or PureWindowsPath(file_path).is_absolute()
            or PureWindowsPath(file_path).drive):
        raise DatasetError(f"{label}file_path {file_path!r} is absolute; a dataset's images must be given "
                           f"relative to its folder ({root})")
    normal = os.path.normpath(file_path.replace("\\", "/"))
    if normal == ".." or normal.startswith("../") or normal.startswith("/"):
        raise DatasetError(f"{label}file_path {file_path!r} points outside the dataset folder ({root}); "
                           "keep the images inside it")
    return Path(root).absolute() / normal


def check_inside(root: Path, path: Path, where: str = "") -> Path:
    """``path`` if it stays inside ``root`` once symbolic links are followed, else DatasetError.

    A dataset from elsewhere could hold ``images/0001.png -> /home/you/secret.png``; the name
    passes ``confined_path``, the link does not pass this.
    """
    label = f"{where}: " if where else ""
    try:
        real_root, real = Path(root).resolve(), Path(path).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise DatasetError(f"{label}cannot resolve {path} ({exc})") from None
    if real != real_root and real_root not in real.parents:
        raise DatasetError(f"{label}{Path(path).name} is a link to {real}, outside the dataset folder ({root}); "
                           "copy the image into the dataset instead of linking to it")
    return path


def image_path(path: Path) -> Path:
    """The image file a file_path names: as is, or with .png (etc.) added when it has no extension."""
    try:
        if path.exists() or path.suffix.lower() in IMAGE_SUFFIXES:
            return path
        for suffix in IMAGE_SUFFIXES:
            candidate = path.with_name(path.name + suffix)
            if candidate.exists():
                return candidate
    except OSError:  # a name the file system cannot hold: reported when the image is read
        return path
    return path.with_name(path.name + ".png")


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image from its header: PNG, JPEG and OpenEXR directly (Blender's
    Python has no Pillow), anything else through Pillow if present. DatasetError when the file
    is missing or its header is not one of these."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(24)
            if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
                size = struct.unpack(">II", head[16:24])
            elif head[:3] == b"\xff\xd8\xff":
                handle.seek(2)
                size = _jpeg_size(handle)
            elif head[:4] == b"\x76\x2f\x31\x01":
                handle.seek(8)
                size = _exr_size(handle)
            else:
                size = None
    except OSError as exc:
        raise DatasetError(f"cannot read image {path} to learn its size ({exc.strerror or exc}); "
                           "give w and h in transforms.json or add the image") from None
    except (struct.error, ValueError, EOFError):
        raise DatasetError(f"image {path} is corrupt or truncated (its header cannot be read): "
                           "export it again") from None
    if size is not None:
        if not (0 < size[0] <= MAX_IMAGE_SIDE and 0 < size[1] <= MAX_IMAGE_SIDE):
            raise DatasetError(f"image {path} says it is {size[0]}x{size[1]} pixels: the file is corrupt")
        return int(size[0]), int(size[1])
    try:
        from PIL import Image
    except ImportError:
        raise DatasetError(f"{path} is not a PNG, JPEG or OpenEXR image and Pillow is not installed, so its "
                           "size is unknown: give w and h in transforms.json (or convert it to PNG)") from None
    try:
        with Image.open(path) as image:
            return image.size
    except Exception as exc:  # noqa: BLE001 - Pillow raises many kinds
        raise DatasetError(f"cannot read the size of {path} (is it an image? {exc}): "
                           "convert it to PNG or JPEG") from None


def _read_exactly(handle, count: int) -> bytes:
    data = handle.read(count)
    if len(data) != count:
        raise EOFError
    return data


def _jpeg_size(handle) -> tuple[int, int]:
    """(w, h) from a JPEG's start-of-frame marker; ``handle`` is just past the SOI marker."""
    while True:
        marker = _read_exactly(handle, 2)
        while marker[0] == 0xFF and marker[1] == 0xFF:      # fill bytes
            marker = marker[1:] + _read_exactly(handle, 1)
        if marker[0] != 0xFF:
            raise ValueError("not a JPEG marker")
        kind = marker[1]
        if kind in (0xD8, 0x01) or 0xD0 <= kind <= 0xD7:     # markers without a length
            continue
        if kind == 0xD9:
            raise ValueError("no frame header before the end of the image")
        length = struct.unpack(">H", _read_exactly(handle, 2))[0]
        if length < 2:
            raise ValueError("bad segment length")
        if 0xC0 <= kind <= 0xCF and kind not in (0xC4, 0xC8, 0xCC):   # SOF0..SOF15
            _precision, height, width = struct.unpack(">BHH", _read_exactly(handle, 5))
            return width, height
        handle.seek(length - 2, 1)


def _exr_size(handle) -> tuple[int, int]:
    """(w, h) from an OpenEXR header's dataWindow; ``handle`` is just past magic and version."""
    def cstring() -> bytes:
        out = b""
        while len(out) < 256:
            byte = _read_exactly(handle, 1)
            if byte == b"\0":
                return out
            out += byte
        raise ValueError("attribute name too long")

    while True:
        name = cstring()
        if not name:
            raise ValueError("no dataWindow attribute")
        cstring()
        size = struct.unpack("<i", _read_exactly(handle, 4))[0]
        if size < 0:
            raise ValueError("bad attribute size")
        value = _read_exactly(handle, size)
        if name == b"dataWindow" and size == 16:
            x_min, y_min, x_max, y_max = struct.unpack("<4i", value)
            return x_max - x_min + 1, y_max - y_min + 1


# --------------------------------------------------------------------------- reading


def _number(value: Any, key: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DatasetError(f"{where}: {key} must be a number, got {value!r:.100}")
    try:
        value = float(value)
    except OverflowError:  # an integer beyond float range
        value = math.inf
    if not math.isfinite(value):
        raise DatasetError(f"{where}: {key} is {value}: give a finite number")
    return value


def _size(value: Any, key: str, where: str) -> int:
    number = _number(value, key, where)
    if number <= 0 or number != int(number):
        raise DatasetError(f"{where}: {key} must be a positive whole number of pixels, got {value!r:.100}")
    if number > MAX_IMAGE_SIDE:
        raise DatasetError(f"{where}: {key} is {value!r:.100} pixels, more than any image can have "
                           f"(at most {MAX_IMAGE_SIDE})")
    return int(number)


def _focal_from_angle(values: dict[str, Any], key: str, size: int, where: str) -> float:
    """The focal length in pixels for a field of view ``values[key]`` (radians) across ``size`` pixels."""
    angle = _number(values[key], key, where)
    if not 0.0 < angle < math.pi:
        raise DatasetError(f"{where}: {key} is {angle:g} radians; a field of view must lie strictly between "
                           "0 and pi (180 degrees)")
    return 0.5 * size / math.tan(0.5 * angle)


def _matrix(value: Any, where: str) -> np.ndarray:
    try:
        matrix = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: transform_matrix is not a matrix of numbers") from None
    if matrix.shape == (3, 4):
        matrix = np.vstack([matrix, [0.0, 0.0, 0.0, 1.0]])
    if matrix.shape != (4, 4):
        raise DatasetError(f"{where}: transform_matrix is {matrix.shape}, expected 4x4")
    if not np.all(np.isfinite(matrix)):
        raise DatasetError(f"{where}: transform_matrix has NaN or infinite values")
    if np.max(np.abs(matrix[3] - (0.0, 0.0, 0.0, 1.0))) > 1e-6:
        raise DatasetError(f"{where}: transform_matrix's last row is {matrix[3].tolist()}, expected [0, 0, 0, 1] "
                           "(a camera-to-world matrix)")
    with np.errstate(over="ignore", invalid="ignore"):   # entries near 1e308 overflow: refused below
        axes = np.linalg.norm(matrix[:3, :3], axis=0)
        det = float(np.linalg.det(matrix[:3, :3]))
        usable = bool(np.all(axes > 1e-12) and np.all(np.isfinite(axes)) and math.isfinite(det)
                      and abs(det) > 1e-9 * float(np.prod(axes)))
    if not usable:
        raise DatasetError(f"{where}: transform_matrix's rotation is degenerate (an axis of length 0, or axes "
                           "in one plane): it is not a camera pose")
    return matrix


def _intrinsics(values: dict[str, Any], path: Path, where: str) -> Intrinsics:
    if "w" in values and "h" in values:
        w, h = _size(values["w"], "w", where), _size(values["h"], "h", where)
    else:
        try:
            w, h = image_size(image_path(path))
        except DatasetError as exc:
            raise DatasetError(f"{where}: {exc}") from None
        if "w" in values:
            w = _size(values["w"], "w", where)
        if "h" in values:
            h = _size(values["h"], "h", where)
    if "fl_x" in values:
        fl_x = _number(values["fl_x"], "fl_x", where)
    elif "camera_angle_x" in values:
        fl_x = _focal_from_angle(values, "camera_angle_x", w, where)
    else:
        raise DatasetError(f"{where}: no focal length (needs fl_x or camera_angle_x, at the top level or in the frame)")
    if "fl_y" in values:
        fl_y = _number(values["fl_y"], "fl_y", where)
    elif "camera_angle_y" in values:
        fl_y = _focal_from_angle(values, "camera_angle_y", h, where)
    else:
        fl_y = fl_x
    if not (fl_x > 0 and fl_y > 0 and math.isfinite(fl_x) and math.isfinite(fl_y)):
        raise DatasetError(f"{where}: focal lengths must be positive, got fl_x={fl_x}, fl_y={fl_y}")
    cx = _number(values["cx"], "cx", where) if "cx" in values else 0.5 * w
    cy = _number(values["cy"], "cy", where) if "cy" in values else 0.5 * h
    return Intrinsics(fl_x=fl_x, fl_y=fl_y, cx=cx, cy=cy, w=w, h=h)


def read_dataset(path: str | os.PathLike) -> Dataset:
    """Read a transforms.json of any of the three flavours; DatasetError says what is wrong."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, RecursionError) as exc:
        # JSONDecodeError and UnicodeDecodeError are ValueErrors, and so is an integer of
        # more than 4300 digits; RecursionError: arrays nested thousands deep.
        detail = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise DatasetError(f"{path} is not valid JSON: {detail}") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object with 'frames'")
    frames_data = data.get("frames")
    if not isinstance(frames_data, list) or not frames_data:
        raise DatasetError(f"{path}: no 'frames' list (or it is empty)")
    root = path.absolute().parent
    top = {key: data[key] for key in INTRINSIC_KEYS + DISTORTION_KEYS + ("camera_model",) if key in data}
    meta = {key: value for key, value in data.items() if key not in top and key != "frames"}

    frames = []
    for index, item in enumerate(frames_data):
        where = f"{path.name}, frame {index}"
        if not isinstance(item, dict):
            raise DatasetError(f"{where}: expected an object, got {type(item).__name__}")
        for key in ("file_path", "transform_matrix"):
            if key not in item:
                raise DatasetError(f"{where}: missing '{key}'")
        name = item["file_path"]
        where = f"{path.name}, frame {index} ({name!r:.100})"
        file_path = check_inside(root, image_path(confined_path(root, name, where)), where)
        c2w = _matrix(item["transform_matrix"], where)
        values = {**top, **{key: item[key] for key in INTRINSIC_KEYS + DISTORTION_KEYS + ("camera_model",)
                            if key in item}}
        intrinsics = _intrinsics(values, file_path, where)
        distortion = {key: _number(values[key], key, where) for key in DISTORTION_KEYS if key in values}
        camera_model = values.get("camera_model", DEFAULT_CAMERA_MODEL)
        if not isinstance(camera_model, str):
            raise DatasetError(f"{where}: camera_model must be a name such as OPENCV, got {camera_model!r:.100}")
        extra = {key: value for key, value in item.items() if key not in FRAME_KEYS}
        frames.append(Frame(file_path=file_path, c2w=c2w, intrinsics=intrinsics, distortion=distortion,
                            camera_model=camera_model, name=name, extra=extra))
    return Dataset(root=root, frames=frames, meta=meta)


def read_transforms(path: str | os.PathLike) -> list[Frame]:
    """The frames of a transforms.json (see ``read_dataset`` for its other keys)."""
    return read_dataset(path).frames


# --------------------------------------------------------------------------- writing


def _intrinsics_dict(intr: Intrinsics, with_angles: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if with_angles:
        out["camera_angle_x"] = intr.camera_angle_x
        out["camera_angle_y"] = intr.camera_angle_y
    out.update(fl_x=float(intr.fl_x), fl_y=float(intr.fl_y), cx=float(intr.cx), cy=float(intr.cy),
               w=int(intr.w), h=int(intr.h))
    return out


def _relative_name(root: Path, file_path: Path | str, where: str) -> str:
    if isinstance(file_path, Path) and file_path.is_absolute() or (
            isinstance(file_path, str) and os.path.isabs(file_path)):
        try:
            relative = Path(os.path.normpath(file_path)).relative_to(root.absolute())
        except ValueError:
            raise DatasetError(f"{where}: {file_path} is outside the dataset folder ({root})") from None
        return relative.as_posix()
    name = file_path.as_posix() if isinstance(file_path, Path) else str(file_path)
    confined_path(root, name, where)
    return name


def write_transforms(path: str | os.PathLike, frames: Iterable[Frame], *,
                     shared_intrinsics: Intrinsics | None = None,
                     extra: dict[str, Any] | None = None) -> Path:
    """Write a transforms.json that NeRF-synthetic, instant-ngp and nerfstudio loaders all read.

    Intrinsics go to the top level (with camera_angle_x/_y for NeRF-synthetic loaders) when
    ``shared_intrinsics`` is given or every frame has the same ones, else into each frame
    (instant-ngp and nerfstudio read those). Distortion likewise. ``extra`` adds top-level
    keys (aabb_scale, scale, offset, ...). Written to a temporary file and renamed, so a
    reader never sees half a file. Returns the path.
    """
    path = Path(path)
    root = path.absolute().parent
    frames = list(frames)
    if not frames:
        raise DatasetError(f"{path.name}: no frames to write")
    intrinsics = [frame.intrinsics for frame in frames]
    if shared_intrinsics is not None:
        for index, (frame, intr) in enumerate(zip(frames, intrinsics)):
            if intr is not None and not intr.isclose(shared_intrinsics, 1e-9):
                raise DatasetError(f"frame {index} ({frame.file_path}): its intrinsics differ from the shared ones")
        shared = shared_intrinsics
    else:
        for index, (frame, intr) in enumerate(zip(frames, intrinsics)):
            if intr is None:
                raise DatasetError(f"frame {index} ({frame.file_path}): no intrinsics (and none shared)")
        shared = intrinsics[0] if all(intr == intrinsics[0] for intr in intrinsics) else None
    distortions = [{key: float(value) for key, value in frame.distortion.items() if value} for frame in frames]
    shared_distortion = distortions[0] if all(d == distortions[0] for d in distortions) else None
    models = [frame.camera_model for frame in frames]
    shared_model = models[0] if all(m == models[0] for m in models) else None

    data: dict[str, Any] = {}
    if shared is not None:
        data.update(_intrinsics_dict(shared, with_angles=True))
    if shared_model is not None:
        data["camera_model"] = shared_model
    if shared_distortion:
        data.update(shared_distortion)
    if extra:
        data.update(extra)
    out_frames = []
    for index, frame in enumerate(frames):
        where = f"frame {index} ({frame.file_path})"
        c2w = np.asarray(frame.c2w, dtype=np.float64)
        if c2w.shape != (4, 4):
            raise DatasetError(f"{where}: c2w is {c2w.shape}, expected 4x4")
        if not np.all(np.isfinite(c2w)):
            raise DatasetError(f"{where}: c2w has NaN or infinite values")
        item: dict[str, Any] = {"file_path": _relative_name(root, frame.file_path, where),
                                "transform_matrix": c2w.tolist()}
        if shared is None:
            item.update(_intrinsics_dict(frame.intrinsics, with_angles=False))
        if shared_model is None:
            item["camera_model"] = frame.camera_model
        if shared_distortion is None:
            item.update(distortions[index])
        for key, value in frame.extra.items():
            item.setdefault(key, value)
        out_frames.append(item)
    data["frames"] = out_frames

    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    root.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=root)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    return path


# --------------------------------------------------------------------------- normalization


def _camera_to_world(frame: Any) -> np.ndarray:
    c2w = np.asarray(frame.c2w if hasattr(frame, "c2w") else frame, dtype=np.float64)
    if c2w.shape != (4, 4) or not np.all(np.isfinite(c2w)):
        raise DatasetError(f"a camera's transform is not a finite 4x4 matrix (shape {c2w.shape})")
    return c2w


def normalization_for_cameras(frames: Iterable[Any], *, roi_min=None, roi_max=None,
                              padding: float = 0.1) -> dict[str, Any]:
    """The world -> unit box similarity (``protocol.make_normalization``) for a dataset.

    ``frames``: Frames (or 4x4 OpenGL camera-to-world matrices).

    With a region of interest (``roi_min``, ``roi_max``: the world bounding box of the
    selected objects) the box's centre goes to the origin and its longest side to
    ``2 * (1 - padding)``, so the box lands inside ``[-(1 - padding), 1 - padding]^3``.

    Without one it is estimated from the cameras: the centre is the point closest to all
    optical axes (least squares over the lines through each camera centre along its -z
    axis), which is the point an orbit of cameras looks at; when the axes are (nearly)
    parallel, as for a single camera, that point is undefined and the mean of the camera
    centres is used instead. The scale puts the farthest camera centre at radius
    ``1 - padding``, so every camera lies inside the unit sphere and the object, which the
    cameras surround, is well inside the unit box.
    """
    from . import protocol

    if not 0.0 <= padding < 1.0:
        raise DatasetError(f"padding must be in [0, 1), got {padding}")
    if (roi_min is None) != (roi_max is None):
        raise DatasetError("give both roi_min and roi_max, or neither")
    if roi_min is not None:
        low = np.asarray(roi_min, dtype=np.float64).reshape(-1)
        high = np.asarray(roi_max, dtype=np.float64).reshape(-1)
        if low.shape != (3,) or high.shape != (3,) or not np.all(np.isfinite(low)) or not np.all(np.isfinite(high)):
            raise DatasetError(f"the region of interest must be two finite 3D points, got {roi_min}, {roi_max}")
        if np.any(high < low):
            raise DatasetError(f"the region of interest is inverted: min {low.tolist()} > max {high.tolist()}")
        extent = float(np.max(high - low))
        if not extent > 0:
            raise DatasetError("the region of interest is a single point: select objects with some size")
        return protocol.make_normalization(((low + high) / 2).tolist(), 2.0 * (1.0 - padding) / extent)

    matrices = [_camera_to_world(frame) for frame in frames]
    if not matrices:
        raise DatasetError("no cameras to estimate the region of interest from")
    centres = np.array([m[:3, 3] for m in matrices])
    directions = np.array([-m[:3, 2] for m in matrices])
    directions /= np.maximum(np.linalg.norm(directions, axis=1, keepdims=True), 1e-300)
    # sum over cameras of (I - d d^T) (p - c) = 0  ->  A p = b
    projectors = np.eye(3)[None] - directions[:, :, None] * directions[:, None, :]
    a = projectors.sum(axis=0)
    b = np.einsum("nij,nj->i", projectors, centres)
    eigen = np.linalg.eigvalsh(a)
    if eigen[0] > 1e-6 * len(matrices):
        centre = np.linalg.solve(a, b)
    else:
        centre = centres.mean(axis=0)
    radius = float(np.max(np.linalg.norm(centres - centre, axis=1)))
    if not radius > 1e-12:
        raise DatasetError("cannot size the region of interest from cameras that all sit at one point: "
                           "select the objects to reconstruct")
    return protocol.make_normalization(centre.tolist(), (1.0 - padding) / radius)


def write_normalization(path: str | os.PathLike, normalization: dict[str, Any]) -> Path:
    """Write normalization.json atomically (a reader sees the old file or the new one). Returns the path."""
    from . import protocol

    path = Path(path)
    protocol.write_json_atomic(path, normalization)
    return path
