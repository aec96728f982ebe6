"""Blender and inr_backend.imageio read each other's files (run by tests/backend/test_imageio_blender.py).

- EXR written by imageio.write_exr (FLOAT ZIP, HALF NONE, ZIPS; Y, RGB, RGBA) loaded with
  bpy.data.images.load: pixels must agree exactly (Blender's rows run bottom to top).
- EXR (ZIP, NONE; 32 and 16 bit) and 16-bit PNG saved by Blender read by imageio.read_image.
- PIZ saved by Blender: read_image refuses it with a message naming PIZ.
Facts go to a JSON file; the test asserts on them.
"""

import json
import sys
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO))

import bpy  # noqa: E402
import numpy as np  # noqa: E402

from inr_backend import imageio  # noqa: E402


def blender_pixels(image) -> np.ndarray:
    """(H, W, channels) top row first, as stored (no colour conversion for Non-Color/linear)."""
    width, height = image.size
    pixels = np.empty(width * height * image.channels, dtype=np.float32)
    image.pixels.foreach_get(pixels)
    return pixels.reshape(height, width, image.channels)[::-1]


def test_pattern(height: int, width: int, channels: int, seed: int) -> np.ndarray:
    """Smooth gradients plus a noisy patch, values up to 2 (HDR), alpha in (0, 1]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    planes = [np.sin(x / 3.0 + c) * np.cos(y / 5.0 - c) + 1.0 for c in range(channels)]
    image = np.stack(planes, axis=-1)
    image[height // 4:height // 2, width // 4:width // 2] = rng.random((height // 2 - height // 4,
                                                                        width // 2 - width // 4, channels)) * 2
    if channels == 4:
        image[..., 3] = np.clip(image[..., 3] / 2, 0.05, 1.0)
    return image.astype(np.float32)


def main(args: dict) -> dict:
    work = Path(args["work"])
    facts: dict = {"ours_in_blender": {}, "blender_in_ours": {}}
    bpy.ops.wm.read_factory_settings(use_empty=True)

    # Our EXR files in Blender.
    for channels, pixel_type, compression in [(4, "float", "ZIP"), (3, "half", "NONE"), (1, "float", "ZIPS"),
                                              (3, "float", "ZIP")]:
        array = test_pattern(37, 53, channels, seed=channels)
        path = work / f"ours_{channels}_{pixel_type}_{compression}.exr"
        imageio.write_exr(path, array, pixel_type=pixel_type, compression=compression)
        image = bpy.data.images.load(str(path))
        got = blender_pixels(image)
        expected = array.astype(np.float16).astype(np.float32) if pixel_type == "half" else array
        if channels == 1:
            got_values = got[..., 0]          # Blender shows Y as grey in R, G and B
            expected = expected[..., 0]
            grey = bool(np.array_equal(got[..., 0], got[..., 1]) and np.array_equal(got[..., 0], got[..., 2]))
        else:
            got_values, grey = got[..., :channels], None
        facts["ours_in_blender"][path.name] = {
            "size": list(image.size), "max_abs_diff": float(np.abs(got_values - expected).max()),
            "is_float": bool(image.is_float), "grey_replicated": grey}

    # Blender's EXR files (and a PIZ one) in ours.
    scene = bpy.context.scene
    scene.view_settings.view_transform = "Standard"
    source = test_pattern(41, 67, 4, seed=7)
    image = bpy.data.images.new("source", 67, 41, alpha=True, float_buffer=True)
    image.pixels.foreach_set(np.ascontiguousarray(source[::-1]).reshape(-1))
    settings = scene.render.image_settings
    for codec, depth in [("ZIP", "32"), ("NONE", "32"), ("ZIP", "16"), ("PIZ", "16")]:
        settings.file_format = "OPEN_EXR"
        settings.exr_codec = codec
        settings.color_depth = depth
        settings.color_mode = "RGBA"
        path = work / f"blender_{codec}_{depth}.exr"
        image.save_render(str(path), scene=scene)
        expected = source.astype(np.float16).astype(np.float32) if depth == "16" else source
        try:
            array, info = imageio.read_image(path)
            facts["blender_in_ours"][path.name] = {"max_abs_diff": float(np.abs(array - expected).max()),
                                                  "info": info}
        except ValueError as exc:
            facts["blender_in_ours"][path.name] = {"error": str(exc)}

    # Blender's 16-bit PNG (libpng with all five row filters) in ours, against Blender's own reading.
    settings.file_format = "PNG"
    settings.color_depth = "16"
    settings.color_mode = "RGBA"
    png_path = work / "blender_16.png"
    image.save_render(str(png_path), scene=scene)
    array, info = imageio.read_image(png_path)
    loaded = bpy.data.images.load(str(png_path))
    loaded.colorspace_settings.name = "Non-Color"  # the stored values, not converted to linear
    reference = blender_pixels(loaded)
    facts["blender_png16"] = {"info": info, "max_abs_diff_vs_blender": float(np.abs(array - reference).max())}

    # Our 16-bit PNG in Blender.
    ours = np.clip(source / 2, 0, 1)
    ours[..., 3] = 1.0
    ours = (np.round(ours * 65535) / 65535).astype(np.float32)  # exactly representable in 16 bits
    ours_path = work / "ours_16.png"
    imageio.write_png(ours_path, ours, bits=16)
    loaded = bpy.data.images.load(str(ours_path))
    loaded.colorspace_settings.name = "Non-Color"
    facts["ours_png16_in_blender"] = {"max_abs_diff": float(np.abs(blender_pixels(loaded) - ours).max())}
    return facts


if __name__ == "__main__":
    arguments = json.loads(sys.argv[1])
    try:
        output = main(arguments)
    except Exception:
        output = {"exception": traceback.format_exc()}
    Path(arguments["result"]).write_text(json.dumps(output, indent=2))
