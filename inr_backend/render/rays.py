"""Camera rays in the unit box, and where they cross it.

Cameras are 4x4 OpenGL camera-to-world matrices (x right, y up, looking down -z; Blender's
``matrix_world``) with pinhole intrinsics in pixels (image y down, pixel i covers [i, i+1)),
as ``inr_backend.datasets`` reads them. Training and rendering work in the unit box of
normalization.json: ``p_unit = (p_world - center) * scale``, so directions are unchanged and
distances scale by ``scale``.
"""

from __future__ import annotations

import numpy as np
import torch


def cameras_to_unit(c2w_world: np.ndarray, normalization: dict) -> np.ndarray:
    """(N, 4, 4) camera-to-world in world units -> the same cameras in the unit box."""
    c2w = np.array(c2w_world, dtype=np.float64, copy=True).reshape(-1, 4, 4)
    center = np.asarray(normalization["center"], dtype=np.float64)
    c2w[:, :3, 3] = (c2w[:, :3, 3] - center) * float(normalization["scale"])
    return c2w


def pixel_rays(c2w: torch.Tensor, intrinsics: torch.Tensor, px: torch.Tensor, py: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rays through pixel centres.

    c2w:        (R, 4, 4) or (4, 4) camera-to-world (unit box).
    intrinsics: (R, 4) or (4,) fx, fy, cx, cy in pixels.
    px, py:     (R,) pixel column and row (integers or floats; the centre is +0.5).
    returns     origins (R, 3), unit directions (R, 3), and z_per_t (R,): the camera-axis depth
                per unit of ray length (so z-depth = t * z_per_t).
    """
    fx, fy, cx, cy = intrinsics.unbind(-1)
    x = (px.to(c2w.dtype) + 0.5 - cx) / fx
    y = -(py.to(c2w.dtype) + 0.5 - cy) / fy        # image y is down, camera y is up
    camera_dirs = torch.stack([x, y, -torch.ones_like(x)], dim=-1)       # (R, 3), z = -1
    rotation = c2w[..., :3, :3]
    dirs = (rotation @ camera_dirs[..., None])[..., 0] if rotation.dim() == 3 else camera_dirs @ rotation.T
    norm = dirs.norm(dim=-1, keepdim=True)
    origins = c2w[..., :3, 3].expand_as(dirs)
    return origins.contiguous(), dirs / norm, 1.0 / norm[:, 0]


def image_rays(c2w: torch.Tensor, intrinsics: torch.Tensor, width: int, height: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All rays of one (height, width) image, row-major: origins, dirs (H*W, 3), z_per_t (H*W,)."""
    device = c2w.device
    py, px = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    return pixel_rays(c2w, intrinsics, px.reshape(-1), py.reshape(-1))


def ray_box(origins: torch.Tensor, dirs: torch.Tensor, bound: float = 1.0, near: float = 0.0
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry and exit distances of rays through the box [-bound, bound]^3 (slab method).

    origins, dirs (R, 3) -> t_near, t_far (R,); a ray that misses has t_far <= t_near.
    t_near is at least ``near`` (cameras inside the box start at the camera).
    """
    safe = torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    t0 = (-bound - origins) / safe
    t1 = (bound - origins) / safe
    t_near = torch.minimum(t0, t1).amax(dim=-1).clamp(min=near)
    t_far = torch.maximum(t0, t1).amin(dim=-1)
    return t_near, t_far
