"""Micro-benchmark: variants of the fused hash grid's backward (atomic adds into the table).

    python bench/bench_hash_grid_backward.py [--json out.json]

Points come as NeRF training gives them: runs of consecutive samples along random rays
(step 2 sqrt(3) / 1024 in the unit box, 20 per ray, 2^18 in all), so neighbouring points
share coarse cells, as in training. Each variant's table gradient is checked against the
module's kernel, then timed (median of CUDA-event timings). Prints a table, writes JSON.
CUDA + Triton only.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from inr_backend.fields.encodings import HashGridConfig, HashGridEncoding  # noqa: E402
from inr_backend.kernels import hash_grid  # noqa: E402


@triton.jit
def _backward_scalar_kernel(x_ptr, grad_out_ptr, resolution_ptr, dense_ptr, grad_table_ptr, n_points,
                            TABLE_SIZE: tl.constexpr, N_LEVELS: tl.constexpr, F: tl.constexpr,
                            D: tl.constexpr, BLOCK: tl.constexpr):
    """The first version (to commit 6a50ccb): feature-outer, one scalar atomic add per feature and corner."""
    level = tl.program_id(1)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_points
    resolution = tl.load(resolution_ptr + level)
    is_dense = tl.load(dense_ptr + level) != 0
    c0x, c0y, c0z, fx, fy, fz = hash_grid._cell(x_ptr, offs, mask, resolution.to(tl.float32), resolution, D)
    stride = resolution + 1
    base = grad_table_ptr + level.to(tl.int64) * TABLE_SIZE * F
    grad_row = grad_out_ptr + offs * (N_LEVELS * F) + level * F
    for f in tl.static_range(F):
        grad = tl.load(grad_row + f, mask=mask, other=0.0)
        for corner in tl.static_range(2 ** D):
            index, weight = hash_grid._corner_index_and_weight(c0x, c0y, c0z, fx, fy, fz, stride, is_dense,
                                                               TABLE_SIZE - 1, corner, D)
            tl.atomic_add(base + index * F + f, grad * weight, mask=mask, sem="relaxed")


@triton.jit
def _backward_pairs_kernel(x_ptr, grad_out_ptr, resolution_ptr, dense_ptr, grad_table_ptr, n_points,
                           TABLE_SIZE: tl.constexpr, N_LEVELS: tl.constexpr, F: tl.constexpr,
                           D: tl.constexpr, BLOCK: tl.constexpr):
    """Corner-outer, all F features of a corner in one (BLOCK, F) atomic add."""
    level = tl.program_id(1)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_points
    resolution = tl.load(resolution_ptr + level)
    is_dense = tl.load(dense_ptr + level) != 0
    c0x, c0y, c0z, fx, fy, fz = hash_grid._cell(x_ptr, offs, mask, resolution.to(tl.float32), resolution, D)
    stride = resolution + 1
    base = grad_table_ptr + level.to(tl.int64) * TABLE_SIZE * F
    features = tl.arange(0, F)
    grad = tl.load(grad_out_ptr + offs[:, None] * (N_LEVELS * F) + level * F + features[None, :],
                   mask=mask[:, None], other=0.0)
    for corner in tl.static_range(2 ** D):
        index, weight = hash_grid._corner_index_and_weight(c0x, c0y, c0z, fx, fy, fz, stride, is_dense,
                                                           TABLE_SIZE - 1, corner, D)
        tl.atomic_add(base + index[:, None] * F + features[None, :], grad * weight[:, None],
                      mask=mask[:, None], sem="relaxed")


@triton.jit
def _backward_corner_outer_kernel(x_ptr, grad_out_ptr, resolution_ptr, dense_ptr, grad_table_ptr, n_points,
                                  TABLE_SIZE: tl.constexpr, N_LEVELS: tl.constexpr, F: tl.constexpr,
                                  D: tl.constexpr, BLOCK: tl.constexpr):
    """Corner-outer with scalar atomics (F == 2): each corner's index and weight computed once."""
    level = tl.program_id(1)
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_points
    resolution = tl.load(resolution_ptr + level)
    is_dense = tl.load(dense_ptr + level) != 0
    c0x, c0y, c0z, fx, fy, fz = hash_grid._cell(x_ptr, offs, mask, resolution.to(tl.float32), resolution, D)
    stride = resolution + 1
    base = grad_table_ptr + level.to(tl.int64) * TABLE_SIZE * F
    row = grad_out_ptr + offs * (N_LEVELS * F) + level * F
    g0 = tl.load(row, mask=mask, other=0.0)
    g1 = tl.load(row + 1, mask=mask, other=0.0)
    for corner in tl.static_range(2 ** D):
        index, weight = hash_grid._corner_index_and_weight(c0x, c0y, c0z, fx, fy, fz, stride, is_dense,
                                                           TABLE_SIZE - 1, corner, D)
        tl.atomic_add(base + index * F, g0 * weight, mask=mask, sem="relaxed")
        tl.atomic_add(base + index * F + 1, g1 * weight, mask=mask, sem="relaxed")


