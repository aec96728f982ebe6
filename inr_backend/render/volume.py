"""Rendering rays through radiance fields: occupancy-grid marching (fast model) and
hierarchical coarse/fine sampling (reference model). Inputs and outputs are flat tensors.

Both return a dict of per-ray tensors:
  rgb (R, 3) premultiplied colour (composite over a background with
  ``compositing.composite_background``), opacity (R,), depth (R,) expected ray distance
  (weights-sum of t, 0 where nothing is hit; divide by opacity for the surface distance),
  and n_samples (int, field evaluations).
"""

from __future__ import annotations

import torch

from .compositing import accumulate, render_weights, render_weights_packed
from .occupancy_grid import march_rays


def _sample_normals(field, points: torch.Tensor) -> torch.Tensor:
    """Unit normals (M, 3) as the negative normalized density gradient (autograd)."""
    with torch.enable_grad():
        points = points.detach().requires_grad_(True)
        density = field.density(points)
        (grad,) = torch.autograd.grad(density.sum(), points)
    return -torch.nn.functional.normalize(grad, dim=-1)


def render_rays_marched(field, is_occupied, origins: torch.Tensor, dirs: torch.Tensor, t_near: torch.Tensor,
                        t_far: torch.Tensor, *, step_size: float, jitter: torch.Tensor | None = None,
                        block_steps: int | None = None, early_stop: float = 0.0, normals: bool = False
                        ) -> dict[str, torch.Tensor]:
    """Render rays (R,) with samples every ``step_size`` in occupied cells.

    With ``block_steps=None`` all steps are marched at once (training: differentiable, no
    early stop). With a block size, rays advance ``block_steps`` steps at a time and stop once
    their transmittance is below ``early_stop`` (inference: most rays end at the first surface).
    """
    n_rays = len(origins)
    device, dtype = origins.device, origins.dtype
    rgb = torch.zeros(n_rays, 3, device=device, dtype=dtype)
    depth = torch.zeros(n_rays, device=device, dtype=dtype)
    normal = torch.zeros(n_rays, 3, device=device, dtype=dtype) if normals else None
    transmittance = torch.ones(n_rays, device=device, dtype=dtype)
    active = (t_far > t_near).nonzero()[:, 0]
    first_step, n_samples = 0, 0
    while len(active):
        o, d = origins[active], dirs[active]
        t, keep = march_rays(o, d, t_near[active], t_far[active], step_size=step_size, is_occupied=is_occupied,
                             jitter=None if jitter is None else jitter[active], first_step=first_step,
                             n_steps=block_steps)
        if keep.any():
            rays, steps = keep.nonzero().unbind(-1)
            t_kept = t[rays, steps]
            points = o[rays] + t_kept[:, None] * d[rays]
            density, sample_rgb = field(points, d[rays])
            weights, block_transmittance = render_weights_packed(density.to(dtype) * step_size, rays, len(active))
            w = weights * transmittance[active][rays]
            ray_ids = active[rays]
            rgb = rgb.index_add(0, ray_ids, w[:, None] * sample_rgb.to(dtype))
            depth = depth.index_add(0, ray_ids, w * t_kept)
            if normals:
                normal = normal.index_add(0, ray_ids, w[:, None] * _sample_normals(field, points))
            transmittance = transmittance.index_put((active,), transmittance[active] * block_transmittance)
            n_samples += len(rays)
        if block_steps is None:
            break
        first_step += block_steps
        alive = t_near[active] + first_step * step_size < t_far[active]
        if early_stop > 0:
            alive &= transmittance[active] > early_stop
        active = active[alive]
    out = {"rgb": rgb, "opacity": 1.0 - transmittance, "depth": depth, "n_samples": n_samples}
    if normals:
        out["normal"] = normal
    return out


