"""A small analytic scene for NeRF tests, ray-cast in numpy (no Blender): two spheres of
different colours seen by an orbit of pinhole cameras, RGBA images with exact alpha.

The scene's ground truth is exact, so any camera (also one not in the dataset) has a
reference image: ``render_scene(c2w, intrinsics)``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from inr_backend import datasets
from inr_backend.cameras import Intrinsics

# (centre, radius, colour): a large red-ish sphere and a small blue one beside it.
SPHERES = [((0.0, 0.0, 0.0), 0.6, (0.85, 0.3, 0.2)), ((0.55, 0.45, 0.35), 0.3, (0.2, 0.35, 0.9))]
LIGHT = np.array([0.4, -0.5, 0.75]) / np.linalg.norm([0.4, -0.5, 0.75])


def look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """OpenGL camera-to-world looking from eye at target (-z forward, +y up)."""
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    back = eye - target
    back /= np.linalg.norm(back)
    right = np.cross(up, back)
    if np.linalg.norm(right) < 1e-9:
        right = np.array([1.0, 0.0, 0.0])
    right /= np.linalg.norm(right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, np.cross(back, right), back, eye
    return c2w


def orbit_cameras(n: int, radius: float = 3.0, seed: int = 0) -> list[np.ndarray]:
    """n cameras on a Fibonacci sphere (upper 80%) looking at the origin."""
    cams = []
    golden = math.pi * (3.0 - math.sqrt(5.0))
    for i in range(n):
        z = 0.9 - 1.5 * (i + 0.5) / n
        r = math.sqrt(max(1.0 - z * z, 0.0))
        eye = radius * np.array([r * math.cos(golden * i), r * math.sin(golden * i), z])
        cams.append(look_at(eye))
    return cams


def render_scene(c2w: np.ndarray, intr: Intrinsics) -> np.ndarray:
    """(H, W, 4) float RGBA in [0, 1] (straight alpha; Lambert-shaded spheres, no anti-aliasing
    beyond 2x2 supersampling)."""
    ss = 2
    ys, xs = np.meshgrid((np.arange(intr.h * ss) + 0.5) / ss, (np.arange(intr.w * ss) + 0.5) / ss, indexing="ij")
    d_cam = np.stack([(xs - intr.cx) / intr.fl_x, -(ys - intr.cy) / intr.fl_y, -np.ones_like(xs)], -1)
    d = d_cam @ c2w[:3, :3].T
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    o = c2w[:3, 3]
    best_t = np.full(d.shape[:2], np.inf)
    rgb = np.zeros(d.shape[:2] + (3,))
    for centre, radius, colour in SPHERES:
        oc = o - np.asarray(centre)
        b = d @ oc
        c = oc @ oc - radius * radius
        disc = b * b - c
        hit = disc > 0
        t = np.where(hit, -b - np.sqrt(np.maximum(disc, 0)), np.inf)
        closer = hit & (t > 0) & (t < best_t)
        best_t = np.where(closer, t, best_t)
        points = o + t[..., None] * d
        normal = (points - np.asarray(centre)) / radius
        with np.errstate(invalid="ignore"):   # rays that miss have infinite points; masked below
            shade = 0.35 + 0.65 * np.clip(normal @ LIGHT, 0, 1)
        rgb = np.where(closer[..., None], shade[..., None] * np.asarray(colour), rgb)
    alpha = np.isfinite(best_t).astype(np.float64)
    rgba = np.concatenate([rgb, alpha[..., None]], -1)
    return _downsample(rgba, ss)


def _downsample(rgba: np.ndarray, ss: int) -> np.ndarray:
    h, w = rgba.shape[0] // ss, rgba.shape[1] // ss
    blocks = rgba.reshape(h, ss, w, ss, 4)
    alpha = blocks[..., 3].mean((1, 3))
    premult = (blocks[..., :3] * blocks[..., 3:]).mean((1, 3))
    rgb = np.where(alpha[..., None] > 0, premult / np.maximum(alpha[..., None], 1e-9), 0.0)
    return np.concatenate([rgb, alpha[..., None]], -1)


def intrinsics(size: int, fov_degrees: float = 40.0) -> Intrinsics:
    focal = 0.5 * size / math.tan(math.radians(fov_degrees) / 2)
    return Intrinsics(focal, focal, size / 2, size / 2, size, size)


def write_scene(root: Path, *, n_views: int = 32, size: int = 48, split: bool = False) -> Path:
    """Write images/ and transforms.json (or transforms_train/_val.json when split) under root."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    intr = intrinsics(size)
    frames = []
    for index, c2w in enumerate(orbit_cameras(n_views)):
        rgba = render_scene(c2w, intr)
        name = f"images/{index:04d}.png"
        Image.fromarray((np.clip(rgba, 0, 1) * 255 + 0.5).astype(np.uint8), "RGBA").save(root / name)
        frames.append(datasets.Frame(file_path=name, c2w=c2w, intrinsics=intr))
    if split:
        datasets.write_transforms(root / "transforms_train.json", [f for i, f in enumerate(frames) if i % 8],
                                  )
        datasets.write_transforms(root / "transforms_val.json", [f for i, f in enumerate(frames) if not i % 8],
                                  )
    else:
        datasets.write_transforms(root / "transforms.json", frames)
    return root
