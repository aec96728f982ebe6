"""Winding numbers: analytic solid angles, closed and open meshes, the fast path against the
exact reference on fresh random inputs."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from inr_backend.geometry.distance import unsigned_distance
from inr_backend.geometry.mesh import load_mesh
from inr_backend.geometry.winding import (FastWindingNumber, build_clusters, inside_mask, kd_cluster_order,
                                          solid_angles, winding_numbers, winding_numbers_reference)

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture
def seed() -> int:
    value = int(np.random.SeedSequence().entropy % 2**32)
    print(f"random seed {value}")  # pytest shows it when the test fails: rerun with it
    return value


def sphere(subdivisions: int, radius: float) -> tuple[np.ndarray, np.ndarray]:
    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    return np.asarray(mesh.vertices), np.asarray(mesh.faces)


def capped_sphere(subdivisions: int, radius: float, cut: float) -> tuple[np.ndarray, np.ndarray]:
    """An open mesh: the sphere without the faces whose centroid is above z = cut * radius."""
    vertices, faces = sphere(subdivisions, radius)
    keep = vertices[faces].mean(axis=1)[:, 2] <= cut * radius
    return vertices, faces[keep]


def points_around(vertices, faces, n_uniform: int, n_near: int, rng: np.random.Generator, sigma=0.02):
    """Uniform points in [-1.2, 1.2]^3 plus points near the surface (triangle centroids + noise)."""
    uniform = rng.uniform(-1.2, 1.2, size=(n_uniform, 3))
    centroids = vertices[faces[rng.integers(len(faces), size=n_near)]].mean(axis=1)
    return torch.from_numpy(np.concatenate([uniform, centroids + sigma * rng.normal(size=(n_near, 3))]))


# --------------------------------------------------------------------------- solid angles


def test_solid_angle_of_an_octant_triangle():
    # The triangle (e_x, e_y, e_z) covers one octant of the sphere seen from the origin: 4 pi / 8.
    origin = torch.zeros(3, 1, dtype=torch.float64)
    a, b, c = (torch.eye(3, dtype=torch.float64)[:, i:i + 1] for i in range(3))  # (3, 1) each
    assert solid_angles(origin, a, b, c).item() == pytest.approx(math.pi / 2)
    assert solid_angles(origin, a, c, b).item() == pytest.approx(-math.pi / 2)  # flipped
    assert solid_angles(origin, 2 * a, 2 * b, 2 * c).item() == pytest.approx(math.pi / 2)  # any scale
    # Zero-area triangles (padding, slivers) contribute nothing, even seen from their own point.
    assert solid_angles(origin, a, a, a).item() == 0.0
    assert solid_angles(a, a, a, a).item() == 0.0


def test_solid_angle_of_a_small_far_triangle_is_area_over_distance_squared():
    # Seen face-on from distance d, a triangle of area A subtends about A / d^2.
    d = 50.0
    q = torch.zeros(3, 1, dtype=torch.float64)
    a = torch.tensor([[0.0], [0.0], [d]], dtype=torch.float64)
    b = a + torch.tensor([[1.0], [0.0], [0.0]], dtype=torch.float64)
    c = a + torch.tensor([[0.0], [1.0], [0.0]], dtype=torch.float64)
    assert solid_angles(q, a, b, c).item() == pytest.approx(0.5 / d**2, rel=1e-3)


# --------------------------------------------------------------------------- reference


def test_reference_is_one_inside_and_zero_outside_a_closed_sphere(seed):
    rng = np.random.default_rng(seed)
    vertices, faces = sphere(3, 0.5)
    directions = rng.normal(size=(400, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    inside = directions * rng.uniform(0.0, 0.45, size=(400, 1))
    outside = directions * rng.uniform(0.55, 3.0, size=(400, 1))
    w = winding_numbers_reference(np.concatenate([inside, outside]), vertices, faces)
    assert w.dtype == torch.float64
    np.testing.assert_allclose(w[:400].numpy(), 1.0, atol=1e-9)
    np.testing.assert_allclose(w[400:].numpy(), 0.0, atol=1e-9)
    # Chunking changes nothing.
    torch.testing.assert_close(winding_numbers_reference(inside, vertices, faces, chunk=7), w[:400])


def test_open_sphere_has_the_analytic_winding_number_at_its_centre():
    # A sphere without its cap above the cone of half-angle theta: at the centre the surface
    # covers all but the cap's solid angle 2 pi (1 - cos theta), so w = (1 + cos theta) / 2.
    vertices, faces = capped_sphere(4, 1.0, cut=0.8)
    tris = vertices[faces]
    # The removed region's boundary is jagged: measure cos theta from the kept faces' top edge.
    boundary_z = np.sort(tris[:, :, 2].max(axis=1))[-1]
    w = winding_numbers_reference(np.zeros((1, 3)), vertices, faces).item()
    assert w == pytest.approx((1.0 + boundary_z) / 2.0, abs=0.02)


# --------------------------------------------------------------------------- fast vs reference


def test_clusters_are_compact_and_cover_every_triangle(seed):
    rng = np.random.default_rng(seed)
    centroids = torch.from_numpy(rng.random((1000, 3)))
    order = kd_cluster_order(centroids, 16)
    assert sorted(order.tolist()) == list(range(1000))  # a permutation
    vertices, faces = sphere(4, 0.8)
    clusters = build_clusters(torch.from_numpy(vertices[faces]), 64)
    assert clusters.corners.shape == (3, 3, len(faces) // 64, 64)
    # The area vectors of a closed surface sum to zero, and the cluster areas to the sphere's.
    torch.testing.assert_close(clusters.area_vectors.sum(0), torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0)
    # k-d clusters of 64 of 5120 triangles cover ~1/80 of the sphere: radius ~0.8 * sqrt(4 / 80).
    assert clusters.radii.max() < 0.8 * 2 * math.sqrt(4 / 80)


def test_fast_with_every_cluster_near_is_the_exact_sum(seed):
    # beta = inf makes every cluster "near": only the gathered exact solid angles remain,
    # so the clustering, the padding and the scatter-add are checked alone.
    rng = np.random.default_rng(seed)
    vertices, faces = capped_sphere(3, 0.7, cut=0.5)  # 1280 faces minus a cap: a padded last cluster
    points = points_around(vertices, faces, 300, 300, rng)
    fast = winding_numbers(points, vertices, faces, beta=math.inf, cluster_size=50)
    torch.testing.assert_close(fast, winding_numbers_reference(points, vertices, faces), atol=1e-9, rtol=0)


@pytest.mark.parametrize("shape", ["sphere", "box", "open", "soup"])
def test_fast_agrees_with_reference(shape, seed):
    rng = np.random.default_rng(seed)
    if shape == "sphere":
        vertices, faces = sphere(4, 0.8)
    elif shape == "box":
        box = trimesh.creation.box(extents=(1.2, 0.8, 1.5))
        vertices, faces = np.asarray(box.vertices), np.asarray(box.faces)
    elif shape == "open":
        vertices, faces = capped_sphere(4, 0.8, cut=0.6)
    else:  # a random triangle soup: no structure at all
        vertices = rng.uniform(-0.8, 0.8, size=(600, 3))
        faces = rng.integers(600, size=(2000, 3))
    points = points_around(vertices, faces, 700, 700, rng).float()
    fast = winding_numbers(points, vertices, faces)
    reference = winding_numbers_reference(points, vertices, faces)
    assert fast.dtype == torch.float32 and fast.shape == (1400,)
    difference = (fast.double() - reference).abs()
    assert difference.max() < 0.04, f"max |fast - reference| = {difference.max():.4f}"
    assert difference.mean() < 0.01, f"mean |fast - reference| = {difference.mean():.5f}"
    if shape != "soup":  # a soup's winding numbers take any value, 1/2 included
        away = unsigned_distance(points.double(), vertices, faces) > 1e-3
        if shape == "open":  # near the hole the answer is ~1/2 by nature; compare where it is clear
            away &= (reference - 0.5).abs() > 0.05
        assert torch.equal((fast > 0.5)[away], (reference > 0.5)[away])


def test_fast_is_reusable_and_matches_float64(seed):
    rng = np.random.default_rng(seed)
    vertices, faces = sphere(3, 0.6)
    fast = FastWindingNumber(torch.from_numpy(vertices).float(), torch.from_numpy(faces))
    points = points_around(vertices, faces, 500, 500, rng)
    w64 = fast(points)  # float64 points: clusters built in float64
    w32 = fast(points.float(), chunk=397)  # float32, odd chunks
    assert w64.dtype == torch.float64 and w32.dtype == torch.float32
    torch.testing.assert_close(w32.double(), w64, atol=1e-4, rtol=0)
    assert fast(torch.zeros(0, 3)).shape == (0,)
    assert torch.equal(winding_numbers(points, vertices, faces[:0]), torch.zeros(len(points), dtype=torch.float64))


# --------------------------------------------------------------------------- inside


def test_inside_mask_of_a_box_is_the_box():
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    points = torch.rand(4000, 3, generator=torch.Generator().manual_seed(0)) * 2.0 - 1.0
    clear = ((points.abs() - 0.5).abs() > 1e-3).all(dim=1)  # not on a wall
    truth = (points.abs() < 0.5).all(dim=1)
    mask = inside_mask(points, box.vertices, box.faces)
    assert mask.dtype == torch.bool
    assert torch.equal(mask[clear], truth[clear])


def test_open_mesh_is_inside_in_the_bulk_and_outside_far_away(seed):
    rng = np.random.default_rng(seed)
    vertices, faces = capped_sphere(4, 0.8, cut=0.7)
    directions = rng.normal(size=(500, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    # Deep inside, below the centre: the hole (above z = 0.56) covers a small solid angle from
    # there; at the centre w = (1 + 0.7) / 2 (see the test above), lower down it grows.
    bulk = torch.from_numpy([0.0, 0.0, -0.3] + directions * rng.uniform(0.0, 0.3, size=(500, 1)))
    # Far outside, the hole (a disc of radius 0.57 at z = 0.56) subtends at most
    # pi 0.57^2 / (4 - 0.56)^2 ~ 0.09 sr, so |w| < 0.09 / (4 pi) ~ 0.007.
    far = torch.from_numpy(directions * rng.uniform(4.0, 10.0, size=(500, 1)))
    w_bulk, w_far = winding_numbers(bulk, vertices, faces), winding_numbers(far, vertices, faces)
    assert w_bulk.min() > 0.8, f"bulk winding numbers down to {w_bulk.min():.3f}"
    assert w_far.abs().max() < 0.01, f"far winding numbers up to {w_far.abs().max():.3f}"


@pytest.mark.skipif(not (SHARED_DATA / "meshes" / "teapot.obj").exists(),
                    reason=f"teapot.obj not found in {SHARED_DATA} (../shared/data beside the repo)")
def test_teapot_open_and_self_intersecting(seed):
    vertices, faces = load_mesh(SHARED_DATA / "meshes" / "teapot.obj")  # bbox ~[-3, 3.4] x [0, 3.2] x [-2, 2]
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(300, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    # The body is a squashed ball around (0, 1.2, 0), more than 0.9 deep there.
    body = torch.from_numpy([0.0, 1.2, 0.0] + directions * rng.uniform(0.0, 0.8, size=(300, 1)))
    far = torch.from_numpy([0.2, 1.5, 0.0] + directions * rng.uniform(8.0, 20.0, size=(300, 1)))
    assert inside_mask(body, vertices, faces).all()
    assert not inside_mask(far, vertices, faces).any()
    reference = winding_numbers_reference(body[:50], vertices, faces)
    assert (reference > 0.9).all()
