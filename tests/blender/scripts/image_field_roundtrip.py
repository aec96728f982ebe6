"""Fit Neural Image on a generated 32x32 pattern (and a small float image), then Resample it:
the artist's path through the operators, with the real backend on the CPU."""

import json
import time

import bpy
import numpy as np

import bl_common as common


def pattern(width: int, height: int) -> np.ndarray:
    """(H, W, 4) top row first: smooth colour waves plus a soft diagonal stripe, opaque."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    red = 0.5 + 0.35 * np.sin(2 * np.pi * x / 16.0)
    green = 0.5 + 0.35 * np.cos(2 * np.pi * y / 12.0)
    blue = 0.2 + 0.6 / (1.0 + np.exp(-(x - y) / 2.0))
    return np.stack([red, green, blue, np.ones_like(red)], axis=-1).astype(np.float32)


def set_pixels(image, top_first: np.ndarray) -> None:
    image.pixels.foreach_set(np.ascontiguousarray(top_first[::-1]).ravel())


def get_pixels(image) -> np.ndarray:
    width, height = image.size
    flat = np.empty(width * height * image.channels, np.float32)
    image.pixels.foreach_get(flat)
    return flat.reshape(height, width, image.channels)[::-1]


def describe(image) -> dict:
    if image is None:
        return {}
    return {"name": image.name, "size": list(image.size), "is_float": image.is_float,
            "packed": image.packed_file is not None, "colorspace": image.colorspace_settings.name,
            "job": image.get("neural_fields_job"), "source": image.get("neural_fields_source"),
            "network": image.get("neural_fields_network"),
            "metrics": dict(image.get("neural_fields_metrics", {}))}


def run(label, results, operator, **kwargs):
    before = sorted(bpy.data.images.keys())
    started = time.monotonic()
    ret = getattr(bpy.ops.neural_fields, operator)('INVOKE_DEFAULT', **kwargs)  # background: synchronous
    state = bpy.context.window_manager.neural_fields_image_state
    new = sorted(set(bpy.data.images.keys()) - set(before))
    results[label] = {"return": sorted(ret), "seconds": time.monotonic() - started, "new": new,
                      "state": {"last_status": state.last_status, "last_message": state.last_message,
                                "last_image": state.last_image, "running": state.running}}
    return bpy.data.images.get(new[0]) if len(new) == 1 else None


def main(args):
    common.setup(args["zip"])
    prefs = common.preferences()
    prefs.device = "cpu"
    prefs.jobs_dir = args["jobs_dir"]
    settings = bpy.context.scene.neural_fields_image
    settings.network = args["network"]
    settings.max_steps = args["max_steps"]
    settings.size_mode = 'SCALE'
    settings.scale = 4.0
    results = {}

    source_pixels = pattern(32, 32)
    source = bpy.data.images.new("pattern.png", 32, 32, alpha=True)  # a byte image, sRGB
    set_pixels(source, source_pixels)
    source_stored = get_pixels(source)  # what Blender holds (8-bit values)
    fitted = run("fit", results, "fit_image", image=source.name)
    results["fit"]["image"] = describe(fitted)
    if fitted is None:
        return results
    job_dir = fitted["neural_fields_job"]
    with open(f"{job_dir}/result.json") as handle:
        results["fit"]["result"] = json.load(handle)
    with open(f"{job_dir}/job.json") as handle:
        results["fit"]["job"] = json.load(handle)

    # Resample without retraining: x1 (the source's own pixel grid), x2, x3, and an exact size.
    settings.scale = 1.0
    same = run("resample_x1", results, "resample_image", image=fitted.name)
    results["resample_x1"]["image"] = describe(same)
    settings.scale = 2.0
    double = run("resample_x2", results, "resample_image", image=fitted.name)
    results["resample_x2"]["image"] = describe(double)
    settings.scale = 3.0
    triple = run("resample_x3", results, "resample_image", image=fitted.name)
    results["resample_x3"]["image"] = describe(triple)
    settings.size_mode = 'SIZE'
    settings.width, settings.height = 48, 40
    sized = run("resample_size", results, "resample_image", image=double.name if double else fitted.name)
    results["resample_size"]["image"] = describe(sized)
    settings.size_mode = 'SCALE'

    arrays = {"source": source_stored, "fitted": get_pixels(fitted)}
    if same is not None:
        arrays["x1"] = get_pixels(same)
    if double is not None:
        arrays["x2"] = get_pixels(double)
    if triple is not None:
        arrays["x3"] = get_pixels(triple)

    # A float image (linear, HDR values above 1): EXR in, EXR out, a float Blender image back.
    hdr_pixels = pattern(16, 12) * np.array([3.0, 2.0, 1.5, 1.0], np.float32)
    hdr = bpy.data.images.new("hdr", 16, 12, alpha=True, float_buffer=True)
    set_pixels(hdr, hdr_pixels)
    settings.scale = 2.0
    settings.max_steps = args["float_steps"]
    settings.network = args["float_network"]
    hdr_fit = run("fit_float", results, "fit_image", image=hdr.name)
    results["fit_float"]["image"] = describe(hdr_fit)
    if hdr_fit is not None:
        arrays["hdr_source"] = get_pixels(hdr)
        arrays["hdr_fitted"] = get_pixels(hdr_fit)
        with open(f"{hdr_fit['neural_fields_job']}/job.json") as handle:
            results["fit_float"]["job"] = json.load(handle)
    np.savez(f"{args['work']}/pixels.npz", **arrays)
    results["images"] = sorted(bpy.data.images.keys())
    return results


common.run_main(main)
