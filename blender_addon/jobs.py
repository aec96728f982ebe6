"""Job folders, seen from the add-on (no bpy): check the input, write a job, read its result.

Mesh jobs (task ``sdf`` or ``occupancy``): a triangulated mesh in, a mesh out. Image jobs
(task ``image``): an image's pixels in, an image sampled from the trained field out, and
``resample`` runs of the backend on a finished image job (no retraining).

A job is written into a hidden temporary folder beside its final place and renamed when
complete, so the backend (or a person browsing the jobs folder) never sees half a job.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import struct
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ._backend import plyio, protocol

MESH_INPUT = f"{protocol.INPUTS_DIR}/mesh.ply"
MESH_OUTPUT = f"{protocol.OUTPUTS_DIR}/mesh.ply"

PRESETS = ("fast", "balanced", "quality")
NETWORKS = ("hashgrid", "frequency", "siren", "relu", "fourier")
DEVICES = ("auto", "cpu", "cuda")
MESH_TASKS = ("sdf", "occupancy")
TASK_LABELS = {"sdf": "Neural SDF", "occupancy": "Neural occupancy field", "image": "Neural image"}


class InputError(ValueError):
    """The mesh cannot be converted; the text says why and what to do."""


class JobError(RuntimeError):
    """A job did not produce a usable result; the text says why."""


# No room: the disk is full (ENOSPC), a quota (EDQUOT), or a file-size limit (EFBIG: ulimit -f,
# a FAT32 disk's 4 GB). Each means the same to an artist: make room or write elsewhere.
DISK_FULL_ERRNOS = tuple(getattr(errno, name) for name in ("ENOSPC", "EDQUOT", "EFBIG") if hasattr(errno, name))


class DiskFullError(OSError):
    """A job folder could not be written for lack of room; nothing of it is left behind.

    An OSError (callers that catch OSError still do), whose text reads on its own and after the
    add-on's "Cannot write the job folder under <folder>: "."""

    def __init__(self, cause: OSError, folder: Path, *, leftover: bool = False):
        super().__init__(cause.errno, cause.strerror or str(cause), str(folder))
        reason = cause.strerror or str(cause)
        kept = (f"; the partial folder {folder} could not be removed: delete it by hand" if leftover
                else ", so nothing was written")
        self.message = f"the disk is full or a file is too large ({reason}){kept}: free some space on that disk"

    def __str__(self) -> str:
        return self.message


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


# --------------------------------------------------------------------------- input checks


def validate_mesh(vertices: np.ndarray, faces: np.ndarray, name: str = "the mesh") -> None:
    """Raise InputError for a mesh the backend cannot learn a surface from.

    The triangle count is checked first, so a 5M-triangle sculpt is refused in milliseconds
    before anything per-triangle runs; below the limit the area is summed in blocks, so the
    check itself never needs more than a few tens of MB.
    """
    vertices = np.asarray(vertices).reshape(-1, 3)
    faces = np.asarray(faces).reshape(-1, 3)
    if len(vertices) == 0 or len(faces) == 0:
        raise InputError(f"'{name}' has no faces: a neural field needs a surface. Add faces (or remove the "
                         f"modifiers that delete them) and try again.")
    if len(faces) > protocol.MAX_MESH_FACES:
        ratio = int(protocol.MAX_MESH_FACES / len(faces) * 100) / 100
        raise InputError(f"'{name}' has {len(faces):,} triangles (modifiers applied), more than the "
                         f"{protocol.MAX_MESH_FACES:,} a neural field is trained from: add a Decimate modifier "
                         f"(Collapse, ratio {ratio:.2f} or less) or lower its Subdivision levels, then try again.")
    finite = np.isfinite(vertices).all(axis=1)
    if not finite.all():
        raise InputError(f"'{name}' has {int((~finite).sum()):,} of {len(vertices):,} vertices with non-finite "
                         f"coordinates (NaN or infinity), usually from a modifier, a Geometry Nodes setup or an "
                         f"import that divided by zero: fix or remove them (check the modifier stack, or "
                         f"re-import the file), then try again.")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise InputError(f"'{name}' has faces that point at missing vertices: the mesh data is corrupt. "
                         f"Run Mesh > Clean Up in Edit Mode, or re-import it.")
    vertices = vertices.astype(np.float64, copy=False)
    diagonal = float(np.linalg.norm(vertices.max(axis=0) - vertices.min(axis=0)))
    area = 0.0
    for start in range(0, len(faces), 1 << 18):
        block = faces[start:start + (1 << 18)]
        a, b, c = vertices[block[:, 0]], vertices[block[:, 1]], vertices[block[:, 2]]
        area += 0.5 * float(np.linalg.norm(np.cross(b - a, c - a), axis=1).sum())
    if diagonal <= 0.0 or area <= 1e-10 * diagonal * diagonal:
        raise InputError(f"'{name}' has zero surface area (all its vertices are coincident or on one line): "
                         f"there is no surface to learn. Check its scale and modifiers.")


