"""Our camera maths against Blender's own, over a grid of lens, sensor fit, shift, pixel aspect and
resolution/percentage (the add-on's modules as installed from the zip).

(a) projection: random points in front of the camera land on the same pixel through our
    intrinsics + the OpenGL camera-to-world as through Blender's own projections:
    ``bpy_extras.object_utils.world_to_camera_view`` (only where res * percentage / 100 is a
    whole number: it frames with the un-rounded resolution, the renderer with the rounded
    one) and ``Object.calc_matrix_camera`` with the rendered size (always).
(b) round trip: Blender camera -> transforms.json -> read -> camera_from_intrinsics ->
    apply_camera_model on a fresh camera: same intrinsics, same pose, same pixels through
    Blender's projection of the new camera.
"""

import itertools
import time

import bpy
import numpy as np
from bpy_extras.object_utils import world_to_camera_view
from mathutils import Vector

import bl_common as common

LENSES = (18.0, 50.0, 135.0)
FITS = ("AUTO", "HORIZONTAL", "VERTICAL")
SHIFTS = ((0.0, 0.0), (0.1, -0.2), (-0.35, 0.25))
ASPECTS = ((1.0, 1.0), (2.0, 1.0), (1.0, 1.5))
RESOLUTIONS = ((640, 480, 100), (480, 640, 100), (1920, 1080, 33), (101, 77, 50), (300, 300, 100))
POINTS = 8


def blender_pixels(obj, scene, points, w, h):
    """Pixels (y down) of world points through Blender's projection matrix for a w x h render."""
    render = scene.render
    depsgraph = bpy.context.evaluated_depsgraph_get()
    projection = np.array(obj.calc_matrix_camera(depsgraph, x=w, y=h, scale_x=render.pixel_aspect_x,
                                                 scale_y=render.pixel_aspect_y), dtype=np.float64)
    view = np.linalg.inv(np.array(obj.matrix_world.normalized(), dtype=np.float64))
    clip = (projection @ view @ np.c_[points, np.ones(len(points))].T).T
    ndc = clip[:, :2] / clip[:, 3:4]
    return np.c_[(ndc[:, 0] + 1) * 0.5 * w, (1 - ndc[:, 1]) * 0.5 * h]


def our_pixels(intr, c2w_gl, points):
    w2c = np.linalg.inv(common_cameras.opengl_to_opencv(c2w_gl))
    local = (w2c @ np.c_[points, np.ones(len(points))].T).T
    return np.c_[intr.fl_x * local[:, 0] / local[:, 2] + intr.cx, intr.fl_y * local[:, 1] / local[:, 2] + intr.cy]


