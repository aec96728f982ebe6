"""Fit Neural Image / Resample on bad input: a clear error, nothing added to bpy.data.images,
the images already there untouched. Also draws the Image Editor panel with a recording layout
and reads a Render Result's pixels (the path a render takes into a fit)."""

import hashlib

import bpy
import numpy as np

import bl_common as common

LAYOUT_FUNCTIONS = set(bpy.types.UILayout.bl_rna.functions.keys())


def image_fingerprint(image) -> dict:
    info = {"size": list(image.size), "source": image.source, "type": image.type, "filepath": image.filepath,
            "is_dirty": image.is_dirty, "packed": image.packed_file is not None}
    if image.has_data and image.size[0] * image.size[1] > 0:
        pixels = np.empty(len(image.pixels), np.float32)
        image.pixels.foreach_get(pixels)
        info["sha1"] = hashlib.sha1(pixels.tobytes()).hexdigest()
    return info


def images_snapshot() -> dict:
    return {image.name: image_fingerprint(image) for image in bpy.data.images}


def attempt(label, results, operator="fit_image", **kwargs):
    before = images_snapshot()
    outcome = {"error": None}
    try:
        outcome["return"] = sorted(getattr(bpy.ops.neural_fields, operator)('INVOKE_DEFAULT', **kwargs))
    except RuntimeError as exc:
        outcome["error"] = str(exc)
    after = images_snapshot()
    outcome["images_unchanged"] = before == after
    outcome["images_after"] = sorted(after)
    state = bpy.context.window_manager.neural_fields_image_state
    outcome["state"] = {"running": state.running, "last_status": state.last_status}
    results[label] = outcome


class Recorder:
    """A stand-in UILayout that checks every call against Blender's real UILayout API."""

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


def main(args):
    common.setup(args["zip"])
    prefs = common.preferences()
    prefs.jobs_dir = args["jobs_dir"]
    prefs.device = "cpu"
    image_field = common.addon_module("image_field")
    results = {"registered": [hasattr(bpy.ops.neural_fields, name)
                              for name in ("fit_image", "resample_image", "cancel_image")]}

    # Earlier images that must survive every failure: a generated one and a painted (dirty) one.
    earlier = bpy.data.images.new("earlier", 8, 8)
    painted = bpy.data.images.new("painted", 4, 4, float_buffer=True)
    painted.pixels.foreach_set(np.linspace(0, 2, 4 * 4 * 4).astype(np.float32))

    # No image: nothing named, no Image Editor (background mode has none).
    attempt("no_image", results)
    attempt("unknown_name", results, image="no such image")
    # A 1x1 image, and 1xN.
    bpy.data.images.new("one_pixel", 1, 1)
    attempt("one_pixel", results, image="one_pixel")
    bpy.data.images.new("one_row", 16, 1)
    attempt("one_row", results, image="one_row")
    # An image whose file is missing: 0x0, no pixels.
    missing = bpy.data.images.new("missing_file", 4, 4)
    missing.source = 'FILE'
    missing.filepath = "//does/not/exist.png"
    attempt("empty", results, image="missing_file")
    # A corrupt file loaded into Blender.
    corrupt_path = f"{args['work']}/corrupt.png"
    with open(corrupt_path, "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    corrupt = bpy.data.images.load(corrupt_path, check_existing=False)
    corrupt.name = "corrupt"
    attempt("corrupt", results, image="corrupt")
    # Fully transparent: nothing to learn.
    clear = bpy.data.images.new("transparent", 8, 8, alpha=True)
    clear.pixels.foreach_set(np.zeros(8 * 8 * 4, np.float32))
    attempt("transparent", results, image="transparent")
    # A scale that makes an absurd image.
    settings = bpy.context.scene.neural_fields_image
    settings.scale = 64.0
    big = bpy.data.images.new("big", 1100, 1100)  # x64: 70400 pixels a side
    attempt("too_large", results, image="big")
    bpy.data.images.remove(big)
    settings.scale = 4.0

    # The backend fails: an interpreter that does not exist, a Python without torch.
    prefs.backend_python = "/nonexistent/python3"
    attempt("missing_python", results, image="earlier")
    prefs.backend_python = args["no_torch_python"]
    attempt("no_torch", results, image="earlier")
    prefs.backend_python = ""

    # Resample: an image no fit made; one whose job folder is gone.
    attempt("resample_not_fitted", results, operator="resample_image", image="earlier")
    orphan = bpy.data.images.new("orphan_x4", 8, 8)
    orphan[image_field.IMAGE_JOB_KEY] = f"{args['work']}/deleted-job"
    attempt("resample_job_gone", results, operator="resample_image", image="orphan_x4")
    attempt("resample_no_image", results, operator="resample_image")

    results["earlier_still_there"] = all(name in bpy.data.images for name in ("earlier", "painted"))
    results["painted_pixels_kept"] = bool(np.allclose(np.array(painted.pixels[:]),
                                                      np.linspace(0, 2, 64), atol=1e-6))

    # The sidebar panel: idle, running, finished (the checks Blender does when it draws it).
    panel = image_field.NEURALFIELDS_PT_image
    state = bpy.context.window_manager.neural_fields_image_state
    results["panel_idle"] = draw_panel(panel)
    settings.size_mode = 'SIZE'
    results["panel_size"] = draw_panel(panel)
    settings.size_mode = 'SCALE'
    state.running, state.progress, state.status_text, state.source_name, state.activity = \
        True, 0.25, "Training: step 5/20", "pattern", "Fitting"
    results["panel_running"] = draw_panel(panel)
    state.running, state.last_status, state.last_message = False, "done", "Created 'pattern_x4' (128x128)"
    state.last_result_json = '{"metrics": {"psnr": 31.5, "ssim": 0.93}, "timings": {"total": 12.0}}'
    results["panel_done"] = draw_panel(panel)

    # A Render Result: its pixels come through save_render as a linear float image.
    scene = bpy.context.scene
    scene.render.engine = 'CYCLES'
    scene.cycles.samples = 1
    scene.cycles.device = 'CPU'
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 12, 8, 100
    file_format = scene.render.image_settings.file_format
    bpy.ops.render.render()
    render = bpy.data.images["Render Result"]
    pixels, is_float = image_field.read_pixels(render)
    results["render"] = {"shape": list(pixels.shape), "is_float": is_float,
                         "finite": bool(np.all(np.isfinite(pixels))), "max": float(pixels.max()),
                         "format_restored": scene.render.image_settings.file_format == file_format}
    return results


common.run_main(main)
