"""Helpers shared by the Blender test scripts (run with bpy as a module, in a subprocess)."""

from __future__ import annotations

import hashlib
import importlib
import json
import sys
import traceback

import bpy
import numpy as np

ADDON_MODULE = "bl_ext.user_default.neural_fields"


def load_args() -> dict:
    return json.loads(sys.argv[1])


def setup(zip_path: str):
    """Factory scene, then install and enable the add-on zip the way a user does."""
    bpy.ops.wm.read_factory_settings(use_empty=False)
    result = bpy.ops.extensions.package_install_files(filepath=zip_path, repo='user_default',
                                                      enable_on_install=True)
    assert result == {'FINISHED'}, result
    assert ADDON_MODULE in bpy.context.preferences.addons, list(bpy.context.preferences.addons.keys())
    return importlib.import_module(ADDON_MODULE)


def addon_module(name: str):
    return importlib.import_module(f"{ADDON_MODULE}.{name}")


def preferences():
    return bpy.context.preferences.addons[ADDON_MODULE].preferences


def teardown() -> None:
    if ADDON_MODULE in bpy.context.preferences.addons:
        bpy.ops.preferences.addon_disable(module=ADDON_MODULE)


def make_active(obj) -> None:
    for other in bpy.context.view_layer.objects:
        other.select_set(False)
    if obj is not None:
        obj.select_set(True)
    bpy.context.view_layer.objects.active = obj


def add_suzanne(levels: int = 1, location=(1.0, -2.0, 0.5), rotation=(0.3, 0.0, 0.7), scale=(1.5, 1.5, 1.5)):
    """Suzanne with a Subdivision modifier, moved/rotated/scaled so world != local coordinates."""
    bpy.ops.mesh.primitive_monkey_add(location=location, rotation=rotation)
    obj = bpy.context.active_object
    obj.scale = scale
    modifier = obj.modifiers.new("Subdivision", 'SUBSURF')
    modifier.levels = levels
    modifier.render_levels = levels
    bpy.context.view_layer.update()
    return obj


def world_triangles(obj) -> tuple[np.ndarray, np.ndarray]:
    """The evaluated mesh of obj, triangulated, in world coordinates."""
    depsgraph = bpy.context.evaluated_depsgraph_get()
    evaluated = obj.evaluated_get(depsgraph)
    mesh = evaluated.to_mesh()
    try:
        mesh.calc_loop_triangles()
        vertices = np.empty(len(mesh.vertices) * 3, np.float32)
        mesh.vertices.foreach_get("co", vertices)
        faces = np.empty(len(mesh.loop_triangles) * 3, np.int32)
        mesh.loop_triangles.foreach_get("vertices", faces)
    finally:
        evaluated.to_mesh_clear()
    vertices = vertices.reshape(-1, 3).astype(np.float64)
    matrix = np.array(obj.matrix_world)
    world = vertices @ matrix[:3, :3].T + matrix[:3, 3]
    return world, faces.reshape(-1, 3)


def object_fingerprint(obj) -> dict:
    """What must not change on a source object: data, transform, modifiers, name."""
    info = {"name": obj.name, "type": obj.type, "matrix_world": [list(row) for row in obj.matrix_world],
            "data": obj.data.name if obj.data else None,
            "modifiers": [(m.name, m.type) for m in obj.modifiers]}
    if obj.type == 'MESH':
        mesh = obj.data
        coords = np.empty(len(mesh.vertices) * 3, np.float32)
        mesh.vertices.foreach_get("co", coords)
        info["vertices"] = len(mesh.vertices)
        info["polygons"] = len(mesh.polygons)
        info["coords_sha1"] = hashlib.sha1(coords.tobytes()).hexdigest()
    return info


def scene_snapshot() -> dict:
    """Every object and datablock count: equal before and after means nothing changed."""
    return {"objects": {obj.name: object_fingerprint(obj) for obj in bpy.data.objects},
            "meshes": sorted(mesh.name for mesh in bpy.data.meshes),
            "scene_objects": sorted(obj.name for obj in bpy.context.scene.objects)}


def run_main(main) -> None:
    """Run main(args) -> dict; always write the result file and disable the add-on."""
    args = load_args()
    data: dict = {}
    try:
        data = main(args) or {}
    except BaseException:
        data["exception"] = traceback.format_exc()
    finally:
        try:
            teardown()
        except Exception:
            data.setdefault("teardown_exception", traceback.format_exc())
        with open(args["result"], "w") as handle:
            json.dump(data, handle, indent=1, default=str)
