"""Blender reads the EXR/PNG files imageio writes, and imageio reads Blender's (bpy in a subprocess)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "blender"))
from blender_harness import bpy_available, run_blender_script  # noqa: E402

pytestmark = [pytest.mark.blender,
              pytest.mark.skipif(not bpy_available(), reason="the bpy module is not installed in this Python")]


def test_exr_and_png16_round_trip_with_blender(tmp_path):
    facts = run_blender_script("imageio_roundtrip.py", tmp_path, {}, timeout=240)

    for name, fact in facts["ours_in_blender"].items():
        assert fact["max_abs_diff"] == 0.0, (name, fact)
        assert fact["size"] == [53, 37] and fact["is_float"], (name, fact)
        if fact["grey_replicated"] is not None:
            assert fact["grey_replicated"], name

    ours = facts["blender_in_ours"]
    for name in ("blender_ZIP_32.exr", "blender_NONE_32.exr", "blender_ZIP_16.exr"):
        assert ours[name].get("max_abs_diff") == 0.0, (name, ours[name])
        assert ours[name]["info"]["channels"] == 4 and ours[name]["info"]["colour_space"] == "linear"
    assert ours["blender_ZIP_16.exr"]["info"]["exr_pixel_type"] == "half"
    piz = ours["blender_PIZ_16.exr"]["error"]
    assert "PIZ" in piz and "ZIP codec" in piz

    png = facts["blender_png16"]
    assert png["info"]["bit_depth"] == 16 and png["info"]["channels"] == 4
    assert png["max_abs_diff_vs_blender"] < 1e-6
    assert facts["ours_png16_in_blender"]["max_abs_diff"] < 1e-6
