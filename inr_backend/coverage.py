"""Is a set of camera views enough to train a NeRF? (numpy only: the add-on runs it before it
starts a job, the backend's nerf task runs it again on what it was given.)

``check_views(frames, center=...)`` returns a ``CoverageReport``: ``errors`` (training cannot
give a usable result: say so and stop) and ``warnings`` (it will run, but the artist should
know before waiting minutes for it), each a sentence for a person, plus the numbers behind
them in ``stats``.

Errors
  * fewer than ``MIN_VIEWS`` (8) views. A NeRF learns a surface point's position from the
    disagreement between views that see it; with N views spread over a sphere, neighbouring
    views are about ``sqrt(4 pi / N)`` radians apart, 72 degrees for 8 views, so most points
    are seen by one or two cameras only and the field fits each image with floaters instead
    of geometry. The few-view NeRF literature measures exactly this collapse (RegNeRF,
    CVPR 2022, table 1: mip-NeRF on DTU drops to 16.5 dB PSNR with 6 views and 8.7 dB with 3,
    against ~24 dB with 9). The backend also holds some views out to measure PSNR, so below
    8 there is too little left to train on.
  * images of different sizes (a NeRF batch mixes rays of all images; one resolution is what
    every common loader assumes), an image whose file size disagrees with the size the
    transforms file gives, a missing image file;
  * cameras that all stand at (almost) one point: rotation without translation gives no
    parallax, so depth, and with it the field, is undetermined.

Warnings
  * fewer than ``COMFORTABLE_VIEWS`` (24) views: about 41 degrees between neighbours on a
    sphere, the smallest capture in this project's own tests (24-48 views); the
    NeRF-synthetic scenes use 100;
  * a side of the object that no camera looks at. The viewing directions (from the scene
    centre to each camera) are points on a sphere; the largest spherical cap holding none of
    them is the side that is never seen, and its angular radius says how badly. A hemisphere
    capture (nothing from below: the object stands on something) and a turntable ring are
    normal and pass; cameras covering only half a ring, or only a cone on one side, are
    reported with the side in Blender's terms (front = -Y, right = +X, top = +Z);
  * many cameras that do not have the scene centre in their image.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

MIN_VIEWS = 8
COMFORTABLE_VIEWS = 24

# Largest unseen cap (degrees) tolerated, by where the unseen side points (interpolated
# linearly in the sine of its elevation): horizontally (the object's sides) 80, so half a
# ring (90) is reported while a ring missing a quarter (45) or a sparse full sphere of 8
# views (54) is not; straight up 95, so a turntable ring at the horizon (90) passes and one
# below it does not; straight down 135, so an upper-hemisphere capture (90-100) and a ring
# 30 degrees up (120) pass, and a ring looking down from 45 degrees or more does not.
GAP_HORIZONTAL_DEG = 80.0
GAP_UP_EXTRA_DEG = 15.0
GAP_DOWN_EXTRA_DEG = 55.0

NO_PARALLAX_RATIO = 0.02        # camera spread / distance to the centre below this: no parallax
OFF_CENTRE_FRACTION = 0.5       # warn when more than this share of cameras miss the centre
_CANDIDATES = 4096              # directions tried for the unseen cap (about 3 degrees apart)

# Blender's names for the sides of an object (Front view looks from -Y, Right from +X, Top from +Z).
_SIDES = (((0.0, -1.0, 0.0), "the front (-Y)"), ((0.0, 1.0, 0.0), "the back (+Y)"),
          ((1.0, 0.0, 0.0), "the right (+X)"), ((-1.0, 0.0, 0.0), "the left (-X)"),
          ((0.0, 0.0, 1.0), "the top (+Z)"), ((0.0, 0.0, -1.0), "below (-Z)"))


@dataclass
class CoverageReport:
    """What ``check_views`` found. ``ok`` is False when there is any error."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def messages(self) -> list[str]:
        return list(self.errors) + list(self.warnings)


# --------------------------------------------------------------------------- helpers


def _display_name(frame: Any, root: Path | None) -> str:
    path = getattr(frame, "file_path", None)
    if path is None:
        return getattr(frame, "name", "") or "?"
    path = Path(path)
    if root is not None:
        try:
            return path.relative_to(root).as_posix()
        except ValueError:
            pass
    name = getattr(frame, "name", "")
    if name:
        return str(name)
    return "/".join(path.parts[-2:])


