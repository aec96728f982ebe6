"""Image Editor > sidebar > Neural Fields: Fit Neural Image and Resample.

Fit Neural Image trains a coordinate network (SIREN, hash grid, Fourier features, ReLU MLP)
on the Image Editor's image (a file, a generated or painted image, a packed image, a render)
and samples it at a new size (x2, x4, x8 ... or an exact width and height). The result is a
new Blender image, ``<name>_x4`` (or ``<name>_1920x1080``), packed into the .blend and shown
in the editor. Resample samples the trained field of such an image again at another size,
without retraining (the image remembers its job folder in a custom property).

The same shape as the mesh conversion: ``start_fit`` / ``start_resample`` write the job and
start the backend, ``ImageJob.poll`` (a modal operator's timer) or ``ImageJob.wait``
(background mode) follow it, ``ImageJob.finish`` loads the result. Every failure raises
``ImageFieldError`` with a message for the artist and adds nothing to ``bpy.data.images``.
The bpy-free parts (sizes, names, configs, job folders) live in ``jobs``.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import bpy
import numpy as np
from bpy.props import StringProperty

from . import conversion, jobs, runner
from ._backend import imageio, protocol

IMAGE_JOB_KEY = "neural_fields_job"          # the job folder whose trained field made this image
IMAGE_SOURCE_KEY = "neural_fields_source"    # the name of the image the field was fitted to
IMAGE_METRICS_KEY = "neural_fields_metrics"  # psnr, ssim of the fit
IMAGE_NETWORK_KEY = "neural_fields_network"

TIMER_INTERVAL = 0.1
MESSAGES_PER_TICK = 50

_ACTIVE: list["ImageJob"] = []


class ImageFieldError(RuntimeError):
    """A fit or resample that could not start or did not finish; the text is for the artist."""


@dataclass
class ImageFitSettings:
    network: str = "siren"
    preset: str = "fast"
    scale: float | None = 4.0          # the output size: scale x the source size ...
    size: tuple[int, int] | None = None  # ... or exactly (width, height)
    max_steps: int = 0                 # 0: the preset decides
    seconds: float = 0.0               # 0: no time limit
    seed: int = 0
    device: str = "auto"
    python: str = ""                   # "": the Python running Blender
    jobs_root: str = ""                # "": the add-on's user folder

    def config(self) -> dict[str, Any]:
        return jobs.make_image_config(preset=self.preset, network=self.network, device=self.device, seed=self.seed,
                                      max_steps=self.max_steps or None, seconds=self.seconds or None,
                                      scale=None if self.size is not None else self.scale, size=self.size)


def settings_from_context(context) -> ImageFitSettings:
    """The scene's image settings plus the add-on preferences (backend Python, device, jobs folder)."""
    settings = ImageFitSettings()
    scene_settings = getattr(context.scene, "neural_fields_image", None)
    if scene_settings is not None:
        settings.network = scene_settings.network
        settings.preset = scene_settings.preset
        if scene_settings.size_mode == 'SIZE':
            settings.scale, settings.size = None, (scene_settings.width, scene_settings.height)
        else:
            settings.scale, settings.size = scene_settings.scale, None
        settings.max_steps = scene_settings.max_steps
        settings.seconds = scene_settings.seconds
        settings.seed = scene_settings.seed
    base = conversion.settings_from_context(context)
    settings.device, settings.python, settings.jobs_root = base.device, base.python, base.jobs_root
    return settings


def active_job() -> "ImageJob | None":
    for job in _ACTIVE:
        if not job.finished:
            return job
    return None


# --------------------------------------------------------------------------- the image


def editor_image(context):
    """The image shown in the context's Image Editor, or None."""
    space = getattr(context, "space_data", None)
    if space is not None and getattr(space, "type", None) == 'IMAGE_EDITOR':
        return space.image
    return None


NO_IMAGE = "Open or create an image in the Image Editor first"
NO_FITTED_IMAGE = "Open an image made by Fit Neural Image in the Image Editor first"


def find_image(context, name: str = "", missing: str = NO_IMAGE):
    """The image named ``name`` (an operator property, for scripts), else the Image Editor's image."""
    if name:
        image = bpy.data.images.get(name)
        if image is None:
            raise ImageFieldError(f"There is no image named '{name}'")
        return image
    image = editor_image(context)
    if image is None:
        raise ImageFieldError(missing)
    return image


