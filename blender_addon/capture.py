"""Capture: a ring of cameras around the selection, and rendering them into a dataset.

``neural_fields.make_capture_rig`` puts N cameras (Fibonacci sphere or hemisphere) around the
selected objects' world bounding sphere, aimed at its centre, framing it, in a new
"Capture Rig" collection. ``neural_fields.render_capture`` renders each camera of the most
recent rig (or the selected cameras) into ``images/NNNN.png`` (RGBA, transparent film,
Standard view transform), optional passes, ``transforms.json`` and ``normalization.json``.
The maths lives in capture_math.py (no bpy).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import bpy
import numpy as np
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, StringProperty
from mathutils import Matrix

from . import capture_math
from ._backend import cameras, datasets
from .camera_io import camera_model_from_object, camera_to_world
CameraError, CameraModel, intrinsics_from_camera = cameras.CameraError, cameras.CameraModel, cameras.intrinsics_from_camera

RIG_NAME = "Capture Rig"
RIG_KEY = "neural_fields_rig"           # collection custom property: creation order (most recent = largest)
CENTER_KEY = "neural_fields_center"     # the rig's bounding sphere, for normalization.json
RADIUS_KEY = "neural_fields_radius"
ROI_MIN_KEY = "neural_fields_roi_min"   # the selection's world bounding box, for normalization.json
ROI_MAX_KEY = "neural_fields_roi_max"
CAPTURE_DIR_KEY = "neural_fields_capture_dir"   # where Render Capture last wrote this rig's dataset
MARGIN = 1.1


# --------------------------------------------------------------------------- helpers


def world_points(obj, depsgraph) -> np.ndarray:
    """World-space points that bound ``obj``: its evaluated mesh's vertices, else its bounding box."""
    matrix = np.array(obj.matrix_world, dtype=np.float64)
    points = None
    if obj.type == 'MESH':
        evaluated = obj.evaluated_get(depsgraph)
        mesh = evaluated.to_mesh()
        try:
            if len(mesh.vertices):
                points = np.empty(len(mesh.vertices) * 3, np.float32)
                mesh.vertices.foreach_get("co", points)
                points = points.reshape(-1, 3).astype(np.float64)
        finally:
            evaluated.to_mesh_clear()
    if points is None:
        points = np.array([tuple(corner) for corner in obj.bound_box], dtype=np.float64)
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def rigs():
    """The rig collections, most recent first."""
    found = [c for c in bpy.data.collections if c.name.startswith(RIG_NAME) or RIG_KEY in c]
    return sorted(found, key=lambda c: (int(c.get(RIG_KEY, -1)), c.name), reverse=True)


def cameras_to_render(context):
    """(cameras, rig collection or None, message): the selected cameras if any are selected,
    else the cameras of the most recent rig."""
    selected = [obj for obj in context.selected_objects if obj.type == 'CAMERA']
    if selected:
        return sorted(selected, key=lambda o: o.name), None, ""
    for rig in rigs():
        cams = sorted((obj for obj in rig.all_objects if obj.type == 'CAMERA'), key=lambda o: o.name)
        if cams:
            return cams, rig, ""
    return [], None, "No cameras: select cameras, or make a capture rig first (Make Capture Rig)"


def default_directory() -> str:
    if bpy.data.filepath:
        return "//capture/"
    return os.path.join(tempfile.gettempdir(), "neural_fields_capture")


# --------------------------------------------------------------------------- operators


