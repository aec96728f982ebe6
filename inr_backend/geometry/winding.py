"""Generalized winding numbers: inside / outside for any triangle soup.

The winding number of a point q is the signed solid angle the surface subtends at q, over
4 pi (Jacobson et al. 2013, "Robust inside-outside segmentation using generalized winding
numbers"). For a closed, outward-oriented mesh it is exactly 1 inside and 0 outside; for a
mesh with holes, self-intersections or non-manifold parts it degrades gracefully (about 1/2
across a hole), which is why ground-truth signs use it and not ray parity.

Two versions:
  * ``winding_numbers_reference``: exact, every (point, triangle) pair, float64.
  * ``winding_numbers`` / ``FastWindingNumber``: Barill et al. 2018 ("Fast winding numbers for
    soups and clouds"), one level: triangles grouped into spatially compact clusters; a
    cluster far from q (distance > beta * its radius) contributes its dipole term, a near
    one the exact solid angles of its triangles. Vectorized torch on the points' device.

Coordinates are kept "components first", (3, ...), where many points meet many triangles:
then x, y and z are contiguous slabs and the solid angle is a few dozen elementwise ops on
them, about 2.5x faster on the CPU than (..., 3) tensors with torch.cross and norms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

FOUR_PI = 4.0 * math.pi

# How many (point, triangle) or (point, cluster) pairs one vectorized block may hold. Each pair
# needs a few dozen bytes of temporaries: 2**22 pairs stay in the low hundreds of MB on the
# CPU; a GPU gets bigger blocks, as each block costs kernel launches and a host sync.
_PAIR_BUDGET = {"cpu": 2**22, "cuda": 2**24}


def pair_budget(device: torch.device) -> int:
    return _PAIR_BUDGET.get(device.type, _PAIR_BUDGET["cpu"])


# --------------------------------------------------------------------------- shared pieces


def solid_angles(q: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Signed solid angle of triangle (a, b, c) seen from q (Van Oosterom & Strackee 1983).

    Components first: q, a, b, c are (3, ...) and broadcast against each other -> (...).
    Positive when q lies on the side the normal (b - a) x (c - a) points away from, so
    inside a closed outward-oriented mesh the angles sum to 4 pi. Zero-area triangles give 0.
    """
    ax, ay, az = a[0] - q[0], a[1] - q[1], a[2] - q[2]
    bx, by, bz = b[0] - q[0], b[1] - q[1], b[2] - q[2]
    cx, cy, cz = c[0] - q[0], c[1] - q[1], c[2] - q[2]
    det = ax * (by * cz - bz * cy) + ay * (bz * cx - bx * cz) + az * (bx * cy - by * cx)
    la = (ax * ax + ay * ay + az * az).sqrt()
    lb = (bx * bx + by * by + bz * bz).sqrt()
    lc = (cx * cx + cy * cy + cz * cz).sqrt()
    denom = (la * lb * lc + (ax * bx + ay * by + az * bz) * lc
             + (bx * cx + by * cy + bz * cz) * la + (cx * ax + cy * ay + cz * az) * lb)
    return 2.0 * torch.atan2(det, denom)


def mesh_triangles(vertices, faces, *, device, dtype) -> torch.Tensor:
    """(F, 3, 3) corner positions [face, corner, xyz] from vertices (V, 3), faces (F, 3)."""
    vertices = vertices if torch.is_tensor(vertices) else torch.as_tensor(np.asarray(vertices))
    faces = faces if torch.is_tensor(faces) else torch.as_tensor(np.asarray(faces))
    return vertices.to(device=device, dtype=dtype)[faces.to(device=device, dtype=torch.long)]


def as_points(points) -> torch.Tensor:
    """Check and return points as an (N, 3) tensor (arrays are converted, on the CPU)."""
    points = points if torch.is_tensor(points) else torch.as_tensor(np.asarray(points))
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must have shape (N, 3), got {tuple(points.shape)}")
    return points


def work_dtype(points: torch.Tensor) -> torch.dtype:
    """float64 stays float64; everything else (float32, half, ints) is computed in float32."""
    return torch.float64 if points.dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------- reference


