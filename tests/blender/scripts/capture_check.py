"""Capture rig + render capture (the add-on as installed from the zip), Cycles on the CPU, tiny renders.

Reports facts as JSON; tests/blender/test_capture.py asserts on them.
"""

import math
from pathlib import Path

import bpy
import numpy as np
from bpy_extras.object_utils import world_to_camera_view
from mathutils import Vector

import bl_common as common


def run_op(op, **kwargs):
    """(result set or None, error text)"""
    try:
        return op(**kwargs), ""
    except RuntimeError as exc:
        return None, str(exc)


def emissive(name, color=(1, 1, 1, 1), strength=5.0):
    mat = bpy.data.materials.new(name)
    mat.use_nodes = True
    nodes = mat.node_tree.nodes
    nodes.clear()
    out = nodes.new("ShaderNodeOutputMaterial")
    em = nodes.new("ShaderNodeEmission")
    em.inputs["Color"].default_value = color
    em.inputs["Strength"].default_value = strength
    mat.node_tree.links.new(em.outputs[0], out.inputs["Surface"])
    return mat


def scene_settings(scene):
    r = scene.render
    return {"camera": scene.camera.name if scene.camera else None, "filepath": r.filepath,
            "film_transparent": r.film_transparent, "format": r.image_settings.file_format,
            "color_mode": r.image_settings.color_mode, "depth": r.image_settings.color_depth,
            "view_transform": scene.view_settings.view_transform, "look": scene.view_settings.look,
            "use_pass_z": bpy.context.view_layer.use_pass_z,
            "use_pass_normal": bpy.context.view_layer.use_pass_normal}


def project(intr, c2w, points):
    w2c = np.linalg.inv(np.asarray(c2w) @ np.diag([1.0, -1.0, -1.0, 1.0]))
    local = (w2c @ np.c_[points, np.ones(len(points))].T).T
    return np.c_[intr.fl_x * local[:, 0] / local[:, 2] + intr.cx, intr.fl_y * local[:, 1] / local[:, 2] + intr.cy]


