"""The multiresolution hash encoding as one fused Triton kernel (forward and backward).

``fields.encodings.hash_grid_interpolate`` is the plain-PyTorch version and the reference:
it materializes (N, L, 2^D) corner indices and (N, L, 2^D, F) gathered features, a few
hundred MB per NeRF batch, and its backward is an index_add over as many rows. The kernel
here computes, for a block of points at one level, the corner indices, the trilinear
weights and the weighted sum in registers and writes only the (N, L*F) result; its
backward recomputes indices and weights and scatters ``grad * weight`` into the table with
atomic adds (what tiny-cuda-nn does).

Same contract as the reference: x (N, D) in [0, 1]^D (D = 2 or 3), table (L, T, F) with T a
power of two, resolutions (L,) int64, dense (L,) bool; returns (N, L*F). The index maths is
bit-for-bit the reference's (int64 products, masked to the table size), so only the order of
the 2^D-term sums differs. Gradients flow to the table only: a caller that needs d/dx (the
SDF task's normals, NeRF normals) uses the PyTorch path, see ``fused_hash_grid_applies``.
"""

from __future__ import annotations

import os

import torch

try:  # Triton ships with CUDA builds of torch; the CPU wheel has none.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    tl = None

# Must equal encodings._HASH_PRIMES (a test checks).
HASH_PRIMES = (1, 2654435761, 805459861)
BLOCK_POINTS = 256


def triton_available() -> bool:
    return triton is not None and torch.cuda.is_available()


def fused_kernels_enabled() -> bool:
    """Fused kernels are on unless INR_FUSED_KERNELS=0 (benchmarks compare both in one run)."""
    return os.environ.get("INR_FUSED_KERNELS", "1") != "0" and triton_available()


def fused_hash_grid_applies(x: torch.Tensor, table: torch.Tensor) -> bool:
    """True when the fused kernel can stand in for the reference on these inputs."""
    return (fused_kernels_enabled() and x.is_cuda and table.is_cuda and x.shape[1] in (2, 3)
            and table.shape[2] in (1, 2, 4, 8)     # Triton's tl.arange over the features needs a power of two
            and not (x.requires_grad and torch.is_grad_enabled())
            and x.dtype == torch.float32 and table.dtype == torch.float32)


