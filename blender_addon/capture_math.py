"""Capture-rig maths (no bpy): camera directions, look-at poses, framing distance, clip range.

Cameras follow Blender's (OpenGL) convention: the camera-to-world's columns are the camera's
+X (right), +Y (up) and +Z (the camera looks down -Z), then its position.
"""

from __future__ import annotations

import math

import numpy as np

GOLDEN_ANGLE = math.pi * (3.0 - math.sqrt(5.0))
LAYOUTS = ("SPHERE", "HEMISPHERE")
WORLD_UP = np.array([0.0, 0.0, 1.0])
FALLBACK_UP = np.array([0.0, 1.0, 0.0])
POLE_COS = 0.999  # |forward . up| above this: the world up is (nearly) parallel, use the fallback


def fibonacci_directions(count: int, layout: str = "SPHERE") -> np.ndarray:
    """``count`` unit vectors spread evenly (Fibonacci lattice) over the sphere or the upper
    hemisphere (z > 0), as a (count, 3) array. Equal-area bands, so no clumping at the poles."""
    count = int(count)
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    i = np.arange(count, dtype=np.float64)
    if layout == "SPHERE":
        z = 1.0 - (2.0 * i + 1.0) / count
    else:
        z = 1.0 - (i + 0.5) / count
    r = np.sqrt(np.clip(1.0 - z * z, 0.0, None))
    phi = i * GOLDEN_ANGLE
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def look_at(eye, target, up=WORLD_UP) -> np.ndarray:
    """The 4x4 OpenGL camera-to-world of a camera at ``eye`` looking at ``target`` (down its -Z),
    its +Y as close to ``up`` as possible. Near the poles (forward parallel to up) the world
    +Y is used as up instead, so the pose is never degenerate."""
    eye = np.asarray(eye, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    forward = target - eye
    norm = np.linalg.norm(forward)
    if not norm > 0:
        raise ValueError("the camera is at its target: no direction to look in")
    forward /= norm
    up = np.asarray(up, dtype=np.float64)
    up = up / np.linalg.norm(up)
    if abs(float(forward @ up)) > POLE_COS:
        up = FALLBACK_UP if abs(float(forward @ FALLBACK_UP)) <= POLE_COS else np.array([1.0, 0.0, 0.0])
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    camera_up = np.cross(right, forward)
    c2w = np.eye(4)
    c2w[:3, 0] = right
    c2w[:3, 1] = camera_up
    c2w[:3, 2] = -forward
    c2w[:3, 3] = eye
    return c2w


def bounding_sphere(points) -> tuple[np.ndarray, float]:
    """Centre (the bounding box's centre) and radius (farthest point from it) of (N, 3) points."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if len(points) == 0:
        raise ValueError("no points")
    if not np.all(np.isfinite(points)):
        raise ValueError("points are not finite")
    center = 0.5 * (points.min(axis=0) + points.max(axis=0))
    radius = float(np.max(np.linalg.norm(points - center, axis=1)))
    return center, radius


def framing_distance(radius: float, fov_x: float, fov_y: float, margin: float = 1.1) -> float:
    """Distance from a sphere's centre at which the sphere (radius times ``margin``) fits inside
    the narrower of the two fields of view (radians): its silhouette is a cone of half-angle
    asin(r / d), which must not exceed half the narrower angle."""
    half = 0.5 * min(float(fov_x), float(fov_y))
    if not 0 < half < 0.5 * math.pi:
        raise ValueError(f"field of view out of range: {fov_x}, {fov_y}")
    radius = max(float(radius), 1e-6)
    return radius * float(margin) / math.sin(half)


def clip_range(distance: float, radius: float) -> tuple[float, float]:
    """clip_start, clip_end that keep the whole sphere (with room to spare) in view."""
    near = max((distance - radius) * 0.5, distance * 1e-3, 1e-4)
    far = (distance + radius) * 1.5
    return float(near), float(far)


def rig_poses(center, radius: float, count: int, layout: str, fov_x: float, fov_y: float,
              margin: float = 1.1) -> tuple[list[np.ndarray], float, tuple[float, float]]:
    """The camera-to-worlds of a rig around a sphere, their common distance and clip range."""
    center = np.asarray(center, dtype=np.float64)
    distance = framing_distance(radius, fov_x, fov_y, margin)
    poses = [look_at(center + distance * direction, center) for direction in fibonacci_directions(count, layout)]
    return poses, distance, clip_range(distance, max(float(radius), 1e-6))


def normalization_from_sphere(center, radius: float, padding: float = 0.1) -> tuple[list[float], float]:
    """Centre and scale mapping the sphere (grown by ``padding``) into the unit cube [-1, 1]^3."""
    radius = max(float(radius), 1e-6)
    return [float(c) for c in center], 1.0 / (radius * (1.0 + float(padding)))
