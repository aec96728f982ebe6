"""Binary PLY for triangle meshes, with numpy alone.

The add-on (inside Blender, which ships numpy but not trimesh) and the backend both use this
module, so a mesh crosses the job folder with no axis conversion and no loss: float32
positions, int32 triangles, optional uint8 RGB(A) vertex colours.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}


class PlyError(ValueError):
    """A PLY file this module cannot read; the text names the file and the problem."""


def write_ply(path: str | os.PathLike, vertices: np.ndarray, faces: np.ndarray,
              vertex_colors: np.ndarray | None = None) -> None:
    """Write a binary little-endian PLY atomically (temp file + rename).

    vertices: (V, 3) float; faces: (F, 3) int; vertex_colors: (V, 3|4) uint8 or None.
    """
    vertices = np.ascontiguousarray(vertices, dtype="<f4").reshape(-1, 3)
    faces = np.ascontiguousarray(faces, dtype="<i4").reshape(-1, 3)
    vertex_dtype = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    header = ["ply", "format binary_little_endian 1.0", "comment neural fields for blender",
              f"element vertex {len(vertices)}", "property float x", "property float y", "property float z"]
    if vertex_colors is not None:
        vertex_colors = np.ascontiguousarray(vertex_colors, dtype="u1")
        channels = "rgba"[: vertex_colors.shape[1]]
        for name in ("red", "green", "blue", "alpha")[: len(channels)]:
            header.append(f"property uchar {name}")
            vertex_dtype.append((name, "u1"))
    header += [f"element face {len(faces)}", "property list uchar int vertex_indices", "end_header"]

    vertex_block = np.empty(len(vertices), dtype=vertex_dtype)
    vertex_block["x"], vertex_block["y"], vertex_block["z"] = vertices.T
    if vertex_colors is not None:
        for index, name in enumerate(("red", "green", "blue", "alpha")[: vertex_colors.shape[1]]):
            vertex_block[name] = vertex_colors[:, index]
    face_block = np.empty(len(faces), dtype=[("n", "u1"), ("i", "<i4", (3,))])
    face_block["n"] = 3
    face_block["i"] = faces

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(("\n".join(header) + "\n").encode("ascii"))
            handle.write(vertex_block.tobytes())
            handle.write(face_block.tobytes())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)   # a failed write names no file: say which (a full disk)
        raise


def read_ply(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Read a binary little-endian triangle PLY: (vertices (V,3) f4, faces (F,3) i4, colours or None).

    Reads what write_ply writes, and any binary little-endian PLY whose faces are all triangles.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PlyError(f"cannot read mesh file {path}: {exc.strerror}") from None
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise PlyError(f"{path} is not a PLY file")
    header = data[:end].decode("ascii", errors="replace").splitlines()
    newline = data.find(b"\n", end)
    if newline < 0:
        raise PlyError(f"{path}: corrupt or truncated PLY (the header does not end)")
    body_start = newline + 1
    if "format binary_little_endian 1.0" not in [line.strip() for line in header]:
        raise PlyError(f"{path}: only binary little-endian PLY is supported here")

    elements: list[tuple[str, int, list[tuple[str, ...]]]] = []
    for line in header[1:]:
        words = line.split()
        if not words:
            continue
        if words[0] == "element":
            if len(words) != 3 or not words[2].isdigit():
                raise PlyError(f"{path}: corrupt PLY header line {line.strip()[:80]!r} (expected 'element NAME COUNT')")
            elements.append((words[1], int(words[2]), []))
        elif words[0] == "property":
            if not elements:
                raise PlyError(f"{path}: property before any element")
            if len(words) < 3 or (words[1] == "list" and len(words) != 5):
                raise PlyError(f"{path}: corrupt PLY header line {line.strip()[:80]!r}")
            elements[-1][2].append(tuple(words[1:]))

    offset = body_start
    vertices = faces = colors = None
    try:
        for name, count, properties in elements:
            if name == "face":
                if len(properties) != 1 or properties[0][0] != "list":
                    raise PlyError(f"{path}: faces must be one list property")
                _, count_type, index_type, _ = properties[0]
                dtype = np.dtype([("n", _PLY_TYPES[count_type]), ("i", "<" + _PLY_TYPES[index_type], (3,))])
                block = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
                if count and not np.all(block["n"] == 3):
                    raise PlyError(f"{path}: only triangle faces are supported")
                faces = block["i"].astype(np.int32)
            else:
                if any(prop[0] == "list" for prop in properties):
                    raise PlyError(f"{path}: list properties are only supported on faces")
                dtype = np.dtype([(prop[1], "<" + _PLY_TYPES[prop[0]]) for prop in properties])
                block = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
                if name == "vertex":
                    vertices = np.stack([block["x"], block["y"], block["z"]], axis=1).astype(np.float32)
                    channels = [c for c in ("red", "green", "blue", "alpha") if c in block.dtype.names]
                    if len(channels) >= 3:
                        colors = np.stack([block[c] for c in channels], axis=1).astype(np.uint8)
            offset += dtype.itemsize * count
    except (KeyError, ValueError, TypeError) as exc:  # unknown types, a body shorter than the header says
        if isinstance(exc, PlyError):
            raise
        raise PlyError(f"{path}: corrupt or truncated PLY ({exc})") from None
    if vertices is None:
        raise PlyError(f"{path}: no vertex element")
    if faces is None:
        faces = np.zeros((0, 3), dtype=np.int32)
    if len(faces) and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise PlyError(f"{path}: face indices out of range")
    return vertices, faces, colors