# --------------------------------------------------------------------------- writing a job


def slugify(text: str, max_length: int = 40) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")
    return (slug or "object")[:max_length]


def new_job_name(object_name: str, now: float | None = None) -> str:
    """``20250101-120000-Suzanne-1a2b3c``: sortable by time, readable, unique."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(time.time() if now is None else now))
    return f"{stamp}-{slugify(object_name)}-{uuid.uuid4().hex[:6]}"


def make_config(*, preset: str = "fast", network: str = "hashgrid", resolution: int = 256, device: str = "auto",
                seed: int = 0, max_steps: int | None = None) -> dict[str, Any]:
    """The job.json config the add-on sets (the backend resolves everything else)."""
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if network not in NETWORKS:
        raise InputError(f"unknown network {network!r}; choose one of {', '.join(NETWORKS)}")
    if device not in DEVICES:
        raise InputError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    config: dict[str, Any] = {"preset": preset, "network": network, "resolution": int(resolution),
                              "device": device, "seed": int(seed)}
    if max_steps:
        config["max_steps"] = int(max_steps)
    return config


def _write_job_atomically(jobs_root: str | os.PathLike, name: str, write) -> Path:
    """Make ``jobs_root/.name.partial``, let ``write(folder)`` fill it, rename it to ``jobs_root/name``.

    On any failure the partial folder is removed; a full disk (or a file-size limit) raises
    DiskFullError, whose text says so and what to do."""
    jobs_root = Path(jobs_root)
    final = jobs_root / name
    temporary = jobs_root / f".{name}.partial"
    try:
        jobs_root.mkdir(parents=True, exist_ok=True)
        if final.exists():
            raise FileExistsError(f"job folder already exists: {final}")
        temporary.mkdir()
    except OSError as exc:
        if is_disk_full(exc):
            raise DiskFullError(exc, temporary) from exc
        raise
    try:
        write(temporary)
        os.rename(temporary, final)
    except BaseException as exc:
        shutil.rmtree(temporary, ignore_errors=True)
        if isinstance(exc, OSError) and is_disk_full(exc):
            raise DiskFullError(exc, temporary, leftover=temporary.exists()) from exc
        raise
    return final


def create_job(jobs_root: str | os.PathLike, vertices: np.ndarray, faces: np.ndarray, *, config: dict[str, Any],
               source: dict[str, Any] | None = None, name: str | None = None, task: str = "sdf") -> Path:
    """Write a complete mesh job folder (task ``sdf`` or ``occupancy``) under ``jobs_root``; return its path.

    vertices/faces: the triangulated mesh in the object's local coordinates.
    """
    if task not in MESH_TASKS:
        raise InputError(f"unknown representation {task!r}; choose one of {', '.join(MESH_TASKS)}")
    source = dict(source or {})

    def write(folder: Path) -> None:
        plyio.write_ply(folder / MESH_INPUT, vertices, faces)
        job = protocol.make_job(task, inputs={"mesh": MESH_INPUT}, config=config,
                                outputs={"mesh": MESH_OUTPUT}, source=source)
        protocol.write_job(folder, job)

    return _write_job_atomically(jobs_root, name or new_job_name(str(source.get("object", "mesh"))), write)


# --------------------------------------------------------------------------- reading a result


def read_status(job_dir: str | os.PathLike) -> dict[str, Any] | None:
    """result.json, or None while the job has not finished (or never wrote one)."""
    try:
        return protocol.read_result(job_dir)
    except protocol.ProtocolError:
        return None


def result_message(result: dict[str, Any]) -> str:
    """The reason a failed job gives in result.json, whatever field it uses."""
    for key in ("error", "message", "reason"):
        value = result.get(key)
        if isinstance(value, dict):
            value = value.get("message")
        if value:
            return str(value)
    return ""


def import_result(job_dir: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(vertices (V,3) float32, faces (F,3) int32, result.json) of a finished job.

    The mesh is in the coordinates of the input mesh (the source object's local space).
    Raises JobError with a message for a person when the job did not finish well.
    """
    job_dir = Path(job_dir)
    try:
        result = protocol.read_result(job_dir)
    except protocol.ProtocolError as exc:
        raise JobError(f"The job has no valid result ({exc}). Job folder: {job_dir}") from None
    status = result["status"]
    if status != "done":
        reason = result_message(result)
        text = "The job was cancelled." if status == "cancelled" else "The job failed."
        raise JobError(f"{text}{' ' + reason if reason else ''} Job folder: {job_dir}")
    relative = MESH_OUTPUT
    outputs = result.get("outputs")
    if isinstance(outputs, dict) and isinstance(outputs.get("mesh"), str):
        relative = outputs["mesh"]
    try:
        mesh_path = protocol.resolve_inside(job_dir, relative)
        vertices, faces, _colors = plyio.read_ply(mesh_path)
    except (protocol.ProtocolError, plyio.PlyError) as exc:
        raise JobError(f"The job finished but its mesh cannot be read: {exc}") from None
    if len(faces) == 0:
        raise JobError(f"The job finished but its mesh is empty (no surface was found). Job folder: {job_dir}")
    if not np.all(np.isfinite(vertices)):
        raise JobError(f"The job's mesh has non-finite vertex coordinates. Job folder: {job_dir}")
    return vertices, faces, result


