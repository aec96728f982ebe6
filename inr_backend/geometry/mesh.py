"""Loading and cleaning triangle meshes, and the world -> unit box normalization.

Everything here works on numpy arrays: vertices (V, 3) float64 and faces (F, 3) int64.
The backend trains in the unit box [-1, 1]^3; ``normalization_for`` gives the similarity
that puts a mesh there (``inr_backend.protocol.make_normalization`` turns it into the
4x4 matrices stored in normalization.json).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from ..protocol import MAX_MESH_FACES

# Faces whose area is below this fraction of (bbox diagonal)^2 count as zero-area. Far below
# what float32 coordinates can resolve, so only truly degenerate faces are dropped.
_ZERO_AREA_FRACTION = 1e-14

SUPPORTED_FORMATS = "OBJ, PLY, STL, GLB/GLTF or OFF"


class MeshError(ValueError):
    """A mesh that cannot be used; the text is for a person and says what to fix."""


# --------------------------------------------------------------------------- loading


def load_mesh(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a triangle mesh file and clean it (see ``sanitize_mesh``).

    Any format trimesh reads; scenes are flattened into one mesh (node transforms applied),
    polygons are triangulated, vertices split along UV or normal seams are merged.

    Returns vertices (V, 3) float64 and faces (F, 3) int64. Raises MeshError naming the file
    when it is missing, unreadable, holds no faces (a point cloud) or has no area.
    """
    path = Path(path)
    if not path.exists():
        raise MeshError(f"mesh file not found: {path}")
    if not path.is_file():
        raise MeshError(f"not a mesh file (a folder?): {path}")
    declared = ply_face_count(path)
    if declared is not None and declared > MAX_MESH_FACES:  # refused before reading it all
        raise MeshError(f"{path}: {too_many_faces_message(declared)}")
    import trimesh  # heavy import (seconds), only once a file is actually read

    try:
        # process=False: we clean the arrays ourselves, the same way for every source.
        loaded = trimesh.load(str(path), process=False)
    except Exception as exc:  # trimesh raises many types for corrupt or unknown files
        raise MeshError(
            f"could not read the mesh file {path}: {exc}. Check that it is a valid "
            f"{SUPPORTED_FORMATS} file (export it again from your 3D tool)") from None

    if isinstance(loaded, trimesh.Scene):
        if not any(isinstance(g, trimesh.Trimesh) for g in loaded.geometry.values()):
            raise MeshError(_no_faces_message(path, loaded))
        loaded = loaded.to_mesh()  # concatenates every mesh with its node transform
    if not isinstance(loaded, trimesh.Trimesh):
        raise MeshError(_no_faces_message(path, loaded))

    vertices = np.asarray(loaded.vertices, dtype=np.float64)
    faces = np.asarray(loaded.faces, dtype=np.int64)
    try:
        return sanitize_mesh(vertices, faces)
    except MeshError as exc:
        raise MeshError(f"{path}: {exc}") from None


def too_many_faces_message(count: int, name: str = "the mesh") -> str:
    """What to say about a mesh over MAX_MESH_FACES triangles, with the Decimate ratio that fits."""
    ratio = math.floor(MAX_MESH_FACES / count * 100) / 100
    return (f"{name} has {count:,} triangles, more than the {MAX_MESH_FACES:,} a neural field is trained "
            f"from: reduce it first (in Blender a Decimate modifier, Collapse, ratio {ratio:.2f} or less; or "
            f"a lower Subdivision level)")


def ply_face_count(path: Path) -> int | None:
    """The face count a PLY file's header declares (None for other files or no face element)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return None
    if not head.startswith(b"ply"):
        return None
    for line in head.split(b"end_header")[0].splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == b"element" and words[1] == b"face" and words[2].isdigit():
            return int(words[2])
    return None


def _no_faces_message(path: Path, loaded: object) -> str:
    kind = type(loaded).__name__
    if kind == "PointCloud":
        return (f"{path} holds a point cloud (points, no faces): the SDF needs a surface "
                f"mesh with triangles; mesh the points first (e.g. Poisson reconstruction)")
    return (f"{path} has no triangles (trimesh read it as {kind}): is it empty, corrupt, "
            f"or not a surface mesh? Export it again as {SUPPORTED_FORMATS}")


# --------------------------------------------------------------------------- cleaning


def sanitize_mesh(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Clean a triangle mesh given as arrays; raise MeshError when nothing usable is left.

    vertices (V, 3), faces (F, 3) -> vertices (V', 3) float64, faces (F', 3) int64, with
      * faces touching a NaN or infinite vertex dropped (Blender's validate() lets NaN through),
      * vertices at the same position merged (meshes split along UV seams become closed),
      * zero-area faces dropped (including faces that collapse when vertices merge),
      * vertices no face uses dropped, and the faces renumbered.
    Face orientation is kept: it decides inside and outside.
    """
    vertices, faces = _check_arrays(vertices, faces)
    if len(faces) == 0:
        raise MeshError("the mesh has no faces (a point cloud or an empty mesh?): "
                        "the SDF needs a surface made of triangles")
    if len(faces) > MAX_MESH_FACES:  # before any per-face work: bounded time and memory
        raise MeshError(too_many_faces_message(len(faces)))

    finite = np.isfinite(vertices).all(axis=1)
    faces = faces[finite[faces].all(axis=1)]
    if len(faces) == 0:
        raise MeshError("every face touches a vertex with a NaN or infinite coordinate: "
                        "fix the mesh (apply transforms, remove broken geometry) and try again")

    vertices, faces = merge_vertices(vertices, faces)
    faces = faces[~_zero_area(vertices, faces)]
    if len(faces) == 0:
        raise MeshError("the mesh has no area: every face is degenerate (zero area, e.g. all "
                        "vertices on one line or point); check the mesh and its scale")
    return _drop_unreferenced(vertices, faces)


