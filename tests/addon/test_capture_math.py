"""Capture-rig maths (blender_addon/capture_math.py), no Blender."""

from __future__ import annotations

import math

import numpy as np
import pytest

from blender_addon import capture_math as cm
from inr_backend.cameras import Intrinsics, opengl_to_opencv


@pytest.mark.parametrize("layout", cm.LAYOUTS)
@pytest.mark.parametrize("count", [1, 2, 8, 48, 200])
def test_directions_unit_and_spread(layout, count):
    d = cm.fibonacci_directions(count, layout)
    assert d.shape == (count, 3)
    assert np.allclose(np.linalg.norm(d, axis=1), 1.0)
    if layout == "HEMISPHERE":
        assert np.all(d[:, 2] > 0)
    if count >= 48:
        # even spread: the mean is near the centre of the (hemi)sphere; no two points coincide
        mean = d.mean(axis=0)
        target = [0, 0, 0] if layout == "SPHERE" else [0, 0, 0.5]
        assert np.allclose(mean, target, atol=0.05)
        gaps = np.linalg.norm(d[:, None] - d[None], axis=2) + 10 * np.eye(count)
        nearest = gaps.min(axis=1)
        assert nearest.min() > 0.4 * nearest.mean()


def test_directions_refuse_bad_input():
    with pytest.raises(ValueError):
        cm.fibonacci_directions(0)
    with pytest.raises(ValueError):
        cm.fibonacci_directions(4, "CUBE")


@pytest.mark.parametrize("eye", [(3, 0, 0), (0, 0, 5), (0, 0, -5), (1e-9, 0, 4), (1, 2, 3), (-2, -1, 0.5)])
def test_look_at_is_rigid_and_aims_at_target(eye):
    target = np.array([0.5, -0.25, 0.1])
    eye = np.array(eye, dtype=float) + target
    c2w = cm.look_at(eye, target)
    r = c2w[:3, :3]
    assert np.allclose(r.T @ r, np.eye(3), atol=1e-12)
    assert np.isclose(np.linalg.det(r), 1.0)
    assert np.allclose(c2w[:3, 3], eye)
    forward = -r[:, 2]
    assert np.allclose(forward, (target - eye) / np.linalg.norm(target - eye))
    # camera +Y never points down in the world unless the camera looks straight along z
    if abs(forward[2]) < 0.99:
        assert r[2, 1] > 0


def test_look_at_refuses_zero_distance():
    with pytest.raises(ValueError):
        cm.look_at((1, 1, 1), (1, 1, 1))


def test_bounding_sphere():
    pts = np.array([[-1, -2, -3], [1, 2, 3], [0, 0, 0]], float) + 5
    center, radius = cm.bounding_sphere(pts)
    assert np.allclose(center, 5)
    assert np.isclose(radius, math.sqrt(14))


@pytest.mark.parametrize("w,h,fl", [(64, 64, 70.0), (64, 48, 40.0), (48, 64, 90.0)])
def test_framed_sphere_projects_inside_every_view(w, h, fl):
    intr = Intrinsics(fl_x=fl, fl_y=fl, cx=w / 2, cy=h / 2, w=w, h=h)
    center, radius = np.array([0.3, -1.0, 2.0]), 0.7
    poses, distance, (near, far) = cm.rig_poses(center, radius, 30, "SPHERE", intr.camera_angle_x,
                                                intr.camera_angle_y, margin=1.05)
    assert near < distance - radius and far > distance + radius
    rng = np.random.default_rng(0)
    surface = rng.normal(size=(500, 3))
    surface = center + radius * surface / np.linalg.norm(surface, axis=1, keepdims=True)
    for c2w in poses:
        assert np.isclose(np.linalg.norm(c2w[:3, 3] - center), distance)
        w2c = np.linalg.inv(opengl_to_opencv(c2w))
        for pts, inside in ((center[None], False), (surface, True)):
            local = (w2c @ np.c_[pts, np.ones(len(pts))].T).T
            u = intr.fl_x * local[:, 0] / local[:, 2] + intr.cx
            v = intr.fl_y * local[:, 1] / local[:, 2] + intr.cy
            if not inside:
                assert np.allclose([u[0], v[0]], [w / 2, h / 2])
            else:
                assert np.all((u > 0) & (u < w) & (v > 0) & (v < h))
                # and it is framed, not tiny: it reaches most of the narrower half-size
                extent = max(np.max(np.abs(u - w / 2)) / (w / 2), np.max(np.abs(v - h / 2)) / (h / 2))
                assert extent > 0.8


def test_normalization_maps_sphere_into_unit_cube():
    center, scale = cm.normalization_from_sphere([1, 2, 3], 2.0, padding=0.1)
    assert center == [1.0, 2.0, 3.0]
    assert np.isclose(2.0 * 1.1 * scale, 1.0)
