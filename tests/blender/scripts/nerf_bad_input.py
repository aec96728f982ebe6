"""NeRF operators on bad input (the add-on installed from its zip): each is refused with an ERROR
that says what to do, and bpy.data is left exactly as it was. No training happens here.

Reports facts as JSON; tests/blender/test_nerf_bad_input.py asserts on them.
"""

import json
import math
import sys
import tempfile
import time
from pathlib import Path

import bpy
import numpy as np
from PIL import Image

import bl_common as common


LAYOUT_FUNCTIONS = set(bpy.types.UILayout.bl_rna.functions.keys())


class Recorder:
    """A stand-in UILayout that checks every call and prop() name (background mode draws nothing)."""

    def __init__(self, calls):
        self._calls = calls

    def __setattr__(self, name, value):
        if not name.startswith("_"):
            assert name in bpy.types.UILayout.bl_rna.properties.keys(), f"UILayout has no property {name}"
        object.__setattr__(self, name, value)

    def __getattr__(self, name):
        assert name in LAYOUT_FUNCTIONS, f"UILayout has no function {name}"

        def call(*args, **kwargs):
            if name == "prop":
                assert args[1] in args[0].bl_rna.properties.keys(), f"{args[0]} has no property {args[1]}"
            if name == "operator":
                category, op = args[0].split(".")
                assert hasattr(getattr(bpy.ops, category), op), args[0]
            self._calls.append([name, [a if isinstance(a, (str, int, float)) else type(a).__name__ for a in args],
                                {k: v if isinstance(v, (str, int, float, bool)) else repr(v) for k, v in kwargs.items()}])
            return Recorder(self._calls)
        return call


def draw_panel(panel):
    calls = []

    class Self:
        layout = Recorder(calls)

    panel.draw(Self, bpy.context)
    return calls


def data_snapshot():
    collections = ("objects", "meshes", "materials", "images", "cameras", "collections", "lights", "textures")
    snap = {name: sorted(item.name for item in getattr(bpy.data, name)) for name in collections}
    snap["frame"] = bpy.context.scene.frame_current
    snap["camera"] = bpy.context.scene.camera.name if bpy.context.scene.camera else None
    return snap


def run_op(op, **kwargs):
    before = data_snapshot()
    try:
        result, error = op(**kwargs), ""
    except RuntimeError as exc:
        result, error = None, str(exc)
    return {"result": str(result), "error": error, "unchanged": data_snapshot() == before,
            "diff": {k: [before[k], v] for k, v in data_snapshot().items() if before[k] != v}}


def look_at(eye, target):
    forward = np.asarray(target, float) - np.asarray(eye, float)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, np.cross(right, forward), -forward, eye
    return c2w


def make_dataset(root: Path, directions, sizes, datasets, cameras):
    frames = []
    for index, (d, (w, h)) in enumerate(zip(directions, sizes)):
        path = root / "images" / f"{index:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGBA", (w, h), (180, 60, 40, 255)).save(path)
        intr = cameras.Intrinsics(fl_x=1.2 * w, fl_y=1.2 * w, cx=w / 2, cy=h / 2, w=w, h=h)
        frames.append(datasets.Frame(file_path=f"images/{index:04d}.png", c2w=look_at(4.0 * np.asarray(d), [0, 0, 0]),
                                     intrinsics=intr))
    datasets.write_transforms(root / "transforms.json", frames)
    return root


def ring(count, elevation_deg, start_deg=0.0, span_deg=360.0):
    azimuth = np.radians(start_deg + np.linspace(0.0, span_deg, count, endpoint=span_deg < 360.0))
    e = math.radians(elevation_deg)
    return np.stack([math.cos(e) * np.cos(azimuth), math.cos(e) * np.sin(azimuth), np.full(count, math.sin(e))], axis=1)


