"""Exact unsigned distance from points to a triangle mesh.

  * ``point_triangle_distance``: one point to one triangle, exactly (Ericson, "Real-Time
    Collision Detection", 5.1.5), vectorized over pairs in torch.
  * ``unsigned_distance_reference``: brute force, the minimum over every triangle.
  * ``MeshDistance`` / ``unsigned_distance``: candidate triangles from a k-d tree over a dense
    surface sampling (each sample labelled with its triangle), plus the triangles around the
    nearest candidate, then the exact distance to each candidate. The result is the distance
    to a real triangle, so it never undershoots; it is exact near the surface (all of ~10k
    test points within 0.05 of it) and for >99% of points anywhere. When the true nearest
    triangle is missed (far from the surface), the error is at most that triangle's centroid-
    to-corner radius, since its centroid is a sample; in practice it is ~1e-4 of the unit box.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree

from .winding import as_points, mesh_triangles, work_dtype

# Point-triangle pairs per block in the brute-force reference: each pair has a few dozen
# (3,)-vector temporaries, so 2**19 pairs take a few hundred MB in float64.
_REFERENCE_PAIRS = 2**19


# --------------------------------------------------------------------------- one pair


def _dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (u * v).sum(dim=-1)


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den where den != 0, else 0: the branches torch.where does not pick still get
    computed, and must not make NaNs that could leak."""
    safe = torch.where(den == 0, torch.ones_like(den), den)
    return torch.where(den == 0, torch.zeros_like(num), num / safe)


