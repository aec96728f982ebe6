"""Capture rig and render capture (blender_addon/capture.py) in real Blender, Cycles on the CPU.

See scripts/capture_check.py: an 8-camera rig around a moved/rotated/scaled emissive cube,
rendered at 48x40 into a dataset (with depth/normal EXR and masks), a tiny emissive marker
rendered through a shifted camera, and the refusals (no selection, an orthographic camera,
no cameras at all).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from blender_harness import run_blender_script

pytestmark = pytest.mark.blender


@pytest.fixture(scope="module")
def results(addon_zip, tmp_path_factory):
    return run_blender_script("capture_check.py", tmp_path_factory.mktemp("capture"),
                              {"zip": str(addon_zip)}, timeout=180)


def test_no_selection_is_refused(results):
    info = results["no_selection"]
    assert info["result"] == "None"
    assert "Select the objects to capture first" in info["error"]
    assert info["collections_unchanged"]


def test_rig_cameras_in_a_new_collection(results):
    assert results["rig_result"] == "{'FINISHED'}", results["rig_error"]
    assert results["rig_name"].startswith("Capture Rig") and results["rig_in_scene"]
    assert results["rig_count"] == 8
    assert len(results["new_objects"]) == 8 and results["rig_cameras_only_in_rig"]
    assert results["old_objects_unchanged"]


def test_rig_cameras_aim_at_centre_and_frame_the_sphere(results):
    checks = results["rig_checks"]
    distances = [c["distance"] for c in checks]
    assert max(distances) - min(distances) < 1e-5 * max(distances)
    assert min(distances) > results["rig_radius"]
    for c in checks:
        w, h = c["size"]
        assert c["type"] == "PERSP"
        assert np.allclose(c["center_px"], [w / 2, h / 2], atol=1e-3), c
        assert np.allclose(c["blender_center"][:2], [0.5, 0.5], atol=1e-5), c   # Blender's own projection agrees
        assert c["sphere_min"][0] > 0 and c["sphere_min"][1] > 0, c
        assert c["sphere_max"][0] < w and c["sphere_max"][1] < h, c
        near, far = c["clip"]
        assert near < c["distance"] - results["rig_radius"] and far > c["distance"] + results["rig_radius"]


def test_render_capture_dataset_matches_cameras(results):
    assert results["render_result"] == "{'FINISHED'}", results["render_error"]
    assert results["frame_count"] == 8
    root = Path(results["capture_dir"])
    for frame in results["frames"]:
        assert frame["pose_error"] < 1e-6, frame
        assert frame["intrinsics_match"], frame
        for key in ("depth_file_path", "normal_file_path", "mask_file_path"):
            assert (root / frame["extra"][key]).is_file(), (key, frame)
        rgba = np.array(Image.open(frame["file"]))
        assert rgba.shape == (40, 48, 4)
        alpha = rgba[..., 3]
        border = np.concatenate([alpha[0], alpha[-1], alpha[:, 0], alpha[:, -1]])
        assert border.max() == 0                     # background transparent
        assert alpha[18:22, 22:26].min() == 255      # the object (at the image centre) opaque
        mask = np.array(Image.open(root / frame["extra"]["mask_file_path"]))
        mask = mask[..., 0] if mask.ndim == 3 else mask
        assert np.abs(mask.astype(int) - alpha).max() <= 1
        exr = (root / frame["extra"]["depth_file_path"]).read_bytes()[:4000]
        assert b"ViewLayer.Depth.Z" in exr and b"ViewLayer.Normal.X" in exr
    assert (root / "normalization.json").is_file()


def test_normalization_covers_the_object(results):
    import json
    data = json.loads((Path(results["capture_dir"]) / "normalization.json").read_text())
    assert np.allclose(data["center"], results["rig_center"], atol=1e-6)
    low, high = np.array(results["rig_bbox"])
    assert np.allclose(data["center"], 0.5 * (low + high), atol=1e-5)
    # the object's bounding box lands inside the unit box, with room to spare
    assert 0.5 < data["scale"] * 0.5 * np.max(high - low) < 1.0


def test_scene_settings_restored(results):
    assert results["settings_after"] == results["settings_before"]


def test_marker_lands_on_the_predicted_pixel(results):
    assert results["marker_result"] == "{'FINISHED'}", results["marker_error"]
    rgba = np.array(Image.open(results["marker_image"])).astype(np.float64)
    alpha = rgba[..., 3]
    assert alpha.sum() > 0, "the marker is not in the image"
    ys, xs = np.mgrid[:alpha.shape[0], :alpha.shape[1]]
    centroid = [(alpha * (xs + 0.5)).sum() / alpha.sum(), (alpha * (ys + 0.5)).sum() / alpha.sum()]
    predicted = results["marker_predicted"]
    assert abs(predicted[0] - 32) > 2 or abs(predicted[1] - 24) > 2   # off the centre: tests fl and cx, cy
    assert np.hypot(centroid[0] - predicted[0], centroid[1] - predicted[1]) < 0.5, (centroid, predicted)


def test_bad_cameras_refused_and_nothing_written(results):
    ortho = results["ortho"]
    assert ortho["result"] == "None"
    assert "Camera 'OrthoCam' is orthographic" in ortho["error"] and "Nothing was written" in ortho["error"]
    assert not ortho["dir_exists"]
    none = results["no_cameras"]
    assert "No cameras" in none["error"] and not none["dir_exists"]


def test_capture_panel_under_main(results):
    assert results["panel_parent"] == "NEURALFIELDS_PT_main"