def read_pixels(image) -> tuple[np.ndarray, bool]:
    """(pixels (H, W, 3|4) float32 top row first, is_float) of any image Blender holds.

    Byte images give their stored 8-bit values (sRGB-encoded for colour images, straight
    alpha), float images their linear values with premultiplied alpha; a Render Result (whose
    pixels Python cannot read) is saved as a linear EXR first.
    """
    if image.type in ('RENDER_RESULT', 'COMPOSITING'):
        return _render_result_pixels(image), True
    width, height = (int(v) for v in image.size)
    try:
        jobs.validate_image_size(width, height, image.name)
    except jobs.InputError as exc:
        raise ImageFieldError(str(exc)) from None
    channels = int(image.channels)
    flat = np.empty(width * height * channels, dtype=np.float32)
    try:
        image.pixels.foreach_get(flat)
    except (RuntimeError, ValueError) as exc:
        raise ImageFieldError(f"The pixels of image '{image.name}' cannot be read ({exc}). Reload it "
                              f"(Image > Reload) and try again.") from None
    try:
        return jobs.prepare_pixels(flat, width, height, channels, is_float=bool(image.is_float),
                                   name=image.name), bool(image.is_float)
    except jobs.InputError as exc:
        raise ImageFieldError(str(exc)) from None


def _render_result_pixels(image) -> np.ndarray:
    """A Render Result / Viewer image: save_render() to a float EXR (the scene's format
    settings are restored afterwards), read it back with the backend's reader."""
    scene = bpy.context.scene
    settings = scene.render.image_settings
    saved = {key: getattr(settings, key) for key in ("file_format", "color_depth", "exr_codec", "color_mode")}
    with tempfile.TemporaryDirectory(prefix="neural_fields_render_") as folder:
        path = os.path.join(folder, "render.exr")
        try:
            settings.file_format = 'OPEN_EXR'
            settings.color_depth = '32'
            settings.exr_codec = 'ZIP'
            settings.color_mode = 'RGBA'
            image.save_render(filepath=path, scene=scene)
        except RuntimeError as exc:
            raise ImageFieldError(f"'{image.name}' has no pixels to fit ({exc}): render first "
                                  f"(F12), then fit the render.") from None
        finally:
            for key, value in saved.items():
                try:
                    setattr(settings, key, value)
                except (TypeError, ValueError):
                    pass
        if not os.path.exists(path):
            raise ImageFieldError(f"'{image.name}' has no pixels to fit: render first (F12), then fit the render.")
        try:
            pixels, _info = imageio.read_image(path)
        except (OSError, ValueError) as exc:
            raise ImageFieldError(f"The render could not be read back ({exc})") from None
    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    height, width, channels = pixels.shape
    try:  # prepare_pixels wants Blender's layout: bottom row first, flat
        return jobs.prepare_pixels(pixels[::-1].ravel(), width, height, channels, is_float=True, name=image.name)
    except jobs.InputError as exc:
        raise ImageFieldError(str(exc)) from None


def fit_problem(image) -> str | None:
    """Why ``image`` cannot be fitted (for poll messages), or None. Cheap: reads no pixels."""
    if image is None:
        return NO_IMAGE
    if image.type in ('RENDER_RESULT', 'COMPOSITING'):
        return None
    width, height = image.size
    try:
        jobs.validate_image_size(width, height, image.name)
    except jobs.InputError as exc:
        return str(exc)
    return None


def resample_problem(image) -> str | None:
    if image is None:
        return NO_FITTED_IMAGE
    return jobs.resample_problem(image.get(IMAGE_JOB_KEY))


# --------------------------------------------------------------------------- the job


