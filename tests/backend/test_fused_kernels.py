"""Fast paths against their plain PyTorch references, on fresh random inputs.

- packed render weights (segmented prefix sums) vs the dense (R, S) cumsum: CPU and GPU;
- the fused Triton hash-grid kernel vs ``hash_grid_interpolate_reference``: forward values
  and table gradients, 2D and 3D, dense and hashed levels, points on cell borders. These
  need CUDA and Triton and are skipped elsewhere (CPU CI); the H200 sweep runs them.
"""

from __future__ import annotations

import pytest
import torch

from inr_backend.fields import encodings
from inr_backend.fields.encodings import HashGridConfig, HashGridEncoding, hash_grid_interpolate_reference
from inr_backend.kernels import hash_grid
from inr_backend.render.compositing import render_weights, render_weights_packed

needs_triton = pytest.mark.skipif(not hash_grid.triton_available(), reason="needs CUDA and Triton")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def test_kernel_hash_primes_match_the_reference():
    assert hash_grid.HASH_PRIMES == encodings._HASH_PRIMES[:3]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_packed_render_weights_match_the_dense_cumsum(device, seed):
    generator = torch.Generator().manual_seed(seed)
    n_rays, n_steps = 300, 97
    # Sparse samples (as occupancy marching keeps them), thickness from tiny to opaque.
    keep = torch.rand(n_rays, n_steps, generator=generator) < 0.3
    keep[:7] = False                                       # rays with no samples at all
    tau_dense = torch.rand(n_rays, n_steps, generator=generator) ** 4 * 3.0 * keep
    tau_dense = tau_dense.double().to(device).requires_grad_(True)
    rays, steps = keep.to(device).nonzero().unbind(-1)

    weights_dense, transmittance_dense = render_weights(tau_dense)
    tau_packed = tau_dense.detach()[rays, steps].clone().requires_grad_(True)
    weights, transmittance = render_weights_packed(tau_packed, rays, n_rays)

    torch.testing.assert_close(weights, weights_dense[rays, steps], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(transmittance, transmittance_dense, rtol=1e-9, atol=1e-12)
    assert torch.all(transmittance[:7] == 1.0)

    probe = torch.rand(len(rays), generator=generator).double().to(device)
    (weights_dense[rays, steps] * probe).sum().add(transmittance_dense.sum()).backward()
    (weights * probe).sum().add(transmittance.sum()).backward()
    torch.testing.assert_close(tau_packed.grad, tau_dense.grad[rays, steps], rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("device", DEVICES)
def test_packed_render_weights_float32_stay_accurate_over_a_large_batch(device):
    """2^18 samples in 4096 rays: the float64 global prefix keeps late rays exact."""
    generator = torch.Generator().manual_seed(5)
    n_rays, per_ray = 4096, 64
    tau = (torch.rand(n_rays, per_ray, generator=generator) * 0.2).to(device)
    rays = torch.arange(n_rays, device=device).repeat_interleave(per_ray)
    weights, transmittance = render_weights_packed(tau.reshape(-1), rays, n_rays)
    weights_dense, transmittance_dense = render_weights(tau.double())
    torch.testing.assert_close(weights.double(), weights_dense.reshape(-1), rtol=2e-6, atol=1e-7)
    torch.testing.assert_close(transmittance.double(), transmittance_dense, rtol=2e-6, atol=1e-7)


def _random_grid(dims: int, seed: int, *, log2_table_size: int, finest: int):
    torch.manual_seed(seed)
    config = HashGridConfig(n_levels=8, features_per_level=2, log2_table_size=log2_table_size,
                            base_resolution=4, finest_resolution=finest)
    encoding = HashGridEncoding(config, dims).cuda()
    with torch.no_grad():
        encoding.table.uniform_(-1.0, 1.0)
    return encoding


@needs_triton
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("seed", [0, 1])
def test_fused_hash_grid_matches_the_reference(dims, seed):
    encoding = _random_grid(dims, seed, log2_table_size=12, finest=300)
    assert encoding.dense.any() and not encoding.dense.all()      # both index kinds are exercised
    x = torch.rand(20_011, dims, device="cuda")                   # not a multiple of the block size
    x[:16] = torch.tensor([0.0, 1.0], device="cuda")[torch.randint(0, 2, (16, dims))]  # box corners and faces
    x[16:32] = torch.randint(0, 4, (16, dims), device="cuda") / 4.0                   # on cell borders

    table_fused = encoding.table.detach().clone().requires_grad_(True)
    table_reference = encoding.table.detach().clone().requires_grad_(True)
    out_fused = hash_grid.fused_hash_grid_interpolate(x, table_fused, encoding.resolutions, encoding.dense)
    out_reference = hash_grid_interpolate_reference(x, table_reference, encoding.resolutions, encoding.dense)
    # Triton contracts x * res - floor(x * res) into a fused multiply-add, so a cell fraction can
    # differ from PyTorch's by one rounding of x * res: res * 2^-24 = 2e-5 at res 300, times
    # table values up to 1.
    torch.testing.assert_close(out_fused, out_reference, rtol=1e-5, atol=1e-4)

    grad_out = torch.randn_like(out_reference)
    (out_fused * grad_out).sum().backward()
    (out_reference * grad_out).sum().backward()
    # Atomic adds sum in any order: float32 reassociation over many points per coarse vertex.
    torch.testing.assert_close(table_fused.grad, table_reference.grad, rtol=1e-4, atol=2e-4)


@needs_triton
def test_hash_grid_encoding_uses_the_kernel_and_falls_back_for_input_gradients():
    encoding = _random_grid(3, 3, log2_table_size=14, finest=512)
    x = torch.rand(4096, 3, device="cuda") * 2 - 1
    assert hash_grid.fused_hash_grid_applies(((x + 1) * 0.5), encoding.table)
    reference = hash_grid_interpolate_reference(((x + 1) * 0.5), encoding.table, encoding.resolutions,
                                                encoding.dense)
    torch.testing.assert_close(encoding(x), reference, rtol=1e-5, atol=1e-4)

    # d/dx is needed for normals: the kernel does not provide it, so the PyTorch path runs.
    x_grad = x.clone().requires_grad_(True)
    assert not hash_grid.fused_hash_grid_applies(x_grad, encoding.table)
    (grad,) = torch.autograd.grad(encoding(x_grad).sum(), x_grad)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("device", DEVICES)
def test_packed_training_render_matches_the_dense_marcher(device):
    """render_rays_packed (fixed slots, CUDA training) against render_rays_marched (CPU training)."""
    from inr_backend.fields.radiance import NgpFieldConfig, NgpRadianceField
    from inr_backend.render.occupancy_grid import OccupancyGrid, OccupancyGridConfig
    from inr_backend.render.rays import ray_box
    from inr_backend.render.volume import render_rays_marched, render_rays_packed

    torch.manual_seed(0)
    field = NgpRadianceField(NgpFieldConfig()).to(device)
    grid = OccupancyGrid(OccupancyGridConfig(resolution=16)).to(device)
    grid.occupied.copy_(torch.rand(16 ** 3, device=device) < 0.3)
    origins = torch.nn.functional.normalize(torch.randn(64, 3, device=device), dim=-1) * 3.0
    dirs = torch.nn.functional.normalize(torch.randn(64, 3, device=device) * 0.3 - origins, dim=-1)
    t_near, t_far = ray_box(origins, dirs, near=0.0)
    jitter = torch.rand(64, device=device)
    step = 2.0 * 3 ** 0.5 / 128
    dense = render_rays_marched(field, grid.is_occupied, origins, dirs, t_near, t_far, step_size=step,
                                jitter=jitter, block_steps=None)
    packed = render_rays_packed(field, grid.is_occupied, origins, dirs, t_near, t_far, step_size=step,
                                max_steps=129, capacity=10 ** 5, jitter=jitter)
    assert packed["ray_valid"].all() and int(packed["n_samples"]) == dense["n_samples"] > 0
    torch.testing.assert_close(packed["rgb"], dense["rgb"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(packed["opacity"], dense["opacity"], rtol=1e-4, atol=1e-5)

    # Too few slots: whole rays are dropped, never cut short.
    small = render_rays_packed(field, grid.is_occupied, origins, dirs, t_near, t_far, step_size=step,
                               max_steps=129, capacity=dense["n_samples"] // 2, jitter=jitter)
    kept = small["ray_valid"]
    assert 0 < int(kept.sum()) < 64 and int(small["n_samples"]) <= dense["n_samples"] // 2
    torch.testing.assert_close(small["opacity"][kept], dense["opacity"][kept], rtol=1e-4, atol=1e-5)
