"""SDF samples against analytic signed distance fields: a sphere and an axis-aligned cube."""

import math

import numpy as np
import pytest
import torch
import trimesh

from inr_backend.geometry.sampling import SdfSamples, sample_sdf, sample_surface


@pytest.fixture
def seed() -> int:
    value = int(np.random.SeedSequence().entropy % 2**31)
    print(f"random seed {value}")  # pytest shows it when the test fails: rerun with it
    return value


def box_sdf(points: torch.Tensor, half: torch.Tensor) -> torch.Tensor:
    """Exact SDF of the box [-half, half]: outside the distance to it, inside minus the distance
    to the nearest wall."""
    q = points.abs() - half
    return q.clamp_min(0.0).norm(dim=1) + q.max(dim=1).values.clamp_max(0.0)


def test_sphere_samples_match_the_analytic_sdf(seed):
    radius = 0.6
    mesh = trimesh.creation.icosphere(subdivisions=5, radius=radius)
    # The mesh's faces are chords of the sphere: every surface point lies between radius
    # r cos(theta) and r, theta the largest angle between a face's plane normal and its corners
    # (~1 degree here: r (1 - cos theta) ~ 1e-4). The SDFs of the two differ by at most that.
    tris = mesh.vertices[mesh.faces]
    plane_offsets = np.abs(np.einsum("ij,ij->i", mesh.face_normals, tris[:, 0]))
    tessellation = radius - plane_offsets.min()
    assert 5e-5 < tessellation < 3e-4

    samples = sample_sdf(mesh.vertices, mesh.faces, n_surface=2000, n_near=6000, n_uniform=4000, seed=seed)
    assert isinstance(samples, SdfSamples) and len(samples) == 12000
    assert samples.points.dtype == torch.float32 and samples.sdf.dtype == torch.float32
    exact = samples.points.double().norm(dim=1) - radius
    error = (samples.sdf.double() - exact).abs()
    assert error.max() < tessellation + 1e-5, f"max error {error.max():.2e} vs tessellation {tessellation:.2e}"
    assert (samples.sdf[:2000] == 0).all()
    clear = exact.abs() > 1e-3
    assert torch.equal((samples.sdf < 0)[clear], (exact < 0)[clear])
    assert (samples.sdf < 0).any() and (samples.sdf > 0).any()


def test_cube_samples_match_the_analytic_sdf_exactly(seed):
    half = torch.tensor([0.5, 0.3, 0.4], dtype=torch.float64)
    box = trimesh.creation.box(extents=2 * half.numpy())
    samples = sample_sdf(box.vertices, box.faces, n_surface=1000, n_near=4000, n_uniform=4000,
                         near_sigmas=(0.05, 0.005), seed=seed)
    exact = box_sdf(samples.points.double(), half)
    assert (samples.sdf.double() - exact).abs().max() < 1e-6  # float32 rounding only
    clear = exact.abs() > 1e-3
    assert torch.equal((samples.sdf < 0)[clear], (exact < 0)[clear])


def test_sample_groups_have_the_asked_distributions(seed):
    radius = 0.5
    mesh = trimesh.creation.icosphere(subdivisions=4, radius=radius)
    n_surface, n_near, n_uniform = 3000, 8000, 6000
    samples = sample_sdf(mesh.vertices, mesh.faces, n_surface=n_surface, n_near=n_near, n_uniform=n_uniform,
                         near_sigmas=(0.02,), bounds=0.9, seed=seed)
    radii = samples.points.double().norm(dim=1)
    surface, near = radii[:n_surface], samples.sdf[n_surface:n_surface + n_near].double()
    uniform = samples.points[n_surface + n_near:]
    assert ((surface - radius).abs() < 1e-3).all()
    # Isotropic noise of std sigma moves a point off a (locally flat) surface by N(0, sigma^2):
    # the median |sdf| is 0.6745 sigma and half the points go inside.
    assert near.abs().median().item() == pytest.approx(0.6745 * 0.02, rel=0.06)
    assert (near < 0).double().mean().item() == pytest.approx(0.5, abs=0.03)
    assert uniform.abs().max() <= 0.9 and uniform.abs().max() > 0.85
    assert uniform.mean(dim=0).abs().max() < 0.03
    # An empty group is fine.
    assert len(sample_sdf(mesh.vertices, mesh.faces, n_surface=10, n_near=0, n_uniform=0)) == 10


def test_samples_are_reproducible_from_the_seed():
    mesh = trimesh.creation.icosphere(subdivisions=2)
    first = sample_sdf(mesh.vertices, mesh.faces, n_surface=100, n_near=100, n_uniform=100, seed=3)
    again = sample_sdf(torch.tensor(mesh.vertices), torch.tensor(mesh.faces), n_surface=100, n_near=100,
                       n_uniform=100, seed=3)
    other = sample_sdf(mesh.vertices, mesh.faces, n_surface=100, n_near=100, n_uniform=100, seed=4)
    torch.testing.assert_close(first.points, again.points)
    torch.testing.assert_close(first.sdf, again.sdf)
    assert not torch.equal(first.points, other.points)


def test_sample_surface_is_area_uniform_with_outward_normals(seed):
    half = np.array([0.5, 1.0, 1.5])  # side areas 2*3 (x), 1*3 (y), 1*2 (z), each twice
    box = trimesh.creation.box(extents=2 * half)
    generator = torch.Generator().manual_seed(seed)
    points, normals, face_ids = sample_surface(box.vertices, box.faces, 60000, generator=generator)
    assert points.shape == (60000, 3) and normals.shape == (60000, 3) and face_ids.shape == (60000,)
    assert points.dtype == torch.float64  # follows the vertices
    axis = normals.abs().argmax(dim=1)
    # On its side: the coordinate along the normal is at the wall, the others inside it.
    wall = points[torch.arange(60000), axis].abs()
    torch.testing.assert_close(wall, torch.from_numpy(half)[axis])
    assert ((points.abs() <= torch.from_numpy(half) + 1e-12).all())
    torch.testing.assert_close(normals.norm(dim=1), torch.ones(60000, dtype=torch.float64))
    assert ((normals * points).sum(dim=1) > 0).all()  # outward
    fractions = torch.bincount(axis, minlength=3).double() / 60000
    expected = torch.tensor([6.0, 3.0, 2.0], dtype=torch.float64) / 11.0
    assert (fractions - expected).abs().max() < 4 * math.sqrt(0.25 / 60000)
    assert (face_ids >= 0).all() and (face_ids < 12).all()