class ImageJob(conversion.BackendJob):
    """A running fit (``kind`` "fit") or resample (``kind`` "resample")."""

    def __init__(self, kind: str, source_name: str, job_dir: Path, backend: runner.BackendRunner, *,
                 new_name: str, colorspace: str | None, fitted_name: str, out_path: Path | None = None,
                 metrics: dict[str, float] | None = None, network: str = "", space=None) -> None:
        super().__init__(source_name, job_dir, backend)
        self.kind = kind
        self.new_name = new_name
        self.colorspace = colorspace
        self.fitted_name = fitted_name       # the image the field was trained on
        self.out_path = out_path
        self.metrics = dict(metrics or {})
        self.network = network
        self.space = space                   # the Image Editor to show the result in (UI only)
        self.new_image_name: str | None = None
        self.status_text = "Starting the backend..." if kind == "fit" else "Resampling..."

    @property
    def label(self) -> str:
        return "Neural image" if self.kind == "fit" else "Resample"

    def finish(self, context):
        """After ``done``: load the new image. Returns it, or None when cancelled; raises ImageFieldError."""
        if not self.finished:
            raise ImageFieldError("the job is still running: poll() until finished, or cancel() it")
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        if self.kind == "fit":
            conversion.note_job("finished", context, self.job_dir)
        status = self.status
        if status == "cancelled":
            return None
        if status != "done":
            raise ImageFieldError(f"{self.label} of '{self.source_name}' failed: {self.failure_text()}")
        if self.kind == "fit":
            try:
                path, result = jobs.image_result(self.job_dir)
            except jobs.JobError as exc:
                raise ImageFieldError(str(exc)) from None
            self.result = result
            self.metrics = {key: float(value) for key, value in (result.get("metrics") or {}).items()
                            if isinstance(value, (int, float)) and not isinstance(value, bool)}
        else:
            path = self.out_path
            if path is None or not path.is_file() or path.stat().st_size == 0:
                raise ImageFieldError(f"The resample finished but wrote no image at {path}. Job folder: {self.job_dir}")
        image = load_result_image(path, self.new_name, colorspace=self.colorspace, job_dir=self.job_dir,
                                  fitted_name=self.fitted_name, metrics=self.metrics, network=self.network)
        self.new_image_name = image.name
        show_image(context, image, self.space)
        return image


def load_result_image(path: Path, name: str, *, colorspace: str | None, job_dir: Path, fitted_name: str,
                      metrics: dict[str, float], network: str):
    """The backend's output file as a new packed Blender image; nothing is left behind on failure."""
    before = set(bpy.data.images)
    try:
        image = bpy.data.images.load(str(path), check_existing=False)
    except RuntimeError as exc:
        raise ImageFieldError(f"Blender cannot read the result image {path}: {exc}") from None
    try:
        image.name = name
        if colorspace and not image.is_float:
            image.colorspace_settings.name = colorspace
        if image.size[0] * image.size[1] == 0:
            raise ImageFieldError(f"The result image {path} has no pixels")
        image.pack()
        from .job_registry import record_job
        record_job(image, job_dir, "image", {"network": network, "width": int(image.size[0]),
                                             "height": int(image.size[1])})   # IMAGE_JOB_KEY and the job's name, task
        image[IMAGE_SOURCE_KEY] = fitted_name
        if network:
            image[IMAGE_NETWORK_KEY] = network
        if metrics:
            image[IMAGE_METRICS_KEY] = metrics
    except BaseException:
        for extra in set(bpy.data.images) - before:
            bpy.data.images.remove(extra)
        raise
    return image


def show_image(context, image, space=None) -> None:
    """Show ``image`` in the Image Editor the operator ran in (nothing in background mode)."""
    for candidate in (space, getattr(context, "space_data", None)):
        try:
            if candidate is not None and candidate.type == 'IMAGE_EDITOR':
                candidate.image = image
                return
        except (ReferenceError, AttributeError):
            continue


def jobs_in_flight() -> list["ImageJob"]:
    return [job for job in _ACTIVE if not job.finished]


def _jobs_root(settings: ImageFitSettings) -> Path:
    return Path(settings.jobs_root) if settings.jobs_root else conversion.default_jobs_root()