def _check_arrays(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise MeshError(f"vertices must be an array of shape (V, 3), got {vertices.shape}")
    if faces.size == 0:
        return vertices, np.zeros((0, 3), dtype=np.int64)
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise MeshError(f"faces must be triangles, an array of shape (F, 3), got {faces.shape}")
    if not np.issubdtype(faces.dtype, np.integer):
        raise MeshError(f"faces must hold integer vertex indices, got {faces.dtype}")
    faces = faces.astype(np.int64)
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise MeshError(f"faces refer to vertices outside 0..{len(vertices) - 1} "
                        f"(found {faces.min()}..{faces.max()}): the mesh data is corrupt")
    return vertices, faces


def merge_vertices(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge vertices with exactly equal positions; faces are renumbered to match.

    Exact equality is what seams produce (one position written twice), so no tolerance is
    needed and nearby but distinct vertices are never welded. Unused vertices survive.
    """
    # + 0.0 turns -0.0 into 0.0 so the two compare equal bytewise inside np.unique.
    unique, inverse = np.unique(vertices + 0.0, axis=0, return_inverse=True)
    return unique, inverse.reshape(-1)[faces]


def face_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(F,) triangle areas."""
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    return 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)


def _zero_area(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(F,) bool: faces with a repeated vertex or (numerically) no area."""
    repeated = ((faces[:, 0] == faces[:, 1]) | (faces[:, 1] == faces[:, 2])
                | (faces[:, 2] == faces[:, 0]))
    used = vertices[np.unique(faces)]
    diagonal = float(np.linalg.norm(used.max(axis=0) - used.min(axis=0)))
    return repeated | (face_areas(vertices, faces) <= _ZERO_AREA_FRACTION * diagonal**2)


def _drop_unreferenced(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    used, inverse = np.unique(faces, return_inverse=True)
    return vertices[used], inverse.reshape(faces.shape).astype(np.int64)


# --------------------------------------------------------------------------- queries


def is_watertight(vertices: np.ndarray, faces: np.ndarray) -> bool:
    """True when every edge is shared by exactly two faces (vertices merged by position first).

    A mesh with a hole (boundary edges) or a non-manifold edge (three or more faces) is not.
    """
    vertices, faces = _check_arrays(vertices, faces)
    if len(faces) == 0:
        return False
    _, faces = merge_vertices(vertices, faces)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = np.sort(edges, axis=1)  # undirected
    _, counts = np.unique(edges, axis=0, return_counts=True)
    return bool(np.all(counts == 2))


def bounding_box(vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lo (3,), hi (3,)): the axis-aligned bounding box of the finite vertices."""
    vertices = np.asarray(vertices, dtype=np.float64).reshape(-1, 3)
    vertices = vertices[np.isfinite(vertices).all(axis=1)]
    if len(vertices) == 0:
        raise MeshError("the mesh has no (finite) vertices, so it has no bounding box")
    return vertices.min(axis=0), vertices.max(axis=0)


def normalization_for(vertices: np.ndarray, *, padding: float = 0.1) -> tuple[np.ndarray, float]:
    """(center (3,), scale) with x_unit = (x - center) * scale.

    Puts the bbox centre at 0 and scales the longest bbox side to 2 * (1 - padding), so the
    mesh lies in [-(1 - padding), 1 - padding]^3: the padding leaves room around the surface
    for the field to turn positive before the edge of the unit box [-1, 1]^3.
    """
    if not 0.0 <= padding < 1.0:
        raise ValueError(f"padding must be in [0, 1), got {padding}")
    lo, hi = bounding_box(vertices)
    longest = float(np.max(hi - lo))
    if not longest > 0.0:
        raise MeshError("the mesh has no extent (all vertices at one point): nothing to fit")
    return (lo + hi) / 2.0, 2.0 * (1.0 - padding) / longest
