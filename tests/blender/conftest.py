"""Blender tests: see blender_harness.py (each test runs a bpy script in a subprocess)."""

from __future__ import annotations

import pytest

from blender_harness import bpy_available


@pytest.fixture(scope="session")
def addon_zip(tmp_path_factory):
    if not bpy_available():
        pytest.skip("the bpy module is not installed in this Python")
    import build_addon
    return build_addon.build(tmp_path_factory.mktemp("dist") / "neural_fields-test.zip")
