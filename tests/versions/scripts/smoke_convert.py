"""Smoke test for one Blender version (run by that version's bpy module, in its own venv).

Installs the extension zip the way a user does (Get Extensions > Install from Disk is
bpy.ops.extensions.package_install_files), enables it, points Backend Python at the main
venv, converts a moved and scaled icosphere with the real backend and reports what came back.
Standard library + bpy + numpy only: this venv has nothing else.

    python smoke_convert.py '{"zip": ..., "backend_python": ..., "result": ...}'
"""

import importlib
import json
import sys
import time
import traceback

import bpy
import numpy as np

ADDON_MODULE = "bl_ext.user_default.neural_fields"


def world_bounds(obj) -> list[list[float]]:
    depsgraph = bpy.context.evaluated_depsgraph_get()
    mesh = obj.evaluated_get(depsgraph).to_mesh()
    try:
        coords = np.empty(len(mesh.vertices) * 3, np.float64)
        mesh.vertices.foreach_get("co", coords)
    finally:
        obj.evaluated_get(depsgraph).to_mesh_clear()
    coords = coords.reshape(-1, 3)
    matrix = np.array(obj.matrix_world)
    world = coords @ matrix[:3, :3].T + matrix[:3, 3]
    return [world.min(axis=0).tolist(), world.max(axis=0).tolist()]


def main(args: dict) -> dict:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    installed = bpy.ops.extensions.package_install_files(filepath=args["zip"], repo='user_default',
                                                         enable_on_install=True)
    data = {"blender": bpy.app.version_string, "install": sorted(installed),
            "enabled": ADDON_MODULE in bpy.context.preferences.addons}
    if not data["enabled"]:
        return data
    module = importlib.import_module(ADDON_MODULE)
    data["module_file"] = module.__file__
    prefs = bpy.context.preferences.addons[ADDON_MODULE].preferences
    prefs.backend_python = args["backend_python"]
    prefs.device = "cpu"
    settings = bpy.context.scene.neural_fields
    settings.preset = "fast"
    settings.resolution = args["resolution"]
    settings.max_steps = args["max_steps"]

    bpy.ops.mesh.primitive_ico_sphere_add(subdivisions=2, radius=1.0, location=(1.0, -2.0, 0.5))
    source = bpy.context.active_object
    source.scale = (1.5, 1.0, 0.75)
    bpy.context.view_layer.update()

    started = time.monotonic()
    returned = bpy.ops.neural_fields.mesh_to_sdf('INVOKE_DEFAULT')  # background: runs synchronously
    data["seconds"] = time.monotonic() - started
    data["return"] = sorted(returned)
    state = bpy.context.window_manager.neural_fields_state
    data["state"] = {"last_status": state.last_status, "last_message": state.last_message,
                     "last_job_dir": state.last_job_dir}
    data["objects"] = sorted(obj.name for obj in bpy.data.objects)
    data["source_bounds"] = world_bounds(source)
    result = bpy.data.objects.get(f"{source.name}_sdf")
    if result is not None:
        data["result_bounds"] = world_bounds(result)
        data["result_faces"] = len(result.data.polygons)
    return data


if __name__ == "__main__":
    args = json.loads(sys.argv[sys.argv.index("--") + 1] if "--" in sys.argv else sys.argv[1])
    data: dict = {}
    try:
        data = main(args)
    except BaseException:
        data["exception"] = traceback.format_exc()
    finally:
        try:
            if ADDON_MODULE in bpy.context.preferences.addons:
                bpy.ops.preferences.addon_disable(module=ADDON_MODULE)  # registered classes must go (hang at exit)
        except Exception:
            data.setdefault("teardown_exception", traceback.format_exc())
        with open(args["result"], "w") as handle:
            json.dump(data, handle, indent=1)
