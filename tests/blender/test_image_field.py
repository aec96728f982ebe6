"""Fit Neural Image and Resample in real Blender (bpy, background mode), with the real backend."""

from __future__ import annotations

import json

import numpy as np
import pytest

from blender_harness import run_blender_script
from test_addon_e2e import python_without_torch

pytestmark = pytest.mark.blender


def test_image_bad_inputs_fail_cleanly(addon_zip, tmp_path):
    results = run_blender_script("image_field_bad_input.py", tmp_path, {
        "zip": str(addon_zip), "jobs_dir": str(tmp_path / "jobs"),
        "no_torch_python": python_without_torch(tmp_path)}, timeout=180)
    assert results["registered"] == [True, True, True]
    expected = {
        "no_image": "Open or create an image in the Image Editor first",
        "unknown_name": "There is no image named 'no such image'",
        "one_pixel": "Image 'one_pixel' is 1x1 pixels: a neural image needs at least 2x2 pixels",
        "one_row": "Image 'one_row' is 16x1 pixels",
        "empty": "Image 'missing_file' has no pixels (0x0): its file may be missing",
        "corrupt": "Image 'corrupt' has no pixels (0x0)",
        "transparent": "Image 'transparent' is fully transparent",
        "too_large": "is too large",
        "missing_python": "Backend Python not found: /nonexistent/python3",
        "no_torch": "cannot import torch",
        "resample_not_fitted": "This image was not made by Fit Neural Image",
        "resample_job_gone": "The job folder of this image is gone",
        "resample_no_image": "Open an image made by Fit Neural Image in the Image Editor first",
    }
    for label, words in expected.items():
        outcome = results[label]
        assert outcome["error"] and words in outcome["error"], (label, outcome)
        assert outcome["images_unchanged"], label
        assert outcome["state"]["running"] is False, label
    for label in ("missing_python", "no_torch"):
        assert results[label]["state"]["last_status"] == "failed", label
    assert results["earlier_still_there"] and results["painted_pixels_kept"]

    idle = json.dumps(results["panel_idle"])
    assert "neural_fields.fit_image" in idle and "neural_fields.resample_image" in idle and "scale" in idle
    assert '"width"' in json.dumps(results["panel_size"]) and '"scale"' not in json.dumps(results["panel_size"])
    running = results["panel_running"]
    bars = [call for call in running if call[0] == "progress"]
    assert len(bars) == 1 and bars[0][2]["text"] == "Training: step 5/20" and abs(bars[0][2]["factor"] - 0.25) < 1e-6
    assert "neural_fields.cancel_image" in json.dumps(running)
    done = json.dumps(results["panel_done"])
    for words in ("PSNR", "31.5", "SSIM", "0.93", "12 s", "pattern_x4"):
        assert words in done, words

    render = results["render"]
    assert render["shape"] in ([8, 12, 3], [8, 12, 4]) and render["is_float"] and render["finite"]
    assert render["format_restored"]
