"""Grid queries and marching cubes against analytic fields."""

import math

import numpy as np
import pytest
import torch

from inr_backend.geometry.extract import extract_mesh, grid_axis, marching_cubes, query_grid, to_world
from inr_backend.protocol import make_normalization


def area_and_volume(vertices: np.ndarray, faces: np.ndarray) -> tuple[float, float]:
    """Surface area, and signed volume (positive when the faces wind counter-clockwise seen
    from outside, i.e. normals point out)."""
    tris = vertices[faces]
    area = 0.5 * np.linalg.norm(np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0]), axis=1).sum()
    volume = np.einsum("ij,ij->i", tris[:, 0], np.cross(tris[:, 1], tris[:, 2])).sum() / 6.0
    return float(area), float(volume)


def test_query_grid_indexes_x_y_z():
    resolution, bounds = 7, 0.8
    # A field that encodes its input: each axis lands in its own decimal place.
    volume = query_grid(lambda p: p[:, 0] + 10 * p[:, 1] + 100 * p[:, 2], resolution=resolution, bounds=bounds,
                        chunk=50)  # chunks that split rows
    assert volume.shape == (7, 7, 7) and volume.dtype == np.float32
    x = grid_axis(resolution, bounds)
    assert x[0] == -bounds and x[-1] == bounds
    expected = x[:, None, None] + 10 * x[None, :, None] + 100 * x[None, None, :]
    np.testing.assert_allclose(volume, expected, atol=1e-4)


def test_query_grid_runs_without_gradients():
    weight = torch.ones(3, requires_grad=True)
    seen = []

    def field(points):
        out = points @ weight
        seen.append(out.requires_grad)
        return out

    query_grid(field, resolution=4)
    assert seen and not any(seen)


@pytest.mark.parametrize("narrow_band", [False, True])
def test_marching_cubes_of_a_sphere_has_the_right_area_volume_and_orientation(narrow_band):
    radius = 0.5
    vertices, faces = extract_mesh(lambda p: p.norm(dim=-1) - radius, resolution=128, narrow_band=narrow_band)
    assert vertices.dtype == np.float64 and faces.dtype == np.int64
    area, volume = area_and_volume(vertices, faces)
    assert area == pytest.approx(4 * math.pi * radius**2, rel=0.01)
    assert volume == pytest.approx(4 / 3 * math.pi * radius**3, rel=0.01)  # positive: normals point out
    np.testing.assert_allclose(np.linalg.norm(vertices, axis=1), radius, atol=2e-3)


def test_marching_cubes_positions_are_in_unit_box_coordinates():
    center, radius, bounds = np.array([0.3, -0.2, 0.1]), 0.25, 0.6
    field = lambda p: (p - torch.tensor(center, dtype=p.dtype)).norm(dim=-1) - radius  # noqa: E731
    vertices, faces = extract_mesh(field, resolution=64, bounds=bounds)
    # Off centre and in a smaller box: catches a wrong spacing, offset or axis order.
    np.testing.assert_allclose(np.linalg.norm(vertices - center, axis=1), radius, atol=2e-3)
    np.testing.assert_allclose((vertices.min(0) + vertices.max(0)) / 2, center, atol=2e-3)
    assert area_and_volume(vertices, faces)[1] > 0


@pytest.mark.parametrize("narrow_band", [False, True])
def test_marching_cubes_level_selects_the_offset_surface(narrow_band):
    vertices, _ = extract_mesh(lambda p: p.norm(dim=-1) - 0.5, resolution=64, level=0.1, narrow_band=narrow_band)
    np.testing.assert_allclose(np.linalg.norm(vertices, axis=1), 0.6, atol=3e-3)


@pytest.mark.parametrize("value, side", [(1.0, "positive"), (-1.0, "negative")])
def test_no_surface_is_a_clear_error(value, side):
    with pytest.raises(ValueError, match=f"no surface found at level 0.0: the field is everywhere {side}"):
        marching_cubes(np.full((8, 8, 8), value, dtype=np.float32))


def test_non_finite_field_is_a_clear_error():
    volume = np.linspace(-1, 1, 512, dtype=np.float32).reshape(8, 8, 8)
    volume[3, 3, 3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        marching_cubes(volume)


def test_to_world_inverts_the_normalization():
    rng = np.random.default_rng(0)
    world = rng.normal(size=(100, 3)) * 4.0 + [10.0, -3.0, 7.0]
    center, scale = [10.5, -2.5, 6.0], 0.2
    unit = (world - center) * scale
    np.testing.assert_allclose(to_world(unit, make_normalization(center, scale)), world, atol=1e-12)