if triton is not None:

    @triton.jit
    def _corner_index_and_weight(c0x, c0y, c0z, fx, fy, fz, stride, is_dense, table_mask,
                                 CORNER: tl.constexpr, D: tl.constexpr):
        """Table index (int64, before the level offset) and weight of one corner of a cell."""
        # The corner's offset along each axis, 0 or 1, known at compile time.
        bx = CORNER & 1
        by = (CORNER >> 1) & 1
        bz = (CORNER >> 2) & 1
        cx = c0x + bx
        cy = c0y + by
        wx = bx * fx + (1 - bx) * (1.0 - fx)
        wy = by * fy + (1 - by) * (1.0 - fy)
        dense_index = cx + cy * stride
        hashed = (cx * 1) ^ (cy * 2654435761)
        weight = wx * wy
        if D == 3:
            cz = c0z + bz
            wz = bz * fz + (1 - bz) * (1.0 - fz)
            dense_index = dense_index + cz * stride * stride
            hashed = hashed ^ (cz * 805459861)
            weight = weight * wz
        index = tl.where(is_dense, dense_index, hashed) & table_mask
        return index, weight

    @triton.jit
    def _cell(x_ptr, offs, mask, resolution_f, resolution, D: tl.constexpr):
        """Lower corner (int64) and fractional position of each point's cell on a level."""
        sx = tl.load(x_ptr + offs * D + 0, mask=mask, other=0.0) * resolution_f
        sy = tl.load(x_ptr + offs * D + 1, mask=mask, other=0.0) * resolution_f
        fl_x = tl.floor(sx)
        fl_y = tl.floor(sy)
        fx = sx - fl_x
        fy = sy - fl_y
        c0x = tl.minimum(tl.maximum(fl_x.to(tl.int64), 0), resolution - 1)
        c0y = tl.minimum(tl.maximum(fl_y.to(tl.int64), 0), resolution - 1)
        if D == 3:
            sz = tl.load(x_ptr + offs * D + 2, mask=mask, other=0.0) * resolution_f
            fl_z = tl.floor(sz)
            fz = sz - fl_z
            c0z = tl.minimum(tl.maximum(fl_z.to(tl.int64), 0), resolution - 1)
        else:
            fz = fx * 0.0
            c0z = c0x * 0
        return c0x, c0y, c0z, fx, fy, fz

    @triton.jit
    def _hash_grid_forward_kernel(x_ptr, table_ptr, resolution_ptr, dense_ptr, out_ptr, n_points,
                                  TABLE_SIZE: tl.constexpr, N_LEVELS: tl.constexpr, F: tl.constexpr,
                                  D: tl.constexpr, BLOCK: tl.constexpr):
        level = tl.program_id(1)
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n_points
        resolution = tl.load(resolution_ptr + level)
        is_dense = tl.load(dense_ptr + level) != 0
        c0x, c0y, c0z, fx, fy, fz = _cell(x_ptr, offs, mask, resolution.to(tl.float32), resolution, D)
        stride = resolution + 1
        base = table_ptr + level.to(tl.int64) * TABLE_SIZE * F
        # A corner's F features are adjacent in the table: one (BLOCK, F) load fetches them together.
        features = tl.arange(0, F)
        acc = tl.zeros([BLOCK, F], dtype=tl.float32)
        for corner in tl.static_range(2 ** D):
            index, weight = _corner_index_and_weight(c0x, c0y, c0z, fx, fy, fz, stride, is_dense,
                                                     TABLE_SIZE - 1, corner, D)
            acc += weight[:, None] * tl.load(base + index[:, None] * F + features[None, :], mask=mask[:, None],
                                             other=0.0)
        tl.store(out_ptr + offs[:, None] * (N_LEVELS * F) + level * F + features[None, :], acc, mask=mask[:, None])

    @triton.jit
    def _hash_grid_backward_kernel(x_ptr, grad_out_ptr, resolution_ptr, dense_ptr, grad_table_ptr, n_points,
                                   TABLE_SIZE: tl.constexpr, N_LEVELS: tl.constexpr, F: tl.constexpr,
                                   D: tl.constexpr, BLOCK: tl.constexpr):
        level = tl.program_id(1)
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n_points
        resolution = tl.load(resolution_ptr + level)
        is_dense = tl.load(dense_ptr + level) != 0
        c0x, c0y, c0z, fx, fy, fz = _cell(x_ptr, offs, mask, resolution.to(tl.float32), resolution, D)
        stride = resolution + 1
        base = grad_table_ptr + level.to(tl.int64) * TABLE_SIZE * F
        # One (BLOCK, F) atomic add per corner: the F adjacent features go as one vector reduction,
        # about twice as fast as F scalar atomics on an H200 (bench/bench_hash_grid_backward.py).
        features = tl.arange(0, F)
        grad = tl.load(grad_out_ptr + offs[:, None] * (N_LEVELS * F) + level * F + features[None, :],
                       mask=mask[:, None], other=0.0)
        for corner in tl.static_range(2 ** D):
            index, weight = _corner_index_and_weight(c0x, c0y, c0z, fx, fy, fz, stride, is_dense,
                                                     TABLE_SIZE - 1, corner, D)
            tl.atomic_add(base + index[:, None] * F + features[None, :], grad * weight[:, None],
                          mask=mask[:, None], sem="relaxed")


def _launch(kernel, x, tensor, resolutions, dense, out, table_shape) -> None:
    n_levels, table_size, n_features = table_shape
    n_points, dims = x.shape
    if n_points == 0:
        return
    grid = (triton.cdiv(n_points, BLOCK_POINTS), n_levels)
    kernel[grid](x, tensor, resolutions, dense, out, n_points, TABLE_SIZE=table_size, N_LEVELS=n_levels,
                 F=n_features, D=dims, BLOCK=BLOCK_POINTS)


class _FusedHashGrid(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, table, resolutions, dense):
        x = x.contiguous()
        table = table.contiguous()
        resolutions = resolutions.to(torch.int64).contiguous()
        dense = dense.to(torch.int32).contiguous()
        n_levels, _, n_features = table.shape
        out = torch.empty(len(x), n_levels * n_features, device=x.device, dtype=torch.float32)
        _launch(_hash_grid_forward_kernel, x, table, resolutions, dense, out, table.shape)
        ctx.save_for_backward(x, resolutions, dense)
        ctx.table_shape = tuple(table.shape)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, resolutions, dense = ctx.saved_tensors
        grad_table = torch.zeros(ctx.table_shape, device=x.device, dtype=torch.float32)
        _launch(_hash_grid_backward_kernel, x, grad_out.contiguous().float(), resolutions, dense, grad_table,
                ctx.table_shape)
        return None, grad_table, None, None


def fused_hash_grid_interpolate(x: torch.Tensor, table: torch.Tensor, resolutions: torch.Tensor,
                                dense: torch.Tensor) -> torch.Tensor:
    """The fused kernel (CUDA + Triton only); see the module docstring for the contract."""
    if not triton_available():
        raise RuntimeError("the fused hash-grid kernel needs CUDA and Triton")
    return _FusedHashGrid.apply(x, table, resolutions, dense)
