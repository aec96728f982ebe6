"""Narrow-band extraction (the fast path) against the dense grid query (the reference)."""

import numpy as np
import pytest
import torch

from inr_backend.geometry.extract import marching_cubes, query_grid, query_grid_narrow_band


def random_spheres_sdf(seed: int):
    """The SDF of a union of random spheres: a fresh analytic field for every seed."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.rand(4, 3, generator=generator) * 1.2 - 0.6
    radii = torch.rand(4, generator=generator) * 0.25 + 0.1
    return lambda p: ((p[:, None, :] - centres).norm(dim=-1) - radii).min(dim=1).values


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("resolution", [64, 97])
def test_narrow_band_gives_the_same_mesh_as_the_dense_grid(seed, resolution):
    field = random_spheres_sdf(seed)
    dense = query_grid(field, resolution=resolution)
    band = query_grid_narrow_band(field, resolution=resolution, block=8)
    assert np.array_equal(np.sign(dense), np.sign(band))
    dense_vertices, dense_faces = marching_cubes(dense)
    band_vertices, band_faces = marching_cubes(band)
    np.testing.assert_array_equal(dense_faces, band_faces)
    np.testing.assert_allclose(dense_vertices, band_vertices, atol=1e-6)


def test_narrow_band_evaluates_far_fewer_points_at_high_resolution():
    field = random_spheres_sdf(0)
    counted = []
    query_grid_narrow_band(lambda p: counted.append(len(p)) or field(p), resolution=257)
    assert sum(counted) < 0.2 * 257 ** 3