def _image_size(path: Path) -> tuple[int, int] | None:
    """(w, h) from the file (PNG header, or Pillow), None when it cannot be read."""
    from .datasets import DatasetError, image_size

    try:
        return tuple(int(v) for v in image_size(path))  # type: ignore[return-value]
    except DatasetError:
        return None


def _is_exr(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == b"\x76\x2f\x31\x01"
    except OSError:
        return False


def fibonacci_sphere(count: int) -> np.ndarray:
    i = np.arange(count, dtype=np.float64)
    z = 1.0 - (2.0 * i + 1.0) / count
    r = np.sqrt(np.clip(1.0 - z * z, 0.0, None))
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def gap_threshold_deg(elevation_sin: np.ndarray | float) -> np.ndarray:
    """The largest unseen cap (degrees) tolerated around a direction whose dot product with
    the up axis is ``elevation_sin``."""
    e = np.asarray(elevation_sin, dtype=np.float64)
    return GAP_HORIZONTAL_DEG + GAP_UP_EXTRA_DEG * np.clip(e, 0, None) + GAP_DOWN_EXTRA_DEG * np.clip(-e, 0, None)


def unseen_caps(directions: np.ndarray, candidates: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(candidate unit directions (K, 3), angle in degrees from each to the nearest of
    ``directions``): the angular radius of the empty cap around every candidate."""
    directions = np.asarray(directions, dtype=np.float64).reshape(-1, 3)
    if candidates is None:
        candidates = np.concatenate([fibonacci_sphere(_CANDIDATES), -directions,
                                     -directions.mean(axis=0, keepdims=True)])
    norms = np.linalg.norm(candidates, axis=1)
    candidates = candidates[norms > 1e-9] / norms[norms > 1e-9, None]
    nearest = np.empty(len(candidates))
    for start in range(0, len(candidates), 1024):
        block = candidates[start:start + 1024] @ directions.T
        nearest[start:start + 1024] = block.max(axis=1)
    return candidates, np.degrees(np.arccos(np.clip(nearest, -1.0, 1.0)))


def describe_direction(direction: Sequence[float]) -> str:
    """A side of the object in Blender's words: 'the back (+Y)', 'the back (+Y) and below (-Z)'."""
    d = np.asarray(direction, dtype=np.float64)
    d = d / max(float(np.linalg.norm(d)), 1e-12)
    scored = sorted(((float(d @ np.array(axis)), name) for axis, name in _SIDES), reverse=True)
    names = [name for score, name in scored if score >= 0.38]   # within ~68 degrees of the axis
    if not names:
        names = [scored[0][1]]
    return " and ".join(names[:2])


# --------------------------------------------------------------------------- the check


def check_views(frames: Iterable[Any], *, center: Sequence[float] | None = None, root: str | os.PathLike | None = None,
                min_views: int = MIN_VIEWS, comfortable_views: int = COMFORTABLE_VIEWS,
                check_images: bool = True, up: Sequence[float] = (0.0, 0.0, 1.0)) -> CoverageReport:
    """Check that ``frames`` (``datasets.Frame``: ``c2w``, ``intrinsics``, ``file_path``) can train a NeRF.

    ``center``: the scene centre (normalization.json's ``center``); None estimates it from the
    cameras (the point closest to all optical axes, as ``datasets.normalization_for_cameras``).
    ``root``: the dataset folder, to name images relative to it. ``check_images``: read each
    image's size from its file (PNG header) and report missing files. ``up``: the world up
    axis (Blender: +Z), so that an unseen bottom counts less than an unseen side.
    """
    frames = list(frames)
    report = CoverageReport()
    root_path = Path(root).absolute() if root is not None else None
    n = len(frames)
    report.stats["views"] = n
    if n == 0:
        report.errors.append("The dataset has no camera views: render a capture (Render Capture) or choose "
                             "a folder with a transforms.json that lists its images.")
        return report
    names = [_display_name(frame, root_path) for frame in frames]

    # ---- images: present, sizes as declared, all one size
    sizes: list[tuple[int, int] | None] = []
    missing: list[str] = []
    unreadable: list[str] = []
    exr: list[str] = []
    disagree: list[str] = []
    for frame, name in zip(frames, names):
        intr = getattr(frame, "intrinsics", None)
        declared = (int(intr.w), int(intr.h)) if intr is not None else None
        actual = None
        path = getattr(frame, "file_path", None)
        if check_images and path is not None:
            path = Path(path)
            if not path.is_file():
                missing.append(name)
            elif _is_exr(path):
                exr.append(name)
            else:
                actual = _image_size(path)
                if actual is None:
                    unreadable.append(name)
                elif declared is not None and actual != declared:
                    disagree.append(f"{name} is {actual[0]}x{actual[1]} but the transforms file says "
                                    f"{declared[0]}x{declared[1]}")
        sizes.append(actual or declared)
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        report.errors.append(f"{len(missing)} of {n} images are missing: {', '.join(missing[:3])}{more}. "
                             "Re-render the capture or fix the file paths in transforms.json.")
    if unreadable:
        more = f" and {len(unreadable) - 3} more" if len(unreadable) > 3 else ""
        report.errors.append(f"{len(unreadable)} of {n} images cannot be read as PNG or JPEG (corrupt, truncated or "
                             f"another format): {', '.join(unreadable[:3])}{more}. Re-render or re-export them as "
                             "PNG or JPEG.")
    if exr:
        more = f" and {len(exr) - 3} more" if len(exr) > 3 else ""
        report.errors.append(f"{len(exr)} of {n} images are OpenEXR ({', '.join(exr[:3])}{more}): NeRF training "
                             "reads 8-bit PNG or JPEG photos. Render the capture to PNG (Render Capture does) or "
                             "convert the images.")
    if disagree:
        more = f" ({len(disagree) - 2} more like it)" if len(disagree) > 2 else ""
        report.errors.append("Image sizes disagree with the cameras: " + "; ".join(disagree[:2]) + more +
                             ". Fix w/h in transforms.json or re-render the images.")
    known = [(size, name) for size, name in zip(sizes, names) if size is not None]
    distinct: dict[tuple[int, int], list[str]] = {}
    for size, name in known:
        distinct.setdefault(size, []).append(name)
    report.stats["image_sizes"] = {f"{w}x{h}": len(v) for (w, h), v in distinct.items()}
    if len(distinct) > 1:
        ordered = sorted(distinct.items(), key=lambda item: -len(item[1]))
        (size_a, names_a), (size_b, names_b) = ordered[0], ordered[1]
        odd = sum(len(v) for _, v in ordered[1:])
        report.errors.append(
            f"The images have different sizes: {names_a[0]} is {size_a[0]}x{size_a[1]} but {names_b[0]} is "
            f"{size_b[0]}x{size_b[1]} ({odd} of {n} images differ from the most common size). "
            "Render or export every view at one resolution.")

    # ---- how many views
    if n < min_views:
        report.errors.append(
            f"Only {n} camera view{'s' if n != 1 else ''}: a NeRF needs at least {min_views} (and works well from "
            f"{comfortable_views} up), seen from around the object. Add cameras (Make Capture Rig) and render again.")
    elif n < comfortable_views:
        report.warnings.append(
            f"Only {n} camera views: expect blurry or missing detail between them. {comfortable_views} or more, "
            "all around the object, give a much better result.")

    # ---- geometry of the views
    try:
        c2w = np.array([np.asarray(frame.c2w, dtype=np.float64) for frame in frames])
    except (TypeError, ValueError):
        report.errors.append("A camera's transform is not a 4x4 matrix.")
        return report
    if c2w.shape != (n, 4, 4) or not np.all(np.isfinite(c2w)):
        report.errors.append("A camera's transform is not a finite 4x4 matrix.")
        return report
    positions = c2w[:, :3, 3]
    forward = -c2w[:, :3, 2]
    forward = forward / np.maximum(np.linalg.norm(forward, axis=1, keepdims=True), 1e-12)
    if center is None:
        centre = _closest_point_to_axes(positions, forward)
        report.stats["center_from"] = "cameras"
    else:
        centre = np.asarray(center, dtype=np.float64).reshape(3)
        report.stats["center_from"] = "given"
    report.stats["center"] = centre.tolist()
    offsets = positions - centre
    distances = np.linalg.norm(offsets, axis=1)
    typical = float(np.median(distances))
    spread = float(np.max(np.linalg.norm(positions - positions.mean(axis=0), axis=1))) if n > 1 else 0.0
    report.stats["camera_spread"] = spread
    if n > 1 and spread < NO_PARALLAX_RATIO * max(typical, 1e-12):
        report.errors.append(
            "All cameras stand at (almost) the same spot, only turning: without moving the camera there is no "
            "parallax, so depth cannot be learned. Move the camera around the object between views.")
        return report
    if np.any(distances < 1e-9):
        report.warnings.append("A camera sits exactly at the scene centre.")
    directions = offsets / np.maximum(distances[:, None], 1e-12)

    # ---- unseen sides
    up_axis = np.asarray(up, dtype=np.float64)
    up_axis = up_axis / max(float(np.linalg.norm(up_axis)), 1e-12)
    candidates, gaps = unseen_caps(directions)
    excess = gaps - gap_threshold_deg(candidates @ up_axis)
    worst = int(np.argmax(excess))
    widest = int(np.argmax(gaps))
    report.stats["largest_unseen_deg"] = float(gaps[widest])
    report.stats["largest_unseen_direction"] = candidates[widest].tolist()
    report.stats["worst_unseen_deg"] = float(gaps[worst])
    report.stats["worst_unseen_direction"] = candidates[worst].tolist()
    if excess[worst] > 0:
        side = describe_direction(candidates[worst])
        report.stats["unseen_side"] = side
        report.warnings.append(
            f"Poor coverage: no camera looks at {side} of the object (no view within "
            f"{gaps[worst]:.0f} degrees of that side). The NeRF will be blurry or empty there and a mesh will "
            "have holes on that side. Add cameras there (Make Capture Rig, layout Sphere) if you need it.")

    # ---- cameras that do not look at the centre
    off = 0
    for index, frame in enumerate(frames):
        intr = getattr(frame, "intrinsics", None)
        if intr is None:
            continue
        local = np.linalg.inv(c2w[index]) @ np.append(centre, 1.0)
        depth = -local[2]
        if depth <= 0:
            off += 1
            continue
        u = intr.fl_x * local[0] / depth + intr.cx
        v = -intr.fl_y * local[1] / depth + intr.cy
        if not (0 <= u <= intr.w and 0 <= v <= intr.h):
            off += 1
    report.stats["cameras_missing_center"] = off
    if off > OFF_CENTRE_FRACTION * n:
        report.warnings.append(
            f"{off} of {n} cameras do not have the object's centre in their image: check that the cameras aim at "
            "the object and that the selection (the region to reconstruct) is right.")
    return report


def _closest_point_to_axes(positions: np.ndarray, forward: np.ndarray) -> np.ndarray:
    projectors = np.eye(3)[None] - forward[:, :, None] * forward[:, None, :]
    a = projectors.sum(axis=0)
    b = np.einsum("nij,nj->i", projectors, positions)
    if np.linalg.eigvalsh(a)[0] > 1e-6 * len(positions):
        return np.linalg.solve(a, b)
    return positions.mean(axis=0)


# --------------------------------------------------------------------------- a dataset folder


TRANSFORMS_NAMES = ("transforms.json", "transforms_train.json")


def training_transforms(folder: str | os.PathLike) -> Path | None:
    """The transforms file a NeRF trains on in ``folder``: transforms.json, else transforms_train.json."""
    folder = Path(folder)
    for name in TRANSFORMS_NAMES:
        if (folder / name).is_file():
            return folder / name
    return None


def check_dataset(folder: str | os.PathLike, **kwargs: Any) -> CoverageReport:
    """``check_views`` on a dataset folder's training views, centred on its normalization.json
    when it has one. A folder that cannot be read gives a report with one error."""
    from . import datasets

    folder = Path(folder)
    path = training_transforms(folder)
    if path is None:
        report = CoverageReport()
        report.errors.append(f"No transforms.json (or transforms_train.json) in {folder}: render a capture "
                             "(Render Capture) or choose a dataset folder.")
        return report
    try:
        frames = datasets.read_transforms(path)
    except datasets.DatasetError as exc:
        report = CoverageReport()
        report.errors.append(str(exc))
        return report
    center = kwargs.pop("center", None)
    if center is None:
        center = normalization_center(folder)
    return check_views(frames, center=center, root=folder, **kwargs)


def normalization_center(folder: str | os.PathLike) -> list[float] | None:
    """normalization.json's centre in ``folder``, or None when it is absent or unreadable."""
    import json

    try:
        data = json.loads((Path(folder) / "normalization.json").read_text(encoding="utf-8"))
        center = [float(v) for v in data["center"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if len(center) != 3 or not all(math.isfinite(v) for v in center):
        return None
    return center