def ray_points(n_rays: int, per_ray: int, device) -> torch.Tensor:
    """(n_rays * per_ray, 3) in [0, 1]^3: consecutive samples along random rays near the centre."""
    g = torch.Generator(device=device).manual_seed(0)
    start = torch.rand(n_rays, 3, device=device, generator=g) * 0.6 + 0.2
    direction = torch.nn.functional.normalize(torch.randn(n_rays, 3, device=device, generator=g), dim=-1)
    step = math.sqrt(3.0) / 1024          # 2 sqrt(3) / 1024 in [-1, 1]^3 is half that in [0, 1]^3
    k = torch.arange(per_ray, device=device, dtype=torch.float32)
    points = start[:, None, :] + k[None, :, None] * step * direction[:, None, :]
    return points.reshape(-1, 3).clamp(0.0, 1.0).contiguous()


def time_ms(fn, repeats: int = 30) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=str(REPO / "bench" / "results" / "hash_grid_backward.json"))
    args = parser.parse_args()
    device = torch.device("cuda")
    encoding = HashGridEncoding(HashGridConfig(n_levels=16, features_per_level=2, log2_table_size=19,
                                               base_resolution=16, finest_resolution=2048), 3).to(device)
    table = encoding.table.detach()
    resolutions = encoding.resolutions.to(torch.int64).contiguous()
    dense = encoding.dense.to(torch.int32).contiguous()
    x = ray_points(2 ** 18 // 20, 20, device)
    grad_out = torch.randn(len(x), table.shape[0] * table.shape[2], device=device)
    n_levels, table_size, n_features = table.shape

    def run(kernel, block: int, warps: int):
        grad_table = torch.zeros(table.shape, device=device)
        grid = (triton.cdiv(len(x), block), n_levels)
        kernel[grid](x, grad_out, resolutions, dense, grad_table, len(x), TABLE_SIZE=table_size, N_LEVELS=n_levels,
                     F=n_features, D=3, BLOCK=block, num_warps=warps)
        return grad_table

    reference = run(hash_grid._hash_grid_backward_kernel, hash_grid.BLOCK_POINTS, 4)
    variants = [("module kernel", hash_grid._hash_grid_backward_kernel, hash_grid.BLOCK_POINTS, 4),
                ("scalar atomics (6a50ccb)", _backward_scalar_kernel, 256, 4)]
    for block, warps in [(128, 4), (256, 4), (512, 8), (1024, 8)]:
        variants.append((f"pairs {block}/{warps}w", _backward_pairs_kernel, block, warps))
    for block, warps in [(256, 4), (512, 8)]:
        variants.append((f"corner-outer {block}/{warps}w", _backward_corner_outer_kernel, block, warps))
    rows = []
    print(f"{'variant':32s} {'ms':>8s} {'max |diff|':>12s}")
    for name, kernel, block, warps in variants:
        result = run(kernel, block, warps)
        diff = float((result - reference).abs().max())
        ms = time_ms(lambda: run(kernel, block, warps))
        rows.append({"variant": name, "block": block, "num_warps": warps, "ms": round(ms, 4), "max_abs_diff": diff})
        print(f"{name:32s} {ms:8.3f} {diff:12.3e}", flush=True)
    zeros_ms = time_ms(lambda: torch.zeros(table.shape, device=device))
    print(f"{'(zeroing the gradient alone)':32s} {zeros_ms:8.3f}")
    result = {"benchmark": "hash grid backward variants", "device": torch.cuda.get_device_name(),
              "torch": torch.__version__, "triton": triton.__version__, "date": time.strftime("%Y-%m-%d"),
              "points": len(x), "zeroing_ms": round(zeros_ms, 4), "rows": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