def main(args):
    global common_cameras
    common.setup(args["zip"])
    cameras = common_cameras = common.addon_module("_backend").cameras
    camera_io = common.addon_module("camera_io")
    datasets = common.addon_module("_backend").datasets
    from pathlib import Path
    work = Path(args["work"])

    scene = bpy.context.scene
    data = bpy.data.cameras.new("Probe")
    probe = bpy.data.objects.new("Probe", data)
    scene.collection.objects.link(probe)
    copy = bpy.data.objects.new("Copy", bpy.data.cameras.new("Copy"))
    scene.collection.objects.link(copy)
    rng = np.random.default_rng(7)

    started = time.monotonic()
    worst = {"calc_matrix_camera": 0.0, "world_to_camera_view": 0.0, "round_trip_pixels": 0.0,
             "round_trip_intrinsics": 0.0, "round_trip_pose": 0.0}
    failures = []
    round_trip_failures = []
    cases = 0
    w2cv_cases = 0
    for lens, fit, shift, aspect, resolution in itertools.product(LENSES, FITS, SHIFTS, ASPECTS, RESOLUTIONS):
        label = f"lens={lens} fit={fit} shift={shift} aspect={aspect} res={resolution}"
        data.lens, data.sensor_fit = lens, fit
        data.sensor_width, data.sensor_height = 32.0, 20.0
        data.shift_x, data.shift_y = shift
        render = scene.render
        render.resolution_x, render.resolution_y, render.resolution_percentage = resolution
        render.pixel_aspect_x, render.pixel_aspect_y = aspect
        probe.location = rng.uniform(-2, 2, size=3)
        probe.rotation_euler = rng.uniform(-np.pi, np.pi, size=3)
        bpy.context.view_layer.update()

        model = camera_io.camera_model_from_object(probe, scene)
        intr = cameras.intrinsics_from_camera(model)
        c2w = camera_io.camera_to_world(probe)
        # Points in front of the camera, over the frame and a margin around it, 1 to 10 units away
        # (Blender projects in float32: much nearer or farther points, off-origin, cost ~1e-3 px).
        pixels = np.c_[rng.uniform(-0.2, 1.2, POINTS) * intr.w, rng.uniform(-0.2, 1.2, POINTS) * intr.h]
        depth = rng.uniform(1.0, 10.0, POINTS)
        local = np.c_[(pixels[:, 0] - intr.cx) / intr.fl_x * depth, (pixels[:, 1] - intr.cy) / intr.fl_y * depth,
                      depth, np.ones(POINTS)]
        points = (cameras.opengl_to_opencv(c2w) @ local.T).T[:, :3]
        ours = our_pixels(intr, c2w, points)
        theirs = blender_pixels(probe, scene, points, intr.w, intr.h)
        error = float(np.max(np.abs(ours - theirs)))
        worst["calc_matrix_camera"] = max(worst["calc_matrix_camera"], error)
        if error > 1e-3:
            failures.append(f"calc_matrix_camera {label}: {error:.3g} px")
        if all(size * resolution[2] % 100 == 0 for size in resolution[:2]):
            w2cv_cases += 1
            normalized = np.array([list(world_to_camera_view(scene, probe, Vector(p)))[:2] for p in points])
            theirs = np.c_[normalized[:, 0] * intr.w, (1 - normalized[:, 1]) * intr.h]
            error = float(np.max(np.abs(ours - theirs)))
            worst["world_to_camera_view"] = max(worst["world_to_camera_view"], error)
            if error > 1e-3:
                failures.append(f"world_to_camera_view {label}: {error:.3g} px")

        # Round trip through a transforms.json and a fresh camera.
        folder = work / "roundtrip"
        path = datasets.write_transforms(folder / "transforms.json", [
            datasets.Frame(file_path="images/probe.png", c2w=c2w, intrinsics=intr)])
        [frame] = datasets.read_transforms(path)
        rebuilt = cameras.camera_from_intrinsics(frame.intrinsics)
        camera_io.set_camera_to_world(copy, frame.c2w)
        camera_io.apply_camera_model(copy, scene, rebuilt)
        bpy.context.view_layer.update()
        back = cameras.intrinsics_from_camera(camera_io.camera_model_from_object(copy, scene))
        scale = max(intr.w, intr.h)
        rel = max(abs(back.fl_x - intr.fl_x) / intr.fl_x, abs(back.fl_y - intr.fl_y) / intr.fl_y,
                  abs(back.cx - intr.cx) / scale, abs(back.cy - intr.cy) / scale)
        if (back.w, back.h) != (intr.w, intr.h):
            round_trip_failures.append(f"round trip {label}: size {back.w}x{back.h} != {intr.w}x{intr.h}")
        worst["round_trip_intrinsics"] = max(worst["round_trip_intrinsics"], rel)
        pose = float(np.max(np.abs(np.array(copy.matrix_world) - c2w)))
        worst["round_trip_pose"] = max(worst["round_trip_pose"], pose)
        again = blender_pixels(copy, scene, points, back.w, back.h)
        error = float(np.max(np.abs(again - ours)))
        worst["round_trip_pixels"] = max(worst["round_trip_pixels"], error)
        # The copy's pose is stored as float32 location + quaternion (~3e-7): at fl ~ 8000 px
        # that alone moves a pixel by ~2e-3, so the pixels get 5e-3 px here.
        if rel > 1e-5 or pose > 1e-5 or error > 5e-3:
            round_trip_failures.append(f"round trip {label}: intrinsics {rel:.3g}, pose {pose:.3g}, pixels {error:.3g}")
        cases += 1

    # Cameras the pinhole model cannot describe are refused with their name.
    refused = {}
    data.type = 'ORTHO'
    try:
        camera_io.camera_model_from_object(probe, scene)
    except cameras.CameraError as exc:
        refused["ortho"] = str(exc)
    data.type = 'PERSP'
    probe.scale = (1.0, 2.0, 1.0)
    bpy.context.view_layer.update()
    try:
        camera_io.camera_to_world(probe)
    except cameras.CameraError as exc:
        refused["scaled"] = str(exc)
    try:
        camera_io.apply_camera_model(copy, scene, cameras.CameraModel(lens_mm=0.5))
    except cameras.CameraError as exc:
        refused["clamped"] = str(exc)

    # The rendered size really is resolution * percentage / 100 rounded down (an empty scene, 1 sample).
    rendered = {}
    scene.camera = probe
    scene.render.engine = 'CYCLES'
    scene.cycles.samples = 1
    scene.render.image_settings.file_format = 'PNG'
    scene.render.pixel_aspect_x = scene.render.pixel_aspect_y = 1.0
    for size in ((101, 77, 50), (1000, 333, 33)):
        scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = size
        scene.render.filepath = str(work / f"render_{size[0]}x{size[1]}_{size[2]}.png")
        bpy.ops.render.render(write_still=True)
        expected = cameras.intrinsics_from_camera(camera_io.camera_model_from_object(probe, scene))
        rendered[str(size)] = [list(datasets.image_size(Path(scene.render.filepath))), [expected.w, expected.h]]

    return {"rendered": rendered, "cases": cases, "w2cv_cases": w2cv_cases, "worst": worst, "failures": failures[:20],
            "failure_count": len(failures),
            "round_trip_failures": round_trip_failures[:20], "round_trip_failure_count": len(round_trip_failures),
            "refused": refused, "seconds": time.monotonic() - started}


if __name__ == "__main__":
    common.run_main(main)
