"""datasets.normalization_for_cameras / write_normalization (no Blender)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from inr_backend import datasets
from inr_backend.datasets import DatasetError, Frame


def apply(matrix, points):
    m = np.asarray(matrix, dtype=np.float64)
    return points @ m[:3, :3].T + m[:3, 3]


def look_at(eye, target, up=(0.0, 0.0, 1.0)):
    """OpenGL camera-to-world at ``eye`` looking at ``target`` (camera -z towards it)."""
    forward = np.asarray(target, float) - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-6:
        right = np.cross(forward, (0.0, 1.0, 0.0))
    right /= np.linalg.norm(right)
    true_up = np.cross(right, forward)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, true_up, -forward, eye
    return c2w


@pytest.mark.parametrize("seed", range(5))
def test_roi_box_maps_inside_padded_cube(seed):
    rng = np.random.default_rng(seed)
    low = rng.uniform(-50, 50, 3)
    high = low + rng.uniform(0.01, 30, 3)
    norm = datasets.normalization_for_cameras([], roi_min=low, roi_max=high)
    corners = np.array([[x, y, z] for x in (low[0], high[0]) for y in (low[1], high[1]) for z in (low[2], high[2])])
    unit = apply(norm["world_to_unit"], corners)
    assert np.max(np.abs(unit)) == pytest.approx(0.9, abs=1e-12)  # the longest side touches +-0.9 exactly
    assert np.all(np.abs(unit) <= 0.9 + 1e-12)
    np.testing.assert_allclose(unit.min(axis=0), -unit.max(axis=0), atol=1e-12)  # centred
    np.testing.assert_allclose(norm["center"], (low + high) / 2, atol=1e-12)
    points = rng.uniform(-100, 100, (100, 3))
    np.testing.assert_allclose(apply(norm["unit_to_world"], apply(norm["world_to_unit"], points)), points, atol=1e-10)


def test_roi_padding_and_cameras_ignored():
    cams = [look_at(np.array([10.0, 0, 0]), (0, 0, 0))]
    norm = datasets.normalization_for_cameras(cams, roi_min=[0, 0, 0], roi_max=[2, 1, 1], padding=0.0)
    assert norm["center"] == [1.0, 0.5, 0.5] and norm["scale"] == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(5))
def test_cameras_on_sphere_look_at_centre(seed):
    rng = np.random.default_rng(seed)
    target = rng.uniform(-20, 20, 3)
    radius = rng.uniform(0.5, 40)
    directions = Rotation.random(30, random_state=rng).apply([1.0, 0.0, 0.0])
    frames = [Frame(file_path=f"{i}.png", c2w=look_at(target + radius * d, target)) for i, d in enumerate(directions)]
    norm = datasets.normalization_for_cameras(frames)
    np.testing.assert_allclose(norm["center"], target, atol=1e-9 * max(1.0, radius))
    centres = np.array([f.c2w[:3, 3] for f in frames])
    unit = apply(norm["world_to_unit"], centres)
    distances = np.linalg.norm(unit, axis=1)
    assert np.all(distances <= 1.0)
    assert np.max(distances) == pytest.approx(0.9, abs=1e-9)
    np.testing.assert_allclose(apply(norm["unit_to_world"], unit), centres, atol=1e-9 * max(1.0, radius + 20))


def test_noisy_axes_still_near_centre():
    rng = np.random.default_rng(1)
    target = np.array([1.0, 2.0, 3.0])
    frames = []
    for d in Rotation.random(40, random_state=rng).apply([0.0, 0.0, 1.0]):
        frames.append(look_at(target + 4 * d, target + rng.normal(0, 0.05, 3)))
    norm = datasets.normalization_for_cameras(frames)
    assert np.linalg.norm(np.array(norm["center"]) - target) < 0.1


def test_parallel_axes_fall_back_to_mean_of_centres():
    frames = [look_at(np.array([x, 0.0, 0.0]), (x, 5.0, 0.0)) for x in (-1.0, 0.0, 1.0)]
    norm = datasets.normalization_for_cameras(frames)
    np.testing.assert_allclose(norm["center"], [0.0, 0.0, 0.0], atol=1e-12)
    assert norm["scale"] == pytest.approx(0.9)


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(roi_min=[0, 0, 0]), "both roi_min and roi_max"),
    (dict(roi_min=[1, 0, 0], roi_max=[0, 1, 1]), "inverted"),
    (dict(roi_min=[1, 1, 1], roi_max=[1, 1, 1]), "single point"),
    (dict(roi_min=[0, 0, float("nan")], roi_max=[1, 1, 1]), "finite 3D points"),
    (dict(roi_min=[0, 0], roi_max=[1, 1]), "finite 3D points"),
    (dict(padding=1.0), "padding"),
])
def test_bad_roi(kwargs, pattern):
    with pytest.raises(DatasetError, match=pattern):
        datasets.normalization_for_cameras([np.eye(4), np.eye(4)], **kwargs)


def test_bad_cameras():
    with pytest.raises(DatasetError, match="no cameras"):
        datasets.normalization_for_cameras([])
    with pytest.raises(DatasetError, match="one point"):
        datasets.normalization_for_cameras([np.eye(4)])
    with pytest.raises(DatasetError, match="finite 4x4"):
        datasets.normalization_for_cameras([np.full((4, 4), np.nan)])


def test_write_normalization(tmp_path):
    norm = datasets.normalization_for_cameras([], roi_min=[-1, -2, -3], roi_max=[1, 2, 3])
    path = datasets.write_normalization(tmp_path / "job" / "normalization.json", norm)
    assert json.loads(path.read_text()) == json.loads(json.dumps(norm))
    assert [p.name for p in path.parent.iterdir()] == ["normalization.json"]  # no temporary left behind