def start_fit(context, image, settings: ImageFitSettings | None = None, space=None) -> ImageJob:
    """Check ``image``, save its pixels into a new image job, start the backend."""
    if image is None:
        raise ImageFieldError(NO_IMAGE)
    # No "already running" refusal: a fit started while trainings run is queued (runner.py).
    settings = settings or settings_from_context(context)
    scale = settings.scale if settings.size is None else None
    try:
        config = settings.config()
        if image.type not in ('RENDER_RESULT', 'COMPOSITING'):  # check the output size before reading pixels
            jobs.validate_image_size(image.size[0], image.size[1], image.name)
            jobs.target_size(image.size[0], image.size[1], scale=scale, size=settings.size)
        pixels, is_float = read_pixels(image)
        height, width = pixels.shape[:2]
        jobs.target_size(width, height, scale=scale, size=settings.size)
    except jobs.InputError as exc:
        raise ImageFieldError(str(exc)) from None
    source = {"image": image.name, "filepath": image.filepath, "blend_file": bpy.data.filepath,
              "blender": bpy.app.version_string, "width": int(width), "height": int(height),
              "channels": int(pixels.shape[2]), "float": bool(is_float),
              "colorspace": image.colorspace_settings.name}
    jobs_root = _jobs_root(settings)
    try:
        job_dir = jobs.create_image_job(jobs_root, pixels, is_float=is_float, config=config, source=source)
    except jobs.InputError as exc:
        raise ImageFieldError(str(exc)) from None
    except OSError as exc:
        raise ImageFieldError(f"Cannot write the job folder under {jobs_root}: {exc}. Choose another jobs folder "
                              f"in {runner.PREFERENCES_HINT.removeprefix('Set it in ')}") from None
    conversion.apply_job_limit(context)
    backend = runner.BackendRunner(keep_running=conversion.keep_jobs_on_quit(context)).start(
        settings.python or None, job_dir)
    conversion.note_job("started", context, job_dir, "image", image.name)
    new_name = jobs.result_image_name(image.name, scale=settings.scale, size=settings.size)
    job = ImageJob("fit", image.name, job_dir, backend, new_name=new_name,
                   colorspace=None if is_float else image.colorspace_settings.name, fitted_name=image.name,
                   network=settings.network, space=space)
    _ACTIVE.append(job)
    return job


def start_resample(context, image, settings: ImageFitSettings | None = None, space=None) -> ImageJob:
    """Sample the field behind ``image`` (made by a fit) at the settings' scale or size."""
    if image is None:
        raise ImageFieldError(NO_FITTED_IMAGE)
    problem = resample_problem(image)
    if problem:
        raise ImageFieldError(problem)
    settings = settings or settings_from_context(context)   # never queued: it reads a trained field
    job_dir = Path(image[IMAGE_JOB_KEY])
    try:
        job = protocol.read_job(job_dir)
        job_source = job.get("source") or {}
        try:
            fit_output, result = jobs.image_result(job_dir)
        except jobs.JobError:
            # A job folder restored from a field packed in the .blend has no outputs/ (the
            # fitted image is packed in the .blend itself); the field is all resample needs.
            result = protocol.read_result(job_dir)
            relative = (result.get("outputs") or {}).get("image")
            if result.get("status") != "done" or not isinstance(relative, str):
                raise
            fit_output = Path(relative)
        width, height = int(job_source.get("width") or 0), int(job_source.get("height") or 0)
        if width < 1 or height < 1:  # a job not written by this add-on: the trained image's own size
            pixels, _info = imageio.read_image(protocol.resolve_inside(job_dir, job["inputs"]["image"]))
            height, width = pixels.shape[:2]
        size = jobs.target_size(width, height, scale=settings.scale if settings.size is None else None,
                                size=settings.size)
    except (jobs.InputError, jobs.JobError) as exc:
        raise ImageFieldError(str(exc)) from None
    except (OSError, ValueError, KeyError, protocol.ProtocolError) as exc:
        raise ImageFieldError(f"The job folder {job_dir} cannot be resampled: {exc}") from None
    fitted_name = str(image.get(IMAGE_SOURCE_KEY) or job_source.get("image") or image.name)
    extension = fit_output.suffix.lstrip(".") or "png"
    out_path = jobs.resample_output_path(job_dir, size, extension)
    args = jobs.resample_args(job_dir, out_path, scale=settings.scale if settings.size is None else None,
                              size=settings.size, device=settings.device)
    backend = runner.BackendRunner().start(settings.python or None, job_dir, args=args)
    new_name = jobs.result_image_name(fitted_name, scale=settings.scale, size=settings.size)
    metrics = {key: float(value) for key, value in (result.get("metrics") or {}).items()
               if isinstance(value, (int, float)) and not isinstance(value, bool)}
    colorspace = None if extension == "exr" else str(job_source.get("colorspace") or "sRGB")
    job = ImageJob("resample", image.name, job_dir, backend, new_name=new_name, colorspace=colorspace,
                   fitted_name=fitted_name, out_path=out_path, metrics=metrics,
                   network=str(image.get(IMAGE_NETWORK_KEY, "")), space=space)
    job.result = result
    _ACTIVE.append(job)
    return job


