"""Job folders, seen from the add-on (no bpy): check a mesh, write a job, read its result.

A job is written into a hidden temporary folder beside its final place and renamed when
complete, so the backend (or a person browsing the jobs folder) never sees half a job.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from ._backend import plyio, protocol

MESH_INPUT = f"{protocol.INPUTS_DIR}/mesh.ply"
MESH_OUTPUT = f"{protocol.OUTPUTS_DIR}/mesh.ply"

PRESETS = ("fast", "balanced", "quality")
NETWORKS = ("hashgrid", "frequency", "siren")
DEVICES = ("auto", "cpu", "cuda")


class InputError(ValueError):
    """The mesh cannot be converted; the text says why and what to do."""


class JobError(RuntimeError):
    """A job did not produce a usable result; the text says why."""


# --------------------------------------------------------------------------- input checks


def validate_mesh(vertices: np.ndarray, faces: np.ndarray, name: str = "the mesh") -> None:
    """Raise InputError for a mesh the backend cannot learn a surface from."""
    vertices = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    faces = np.asarray(faces).reshape(-1, 3)
    if len(vertices) == 0 or len(faces) == 0:
        raise InputError(f"'{name}' has no faces: a neural SDF needs a surface. Add faces (or remove the "
                         f"modifiers that delete them) and try again.")
    if not np.all(np.isfinite(vertices)):
        raise InputError(f"'{name}' has vertices with non-finite coordinates (NaN or infinity).")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise InputError(f"'{name}' has faces that point at missing vertices.")
    diagonal = float(np.linalg.norm(vertices.max(axis=0) - vertices.min(axis=0)))
    a, b, c = vertices[faces[:, 0]], vertices[faces[:, 1]], vertices[faces[:, 2]]
    area = 0.5 * float(np.linalg.norm(np.cross(b - a, c - a), axis=1).sum())
    if diagonal <= 0.0 or area <= 1e-10 * diagonal * diagonal:
        raise InputError(f"'{name}' has zero surface area (all its vertices are coincident or on one line): "
                         f"there is no surface to learn.")


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


def create_job(jobs_root: str | os.PathLike, vertices: np.ndarray, faces: np.ndarray, *, config: dict[str, Any],
               source: dict[str, Any] | None = None, name: str | None = None) -> Path:
    """Write a complete sdf job folder under ``jobs_root`` and return its path.

    vertices/faces: the triangulated mesh in the object's local coordinates.
    """
    jobs_root = Path(jobs_root)
    jobs_root.mkdir(parents=True, exist_ok=True)
    source = dict(source or {})
    name = name or new_job_name(str(source.get("object", "mesh")))
    final = jobs_root / name
    if final.exists():
        raise FileExistsError(f"job folder already exists: {final}")
    temporary = jobs_root / f".{name}.partial"
    temporary.mkdir()
    try:
        plyio.write_ply(temporary / MESH_INPUT, vertices, faces)
        job = protocol.make_job("sdf", inputs={"mesh": MESH_INPUT}, config=config,
                                outputs={"mesh": MESH_OUTPUT}, source=source)
        protocol.write_job(temporary, job)
        os.rename(temporary, final)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return final


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