class NEURALFIELDS_OT_make_capture_rig(bpy.types.Operator):
    """Put cameras evenly around the selected objects, aimed at their centre, in a new collection"""
    bl_idname = "neural_fields.make_capture_rig"
    bl_label = "Make Capture Rig"
    bl_options = {'REGISTER', 'UNDO'}

    count: IntProperty(name="Cameras", default=48, min=1, max=2000)
    layout: EnumProperty(name="Layout", items=(
        ('SPHERE', "Sphere", "Cameras all around"),
        ('HEMISPHERE', "Hemisphere", "Cameras above only (world +Z)")), default='SPHERE')
    lens: FloatProperty(name="Focal Length", default=50.0, min=1.0, max=5000.0, unit='CAMERA')

    def execute(self, context):
        objects = [obj for obj in context.selected_objects if obj.type != 'CAMERA']
        if not objects:
            self.report({'ERROR'}, "Select the objects to capture first (cameras do not count)")
            return {'CANCELLED'}
        depsgraph = context.evaluated_depsgraph_get()
        try:
            points = np.concatenate([world_points(obj, depsgraph) for obj in objects])
            center, radius = capture_math.bounding_sphere(points)
        except ValueError as exc:
            self.report({'ERROR'}, f"Cannot bound the selection: {exc}")
            return {'CANCELLED'}
        radius = max(radius, 1e-3)
        render = context.scene.render
        model = CameraModel(lens_mm=self.lens, sensor_width_mm=36.0, sensor_height_mm=24.0, sensor_fit='AUTO',
                            resolution_x=render.resolution_x, resolution_y=render.resolution_y,
                            resolution_percentage=render.resolution_percentage,
                            pixel_aspect_x=render.pixel_aspect_x, pixel_aspect_y=render.pixel_aspect_y)
        try:
            intr = intrinsics_from_camera(model)
            poses, distance, (near, far) = capture_math.rig_poses(
                center, radius, self.count, self.layout, intr.camera_angle_x, intr.camera_angle_y, MARGIN)
        except (CameraError, ValueError) as exc:
            self.report({'ERROR'}, str(exc))
            return {'CANCELLED'}

        collection = bpy.data.collections.new(RIG_NAME)
        collection[RIG_KEY] = max([int(c.get(RIG_KEY, 0)) for c in rigs()] + [0]) + 1
        collection[CENTER_KEY] = [float(c) for c in center]
        collection[RADIUS_KEY] = float(radius)
        collection[ROI_MIN_KEY] = [float(v) for v in points.min(axis=0)]
        collection[ROI_MAX_KEY] = [float(v) for v in points.max(axis=0)]
        context.scene.collection.children.link(collection)
        digits = max(3, len(str(self.count)))
        for index, c2w in enumerate(poses):
            name = f"Capture.{index:0{digits}d}"
            data = bpy.data.cameras.new(name)
            data.type = 'PERSP'
            data.lens_unit = 'MILLIMETERS'
            data.lens = self.lens
            data.sensor_width, data.sensor_height, data.sensor_fit = 36.0, 24.0, 'AUTO'
            data.clip_start, data.clip_end = near, far
            obj = bpy.data.objects.new(name, data)
            obj.rotation_mode = 'QUATERNION'
            obj.matrix_world = Matrix(c2w.tolist())
            collection.objects.link(obj)
        self.report({'INFO'}, f"Made {len(poses)} cameras in '{collection.name}' at {distance:.3g} from the centre")
        return {'FINISHED'}