def main(args):
    common.setup(args["zip"])
    capture = common.addon_module("capture")
    camera_io = common.addon_module("camera_io")
    cameras = common.addon_module("_backend").cameras
    datasets = common.addon_module("_backend").datasets
    work = Path(args["work"])
    out = {}

    scene = bpy.context.scene
    scene.render.engine = 'CYCLES'
    scene.cycles.device = 'CPU'
    scene.cycles.samples = 4
    scene.cycles.use_denoising = False
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 48, 40, 100
    cube = bpy.data.objects["Cube"]
    cube.location = (0.4, -0.3, 0.2)
    cube.rotation_euler = (0.2, 0.1, 0.5)
    cube.scale = (0.8, 0.6, 0.5)
    cube.data.materials.clear()
    cube.data.materials.append(emissive("CubeGlow", (0.8, 0.5, 0.2, 1.0), 2.0))
    bpy.context.view_layer.update()
    before_settings = scene_settings(scene)

    # --- no selection
    common.make_active(None)
    n_collections = len(bpy.data.collections)
    result, error = run_op(bpy.ops.neural_fields.make_capture_rig, count=8)
    out["no_selection"] = {"result": str(result), "error": error,
                           "collections_unchanged": len(bpy.data.collections) == n_collections}

    # --- the rig
    common.make_active(cube)
    snapshot = common.scene_snapshot()
    result, error = run_op(bpy.ops.neural_fields.make_capture_rig, count=8, layout='SPHERE', lens=35.0)
    out["rig_result"], out["rig_error"] = str(result), error
    rigs = capture.rigs()
    rig = rigs[0]
    out["rig_name"] = rig.name
    out["rig_in_scene"] = rig.name in scene.collection.children
    rig_cams = sorted((o for o in rig.objects if o.type == 'CAMERA'), key=lambda o: o.name)
    out["rig_count"] = len(rig_cams)
    after = common.scene_snapshot()
    out["old_objects_unchanged"] = all(after["objects"][name] == info for name, info in snapshot["objects"].items())
    out["new_objects"] = sorted(set(after["objects"]) - set(snapshot["objects"]))
    out["rig_cameras_only_in_rig"] = all(list(c.users_collection) == [rig] for c in rig_cams)

    points, _ = common.world_triangles(cube)
    center = 0.5 * (points.min(0) + points.max(0))
    radius = float(np.max(np.linalg.norm(points - center, axis=1)))
    sphere = np.random.default_rng(0).normal(size=(400, 3))
    sphere = center + radius * sphere / np.linalg.norm(sphere, axis=1, keepdims=True)
    checks = []
    for cam in rig_cams:
        intr = cameras.intrinsics_from_camera(camera_io.camera_model_from_object(cam, scene))
        c2w = camera_io.camera_to_world(cam)
        c_px = project(intr, c2w, center[None])[0]
        s_px = project(intr, c2w, sphere)
        # Blender's own projection of the centre too (normalized, y up)
        ndc = world_to_camera_view(scene, cam, Vector(center.tolist()))
        checks.append({"name": cam.name, "distance": float(np.linalg.norm(c2w[:3, 3] - center)),
                       "center_px": c_px.tolist(), "size": [intr.w, intr.h],
                       "blender_center": [ndc.x, ndc.y, ndc.z],
                       "sphere_min": s_px.min(0).tolist(), "sphere_max": s_px.max(0).tolist(),
                       "clip": [cam.data.clip_start, cam.data.clip_end], "type": cam.data.type})
    out["rig_checks"] = checks
    out["rig_center"], out["rig_radius"] = center.tolist(), radius
    out["rig_bbox"] = [points.min(0).tolist(), points.max(0).tolist()]

    # --- render capture of the rig (nothing selected: the most recent rig)
    common.make_active(None)
    capture_dir = work / "capture"
    result, error = run_op(bpy.ops.neural_fields.render_capture, directory=str(capture_dir),
                           depth=True, normal=True, mask=True)
    out["render_result"], out["render_error"] = str(result), error
    out["settings_before"], out["settings_after"] = before_settings, scene_settings(scene)
    dataset = datasets.read_dataset(capture_dir / "transforms.json")
    frames = []
    for frame, cam in zip(dataset.frames, rig_cams):
        intr = cameras.intrinsics_from_camera(camera_io.camera_model_from_object(cam, scene))
        frames.append({"camera": cam.name, "file": str(frame.file_path), "extra": frame.extra,
                       "pose_error": float(np.max(np.abs(frame.c2w - np.array(cam.matrix_world)))),
                       "intrinsics_match": bool(frame.intrinsics.isclose(intr, 1e-9)),
                       "intr": [frame.intrinsics.fl_x, frame.intrinsics.cx, frame.intrinsics.w, frame.intrinsics.h]})
    out["frames"] = frames
    out["frame_count"] = len(dataset.frames)
    out["capture_dir"] = str(capture_dir)

    # --- a marker at a known point through a shifted, off-axis camera
    cube.hide_render = True
    bpy.ops.mesh.primitive_uv_sphere_add(radius=0.02, location=(0.35, -0.15, 0.3), segments=16, ring_count=8)
    marker = bpy.context.active_object
    marker.data.materials.append(emissive("Marker", (1, 1, 1, 1), 20.0))
    marker_cam = bpy.data.objects.new("MarkerCam", bpy.data.cameras.new("MarkerCam"))
    scene.collection.objects.link(marker_cam)
    marker_cam.data.lens, marker_cam.data.shift_x, marker_cam.data.shift_y = 40.0, 0.08, -0.05
    marker_cam.location = (3.0, -2.5, 1.6)
    direction = Vector((0.0, 0.0, 0.0)) - marker_cam.location
    marker_cam.rotation_euler = direction.to_track_quat('-Z', 'Y').to_euler()
    scene.render.resolution_x, scene.render.resolution_y = 64, 48
    scene.cycles.samples = 32
    common.make_active(marker_cam)
    marker_dir = work / "marker"
    result, error = run_op(bpy.ops.neural_fields.render_capture, directory=str(marker_dir))
    out["marker_result"], out["marker_error"] = str(result), error
    marker_ds = datasets.read_dataset(marker_dir / "transforms.json")
    frame = marker_ds.frames[0]
    out["marker_predicted"] = project(frame.intrinsics, frame.c2w, np.array([list(marker.location)]))[0].tolist()
    out["marker_image"] = str(frame.file_path)

    # --- bad cameras: an orthographic one among the selection -> error, nothing written
    ortho = bpy.data.objects.new("OrthoCam", bpy.data.cameras.new("OrthoCam"))
    ortho.data.type = 'ORTHO'
    scene.collection.objects.link(ortho)
    for obj in scene.objects:
        obj.select_set(False)
    marker_cam.select_set(True)
    ortho.select_set(True)
    bad_dir = work / "bad"
    result, error = run_op(bpy.ops.neural_fields.render_capture, directory=str(bad_dir))
    out["ortho"] = {"result": str(result), "error": error, "dir_exists": bad_dir.exists()}
    # no cameras at all and no rig
    for r in capture.rigs():
        for obj in list(r.objects):
            bpy.data.objects.remove(obj)
        bpy.data.collections.remove(r)
    common.make_active(None)
    result, error = run_op(bpy.ops.neural_fields.render_capture, directory=str(work / "none"))
    out["no_cameras"] = {"result": str(result), "error": error, "dir_exists": (work / "none").exists()}

    # the sub-panel is registered under the main one
    panel = bpy.types.Panel.bl_rna_get_subclass_py("NEURALFIELDS_PT_capture")
    out["panel_parent"] = getattr(panel, "bl_parent_id", None)
    return out


common.run_main(main)
