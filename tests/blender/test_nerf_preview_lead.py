"""Two NeRF trainings at once (preference Jobs at Once 2): the NeRF panel's one preview image
follows the lead training (the oldest running, as the panel's progress does), not whichever
training sent the latest preview. Real Blender (bpy), real backends on the CPU."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backend"))

import nerf_scene  # noqa: E402
from blender_harness import run_blender_script  # noqa: E402


def test_with_two_trainings_the_preview_follows_the_lead_one(addon_zip, tmp_path):
    datasets = [nerf_scene.write_scene(tmp_path / f"scene{index}", n_views=24, size=24) for index in range(2)]
    # The second training runs longer, so it becomes the lead when the first ends.
    results = run_blender_script("nerf_two_trainings.py", tmp_path / "blender",
                                 {"zip": str(addon_zip), "datasets": [str(folder) for folder in datasets],
                                  "steps": [100, 400], "jobs_dir": str(tmp_path / "jobs")}, timeout=400)
    assert results["finished"] == [True, True], results["_output"][-3000:]
    assert [ending[0] for ending in results["endings"]] == ["INFO", "INFO"], results["endings"]
    ticks = results["ticks"]
    both_running = [owner for owner, running in ticks if running == [True, True]]
    second_alone = [owner for owner, running in ticks if running == [False, True]]
    # While both train, every preview shown is the first's (the second sent its own all along).
    assert both_running and set(both_running) == {0}, both_running
    # Once the first has ended, the second's previews take over.
    assert second_alone and second_alone[-1] == 1, second_alone
