"""README pictures of real results, made with the add-on's own operators in headless Blender.

Writes (each a 960x360 PNG, three panels side by side, small enough for a README):

    docs/images/result_mesh_to_sdf.png     Suzanne (Subdivision 2) | neural SDF mesh | occupancy mesh (Cycles)
    docs/images/result_nerf.png            Cycles from a new camera | the NeRF's render of that camera |
                                           Cycles render of the NeRF's extracted coloured mesh
    docs/images/result_image_upscale.png   low-res input (nearest x4) | neural x4 | original

and the numbers for the captions in out/readme_images/metrics.json (Chamfer-L1, PSNR, timings).

Run it with the project's Python: `.venv/bin/python scripts/readme_images.py [mesh] [nerf] [image]`
(no names: all three). Like scripts/demo.py it re-runs itself, once per picture, in a child Python
whose Blender user folders live under out/readme_images/, installs the add-on zip the way a user
does, and presses the same operators an artist presses (Mesh to Neural Field, Make Capture Rig,
Render Capture, Train NeRF, Render from Active Camera, Extract Mesh, Fit Neural Image, Resample).
Device: CUDA when present, the CPU otherwise (Cycles always on the CPU, few samples, no denoiser).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "out" / "readme_images"
IMAGES = REPO / "docs" / "images"
DATA = REPO.parent / "shared" / "data"
USER_RESOURCES = OUT / "blender_user"
METRICS = OUT / "metrics.json"
ADDON_MODULE = "bl_ext.user_default.neural_fields"
CHILD_FLAG = "--in-blender"
PARTS = ("mesh", "nerf", "image")
TIMEOUT = {"mesh": 9 * 60, "nerf": 9 * 60, "image": 5 * 60}

PANEL_W, PANEL_H = 320, 360          # three panels: a 960x360 picture
LABEL_H = 26                         # a white strip under each panel for its label

# The NeRF scene's training budget on the CPU: a time budget (the learning rate decays over it),
# about 3 minutes on 2 shared cores; on a GPU the preset's 1500 steps end it much sooner.
NERF_SECONDS = 180.0
NERF_VIEWS = 48
NERF_VIEW_SIZE = 100

# The photo: albert.jpg box-filtered to a quarter (812x1083), a 320x360 crop of the face,
# box-filtered 4x again to the 80x90 input that Fit Neural Image sees.
PHOTO = DATA / "images" / "albert.jpg"
PHOTO_REDUCE = 4
PHOTO_CROP = (300, 250, 300 + PANEL_W, 250 + PANEL_H)
UPSCALE = 4


# ----------------------------------------------------------------------------- the parent

def main() -> int:
    if CHILD_FLAG in sys.argv:
        index = sys.argv.index(CHILD_FLAG)
        return run_part(sys.argv[index + 1], Path(sys.argv[index + 2]))
    parts = [name for name in sys.argv[1:]] or list(PARTS)
    unknown = [name for name in parts if name not in PARTS]
    if unknown:
        print(f"readme_images: unknown picture {unknown}: choose from {', '.join(PARTS)} (none: all)", file=sys.stderr)
        return 2
    if "image" in parts and not PHOTO.is_file():
        print(f"readme_images: {PHOTO} is missing: the upscale picture needs the shared data folder "
              f"(../shared/data beside the repository); run without 'image' to skip it", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    IMAGES.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))
    import build_addon

    zip_path = build_addon.build()
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(USER_RESOURCES))
    env.pop("PYTHONPATH", None)
    started = time.monotonic()
    failed = []
    for name in parts:
        part_started = time.monotonic()
        try:
            code = subprocess.run([sys.executable, __file__, CHILD_FLAG, name, str(zip_path)], env=env, cwd=REPO,
                                  timeout=TIMEOUT[name]).returncode
        except subprocess.TimeoutExpired:
            print(f"readme_images: {name} did not finish within {TIMEOUT[name]} s", file=sys.stderr)
            code = 1
        print(f"readme_images: {name} {'done' if code == 0 else 'FAILED'} in {time.monotonic() - part_started:.1f} s")
        if code != 0:
            failed.append(name)
    print(f"readme_images: total {time.monotonic() - started:.1f} s (wall time); metrics in {METRICS}")
    if failed:
        print(f"readme_images: FAILED: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


# ----------------------------------------------------------------------------- shared helpers (bpy child)

def run_part(name: str, zip_path: Path) -> int:
    import bpy

    user_extensions = Path(bpy.utils.user_resource('EXTENSIONS'))
    assert USER_RESOURCES in user_extensions.parents, f"Blender's user folder is not isolated: {user_extensions}"
    bpy.ops.wm.read_factory_settings(use_empty=False)
    result = bpy.ops.extensions.package_install_files(filepath=str(zip_path), repo='user_default',
                                                      enable_on_install=True)
    assert result == {'FINISHED'} and ADDON_MODULE in bpy.context.preferences.addons, result
    prefs = bpy.context.preferences.addons[ADDON_MODULE].preferences
    prefs.device = 'auto'
    prefs.jobs_dir = str(OUT / "jobs" / name)
    started = time.monotonic()
    try:
        metrics = {"mesh": mesh_picture, "nerf": nerf_picture, "image": image_picture}[name](bpy)
    except RuntimeError as exc:   # an operator that reported an error
        print(f"readme_images: {name}: {exc}", file=sys.stderr)
        return 1
    finally:
        bpy.ops.preferences.addon_disable(module=ADDON_MODULE)
    metrics["script_seconds"] = round(time.monotonic() - started, 1)
    record_metrics(name, metrics)
    print(f"readme_images: {name}: " + json.dumps(metrics, indent=1))
    return 0


def record_metrics(name: str, metrics: dict) -> None:
    everything = json.loads(METRICS.read_text()) if METRICS.is_file() else {}
    everything[name] = metrics
    write_atomically(METRICS, lambda path: path.write_text(json.dumps(everything, indent=1) + "\n"))


def write_atomically(target: Path, write) -> None:
    """write(temp_path) into the target's folder, then rename: a reader never sees half a file."""
    handle, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.", suffix=target.suffix)
    os.close(handle)
    try:
        write(Path(temp))
        os.chmod(temp, 0o644)   # mkstemp makes it owner-only
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def side_by_side(target: Path, panels, labels) -> None:
    """Three RGB panels (PANEL_W x PANEL_H), each with its label on a white strip, as one PNG."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=17)
    picture = Image.new("RGB", (PANEL_W * len(panels), PANEL_H + LABEL_H), "white")
    draw = ImageDraw.Draw(picture)
    for index, (panel, label) in enumerate(zip(panels, labels)):
        assert panel.size == (PANEL_W, PANEL_H), (label, panel.size)
        picture.paste(panel.convert("RGB"), (index * PANEL_W, 0))
        width = draw.textlength(label, font=font)
        draw.text((index * PANEL_W + (PANEL_W - width) / 2, PANEL_H + 3), label, fill=(30, 30, 30), font=font)
    write_atomically(target, lambda path: picture.save(path, format="PNG", optimize=True))
    print(f"readme_images: wrote {target} ({target.stat().st_size // 1024} KB)")


def on_white(path: Path):
    """An RGBA PNG (straight alpha, sRGB) over a white background, as RGB."""
    from PIL import Image

    rgba = Image.open(path).convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def psnr(a, b) -> float:
    import numpy as np

    a = np.asarray(a, dtype=np.float64) / 255.0
    b = np.asarray(b, dtype=np.float64) / 255.0
    return float(-10.0 * np.log10(np.mean((a - b) ** 2)))


def cycles(scene, samples: int, transparent: bool) -> None:
    scene.render.engine = 'CYCLES'
    scene.cycles.device = 'CPU'
    scene.cycles.samples = samples
    scene.cycles.use_denoising = False     # OIDN is not worth its time at these sizes on 2 cores
    scene.cycles.use_adaptive_sampling = True
    scene.render.film_transparent = transparent
    scene.render.resolution_percentage = 100
    scene.render.image_settings.file_format = 'PNG'
    scene.render.image_settings.color_mode = 'RGBA' if transparent else 'RGB'
    scene.view_settings.view_transform = 'Standard'
    scene.view_settings.look = 'None'


def render_still(bpy, path: Path) -> float:
    scene = bpy.context.scene
    scene.render.filepath = str(path)
    started = time.monotonic()
    bpy.ops.render.render(write_still=True)
    return time.monotonic() - started


def make_active(bpy, obj) -> None:
    for other in bpy.context.view_layer.objects:
        other.select_set(False)
    if obj is not None:
        obj.select_set(True)
    bpy.context.view_layer.objects.active = obj


def principled(bpy, name: str, color, roughness: float = 0.5):
    material = bpy.data.materials.new(name)
    material.use_nodes = True
    shader = material.node_tree.nodes["Principled BSDF"]
    shader.inputs["Base Color"].default_value = (*color, 1.0)
    shader.inputs["Roughness"].default_value = roughness
    material.diffuse_color = (*color, 1.0)
    return material


def add_camera(bpy, scene, name: str, location, target, lens: float = 50.0):
    from mathutils import Vector

    camera = bpy.data.objects.new(name, bpy.data.cameras.new(name))
    camera.data.lens = lens
    camera.data.sensor_fit = 'HORIZONTAL'
    scene.collection.objects.link(camera)
    camera.location = location
    camera.rotation_euler = (Vector(target) - Vector(location)).to_track_quat('-Z', 'Y').to_euler()
    scene.camera = camera
    return camera


def result_json(obj_or_image) -> dict:
    return json.loads((Path(obj_or_image["neural_fields_job"]) / "result.json").read_text())


# ----------------------------------------------------------------------------- 1. mesh -> SDF / occupancy

def mesh_picture(bpy) -> dict:
    scene = bpy.context.scene
    for name in ("Cube",):
        bpy.data.objects.remove(bpy.data.objects[name])
    bpy.ops.mesh.primitive_monkey_add(location=(0.0, 0.0, 0.0))
    source = bpy.context.active_object
    subdivision = source.modifiers.new("Subdivision", 'SUBSURF')
    subdivision.levels = subdivision.render_levels = 2
    bpy.ops.object.shade_smooth()

    settings = scene.neural_fields
    settings.preset = 'fast'
    settings.network = 'hashgrid'
    settings.resolution = 256
    settings.max_steps = 0
    metrics = {"source_triangles": triangle_count(bpy, source)}
    results = {}
    for representation in ("sdf", "occupancy"):
        settings.representation = representation
        make_active(bpy, source)
        started = time.monotonic()
        bpy.ops.neural_fields.mesh_to_sdf('INVOKE_DEFAULT')   # background mode: runs to completion
        seconds = time.monotonic() - started
        result = bpy.data.objects[f"{source.name}_{representation}"]
        report = result_json(result)
        results[representation] = result
        metrics[representation] = {"metrics": report.get("metrics", {}), "timings": report.get("timings", {}),
                                   "device": report.get("device"), "operator_seconds": round(seconds, 1),
                                   "triangles": len(result.data.polygons)}

    source.data.materials.append(principled(bpy, "Source Grey", (0.5, 0.5, 0.5)))
    results["sdf"].data.materials.clear()
    results["sdf"].data.materials.append(principled(bpy, "SDF Orange", (0.85, 0.35, 0.08)))
    results["occupancy"].data.materials.clear()
    results["occupancy"].data.materials.append(principled(bpy, "Occupancy Teal", (0.08, 0.5, 0.55)))
    # Side by side for the picture only (the results are made on top of the source).
    spacing = source.dimensions.x * 1.1
    results["sdf"].location.x += spacing
    results["occupancy"].location.x += 2 * spacing

    cycles(scene, samples=32, transparent=False)
    scene.render.resolution_x, scene.render.resolution_y = 3 * PANEL_W, PANEL_H
    studio_lights(bpy, scene)
    add_camera(bpy, scene, "Picture", location=(spacing, -14.0, 1.1), target=(spacing, 0.0, 0.0))
    render_path = OUT / "mesh_render.png"
    metrics["render_seconds"] = round(render_still(bpy, render_path), 1)

    from PIL import Image

    render = Image.open(render_path).convert("RGB")
    panels = [render.crop((i * PANEL_W, 0, (i + 1) * PANEL_W, PANEL_H)) for i in range(3)]
    sdf, occupancy = metrics["sdf"]["metrics"], metrics["occupancy"]["metrics"]
    side_by_side(IMAGES / "result_mesh_to_sdf.png", panels,
                 [f"source ({metrics['source_triangles'] // 1000}k triangles)",
                  f"SDF: Chamfer {sdf.get('chamfer_l1', float('nan')):.4f}",
                  f"occupancy: Chamfer {occupancy.get('chamfer_l1', float('nan')):.4f}"])
    return metrics


def triangle_count(bpy, obj) -> int:
    evaluated = obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
    mesh = evaluated.to_mesh()
    try:
        mesh.calc_loop_triangles()
        return len(mesh.loop_triangles)
    finally:
        evaluated.to_mesh_clear()


def studio_lights(bpy, scene) -> None:
    world = scene.world or bpy.data.worlds.new("World")
    scene.world = world
    world.use_nodes = True
    background = world.node_tree.nodes["Background"]
    background.inputs["Color"].default_value = (0.8, 0.82, 0.85, 1.0)
    background.inputs["Strength"].default_value = 0.6
    for obj in [o for o in bpy.data.objects if o.type == 'LIGHT']:
        bpy.data.objects.remove(obj)
    sun = bpy.data.objects.new("Sun", bpy.data.lights.new("Sun", 'SUN'))
    sun.data.energy = 3.5
    sun.data.angle = math.radians(10)
    sun.rotation_euler = (math.radians(50), math.radians(10), math.radians(-30))
    scene.collection.objects.link(sun)


# ----------------------------------------------------------------------------- 2. NeRF

def nerf_picture(bpy) -> dict:
    from mathutils import Vector

    scene = bpy.context.scene
    metrics = {}
    # A simple coloured scene, diffuse: a red cube, a blue ball, a yellow cone; a sun and a grey sky.
    bpy.data.objects.remove(bpy.data.objects["Light"])
    cube = bpy.data.objects["Cube"]
    cube.location, cube.rotation_euler, cube.scale = (0.25, -0.2, 0.1), (0.3, 0.2, 0.6), (0.55, 0.55, 0.55)
    cube.data.materials.clear()
    cube.data.materials.append(principled(bpy, "Red", (0.8, 0.08, 0.05), roughness=1.0))
    bpy.ops.mesh.primitive_uv_sphere_add(radius=0.45, location=(-0.75, 0.55, 0.35), segments=48, ring_count=24)
    ball = bpy.context.active_object
    ball.name = "Ball"
    bpy.ops.object.shade_smooth()
    ball.data.materials.append(principled(bpy, "Blue", (0.05, 0.2, 0.8), roughness=1.0))
    bpy.ops.mesh.primitive_cone_add(radius1=0.35, depth=0.9, location=(-0.55, -0.6, 0.0), vertices=48)
    cone = bpy.context.active_object
    cone.name = "Cone"
    bpy.ops.object.shade_smooth()
    cone.data.materials.append(principled(bpy, "Yellow", (0.85, 0.65, 0.05), roughness=1.0))
    sun = bpy.data.objects.new("Sun", bpy.data.lights.new("Sun", 'SUN'))
    sun.data.energy = 3.0
    sun.rotation_euler = (0.6, 0.3, 0.8)
    scene.collection.objects.link(sun)
    scene.world.use_nodes = True
    background = scene.world.node_tree.nodes["Background"]
    background.inputs["Color"].default_value = (0.5, 0.5, 0.5, 1.0)
    background.inputs["Strength"].default_value = 1.0
    objects = (cube, ball, cone)

    # Capture: the rig around the three objects, rendered with Cycles (the add-on sets the film
    # transparent and the Standard view transform itself).
    cycles(scene, samples=32, transparent=True)
    scene.render.resolution_x = scene.render.resolution_y = NERF_VIEW_SIZE
    make_active(bpy, cube)
    for obj in objects:
        obj.select_set(True)
    started = time.monotonic()
    bpy.ops.neural_fields.make_capture_rig(count=NERF_VIEWS, layout='SPHERE', lens=50.0)
    make_active(bpy, None)
    capture_dir = OUT / "nerf_capture"
    bpy.ops.neural_fields.render_capture(directory=str(capture_dir))
    metrics["capture_seconds"] = round(time.monotonic() - started, 1)
    metrics["views"], metrics["view_size"] = NERF_VIEWS, NERF_VIEW_SIZE

    settings = scene.neural_fields_nerf
    settings.dataset_dir = str(capture_dir)
    settings.preset = 'fast'
    settings.seconds = NERF_SECONDS
    settings.max_steps = 0
    started = time.monotonic()
    bpy.ops.neural_fields.train_nerf()
    metrics["train_operator_seconds"] = round(time.monotonic() - started, 1)
    state = bpy.context.window_manager.neural_fields_nerf_state
    if state.last_status != "done":
        raise RuntimeError(f"Train NeRF ended '{state.last_status}': {state.last_message}")
    report = json.loads((Path(settings.job_dir) / "result.json").read_text())
    metrics["train"] = {"metrics": report.get("metrics", {}), "timings": report.get("timings", {}),
                        "device": report.get("device")}

    # A camera that took no picture: lower, longer lens, from between the rig's cameras.
    rig_camera = next(o for o in scene.objects if o.type == 'CAMERA' and o.name.startswith("Capture"))
    centre = Vector((-0.2, -0.05, 0.15))
    distance = (rig_camera.location - centre).length
    direction = Vector((0.55, -0.8, 0.3)).normalized()
    novel = add_camera(bpy, scene, "Novel", location=centre + 0.95 * distance * direction, target=centre, lens=55.0)
    novel.data.clip_start, novel.data.clip_end = rig_camera.data.clip_start, rig_camera.data.clip_end
    scene.render.resolution_x, scene.render.resolution_y = PANEL_W, PANEL_H
    cycles(scene, samples=64, transparent=True)
    cycles_path = OUT / "nerf_cycles_novel.png"
    metrics["cycles_novel_seconds"] = round(render_still(bpy, cycles_path), 1)

    images_before = set(bpy.data.images.keys())
    started = time.monotonic()
    bpy.ops.neural_fields.render_nerf_view()
    metrics["nerf_render_seconds"] = round(time.monotonic() - started, 1)
    rgb = next(bpy.data.images[name] for name in set(bpy.data.images.keys()) - images_before
               if name.endswith("_rgb"))
    nerf_path = Path(bpy.path.abspath(rgb.filepath))

    started = time.monotonic()
    bpy.ops.neural_fields.extract_nerf_mesh(resolution=192)
    metrics["extract_seconds"] = round(time.monotonic() - started, 1)
    extracted = bpy.context.active_object
    assert extracted is not None and extracted.get("neural_fields_job"), "Extract Mesh made no object"
    metrics["mesh_triangles"] = len(extracted.data.polygons)
    for obj in objects:
        obj.hide_render = True
    mesh_path = OUT / "nerf_mesh_render.png"
    metrics["mesh_render_seconds"] = round(render_still(bpy, mesh_path), 1)

    cycles_rgb, nerf_rgb, mesh_rgb = on_white(cycles_path), on_white(nerf_path), on_white(mesh_path)
    metrics["novel_view_psnr_vs_cycles"] = round(psnr(nerf_rgb, cycles_rgb), 2)
    side_by_side(IMAGES / "result_nerf.png", [cycles_rgb, nerf_rgb, mesh_rgb],
                 ["Cycles (new camera)", f"NeRF render: {metrics['novel_view_psnr_vs_cycles']:.1f} dB",
                  "NeRF mesh (Cycles)"])
    return metrics


# ----------------------------------------------------------------------------- 3. image upscale

def image_picture(bpy) -> dict:
    import numpy as np
    from PIL import Image

    full = Image.open(PHOTO).convert("RGB")
    reduced = full.resize((full.width // PHOTO_REDUCE, full.height // PHOTO_REDUCE), Image.Resampling.BOX)
    original = reduced.crop(PHOTO_CROP)
    low = original.resize((PANEL_W // UPSCALE, PANEL_H // UPSCALE), Image.Resampling.BOX)
    low_path = OUT / "albert_low.png"
    low.save(low_path)

    scene = bpy.context.scene
    settings = scene.neural_fields_image
    settings.preset = 'fast'
    settings.network = 'siren'      # the panel's default
    settings.size_mode = 'SCALE'
    settings.max_steps = 0
    source = bpy.data.images.load(str(low_path))
    metrics = {"input_size": list(low.size), "output_size": [PANEL_W, PANEL_H], "network": settings.network}

    settings.scale = 1.0
    before = set(bpy.data.images.keys())
    started = time.monotonic()
    bpy.ops.neural_fields.fit_image('INVOKE_DEFAULT', image=source.name)
    metrics["fit_operator_seconds"] = round(time.monotonic() - started, 1)
    fitted = bpy.data.images[(set(bpy.data.images.keys()) - before).pop()]
    report = result_json(fitted)
    metrics["fit"] = {"metrics": report.get("metrics", {}), "timings": report.get("timings", {}),
                      "device": report.get("device")}

    settings.scale = float(UPSCALE)
    before = set(bpy.data.images.keys())
    started = time.monotonic()
    bpy.ops.neural_fields.resample_image('INVOKE_DEFAULT', image=fitted.name)
    metrics["resample_operator_seconds"] = round(time.monotonic() - started, 1)
    upscaled = bpy.data.images[(set(bpy.data.images.keys()) - before).pop()]
    assert tuple(upscaled.size) == (PANEL_W, PANEL_H), tuple(upscaled.size)

    # What Blender holds (sRGB values of a byte image, rows bottom to top) as an 8-bit picture.
    pixels = np.empty(PANEL_W * PANEL_H * upscaled.channels, np.float32)
    upscaled.pixels.foreach_get(pixels)
    pixels = pixels.reshape(PANEL_H, PANEL_W, upscaled.channels)[::-1, :, :3]
    if upscaled.is_float:   # a float image holds linear values
        pixels = np.where(pixels <= 0.0031308, 12.92 * pixels, 1.055 * np.power(np.clip(pixels, 0, None), 1 / 2.4) - 0.055)
    neural = Image.fromarray((np.clip(pixels, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))
    nearest = low.resize((PANEL_W, PANEL_H), Image.Resampling.NEAREST)
    bicubic = low.resize((PANEL_W, PANEL_H), Image.Resampling.BICUBIC)
    metrics["psnr_neural_x4"] = round(psnr(neural, original), 2)
    metrics["psnr_bicubic_x4"] = round(psnr(bicubic, original), 2)
    metrics["psnr_nearest_x4"] = round(psnr(nearest, original), 2)
    side_by_side(IMAGES / "result_image_upscale.png", [nearest, neural, original],
                 [f"input {low.width}x{low.height} (nearest x{UPSCALE})",
                  f"neural x{UPSCALE}: {metrics['psnr_neural_x4']:.1f} dB",
                  f"original {PANEL_W}x{PANEL_H}"])
    return metrics


if __name__ == "__main__":
    sys.exit(main())