def march_rays_packed(origins: torch.Tensor, dirs: torch.Tensor, t_near: torch.Tensor, t_far: torch.Tensor, *,
                      step_size: float, max_steps: int, capacity: int, is_occupied, jitter: torch.Tensor
                      ) -> dict[str, torch.Tensor]:
    """Occupancy marching into a fixed number of packed sample slots, with no host sync.

    Samples are those of ``march_rays`` (t = t_near + (k + jitter) * step_size < t_far, in an
    occupied cell, k < max_steps). Rays are packed in order; a ray whose samples do not all
    fit in ``capacity`` slots is dropped whole (a ray cut short would render too transparent),
    so the caller trains on ``ray_valid`` rays only. Every shape depends on R, max_steps and
    capacity alone, so the GPU never waits for the host to learn how many samples there are.

    returns ray_index (capacity,) int64 sorted, with R (a dummy ray) in unused slots;
    t (capacity,); valid (capacity,) bool; ray_valid (R,) bool; n_samples () int64.
    """
    n_rays = len(origins)
    offsets = torch.arange(max_steps, device=origins.device, dtype=origins.dtype)
    t = t_near[:, None] + (offsets[None, :] + jitter[:, None]) * step_size            # (R, S)
    points = origins[:, None, :] + t[..., None] * dirs[:, None, :]
    keep = (t < t_far[:, None]) & is_occupied(points.reshape(-1, 3)).reshape(t.shape)
    ray_end = torch.cumsum(keep.sum(1), 0)                                            # (R,) packed end of each ray
    ray_valid = ray_end <= capacity
    keep &= ray_valid[:, None]
    flat_keep = keep.reshape(-1)
    # Slot of each kept sample; everything else goes to a spill slot at `capacity`.
    slot = torch.where(flat_keep, torch.cumsum(flat_keep, 0) - 1, capacity)
    source = torch.full((capacity + 1,), t.numel(), dtype=torch.long, device=t.device)
    source.scatter_(0, slot, torch.arange(t.numel(), device=t.device))
    source = source[:capacity]
    valid = source < t.numel()
    source = torch.where(valid, source, 0)
    ray_index = torch.where(valid, source // max_steps, n_rays)
    return {"ray_index": ray_index, "t": t.reshape(-1)[source], "valid": valid, "ray_valid": ray_valid,
            "n_samples": valid.sum()}


def render_rays_packed(field, is_occupied, origins: torch.Tensor, dirs: torch.Tensor, t_near: torch.Tensor,
                       t_far: torch.Tensor, *, step_size: float, max_steps: int, capacity: int,
                       jitter: torch.Tensor) -> dict[str, torch.Tensor]:
    """Training render: ``render_rays_marched``'s maths on ``march_rays_packed``'s fixed slots.

    returns rgb (R, 3) premultiplied, opacity (R,), depth (R,), ray_valid (R,) bool (train on
    these rays only) and n_samples (a 0-d tensor: reading it would sync the device).
    """
    n_rays = len(origins)
    march = march_rays_packed(origins, dirs, t_near, t_far, step_size=step_size, max_steps=max_steps,
                              capacity=capacity, is_occupied=is_occupied, jitter=jitter)
    rays, t, valid = march["ray_index"], march["t"], march["valid"]
    safe_rays = rays.clamp(max=n_rays - 1)
    points = origins[safe_rays] + t[:, None] * dirs[safe_rays]
    density, sample_rgb = field(points, dirs[safe_rays])
    tau = torch.where(valid, density.to(origins.dtype) * step_size, 0.0)
    weights, transmittance = render_weights_packed(tau, rays, n_rays + 1)
    rgb = accumulate(weights, sample_rgb.to(origins.dtype), rays, n_rays + 1)[:n_rays]
    depth = accumulate(weights, t, rays, n_rays + 1)[:n_rays]
    return {"rgb": rgb, "opacity": 1.0 - transmittance[:n_rays], "depth": depth, "ray_valid": march["ray_valid"],
            "n_samples": march["n_samples"]}


# --------------------------------------------------------------------------- hierarchical sampling


def stratified_samples(t_near: torch.Tensor, t_far: torch.Tensor, n: int, *, perturb: bool,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """(R, n) sorted distances, one per equal bin of [t_near, t_far] (jittered in the bin when perturb)."""
    edges = torch.linspace(0.0, 1.0, n + 1, device=t_near.device, dtype=t_near.dtype)
    lower, width = edges[:-1], 1.0 / n
    u = torch.rand(len(t_near), n, device=t_near.device, dtype=t_near.dtype, generator=generator) if perturb \
        else torch.full((len(t_near), n), 0.5, device=t_near.device, dtype=t_near.dtype)
    fraction = lower[None] + u * width
    return t_near[:, None] + (t_far - t_near)[:, None] * fraction


def sample_pdf(bins: torch.Tensor, weights: torch.Tensor, n: int, *, perturb: bool,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Inverse-transform sampling of a piecewise-constant pdf.

    bins (R, B+1) bin edges; weights (R, B) >= 0 -> (R, n) samples (sorted when not perturbed).
    """
    weights = weights + 1e-5                                    # no zero-probability rays
    pdf = weights / weights.sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, -1)], dim=-1)   # (R, B+1)
    if perturb:
        u = torch.rand(len(bins), n, device=bins.device, dtype=bins.dtype, generator=generator)
    else:
        u = torch.linspace(0.0, 1.0, n, device=bins.device, dtype=bins.dtype).expand(len(bins), n)
    u = u.contiguous()
    index = torch.searchsorted(cdf, u, right=True)
    below = (index - 1).clamp(min=0)
    above = index.clamp(max=cdf.shape[-1] - 1)
    cdf_below, cdf_above = cdf.gather(1, below), cdf.gather(1, above)
    bin_below, bin_above = bins.gather(1, below), bins.gather(1, above)
    span = torch.where(cdf_above - cdf_below < 1e-5, torch.ones_like(u), cdf_above - cdf_below)
    return bin_below + (u - cdf_below) / span * (bin_above - bin_below)


def _render_samples(field, origins, dirs, t: torch.Tensor, t_far: torch.Tensor, normals: bool = False):
    """Dense samples t (R, S) -> rendered dict and weights (R, S)."""
    n_rays, n = t.shape
    points = origins[:, None] + t[..., None] * dirs[:, None]
    density, rgb = field(points.reshape(-1, 3), dirs[:, None].expand(n_rays, n, 3).reshape(-1, 3))
    deltas = torch.cat([t[:, 1:] - t[:, :-1], (t_far[:, None] - t[:, -1:]).clamp(min=0)], dim=-1)
    weights, transmittance = render_weights(density.reshape(n_rays, n) * deltas)
    out = {"rgb": (weights[..., None] * rgb.reshape(n_rays, n, 3)).sum(1), "opacity": 1.0 - transmittance,
           "depth": (weights * t).sum(1), "n_samples": n_rays * n}
    if normals:
        sample_normals = _sample_normals(field, points.reshape(-1, 3)).reshape(n_rays, n, 3)
        out["normal"] = (weights[..., None] * sample_normals).sum(1)
    return out, weights


def render_rays_hierarchical(coarse, fine, origins: torch.Tensor, dirs: torch.Tensor, t_near: torch.Tensor,
                             t_far: torch.Tensor, *, n_coarse: int = 64, n_fine: int = 128, perturb: bool = True,
                             generator: torch.Generator | None = None, normals: bool = False
                             ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The original NeRF renderer: (coarse result, fine result) for rays (R,).

    Rays that miss the box get zero-length intervals and so render as pure background.
    """
    t_far = torch.maximum(t_far, t_near)
    t_coarse = stratified_samples(t_near, t_far, n_coarse, perturb=perturb, generator=generator)
    coarse_out, coarse_weights = _render_samples(coarse, origins, dirs, t_coarse, t_far)
    mids = 0.5 * (t_coarse[:, 1:] + t_coarse[:, :-1])
    t_extra = sample_pdf(mids, coarse_weights[:, 1:-1].detach(), n_fine, perturb=perturb, generator=generator)
    t_all, _ = torch.sort(torch.cat([t_coarse, t_extra.detach()], dim=-1), dim=-1)
    fine_out, _ = _render_samples(fine, origins, dirs, t_all, t_far, normals=normals)
    fine_out["n_samples"] += coarse_out["n_samples"]
    return coarse_out, fine_out
