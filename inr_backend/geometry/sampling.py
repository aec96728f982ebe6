"""Training samples for a signed distance field: points and their exact signed distances.

Distance: exact unsigned distance to the triangles (``distance.MeshDistance``).
Sign: generalized winding numbers (``winding.FastWindingNumber``), inside where w > 1/2.
Why winding numbers: they give the right inside for closed meshes and a sensible one for
open, self-intersecting or non-manifold meshes (about 1/2 across a hole, so the inside still
"closes" across it). Ray parity (even/odd crossings) is wrong as soon as the mesh has a
hole: rays through the hole miss a wall and flip the sign of whole regions. And trimesh's
``contains`` (ray tests) without the optional embreex package took minutes and over 24 GB
for 100k points on a 6k-face mesh, while the fast winding number runs on the GPU in torch.

The mesh is expected in the unit box already (the caller normalizes it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .distance import MeshDistance
from .winding import FastWindingNumber, mesh_triangles


@dataclass
class SdfSamples:
    """Training points (N, 3) and their signed distances (N,), float32, negative inside."""

    points: torch.Tensor
    sdf: torch.Tensor

    def __len__(self) -> int:
        return len(self.points)

    def to(self, device) -> "SdfSamples":
        return SdfSamples(self.points.to(device), self.sdf.to(device))


def sample_surface(vertices, faces, n: int, *, generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n area-uniform random points on the mesh surface.

    vertices (V, 3), faces (F, 3) (tensors or arrays) -> points (n, 3), unit normals (n, 3)
    (from the face orientation), face_ids (n,) int64; on the vertices' device (CPU for arrays),
    float64 for float64 vertices, else float32. Random numbers come from ``generator`` on its
    own device, so a seeded CPU generator gives the same points whatever the mesh's device.
    """
    vertices = vertices if torch.is_tensor(vertices) else torch.as_tensor(np.asarray(vertices))
    dtype = torch.float64 if vertices.dtype == torch.float64 else torch.float32
    device = vertices.device
    triangles = mesh_triangles(vertices, faces, device=device, dtype=dtype)  # (F, 3, 3)
    a, b, c = triangles.unbind(dim=1)
    cross = torch.cross(b - a, c - a, dim=-1)
    areas = cross.norm(dim=-1)
    if len(triangles) == 0 or not bool(areas.sum() > 0):
        raise ValueError("cannot sample the surface of a mesh with no area")

    rand_device = generator.device if generator is not None else device
    # Inverse-CDF face choice in float64: no category limit (torch.multinomial has one).
    cdf = torch.cumsum(areas.to(torch.float64), dim=0)
    cdf = cdf / cdf[-1]
    pick = torch.rand(n, generator=generator, device=rand_device, dtype=torch.float64).to(device)
    face_ids = torch.searchsorted(cdf, pick, right=True).clamp_max(len(triangles) - 1)

    uv = torch.rand(n, 2, generator=generator, device=rand_device, dtype=dtype).to(device)
    flip = uv.sum(dim=1, keepdim=True) > 1.0  # fold the unit square onto the triangle
    uv = torch.where(flip, 1.0 - uv, uv)
    points = (a[face_ids] + uv[:, :1] * (b - a)[face_ids] + uv[:, 1:] * (c - a)[face_ids])
    normals = cross[face_ids] / areas[face_ids, None].clamp_min(torch.finfo(dtype).tiny)
    return points, normals, face_ids


def sample_sdf(vertices, faces, *, n_surface: int, n_near: int, n_uniform: int,
               near_sigmas: tuple[float, ...] = (0.01, 0.002), bounds: float = 1.0, seed: int = 0,
               device=None, distance_k: int = 8, winding: FastWindingNumber | None = None) -> SdfSamples:
    """Training samples for the mesh (in the unit box), as float32 tensors on ``device``.

      * n_surface points on the surface (sdf 0),
      * n_near surface points moved by isotropic Gaussian noise, split evenly over near_sigmas
        (a wide sigma teaches the field's slope, a narrow one pins the zero level),
      * n_uniform points uniform in [-bounds, bounds]^3 (the far field).
    Random numbers come from a CPU generator seeded with ``seed``: same samples on any device.
    ``winding``: a FastWindingNumber of this mesh to reuse (the caller may need it again).
    """
    vertices = vertices if torch.is_tensor(vertices) else torch.as_tensor(np.asarray(vertices))
    faces = faces if torch.is_tensor(faces) else torch.as_tensor(np.asarray(faces))
    device = torch.device(device) if device is not None else vertices.device
    vertices, faces = vertices.to(device=device, dtype=torch.float32), faces.to(device)
    generator = torch.Generator(device="cpu").manual_seed(seed)

    surface, _, _ = sample_surface(vertices, faces, n_surface, generator=generator)
    near = _near_surface_points(vertices, faces, n_near, near_sigmas, generator)
    uniform = ((torch.rand(n_uniform, 3, generator=generator) * 2.0 - 1.0) * bounds).to(device)

    off_surface = torch.cat([near, uniform])
    distance = MeshDistance(vertices, faces)(off_surface, k=distance_k)
    winding = winding if winding is not None else FastWindingNumber(vertices, faces)
    inside = winding(off_surface) > 0.5
    sdf = torch.where(inside, -distance, distance)

    points = torch.cat([surface, off_surface]).to(torch.float32)
    sdf = torch.cat([torch.zeros(n_surface, device=device), sdf.to(torch.float32)])
    return SdfSamples(points, sdf)


def _near_surface_points(vertices: torch.Tensor, faces: torch.Tensor, n: int, sigmas: tuple[float, ...],
                         generator: torch.Generator) -> torch.Tensor:
    """(n, 3) surface samples plus N(0, sigma^2 I) noise, on the vertices' device; n is split
    evenly over sigmas (the first sigmas take the remainder)."""
    if n == 0:
        return vertices.new_zeros(0, 3)
    if not sigmas:
        raise ValueError("near-surface samples need at least one sigma in near_sigmas")
    counts = [n // len(sigmas) + (i < n % len(sigmas)) for i in range(len(sigmas))]
    base, _, _ = sample_surface(vertices, faces, n, generator=generator)
    scale = torch.cat([torch.full((count, 1), float(sigma)) for count, sigma in zip(counts, sigmas)])
    return base + (scale * torch.randn(n, 3, generator=generator)).to(base)
