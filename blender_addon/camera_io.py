"""Blender cameras <-> ``cameras.CameraModel`` (the thin bpy layer over cameras.py).

The resolution, its percentage and the pixel aspect belong to the scene's render settings,
not to the camera, so one scene holds one image size for all its cameras.
"""

from __future__ import annotations

import numpy as np

from ._backend import cameras

CameraError, CameraModel = cameras.CameraError, cameras.CameraModel
check_camera_type, validate_camera_matrix = cameras.check_camera_type, cameras.validate_camera_matrix


def _camera_data(obj):
    if obj is None or obj.type != 'CAMERA':
        name = getattr(obj, "name", None)
        raise CameraError(f"'{name}' is not a camera" if name else "No camera given")
    check_camera_type(obj.name, obj.data.type)
    return obj.data


def camera_model_from_object(obj, scene) -> CameraModel:
    """The camera model of a perspective camera object rendered with ``scene``'s settings.

    Checked to give a usable image (CameraError naming the camera otherwise: an image of 0
    pixels at a low resolution percentage, a non-positive lens or sensor), so every caller
    (Render Capture, Use Photos, NeRF renders) refuses such a camera by name.
    """
    camera = _camera_data(obj)
    render = scene.render
    model = CameraModel(
        lens_mm=float(camera.lens), sensor_width_mm=float(camera.sensor_width),
        sensor_height_mm=float(camera.sensor_height), sensor_fit=str(camera.sensor_fit),
        shift_x=float(camera.shift_x), shift_y=float(camera.shift_y),
        resolution_x=int(render.resolution_x), resolution_y=int(render.resolution_y),
        resolution_percentage=int(render.resolution_percentage),
        pixel_aspect_x=float(render.pixel_aspect_x), pixel_aspect_y=float(render.pixel_aspect_y))
    try:
        cameras.intrinsics_from_camera(model)
    except CameraError as exc:
        raise CameraError(f"Camera '{obj.name}': {exc}") from None
    return model


def camera_to_world(obj) -> np.ndarray:
    """The camera's 4x4 OpenGL camera-to-world (its ``matrix_world``), checked to be rigid."""
    return validate_camera_matrix(obj.name, np.array(obj.matrix_world, dtype=np.float64))


def set_camera_to_world(obj, c2w, *, rotation_mode: str | None = 'QUATERNION') -> None:
    """Place a camera by its 4x4 OpenGL camera-to-world (rows), checked to be rigid first.

    Blender stores the pose as location + rotation + scale in float32: through a quaternion
    the matrix comes back to ~5e-7, through Euler angles it loses up to ~4e-5 near gimbal
    lock (checked in Blender 4.5). So the rotation mode becomes ``rotation_mode`` first
    (None keeps the object's own).
    """
    from mathutils import Matrix  # row-major; bpy's matrix properties read flat lists column-major
    matrix = validate_camera_matrix(obj.name, c2w)
    if rotation_mode is not None:
        obj.rotation_mode = rotation_mode
    obj.matrix_world = Matrix(matrix.tolist())


def apply_camera_model(obj, scene, model: CameraModel) -> None:
    """Make ``obj`` (a camera) and ``scene``'s render settings match ``model``.

    Sets the camera to perspective with the lens in millimetres. Raises CameraError, naming
    the setting, when Blender would clamp a value (lens or sensor below 1 mm, pixel aspect
    outside 1..200, shift beyond 10, ...), rather than silently make a different camera.
    """
    if obj is None or obj.type != 'CAMERA':
        raise CameraError(f"'{getattr(obj, 'name', None)}' is not a camera")
    camera = obj.data
    render = scene.render
    camera.type = 'PERSP'
    camera.lens_unit = 'MILLIMETERS'
    settings = [
        (camera, "lens", float(model.lens_mm)),
        (camera, "sensor_width", float(model.sensor_width_mm)),
        (camera, "sensor_height", float(model.sensor_height_mm)),
        (camera, "sensor_fit", str(model.sensor_fit)),
        (camera, "shift_x", float(model.shift_x)),
        (camera, "shift_y", float(model.shift_y)),
        (render, "resolution_x", int(model.resolution_x)),
        (render, "resolution_y", int(model.resolution_y)),
        (render, "resolution_percentage", int(model.resolution_percentage)),
        (render, "pixel_aspect_x", float(model.pixel_aspect_x)),
        (render, "pixel_aspect_y", float(model.pixel_aspect_y)),
    ]
    for owner, name, value in settings:
        try:
            setattr(owner, name, value)
        except (TypeError, ValueError) as exc:
            raise CameraError(f"Camera '{obj.name}': cannot set {name} to {value!r} ({exc})") from None
        got = getattr(owner, name)
        if isinstance(value, float):
            same = abs(got - value) <= 1e-6 * max(1.0, abs(value))
        else:
            same = got == value
        if not same:
            raise CameraError(f"Camera '{obj.name}': Blender limits {name} and made {value!r} into {got!r}")
