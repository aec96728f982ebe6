"""Point-triangle distance against analytic cases and an independent formula; the fast mesh
distance against the brute-force reference on fresh random inputs."""

import math

import numpy as np
import pytest
import torch
import trimesh

from inr_backend.geometry.distance import (MeshDistance, closest_points_on_triangles, point_triangle_distance,
                                           surface_samples_with_labels, unsigned_distance,
                                           unsigned_distance_reference, vertex_ring)


@pytest.fixture
def seed() -> int:
    value = int(np.random.SeedSequence().entropy % 2**32)
    print(f"random seed {value}")  # pytest shows it when the test fails: rerun with it
    return value


def independent_distance(points: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Another exact formula: the distance to the plane when the point projects inside the
    triangle, else the nearest of the three edges. (Unlike Ericson's it never picks a region.)"""
    out = np.empty(len(points))
    for i, (p, (a, b, c)) in enumerate(zip(points, triangles)):
        n = np.cross(b - a, c - a)
        candidates = []
        if np.dot(n, n) > 1e-24:
            n = n / np.linalg.norm(n)
            foot = p - np.dot(p - a, n) * n
            inside = all(np.dot(np.cross(e1 - e0, foot - e0), n) >= 0 for e0, e1 in ((a, b), (b, c), (c, a)))
            if inside:
                candidates.append(abs(np.dot(p - a, n)))
        for e0, e1 in ((a, b), (b, c), (c, a)):
            d = e1 - e0
            t = 0.0 if not np.dot(d, d) else np.clip(np.dot(p - e0, d) / np.dot(d, d), 0.0, 1.0)
            candidates.append(np.linalg.norm(p - (e0 + t * d)))
        out[i] = min(candidates)
    return out


def bumpy_sphere(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An irregular closed mesh: an icosphere with its vertices moved radially at random."""
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=0.7)
    vertices = mesh.vertices * rng.uniform(0.85, 1.15, size=(len(mesh.vertices), 1))
    return vertices, np.asarray(mesh.faces)


# --------------------------------------------------------------------------- one pair


def test_every_voronoi_region_of_a_triangle():
    triangle = torch.tensor([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 2.0, 0.0]], dtype=torch.float64)
    cases = {  # point: (closest point, why)
        (0.5, 0.5, 3.0): (0.5, 0.5, 0.0),  # face, above
        (0.5, 0.5, -3.0): (0.5, 0.5, 0.0),  # face, below
        (-1.0, -1.0, 1.0): (0.0, 0.0, 0.0),  # vertex a
        (3.0, -1.0, 0.0): (2.0, 0.0, 0.0),  # vertex b
        (-1.0, 3.0, 0.0): (0.0, 2.0, 0.0),  # vertex c
        (1.0, -2.0, 1.0): (1.0, 0.0, 0.0),  # edge ab
        (-2.0, 1.0, 0.0): (0.0, 1.0, 0.0),  # edge ac
        (2.0, 2.0, 0.5): (1.0, 1.0, 0.0),  # edge bc
    }
    points = torch.tensor(list(cases), dtype=torch.float64)
    expected = torch.tensor(list(cases.values()), dtype=torch.float64)
    closest = closest_points_on_triangles(points, triangle.expand(len(points), 3, 3))
    torch.testing.assert_close(closest, expected)
    torch.testing.assert_close(point_triangle_distance(points, triangle.expand(len(points), 3, 3)),
                               (points - expected).norm(dim=1))


@pytest.mark.parametrize("corners, point, distance", [
    ([[0, 0, 0], [1, 0, 0], [3, 0, 0]], [2, 1, 0], 1.0),  # collinear: a segment [0, 3]
    ([[0, 0, 0], [3, 0, 0], [1, 0, 0]], [4, 0, 1], math.sqrt(2)),  # same, other order, past the end
    ([[1, 1, 1], [1, 1, 1], [1, 1, 1]], [1, 1, 3], 2.0),  # a point
    ([[0, 0, 0], [0, 0, 0], [0, 2, 0]], [0, 1, 0.5], 0.5),  # two equal corners: a segment
])
def test_degenerate_triangles_are_their_segment_or_point(corners, point, distance):
    for dtype in (torch.float32, torch.float64):
        triangle = torch.tensor([corners], dtype=dtype)
        value = point_triangle_distance(torch.tensor([point], dtype=dtype), triangle)
        assert value.item() == pytest.approx(distance, rel=1e-6)


def test_matches_an_independent_formula_on_random_pairs(seed):
    rng = np.random.default_rng(seed)
    triangles = rng.normal(size=(3000, 3, 3))
    # Slivers: the third corner on the line through the first two (exactly degenerate up to
    # rounding) or off it by 1e-7..1e-1 of the edge (thin, and handled by either method).
    a, b = triangles[:300, 0], triangles[:300, 1]
    offset = rng.normal(size=(300, 3)) * np.linalg.norm(b - a, axis=1, keepdims=True)
    offset *= np.repeat([0.0, 1e-7, 1e-5, 1e-3, 1e-1], 60)[:, None]
    triangles[:300, 2] = a + rng.uniform(-2, 2, size=(300, 1)) * (b - a) + offset
    points = rng.normal(size=(3000, 3)) * 2.0
    ours = point_triangle_distance(torch.from_numpy(points), torch.from_numpy(triangles)).numpy()
    np.testing.assert_allclose(ours, independent_distance(points, triangles), rtol=1e-9, atol=1e-9)
    ours32 = point_triangle_distance(torch.from_numpy(points).float(), torch.from_numpy(triangles).float())
    np.testing.assert_allclose(ours32.numpy(), ours, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- meshes


def test_reference_on_a_cube_is_the_analytic_box_distance(seed):
    rng = np.random.default_rng(seed)
    half = np.array([0.3, 0.5, 0.4])
    box = trimesh.creation.box(extents=2 * half)
    points = rng.uniform(-1.0, 1.0, size=(500, 3))
    q = np.abs(points) - half
    outside = np.linalg.norm(np.maximum(q, 0.0), axis=1)
    inside = -np.minimum(q.max(axis=1), 0.0)  # distance to the nearest wall from inside
    np.testing.assert_allclose(unsigned_distance_reference(points, box.vertices, box.faces).numpy(),
                               outside + inside, atol=1e-12)


def test_samples_lie_on_their_labelled_triangles(seed):
    vertices, faces = bumpy_sphere(np.random.default_rng(seed))
    samples, labels = surface_samples_with_labels(vertices, faces, samples_per_face=2, min_samples=100)
    assert len(samples) >= len(faces) * 3  # centroids + area samples
    assert set(np.unique(labels)) == set(range(len(faces)))
    on_own = point_triangle_distance(torch.from_numpy(samples), torch.from_numpy(vertices[faces][labels]))
    assert on_own.max() < 1e-12


def test_vertex_ring_lists_the_faces_around_each_corner():
    box = trimesh.creation.box()
    distance = MeshDistance(box.vertices, box.faces)
    mesh = distance.mesh_on("cpu", torch.float64)
    owner, ring = vertex_ring(torch.tensor([0, 5]), mesh["faces"], mesh["vertex_faces"], mesh["vertex_start"])
    for index, face in enumerate([0, 5]):
        expected = [f for corner in box.faces[face] for f in np.nonzero((box.faces == corner).any(axis=1))[0]]
        assert sorted(ring[owner == index].tolist()) == sorted(expected)


@pytest.mark.parametrize("shape", ["bumpy", "open", "cube"])
def test_fast_agrees_with_reference(shape, seed):
    rng = np.random.default_rng(seed)
    if shape == "bumpy":
        vertices, faces = bumpy_sphere(rng)
    elif shape == "open":
        vertices, faces = bumpy_sphere(rng)
        faces = faces[vertices[faces].mean(axis=1)[:, 2] < 0.3]
    else:
        box = trimesh.creation.box(extents=(1.0, 1.4, 0.6))
        vertices, faces = np.asarray(box.vertices), np.asarray(box.faces)
    uniform = rng.uniform(-1.0, 1.0, size=(600, 3))
    tris = vertices[faces[rng.integers(len(faces), size=600)]]
    weights = rng.dirichlet([1.0, 1.0, 1.0], size=600)
    near = np.einsum("nk,nkd->nd", weights, tris) + rng.normal(size=(600, 3)) * rng.choice([0.002, 0.02], size=(600, 1))
    points = torch.from_numpy(np.concatenate([uniform, near]))

    reference = unsigned_distance_reference(points, vertices, faces)
    fast = unsigned_distance(points, vertices, faces)
    error = fast - reference
    assert error.min() > -1e-12  # the distance to a real triangle is never below the minimum
    assert (error < 1e-9).double().mean() > 0.99, f"only {(error < 1e-9).double().mean():.4f} exact"
    assert error[600:].max() < 1e-9  # near the surface: all exact (the vertex ring)
    # Far away, the bound: the true nearest point's triangle has its centroid among the
    # samples, within R (that triangle's farthest corner from its centroid) of that point.
    tris = vertices[faces]
    radius = np.linalg.norm(tris - tris.mean(axis=1, keepdims=True), axis=2).max()
    assert error.max() <= radius


def test_mesh_distance_keeps_dtype_device_and_is_reusable(seed):
    rng = np.random.default_rng(seed)
    vertices, faces = bumpy_sphere(rng)
    distance = MeshDistance(torch.from_numpy(vertices).float(), torch.from_numpy(faces))
    points = torch.from_numpy(rng.uniform(-1, 1, size=(1000, 3)))
    d64, d32 = distance(points), distance(points.float(), chunk=377)
    assert d64.dtype == torch.float64 and d32.dtype == torch.float32 and d32.device == points.device
    torch.testing.assert_close(d32.double(), d64, atol=1e-5, rtol=0)
    torch.testing.assert_close(distance(points), d64)
    assert distance(torch.zeros(0, 3)).shape == (0,)
