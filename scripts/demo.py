"""The demo (`make demo`): an artist's conversion, headless, start to finish.

Builds the add-on zip, installs it into a Blender (the bpy module) whose user folders live
under out/, adds Suzanne with a Subdivision modifier (level 2), presses Mesh to Neural SDF
(preset "fast", resolution 256, device auto: CUDA when present), and writes:

    out/demo.blend          the scene: Suzanne and Suzanne_sdf on top of it
    out/demo.png            Cycles render, source (grey) and result (coloured) side by side
    out/demo_metrics.json   the job's result.json (metrics, timings, device, versions)

Run it with the project's Python: `.venv/bin/python scripts/demo.py`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "out"
USER_RESOURCES = OUT / "blender_user"
ADDON_MODULE = "bl_ext.user_default.neural_fields"
CHILD_FLAG = "--in-blender"
TIMEOUT = 9 * 60


def main() -> int:
    """Re-run this file in a child Python whose Blender user folders are under out/."""
    if CHILD_FLAG in sys.argv:
        return run_demo()
    OUT.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(USER_RESOURCES))
    started = time.monotonic()
    try:
        code = subprocess.run([sys.executable, __file__, CHILD_FLAG], env=env, cwd=REPO, timeout=TIMEOUT).returncode
    except subprocess.TimeoutExpired:
        print(f"demo: did not finish within {TIMEOUT} s", file=sys.stderr)
        return 1
    print(f"demo: {'finished' if code == 0 else 'FAILED'} in {time.monotonic() - started:.1f} s (wall time)")
    return code


def run_demo() -> int:
    started = time.monotonic()
    sys.path.insert(0, str(REPO))
    import build_addon

    zip_path = build_addon.build()
    print(f"demo: add-on zip {zip_path}")

    import bpy

    user_extensions = Path(bpy.utils.user_resource('EXTENSIONS'))
    assert USER_RESOURCES in user_extensions.parents, f"Blender's user folder is not isolated: {user_extensions}"

    bpy.ops.wm.read_factory_settings(use_empty=False)
    if ADDON_MODULE in bpy.context.preferences.addons:
        bpy.ops.preferences.addon_disable(module=ADDON_MODULE)
    result = bpy.ops.extensions.package_install_files(filepath=str(zip_path), repo='user_default',
                                                      enable_on_install=True)
    assert result == {'FINISHED'} and ADDON_MODULE in bpy.context.preferences.addons, result
    try:
        code = convert_and_render(bpy, started)
    finally:
        bpy.ops.preferences.addon_disable(module=ADDON_MODULE)
    return code


def convert_and_render(bpy, started: float) -> int:
    scene = bpy.context.scene
    for name in ("Cube",):
        if name in bpy.data.objects:
            bpy.data.objects.remove(bpy.data.objects[name])

    bpy.ops.mesh.primitive_monkey_add(location=(0.0, 0.0, 0.0))
    source = bpy.context.active_object
    subdivision = source.modifiers.new("Subdivision", 'SUBSURF')
    subdivision.levels = subdivision.render_levels = 2
    bpy.ops.object.shade_smooth()

    prefs = bpy.context.preferences.addons[ADDON_MODULE].preferences
    prefs.device = 'auto'
    settings = scene.neural_fields
    settings.preset = 'fast'
    settings.network = 'hashgrid'
    settings.resolution = 256
    settings.max_steps = 0  # the preset decides

    print("demo: converting Suzanne (Subdivision level 2) with the 'fast' preset at resolution 256")
    conversion_started = time.monotonic()
    try:
        bpy.ops.neural_fields.mesh_to_sdf('INVOKE_DEFAULT')  # background: runs to completion
    except RuntimeError as exc:
        print(f"demo: the conversion failed:\n{exc}", file=sys.stderr)
        return 1
    conversion_seconds = time.monotonic() - conversion_started
    result_object = bpy.data.objects[f"{source.name}_sdf"]
    job_dir = Path(result_object["neural_fields_job"])

    # Materials: grey source, coloured result.
    source.data.materials.append(make_material(bpy, "Source Grey", (0.5, 0.5, 0.5, 1.0)))
    result_object.data.materials.append(make_material(bpy, "Neural SDF Orange", (0.85, 0.35, 0.08, 1.0)))
    setup_render(bpy, scene)
    bpy.ops.wm.save_as_mainfile(filepath=str(OUT / "demo.blend"))

    # Side by side for the picture only: the saved scene keeps the result on top of the source.
    width = source.dimensions.x
    original = result_object.matrix_world.copy()
    result_object.location.x += width * 1.15
    place_camera(bpy, scene, center_x=width * 1.15 / 2)
    scene.render.filepath = str(OUT / "demo.png")
    render_started = time.monotonic()
    bpy.ops.render.render(write_still=True)
    render_seconds = time.monotonic() - render_started
    result_object.matrix_world = original

    shutil.copyfile(job_dir / "result.json", OUT / "demo_metrics.json")
    result = json.loads((job_dir / "result.json").read_text())
    print("demo: metrics " + json.dumps(result.get("metrics", {}), indent=2))
    print(f"demo: device {result.get('device')}, backend timings {json.dumps(result.get('timings', {}))}")
    print(f"demo: {len(result_object.data.polygons)} triangles in {result_object.name}; job folder {job_dir}")
    print(f"demo: conversion {conversion_seconds:.1f} s, render {render_seconds:.1f} s, "
          f"total {time.monotonic() - started:.1f} s")
    print(f"demo: wrote {OUT / 'demo.blend'}, {OUT / 'demo.png'}, {OUT / 'demo_metrics.json'}")
    return 0


def make_material(bpy, name, color):
    material = bpy.data.materials.new(name)
    material.use_nodes = True
    shader = material.node_tree.nodes.get("Principled BSDF")
    shader.inputs["Base Color"].default_value = color
    shader.inputs["Roughness"].default_value = 0.5
    material.diffuse_color = color
    return material


def setup_render(bpy, scene) -> None:
    scene.render.engine = 'CYCLES'
    scene.cycles.device = 'CPU'
    scene.cycles.samples = 32
    scene.cycles.use_denoising = False
    scene.cycles.use_adaptive_sampling = True
    scene.render.resolution_x, scene.render.resolution_y = 800, 400
    scene.render.resolution_percentage = 100
    scene.render.image_settings.file_format = 'PNG'
    scene.view_settings.view_transform = 'Standard'
    scene.view_settings.look = 'None'

    world = scene.world or bpy.data.worlds.new("World")
    scene.world = world
    world.use_nodes = True
    background = world.node_tree.nodes.get("Background")
    background.inputs["Color"].default_value = (0.8, 0.82, 0.85, 1.0)
    background.inputs["Strength"].default_value = 0.6

    for obj in [o for o in bpy.data.objects if o.type == 'LIGHT']:
        bpy.data.objects.remove(obj)
    sun_data = bpy.data.lights.new("Sun", 'SUN')
    sun_data.energy = 3.5
    sun_data.angle = math.radians(10)
    sun = bpy.data.objects.new("Sun", sun_data)
    sun.rotation_euler = (math.radians(50), math.radians(10), math.radians(-30))
    scene.collection.objects.link(sun)


def place_camera(bpy, scene, center_x: float) -> None:
    camera = scene.camera or bpy.data.objects.get("Camera")
    if camera is None:
        camera = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
        scene.collection.objects.link(camera)
    scene.camera = camera
    camera.data.lens = 50
    camera.data.sensor_fit = 'HORIZONTAL'
    camera.location = (center_x, -9.5, 0.7)
    camera.rotation_euler = (math.radians(86), 0.0, 0.0)


if __name__ == "__main__":
    sys.exit(main())