def run_fit(context, image, settings: ImageFitSettings | None = None, timeout: float | None = None,
            on_message: Callable[[dict[str, Any]], Any] | None = None):
    """Start, wait and load in one call. Returns the new image (None when cancelled)."""
    job = start_fit(context, image, settings)
    job.wait(timeout=timeout, on_message=on_message)
    return job.finish(context)


def run_resample(context, image, settings: ImageFitSettings | None = None, timeout: float | None = None,
                 on_message: Callable[[dict[str, Any]], Any] | None = None):
    job = start_resample(context, image, settings)
    job.wait(timeout=timeout, on_message=on_message)
    return job.finish(context)


def forget(job: ImageJob) -> None:
    if job in _ACTIVE:
        _ACTIVE.remove(job)


def stop_all_jobs() -> None:
    for job in list(_ACTIVE):
        if not job.runner.keep_running:   # a kept fit outlives Blender on purpose
            job.runner.cancel()
    _ACTIVE.clear()


# --------------------------------------------------------------------------- progress in the UI


def _state(context):
    return context.window_manager.neural_fields_image_state


def _redraw(context) -> None:
    for window in context.window_manager.windows:
        screen = window.screen
        if screen is None:
            continue
        for area in screen.areas:
            if area.type == 'IMAGE_EDITOR':
                for region in area.regions:
                    if region.type == 'UI':
                        region.tag_redraw()


def _show_progress(context, job: ImageJob | None = None) -> None:
    """The panel shows the lead job (the oldest one going), whichever job's operator asks: no flicker."""
    from . import operators
    in_flight = jobs_in_flight()
    lead = conversion.lead_job(in_flight)
    state = _state(context)
    state.running = lead is not None
    workspace = getattr(context, "workspace", None)
    if lead is None:
        if workspace is not None and not bpy.app.background:
            workspace.status_text_set(None)
        _redraw(context)
        return
    more = f" (+{len(in_flight) - 1} more)" if len(in_flight) > 1 else ""
    state.progress = lead.progress
    state.status_text = lead.status_text + more
    state.source_name = lead.source_name
    state.activity = "Fitting" if lead.kind == "fit" else "Resampling"
    if bpy.app.background:
        operators._print_progress(lead)
    elif workspace is not None:
        workspace.status_text_set(f"Neural Fields: {state.activity.lower()} {lead.source_name}: "
                                  f"{state.status_text}  (Esc to cancel)")
    _redraw(context)


def _clear_progress(context, job: ImageJob, status: str, message: str) -> None:
    state = _state(context)
    if conversion.lead_job(jobs_in_flight()) is None:
        state.progress = 1.0 if status == "done" else state.progress
        state.status_text = ""
    state.last_status = status
    state.last_message = message
    state.last_job_dir = str(job.job_dir)
    if job.result is not None:
        state.last_result_json = conversion.result_json_text(job.result)
    state.last_image = job.new_image_name or ""
    _show_progress(context)   # the next lead job, or nothing running


def finish_job(operator, context, job: ImageJob) -> set[str]:
    try:
        image = job.finish(context)
    except ImageFieldError as exc:
        message = str(exc)
        _clear_progress(context, job, "failed", message.splitlines()[0])
        operator.report({'ERROR'}, message)
        return {'CANCELLED'}
    if image is None:
        _clear_progress(context, job, "cancelled", "Cancelled")
        operator.report({'WARNING'}, f"{job.label} of '{job.source_name}' cancelled")
        return {'CANCELLED'}
    summary = "" if job.kind != "fit" else ", ".join(  # a resample has no metrics of its own
        f"{label} {value}" for label, value in conversion.metrics_summary({"metrics": job.metrics})
        if label in ("PSNR", "SSIM"))
    message = f"Created '{image.name}' ({image.size[0]}x{image.size[1]}" + (f", {summary})" if summary else ")")
    _clear_progress(context, job, "done", message)
    operator.report({'INFO'}, message)
    return {'FINISHED'}


