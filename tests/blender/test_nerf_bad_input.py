"""NeRF operators refuse bad input with a clear ERROR and leave bpy.data unchanged (real Blender,
the add-on installed from its zip; no training). See scripts/nerf_bad_input.py."""

from __future__ import annotations

import pytest

from blender_harness import run_blender_script

pytestmark = pytest.mark.blender


@pytest.fixture(scope="module")
def results(addon_zip, tmp_path_factory):
    return run_blender_script("nerf_bad_input.py", tmp_path_factory.mktemp("nerf_bad"), {"zip": str(addon_zip)},
                              timeout=120)


def refused(info, *phrases):
    assert info["result"] == "None", info
    for phrase in phrases:
        assert phrase in info["error"], (phrase, info["error"])
    assert info["unchanged"], info["diff"]


def test_operators_registered(results):
    assert all(results["registered"].values()), results["registered"]


def test_no_capture_or_dataset(results):
    refused(results["no_capture"], "No capture to train on", "Render Capture")
    refused(results["missing_folder"], "does not exist", "Render Capture")
    refused(results["no_transforms"], "holds no transforms.json")


def test_too_few_views(results):
    refused(results["too_few"], "Only 5 camera views", "at least 8")


def test_mixed_sizes_name_two_files(results):
    refused(results["mixed_sizes"], "different sizes", "images/0000.png is 32x32", "images/0020.png is 40x30")


def test_refusals_write_no_job(results):
    assert results["jobs_after_refusals"] == []


def test_one_sided_capture_warned_before_starting(results):
    info = results["one_sided"]
    assert "Poor coverage" in info["warnings"] and "the back (+Y)" in info["warnings"], info["warnings"]
    # the start itself failed (no such backend Python): reported, nothing added to the file
    assert "Backend Python not found" in info["error"], info["error"]
    assert info["unchanged"], info["diff"]
    assert info["running_after"] is False
    assert results["train_poll_after"] is True      # a failed start does not block the next one


def test_render_and_extract_need_a_trained_job(results):
    for key in ("render_no_job", "animation_no_job", "extract_no_job"):
        refused(results[key], "No trained NeRF yet", "Train NeRF")
    refused(results["render_not_a_job"], "is gone")


def test_cameras_that_cannot_render(results):
    refused(results["no_camera"], "no active camera")
    refused(results["ortho"], "is orthographic", "Perspective")
    refused(results["ortho_animation"], "is orthographic")
    refused(results["scaled"], "scaled")


def test_escape_cancels_training(results):
    """The modal operator's code, driven with TIMER events and an ESC press, with the real backend."""
    info = results["modal_cancel"]
    assert info["running_after_start"] is True and info["cancel_poll"] is True
    assert info["poll_while_running"] is True       # a second press queues another training
    assert info["escape"] == ["RUNNING_MODAL"]
    assert info["returned"] == ["CANCELLED"]
    assert ["WARNING", "NeRF training cancelled"] in info["reports"], info["reports"]
    assert info["running_after"] is False and info["last_status"] == "cancelled"
    assert info["job_dir_setting"] == ""          # a cancelled job is not used for rendering
    assert info["result_status"] == "cancelled" and info["backend_alive"] is False
    assert info["unchanged"]


def _texts(calls):
    return [kwargs.get("text", "") for _name, _args, kwargs in calls]


def _operators(calls):
    return [args[0] for name, args, _kwargs in calls if name == "operator"]


def test_panel_draws_in_every_state(results):
    assert results["panel_parent"] == "NEURALFIELDS_PT_main"
    idle = results["draw_idle"]
    assert "neural_fields.train_nerf" in _operators(idle)
    assert {"neural_fields.render_nerf_view", "neural_fields.render_nerf_animation",
            "neural_fields.extract_nerf_mesh"} <= set(_operators(idle))
    running = results["draw_running"]
    assert "neural_fields.cancel_nerf" in _operators(running) and "neural_fields.train_nerf" in _operators(running)
    assert "Queue Train NeRF" in _texts(running)   # pressing it while one trains queues another
    assert "Training: step 30/100" in _texts(running)
    assert "PSNR 21.50 dB" in _texts(running) and "Loss 0.01" in _texts(running)
    assert any(name == "progress" for name, _a, _k in running)
    assert "Preview: step 30, PSNR 20.00 dB" in _texts(running)
    finished = results["draw_finished"]
    texts = _texts(finished)
    assert "NeRF trained (PSNR 28.00 dB)" in texts and "28.00 dB" in texts and "1 min 01 s" in texts
    assert any(text.startswith("Poor coverage") for text in texts)
