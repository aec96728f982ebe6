"""Our camera maths (blender_addon/cameras.py, datasets.py, camera_io.py) against real Blender's.

See scripts/cameras_check.py: 405 camera set-ups (lens x sensor fit x shift x pixel aspect x
resolution/percentage), each checked against Blender's own projections and round-tripped
through a transforms.json into a fresh Blender camera.
"""

from __future__ import annotations

import pytest

from blender_harness import run_blender_script

pytestmark = pytest.mark.blender


@pytest.fixture(scope="module")
def results(addon_zip, tmp_path_factory):
    return run_blender_script("cameras_check.py", tmp_path_factory.mktemp("cameras"),
                              {"zip": str(addon_zip)}, timeout=120)


def test_grid_covered(results):
    assert results["cases"] == 3 * 3 * 3 * 3 * 5
    assert results["w2cv_cases"] == 3 * 3 * 3 * 3 * 3   # 1920x1080 at 33 % and 101x77 at 50 % round


def test_projection_matches_blender(results):
    assert results["failure_count"] == 0, results["failures"]
    assert results["worst"]["calc_matrix_camera"] < 1e-3
    assert results["worst"]["world_to_camera_view"] < 1e-3


def test_round_trip_through_transforms_json(results):
    assert results["round_trip_failure_count"] == 0, results["round_trip_failures"]
    assert results["worst"]["round_trip_intrinsics"] < 1e-5
    assert results["worst"]["round_trip_pose"] < 1e-5
    assert results["worst"]["round_trip_pixels"] < 5e-3   # float32 pose storage, see the script


def test_unusable_cameras_are_refused_by_name(results):
    refused = results["refused"]
    assert "Camera 'Probe' is orthographic" in refused["ortho"]
    assert "Camera 'Probe' is scaled" in refused["scaled"]
    assert "Camera 'Copy': Blender limits lens" in refused["clamped"]


def test_rendered_size_is_rounded_down_like_ours(results):
    for size, (rendered, ours) in results["rendered"].items():
        assert rendered == ours, size
    assert results["rendered"]["(101, 77, 50)"][0] == [50, 38]