class _ImageJobOperator:
    """Modal in the UI (a timer drains the backend's messages; Esc cancels), synchronous in background mode."""

    image: StringProperty(name="Image", description="The image to use (empty: the Image Editor's image)",
                          default="", options={'SKIP_SAVE'})

    missing_image = NO_IMAGE

    def start(self, context, image, space) -> ImageJob:
        raise NotImplementedError

    def _start(self, context):
        space = context.space_data if getattr(context, "space_data", None) is not None and \
            context.space_data.type == 'IMAGE_EDITOR' else None
        try:
            job = self.start(context, find_image(context, self.image, self.missing_image), space)
        except ImageFieldError as exc:
            self.report({'ERROR'}, str(exc))
            return None
        _show_progress(context, job)
        return job

    def execute(self, context):
        job = self._start(context)
        if job is None:
            return {'CANCELLED'}
        job.wait(on_message=lambda message: _show_progress(context, job))
        return finish_job(self, context, job)

    def invoke(self, context, event):
        if bpy.app.background or context.window is None:
            return self.execute(context)
        job = self._start(context)
        if job is None:
            return {'CANCELLED'}
        self._job = job
        self._timer = context.window_manager.event_timer_add(TIMER_INTERVAL, window=context.window)
        context.window_manager.modal_handler_add(self)
        return {'RUNNING_MODAL'}

    def modal(self, context, event):
        job = self._job
        if event.type == 'ESC' and event.value == 'PRESS':
            if job.finished or job.runner.cancel_requested:
                return {'PASS_THROUGH'}   # already cancelling: the press is for the next newest job
            job.cancel()
            _show_progress(context, job)
            return {'RUNNING_MODAL'}
        if event.type != 'TIMER':
            return {'PASS_THROUGH'}
        now = time.monotonic()   # every operator sees every timer's events: one tick per interval
        if now < getattr(self, "_next_tick", 0.0):
            return {'PASS_THROUGH'}
        self._next_tick = now + TIMER_INTERVAL * 0.8
        from .operators import drain
        if drain(lambda: job.poll(max_messages=MESSAGES_PER_TICK)) or job.finished:
            _show_progress(context, job)
        if not job.finished:
            return {'PASS_THROUGH'}
        context.window_manager.event_timer_remove(self._timer)
        self._timer = None
        return finish_job(self, context, job)

    def cancel(self, context):
        job = getattr(self, "_job", None)
        if job is not None:
            # A kept fit goes on (the Jobs panel re-attaches to it); a queued one has no process to keep.
            if not job.runner.keep_running or job.queued:
                job.cancel()
            forget(job)
            _show_progress(context)
        timer = getattr(self, "_timer", None)
        if timer is not None:
            context.window_manager.event_timer_remove(timer)
            self._timer = None


def _poll_running(cls) -> bool:
    return True   # a job started while others run is queued (fits) or runs beside them (resamples)


class NEURALFIELDS_OT_fit_image(_ImageJobOperator, bpy.types.Operator):
    """Train a neural field on this image and sample it at a new size (Scale or Size) as a new image"""

    bl_idname = "neural_fields.fit_image"
    bl_label = "Fit Neural Image"
    bl_options = {'REGISTER', 'UNDO'}

    @classmethod
    def poll(cls, context):
        if not _poll_running(cls):
            return False
        space = getattr(context, "space_data", None)
        if space is not None and space.type == 'IMAGE_EDITOR':  # in scripts the image is an operator property
            problem = fit_problem(space.image)
            if problem:
                cls.poll_message_set(problem)
                return False
        return True

    def start(self, context, image, space):
        return start_fit(context, image, space=space)


