"""inr_backend/coverage.py: is a set of views enough for a NeRF? Synthetic rigs (full spheres,
hemispheres, turntable rings, one-sided arcs), mixed image sizes, too few views."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from inr_backend import coverage, datasets
from inr_backend.cameras import Intrinsics

INTR = Intrinsics(fl_x=70.0, fl_y=70.0, cx=32.0, cy=32.0, w=64, h=64)
CENTRE = np.array([0.5, -1.0, 0.25])
LEGO = Path(__file__).resolve().parents[3] / "shared" / "data" / "lego"


def look_at(eye, target, up=(0.0, 0.0, 1.0)):
    forward = np.asarray(target, float) - np.asarray(eye, float)
    forward /= np.linalg.norm(forward)
    up = np.asarray(up, float)
    if abs(forward @ up) > 0.999:
        up = np.array([0.0, 1.0, 0.0])
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, np.cross(right, forward), -forward, eye
    return c2w


def frames_from_directions(directions, distance=4.0, centre=CENTRE, intr=INTR):
    return [datasets.Frame(file_path=f"images/{i:04d}.png", c2w=look_at(centre + distance * d, centre), intrinsics=intr)
            for i, d in enumerate(np.asarray(directions, float))]


def fibonacci(count, hemisphere=False):
    i = np.arange(count, dtype=float)
    z = 1.0 - (i + 0.5) / count if hemisphere else 1.0 - (2.0 * i + 1.0) / count
    r = np.sqrt(1.0 - z * z)
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def ring(count, elevation_deg, start_deg=0.0, span_deg=360.0):
    azimuth = np.radians(start_deg + np.linspace(0.0, span_deg, count, endpoint=span_deg < 360.0))
    e = math.radians(elevation_deg)
    return np.stack([math.cos(e) * np.cos(azimuth), math.cos(e) * np.sin(azimuth), np.full(count, math.sin(e))], axis=1)


def check(directions, **kwargs):
    kwargs.setdefault("center", CENTRE)
    return coverage.check_views(frames_from_directions(directions), check_images=False, **kwargs)


# --------------------------------------------------------------------------- good captures pass


@pytest.mark.parametrize("count", [24, 48, 100])
def test_full_sphere_is_clean(count):
    report = check(fibonacci(count))
    assert report.ok and report.warnings == [], report.messages()
    assert report.stats["largest_unseen_deg"] < 35


@pytest.mark.parametrize("count", [24, 48])
def test_upper_hemisphere_is_clean(count):
    """The NeRF-synthetic set-up: nothing from below (the object stands on something) is normal."""
    report = check(fibonacci(count, hemisphere=True))
    assert report.ok and report.warnings == [], report.messages()
    # the unseen side is below, and it is large: the check knows and accepts it
    assert report.stats["largest_unseen_deg"] > 85
    assert report.stats["largest_unseen_direction"][2] < -0.9


@pytest.mark.parametrize("elevation", [0.0, 15.0, 30.0])
def test_turntable_rings_are_clean(elevation):
    report = check(ring(36, elevation))
    assert report.ok and report.warnings == [], report.messages()


def test_centre_estimated_from_cameras_when_not_given():
    report = coverage.check_views(frames_from_directions(fibonacci(32)), check_images=False)
    assert report.ok and report.warnings == []
    assert report.stats["center_from"] == "cameras"
    assert np.allclose(report.stats["center"], CENTRE, atol=1e-9)


# --------------------------------------------------------------------------- one-sided captures warn


@pytest.mark.parametrize("start,missing", [(-135.0, "the back (+Y)"),    # cameras in front (-Y), arc 90 deg
                                           (-45.0, "the left (-X)"),     # cameras on the right (+X)
                                           (45.0, "the front (-Y)")])    # cameras behind (+Y)
def test_one_sided_arc_names_the_missing_side(start, missing):
    report = check(ring(24, 20.0, start_deg=start, span_deg=90.0))
    assert report.ok, report.errors                      # a warning, not an error: it still trains
    assert len(report.warnings) == 1, report.warnings
    text = report.warnings[0]
    assert "Poor coverage" in text and missing in text, text
    assert report.stats["unseen_side"].startswith(missing)


def test_half_ring_warns_about_the_back():
    report = check(ring(24, 10.0, start_deg=-180.0, span_deg=180.0))   # azimuth -180..0: the -Y half
    assert report.ok
    assert any("the back (+Y)" in w for w in report.warnings), report.warnings


def test_ring_missing_a_quarter_is_acceptable():
    report = check(ring(27, 20.0, start_deg=0.0, span_deg=270.0))
    assert report.ok and report.warnings == [], report.messages()


def test_cameras_only_from_high_above_warn_about_the_sides_below():
    report = check(ring(24, 60.0))
    assert any("below (-Z)" in w for w in report.warnings), report.warnings


def test_cameras_only_from_below_warn_about_the_top():
    report = check(ring(24, -20.0))
    assert any("the top (+Z)" in w for w in report.warnings), report.warnings


def test_narrow_cone_from_one_side():
    rng = np.random.default_rng(0)
    axis = np.array([1.0, 0.0, 0.0])
    directions = axis + 0.3 * rng.normal(size=(30, 3))
    report = check(directions / np.linalg.norm(directions, axis=1, keepdims=True))
    assert report.ok
    assert report.stats["largest_unseen_deg"] > 130
    assert any("the left (-X)" in w for w in report.warnings), report.warnings


# --------------------------------------------------------------------------- too few views


def test_too_few_views_is_an_error():
    report = check(fibonacci(coverage.MIN_VIEWS - 1))
    assert not report.ok
    assert any(f"Only {coverage.MIN_VIEWS - 1} camera views" in e and "at least 8" in e for e in report.errors)


def test_few_views_is_a_warning():
    report = check(fibonacci(coverage.MIN_VIEWS))
    assert report.ok
    assert any("Only 8 camera views" in w for w in report.warnings), report.warnings
    report = check(fibonacci(coverage.COMFORTABLE_VIEWS))
    assert report.warnings == []


def test_no_views_is_an_error():
    report = coverage.check_views([])
    assert not report.ok and "no camera views" in report.errors[0]


def test_one_spot_rotation_only_is_an_error():
    eye = np.array([0.0, -4.0, 1.0])
    frames = [datasets.Frame(file_path=f"images/{i:04d}.png", c2w=look_at(eye, eye + d), intrinsics=INTR)
              for i, d in enumerate(fibonacci(24))]
    report = coverage.check_views(frames, check_images=False)
    assert not report.ok and any("same spot" in e for e in report.errors), report.errors


def test_cameras_looking_away_warn():
    frames = frames_from_directions(fibonacci(24))
    for frame in frames:
        frame.c2w = frame.c2w @ np.diag([-1.0, 1.0, -1.0, 1.0])   # turned around (still a rotation)
    report = coverage.check_views(frames, center=CENTRE, check_images=False)
    assert any("24 of 24 cameras do not have the object's centre" in w for w in report.warnings), report.warnings


# --------------------------------------------------------------------------- images


def write_png(path: Path, w: int, h: int) -> None:
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGBA", (w, h), (200, 100, 50, 255)).save(path)


def make_dataset(root: Path, sizes, directions=None) -> Path:
    directions = fibonacci(len(sizes)) if directions is None else directions
    frames = []
    for index, ((w, h), d) in enumerate(zip(sizes, directions)):
        write_png(root / "images" / f"{index:04d}.png", w, h)
        intr = Intrinsics(fl_x=1.1 * w, fl_y=1.1 * w, cx=w / 2, cy=h / 2, w=w, h=h)
        frames.append(datasets.Frame(file_path=f"images/{index:04d}.png", c2w=look_at(CENTRE + 4 * d, CENTRE),
                                     intrinsics=intr))
    return datasets.write_transforms(root / "transforms.json", frames)


def test_mixed_sizes_name_two_files(tmp_path):
    sizes = [(64, 64)] * 22 + [(80, 60)] * 2
    make_dataset(tmp_path, sizes)
    report = coverage.check_dataset(tmp_path)
    assert not report.ok
    text = [e for e in report.errors if "different sizes" in e]
    assert len(text) == 1, report.errors
    assert "images/0000.png is 64x64" in text[0] and "images/0022.png is 80x60" in text[0], text[0]
    assert "2 of 24 images differ" in text[0]
    assert report.stats["image_sizes"] == {"64x64": 22, "80x60": 2}


def test_file_size_disagreeing_with_transforms_is_an_error(tmp_path):
    make_dataset(tmp_path, [(64, 64)] * 24)
    write_png(tmp_path / "images" / "0005.png", 32, 32)   # replaced after writing transforms.json
    report = coverage.check_dataset(tmp_path)
    assert any("images/0005.png is 32x32 but the transforms file says 64x64" in e for e in report.errors), report.errors


def test_missing_images_are_an_error(tmp_path):
    make_dataset(tmp_path, [(64, 64)] * 24)
    (tmp_path / "images" / "0003.png").unlink()
    report = coverage.check_dataset(tmp_path)
    assert any("1 of 24 images are missing: images/0003.png" in e for e in report.errors), report.errors


def test_clean_dataset_folder_uses_normalization_centre(tmp_path):
    make_dataset(tmp_path, [(64, 48)] * 24)
    datasets.write_normalization(tmp_path / "normalization.json",
                                 datasets.normalization_for_cameras([], roi_min=CENTRE - 0.5, roi_max=CENTRE + 0.5))
    report = coverage.check_dataset(tmp_path)
    assert report.ok and report.warnings == [], report.messages()
    assert report.stats["center_from"] == "given" and np.allclose(report.stats["center"], CENTRE)


def test_dataset_folder_without_transforms(tmp_path):
    report = coverage.check_dataset(tmp_path)
    assert not report.ok and "No transforms.json" in report.errors[0]


def test_train_split_is_what_is_checked(tmp_path):
    path = make_dataset(tmp_path, [(64, 64)] * 24)
    path.rename(tmp_path / "transforms_train.json")
    assert coverage.training_transforms(tmp_path).name == "transforms_train.json"
    assert coverage.check_dataset(tmp_path).ok


def test_unreadable_transforms_is_a_report_not_an_exception(tmp_path):
    (tmp_path / "transforms.json").write_text(json.dumps({"frames": [{"file_path": "../x.png",
                                                                      "transform_matrix": np.eye(4).tolist()}]}))
    report = coverage.check_dataset(tmp_path)
    assert not report.ok and "outside the dataset folder" in report.errors[0]


@pytest.mark.skipif(not LEGO.is_dir(), reason="../shared/data/lego is absent (real data for development only)")
def test_lego_train_split_is_clean():
    report = coverage.check_dataset(LEGO)
    assert report.ok and report.warnings == [], report.messages()
    assert report.stats["views"] == 100 and report.stats["image_sizes"] == {"400x400": 100}


def test_describe_direction():
    assert coverage.describe_direction([0, 1, 0]) == "the back (+Y)"
    assert coverage.describe_direction([0, 0, -1]) == "below (-Z)"
    assert coverage.describe_direction([1, 0, 1]) in ("the right (+X) and the top (+Z)", "the top (+Z) and the right (+X)")