def main(args):
    work = Path(args["work"])
    tempfile.tempdir = str(work / "tmp")          # Render Capture's default folder lands here, empty
    (work / "tmp").mkdir(parents=True, exist_ok=True)
    common.setup(args["zip"])
    backend = common.addon_module("_backend")
    datasets, cameras = backend.datasets, backend.cameras
    prefs = common.preferences()
    prefs.jobs_dir = str(work / "jobs")
    ops = bpy.ops.neural_fields
    out = {"registered": {name: hasattr(ops, name) for name in
                          ("train_nerf", "render_nerf_view", "render_nerf_animation", "extract_nerf_mesh", "cancel_nerf")}}
    settings = bpy.context.scene.neural_fields_nerf
    state = bpy.context.window_manager.neural_fields_nerf_state

    # ---- training: nothing to train on
    out["no_capture"] = run_op(ops.train_nerf)
    out["missing_folder"] = run_op(ops.train_nerf, dataset_dir=str(work / "nope"))
    (work / "empty").mkdir()
    out["no_transforms"] = run_op(ops.train_nerf, dataset_dir=str(work / "empty"))
    few = make_dataset(work / "few", ring(5, 20), [(32, 32)] * 5, datasets, cameras)
    settings.dataset_dir = str(few)                   # through the panel's setting this time
    out["too_few"] = run_op(ops.train_nerf)
    settings.dataset_dir = ""
    mixed = make_dataset(work / "mixed", ring(24, 20), [(32, 32)] * 20 + [(40, 30)] * 4, datasets, cameras)
    out["mixed_sizes"] = run_op(ops.train_nerf, dataset_dir=str(mixed))
    out["jobs_after_refusals"] = sorted(p.name for p in (work / "jobs").glob("*")) if (work / "jobs").exists() else []

    # ---- a one-sided capture: the coverage warning comes before the start (here the start fails
    # at once, because the backend Python does not exist, so nothing trains)
    one_sided = make_dataset(work / "one_sided", ring(24, 20, start_deg=-135.0, span_deg=90.0), [(32, 32)] * 24,
                             datasets, cameras)
    prefs.backend_python = str(work / "no-such-python")
    out["one_sided"] = run_op(ops.train_nerf, dataset_dir=str(one_sided))
    out["one_sided"]["warnings"] = state.last_warnings
    out["one_sided"]["running_after"] = state.running
    prefs.backend_python = ""
    out["train_poll_after"] = ops.train_nerf.poll()

    # ---- render / extract without a trained job
    scene = bpy.context.scene
    out["render_no_job"] = run_op(ops.render_nerf_view)
    out["animation_no_job"] = run_op(ops.render_nerf_animation)
    out["extract_no_job"] = run_op(ops.extract_nerf_mesh)
    settings.job_dir = str(work / "jobs")            # a folder that is not a job
    out["render_not_a_job"] = run_op(ops.render_nerf_view)
    settings.job_dir = ""

    # ---- cameras that cannot be rendered
    camera = scene.camera
    scene.camera = None
    out["no_camera"] = run_op(ops.render_nerf_view)
    scene.camera = camera
    camera.data.type = 'ORTHO'
    out["ortho"] = run_op(ops.render_nerf_view)
    out["ortho_animation"] = run_op(ops.render_nerf_animation)
    camera.data.type = 'PERSP'
    camera.scale = (2.0, 1.0, 1.0)
    bpy.context.view_layer.update()
    out["scaled"] = run_op(ops.render_nerf_view)
    camera.scale = (1.0, 1.0, 1.0)
    out["last_status"] = [state.last_status, state.last_message]

    # ---- Esc while training: the modal operator's code driven by hand (background mode has no
    # event loop), with the real backend: it stops, reports "cancelled", adds nothing
    nerf = common.addon_module("nerf")
    good = make_dataset(work / "good", ring(24, 25), [(32, 32)] * 24, datasets, cameras)
    settings.dataset_dir = str(good)
    settings.preset, settings.max_steps = 'fast', 100000

    class Event:
        def __init__(self, type, value="NOTHING"):
            self.type, self.value = type, value

    class Modal(nerf._BackendOperator):
        reports = []

        def start(self, context):
            task, self._warnings = nerf.start_training(context)
            return task

        def report(self, level, message):
            self.reports.append([sorted(level)[0], message])

    before = data_snapshot()
    operator = Modal()
    operator._task, operator._timer = operator._begin(bpy.context), None
    modal_out = {"running_after_start": state.running, "poll_while_running": ops.train_nerf.poll(),
                 "cancel_poll": ops.cancel_nerf.poll()}
    deadline = time.monotonic() + 120
    while operator._task.progress.device is None and time.monotonic() < deadline:   # until the backend started
        operator.modal(bpy.context, Event('TIMER'))
        time.sleep(0.1)
    modal_out["escape"] = sorted(operator.modal(bpy.context, Event('ESC', 'PRESS')))
    returned = None
    while returned is None or returned == {'PASS_THROUGH'}:
        returned = operator.modal(bpy.context, Event('TIMER'))
        time.sleep(0.05)
        if time.monotonic() > deadline:
            break
    operator._task.runner.wait_exit(timeout=10.0)
    modal_out.update(returned=sorted(returned), reports=Modal.reports, running_after=state.running,
                     last_status=state.last_status, job_dir_setting=settings.job_dir,
                     unchanged=data_snapshot() == before,
                     result_status=json.loads((operator._task.job_dir / "result.json").read_text())["status"],
                     backend_alive=operator._task.runner.is_alive)
    out["modal_cancel"] = modal_out
    settings.dataset_dir = ""

    # ---- the panel in its states (drawn with a recording layout)
    panel = common.addon_module("nerf").NEURALFIELDS_PT_nerf
    out["panel_parent"] = panel.bl_parent_id
    out["draw_idle"] = draw_panel(panel)
    state.running, state.task, state.progress = True, "train", 0.3
    state.status_text, state.loss, state.psnr = "Training: step 30/100", 0.01, 21.5
    preview = bpy.data.images.new("NeRF Preview", 16, 16)
    preview.preview_ensure()
    state.preview_image, state.preview_text = preview.name, "Preview: step 30, PSNR 20.00 dB"
    out["draw_running"] = draw_panel(panel)
    state.running, state.task = False, ""
    state.last_status, state.last_message = "done", "NeRF trained (PSNR 28.00 dB)"
    state.last_result_json = json.dumps({"metrics": {"psnr": 28.0, "ssim": 0.9, "n_eval_views": 5},
                                         "timings": {"total": 61.0}, "device": "cpu"})
    state.last_warnings = "Poor coverage: no camera looks at the back (+Y)"
    out["draw_finished"] = draw_panel(panel)
    return out


common.run_main(main)
