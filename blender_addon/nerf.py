"""NeRF in Blender: train from a capture, render any camera, bring back a coloured mesh.

Operators (3D View > sidebar > Neural Fields > NeRF):

- ``neural_fields.train_nerf``: the most recent capture folder (Capture > Render Capture) or
  a chosen dataset folder is checked (``coverage``: too few views, mixed sizes, unseen sides),
  copied into a new job and trained by the backend. Modal on a timer in the UI (progress,
  loss, PSNR and the latest preview image in the panel; Esc cancels); synchronous in
  background mode.
- ``neural_fields.render_nerf_view``: the scene's active camera at the scene's render
  resolution -> images ``<job>_rgb``, ``<job>_depth`` (z-depth in world units, Non-Color),
  ``<job>_alpha`` (and ``<job>_normal``), shown in an open Image Editor.
- ``neural_fields.render_nerf_animation``: the active camera over frame_start..frame_end ->
  an image sequence ``<job>_animation`` (source SEQUENCE) in a folder of the job.
- ``neural_fields.extract_nerf_mesh``: marching cubes on the density, vertex colours from the
  field, a material showing them, in world coordinates (on top of what was captured).

Every failure is reported as an ERROR before anything is added to the file. The bpy-free
half (dataset checks, job folders, messages, command lines) is nerf_jobs.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import bpy
import numpy as np
from bpy.props import BoolProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty, StringProperty

from . import conversion, nerf_jobs, runner
from ._backend import cameras, plyio, protocol
from .camera_io import camera_model_from_object, camera_to_world
from .nerf_jobs import NerfInputError, NerfJobError

CameraError = cameras.CameraError

TIMER_INTERVAL = 0.1
MESSAGES_PER_TICK = 50
PREVIEW_IMAGE = "NeRF Preview"
IMAGE_KEY = "neural_fields_nerf"          # custom property on the images and objects this module makes
JOB_KEY = "neural_fields_job"
CAPTURE_DIR_KEY = "neural_fields_capture_dir"   # on a capture rig collection, when capture.py records it
COLOR_ATTRIBUTE = "Col"

_ACTIVE: list["BackendTask"] = []


class NerfError(RuntimeError):
    """A request that cannot start or did not finish; the text is for the artist."""


# --------------------------------------------------------------------------- settings and state


class NeuralFieldsNerfSettings(bpy.types.PropertyGroup):
    dataset_dir: StringProperty(
        name="Dataset", subtype='DIR_PATH', default="",
        description="Folder with transforms.json and its images. Empty: the most recent capture (Render Capture)")
    preset: EnumProperty(name="Preset", default='fast', description="Model size and training length", items=[
        ('fast', "Fast", "A quick preview"), ('balanced', "Balanced", "Good detail in reasonable time"),
        ('quality', "Quality", "The most detail: the longest training")])
    model: EnumProperty(name="Model", default='ngp', description="The radiance field", items=[
        ('ngp', "Hash Grid", "Multiresolution hash grid, occupancy grid, small MLPs (fast)"),
        ('reference', "Reference", "The original NeRF: positional encoding, 8x256 MLP, coarse/fine sampling (slow)")])
    seconds: FloatProperty(name="Time Budget", default=0.0, min=0.0, soft_max=3600.0, unit='TIME_ABSOLUTE',
                           description="Training time in seconds. 0: the preset decides")
    max_steps: IntProperty(name="Steps", default=0, min=0, description="Training steps. 0: the preset decides")
    seed: IntProperty(name="Seed", default=0, min=0, description="Random seed (same seed, same result)")
    background: EnumProperty(name="Background", default='random', description="What transparent pixels are trained as",
                             items=[('random', "Random", "A random colour per ray: the field learns clean alpha"),
                                    ('white', "White", "Transparent pixels are white"),
                                    ('black', "Black", "Transparent pixels are black")])
    preview_seconds: FloatProperty(name="Preview Every", default=10.0, min=1.0, unit='TIME_ABSOLUTE',
                                   description="Seconds between preview images while training")
    render_background: EnumProperty(name="Render Background", default='white',
                                    description="Background of rendered RGB images (alpha is a separate image)",
                                    items=[('white', "White", ""), ('black', "Black", "")])
    mesh_resolution: IntProperty(name="Mesh Resolution", default=256, min=16, max=2048, soft_min=64, soft_max=512,
                                 description="Marching-cubes grid resolution of Extract Mesh")
    mesh_threshold: FloatProperty(name="Density Threshold", default=0.0, min=0.0, soft_max=100.0,
                                  description="Density at which the surface is extracted. 0: the backend's default")
    job_dir: StringProperty(name="Trained Job", subtype='DIR_PATH', default="",
                            description="The trained NeRF that Render and Extract use (set by Train NeRF)")


class NeuralFieldsNerfState(bpy.types.PropertyGroup):
    """What the panel shows; written on the main thread only."""

    running: BoolProperty(default=False)
    task: StringProperty(default="")
    progress: FloatProperty(default=0.0, min=0.0, max=1.0, subtype='FACTOR')
    status_text: StringProperty(default="")
    loss: FloatProperty(default=-1.0)
    psnr: FloatProperty(default=-1.0)
    preview_image: StringProperty(default="")
    preview_text: StringProperty(default="")
    last_status: StringProperty(default="")
    last_message: StringProperty(default="")
    last_warnings: StringProperty(default="")
    last_result_json: StringProperty(default="")


def _settings(context):
    return context.scene.neural_fields_nerf


def _state(context):
    return context.window_manager.neural_fields_nerf_state


def _backend_settings(context) -> tuple[str, str, Path]:
    """(python, device, jobs root) from the add-on preferences (conversion.py's reading of them)."""
    settings = conversion.settings_from_context(context)
    root = Path(settings.jobs_root) if settings.jobs_root else conversion.default_jobs_root()
    return settings.python or "", settings.device or "auto", root


def active_task() -> "BackendTask | None":
    for task in _ACTIVE:
        if not task.finished:
            return task
    return None


# --------------------------------------------------------------------------- images


def load_image(name: str, path: Path, *, non_color: bool = False, sequence: bool = False):
    """``name`` in bpy.data.images showing the file at ``path``; one this module made before is
    reused (re-pointed and reloaded), so repeated renders do not pile up datablocks."""
    image = bpy.data.images.get(name)
    if image is not None and image.get(IMAGE_KEY) and image.source in {'FILE', 'SEQUENCE'}:
        image.filepath = str(path)
        image.source = 'SEQUENCE' if sequence else 'FILE'
        image.reload()
    else:
        image = bpy.data.images.load(str(path), check_existing=False)
        image.name = name
        image[IMAGE_KEY] = True
        if sequence:
            image.source = 'SEQUENCE'
    if non_color:
        image.colorspace_settings.name = 'Non-Color'
    return image


def show_in_image_editor(context, image, *, sequence_frames: tuple[int, int] | None = None,
                         only_if_free: bool = False) -> bool:
    """Show ``image`` in the first open Image Editor (True when there was one). ``only_if_free``:
    only in an editor that shows nothing or this image already (the preview never replaces
    what the artist is looking at)."""
    window_manager = getattr(context, "window_manager", None)
    if window_manager is None:
        return False
    for window in window_manager.windows:
        screen = window.screen
        for area in (screen.areas if screen else ()):
            if area.type != 'IMAGE_EDITOR':
                continue
            space = area.spaces.active
            if only_if_free and space.image is not None and space.image != image:
                continue
            space.image = image
            if sequence_frames is not None:
                first, count = sequence_frames
                user = space.image_user
                user.frame_duration = count
                user.frame_start = first
                user.frame_offset = first - 1
                user.use_auto_refresh = True
            area.tag_redraw()
            return True
    return False


def _redraw(context) -> None:
    window_manager = getattr(context, "window_manager", None)
    for window in (window_manager.windows if window_manager else ()):
        for area in (window.screen.areas if window.screen else ()):
            if area.type in {'VIEW_3D', 'IMAGE_EDITOR'}:
                area.tag_redraw()


# --------------------------------------------------------------------------- backend tasks


class BackendTask(conversion.RunnerStatus):
    """One backend run started by an operator (train, render, extract) and what to do at its end."""

    kind = "task"
    title = "Working"

    def __init__(self, job_dir: Path, backend: runner.BackendRunner, label: str) -> None:
        self.job_dir = Path(job_dir)
        self.runner = backend
        self.label = label
        self.status_text = "Starting the backend..."
        self.warnings: list[str] = []
        self.step = 0
        self.total = 0

    @property
    def fraction(self) -> float:
        if self.finished:
            return 1.0
        return min(1.0, self.step / self.total) if self.total else 0.0

    def handle(self, context, message) -> None:
        kind = message["type"]
        if kind == "progress":
            total = int(message.get("total") or 0)
            if total > 0:
                self.step, self.total = int(message.get("step") or 0), total
                self.status_text = f"{self.title}: {self.step}/{self.total}"
        elif kind == "warning":
            self.warnings.append(str(message.get("message")))
            print(f"Neural Fields: warning: {message.get('message')}")
        elif kind == "done":
            self.status_text = {"done": "Finishing...", "failed": "Failed", "cancelled": "Cancelled"}.get(
                message["status"], str(message["status"]))

    def poll(self, context, max_messages: int = MESSAGES_PER_TICK) -> bool:
        messages = self.runner.poll(max_messages=max_messages)
        for message in messages:
            self.handle(context, message)
        return bool(messages)

    def cancel(self) -> None:
        if not self.finished:
            self.status_text = "Cancelling..."
            self.runner.cancel()

    def failure_text(self) -> str:
        self.runner.wait_exit(timeout=2.0)
        text = self.runner.error_message or (
            runner.missing_module_hint(self.runner.python, runner.log_tail_text(self.job_dir))
            or "The backend failed without saying why.")
        if str(self.job_dir) not in text:
            text += f"\nJob folder: {self.job_dir}"
        return text

    def finish(self, context) -> tuple[str, str]:
        """After ``done``: bring the result in. Returns (report level, message); raises NerfError."""
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        if self.kind == "train":
            conversion.note_job("finished", context, self.job_dir)
        status = self.runner.status
        if status == "cancelled":
            return 'WARNING', f"{self.title} cancelled"
        if status != "done":
            raise NerfError(f"{self.title} failed: {self.failure_text()}")
        return self.import_result(context)

    def import_result(self, context) -> tuple[str, str]:
        raise NotImplementedError


class TrainTask(BackendTask):
    kind = "train"
    title = "NeRF training"

    def __init__(self, job_dir, backend, label) -> None:
        super().__init__(job_dir, backend, label)
        self.progress = nerf_jobs.TrainProgress(job_dir=Path(job_dir))
        self._shown_preview = 0
        self._last_print = 0.0
        self._last_text = ""

    @property
    def fraction(self) -> float:
        return 1.0 if self.finished else self.progress.fraction

    def handle(self, context, message) -> None:
        super().handle(context, message)
        self.progress.handle(message)
        self.status_text = self.progress.status_text
        # The panel has one preview: it shows the lead training's (as its progress shows the lead job),
        # not whichever of several trainings sent the latest.
        if (message["type"] == "preview" and self.progress.preview_serial != self._shown_preview
                and previewed_training() is self):
            self._shown_preview = self.progress.preview_serial
            show_preview(context, self.progress)
        if (bpy.app.background and message["type"] == "progress" and self.status_text != self._last_text
                and time.monotonic() - self._last_print > 5.0):   # no status bar: print, now and then
            self._last_print, self._last_text = time.monotonic(), self.status_text
            print(f"Neural Fields: NeRF: {self.status_text}", flush=True)

    def import_result(self, context) -> tuple[str, str]:
        try:
            result = nerf_jobs.read_train_result(self.job_dir)
        except NerfJobError as exc:
            raise NerfError(str(exc)) from None
        preview = (result.get("outputs") or {}).get("preview")
        if isinstance(preview, str):
            try:
                path = protocol.resolve_inside(self.job_dir, preview)
            except protocol.ProtocolError:
                path = None
            if path is not None and path.is_file():
                self.progress.preview_path = path
                show_preview(context, self.progress)
        _settings(context).job_dir = str(self.job_dir)
        _state(context).last_result_json = json.dumps(result, default=str)
        rows = nerf_jobs.metrics_summary(result)
        summary = ", ".join(f"{label} {value}" for label, value in rows[:2])
        return 'INFO', f"NeRF trained{' (' + summary + ')' if summary else ''}: {self.job_dir.name}"


def show_preview(context, progress: nerf_jobs.TrainProgress) -> None:
    """Load (or reload) the latest preview into the "NeRF Preview" image and the panel's icon."""
    path = progress.preview_path
    if path is None or not Path(path).is_file():
        return
    try:
        image = load_image(PREVIEW_IMAGE, Path(path))
        image.preview_ensure()
        if image.preview is not None:
            image.preview.reload()
    except RuntimeError as exc:  # a preview that cannot be read is not worth stopping for
        print(f"Neural Fields: cannot load the preview {path}: {exc}")
        return
    show_in_image_editor(context, image, only_if_free=True)
    state = _state(context)
    state.preview_image = image.name
    parts = []
    if progress.preview_step is not None:
        parts.append(f"step {progress.preview_step}")
    if progress.preview_psnr is not None:
        parts.append(f"PSNR {progress.preview_psnr:.2f} dB")
    state.preview_text = "Preview: " + ", ".join(parts) if parts else "Preview"
    _redraw(context)


class RenderTask(BackendTask):
    kind = "render"
    title = "NeRF render"

    def __init__(self, job_dir, backend, label, render_dir: Path, animation: tuple[int, int] | None = None) -> None:
        super().__init__(job_dir, backend, label)
        self.render_dir = Path(render_dir)
        self.animation = animation     # (first frame, count) for an image sequence
        if animation:
            self.title = "NeRF animation render"

    def import_result(self, context) -> tuple[str, str]:
        try:
            frames = nerf_jobs.read_render(self.render_dir)
        except NerfJobError as exc:
            raise NerfError(str(exc)) from None
        if self.animation is not None:
            first, count = self.animation
            if len(frames) != count or any(frame.rgb is None for frame in frames):
                raise NerfError(f"The render wrote {len(frames)} frames, expected {count}, in {self.render_dir}")
            image = load_image(f"{self.label}_animation", frames[0].rgb, sequence=True)
            image[JOB_KEY] = str(self.job_dir)
            show_in_image_editor(context, image, sequence_frames=(first, count))
            return 'INFO', f"Rendered {count} frames into '{image.name}' ({self.render_dir})"
        frame = frames[0]
        if frame.rgb is None:
            raise NerfError(f"The render wrote no RGB image in {self.render_dir}")
        made = []
        rgb = load_image(f"{self.label}_rgb", frame.rgb)
        made.append(rgb.name)
        for key, suffix in (("depth", "_depth"), ("alpha", "_alpha"), ("normal", "_normal")):
            path = getattr(frame, key)
            if path is not None:
                made.append(load_image(f"{self.label}{suffix}", path, non_color=key != "normal").name)
        from .job_registry import record_job
        for name in made:   # JOB_KEY and the job's name, task, what was rendered
            record_job(bpy.data.images[name], self.job_dir, "nerf", {"render": self.render_dir.name})
        show_in_image_editor(context, rgb)
        return 'INFO', f"Rendered {', '.join(made)}"


class ExtractTask(BackendTask):
    kind = "extract"
    title = "NeRF mesh extraction"

    def __init__(self, job_dir, backend, label, mesh_path: Path) -> None:
        super().__init__(job_dir, backend, label)
        self.mesh_path = Path(mesh_path)

    def import_result(self, context) -> tuple[str, str]:
        try:
            vertices, faces, colors = plyio.read_ply(self.mesh_path)
        except (OSError, plyio.PlyError) as exc:
            raise NerfError(f"The extracted mesh cannot be read: {exc}") from None
        if len(faces) == 0:
            raise NerfError("The extracted mesh is empty: lower the density threshold, or train longer")
        if not np.all(np.isfinite(vertices)):
            raise NerfError(f"The extracted mesh has non-finite vertices ({self.mesh_path})")
        obj = build_colored_mesh_object(context, f"{self.label}_nerf", vertices, faces, colors)
        from .job_registry import record_job
        record_job(obj, self.job_dir, "nerf", getattr(self, "settings", {}))   # JOB_KEY and name, task, settings
        return 'INFO', f"Created '{obj.name}' ({len(faces)} triangles)"


def build_colored_mesh_object(context, name: str, vertices, faces, colors):
    """A mesh object in world coordinates with a vertex colour attribute and a material that shows it."""
    vertices = np.ascontiguousarray(vertices, dtype=np.float32).reshape(-1, 3)
    faces = np.ascontiguousarray(faces, dtype=np.int32).reshape(-1, 3)
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(len(vertices))
    mesh.vertices.foreach_set("co", vertices.ravel())
    mesh.loops.add(faces.size)
    mesh.loops.foreach_set("vertex_index", faces.ravel())
    mesh.polygons.add(len(faces))
    mesh.polygons.foreach_set("loop_start", np.arange(0, faces.size, 3, dtype=np.int32))
    mesh.update(calc_edges=True)
    if colors is not None and len(colors) == len(vertices):
        rgba = np.ones((len(vertices), 4), np.float32)
        rgba[:, :3] = np.asarray(colors, np.float32)[:, :3] / 255.0
        attribute = mesh.color_attributes.new(COLOR_ATTRIBUTE, 'BYTE_COLOR', 'POINT')
        attribute.data.foreach_set("color_srgb", rgba.ravel())   # the field's colours are sRGB
        mesh.color_attributes.active_color = attribute
        mesh.color_attributes.render_color_index = mesh.color_attributes.active_color_index
    material = vertex_color_material(f"{name}_vertex_colors")
    mesh.materials.append(material)
    obj = bpy.data.objects.new(name, mesh)
    obj[IMAGE_KEY] = True
    collection = getattr(context, "collection", None) or context.scene.collection
    collection.objects.link(obj)
    for selected in list(context.selected_objects):
        selected.select_set(False)
    try:
        obj.select_set(True)
        context.view_layer.objects.active = obj
    except RuntimeError:
        pass
    return obj


MIX_NODE_NAME = "As Seen / Relit"


def vertex_color_material(name: str):
    """A material that shows the vertex colours as the field saw them.

    The colours are radiance: the capture's lighting is already in them, so a lit material
    would light them a second time (darker in shadow, brighter facing a lamp). An Emission
    shader shows them as they are; a Mix Shader (named ``MIX_NODE_NAME``, factor 1) blends
    it with a Principled BSDF whose Base Color is the same colours, so factor 0 relights the
    mesh with the scene's lamps instead.
    """
    material = bpy.data.materials.new(name)
    material.use_nodes = True
    nodes, links = material.node_tree.nodes, material.node_tree.links
    principled = next((node for node in nodes if node.type == 'BSDF_PRINCIPLED'), None) or nodes.new(
        "ShaderNodeBsdfPrincipled")
    output = next((node for node in nodes if node.type == 'OUTPUT_MATERIAL'), None) or nodes.new(
        "ShaderNodeOutputMaterial")
    attribute = nodes.new("ShaderNodeVertexColor")
    attribute.layer_name = COLOR_ATTRIBUTE
    attribute.location = (principled.location.x - 300, principled.location.y)
    links.new(attribute.outputs["Color"], principled.inputs["Base Color"])
    principled.inputs["Roughness"].default_value = 0.8
    emission = nodes.new("ShaderNodeEmission")
    emission.location = (principled.location.x, principled.location.y + 200)
    links.new(attribute.outputs["Color"], emission.inputs["Color"])
    emission.inputs["Strength"].default_value = 1.0
    mix = nodes.new("ShaderNodeMixShader")
    mix.name = mix.label = MIX_NODE_NAME
    mix.location = (output.location.x - 200, output.location.y)
    mix.inputs[0].default_value = 1.0                  # 1: the Emission (as seen); 0: the Principled BSDF (relit)
    links.new(principled.outputs["BSDF"], mix.inputs[1])
    links.new(emission.outputs["Emission"], mix.inputs[2])
    links.new(mix.outputs["Shader"], output.inputs["Surface"])
    return material


# --------------------------------------------------------------------------- starting tasks


def capture_folder(context) -> str:
    """The most recent capture folder: recorded on the newest capture rig, else Render Capture's default."""
    from . import capture
    for rig in capture.rigs():
        recorded = rig.get(CAPTURE_DIR_KEY)
        if recorded:
            return bpy.path.abspath(str(recorded))
    return bpy.path.abspath(capture.default_directory())


def dataset_folder(context, override: str = "") -> str:
    chosen = override or _settings(context).dataset_dir
    return bpy.path.abspath(chosen) if chosen else capture_folder(context)


def tasks_in_flight() -> list["BackendTask"]:
    return [task for task in _ACTIVE if not task.finished]


def previewed_training() -> "TrainTask | None":
    """The training whose previews the panel shows: the oldest one running (not queued)."""
    return next((task for task in tasks_in_flight() if isinstance(task, TrainTask) and not task.runner.is_queued),
                None)


def start_training(context, dataset_override: str = "") -> tuple[TrainTask, list[str]]:
    """Check the dataset, write the job, start the backend (or queue it behind the running
    trainings: runner.py). Returns the task and the coverage warnings."""
    settings = _settings(context)
    explicit = bool(dataset_override or settings.dataset_dir)
    folder = dataset_folder(context, dataset_override)
    if not explicit and nerf_jobs.coverage.training_transforms(folder) is None:
        raise NerfError(f"No capture to train on (looked in {folder}): render a capture first (Capture > Make "
                        "Capture Rig, then Render Capture) or choose a dataset folder in the NeRF panel")
    try:
        folder = nerf_jobs.find_dataset(folder)
        report = nerf_jobs.check_dataset(folder)
    except NerfInputError as exc:
        raise NerfError(str(exc)) from None
    if report.errors:
        raise NerfError("Cannot train a NeRF on this dataset: " + " ".join(report.errors) + f" (dataset: {folder})")
    python, device, jobs_root = _backend_settings(context)
    config = nerf_jobs.NerfSettings(
        preset=settings.preset, model=settings.model, device=device, seed=settings.seed, seconds=settings.seconds,
        max_steps=settings.max_steps, background=settings.background, preview_seconds=settings.preview_seconds)
    try:
        job_dir = nerf_jobs.create_train_job(
            jobs_root, folder, config.config(),
            source={"label": folder.name, "blend_file": bpy.data.filepath, "blender": bpy.app.version_string,
                    "views": report.stats.get("views")})
    except NerfInputError as exc:
        raise NerfError(str(exc)) from None
    except OSError as exc:
        raise NerfError(f"Cannot write the job folder under {jobs_root}: {exc}") from None
    conversion.apply_job_limit(context)
    backend = runner.BackendRunner(keep_running=conversion.keep_jobs_on_quit(context)).start(python or None, job_dir)
    task = TrainTask(job_dir, backend, nerf_jobs.job_label(job_dir))
    _ACTIVE.append(task)
    conversion.note_job("started", context, job_dir, "nerf", task.label)
    return task, list(report.warnings)


def trained_job(context) -> Path:
    job_dir = bpy.path.abspath(_settings(context).job_dir) if _settings(context).job_dir else ""
    problem = nerf_jobs.trained_job_problem(job_dir)
    if problem:
        raise NerfError(problem)
    return Path(job_dir)


def active_camera(context):
    camera = context.scene.camera
    if camera is None:
        raise NerfError("The scene has no active camera: add a camera and make it active (Ctrl Numpad 0)")
    return camera


def camera_frame(camera, scene):
    """(c2w, Intrinsics) of a camera at the scene's resolution; NerfError for cameras that cannot be used."""
    try:
        model = camera_model_from_object(camera, scene)
        return camera_to_world(camera), cameras.intrinsics_from_camera(model)
    except CameraError as exc:
        raise NerfError(str(exc)) from None


def start_render(context, animation: bool = False) -> RenderTask:
    """Never queued (a render reads a trained field: runner.py); may run beside trainings."""
    scene = context.scene
    settings = _settings(context)
    active_camera(context)
    requests = []
    if animation:
        first, last, step = scene.frame_start, scene.frame_end, max(1, scene.frame_step)
        if first < 0:
            raise NerfError(f"The animation starts at frame {first}: image sequences need frames from 0 up")
        if last < first:
            raise NerfError(f"The frame range {first}..{last} is empty")
        numbers = list(range(first, last + 1, step))
        current = scene.frame_current, scene.frame_subframe
        try:
            for number in numbers:
                scene.frame_set(number)
                camera = active_camera(context)
                c2w, intr = camera_frame(camera, scene)
                requests.append((f"frame_{number:04d}", c2w, intr))
        finally:
            scene.frame_set(current[0], subframe=current[1])
    else:
        camera = active_camera(context)
        c2w, intr = camera_frame(camera, scene)
        requests.append((camera.name, c2w, intr))
    job_dir = trained_job(context)
    python, device, _root = _backend_settings(context)
    try:
        render_dir = nerf_jobs.new_render_dir(job_dir, "animation" if animation else "view")
        cameras_json = nerf_jobs.write_cameras(render_dir / "cameras.json", requests)
        outputs = ("rgb", "alpha") if animation else nerf_jobs.RENDER_OUTPUTS   # a sequence shows RGB
        args = nerf_jobs.render_args(job_dir, cameras_json, render_dir, outputs=outputs,
                                     background=settings.render_background, device=device)
    except (OSError, NerfInputError) as exc:
        raise NerfError(f"Cannot prepare the render: {exc}") from None
    backend = runner.BackendRunner().start(python or None, render_dir, args=args)
    task = RenderTask(job_dir, backend, nerf_jobs.job_label(job_dir), render_dir,
                      animation=(numbers[0], len(numbers)) if animation else None)
    _ACTIVE.append(task)
    return task


def start_extract(context, resolution: int = 0, threshold: float = 0.0) -> ExtractTask:
    settings = _settings(context)
    job_dir = trained_job(context)
    python, device, _root = _backend_settings(context)
    resolution = resolution or settings.mesh_resolution
    threshold = threshold or settings.mesh_threshold
    mesh_path = job_dir / protocol.OUTPUTS_DIR / f"mesh-{time.strftime('%Y%m%d-%H%M%S')}-{resolution}.ply"
    try:
        args = nerf_jobs.extract_args(job_dir, mesh_path, resolution=resolution, threshold=threshold,
                                      device=device)
    except NerfInputError as exc:
        raise NerfError(str(exc)) from None
    backend = runner.BackendRunner().start(python or None, job_dir, args=args)
    task = ExtractTask(job_dir, backend, nerf_jobs.job_label(job_dir), mesh_path)
    task.settings = {"resolution": int(resolution), "threshold": float(threshold) if threshold else None}
    _ACTIVE.append(task)
    return task


# --------------------------------------------------------------------------- operators


class _BackendOperator:
    """execute(): start, wait, finish (background mode); invoke(): the same, modal on a timer.

    Several may be in flight (a training queued behind others, a render beside a training);
    the panel's progress state always shows the oldest one going, whoever writes it (no flicker)."""

    def start(self, context) -> BackendTask:
        raise NotImplementedError

    def _begin(self, context) -> BackendTask | None:
        state = _state(context)
        state.last_warnings = ""
        try:
            task = self.start(context)
        except NerfError as exc:
            self.report({'ERROR'}, str(exc))
            state.last_status, state.last_message = "failed", str(exc).splitlines()[0]
            return None
        for warning in getattr(self, "_warnings", []):
            self.report({'WARNING'}, warning)
        state.last_warnings = "\n".join(getattr(self, "_warnings", []))
        state.last_status = state.last_message = ""
        if task.runner.is_queued:
            self.report({'INFO'}, task.status_text)
        self._update(context, task)
        return task

    def _update(self, context, task: BackendTask | None = None) -> None:
        """Show the lead task (the oldest one going), whichever task's operator asks: no flicker."""
        in_flight = tasks_in_flight()
        lead = conversion.lead_job(in_flight)
        state = _state(context)
        state.running = lead is not None
        state.task = lead.kind if lead is not None else ""
        if lead is not None:
            more = f" (+{len(in_flight) - 1} more)" if len(in_flight) > 1 else ""
            state.progress = lead.fraction
            state.status_text = lead.status_text + more
            trains = isinstance(lead, TrainTask)
            state.loss = lead.progress.loss if trains and lead.progress.loss is not None else -1.0
            state.psnr = lead.progress.psnr if trains and lead.progress.psnr is not None else -1.0
        workspace = getattr(context, "workspace", None)
        if workspace is not None and not bpy.app.background:
            workspace.status_text_set(None if lead is None else f"Neural Fields: {state.status_text}  (Esc to cancel)")
        _redraw(context)

    def _end(self, context, task: BackendTask) -> set[str]:
        state = _state(context)
        self._update(context)
        try:
            level, message = task.finish(context)
        except NerfError as exc:
            state.last_status, state.last_message = "failed", str(exc).splitlines()[0]
            self.report({'ERROR'}, str(exc))
            _redraw(context)
            return {'CANCELLED'}
        for warning in task.warnings:
            if warning not in getattr(self, "_warnings", ()):   # coverage warnings were reported at the start
                self.report({'WARNING'}, warning)
        state.last_status = "cancelled" if level == 'WARNING' else "done"
        state.last_message = message
        state.progress = 1.0 if level == 'INFO' else state.progress
        self.report({level}, message)
        _redraw(context)
        return {'FINISHED'} if level == 'INFO' else {'CANCELLED'}

    def execute(self, context):
        task = self._begin(context)
        if task is None:
            return {'CANCELLED'}
        runner.run_to_completion(task.runner, on_message=lambda message: (task.handle(context, message),
                                                                          self._update(context, task)))
        return self._end(context, task)

    def invoke(self, context, event):
        if bpy.app.background or context.window is None:
            return self.execute(context)
        task = self._begin(context)
        if task is None:
            return {'CANCELLED'}
        self._task = task
        self._next_tick = 0.0
        window_manager = context.window_manager
        self._timer = window_manager.event_timer_add(TIMER_INTERVAL, window=context.window)
        window_manager.modal_handler_add(self)
        return {'RUNNING_MODAL'}

    def modal(self, context, event):
        task = self._task
        if event.type == 'ESC' and event.value == 'PRESS':
            if task.finished or task.runner.cancel_requested:
                return {'PASS_THROUGH'}   # already cancelling: the press is for the next newest job
            task.cancel()
            self._update(context, task)
            return {'RUNNING_MODAL'}
        if event.type != 'TIMER':
            return {'PASS_THROUGH'}
        now = time.monotonic()   # every operator sees every timer's events: one tick per interval
        if now < getattr(self, "_next_tick", 0.0):
            return {'PASS_THROUGH'}
        self._next_tick = now + TIMER_INTERVAL * 0.8
        from .operators import drain
        if drain(lambda: task.poll(context)) or task.finished:
            self._update(context, task)
        if not task.finished:
            return {'PASS_THROUGH'}
        if self._timer is not None:
            context.window_manager.event_timer_remove(self._timer)
            self._timer = None
        return self._end(context, task)

    def cancel(self, context):
        task = getattr(self, "_task", None)
        if task is not None:
            # A kept training goes on (the Jobs panel re-attaches to it); a queued one has no process to keep.
            if not task.runner.keep_running or task.runner.is_queued:
                task.cancel()
            if task in _ACTIVE:
                _ACTIVE.remove(task)
            self._update(context)
        timer = getattr(self, "_timer", None)
        if timer is not None:
            context.window_manager.event_timer_remove(timer)
            self._timer = None


class NEURALFIELDS_OT_train_nerf(_BackendOperator, bpy.types.Operator):
    """Train a NeRF on the most recent capture (or the chosen dataset folder); Esc cancels"""

    bl_idname = "neural_fields.train_nerf"
    bl_label = "Train NeRF"
    bl_options = {'REGISTER'}

    dataset_dir: StringProperty(name="Dataset", subtype='DIR_PATH', default="", options={'SKIP_SAVE'},
                                description="Dataset folder. Empty: the panel's, else the most recent capture")

    def start(self, context):
        task, self._warnings = start_training(context, self.dataset_dir)
        return task


class NEURALFIELDS_OT_render_nerf_view(_BackendOperator, bpy.types.Operator):
    """Render the trained NeRF through the scene's active camera at the render resolution (RGB, depth, alpha)"""

    bl_idname = "neural_fields.render_nerf_view"
    bl_label = "Render from Active Camera"
    bl_options = {'REGISTER'}

    def start(self, context):
        return start_render(context, animation=False)


class NEURALFIELDS_OT_render_nerf_animation(_BackendOperator, bpy.types.Operator):
    """Render the trained NeRF through the active camera for every frame of the scene's range, as an image sequence"""

    bl_idname = "neural_fields.render_nerf_animation"
    bl_label = "Render Camera Animation"
    bl_options = {'REGISTER'}

    def start(self, context):
        return start_render(context, animation=True)


class NEURALFIELDS_OT_extract_nerf_mesh(_BackendOperator, bpy.types.Operator):
    """Extract a coloured mesh from the trained NeRF's density, in world coordinates"""

    bl_idname = "neural_fields.extract_nerf_mesh"
    bl_label = "Extract Mesh"
    bl_options = {'REGISTER', 'UNDO'}

    resolution: IntProperty(name="Resolution", default=0, min=0, max=2048, options={'SKIP_SAVE'},
                            description="Marching-cubes grid resolution. 0: the panel's")
    threshold: FloatProperty(name="Density Threshold", default=0.0, min=0.0, options={'SKIP_SAVE'},
                             description="Density of the surface. 0: the panel's (or the backend's default)")

    def start(self, context):
        return start_extract(context, self.resolution, self.threshold)


class NEURALFIELDS_OT_cancel_nerf(bpy.types.Operator):
    """Stop every running or queued NeRF job (training, render, extraction)"""

    bl_idname = "neural_fields.cancel_nerf"
    bl_label = "Cancel"

    @classmethod
    def poll(cls, context):
        return active_task() is not None

    def execute(self, context):
        for task in reversed(tasks_in_flight()):   # queued ones first: none starts meanwhile
            task.cancel()
        return {'FINISHED'}


# --------------------------------------------------------------------------- panel


class NEURALFIELDS_PT_nerf(bpy.types.Panel):
    bl_label = "NeRF"
    bl_idname = "NEURALFIELDS_PT_nerf"
    bl_space_type = 'VIEW_3D'
    bl_region_type = 'UI'
    bl_category = "Neural Fields"
    bl_parent_id = "NEURALFIELDS_PT_main"
    bl_options = {'DEFAULT_CLOSED'}

    def draw(self, context):
        layout = self.layout
        settings = _settings(context)
        state = _state(context)

        column = layout.column()
        column.use_property_split = True
        column.use_property_decorate = False
        column.prop(settings, "dataset_dir")   # editable while jobs run: each job snapshots its settings
        if not settings.dataset_dir:
            column.label(text="Using the most recent capture", icon='INFO')
        column.prop(settings, "preset")
        column.prop(settings, "model")
        column.prop(settings, "seconds")
        column.prop(settings, "background")

        if state.running:
            box = layout.box()
            box.label(text=state.status_text or "Working...", icon='TIME')
            box.progress(factor=state.progress, type='BAR',
                         text=f"{state.progress * 100:.0f}%")
            if state.task == "train" and (state.loss >= 0 or state.psnr >= 0):
                row = box.row()
                row.label(text=f"Loss {state.loss:.4g}" if state.loss >= 0 else "Loss -")
                row.label(text=f"PSNR {state.psnr:.2f} dB" if state.psnr >= 0 else "PSNR -")
            box.operator(NEURALFIELDS_OT_cancel_nerf.bl_idname, icon='CANCEL')
        row = layout.row()
        row.scale_y = 1.4
        row.operator(NEURALFIELDS_OT_train_nerf.bl_idname, icon='OUTLINER_OB_CAMERA',
                     text="Queue Train NeRF" if state.running else "Train NeRF")

        image = bpy.data.images.get(state.preview_image) if state.preview_image else None
        if image is not None:
            box = layout.box()
            box.label(text=state.preview_text or "Preview", icon='IMAGE_DATA')
            preview = image.preview
            if preview is not None and preview.icon_id:
                box.template_icon(icon_value=preview.icon_id, scale=8.0)

        if state.last_status:
            box = layout.box()
            icon = {'done': 'CHECKMARK', 'failed': 'ERROR', 'cancelled': 'CANCEL'}.get(state.last_status, 'INFO')
            box.label(text=state.last_message or state.last_status.capitalize(), icon=icon)
        for warning in state.last_warnings.splitlines()[:3]:
            layout.label(text=warning[:120], icon='ERROR')

        result = None
        if state.last_result_json:
            try:
                result = json.loads(state.last_result_json)
            except ValueError:
                result = None
        rows = nerf_jobs.metrics_summary(result)
        if rows:
            grid = layout.box().grid_flow(row_major=True, columns=2, even_columns=True)  # label, value per row
            for label, value in rows:
                grid.label(text=label)
                grid.label(text=value)

        column = layout.column()
        column.use_property_split = True
        column.use_property_decorate = False
        column.prop(settings, "job_dir")
        column.prop(settings, "render_background")
        column.operator(NEURALFIELDS_OT_render_nerf_view.bl_idname, icon='RENDER_STILL')
        column.operator(NEURALFIELDS_OT_render_nerf_animation.bl_idname, icon='RENDER_ANIMATION')
        column.prop(settings, "mesh_resolution")
        column.prop(settings, "mesh_threshold")
        column.operator(NEURALFIELDS_OT_extract_nerf_mesh.bl_idname, icon='MESH_ICOSPHERE')


classes = (NeuralFieldsNerfSettings, NeuralFieldsNerfState, NEURALFIELDS_OT_train_nerf,
           NEURALFIELDS_OT_render_nerf_view, NEURALFIELDS_OT_render_nerf_animation,
           NEURALFIELDS_OT_extract_nerf_mesh, NEURALFIELDS_OT_cancel_nerf, NEURALFIELDS_PT_nerf)


def register():
    for cls in classes:
        bpy.utils.register_class(cls)
    bpy.types.Scene.neural_fields_nerf = PointerProperty(type=NeuralFieldsNerfSettings)
    bpy.types.WindowManager.neural_fields_nerf_state = PointerProperty(type=NeuralFieldsNerfState)


def unregister():
    for task in list(_ACTIVE):
        if not task.runner.keep_running:   # kept trainings outlive Blender on purpose
            task.runner.stop(timeout=5.0)
    _ACTIVE.clear()
    del bpy.types.WindowManager.neural_fields_nerf_state
    del bpy.types.Scene.neural_fields_nerf
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