def segment_closest_points(points: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, 3) closest points on segments [a, b] (N, 3) to points (N, 3); a == b is fine."""
    ab = b - a
    t = _ratio(_dot(points - a, ab), _dot(ab, ab)).clamp(0.0, 1.0)
    return a + t[:, None] * ab


def closest_points_on_triangles(points: torch.Tensor, triangles: torch.Tensor) -> torch.Tensor:
    """(N, 3) closest point on triangle i (triangles (N, 3, 3)) to point i (points (N, 3)).

    Ericson's Voronoi-region test for well-shaped triangles; thin ones (height below ~1e-4
    (float64) or ~2e-2 (float32) of the longest edge, degenerate ones included) go through
    ``_closest_by_plane_or_edges`` instead, because Ericson's barycentric numerators cancel
    catastrophically for them.
    """
    a, b, c = triangles.unbind(dim=1)
    closest = _ericson(points, a, b, c)
    ab, ac, bc = b - a, c - a, c - b
    normal = torch.cross(ab, ac, dim=-1)  # |normal| = longest edge * height
    longest2 = torch.maximum(torch.maximum(_dot(ab, ab), _dot(ac, ac)), _dot(bc, bc))
    # (height / longest)^2 <= sqrt(eps): the rounding of Ericson's numerators (relative eps)
    # stays well below the barycentric coordinates it divides them by.
    thin = _dot(normal, normal) <= torch.finfo(points.dtype).eps ** 0.5 * longest2 * longest2
    if bool(thin.any()):
        index = thin.nonzero().squeeze(1)
        closest[index] = _closest_by_plane_or_edges(points[index], a[index], b[index], c[index], normal[index])
    return closest


def _ericson(points: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """(N, 3) Ericson's closest point, every region computed and the right one picked per pair."""
    ab, ac, ap = b - a, c - a, points - a
    bp, cp = points - b, points - c
    d1, d2 = _dot(ab, ap), _dot(ac, ap)
    d3, d4 = _dot(ab, bp), _dot(ac, bp)
    d5, d6 = _dot(ab, cp), _dot(ac, cp)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2  # barycentric numerators

    # Face region (the default), then each edge and vertex region overrides it where it holds;
    # Ericson tests them in the order A, B, AB, C, AC, BC, so apply them in reverse.
    total = va + vb + vc
    v, w = _ratio(vb, total), _ratio(vc, total)
    closest = a + v[:, None] * ab + w[:, None] * ac

    def pick(mask: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
        return torch.where(mask[:, None], candidate, closest)

    closest = pick((va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0),
                   b + _ratio(d4 - d3, (d4 - d3) + (d5 - d6))[:, None] * (c - b))  # edge BC
    closest = pick((vb <= 0) & (d2 >= 0) & (d6 <= 0), a + _ratio(d2, d2 - d6)[:, None] * ac)  # edge AC
    closest = pick((d6 >= 0) & (d5 <= d6), c)  # vertex C
    closest = pick((vc <= 0) & (d1 >= 0) & (d3 <= 0), a + _ratio(d1, d1 - d3)[:, None] * ab)  # edge AB
    closest = pick((d3 >= 0) & (d4 <= d3), b)  # vertex B
    closest = pick((d1 <= 0) & (d2 <= 0), a)  # vertex A
    return closest


def _closest_by_plane_or_edges(points, a, b, c, normal) -> torch.Tensor:
    """(M, 3) closest points, robust for thin and degenerate triangles: the foot of the
    perpendicular when it falls inside the triangle, else the nearest of the three edges'
    closest points. A foot misjudged inside or outside lies within rounding of an edge, where
    both answers agree; a zero normal (no area) leaves only the edges."""
    edge_points = torch.stack([segment_closest_points(points, a, b), segment_closest_points(points, b, c),
                               segment_closest_points(points, c, a)], dim=1)  # (M, 3, 3)
    nearest = (edge_points - points[:, None]).norm(dim=-1).argmin(dim=1)
    on_edges = edge_points[torch.arange(len(points), device=points.device), nearest]

    area2 = _dot(normal, normal)
    foot = points - _ratio(_dot(points - a, normal), area2)[:, None] * normal
    inside = area2 > 0
    for start, end in ((a, b), (b, c), (c, a)):
        inside &= _dot(torch.cross(end - start, foot - start, dim=-1), normal) >= 0
    return torch.where(inside[:, None], foot, on_edges)


def point_triangle_distance(points: torch.Tensor, triangles: torch.Tensor) -> torch.Tensor:
    """(N,) Euclidean distance from points (N, 3) to their paired triangles (N, 3, 3)."""
    return (points - closest_points_on_triangles(points, triangles)).norm(dim=-1)


# --------------------------------------------------------------------------- reference


def unsigned_distance_reference(points, vertices, faces, *, chunk: int | None = None) -> torch.Tensor:
    """Exact distance by brute force over every triangle, in float64.

    points (N, 3); vertices (V, 3); faces (F, 3) -> (N,) float64 on the points' device.
    ``chunk``: points per block (default: about 512k point-triangle pairs).
    """
    points = as_points(points)
    triangles = mesh_triangles(vertices, faces, device=points.device, dtype=torch.float64)
    count = len(triangles)
    chunk = chunk or max(1, _REFERENCE_PAIRS // max(1, count))
    out = []
    for block in points.to(torch.float64).split(chunk):
        pairs = block[:, None, :].expand(-1, count, -1).reshape(-1, 3)
        tris = triangles[None].expand(len(block), -1, -1, -1).reshape(-1, 3, 3)
        out.append(point_triangle_distance(pairs, tris).view(len(block), count).amin(dim=1))
    if not out:
        return torch.zeros(0, dtype=torch.float64, device=points.device)
    return torch.cat(out)


# --------------------------------------------------------------------------- fast


def surface_samples_with_labels(vertices: np.ndarray, faces: np.ndarray, *, samples_per_face: float = 4.0,
                                min_samples: int = 10_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(points (S, 3), face ids (S,)): a dense sampling of the surface, each sample labelled
    with the triangle it lies on.

    The fast distance is off by at most the distance from the true nearest surface point to
    the nearest sample on its triangle, so every part of every triangle needs a sample close by:
      * each triangle's centroid, so even tiny triangles can be found;
      * area-uniform samples (samples_per_face per face, at least min_samples), spacing ~h;
      * samples every ~3h along each triangle's longest edge, for long thin triangles
        (slivers) that area sampling misses while their ends are far from the centroid.
    """
    tris = vertices[faces]  # (F, 3, 3)
    areas = 0.5 * np.linalg.norm(np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0]), axis=1)
    count = max(int(samples_per_face * len(faces)), min_samples)
    rng = np.random.default_rng(seed)
    total = areas.sum()
    probabilities = areas / total if total > 0 else np.full(len(faces), 1.0 / len(faces))
    area_ids = rng.choice(len(faces), size=count, p=probabilities)
    u, v = rng.random(count), rng.random(count)
    flip = u + v > 1.0  # fold the unit square onto the triangle
    u, v = np.where(flip, 1.0 - u, u), np.where(flip, 1.0 - v, v)
    t = tris[area_ids]
    area_points = t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0])

    spacing = np.sqrt(total / count) if total > 0 else 1.0
    edge_ids, edge_points = _longest_edge_samples(tris, spacing)
    points = np.concatenate([tris.mean(axis=1), area_points, edge_points])
    labels = np.concatenate([np.arange(len(faces)), area_ids, edge_ids])
    return points, labels


def _longest_edge_samples(tris: np.ndarray, spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """(face ids (E,), points (E, 3)): floor(length / (3 spacing)) evenly spaced points on the
    longest edge of each triangle (none for the usual triangles, which area sampling covers)."""
    starts = tris  # edge i runs from corner i to corner i + 1
    ends = np.roll(tris, -1, axis=1)
    lengths = np.linalg.norm(ends - starts, axis=2)  # (F, 3)
    longest = lengths.argmax(axis=1)
    rows = np.arange(len(tris))
    counts = np.floor(lengths[rows, longest] / (3.0 * spacing)).astype(np.int64)
    ids = np.repeat(rows, counts)
    # position j of m on an edge: (j + 0.5) / m, j = 0..m-1
    first = np.repeat(np.cumsum(counts) - counts, counts)
    fraction = (np.arange(len(ids)) - first + 0.5) / np.repeat(np.maximum(counts, 1), counts)
    a, b = starts[ids, longest[ids]], ends[ids, longest[ids]]
    return ids, a + fraction[:, None] * (b - a)


class MeshDistance:
    """Unsigned distance to one mesh, for many queries: the k-d tree is built once.

    ``MeshDistance(vertices, faces)(points, k=8)`` -> (N,) in float32 (float64 for float64
    points) on the points' device. Candidate triangles for a point: the owners of its k
    nearest surface samples, plus every triangle sharing a vertex with the nearest one's
    owner. The ring matters for points close to the surface: there the nearest samples can
    all sit on neighbours of the triangle that holds the true nearest point (it is off by up
    to the sample spacing without it). The tree query runs on the CPU (scipy, all cores); the
    rest runs on the points' device.
    """

    def __init__(self, vertices, faces, *, samples_per_face: float = 4.0, min_samples: int = 10_000,
                 seed: int = 0):
        vertices = _numpy(vertices, np.float64)
        faces = _numpy(faces, np.int64)
        if len(faces) == 0:
            raise ValueError("MeshDistance needs a mesh with at least one face")
        self.vertices, self.faces = vertices, faces
        samples, self.labels = surface_samples_with_labels(
            vertices, faces, samples_per_face=samples_per_face, min_samples=min_samples, seed=seed)
        # Sliding-midpoint splits (balanced_tree=False): with scipy's default median splits, a
        # tree over surface samples answered queries far from the surface ~10x slower (23 s
        # for 100k uniform points in the unit box around the 100k-face armadillo, 2 cores).
        self.tree = cKDTree(samples, leafsize=16, balanced_tree=False, compact_nodes=False)
        # Faces around each vertex, as CSR: faces around vertex v are
        # vertex_faces[vertex_start[v]:vertex_start[v + 1]].
        corner_vertex = faces.reshape(-1)
        self.vertex_faces = np.argsort(corner_vertex, kind="stable") // 3
        counts = np.bincount(corner_vertex, minlength=len(vertices))
        self.vertex_start = np.concatenate([[0], np.cumsum(counts)])
        self._on_device: dict[tuple, dict[str, torch.Tensor]] = {}  # per (device, dtype)

    def mesh_on(self, device, dtype) -> dict[str, torch.Tensor]:
        """The mesh tensors the queries need, cached per (device, dtype)."""
        key = (torch.device(device), dtype)
        if key not in self._on_device:
            as_long = lambda array: torch.as_tensor(array, dtype=torch.long, device=device)  # noqa: E731
            self._on_device[key] = {
                "triangles": mesh_triangles(self.vertices, self.faces, device=device, dtype=dtype),
                "faces": as_long(self.faces), "labels": as_long(self.labels),
                "vertex_faces": as_long(self.vertex_faces), "vertex_start": as_long(self.vertex_start)}
        return self._on_device[key]

    def __call__(self, points, *, k: int = 8, chunk: int = 2**18) -> torch.Tensor:
        """points (N, 3) -> (N,) distances; ``chunk`` = points per block."""
        points = as_points(points)
        dtype = work_dtype(points)
        mesh = self.mesh_on(points.device, dtype)
        k = min(k, len(self.labels))
        out = []
        for block in points.split(chunk):
            _, nearest = self.tree.query(block.detach().cpu().double().numpy(), k=k, workers=-1)
            sample_ids = torch.as_tensor(nearest.reshape(len(block), k), device=points.device)
            out.append(self._block(block.to(dtype), mesh["labels"][sample_ids], mesh))
        if not out:
            return torch.zeros(0, dtype=dtype, device=points.device)
        return torch.cat(out)

    @staticmethod
    def _block(q: torch.Tensor, candidates: torch.Tensor, mesh: dict[str, torch.Tensor]) -> torch.Tensor:
        """q (n, 3), candidate face ids (n, k) -> (n,) min distance over candidates and the ring."""
        n, k = candidates.shape
        pairs = q[:, None, :].expand(-1, k, -1).reshape(-1, 3)
        best = point_triangle_distance(pairs, mesh["triangles"][candidates.reshape(-1)]).view(n, k).amin(dim=1)
        query_index, ring = vertex_ring(candidates[:, 0], mesh["faces"], mesh["vertex_faces"], mesh["vertex_start"])
        ring_distance = point_triangle_distance(q[query_index], mesh["triangles"][ring])
        return best.scatter_reduce(0, query_index, ring_distance, reduce="amin")


def vertex_ring(face_ids: torch.Tensor, faces: torch.Tensor, vertex_faces: torch.Tensor,
                vertex_start: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Faces sharing a vertex with each face in face_ids (n,), as flat pairs
    (index into face_ids (M,), face id (M,)); a face next to two of its corners appears twice."""
    corners = faces[face_ids].reshape(-1)  # (3n,)
    owner = torch.arange(len(face_ids), device=faces.device).repeat_interleave(3)
    start = vertex_start[corners]
    counts = vertex_start[corners + 1] - start
    total = int(counts.sum())
    # Position j of each corner's run: flat index minus the run's first flat index.
    run_first = torch.cumsum(counts, 0) - counts
    offset = torch.arange(total, device=faces.device) - run_first.repeat_interleave(counts, output_size=total)
    ring = vertex_faces[start.repeat_interleave(counts, output_size=total) + offset]
    return owner.repeat_interleave(counts, output_size=total), ring


def unsigned_distance(points, vertices, faces, *, k: int = 8) -> torch.Tensor:
    """Fast exact-in-practice distance, (N, 3) -> (N,); see ``MeshDistance``."""
    return MeshDistance(vertices, faces)(points, k=k)


def _numpy(array, dtype) -> np.ndarray:
    if torch.is_tensor(array):
        array = array.detach().cpu().numpy()
    return np.asarray(array, dtype=dtype)
