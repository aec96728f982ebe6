"""Camera maths, seen from the add-on (no bpy): Blender's camera model <-> pinhole intrinsics.

Blender's projection (``BKE_camera_params_compute_viewplane`` in Blender 4.5), for a
perspective camera rendering a ``w`` x ``h`` image with pixel aspect ``ax``, ``ay``:

- ``w, h = int(resolution_x * percentage / 100), int(resolution_y * percentage / 100)``
  (integer arithmetic, so rounded down);
- ``ycor = ay / ax``;
- the sensor fit: HORIZONTAL, VERTICAL, or AUTO, which is horizontal when
  ``w * ax >= h * ay``; the sensor size is ``sensor_height`` for an explicit VERTICAL fit and
  ``sensor_width`` otherwise (AUTO always uses ``sensor_width``, whichever axis it fits);
- ``viewfac = w`` for a horizontal fit, ``ycor * h`` for a vertical one;
- a pixel is ``sensor / (lens * viewfac)`` wide on the view plane at distance 1 and
  ``ycor`` times that high; the lens shift moves the view plane by ``shift * viewfac``
  pixel widths in both axes.

So, in pixels with the image's y axis pointing down and pixel ``i`` covering ``[i, i+1)``
(the NeRF / OpenCV convention where the centre of a symmetric image is ``w/2``):

    fl_x = lens / sensor * viewfac          cx = w/2 - shift_x * viewfac
    fl_y = fl_x / ycor                      cy = h/2 + shift_y * viewfac / ycor

A camera-space point in OpenCV axes (x right, y down, z forward) lands at
``(fl_x * x/z + cx, fl_y * y/z + cy)``. Blender's ``matrix_world`` of a camera is the OpenGL
camera-to-world (x right, y up, looking down -z); ``opengl_to_opencv`` converts.

Blender clamps ``lens`` and the sensor sizes to at least 1 mm and the pixel aspect to
[1, 200]; ``camera_from_intrinsics`` only produces values inside those ranges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SENSOR_FITS = ("AUTO", "HORIZONTAL", "VERTICAL")
MIN_LENS_MM = 1.0
MIN_SENSOR_MM = 1.0
MAX_SENSOR_MM = 200.0
MAX_PIXEL_ASPECT = 200.0
MAX_SHIFT = 10.0
RIGID_TOLERANCE = 1e-4

_FLIP_YZ = np.diag([1.0, -1.0, -1.0, 1.0])


class CameraError(ValueError):
    """A camera that cannot be used; the text names it and says why."""


@dataclass
class CameraModel:
    """The parts of a Blender camera (and its scene's render settings) that shape the image."""

    lens_mm: float = 50.0
    sensor_width_mm: float = 36.0
    sensor_height_mm: float = 24.0
    sensor_fit: str = "AUTO"
    shift_x: float = 0.0
    shift_y: float = 0.0
    resolution_x: int = 1920
    resolution_y: int = 1080
    resolution_percentage: int = 100
    pixel_aspect_x: float = 1.0
    pixel_aspect_y: float = 1.0


@dataclass
class Intrinsics:
    """A pinhole camera in pixels (image y down, pixel i covers [i, i+1)), for a w x h image."""

    fl_x: float
    fl_y: float
    cx: float
    cy: float
    w: int
    h: int

    def matrix(self) -> np.ndarray:
        """The 3x3 OpenCV camera matrix K."""
        return np.array([[self.fl_x, 0.0, self.cx], [0.0, self.fl_y, self.cy], [0.0, 0.0, 1.0]])

    @property
    def camera_angle_x(self) -> float:
        return 2.0 * math.atan(0.5 * self.w / self.fl_x)

    @property
    def camera_angle_y(self) -> float:
        return 2.0 * math.atan(0.5 * self.h / self.fl_y)

    def isclose(self, other: "Intrinsics", rel: float = 1e-6) -> bool:
        """Equal sizes, and focal lengths and centres equal to ``rel`` of the image size."""
        if (self.w, self.h) != (other.w, other.h):
            return False
        scale = max(self.w, self.h)
        return (abs(self.fl_x - other.fl_x) <= rel * max(abs(self.fl_x), abs(other.fl_x))
                and abs(self.fl_y - other.fl_y) <= rel * max(abs(self.fl_y), abs(other.fl_y))
                and abs(self.cx - other.cx) <= rel * scale and abs(self.cy - other.cy) <= rel * scale)


def effective_resolution(model: CameraModel) -> tuple[int, int]:
    """The rendered image size: resolution * percentage / 100, rounded down as Blender does."""
    w = int(model.resolution_x) * int(model.resolution_percentage) // 100
    h = int(model.resolution_y) * int(model.resolution_percentage) // 100
    return w, h


def resolved_sensor_fit(model: CameraModel, w: int | None = None, h: int | None = None) -> str:
    """'HORIZONTAL' or 'VERTICAL': what AUTO means for this image shape and pixel aspect."""
    if model.sensor_fit not in SENSOR_FITS:
        raise CameraError(f"Unknown sensor fit {model.sensor_fit!r} (expected one of {', '.join(SENSOR_FITS)})")
    if model.sensor_fit != "AUTO":
        return model.sensor_fit
    if w is None or h is None:
        w, h = effective_resolution(model)
    return "HORIZONTAL" if w * model.pixel_aspect_x >= h * model.pixel_aspect_y else "VERTICAL"


def intrinsics_from_camera(model: CameraModel) -> Intrinsics:
    """The pinhole intrinsics of the image Blender renders through this camera."""
    w, h = effective_resolution(model)
    if w <= 0 or h <= 0:
        raise CameraError(f"The image would be {w}x{h} pixels: raise the resolution or its percentage")
    numbers = (model.lens_mm, model.sensor_width_mm, model.sensor_height_mm, model.shift_x, model.shift_y,
               model.pixel_aspect_x, model.pixel_aspect_y)
    if not all(math.isfinite(float(value)) for value in numbers):
        raise CameraError(f"The lens, sensor, shift or pixel aspect is not a finite number: {numbers}")
    if not (model.lens_mm > 0 and model.sensor_width_mm > 0 and model.sensor_height_mm > 0):
        raise CameraError(f"Lens and sensor sizes must be positive (focal length {model.lens_mm:g} mm, sensor "
                          f"{model.sensor_width_mm:g} x {model.sensor_height_mm:g} mm): set a focal length above 0")
    if not (model.pixel_aspect_x > 0 and model.pixel_aspect_y > 0):
        raise CameraError("The pixel aspect must be positive")
    fit = resolved_sensor_fit(model, w, h)
    sensor = model.sensor_height_mm if model.sensor_fit == "VERTICAL" else model.sensor_width_mm
    ycor = model.pixel_aspect_y / model.pixel_aspect_x
    viewfac = w if fit == "HORIZONTAL" else ycor * h
    fl_x = model.lens_mm / sensor * viewfac
    fl_y = fl_x / ycor
    cx = 0.5 * w - model.shift_x * viewfac
    cy = 0.5 * h + model.shift_y * viewfac / ycor
    return Intrinsics(fl_x=float(fl_x), fl_y=float(fl_y), cx=float(cx), cy=float(cy), w=int(w), h=int(h))


def camera_from_intrinsics(intr: Intrinsics, *, sensor_width_mm: float = 36.0) -> CameraModel:
    """A Blender camera model that renders exactly ``intr`` (resolution w x h at 100 %).

    The longer side of the image (in pixels times pixel aspect) gets ``sensor_width_mm``
    and the sensor fit along it (HORIZONTAL or VERTICAL, never AUTO, so a tie cannot flip);
    the other sensor side is proportional. The pixel aspect is >= 1 on one axis and 1 on
    the other, as Blender requires. Raises CameraError for intrinsics Blender cannot
    represent (non-positive or non-finite values, a field of view too wide for a 1 mm lens,
    a pixel aspect above 200, a lens shift beyond 10).
    """
    values = (intr.fl_x, intr.fl_y, intr.cx, intr.cy)
    if not all(math.isfinite(float(v)) for v in values):
        raise CameraError(f"Intrinsics are not finite: {intr}")
    w, h = int(intr.w), int(intr.h)
    if w != intr.w or h != intr.h or w <= 0 or h <= 0:
        raise CameraError(f"Image size must be positive whole pixels, got {intr.w}x{intr.h}")
    if intr.fl_x <= 0 or intr.fl_y <= 0:
        raise CameraError(f"Focal lengths must be positive, got fl_x={intr.fl_x}, fl_y={intr.fl_y}")
    if not sensor_width_mm >= MIN_SENSOR_MM:
        raise CameraError(f"Sensor width must be at least {MIN_SENSOR_MM} mm")
    ycor = intr.fl_x / intr.fl_y  # = pixel_aspect_y / pixel_aspect_x
    if ycor <= 1.0:
        aspect_x, aspect_y = 1.0 / ycor, 1.0
    else:
        aspect_x, aspect_y = 1.0, ycor
    if max(aspect_x, aspect_y) > MAX_PIXEL_ASPECT:
        raise CameraError(f"fl_x/fl_y = {ycor:g}: Blender's pixel aspect goes up to {MAX_PIXEL_ASPECT:g} only")
    horizontal = w * aspect_x >= h * aspect_y
    viewfac = w if horizontal else ycor * h
    fitted = intr.fl_x / viewfac  # lens / sensor
    sensor = float(sensor_width_mm)
    lens = fitted * sensor
    if lens < MIN_LENS_MM:  # a very wide view: a bigger sensor keeps the lens at Blender's 1 mm minimum
        sensor = MIN_LENS_MM / fitted
        lens = MIN_LENS_MM
        if sensor > MAX_SENSOR_MM:
            raise CameraError(f"A {math.degrees(intr.camera_angle_x):.1f} degree field of view is too wide "
                              "for a Blender perspective camera")
    other = sensor * (h * aspect_y) / (w * aspect_x) if horizontal else sensor * (w * aspect_x) / (h * aspect_y)
    other = min(max(other, MIN_SENSOR_MM), MAX_SENSOR_MM)
    shift_x = (0.5 * w - intr.cx) / viewfac
    shift_y = (intr.cy - 0.5 * h) * ycor / viewfac
    if abs(shift_x) > MAX_SHIFT or abs(shift_y) > MAX_SHIFT:
        raise CameraError(f"The principal point ({intr.cx:g}, {intr.cy:g}) is too far off the image "
                          f"for Blender's lens shift (at most {MAX_SHIFT:g})")
    return CameraModel(
        lens_mm=float(lens),
        sensor_width_mm=float(sensor if horizontal else other),
        sensor_height_mm=float(other if horizontal else sensor),
        sensor_fit="HORIZONTAL" if horizontal else "VERTICAL",
        shift_x=float(shift_x), shift_y=float(shift_y),
        resolution_x=w, resolution_y=h, resolution_percentage=100,
        pixel_aspect_x=float(aspect_x), pixel_aspect_y=float(aspect_y))


def opengl_to_opencv(c2w) -> np.ndarray:
    """OpenGL/Blender camera-to-world (y up, looking down -z) -> OpenCV (y down, looking down +z)."""
    return np.asarray(c2w, dtype=np.float64) @ _FLIP_YZ


def opencv_to_opengl(c2w) -> np.ndarray:
    """The inverse of ``opengl_to_opencv`` (the same flip: it is its own inverse)."""
    return np.asarray(c2w, dtype=np.float64) @ _FLIP_YZ


def check_camera_type(name: str, camera_type: str) -> None:
    """Only perspective cameras have pinhole intrinsics."""
    if camera_type != "PERSP":
        kind = {"ORTHO": "orthographic", "PANO": "panoramic"}.get(camera_type, repr(camera_type))
        raise CameraError(f"Camera '{name}' is {kind}: only perspective cameras are supported "
                          "(set Camera > Lens > Type to Perspective)")


def validate_camera_matrix(name: str, matrix) -> np.ndarray:
    """The 4x4 camera-to-world as float64, or CameraError if it is not finite or not rigid.

    Rigid means a rotation (orthonormal, determinant +1, within 1e-4) plus a translation,
    with a bottom row of (0, 0, 0, 1): a scaled, sheared or mirrored camera has no pinhole
    model. Clear the camera's scale (Object > Apply > Scale, or set it to 1) to fix it.
    """
    try:
        m = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CameraError(f"Camera '{name}': the transform is not a 4x4 matrix ({exc})") from None
    if m.shape != (4, 4):
        raise CameraError(f"Camera '{name}': the transform is {m.shape}, expected 4x4")
    if not np.all(np.isfinite(m)):
        raise CameraError(f"Camera '{name}': the transform has NaN or infinite values")
    if np.max(np.abs(m[3] - (0.0, 0.0, 0.0, 1.0))) > RIGID_TOLERANCE:
        raise CameraError(f"Camera '{name}': the transform's bottom row is {m[3].tolist()}, expected [0, 0, 0, 1]")
    rotation = m[:3, :3]
    error = np.max(np.abs(rotation.T @ rotation - np.eye(3)))
    if error > RIGID_TOLERANCE or np.linalg.det(rotation) <= 0:
        scale = np.linalg.norm(rotation, axis=0)
        raise CameraError(f"Camera '{name}' is scaled, sheared or mirrored (axis lengths "
                          f"{', '.join(f'{s:.4g}' for s in scale)}): set its scale to 1 "
                          "(and that of its parents) so it has a rigid transform")
    return m
