"""Volume rendering maths as small pure functions (the NeRF quadrature, Max 1995).

Samples along a ray i have optical thickness ``tau_i = sigma_i * delta_i``; then
``alpha_i = 1 - exp(-tau_i)``, transmittance ``T_i = exp(-sum_{j<i} tau_j)`` and weight
``w_i = T_i * alpha_i``. Colour, depth and opacity are weight-sums.

Prefix sums run either over a dense (R, S) layout with zero thickness where a sample is
absent (``render_weights``; skipped space adds nothing) or over packed (M,) samples sorted
by ray (``render_weights_packed``); values are accumulated from packed samples with their
ray index.
"""

from __future__ import annotations

import torch


def render_weights(tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """tau (R, S) optical thickness per sample -> weights (R, S), final transmittance (R,)."""
    total = torch.cumsum(tau, dim=-1)
    exclusive = total - tau
    weights = torch.exp(-exclusive) * -torch.expm1(-tau)    # T_i * (1 - exp(-tau_i)), accurate for small tau
    return weights, torch.exp(-total[..., -1])


def render_weights_packed(tau: torch.Tensor, ray_index: torch.Tensor, n_rays: int
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """``render_weights`` on packed samples, with no (R, S) layout.

    tau (M,) optical thickness, ray_index (M,) int64 sorted ascending (each ray's samples
    contiguous and in marching order, as ``nonzero()`` of an (R, S) mask gives them)
    -> weights (M,), final transmittance (n_rays,) (1 for rays without samples).

    Prefix sums within each ray are differences of one global prefix sum, taken in float64:
    the global sum runs over every sample of the batch, and in float32 its rounding error
    (~1e-7 of the running total) would show up as a visible error in a ray's transmittance.
    """
    tau64 = tau.double()
    ray_total = torch.zeros(n_rays, dtype=torch.float64, device=tau.device).index_add(0, ray_index, tau64)
    ray_start = torch.cumsum(ray_total, 0) - ray_total           # global prefix sum before each ray
    # index_select, not [ray_index]: its backward is an index_add, not a sort-based index_put.
    exclusive = (torch.cumsum(tau64, 0) - tau64 - ray_start.index_select(0, ray_index)).clamp(min=0)
    weights = torch.exp(-exclusive).to(tau.dtype) * -torch.expm1(-tau)
    return weights, torch.exp(-ray_total).to(tau.dtype)


def render_weights_reference(tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same, sample by sample: T_{i+1} = T_i * (1 - alpha_i). Slow; for tests."""
    transmittance = torch.ones(tau.shape[0], dtype=tau.dtype, device=tau.device)
    weights = []
    for i in range(tau.shape[1]):
        alpha = 1.0 - torch.exp(-tau[:, i])
        weights.append(transmittance * alpha)
        transmittance = transmittance * (1.0 - alpha)
    return torch.stack(weights, dim=1), transmittance


def accumulate(weights: torch.Tensor, values: torch.Tensor, ray_index: torch.Tensor, n_rays: int) -> torch.Tensor:
    """Per-ray weighted sums of packed samples.

    weights (M,), values (M,) or (M, C), ray_index (M,) int64 in [0, n_rays) -> (n_rays,) or (n_rays, C).
    """
    weighted = values * (weights if values.dim() == 1 else weights[:, None])
    out = torch.zeros((n_rays,) + tuple(values.shape[1:]), dtype=weighted.dtype, device=weighted.device)
    return out.index_add(0, ray_index, weighted)


def accumulate_reference(weights: torch.Tensor, values: torch.Tensor, ray_index: torch.Tensor, n_rays: int
                         ) -> torch.Tensor:
    """The same with a Python loop over rays. Slow; for tests."""
    rows = []
    for ray in range(n_rays):
        mask = ray_index == ray
        w = weights[mask]
        v = values[mask]
        rows.append((v * (w if v.dim() == 1 else w[:, None])).sum(0))
    return torch.stack(rows)


def composite_background(rgb: torch.Tensor, opacity: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """rgb (R, 3) premultiplied by opacity (R,) over a background (3,) or (R, 3)."""
    return rgb + (1.0 - opacity)[:, None] * background