# --------------------------------------------------------------------------- image jobs

IMAGE_NETWORKS = ("relu", "fourier", "siren", "hashgrid")
IMAGE_FORMATS = {"png": "png", "exr": "exr"}       # input extension -> what the backend writes back
MIN_IMAGE_SIDE = 2
MAX_IMAGE_SIDE = 65536                              # Blender's own limit on an image side
MAX_OUTPUT_PIXELS = 1 << 28                         # 16384 x 16384: beyond that, ask for a smaller size
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".exr", ".tif", ".tiff", ".bmp", ".tga", ".hdr", ".webp")


def image_input_path(extension: str) -> str:
    if extension not in IMAGE_FORMATS:
        raise InputError(f"unknown image input format {extension!r}; choose png or exr")
    return f"{protocol.INPUTS_DIR}/image.{extension}"


def validate_image_size(width: int, height: int, name: str = "the image") -> None:
    """Raise InputError for an image the backend cannot fit (no pixels, a line, a single pixel)."""
    width, height = int(width), int(height)
    if width <= 0 or height <= 0:
        raise InputError(f"Image '{name}' has no pixels ({width}x{height}): its file may be missing or "
                         f"unreadable. Reload it (Image > Reload) or open another image.")
    if width < MIN_IMAGE_SIDE or height < MIN_IMAGE_SIDE:
        raise InputError(f"Image '{name}' is {width}x{height} pixels: a neural image needs at least "
                         f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} pixels to learn from.")


def target_size(width: int, height: int, *, scale: float | None = None,
                size: tuple[int, int] | None = None) -> tuple[int, int]:
    """The size a fit or resample produces: ``size`` exactly, or the source size times ``scale``.

    Raises InputError for a size that is empty or absurdly large.
    """
    if (scale is None) == (size is None):
        raise InputError("give either a scale or a target size (width and height), not both")
    if size is not None:
        out_w, out_h = int(size[0]), int(size[1])
        what = f"target size {out_w}x{out_h}"
    else:
        if not np.isfinite(scale) or scale <= 0:
            raise InputError(f"scale must be a positive number, got {scale!r}")
        out_w, out_h = max(1, int(round(width * scale))), max(1, int(round(height * scale)))
        what = f"x{format_scale(scale)} of {width}x{height} = {out_w}x{out_h}"
    if out_w < 1 or out_h < 1:
        raise InputError(f"the {what} has no pixels: width and height must be at least 1")
    if out_w > MAX_IMAGE_SIDE or out_h > MAX_IMAGE_SIDE or out_w * out_h > MAX_OUTPUT_PIXELS:
        raise InputError(f"the {what} is too large (at most {MAX_IMAGE_SIDE} pixels a side and "
                         f"{MAX_OUTPUT_PIXELS:,} pixels in all): choose a smaller scale or size")
    return out_w, out_h


def format_scale(scale: float) -> str:
    """4.0 -> '4', 2.5 -> '2.5'."""
    return f"{float(scale):g}"


def image_base_name(name: str) -> str:
    """A Blender image's name without an image file extension: 'photo.png' -> 'photo'."""
    stem, extension = os.path.splitext(name)
    return stem if stem and extension.lower() in IMAGE_EXTENSIONS else name