def winding_numbers_reference(points, vertices, faces, *, chunk: int | None = None) -> torch.Tensor:
    """Exact winding numbers by brute force over all triangles, in float64.

    points (N, 3); vertices (V, 3); faces (F, 3) (tensors or arrays) -> (N,) float64 on the
    points' device. ``chunk``: points per block (default: about 4M point-triangle pairs).
    """
    points = as_points(points)
    triangles = mesh_triangles(vertices, faces, device=points.device, dtype=torch.float64)
    a, b, c = triangles.permute(1, 2, 0)[:, :, None, :]  # each (3, 1, F)
    chunk = chunk or max(1, pair_budget(points.device) // max(1, len(triangles)))
    out = [solid_angles(block.to(torch.float64).T[:, :, None], a, b, c).sum(dim=1)  # (n, F) -> (n,)
           for block in points.split(chunk)]
    if not out:
        return torch.zeros(0, dtype=torch.float64, device=points.device)
    return torch.cat(out) / FOUR_PI


# --------------------------------------------------------------------------- fast


def kd_cluster_order(centroids: torch.Tensor, cluster_size: int) -> torch.Tensor:
    """(F, 3) -> (F,) permutation after which every run of cluster_size is a compact cluster.

    Balanced k-d splits: each group is cut at its median along its longest axis until groups
    hold cluster_size entries. (Cutting a Morton-ordered list, tried first, gave clusters 1.5x
    wider on average and some spanning the whole mesh where the Z-curve jumps; a wide cluster
    is evaluated exactly for many more queries.) The count is padded to
    cluster_size * 2**levels with entries at +inf; they always sort last, so the real
    triangles fill the first clusters and are the first F entries of the order.
    """
    count = len(centroids)
    levels = math.ceil(math.log2(max(1, -(-count // cluster_size))))
    total = cluster_size * 2**levels
    padded = centroids.new_full((total, 3), math.inf)
    padded[:count] = centroids
    groups = torch.arange(total, device=centroids.device).view(1, total)  # (G, n) indices
    for _ in range(levels):
        members = padded[groups]  # (G, n, 3)
        real = torch.isfinite(members)
        lo = torch.where(real, members, math.inf).amin(dim=1)
        hi = torch.where(real, members, -math.inf).amax(dim=1)
        axis = torch.nan_to_num(hi - lo, nan=0.0, posinf=0.0, neginf=0.0).argmax(dim=1)  # (G,)
        key = members.gather(2, axis[:, None, None].expand(-1, members.shape[1], 1)).squeeze(2)
        order = torch.argsort(key, dim=1, stable=True)
        groups = groups.gather(1, order).reshape(2 * len(groups), -1)
    order = groups.reshape(-1)
    return order[order < count]


@dataclass
class TriangleClusters:
    """Triangles in K clusters of S, and each cluster's dipole. The last cluster is padded
    with all-zero triangles, whose solid angle is exactly 0 from anywhere."""

    corners: torch.Tensor  # (3 corners, 3 xyz, K, S), components first (see module docstring)
    centers: torch.Tensor  # (K, 3) area-weighted centroid
    area_vectors: torch.Tensor  # (K, 3) sum over its triangles of area * unit normal
    radii: torch.Tensor  # (K,) max distance of a cluster vertex from its centre


def build_clusters(triangles: torch.Tensor, cluster_size: int) -> TriangleClusters:
    """Group triangles (F, 3, 3) into compact clusters of cluster_size (see kd_cluster_order)."""
    count = len(triangles)
    n_clusters = -(-count // cluster_size)
    padded = triangles.new_zeros(n_clusters * cluster_size, 3, 3)
    padded[:count] = triangles[kd_cluster_order(triangles.mean(dim=1), cluster_size)]
    padded = padded.view(n_clusters, cluster_size, 3, 3)
    real = (torch.arange(n_clusters * cluster_size, device=triangles.device) < count).view(n_clusters, cluster_size)

    a, b, c = padded.unbind(dim=2)
    area_vectors = 0.5 * torch.cross(b - a, c - a, dim=-1)  # (K, S, 3); zero for padding
    areas = area_vectors.norm(dim=-1)  # (K, S)
    # Area-weighted centre; a cluster of zero area (only slivers) falls back to the plain mean.
    weights = torch.where(areas.sum(1, keepdim=True) > 0, areas, real.to(areas.dtype))
    centers = (weights[..., None] * padded.mean(dim=2)).sum(1) / weights.sum(1, keepdim=True)
    corner_distance = (padded - centers[:, None, None, :]).norm(dim=-1).amax(dim=-1)  # (K, S)
    radii = torch.where(real, corner_distance, torch.zeros_like(corner_distance)).amax(dim=1)
    return TriangleClusters(padded.permute(2, 3, 0, 1).contiguous(), centers, area_vectors.sum(dim=1), radii)


def dipole_solid_angles(q: torch.Tensor, clusters: TriangleClusters) -> tuple[torch.Tensor, torch.Tensor]:
    """q (Q, 3) -> (squared distances to the cluster centres, dipole solid angles), both (Q, K).

    A cluster seen from far away is a dipole: its solid angle is about (c - q) . N / |c - q|^3.
    Both terms are written as (Q, 3) x (3, K) products so no (Q, K, 3) temporary is made; the
    cancellation this brings (~1e-7 absolute in float32 in the unit box) only matters for
    far clusters, where it is negligible against the dipole's own error.
    """
    c, n = clusters.centers, clusters.area_vectors
    # The floor keeps dist2 ** -1.5 finite in float32 (1e36) even for a query on a centre.
    dist2 = ((q * q).sum(1, keepdim=True) - 2.0 * q @ c.T + (c * c).sum(1)).clamp_min(1e-24)
    dipole = ((c * n).sum(1) - q @ n.T) * dist2 ** -1.5
    return dist2, dipole


class FastWindingNumber:
    """Winding numbers of many points against one mesh; the clusters are built once per device.

    ``FastWindingNumber(vertices, faces)(points)`` -> (N,) in float32 (float64 for float64
    points) on the points' device. A cluster farther than beta * radius from the query uses its
    dipole term. At 2 radii its error is ~10% of that cluster's solid angle, and it falls ~12x
    per doubling of the distance; with beta = 2 the winding numbers measured within 0.015-0.03
    of the exact ones (mean ~0.005) on spheres, open meshes and the armadillo: far too little
    to move a point across 1/2 away from the surface of a closed mesh, where w is 0 or 1.
    """

    def __init__(self, vertices, faces, *, cluster_size: int = 64, beta: float = 2.0):
        if cluster_size < 1 or beta <= 0:
            raise ValueError(f"need cluster_size >= 1 and beta > 0, got {cluster_size} and {beta}")
        self.vertices, self.faces = vertices, faces
        self.cluster_size, self.beta = cluster_size, beta
        self._clusters: dict[tuple, TriangleClusters] = {}  # per (device, dtype)

    def clusters(self, device, dtype) -> TriangleClusters:
        key = (torch.device(device), dtype)
        if key not in self._clusters:
            triangles = mesh_triangles(self.vertices, self.faces, device=device, dtype=dtype)
            # A mesh smaller than one cluster is one cluster of its own size (no padding work).
            size = min(self.cluster_size, max(1, len(triangles)))
            self._clusters[key] = build_clusters(triangles, size)
        return self._clusters[key]

    def __call__(self, points, *, chunk: int | None = None) -> torch.Tensor:
        """points (N, 3) -> (N,) winding numbers; ``chunk`` = points per block."""
        points = as_points(points)
        dtype = work_dtype(points)
        if len(points) == 0 or len(self.faces) == 0:  # no surface: nothing winds around anything
            return torch.zeros(len(points), dtype=dtype, device=points.device)
        clusters = self.clusters(points.device, dtype)
        chunk = chunk or max(1, pair_budget(points.device) // len(clusters.centers))
        return torch.cat([self._block(block.to(dtype), clusters) for block in points.split(chunk)])

    def _block(self, q: torch.Tensor, clusters: TriangleClusters) -> torch.Tensor:
        """q (Q, 3) -> (Q,): dipoles of far clusters + exact angles of near clusters' triangles."""
        dist2, dipole = dipole_solid_angles(q, clusters)
        near = dist2 <= (self.beta * clusters.radii) ** 2  # (Q, K)
        total = torch.where(near, torch.zeros_like(dipole), dipole).sum(dim=1)

        query_index, cluster_index = near.nonzero(as_tuple=True)
        size = clusters.corners.shape[-1]
        pairs_per_block = max(1, pair_budget(q.device) // size)
        q_components = q.T[:, :, None]  # (3, Q, 1)
        for qi, ci in zip(query_index.split(pairs_per_block), cluster_index.split(pairs_per_block)):
            a, b, c = clusters.corners[:, :, ci]  # each (3, P, S)
            omega = solid_angles(q_components[:, qi], a, b, c)  # (P, S)
            total = total.index_add(0, qi, omega.sum(dim=1))
        return total / FOUR_PI


def winding_numbers(points, vertices, faces, *, cluster_size: int = 64, beta: float = 2.0,
                    chunk: int | None = None) -> torch.Tensor:
    """Fast winding numbers (Barill et al. 2018, one level), (N, 3) -> (N,) on the points' device.

    One-shot wrapper around ``FastWindingNumber``; keep an instance to query one mesh often.
    """
    return FastWindingNumber(vertices, faces, cluster_size=cluster_size, beta=beta)(points, chunk=chunk)


def inside_mask(points, vertices, faces, **options) -> torch.Tensor:
    """(N,) bool: winding number > 1/2, i.e. inside the (possibly open) surface."""
    return winding_numbers(points, vertices, faces, **options) > 0.5