class NEURALFIELDS_OT_resample_image(_ImageJobOperator, bpy.types.Operator):
    """Sample the neural field behind this image again at another scale or size, without retraining"""

    bl_idname = "neural_fields.resample_image"
    bl_label = "Resample"
    bl_options = {'REGISTER', 'UNDO'}
    missing_image = NO_FITTED_IMAGE

    @classmethod
    def poll(cls, context):
        if not _poll_running(cls):
            return False
        space = getattr(context, "space_data", None)
        if space is not None and space.type == 'IMAGE_EDITOR':
            image = space.image
            if image is None or not image.get(IMAGE_JOB_KEY):
                cls.poll_message_set("Show an image made by Fit Neural Image to resample it")
                return False
        return True

    def start(self, context, image, space):
        return start_resample(context, image, space=space)


class NEURALFIELDS_OT_cancel_image(bpy.types.Operator):
    """Stop every running or queued neural image fit and resample"""

    bl_idname = "neural_fields.cancel_image"
    bl_label = "Cancel"

    @classmethod
    def poll(cls, context):
        if active_job() is None:
            cls.poll_message_set("No neural image job is running")
            return False
        return True

    def execute(self, context):
        for job in reversed(jobs_in_flight()):   # queued ones first: none starts meanwhile
            job.cancel()
        _show_progress(context)
        return {'FINISHED'}


class NEURALFIELDS_PT_image(bpy.types.Panel):
    bl_label = "Neural Image"
    bl_idname = "NEURALFIELDS_PT_image"
    bl_space_type = 'IMAGE_EDITOR'
    bl_region_type = 'UI'
    bl_category = "Neural Fields"

    def draw(self, context):
        layout = self.layout
        settings = context.scene.neural_fields_image
        state = context.window_manager.neural_fields_image_state
        image = editor_image(context)

        column = layout.column()
        column.use_property_split = True
        column.use_property_decorate = False
        column.prop(settings, "network")   # editable while jobs run: each job snapshots its settings
        column.prop(settings, "preset")
        column.prop(settings, "max_steps")
        column.prop(settings, "seconds")
        column.prop(settings, "seed")
        column.separator()
        column.prop(settings, "size_mode", expand=True)
        if settings.size_mode == 'SIZE':
            column.prop(settings, "width")
            column.prop(settings, "height")
        else:
            column.prop(settings, "scale")
            if image is not None and image.size[0] > 0:
                try:
                    width, height = jobs.target_size(image.size[0], image.size[1], scale=settings.scale)
                    column.label(text=f"{image.size[0]}x{image.size[1]} -> {width}x{height}")
                except jobs.InputError as exc:
                    column.label(text=str(exc), icon='ERROR')

        if state.running:
            box = layout.box()
            box.label(text=f"{state.activity or 'Fitting'} '{state.source_name}'", icon='TIME')
            if hasattr(box, "progress"):
                box.progress(factor=state.progress, type='BAR', text=state.status_text or "Working...")
            else:
                box.label(text=f"{state.progress * 100:.0f}%  {state.status_text}")
            box.operator("neural_fields.cancel_image", icon='CANCEL')
        row = layout.row()
        row.scale_y = 1.5
        row.operator("neural_fields.fit_image", icon='IMAGE_DATA',
                     text="Queue Fit Neural Image" if state.running else "Fit Neural Image")
        row = layout.row()
        row.operator("neural_fields.resample_image", icon='IMAGE_PLANE')

        if state.last_status:
            box = layout.box()
            icon = {'done': 'CHECKMARK', 'failed': 'ERROR', 'cancelled': 'CANCEL'}.get(state.last_status, 'INFO')
            box.label(text=state.last_message or state.last_status.capitalize(), icon=icon)
            result = None
            if state.last_result_json:
                try:
                    result = json.loads(state.last_result_json)
                except ValueError:
                    result = None
            grid = box.grid_flow(row_major=True, columns=2, even_columns=True)  # label, value per row
            for label, value in conversion.metrics_summary(result):
                grid.label(text=label)
                grid.label(text=value)


classes = (NEURALFIELDS_OT_fit_image, NEURALFIELDS_OT_resample_image, NEURALFIELDS_OT_cancel_image,
           NEURALFIELDS_PT_image)

_register_classes, _unregister_classes = bpy.utils.register_classes_factory(classes)


def register():
    _register_classes()


def unregister():
    stop_all_jobs()
    _unregister_classes()