def result_image_name(source_name: str, *, scale: float | None = None, size: tuple[int, int] | None = None) -> str:
    """``<name>_x4`` for a scale, ``<name>_1920x1080`` for an exact size."""
    base = image_base_name(source_name)
    if size is not None:
        return f"{base}_{int(size[0])}x{int(size[1])}"
    return f"{base}_x{format_scale(scale if scale is not None else 1.0)}"


def make_image_config(*, preset: str = "fast", network: str = "siren", device: str = "auto", seed: int = 0,
                      max_steps: int | None = None, seconds: float | None = None, scale: float | None = None,
                      size: tuple[int, int] | None = None) -> dict[str, Any]:
    """The job.json config of an image job: ``scale`` or ``width`` + ``height`` for the output."""
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if network not in IMAGE_NETWORKS:
        raise InputError(f"unknown network {network!r}; choose one of {', '.join(IMAGE_NETWORKS)}")
    if device not in DEVICES:
        raise InputError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    config: dict[str, Any] = {"preset": preset, "network": network, "device": device, "seed": int(seed)}
    if max_steps:
        config["max_steps"] = int(max_steps)
    if seconds:
        config["seconds"] = float(seconds)
    if size is not None:
        config["width"], config["height"] = int(size[0]), int(size[1])
    else:
        config["scale"] = float(scale if scale is not None else 1.0)
    return config


def prepare_pixels(pixels: np.ndarray, width: int, height: int, channels: int, *, is_float: bool,
                   name: str = "the image") -> np.ndarray:
    """Blender's flat ``image.pixels`` -> an (H, W, C) float32 array, top row first, C = 3 or 4.

    Grey images become RGB; an alpha channel that is 1 everywhere is dropped (the field then
    learns three channels, not four). Byte images keep their stored values (the 0..1 floats of
    8-bit numbers); float images keep theirs (linear, alpha premultiplied, as EXR stores them).
    """
    validate_image_size(width, height, name)
    pixels = np.asarray(pixels, dtype=np.float32)
    if channels not in (1, 2, 3, 4) or pixels.size != width * height * channels:
        raise InputError(f"Image '{name}' has {pixels.size} pixel values, not {width}x{height}x{channels}: "
                         f"it may still be loading or be corrupt. Reload it and try again.")
    image = pixels.reshape(height, width, channels)[::-1]    # Blender stores the bottom row first
    if channels in (1, 2):
        grey = np.repeat(image[:, :, :1], 3, axis=2)
        image = np.concatenate([grey, image[:, :, 1:2]], axis=2) if channels == 2 else grey
    if not np.all(np.isfinite(image)):
        raise InputError(f"Image '{name}' has non-finite pixel values (NaN or infinity): "
                         f"a neural image cannot learn them.")
    if image.shape[2] == 4 and np.all(image[:, :, 3] >= (1.0 if is_float else 254.5 / 255.0)):
        image = image[:, :, :3]
    if image.shape[2] == 4 and not np.any(image[:, :, 3] > 0):
        raise InputError(f"Image '{name}' is fully transparent (alpha 0 everywhere): there is nothing to learn.")
    return np.ascontiguousarray(image)


def create_image_job(jobs_root: str | os.PathLike, pixels: np.ndarray, *, is_float: bool, config: dict[str, Any],
                     source: dict[str, Any] | None = None, name: str | None = None,
                     write_image=None) -> Path:
    """Write a complete image job folder under ``jobs_root``; return its path.

    pixels: (H, W, 3|4) float32, top row first (``prepare_pixels``). Byte images become an 8-bit
    PNG (exact: the values are multiples of 1/255), float images a 32-bit float EXR.
    ``write_image(path, pixels)``: the writer, for tests (default: ``write_input_image``).
    """
    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.ndim != 3 or pixels.shape[2] not in (3, 4):
        raise InputError(f"expected (height, width, 3 or 4) pixels, got shape {pixels.shape}")
    validate_image_size(pixels.shape[1], pixels.shape[0], str((source or {}).get("image", "the image")))
    extension = "exr" if is_float else "png"
    relative = image_input_path(extension)
    source = dict(source or {})
    writer = write_image or write_input_image

    def write(folder: Path) -> None:
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        writer(path, pixels if is_float else np.round(np.clip(pixels, 0.0, 1.0) * 255.0).astype(np.uint8))
        job = protocol.make_job("image", inputs={"image": relative}, config=config,
                                outputs={"image": f"{protocol.OUTPUTS_DIR}/image.{IMAGE_FORMATS[extension]}"},
                                source=source)
        protocol.write_job(folder, job)

    return _write_job_atomically(jobs_root, name or new_job_name(str(source.get("image", "image"))), write)


