"""The Blender half of the bad-input catalogue (docs/bad_inputs.md): real operators of the add-on
installed from its zip, fed broken meshes, cameras, datasets and images. Every refusal is an
ERROR that names the thing and says what to do, bpy.data and the render settings are exactly
as before, and the jobs folder (holding an earlier finished job) is byte for byte the same.
Valid-but-unusual inputs (16-bit PNG, EXR, extra keys) import. See scripts/bad_inputs_catalogue.py.
"""

from __future__ import annotations

import pytest

from blender_harness import run_blender_script

pytestmark = pytest.mark.blender


@pytest.fixture(scope="module")
def results(addon_zip, tmp_path_factory):
    return run_blender_script("bad_inputs_catalogue.py", tmp_path_factory.mktemp("bad_catalogue"),
                              {"zip": str(addon_zip)}, timeout=300)


def refused(info, *phrases):
    assert info["result"] is None, info
    for phrase in phrases:
        assert phrase in info["error"], (phrase, info["error"])
    assert "Traceback" not in info["error"], info["error"]
    assert info["unchanged"], info["diff"]
    assert info["jobs_unchanged"], info


def test_broken_meshes_are_refused_by_name(results):
    refused(results["mesh_nan"], "'NaNCube' has 1 of 8 vertices with non-finite coordinates", "modifier")
    refused(results["mesh_point_cloud"], "'PointCloud' has no faces")
    refused(results["mesh_zero_area"], "'Flat' has zero surface area")


def test_a_five_million_triangle_mesh_is_refused_in_seconds(results):
    assert results["huge_triangles"] > 5_000_000
    info = results["mesh_huge"]
    refused(info, "'HugeGrid' has 5,", "triangles", "2,000,000", "Decimate", "ratio 0.39")
    assert info["seconds"] < 30, info["seconds"]    # reading the evaluated mesh dominates; no job, no backend


def test_cameras_that_cannot_make_pinhole_images_are_refused_by_name(results):
    refused(results["capture_ortho"], "Camera 'Camera' is orthographic", "Perspective", "Nothing was written")
    refused(results["capture_pano"], "Camera 'Camera' is panoramic", "Perspective")
    refused(results["capture_zero_pixels"], "Camera 'Camera'", "0x0 pixels", "resolution")
    assert results["capture_dir_written"] is False
    refused(results["use_photos_ortho"], "Camera 'Camera' is orthographic")
    assert results["photos_written"] is False
    assert results["lens_after_setting_zero"] == 1.0      # Blender itself refuses a zero focal length


@pytest.mark.parametrize("case, phrases", [
    ("import_nan_matrix", ["frame 1", "NaN or infinite"]),
    ("import_absolute_path", ["is absolute", "relative to its folder"]),
    ("import_parent_path", ["outside the dataset folder"]),
    ("import_zero_focal", ["focal lengths must be positive"]),
    ("import_wrong_type", ["w must be a number"]),
    ("import_no_matrix", ["missing 'transform_matrix'"]),
    ("import_mixed_sizes", ["10x6", "8x6", "one resolution"]),
    ("import_symlink_out", ["is a link to", "outside the dataset folder"]),
    ("import_missing_image", ["0001.png", "missing"]),
    ("import_truncated_image", ["Blender cannot read the image", "0001.png", "corrupt or truncated"]),
    ("import_corrupt_image", ["0001.png"]),
])
def test_broken_datasets_import_nothing(results, case, phrases):
    refused(results[case], *phrases)


@pytest.mark.parametrize("case", ["import_16bit", "import_exr", "import_extra_keys"])
def test_unusual_but_valid_datasets_import(results, case):
    info = results[case]
    assert info["result"] == ["FINISHED"], info
    assert info["added_objects"] == 3, info
    assert info["jobs_unchanged"]


def test_nerf_training_refuses_exr_views_before_writing_a_job(results):
    refused(results["nerf_exr"], "OpenEXR", "PNG")
    assert results["jobs_after"] == ["20250101-000000-Earlier-abc123"]