class NEURALFIELDS_OT_render_capture(bpy.types.Operator):
    """Render every camera of the capture rig (or the selected cameras) into a transforms.json dataset"""
    bl_idname = "neural_fields.render_capture"
    bl_label = "Render Capture"
    bl_options = {'REGISTER'}

    directory: StringProperty(name="Folder", subtype='DIR_PATH', default="")
    depth: BoolProperty(name="Depth", default=False, description="Also write the depth pass (multilayer EXR)")
    normal: BoolProperty(name="Normals", default=False, description="Also write the normal pass (multilayer EXR)")
    mask: BoolProperty(name="Mask", default=False, description="Also write the object mask (alpha) as a PNG")

    def invoke(self, context, event):
        if not self.directory:
            self.directory = default_directory()
        if bpy.app.background:
            return self.execute(context)
        return context.window_manager.invoke_props_dialog(self)

    def execute(self, context):
        scene = context.scene
        cams, rig, message = cameras_to_render(context)
        if not cams:
            self.report({'ERROR'}, message)
            return {'CANCELLED'}
        # validate everything before writing anything
        frames_info = []
        try:
            for cam in cams:
                model = camera_model_from_object(cam, scene)
                frames_info.append((cam, intrinsics_from_camera(model), camera_to_world(cam)))
        except CameraError as exc:
            self.report({'ERROR'}, f"{exc}. Nothing was written")
            return {'CANCELLED'}
        directory = self.directory or default_directory()
        root = Path(bpy.path.abspath(directory))
        if not root.is_absolute():
            root = Path(tempfile.gettempdir()) / "neural_fields_capture"

        roi = self._region(scene, rig, frames_info)
        try:
            written = self._render_all(context, root, frames_info)
        except (OSError, RuntimeError, datasets.DatasetError) as exc:
            self.report({'ERROR'}, f"Render capture failed: {exc}")
            return {'CANCELLED'}
        write_normalization(root / "normalization.json", [c2w for _, _, c2w in frames_info], roi)
        if rig is not None:   # Train NeRF starts from the most recent rig's capture folder
            rig[CAPTURE_DIR_KEY] = str(root)
        self.report({'INFO'}, f"Rendered {written} views into {root}")
        return {'FINISHED'}

    @staticmethod
    def _region(scene, rig, frames_info):
        """The region of interest as (min, max) world corners: the rig's selection's bounding
        box, else that of the renderable meshes; None (estimated from the cameras) without either."""
        if rig is not None and ROI_MIN_KEY in rig and ROI_MAX_KEY in rig:
            return np.array(rig[ROI_MIN_KEY], dtype=np.float64), np.array(rig[ROI_MAX_KEY], dtype=np.float64)
        depsgraph = bpy.context.evaluated_depsgraph_get()
        meshes = [obj for obj in scene.objects if obj.type == 'MESH' and not obj.hide_render]
        if meshes:
            points = np.concatenate([world_points(o, depsgraph) for o in meshes])
            return points.min(axis=0), points.max(axis=0)
        return None

    def _render_all(self, context, root: Path, frames_info) -> int:
        scene = context.scene
        render = scene.render
        view_layer = context.view_layer
        image = render.image_settings
        passes = self.depth or self.normal
        saved = [
            (scene, "camera", scene.camera),
            (render, "filepath", render.filepath),
            (render, "film_transparent", render.film_transparent),
            (render, "use_file_extension", render.use_file_extension),
            (image, "file_format", image.file_format),
            (image, "color_mode", image.color_mode),
            (image, "color_depth", image.color_depth),
            (scene.view_settings, "view_transform", scene.view_settings.view_transform),
            (scene.view_settings, "look", scene.view_settings.look),
            (scene.view_settings, "exposure", scene.view_settings.exposure),
            (scene.view_settings, "gamma", scene.view_settings.gamma),
            (view_layer, "use_pass_z", view_layer.use_pass_z),
            (view_layer, "use_pass_normal", view_layer.use_pass_normal),
        ]
        if hasattr(image, "exr_codec"):
            saved.append((image, "exr_codec", image.exr_codec))
        wm = context.window_manager
        frames = []
        wm.progress_begin(0, len(frames_info))
        try:
            render.film_transparent = True
            render.use_file_extension = True
            scene.view_settings.view_transform = 'Standard'
            scene.view_settings.look = 'None'
            scene.view_settings.exposure = 0.0
            scene.view_settings.gamma = 1.0
            if self.depth:
                view_layer.use_pass_z = True
            if self.normal:
                view_layer.use_pass_normal = True
            (root / "images").mkdir(parents=True, exist_ok=True)
            if passes:
                (root / "passes").mkdir(exist_ok=True)
            if self.mask:
                (root / "masks").mkdir(exist_ok=True)
            for index, (cam, intr, c2w) in enumerate(frames_info):
                scene.camera = cam
                name = f"{index:04d}"
                image.file_format, image.color_mode, image.color_depth = 'PNG', 'RGBA', '8'
                render.filepath = str(root / "images" / f"{name}.png")
                result = bpy.ops.render.render(write_still=True)
                if 'FINISHED' not in result:
                    raise RuntimeError(f"rendering camera '{cam.name}' did not finish ({result})")
                extra = {"camera_name": cam.name}
                if passes:
                    image.file_format = 'OPEN_EXR_MULTILAYER'
                    image.color_depth = '32'
                    if hasattr(image, "exr_codec"):
                        image.exr_codec = 'ZIP'
                    exr = root / "passes" / f"{name}.exr"
                    bpy.data.images["Render Result"].save_render(filepath=str(exr), scene=scene)
                    if self.depth:
                        extra["depth_file_path"] = f"passes/{name}.exr"
                    if self.normal:
                        extra["normal_file_path"] = f"passes/{name}.exr"
                if self.mask:
                    write_mask(root / "images" / f"{name}.png", root / "masks" / f"{name}.png")
                    extra["mask_file_path"] = f"masks/{name}.png"
                frames.append(datasets.Frame(file_path=f"images/{name}.png", c2w=c2w, intrinsics=intr,
                                             extra=extra))
                wm.progress_update(index + 1)
        finally:
            for owner, attribute, value in saved:
                try:
                    setattr(owner, attribute, value)
                except (TypeError, ValueError, AttributeError):
                    pass
            wm.progress_end()
        meta = {}
        if passes:
            meta["passes"] = {"file": "multilayer OpenEXR", "depth": "ViewLayer.Depth.Z (Blender's Depth pass)",
                              "normal": "ViewLayer.Normal.XYZ (Blender's Normal pass)"}
        datasets.write_transforms(root / "transforms.json", frames, extra=meta or None)
        return len(frames)


