"""Surface metrics and volume IoU against cases with known answers."""

import math

import numpy as np
import pytest
import trimesh

from inr_backend.geometry.metrics import mesh_metrics, uniform_points_in_box, volume_iou


@pytest.fixture(scope="module")
def sphere() -> trimesh.Trimesh:
    return trimesh.creation.icosphere(subdivisions=4, radius=1.0)


def test_mesh_against_itself_is_at_the_sampling_floor(sphere):
    metrics = mesh_metrics(sphere.vertices, sphere.faces, sphere.vertices, sphere.faces, n_samples=100_000)
    assert metrics["bbox_diagonal"] == pytest.approx(2 * math.sqrt(3), rel=1e-3)
    assert 0.0 < metrics["chamfer_l1"] < 0.003  # two samplings never coincide: ~0.0014
    assert metrics["normal_consistency"] > 0.99
    assert metrics["f_score"] > 0.99 and metrics["precision"] > 0.99 and metrics["recall"] > 0.99
    assert metrics["n_samples"] == 100_000


def test_sphere_against_a_larger_sphere(sphere):
    # Every point of either sphere is 0.05 r from the other: Chamfer-L1 = 0.05 r / (2 sqrt(3) r),
    # plus a little for the sampling; the 1% threshold (0.035 r) is below that gap: F = 0.
    scale = 1.05
    metrics = mesh_metrics(sphere.vertices * scale, sphere.faces, sphere.vertices, sphere.faces, n_samples=50_000)
    expected = 0.05 / (2 * math.sqrt(3))
    assert metrics["chamfer_l1"] == pytest.approx(expected, rel=0.1)
    assert metrics["chamfer_l1"] > expected  # the gap itself is a lower bound
    assert metrics["f_score"] < 0.01
    assert metrics["normal_consistency"] > 0.98  # concentric: normals still agree


def test_normal_consistency_sees_a_crumpled_surface(sphere):
    rng = np.random.default_rng(0)
    crumpled = sphere.vertices * rng.uniform(0.97, 1.03, size=(len(sphere.vertices), 1))
    metrics = mesh_metrics(crumpled, sphere.faces, sphere.vertices, sphere.faces, n_samples=20_000)
    assert metrics["normal_consistency"] < 0.97


def test_precision_and_recall_are_directional():
    # A half-sphere against the whole: every predicted point is on the reference (precision 1),
    # half the reference is missing (recall ~1/2, F = 2/3).
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=1.0)
    half = sphere.faces[sphere.vertices[sphere.faces].mean(axis=1)[:, 2] > 0]
    metrics = mesh_metrics(sphere.vertices, half, sphere.vertices, sphere.faces, n_samples=40_000)
    assert metrics["precision"] > 0.99
    assert metrics["recall"] == pytest.approx(0.5, abs=0.03)
    assert metrics["f_score"] == pytest.approx(2 / 3, abs=0.03)


def test_volume_iou():
    points = uniform_points_in_box([0, 0, 0], [1, 1, 1], 100_000, seed=1)
    a = points[:, 0] < 0.5
    b = (points[:, 0] > 0.25) & (points[:, 0] < 0.75)
    assert volume_iou(a, b) == pytest.approx(0.25 / 0.75, abs=0.01)  # [0.25, 0.5] of [0, 0.75]
    assert volume_iou(a, a) == 1.0
    assert volume_iou(a, ~a) == 0.0
    assert volume_iou(np.zeros(5, bool), np.zeros(5, bool)) == 1.0
    with pytest.raises(ValueError, match="shape"):
        volume_iou(np.zeros(5, bool), np.zeros(6, bool))


def test_uniform_points_in_box():
    lo, hi = np.array([-1.0, 2.0, 0.0]), np.array([1.0, 3.0, 0.5])
    points = uniform_points_in_box(lo, hi, 50_000, seed=7)
    assert points.shape == (50_000, 3)
    assert (points >= lo).all() and (points <= hi).all()
    np.testing.assert_allclose(points.mean(axis=0), (lo + hi) / 2, atol=0.01)
    np.testing.assert_array_equal(points, uniform_points_in_box(lo, hi, 50_000, seed=7))
    assert not np.array_equal(points, uniform_points_in_box(lo, hi, 50_000, seed=8))