def write_input_image(path: str | os.PathLike, pixels: np.ndarray) -> None:
    """uint8 pixels -> an 8-bit PNG (numpy + zlib: Blender's Python has no Pillow);
    float pixels -> a float EXR through the backend's own imageio writer (so the backend reads it)."""
    pixels = np.asarray(pixels)
    if pixels.dtype == np.uint8:
        Path(path).write_bytes(encode_png8(pixels))
    else:
        from ._backend import imageio
        imageio.write_exr(path, pixels.astype(np.float32), pixel_type="float", compression="ZIP")


def encode_png8(pixels: np.ndarray) -> bytes:
    """The bytes of an 8-bit PNG (grey, grey + alpha, RGB or RGBA) of (H, W, C) uint8 ``pixels``."""
    pixels = np.asarray(pixels, dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    height, width, channels = pixels.shape
    rows = pixels.reshape(height, width * channels)
    filtered = rows.copy()
    filtered[1:] = rows[1:] - rows[:-1]             # the Up filter (modulo 256): smooth images compress well
    kinds = np.full((height, 1), 2, dtype=np.uint8)
    kinds[0] = 0
    raw = np.concatenate([kinds, filtered], axis=1).tobytes()
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def image_result(job_dir: str | os.PathLike) -> tuple[Path, dict[str, Any]]:
    """(the output image file, result.json) of a finished image job; JobError when there is none."""
    job_dir = Path(job_dir)
    result = _finished_result(job_dir)
    outputs = result.get("outputs")
    relative = outputs.get("image") if isinstance(outputs, dict) else None
    if not isinstance(relative, str):
        raise JobError(f"The job finished but result.json names no output image. Job folder: {job_dir}")
    try:
        path = protocol.resolve_inside(job_dir, relative)
    except protocol.ProtocolError as exc:
        raise JobError(f"The job's output image path is not usable: {exc}") from None
    if not path.is_file() or path.stat().st_size == 0:
        raise JobError(f"The job finished but its image {relative} is missing or empty. Job folder: {job_dir}")
    return path, result


def _finished_result(job_dir: Path) -> dict[str, Any]:
    try:
        result = protocol.read_result(job_dir)
    except protocol.ProtocolError as exc:
        raise JobError(f"The job has no valid result ({exc}). Job folder: {job_dir}") from None
    status = result["status"]
    if status != "done":
        reason = result_message(result)
        text = "The job was cancelled." if status == "cancelled" else "The job failed."
        raise JobError(f"{text}{' ' + reason if reason else ''} Job folder: {job_dir}")
    return result


def resample_problem(job_dir: str | os.PathLike | None) -> str | None:
    """Why a finished image job cannot be resampled (for poll messages and errors), or None."""
    if not job_dir:
        return "This image was not made by Fit Neural Image: fit it first, then resample the result"
    job_dir = Path(job_dir)
    if not (job_dir / protocol.JOB_FILE).is_file():
        return f"The job folder of this image is gone ({job_dir}): fit the image again"
    try:
        job = protocol.read_job(job_dir)
    except protocol.ProtocolError as exc:
        return f"The job folder of this image is not readable ({exc})"
    if job.get("task") != "image":
        return f"The job in {job_dir} is a {job.get('task')} job, not an image fit"
    try:
        _finished_result(job_dir)
    except JobError as exc:
        return str(exc)
    return None


def resample_output_path(job_dir: str | os.PathLike, size: tuple[int, int], extension: str) -> Path:
    """A new file under ``outputs/resampled/`` for one resample run (never overwrites an earlier one)."""
    folder = Path(job_dir) / protocol.OUTPUTS_DIR / "resampled"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{int(size[0])}x{int(size[1])}-{uuid.uuid4().hex[:6]}.{extension}"


def resample_args(job_dir: str | os.PathLike, out_path: str | os.PathLike, *, scale: float | None = None,
                  size: tuple[int, int] | None = None, device: str = "auto") -> list[str]:
    """The backend command line (after the interpreter) that samples a finished image job again."""
    if device not in DEVICES:
        raise InputError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    args = ["-m", "inr_backend", "resample", str(job_dir)]
    if size is not None:
        args += ["--size", f"{int(size[0])}x{int(size[1])}"]
    else:
        args += ["--scale", format_scale(scale if scale is not None else 1.0)]
    return args + ["--out", str(out_path), "--device", device, "--json"]
