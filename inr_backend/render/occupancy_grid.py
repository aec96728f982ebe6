"""An occupancy grid over the unit box that lets ray marching skip empty space (instant-ngp).

The grid keeps a running estimate of each cell's density (an exponential moving average of
the field's density at random points in the cell) and marks a cell occupied when a sample
there would be visibly opaque, ``density * step_size > threshold``, or merely above the
grid's mean density (nerfacc's rule: early in training, when every density is small, the
densest cells stay occupied instead of the whole grid going empty).

Marching places samples at a fixed step along each ray between its box entry and exit and
keeps those whose cell is occupied. ``march_rays`` does it for all rays at once on a dense
(R, S) layout; ``march_rays_reference`` walks ray by ray, for tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class OccupancyGridConfig:
    resolution: int = 128
    update_every: int = 16           # steps between updates
    warmup_steps: int = 256          # update every cell during warm-up, then a sample of cells
    decay: float = 0.95              # EMA decay of the stored densities
    threshold: float = 0.01          # opacity of one step above which a cell is occupied


class OccupancyGrid(torch.nn.Module):
    """A (res, res, res) grid over [-1, 1]^3; index [i, j, k] is cell (x_i, y_j, z_k)."""

    def __init__(self, config: OccupancyGridConfig):
        super().__init__()
        self.config = config
        res = config.resolution
        self.register_buffer("density", torch.zeros(res ** 3))
        self.register_buffer("occupied", torch.ones(res ** 3, dtype=torch.bool))   # all occupied until updated

    @property
    def resolution(self) -> int:
        return self.config.resolution

    def cell_index(self, points: torch.Tensor) -> torch.Tensor:
        """points (M, 3) in the unit box -> flat cell index (M,) (points outside clamp to the border)."""
        res = self.config.resolution
        cell = ((points + 1.0) * (0.5 * res)).long().clamp_(0, res - 1)
        return (cell[:, 0] * res + cell[:, 1]) * res + cell[:, 2]

    def is_occupied(self, points: torch.Tensor) -> torch.Tensor:
        return self.occupied[self.cell_index(points)]

    def cell_centers(self, index: torch.Tensor) -> torch.Tensor:
        res = self.config.resolution
        ijk = torch.stack([index // (res * res), (index // res) % res, index % res], dim=-1)
        return (ijk.to(torch.float32) + 0.5) * (2.0 / res) - 1.0

    @torch.no_grad()
    def update(self, density_fn, *, step: int, step_size: float, generator: torch.Generator | None = None,
               chunk: int = 2 ** 20) -> None:
        """Re-estimate densities; ``density_fn(points (M, 3)) -> (M,)``.

        During warm-up every cell is visited; later a random quarter of all cells plus as many
        occupied ones, which keeps the update cheap while occupied cells stay fresh.
        """
        res = self.config.resolution
        n_cells = res ** 3
        device = self.density.device
        if step < self.config.warmup_steps:
            index = torch.arange(n_cells, device=device)
        else:
            uniform = torch.randint(0, n_cells, (n_cells // 4,), device=device, generator=generator)
            occupied = self.occupied.nonzero()[:, 0]
            if len(occupied) > n_cells // 4:
                occupied = occupied[torch.randint(0, len(occupied), (n_cells // 4,), device=device,
                                                  generator=generator)]
            index = torch.cat([uniform, occupied])
        jitter = torch.rand(len(index), 3, device=device, generator=generator) - 0.5
        points = self.cell_centers(index) + jitter * (2.0 / res)
        values = torch.cat([density_fn(part).float() for part in points.split(chunk)])
        previous = self.density[index] * self.config.decay
        self.density.index_put_((index,), torch.maximum(previous, values))   # max over duplicate indices too
        # Occupied above min(mean density, the threshold's density): nerfacc's rule.
        threshold = torch.clamp(self.density.mean(), max=self.config.threshold / step_size)
        self.occupied.copy_(self.density > threshold)


def march_rays(origins: torch.Tensor, dirs: torch.Tensor, t_near: torch.Tensor, t_far: torch.Tensor, *,
               step_size: float, is_occupied, jitter: torch.Tensor | None = None, first_step: int = 0,
               n_steps: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples at t = t_near + (first_step + k + jitter) * step_size that lie before t_far in an occupied cell.

    origins, dirs (R, 3); t_near, t_far (R,); jitter (R,) in [0, 1) or None (= 0.5, the midpoint);
    is_occupied(points (M, 3)) -> (M,) bool. ``n_steps`` caps the number of steps (default: enough
    for the longest ray).
    returns t (R, S) sample distances and keep (R, S) bool.
    """
    if n_steps is None:
        longest = float((t_far - t_near).max()) if len(t_near) else 0.0
        n_steps = max(int(longest / step_size + 1) - first_step, 0)
    offsets = torch.arange(first_step, first_step + n_steps, device=origins.device, dtype=origins.dtype)
    shift = 0.5 if jitter is None else jitter[:, None]
    t = t_near[:, None] + (offsets[None, :] + shift) * step_size                # (R, S)
    keep = t < t_far[:, None]
    candidates = keep.nonzero()
    if len(candidates):
        rays, steps = candidates.unbind(-1)
        points = origins[rays] + t[rays, steps, None] * dirs[rays]
        keep[rays, steps] = is_occupied(points)
    return t, keep


def march_rays_reference(origins, dirs, t_near, t_far, *, step_size: float, is_occupied, jitter=None):
    """Per ray: the list of (step index, t) kept by marching. Slow; for tests."""
    kept = []
    for ray in range(len(origins)):
        shift = 0.5 if jitter is None else float(jitter[ray])
        samples, k = [], 0
        while True:
            t = float(t_near[ray]) + (k + shift) * step_size
            if not t < float(t_far[ray]):
                break
            point = origins[ray] + t * dirs[ray]
            if bool(is_occupied(point[None])[0]):
                samples.append((k, t))
            k += 1
        kept.append(samples)
    return kept
