"""Mesh to Neural Field with Representation: Occupancy, in real Blender with the real backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from blender_harness import run_blender_script
from test_addon_e2e import chamfer_l1

pytestmark = pytest.mark.blender

RESOLUTION = 64


def test_occupancy_conversion_lands_on_the_source(addon_zip, tmp_path):
    results = run_blender_script("occupancy_convert.py", tmp_path, {
        "zip": str(addon_zip), "jobs_dir": str(tmp_path / "jobs"), "max_steps": 100,
        "resolution": RESOLUTION, "subdivision": 0}, timeout=300)
    assert results["return"] == ["FINISHED"], results["_output"]
    assert results["new_object"] == "Suzanne_occupancy"
    assert results["job_json"]["task"] == "occupancy"
    assert results["job_json"]["config"]["resolution"] == RESOLUTION
    assert results["result"]["status"] == "done"
    assert results["source_unchanged"]
    assert results["active"] == "Suzanne_occupancy"
    assert results["new_collections"] == results["source_collections"]
    np.testing.assert_allclose(results["new_matrix"], results["source_matrix"], atol=1e-6)
    assert results["objects_after"] == sorted(results["objects_before"] + ["Suzanne_occupancy"])
    assert results["state"]["last_status"] == "done" and "Suzanne_occupancy" in results["state"]["last_message"]
    assert Path(results["job"]).parent == tmp_path / "jobs"

    data = np.load(tmp_path / "meshes.npz")
    source_v, source_f, new_v, new_f = data["source_v"], data["source_f"], data["new_v"], data["new_f"]
    diagonal = float(np.linalg.norm(source_v.max(0) - source_v.min(0)))
    error = chamfer_l1(source_v, source_f, new_v, new_f, samples=20_000) / diagonal
    print(f"occupancy: Chamfer-L1 / diagonal {error:.4f}, {len(new_f)} triangles, "
          f"conversion {results['seconds']:.1f} s, metrics {results['result'].get('metrics')}")
    # On top of the source, in world coordinates: the bounding boxes agree to about two
    # marching-cubes cells (a cell at 64^3 spans 2/64 of the backend's unit box, whose longest
    # side maps to ~0.9 of it: ~2.6% of the bounding-box diagonal of this roughly cubic mesh).
    # A transform bug (local vs world, normalization not undone) is off by the object's scale
    # (1.5x) or its offset (2.3 units), tens of percent.
    np.testing.assert_allclose(new_v.min(0), source_v.min(0), atol=0.05 * diagonal)
    np.testing.assert_allclose(new_v.max(0), source_v.max(0), atol=0.05 * diagonal)
    # And the surface itself: within about one cell on average (measured ~0.6% after 100 CPU steps).
    assert error < 0.03, error
    # The occupancy metrics reach the panel: volumetric IoU against the source's own labels
    # (~0.97 measured; a field with inside and outside swapped would give ~0).
    metrics = results["result"]["metrics"]
    assert metrics["iou"] > 0.85 and results["metrics_property"]["iou"] == pytest.approx(metrics["iou"])