def write_normalization(path: Path, poses, roi) -> None:
    """normalization.json for the region of interest (datasets' helpers when present)."""
    if hasattr(datasets, "normalization_for_cameras"):
        kwargs = {} if roi is None else {"roi_min": roi[0], "roi_max": roi[1]}
        datasets.write_normalization(path, datasets.normalization_for_cameras(poses, **kwargs))
        return
    from ._backend import protocol
    if roi is None:
        center, radius = capture_math.bounding_sphere(np.array([c2w[:3, 3] for c2w in poses]))
    else:
        center, radius = capture_math.bounding_sphere(np.array(roi))
    c, s = capture_math.normalization_from_sphere(center, radius)
    protocol.write_json_atomic(path, protocol.make_normalization(c, s))


def write_mask(png: Path, out: Path) -> None:
    """The alpha channel of an RGBA PNG as a greyscale PNG (255 = object)."""
    source = bpy.data.images.load(str(png), check_existing=False)
    try:
        w, h = source.size
        pixels = np.empty(w * h * 4, np.float32)
        source.pixels.foreach_get(pixels)
        alpha = pixels.reshape(-1, 4)[:, 3]
        mask = bpy.data.images.new("neural_fields_mask", w, h, alpha=False, is_data=True)
        try:
            mask.pixels.foreach_set(np.repeat(alpha, 4).reshape(-1, 4).clip(0, 1).ravel()
                                    * np.tile(np.array([1, 1, 1, 0], np.float32), w * h)
                                    + np.tile(np.array([0, 0, 0, 1], np.float32), w * h))
            mask.filepath_raw = str(out)
            mask.file_format = 'PNG'
            mask.save()
        finally:
            bpy.data.images.remove(mask)
    finally:
        bpy.data.images.remove(source)


# --------------------------------------------------------------------------- panel


class NEURALFIELDS_PT_capture(bpy.types.Panel):
    bl_label = "Capture"
    bl_idname = "NEURALFIELDS_PT_capture"
    bl_space_type = 'VIEW_3D'
    bl_region_type = 'UI'
    bl_category = "Neural Fields"
    bl_parent_id = "NEURALFIELDS_PT_main"
    bl_options = {'DEFAULT_CLOSED'}

    def draw(self, context):
        layout = self.layout
        layout.operator(NEURALFIELDS_OT_make_capture_rig.bl_idname, icon='OUTLINER_OB_CAMERA')
        layout.operator(NEURALFIELDS_OT_render_capture.bl_idname, icon='RENDER_STILL')


classes = (NEURALFIELDS_OT_make_capture_rig, NEURALFIELDS_OT_render_capture, NEURALFIELDS_PT_capture)

register, unregister = bpy.utils.register_classes_factory(classes)
