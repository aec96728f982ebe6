"""The Jobs panel: every job folder, its results brought back, fields that live with the .blend.

3D View > sidebar > Neural Fields > Jobs lists every job under the jobs folder (task, source,
status, progress, elapsed time; the bpy-free ``job_registry`` reads the folders). For the
selected job:

- **Re-import**: the job's result again: a mesh placed like the original import (the
  source's transform and collection), a NeRF's latest mesh and render, a neural image.
- **Re-extract**: a new mesh from the stored field at another resolution, threshold or
  smoothing (``python -m inr_backend extract``; no training).
- **Resume**: continue a cancelled, failed or interrupted job from its last checkpoint
  (``run --resume``), then import like the operator that started it.
- **Open Log**: backend.log in a Text Editor text block.
- **Delete**: the folder and its files, after a confirmation.
- **Pack Field**: job.json, config, normalization, result and the checkpoint (JSON and
  safetensors only) into the .blend, as the packed file of an image datablock (raw bytes,
  no base64, saved with the file). Opening the .blend where the job folder is missing
  recreates it under the local jobs folder (``load_post``), so re-extract works on a
  colleague's machine. **Unpack** does the same on demand.

Quit behaviour (preference *Keep Jobs Running on Quit*): off, every backend stops when
Blender quits (unregister, the runner's atexit net, and the backend's own end-of-stdin
cancel); on, training runs start with ``--keep-running`` and continue after Blender exits.
Every started job is noted in its scene (``scene.neural_fields_jobs.pending``); when the
.blend is opened again the pending jobs are followed (a ``bpy.app.timers`` callback reading
their folders) and imported when done. Background mode has no timers: call
``follow_pending(context)``.

Every operator's work is a plain function (``reimport_job``, ``run_reextract``,
``run_resume``, ``open_log``, ``delete_job``, ``pack_job``, ``unpack_job``) that raises
``JobManagerError`` with a message for the artist, so scripts and tests call the same code.
"""

from __future__ import annotations

import collections
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import bpy
import numpy as np
from bpy.app.handlers import persistent
from bpy.props import (BoolProperty, CollectionProperty, FloatProperty, IntProperty, PointerProperty,
                       StringProperty)

from . import conversion, jobs, job_registry as registry, runner
from ._backend import plyio, protocol

TIMER_INTERVAL = 0.1
FOLLOW_INTERVAL = 1.0          # seconds between looks at re-attached jobs
LIST_CACHE_SECONDS = 0.5       # the panel redraws often; the folder is scanned at most this often
ROWS_SHOWN = 8
PACK_KEY = "neural_fields_packed_job"  # on the image datablock that carries a packed field: the job's folder name
PACK_PREFIX = "Neural Field "
LOG_PREFIX = "Neural Fields log "

_ACTIVE: list["ManagedTask"] = []


class JobManagerError(RuntimeError):
    """A job operation that cannot be done or did not finish; the text is for the artist."""


# --------------------------------------------------------------------------- where jobs are


def keep_jobs_on_quit(context=None) -> bool:
    prefs = conversion.addon_preferences(context)
    return bool(getattr(prefs, "keep_jobs_on_quit", False))


def jobs_root(context=None) -> Path:
    settings = conversion.settings_from_context(context or bpy.context)
    return Path(settings.jobs_root) if settings.jobs_root else conversion.default_jobs_root()


def jobs_roots(context=None) -> list[Path]:
    """The jobs folder in use first, then the add-on's default one (where older jobs may be)."""
    roots = [jobs_root(context), conversion.default_jobs_root()]
    unique: list[Path] = []
    for root in roots:
        if root not in unique:
            unique.append(root)
    return unique


def running_dirs() -> list[Path]:
    """Job folders this Blender runs a training backend in (counted as running at once)."""
    return [r.job_dir for r in runner.running_runners()
            if r.job_dir is not None and r.is_run_command and not r.is_finished]


def queued_jobs() -> dict[str, int]:
    """Job folders whose training waits in this Blender's queue -> how many jobs are ahead of it."""
    waiting = {}
    for backend in runner.queued_runners():
        ahead = backend.jobs_ahead
        if backend.job_dir is not None and backend.is_run_command and ahead is not None:
            waiting[str(backend.job_dir)] = ahead
    return waiting


def owned_job_dirs() -> set[str]:
    """Job folders an operator of this session is still handling (it imports their result itself)."""
    owned = {str(job.job_dir) for job in conversion._ACTIVE}
    owned |= {str(task.job_dir) for task in _ACTIVE}
    for module_name in ("image_field", "nerf"):
        module = _optional_module(module_name)
        for task in getattr(module, "_ACTIVE", ()) if module else ():
            if getattr(task, "kind", "") in ("fit", "train"):
                owned.add(str(task.job_dir))
    return owned


def _optional_module(name: str):
    import importlib
    try:
        return importlib.import_module(f".{name}", __package__)
    except ImportError:
        return None


_LIST_CACHE: dict[str, Any] = {"root": None, "at": 0.0, "jobs": []}


def list_jobs(context=None, *, fresh: bool = False) -> list[registry.JobInfo]:
    """Every job under the jobs folder, newest first (re-scanned at most every LIST_CACHE_SECONDS)."""
    root = jobs_root(context)
    now = time.monotonic()
    if fresh or _LIST_CACHE["root"] != root or now - _LIST_CACHE["at"] > LIST_CACHE_SECONDS:
        _LIST_CACHE.update(root=root, at=now, jobs=registry.list_jobs(root, running_dirs=running_dirs(),
                                                                      queued=queued_jobs()))
    return _LIST_CACHE["jobs"]


def job_info(job_dir: str | Path) -> registry.JobInfo:
    """The registry's view of one job folder; JobManagerError when it is not one."""
    job_dir = Path(job_dir)
    info = registry.read_job_info(job_dir, running=str(job_dir) in {str(p) for p in running_dirs()},
                                  queued_ahead=queued_jobs().get(str(job_dir)))
    if info is None:
        raise JobManagerError(f"{job_dir} is not a job folder (no job.json): it may have been deleted. "
                              f"Pick a job in the Jobs list")
    return info


def resolve_job(context, job: str = "") -> Path:
    """The job folder an operator works on: ``job`` (a path, or a folder name under the jobs
    folder), else the job selected in the panel."""
    job = job or _state(context).selected_job
    if not job:
        raise JobManagerError("No job selected: pick one in the Jobs list (Neural Fields > Jobs)")
    path = Path(bpy.path.abspath(job))
    if not path.is_absolute() or not (path / protocol.JOB_FILE).is_file():
        located = registry.locate_job(path if path.is_absolute() else None, Path(job).name, jobs_roots(context))
        if located is None:
            raise JobManagerError(f"The job folder {job} is gone: pick a job in the Jobs list, or unpack its "
                                  f"field (Pack/Unpack) if the .blend carries one")
        path = located
    return path


def _read_job(job_dir: Path) -> dict[str, Any]:
    try:
        return protocol.read_job(job_dir)
    except protocol.ProtocolError as exc:
        raise JobManagerError(f"The job folder {job_dir} is not readable: {exc}") from None


# --------------------------------------------------------------------------- bringing results in


def _results_of(job_dir: Path) -> list:
    """Objects and images made from ``job_dir`` (by recorded path, or folder name)."""
    made = []
    for collection in (bpy.data.objects, bpy.data.images):
        for block in collection:
            recorded = block.get(registry.JOB_KEY)
            if not recorded or block.get(PACK_KEY):
                continue
            if str(recorded) == str(job_dir) or block.get(registry.JOB_NAME_KEY) == job_dir.name \
                    or Path(str(recorded)).name == job_dir.name:
                made.append(block)
    return made


def _placement(context, job_dir: Path, job: dict[str, Any]):
    """(base name, matrix_world or None, collection, note) for a mesh made from a mesh job: the
    source object's when it still exists, else an earlier result's, else the scene's origin."""
    source = job.get("source") or {}
    name = str(source.get("object") or job_dir.name)
    obj = bpy.data.objects.get(name)
    if obj is not None and obj.type == 'MESH' and obj.get(registry.JOB_KEY) is None:
        collection = obj.users_collection[0] if obj.users_collection else context.scene.collection
        return name, obj.matrix_world.copy(), collection, ""
    for earlier in _results_of(job_dir):
        if isinstance(earlier, bpy.types.Object):
            collection = earlier.users_collection[0] if earlier.users_collection else context.scene.collection
            return name, earlier.matrix_world.copy(), collection, ""
    return name, None, context.scene.collection, (f"'{name}' is not in this file: the mesh is placed at the "
                                                  f"origin in its source's local coordinates")


def import_mesh_result(context, job_dir: Path, mesh_path: Path, *, result: dict[str, Any] | None,
                       settings: dict[str, Any], suffix: str | None = None):
    """A mesh job's mesh (in its source's local coordinates) as a new object placed like the source."""
    job = _read_job(job_dir)
    task = str(job.get("task"))
    try:
        vertices, faces, _colors = plyio.read_ply(mesh_path)
    except (OSError, plyio.PlyError) as exc:
        raise JobManagerError(f"The mesh {mesh_path} cannot be read: {exc}") from None
    if len(faces) == 0:
        raise JobManagerError(f"The mesh {mesh_path.name} is empty (no surface at this threshold): try another "
                              f"threshold or a higher resolution")
    if not np.all(np.isfinite(vertices)):
        raise JobManagerError(f"The mesh {mesh_path} has non-finite vertices")
    name, matrix, collection, note = _placement(context, job_dir, job)
    object_name = f"{name}_{suffix or task}"
    mesh = conversion.build_mesh(object_name, vertices, faces)
    obj = bpy.data.objects.new(object_name, mesh)
    if matrix is not None:
        obj.matrix_world = matrix
    collection.objects.link(obj)
    registry.record_job(obj, job_dir, task, settings)
    obj[registry.SOURCE_KEY] = name
    metrics = {key: float(value) for key, value in ((result or {}).get("metrics") or {}).items()
               if isinstance(value, (int, float)) and not isinstance(value, bool)}
    if metrics:
        obj[conversion.OBJECT_METRICS_KEY] = metrics
    _make_active(context, obj)
    if note:
        print(f"Neural Fields: {note}")
    return obj


def _make_active(context, obj) -> None:
    for selected in list(context.selected_objects):
        selected.select_set(False)
    try:
        obj.select_set(True)
        context.view_layer.objects.active = obj
    except RuntimeError:
        pass  # not in this view layer: the object exists all the same


def _mesh_settings(job: dict[str, Any], **override) -> dict[str, Any]:
    config = dict(job.get("config") or {})
    keep = {key: config[key] for key in ("preset", "network", "resolution", "seed", "max_steps", "model")
            if key in config}
    keep.update({key: value for key, value in override.items() if value is not None})
    return keep


def reimport_job(context, job_dir: str | Path) -> list[str]:
    """Bring a finished job's result in again; returns the names of what was made."""
    job_dir = Path(job_dir)
    job = _read_job(job_dir)
    task = job.get("task")
    info = job_info(job_dir)
    if info.status != "done":
        raise JobManagerError(f"The job {job_dir.name} is {info.status}, not done: "
                              + ("resume it first" if info.resumable else "there is no result to import"))
    if task in jobs.MESH_TASKS:
        try:
            _vertices, _faces, result = jobs.import_result(job_dir)
        except jobs.JobError as exc:
            raise JobManagerError(f"{exc} Re-extract a mesh from the field instead.") from None
        relative = (result.get("outputs") or {}).get("mesh") or jobs.MESH_OUTPUT
        mesh_path = protocol.resolve_inside(job_dir, relative)
        obj = import_mesh_result(context, job_dir, mesh_path, result=result, settings=_mesh_settings(job))
        return [obj.name]
    if task == "nerf":
        return _reimport_nerf(context, job_dir)
    if task == "image":
        return [_import_image(context, job_dir).name]
    raise JobManagerError(f"The job {job_dir.name} has task {task!r}, which this add-on cannot import")


def _reimport_nerf(context, job_dir: Path) -> list[str]:
    from . import nerf, nerf_jobs
    made = []
    context.scene.neural_fields_nerf.job_dir = str(job_dir)   # Render and Extract use it from now on
    meshes = sorted((job_dir / protocol.OUTPUTS_DIR).glob("mesh*.ply"), key=lambda p: p.stat().st_mtime)
    if meshes:
        made.append(_import_nerf_mesh(context, job_dir, meshes[-1], settings={}).name)
    renders = sorted((job_dir / nerf_jobs.RENDERS_DIR).glob("*/render.json"), key=lambda p: p.stat().st_mtime)
    if renders:
        try:
            frames = nerf_jobs.read_render(renders[-1].parent)
        except nerf_jobs.NerfJobError as exc:
            raise JobManagerError(str(exc)) from None
        label = nerf_jobs.job_label(job_dir)
        frame = frames[0]
        for key, suffix in (("rgb", "_rgb"), ("depth", "_depth"), ("alpha", "_alpha"), ("normal", "_normal")):
            path = getattr(frame, key)
            if path is not None:
                image = nerf.load_image(f"{label}{suffix}", path, non_color=key in ("depth", "alpha"))
                registry.record_job(image, job_dir, "nerf", {"output": key, "render": renders[-1].parent.name})
                made.append(image.name)
    if not made:
        made.append(f"(NeRF {job_dir.name} set as the trained job: nothing rendered or extracted yet)")
    return made


def _import_nerf_mesh(context, job_dir: Path, mesh_path: Path, *, settings: dict[str, Any]):
    from . import nerf, nerf_jobs
    try:
        vertices, faces, colors = plyio.read_ply(mesh_path)
    except (OSError, plyio.PlyError) as exc:
        raise JobManagerError(f"The mesh {mesh_path} cannot be read: {exc}") from None
    if len(faces) == 0:
        raise JobManagerError("The extracted mesh is empty: lower the density threshold, or train longer")
    obj = nerf.build_colored_mesh_object(context, f"{nerf_jobs.job_label(job_dir)}_nerf", vertices, faces, colors)
    registry.record_job(obj, job_dir, "nerf", settings)
    return obj


def _import_image(context, job_dir: Path):
    from . import image_field
    try:
        path, result = jobs.image_result(job_dir)
    except jobs.JobError as exc:
        raise JobManagerError(str(exc)) from None
    job = _read_job(job_dir)
    source = job.get("source") or {}
    config = job.get("config") or {}
    size = (config["width"], config["height"]) if "width" in config and "height" in config else None
    name = jobs.result_image_name(str(source.get("image") or job_dir.name), scale=config.get("scale"), size=size)
    metrics = {key: float(value) for key, value in (result.get("metrics") or {}).items()
               if isinstance(value, (int, float)) and not isinstance(value, bool)}
    colorspace = None if path.suffix == ".exr" else str(source.get("colorspace") or "sRGB")
    try:
        return image_field.load_result_image(path, name, colorspace=colorspace, job_dir=job_dir,
                                             fitted_name=str(source.get("image") or name), metrics=metrics,
                                             network=str(config.get("network", "")))
    except image_field.ImageFieldError as exc:
        raise JobManagerError(str(exc)) from None


def import_finished(context, job_dir: Path) -> tuple[str, str]:
    """What the operator that started a job does at its end (a resumed or re-attached job):
    (report level, message)."""
    job = _read_job(job_dir)
    task = job.get("task")
    if task == "nerf":
        from . import nerf_jobs
        try:
            result = nerf_jobs.read_train_result(job_dir)
        except nerf_jobs.NerfJobError as exc:
            raise JobManagerError(str(exc)) from None
        context.scene.neural_fields_nerf.job_dir = str(job_dir)
        made = []
        mesh = (result.get("outputs") or {}).get("mesh")
        if isinstance(mesh, str) and (job_dir / mesh).is_file():
            made.append(_import_nerf_mesh(context, job_dir, job_dir / mesh, settings={}).name)
        rows = nerf_jobs.metrics_summary(result)
        summary = ", ".join(f"{label} {value}" for label, value in rows[:2])
        return 'INFO', (f"NeRF trained{' (' + summary + ')' if summary else ''}: {job_dir.name}"
                        + (f"; created {', '.join(made)}" if made else ""))
    made = reimport_job(context, job_dir)
    return 'INFO', f"Created {', '.join(repr(name) for name in made)}"


# --------------------------------------------------------------------------- backend tasks: re-extract, resume


@dataclass
class ExtractSettings:
    """Marching cubes on a stored field. threshold: the SDF level (0), the occupancy probability
    (0.5) or the NeRF density (20) when None; smoothing: Taubin iterations, none when 0."""

    resolution: int = 256
    threshold: float | None = None
    smoothing: int = 0
    device: str = "auto"
    python: str = ""

    def args(self, job_dir: Path, out_path: Path) -> list[str]:
        if not 16 <= int(self.resolution) <= 2048:
            raise JobManagerError(f"Resolution must be between 16 and 2048, got {self.resolution}")
        if not 0 <= int(self.smoothing) <= 1000:
            raise JobManagerError(f"Smoothing is a number of iterations from 0 to 1000, got {self.smoothing}")
        args = ["-m", "inr_backend", "extract", str(job_dir), "--out", str(out_path),
                "--resolution", str(int(self.resolution))]
        if self.threshold is not None:
            args += ["--threshold", repr(float(self.threshold))]
        if self.smoothing > 0:
            args += ["--smoothing", str(int(self.smoothing))]
        return args + ["--device", self.device, "--json"]

    def record(self) -> dict[str, Any]:
        return {"resolution": int(self.resolution), "threshold": self.threshold,
                "smoothing": int(self.smoothing)}


class ManagedTask(conversion.RunnerStatus):
    """One backend run started from the Jobs panel and what to do when it ends."""

    def __init__(self, kind: str, job_dir: Path, backend: runner.BackendRunner,
                 on_done: Callable[[Any], tuple[str, str]]) -> None:
        self.kind = kind                 # "extract" | "resume"
        self.job_dir = Path(job_dir)
        self.runner = backend
        self.on_done = on_done
        self.step = 0
        self.total = 0
        self.status_text = "Starting the backend..."
        self.warnings: list[str] = []
        self.messages: collections.deque[dict[str, Any]] = collections.deque(maxlen=conversion.MESSAGES_KEPT)
        self.title = "Re-extraction" if kind == "extract" else "Resumed training"

    @property
    def fraction(self) -> float:
        if self.finished:
            return 1.0
        return min(1.0, self.step / self.total) if self.total else 0.0

    def handle(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        kind = message["type"]
        if kind == "progress" and int(message.get("total") or 0) > 0:
            self.step, self.total = int(message.get("step") or 0), int(message["total"])
        if kind == "warning":
            self.warnings.append(str(message.get("message")))
            print(f"Neural Fields: warning: {message.get('message')}")
        if not message.get("heartbeat"):
            self.status_text = f"{self.title}: {registry.message_text(message)}"

    def poll(self, max_messages: int = 50) -> bool:
        messages = self.runner.poll(max_messages=max_messages)
        for message in messages:
            self.handle(message)
        return bool(messages)

    def wait(self, timeout: float | None = None) -> None:
        runner.run_to_completion(self.runner, on_message=self.handle, timeout=timeout)

    def cancel(self) -> None:
        if not self.finished:
            self.status_text = "Cancelling..."
            self.runner.cancel()

    def finish(self, context) -> tuple[str, str]:
        """After ``done``: (report level, message); JobManagerError when it failed."""
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        status = self.runner.status
        if status == "cancelled":
            return 'WARNING', f"{self.title} of {self.job_dir.name} cancelled"
        if status != "done":
            self.runner.wait_exit(timeout=2.0)
            text = self.runner.error_message or runner.missing_module_hint(
                self.runner.python, runner.log_tail_text(self.job_dir)) or "The backend failed without saying why."
            raise JobManagerError(f"{self.title} of {self.job_dir.name} failed: {text}")
        return self.on_done(context)


def active_task() -> ManagedTask | None:
    for task in _ACTIVE:
        if not task.finished:
            return task
    return None


def tasks_in_flight() -> list[ManagedTask]:
    return [task for task in _ACTIVE if not task.finished]


def extract_settings_from_context(context, *, resolution: int = 0, threshold: float | None = None,
                                  smoothing: int | None = None) -> ExtractSettings:
    panel = context.scene.neural_fields_jobs
    base = conversion.settings_from_context(context)
    return ExtractSettings(
        resolution=resolution or panel.extract_resolution,
        threshold=threshold if threshold is not None else (panel.extract_threshold if panel.use_threshold else None),
        smoothing=smoothing if smoothing is not None else panel.extract_smoothing,
        device=base.device or "auto", python=base.python)


def start_reextract(context, job_dir: str | Path, settings: ExtractSettings) -> ManagedTask:
    """Run ``extract`` on a job's field (a stopped sdf/occupancy job: its last checkpoint); the
    new mesh is imported when it ends. Never queued: it reads a trained field (runner.py)."""
    job_dir = Path(job_dir)
    info = job_info(job_dir)
    if info.task not in registry.EXTRACTABLE_TASKS:
        raise JobManagerError(f"A {info.task} job has no surface to extract: re-extract works on SDF, occupancy "
                              f"and NeRF jobs")
    if not info.extractable:
        if info.running:
            raise JobManagerError(f"The job {job_dir.name} is still training: wait for it to finish, then re-extract")
        raise JobManagerError(f"The job {job_dir.name} is {info.status} and holds no trained field or checkpoint: "
                              f"there is nothing to extract from")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_path = job_dir / protocol.OUTPUTS_DIR / f"extract-{int(settings.resolution)}-{stamp}-{uuid.uuid4().hex[:4]}.ply"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    args = settings.args(job_dir, out_path)
    record = settings.record()

    def on_done(context) -> tuple[str, str]:
        if not out_path.is_file():
            raise JobManagerError(f"The extraction finished but wrote no mesh at {out_path}")
        if info.task == "nerf":
            obj = _import_nerf_mesh(context, job_dir, out_path, settings=record)
        else:
            job = _read_job(job_dir)
            obj = import_mesh_result(context, job_dir, out_path, result=info.result,
                                     settings=_mesh_settings(job, **record),
                                     suffix=f"{info.task}_{int(settings.resolution)}")
        return 'INFO', f"Created '{obj.name}' ({len(obj.data.vertices)} vertices, {len(obj.data.polygons)} faces)"

    backend = runner.BackendRunner().start(settings.python or None, job_dir, args=args)
    task = ManagedTask("extract", job_dir, backend, on_done)
    _ACTIVE.append(task)
    return task


def start_resume(context, job_dir: str | Path) -> ManagedTask:
    """Continue a stopped job from its checkpoint (``run --resume``); import like its first run would.
    Queued like any training when every "Jobs at Once" slot is taken."""
    job_dir = Path(job_dir)
    info = job_info(job_dir)
    if info.running or info.queued or str(job_dir) in owned_job_dirs():
        raise JobManagerError(f"The job {job_dir.name} is running or queued already")
    if info.status == "done":
        raise JobManagerError(f"The job {job_dir.name} finished already: re-import or re-extract it instead")
    if not info.has_resume_point:
        raise JobManagerError(f"The job {job_dir.name} stopped before it saved a checkpoint: nothing to resume "
                              f"from. Start it again from the scene")
    base = conversion.settings_from_context(context)
    keep = keep_jobs_on_quit(context)
    args = ["-m", "inr_backend", "run", str(job_dir), "--resume"] + (["--keep-running"] if keep else [])
    conversion.apply_job_limit(context)
    backend = runner.BackendRunner(keep_running=keep).start(base.python or None, job_dir, args=args)
    note_started(context, job_dir, info.task, info.source)

    def on_done(context) -> tuple[str, str]:
        note_finished(job_dir)
        return import_finished(context, job_dir)

    task = ManagedTask("resume", job_dir, backend, on_done)
    _ACTIVE.append(task)
    return task


def run_reextract(context, job_dir, settings: ExtractSettings, timeout: float | None = None) -> tuple[str, str]:
    task = start_reextract(context, job_dir, settings)
    task.wait(timeout=timeout)
    return task.finish(context)


def run_resume(context, job_dir, timeout: float | None = None) -> tuple[str, str]:
    task = start_resume(context, job_dir)
    task.wait(timeout=timeout)
    return task.finish(context)


def stop_all_tasks() -> None:
    for task in list(_ACTIVE):
        if not task.runner.keep_running:
            task.runner.stop(timeout=5.0)
    _ACTIVE.clear()


def stop_job(context, job_dir: str | Path) -> str:
    """Stop a running training: this Blender's own backend through its pipe (`cancel`), one
    started by an earlier Blender (kept running) by a signal. Returns what was done."""
    job_dir = Path(job_dir)
    for waiting in runner.queued_runners():
        if waiting.job_dir is not None and Path(waiting.job_dir) == job_dir:
            waiting.cancel()   # leaves the queue; its operator ends on its next tick
            _LIST_CACHE["at"] = 0.0
            return f"Removed {job_dir.name} from the queue: it never started"
    for live in runner.running_runners():
        if live.job_dir is not None and Path(live.job_dir) == job_dir and live.is_run_command:
            live.cancel()
            return f"Cancelling {job_dir.name}"
    try:
        pid = registry.stop_backend(job_dir)
    except registry.JobRegistryError as exc:
        raise JobManagerError(str(exc)) from None
    if pid is None:
        raise JobManagerError(f"The job {job_dir.name} is not running")
    _LIST_CACHE["at"] = 0.0
    return f"Asked the backend of {job_dir.name} (process {pid}) to stop; it saves a checkpoint to resume from"


# --------------------------------------------------------------------------- log, delete


def open_log(context, job_dir: str | Path):
    """backend.log (and the stderr log, when it says anything) in a text block; returns it."""
    job_dir = Path(job_dir)
    parts = []
    for name in (protocol.LOG_FILE, runner.STDERR_FILE):
        path = job_dir / name
        if path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace")
            if text.strip():
                parts.append(text if name == protocol.LOG_FILE else f"\n--- {name} ---\n{text}")
    if not parts:
        raise JobManagerError(f"The job {job_dir.name} has no log yet (backend.log is missing or empty)")
    name = f"{LOG_PREFIX}{job_dir.name}"
    text = bpy.data.texts.get(name) or bpy.data.texts.new(name)
    text.clear()
    text.write("".join(parts))
    for window in getattr(context.window_manager, "windows", ()):
        for area in (window.screen.areas if window.screen else ()):
            if area.type == 'TEXT_EDITOR':
                area.spaces.active.text = text
                break
    return text


def delete_job(context, job_dir: str | Path) -> None:
    """Remove a job folder (see job_registry.delete_job for what is refused); forget its pending note."""
    job_dir = Path(job_dir)
    if str(job_dir) in owned_job_dirs():
        raise JobManagerError(f"The job {job_dir.name} is still running: cancel it first, then delete it")
    roots = {root.resolve() for root in jobs_roots(context)}
    parent = job_dir.resolve().parent
    root = parent if parent in roots else jobs_root(context)   # anything else is refused by the registry
    try:
        registry.delete_job(root, job_dir, running_dirs=running_dirs() + [Path(p) for p in queued_jobs()])
    except registry.JobRegistryError as exc:
        raise JobManagerError(str(exc)) from None
    note_finished(job_dir)
    state = _state(context)
    if state.selected_job == str(job_dir):
        state.selected_job = ""
    _LIST_CACHE["at"] = 0.0


# --------------------------------------------------------------------------- packing fields into the .blend


def packed_images() -> dict[str, Any]:
    """Job folder name -> the image datablock that carries its packed field."""
    return {str(image[PACK_KEY]): image for image in bpy.data.images if image.get(PACK_KEY)}


def packed_bytes(image) -> bytes:
    """The pack's bytes: the packed file, or the file it was unpacked to (File > External Data > Unpack)."""
    if image.packed_file is not None:
        return bytes(image.packed_file.data)
    path = Path(bpy.path.abspath(image.filepath_raw or image.filepath))
    if path.is_file():
        return path.read_bytes()
    raise JobManagerError(f"'{image.name}' lost its packed field (not packed, and {path} is missing)")


def pack_job(context, job_dir: str | Path):
    """Store the job's field in the .blend (replacing an earlier pack of it); returns the image datablock.

    Why an image's packed file: it holds raw bytes (a 16 MB checkpoint stays 16 MB; base64 in a
    text block would be 21 MB of text lines), is saved with the .blend, and is read back in
    ~0.1 s. The 1x1 image is never shown or used as a texture (fake user: never purged)."""
    job_dir = Path(job_dir)
    info = job_info(job_dir)
    try:
        data = registry.pack_job(job_dir)
    except registry.JobRegistryError as exc:
        raise JobManagerError(str(exc)) from None
    old = packed_images().get(job_dir.name)
    image = bpy.data.images.new(f"{PACK_PREFIX}{job_dir.name}", 1, 1)
    try:
        image.pack(data=data, data_len=len(data))
    except (RuntimeError, TypeError) as exc:
        bpy.data.images.remove(image)
        raise JobManagerError(f"Blender could not pack the field: {exc}") from None
    image.use_fake_user = True
    image[PACK_KEY] = job_dir.name
    registry.record_job(image, job_dir, info.task, {"packed_bytes": len(data), "source": info.source})
    if old is not None:
        bpy.data.images.remove(old)
        image.name = f"{PACK_PREFIX}{job_dir.name}"
    return image


def _repoint(old_name: str, new_dir: Path) -> int:
    """Every result (objects, images, the NeRF panel, pending notes) of the job named ``old_name``
    now refers to ``new_dir``. Returns how many datablocks changed."""
    changed = 0
    for collection in (bpy.data.objects, bpy.data.images):
        for block in collection:
            recorded = block.get(registry.JOB_KEY)
            if recorded and (block.get(registry.JOB_NAME_KEY) == old_name or Path(str(recorded)).name == old_name):
                if str(recorded) != str(new_dir):
                    block[registry.JOB_KEY] = str(new_dir)
                    changed += 1
    for scene in bpy.data.scenes:
        nerf_settings = getattr(scene, "neural_fields_nerf", None)
        if nerf_settings is not None and nerf_settings.job_dir and Path(nerf_settings.job_dir).name == old_name:
            nerf_settings.job_dir = str(new_dir)
        for note in scene.neural_fields_jobs.pending:
            if note.job_name == old_name:
                note.job_dir = str(new_dir)
    return changed


def unpack_job(context, image, target_root: Path | None = None) -> Path:
    """Recreate the packed job folder under the jobs folder (when missing) and point its results at it."""
    name = str(image.get(PACK_KEY) or "")
    found = registry.locate_job(image.get(registry.JOB_KEY), name, jobs_roots(context))
    if found is None:
        try:
            found = registry.unpack_job(packed_bytes(image), target_root or jobs_root(context), name or None)
        except registry.JobRegistryError as exc:
            raise JobManagerError(str(exc)) from None
        except OSError as exc:
            raise JobManagerError(f"Cannot write the job folder under {target_root or jobs_root(context)}: {exc}. "
                                  f"Choose another jobs folder in the add-on preferences") from None
    _repoint(name, found)
    _LIST_CACHE["at"] = 0.0
    return found


def restore_missing_jobs(context) -> list[Path]:
    """For every packed field whose job folder is missing here: recreate it. Results whose
    recorded folder moved (another machine, another jobs folder) are pointed at it."""
    restored = []
    for name, image in packed_images().items():
        if (Path(str(image.get(registry.JOB_KEY, ""))) / protocol.JOB_FILE).is_file():
            continue
        try:
            restored.append(unpack_job(context, image))
        except JobManagerError as exc:
            print(f"Neural Fields: cannot restore the packed field {name}: {exc}")
    return restored


# --------------------------------------------------------------------------- jobs the scene waits for


def note_started(context, job_dir: str | Path, task: str, source: str, scene=None) -> None:
    """Record in the scene that it waits for this job (re-attached and imported if Blender quits first)."""
    scene = scene or getattr(context, "scene", None)
    if scene is None or not hasattr(scene, "neural_fields_jobs"):
        return
    job_dir = Path(job_dir)
    pending = scene.neural_fields_jobs.pending
    if any(note.job_dir == str(job_dir) for note in pending):
        return
    note = pending.add()
    note.job_dir, note.job_name, note.task, note.source = str(job_dir), job_dir.name, str(task), str(source)
    note.started = time.time()
    _ensure_follow_timer()


def note_finished(job_dir: str | Path) -> None:
    """The job's result was handled (imported, failed, cancelled, deleted): the scene no longer waits."""
    job_dir = Path(job_dir)
    for scene in bpy.data.scenes:
        pending = getattr(scene, "neural_fields_jobs", None)
        if pending is None:
            continue
        for index in reversed(range(len(pending.pending))):
            note = pending.pending[index]
            if note.job_dir == str(job_dir) or note.job_name == job_dir.name:
                pending.pending.remove(index)


def pending_jobs() -> list[tuple[Any, Any]]:
    return [(scene, note) for scene in bpy.data.scenes if hasattr(scene, "neural_fields_jobs")
            for note in scene.neural_fields_jobs.pending]


def follow_pending(context) -> list[str]:
    """One look at every job a scene waits for that no operator here handles: import the finished
    ones (like the operator that started them), drop failed and cancelled ones. Returns messages."""
    reports = []
    owned = owned_job_dirs()
    for scene, note in list(pending_jobs()):
        job_dir = registry.locate_job(note.job_dir, note.job_name, jobs_roots(context))
        if job_dir is None or str(job_dir) in owned or note.job_dir in owned:
            continue
        info = registry.read_job_info(job_dir, running=str(job_dir) in {str(p) for p in running_dirs()})
        if info is None or info.running:
            continue
        job_name = note.job_name
        if info.status == "done":
            try:
                window_scene = context.window.scene if getattr(context, "window", None) else None
                level, message = import_finished(_SceneContext(context, scene) if scene != window_scene else context,
                                                 job_dir)
            except JobManagerError as exc:
                level, message = 'ERROR', str(exc)
        else:
            level, message = 'WARNING', f"The job {job_name} ended {info.status}: {info.message}"
        note_finished(job_dir)
        reports.append(f"{level}: {message}")
        print(f"Neural Fields: {job_name}: {message}")
    return reports


class _SceneContext:
    """The context's attributes, but another scene (a pending job of a scene not shown in the window)."""

    def __init__(self, context, scene) -> None:
        self._context = context
        self.scene = scene
        self.view_layer = scene.view_layers[0]
        self.collection = scene.collection

    @property
    def selected_objects(self):
        return [obj for obj in self.view_layer.objects if obj.select_get(view_layer=self.view_layer)]

    def __getattr__(self, name):
        return getattr(self._context, name)


def wait_pending(context, timeout: float = 300.0, interval: float = 0.5) -> list[str]:
    """Background mode (no timers): follow the pending jobs until none is left, or ``timeout``."""
    reports = []
    deadline = time.monotonic() + timeout
    while True:
        reports += follow_pending(context)
        if not pending_jobs() or time.monotonic() > deadline:
            return reports
        time.sleep(interval)


def _follow_tick():
    """bpy.app.timers callback: follow re-attached jobs until none is pending."""
    try:
        follow_pending(bpy.context)
        _redraw(bpy.context)
    except Exception as exc:  # noqa: BLE001 - a timer that raises is unregistered for good
        print(f"Neural Fields: following jobs failed: {exc}")
    return FOLLOW_INTERVAL if pending_jobs() else None


def _ensure_follow_timer() -> None:
    if bpy.app.background:
        return
    if not bpy.app.timers.is_registered(_follow_tick):
        bpy.app.timers.register(_follow_tick, first_interval=FOLLOW_INTERVAL, persistent=True)


@persistent
def _on_load_post(*_args) -> None:
    """A .blend was opened: recreate packed fields whose folders are missing, re-attach to its jobs."""
    context = bpy.context
    try:
        restored = restore_missing_jobs(context)
        for path in restored:
            print(f"Neural Fields: restored the packed field into {path}")
    except Exception as exc:  # noqa: BLE001 - a failing handler must not break file loading
        print(f"Neural Fields: restoring packed fields failed: {exc}")
    if pending_jobs():
        if bpy.app.background:
            try:
                follow_pending(context)
            except Exception as exc:  # noqa: BLE001
                print(f"Neural Fields: following jobs failed: {exc}")
        else:
            _ensure_follow_timer()


# --------------------------------------------------------------------------- properties


class NeuralFieldsPendingJob(bpy.types.PropertyGroup):
    job_dir: StringProperty(name="Job Folder", subtype='DIR_PATH')
    job_name: StringProperty(name="Job")
    task: StringProperty(name="Task")
    source: StringProperty(name="Source")
    started: FloatProperty(name="Started")


class NeuralFieldsJobsSettings(bpy.types.PropertyGroup):
    pending: CollectionProperty(type=NeuralFieldsPendingJob,
                                description="Jobs this scene waits for: imported when they finish, also after a restart")
    extract_resolution: IntProperty(name="Resolution", default=256, min=16, max=2048, soft_min=32, soft_max=512,
                                    description="Marching-cubes grid resolution of Re-extract")
    use_threshold: BoolProperty(name="Custom Threshold", default=False,
                                description="Extract at another level than the job's default")
    extract_threshold: FloatProperty(name="Threshold", default=0.0, soft_min=-0.1, soft_max=100.0,
                                     description="The surface's level: SDF distance (default 0), occupancy probability "
                                                 "(0.5) or NeRF density (20)")
    extract_smoothing: IntProperty(name="Smoothing", default=0, min=0, max=1000, soft_max=50,
                                   description="Taubin smoothing iterations of the extracted mesh. 0: none")


class NeuralFieldsJobsState(bpy.types.PropertyGroup):
    selected_job: StringProperty(name="Selected Job", default="")
    show_all: BoolProperty(name="Show All", default=False, description=f"List every job, not only the {ROWS_SHOWN} newest")
    running: BoolProperty(default=False)
    progress: FloatProperty(default=0.0, min=0.0, max=1.0, subtype='FACTOR')
    status_text: StringProperty(default="")
    last_message: StringProperty(default="")
    last_status: StringProperty(default="")


def _state(context):
    return context.window_manager.neural_fields_jobs_state


def _redraw(context) -> None:
    window_manager = getattr(context, "window_manager", None)
    for window in (window_manager.windows if window_manager else ()):
        for area in (window.screen.areas if window.screen else ()):
            if area.type == 'VIEW_3D':
                area.tag_redraw()


# --------------------------------------------------------------------------- operators


_JOB_DESCRIPTION = "Job folder (a path, or a folder name in the jobs folder). Empty: the job selected in the Jobs list"


class _JobOperator:
    job: StringProperty(name="Job", default="", options={'SKIP_SAVE'}, description=_JOB_DESCRIPTION)

    def job_dir(self, context) -> Path | None:
        try:
            return resolve_job(context, self.job)
        except JobManagerError as exc:
            self.report({'ERROR'}, str(exc))
            return None


class NEURALFIELDS_OT_job_select(bpy.types.Operator):
    """Select this job in the Jobs list"""

    bl_idname = "neural_fields.job_select"
    bl_label = "Select Job"
    bl_options = {'INTERNAL'}

    job: StringProperty(name="Job", default="", options={'SKIP_SAVE'})

    def execute(self, context):
        state = _state(context)
        state.selected_job = "" if state.selected_job == self.job else self.job
        _redraw(context)
        return {'FINISHED'}


class NEURALFIELDS_OT_job_reimport(_JobOperator, bpy.types.Operator):
    """Bring the job's result into the scene again (mesh placed like the original, NeRF mesh and render, image)"""

    bl_idname = "neural_fields.job_reimport"
    bl_label = "Re-import"
    bl_options = {'REGISTER', 'UNDO'}

    def execute(self, context):
        job_dir = self.job_dir(context)
        if job_dir is None:
            return {'CANCELLED'}
        try:
            made = reimport_job(context, job_dir)
        except JobManagerError as exc:
            self.report({'ERROR'}, str(exc))
            return {'CANCELLED'}
        self.report({'INFO'}, f"Imported {', '.join(made)}")
        return {'FINISHED'}


class _TaskOperator(_JobOperator):
    """execute(): start, wait, finish (background mode); invoke(): modal on a timer, Esc cancels.

    Several may run at once (a resume waits in the runner's queue for a slot); the panel's
    progress always shows the oldest one still going, whoever writes it (no flicker)."""

    def start(self, context, job_dir: Path) -> ManagedTask:
        raise NotImplementedError

    def _begin(self, context) -> ManagedTask | None:
        job_dir = self.job_dir(context)
        if job_dir is None:
            return None
        try:
            task = self.start(context, job_dir)
        except JobManagerError as exc:
            self.report({'ERROR'}, str(exc))
            return None
        state = _state(context)
        state.last_status = state.last_message = ""
        _LIST_CACHE["at"] = 0.0   # the list shows the new job (queued or running) at once
        self._update(context, task)
        return task

    def _update(self, context, task: ManagedTask | None = None) -> None:
        in_flight = tasks_in_flight()
        lead = conversion.lead_job(in_flight)
        state = _state(context)
        state.running = lead is not None
        if lead is not None:
            more = f" (+{len(in_flight) - 1} more)" if len(in_flight) > 1 else ""
            state.progress, state.status_text = lead.fraction, lead.status_text + more
        workspace = getattr(context, "workspace", None)
        if workspace is not None and not bpy.app.background:
            workspace.status_text_set(None if lead is None else f"Neural Fields: {state.status_text}  (Esc to cancel)")
        _redraw(context)

    def _end(self, context, task: ManagedTask) -> set[str]:
        state = _state(context)
        self._update(context)
        try:
            level, message = task.finish(context)
        except JobManagerError as exc:
            state.last_status, state.last_message = "failed", str(exc).splitlines()[0]
            self.report({'ERROR'}, str(exc))
            if task.kind == "resume":
                note_finished(task.job_dir)
            _redraw(context)
            return {'CANCELLED'}
        if task.kind == "resume" and level != 'INFO':
            note_finished(task.job_dir)
        state.last_status = "done" if level == 'INFO' else "cancelled"
        state.last_message = message
        self.report({level}, message)
        _LIST_CACHE["at"] = 0.0
        _redraw(context)
        return {'FINISHED'} if level == 'INFO' else {'CANCELLED'}

    def execute(self, context):
        task = self._begin(context)
        if task is None:
            return {'CANCELLED'}
        runner.run_to_completion(task.runner, on_message=lambda message: (task.handle(message),
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
        self._timer = context.window_manager.event_timer_add(TIMER_INTERVAL, window=context.window)
        context.window_manager.modal_handler_add(self)
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
        if drain(task.poll) or task.finished:
            self._update(context, task)
        if not task.finished:
            return {'PASS_THROUGH'}
        context.window_manager.event_timer_remove(self._timer)
        self._timer = None
        return self._end(context, task)

    def cancel(self, context):
        # Blender ends the operator (file load, quit): a kept-running resume goes on and is
        # followed from the scene's pending note; anything else stops.
        task = getattr(self, "_task", None)
        if task is not None:
            if not task.runner.keep_running or task.runner.is_queued:
                task.cancel()
            if task in _ACTIVE:
                _ACTIVE.remove(task)
            self._update(context)
        timer = getattr(self, "_timer", None)
        if timer is not None:
            context.window_manager.event_timer_remove(timer)
            self._timer = None


class NEURALFIELDS_OT_job_reextract(_TaskOperator, bpy.types.Operator):
    """Extract a new mesh from the job's stored field at another resolution, threshold or smoothing (no training)"""

    bl_idname = "neural_fields.job_reextract"
    bl_label = "Re-extract Mesh"
    bl_options = {'REGISTER', 'UNDO'}

    resolution: IntProperty(name="Resolution", default=0, min=0, max=2048, options={'SKIP_SAVE'},
                            description="Marching-cubes resolution. 0: the Jobs panel's")
    use_threshold: BoolProperty(name="Custom Threshold", default=False, options={'SKIP_SAVE'},
                                description="Use Threshold below (else the panel's setting)")
    threshold: FloatProperty(name="Threshold", default=0.0, options={'SKIP_SAVE'},
                             description="SDF level, occupancy probability or NeRF density of the surface")
    smoothing: IntProperty(name="Smoothing", default=-1, min=-1, max=1000, options={'SKIP_SAVE'},
                           description="Taubin smoothing iterations. -1: the Jobs panel's")

    def start(self, context, job_dir):
        settings = extract_settings_from_context(
            context, resolution=self.resolution, threshold=self.threshold if self.use_threshold else None,
            smoothing=self.smoothing if self.smoothing >= 0 else None)
        return start_reextract(context, job_dir, settings)


class NEURALFIELDS_OT_job_resume(_TaskOperator, bpy.types.Operator):
    """Continue this cancelled, failed or interrupted job from its last checkpoint; Esc cancels"""

    bl_idname = "neural_fields.job_resume"
    bl_label = "Resume"
    bl_options = {'REGISTER', 'UNDO'}

    def start(self, context, job_dir):
        return start_resume(context, job_dir)


class NEURALFIELDS_OT_job_cancel(bpy.types.Operator):
    """Stop every running or queued re-extraction and resumed job started from this panel"""

    bl_idname = "neural_fields.job_cancel"
    bl_label = "Cancel"

    @classmethod
    def poll(cls, context):
        return active_task() is not None

    def execute(self, context):
        for task in reversed(tasks_in_flight()):   # queued ones first: none starts meanwhile
            task.cancel()
        return {'FINISHED'}


class NEURALFIELDS_OT_job_stop(_JobOperator, bpy.types.Operator):
    """Stop this running training (also one that kept running after an earlier Blender quit); it can be resumed"""

    bl_idname = "neural_fields.job_stop"
    bl_label = "Stop"

    def execute(self, context):
        job_dir = self.job_dir(context)
        if job_dir is None:
            return {'CANCELLED'}
        try:
            message = stop_job(context, job_dir)
        except JobManagerError as exc:
            self.report({'ERROR'}, str(exc))
            return {'CANCELLED'}
        self.report({'INFO'}, message)
        return {'FINISHED'}


class NEURALFIELDS_OT_job_open_log(_JobOperator, bpy.types.Operator):
    """Show the job's backend.log in a text block (Text Editor)"""

    bl_idname = "neural_fields.job_open_log"
    bl_label = "Open Log"

    def execute(self, context):
        job_dir = self.job_dir(context)
        if job_dir is None:
            return {'CANCELLED'}
        try:
            text = open_log(context, job_dir)
        except JobManagerError as exc:
            self.report({'ERROR'}, str(exc))
            return {'CANCELLED'}
        self.report({'INFO'}, f"The log is in the text '{text.name}' (Text Editor)")
        return {'FINISHED'}


class NEURALFIELDS_OT_job_delete(_JobOperator, bpy.types.Operator):
    """Delete the job folder and all its files (inputs, checkpoints, outputs, logs). Objects made from it stay"""

    bl_idname = "neural_fields.job_delete"
    bl_label = "Delete Job"
    bl_options = {'REGISTER'}

    def invoke(self, context, event):
        if bpy.app.background or context.window is None:
            return self.execute(context)
        try:   # Blender 4.1+: a titled dialog
            return context.window_manager.invoke_confirm(self, event, title="Delete Job",
                                                         message="Delete the job folder and every file in it?",
                                                         confirm_text="Delete", icon='WARNING')
        except TypeError:
            return context.window_manager.invoke_confirm(self, event)

    def execute(self, context):
        job_dir = self.job_dir(context)
        if job_dir is None:
            return {'CANCELLED'}
        try:
            delete_job(context, job_dir)
        except JobManagerError as exc:
            self.report({'ERROR'}, str(exc))
            return {'CANCELLED'}
        self.report({'INFO'}, f"Deleted the job {job_dir.name}")
        return {'FINISHED'}


class NEURALFIELDS_OT_job_pack(_JobOperator, bpy.types.Operator):
    """Store this job's field (config, normalization, checkpoint) in the .blend, so the file re-extracts and re-renders anywhere"""

    bl_idname = "neural_fields.job_pack"
    bl_label = "Pack Field into .blend"
    bl_options = {'REGISTER', 'UNDO'}

    def execute(self, context):
        job_dir = self.job_dir(context)
        if job_dir is None:
            return {'CANCELLED'}
        try:
            image = pack_job(context, job_dir)
        except JobManagerError as exc:
            self.report({'ERROR'}, str(exc))
            return {'CANCELLED'}
        self.report({'INFO'}, f"Packed the field of {job_dir.name} into the .blend "
                              f"({registry.format_size(image.packed_file.size)}, image '{image.name}'); save the file")
        return {'FINISHED'}


class NEURALFIELDS_OT_job_unpack(bpy.types.Operator):
    """Recreate the job folders of the fields packed in this .blend that are missing here"""

    bl_idname = "neural_fields.job_unpack"
    bl_label = "Unpack Fields"
    bl_options = {'REGISTER'}

    job: StringProperty(name="Job", default="", options={'SKIP_SAVE'},
                        description="The packed job's folder name. Empty: every packed field")

    @classmethod
    def poll(cls, context):
        if not packed_images():
            cls.poll_message_set("This .blend carries no packed field")
            return False
        return True

    def execute(self, context):
        images = packed_images()
        chosen = {self.job: images[self.job]} if self.job in images else images if not self.job else {}
        if not chosen:
            self.report({'ERROR'}, f"No packed field named {self.job} in this .blend")
            return {'CANCELLED'}
        made = []
        for name, image in chosen.items():
            try:
                made.append(str(unpack_job(context, image)))
            except JobManagerError as exc:
                self.report({'ERROR'}, str(exc))
                return {'CANCELLED'}
        self.report({'INFO'}, f"Job folders ready: {', '.join(made)}")
        return {'FINISHED'}


class NEURALFIELDS_OT_job_open_folder(_JobOperator, bpy.types.Operator):
    """Open the job folder in the file browser"""

    bl_idname = "neural_fields.job_open_folder"
    bl_label = "Open Folder"

    def execute(self, context):
        job_dir = self.job_dir(context)
        if job_dir is None:
            return {'CANCELLED'}
        bpy.ops.wm.path_open(filepath=str(job_dir))
        return {'FINISHED'}


# --------------------------------------------------------------------------- panel

STATUS_ICONS = {"running": 'TIME', "queued": 'SORTTIME', "done": 'CHECKMARK', "failed": 'ERROR',
                "cancelled": 'CANCEL', "interrupted": 'QUESTION'}
TASK_LABELS = {"sdf": "SDF", "occupancy": "Occupancy", "nerf": "NeRF", "image": "Image"}


class NEURALFIELDS_PT_jobs(bpy.types.Panel):
    bl_label = "Jobs"
    bl_idname = "NEURALFIELDS_PT_jobs"
    bl_space_type = 'VIEW_3D'
    bl_region_type = 'UI'
    bl_category = "Neural Fields"
    bl_parent_id = "NEURALFIELDS_PT_main"
    bl_options = {'DEFAULT_CLOSED'}

    def draw(self, context):
        layout = self.layout
        state = _state(context)
        settings = context.scene.neural_fields_jobs
        infos = list_jobs(context)
        if not infos:
            layout.label(text="No jobs yet", icon='INFO')
        shown = infos if state.show_all else infos[:ROWS_SHOWN]
        column = layout.column(align=True)
        for info in shown:
            row = column.row(align=True)
            selected = state.selected_job == str(info.path)
            operator = row.operator(NEURALFIELDS_OT_job_select.bl_idname, text=f"{info.source}",
                                    icon=STATUS_ICONS.get(info.status, 'QUESTION'), depress=selected)
            operator.job = str(info.path)
            row.label(text=TASK_LABELS.get(info.task, info.task))
            progress = f"{info.progress * 100:.0f}%" if info.status in ("running", "interrupted", "failed",
                                                                        "cancelled") else info.status
            row.label(text=progress)
            row.label(text=registry.format_seconds(info.elapsed))
        if len(infos) > ROWS_SHOWN:
            layout.prop(state, "show_all", text=f"Show all {len(infos)} jobs")

        if state.running:
            box = layout.box()
            _progress_bar(box, state.progress, state.status_text or "Working...")
            box.operator(NEURALFIELDS_OT_job_cancel.bl_idname, icon='CANCEL')
        elif state.last_message:
            icon = {'done': 'CHECKMARK', 'failed': 'ERROR', 'cancelled': 'CANCEL'}.get(state.last_status, 'INFO')
            layout.label(text=state.last_message[:120], icon=icon)

        info = next((item for item in infos if str(item.path) == state.selected_job), None)
        if info is not None:
            _draw_job(layout, info, settings, state)
        images = packed_images()
        if images:
            row = layout.row()
            row.label(text=f"{len(images)} packed field(s), "
                           f"{registry.format_size(sum(image.packed_file.size for image in images.values() if image.packed_file))}",
                      icon='PACKAGE')
            row.operator(NEURALFIELDS_OT_job_unpack.bl_idname, text="Unpack")



def _progress_bar(layout, factor: float, text: str) -> None:
    if hasattr(layout, "progress"):   # Blender 4.0+
        layout.progress(factor=factor, type='BAR', text=text)
    else:
        layout.label(text=f"{factor * 100:.0f}%  {text}")


def _draw_job(layout, info, settings, state):
    box = layout.box()
    box.label(text=info.name, icon=STATUS_ICONS.get(info.status, 'QUESTION'))
    box.label(text=f"{TASK_LABELS.get(info.task, info.task)} of '{info.source}': {info.status}")
    if info.message:
        box.label(text=info.message[:120])
    if info.running:
        _progress_bar(box, info.progress, f"{info.progress * 100:.0f}%")
        box.operator(NEURALFIELDS_OT_job_stop.bl_idname, icon='CANCEL').job = str(info.path)
    elif info.queued:
        box.operator(NEURALFIELDS_OT_job_stop.bl_idname, icon='CANCEL', text="Remove from Queue").job = str(info.path)
    if info.outputs:
        box.label(text="Outputs: " + ", ".join(info.outputs[:6]) + (" ..." if len(info.outputs) > 6 else ""))
    packed = packed_images().get(info.name)
    if packed is not None and packed.packed_file is not None:
        box.label(text=f"Packed in this .blend: {registry.format_size(packed.packed_file.size)}", icon='PACKAGE')
    busy = info.running or info.queued   # this job itself; other jobs running or queued do not block it
    column = box.column(align=True)
    column.enabled = not busy
    job = str(info.path)
    row = column.row(align=True)
    row.enabled = info.status == "done"
    row.operator(NEURALFIELDS_OT_job_reimport.bl_idname, icon='IMPORT').job = job
    if info.task in registry.EXTRACTABLE_TASKS:
        sub = box.column()
        sub.enabled = info.extractable and not busy
        sub.use_property_split = True
        sub.use_property_decorate = False
        sub.prop(settings, "extract_resolution")
        sub.prop(settings, "use_threshold")
        if settings.use_threshold:
            sub.prop(settings, "extract_threshold")
        sub.prop(settings, "extract_smoothing")
        sub.operator(NEURALFIELDS_OT_job_reextract.bl_idname, icon='MESH_ICOSPHERE').job = job
    row = box.row(align=True)
    row.enabled = info.resumable and not busy
    row.operator(NEURALFIELDS_OT_job_resume.bl_idname, icon='PLAY').job = job
    row = box.row(align=True)
    row.operator(NEURALFIELDS_OT_job_open_log.bl_idname, icon='TEXT').job = job
    row.operator(NEURALFIELDS_OT_job_open_folder.bl_idname, icon='FILE_FOLDER', text="Folder").job = job
    row = box.row(align=True)
    pack = row.row(align=True)
    pack.enabled = info.has_checkpoint and not info.running
    pack.operator(NEURALFIELDS_OT_job_pack.bl_idname, icon='PACKAGE').job = job
    delete = row.row(align=True)
    delete.enabled = not info.running and not info.queued
    delete.operator(NEURALFIELDS_OT_job_delete.bl_idname, icon='TRASH', text="Delete").job = job


classes = (NeuralFieldsPendingJob, NeuralFieldsJobsSettings, NeuralFieldsJobsState, NEURALFIELDS_OT_job_select,
           NEURALFIELDS_OT_job_reimport, NEURALFIELDS_OT_job_reextract, NEURALFIELDS_OT_job_resume,
           NEURALFIELDS_OT_job_cancel, NEURALFIELDS_OT_job_stop, NEURALFIELDS_OT_job_open_log, NEURALFIELDS_OT_job_delete,
           NEURALFIELDS_OT_job_pack, NEURALFIELDS_OT_job_unpack, NEURALFIELDS_OT_job_open_folder, NEURALFIELDS_PT_jobs)


def register():
    for cls in classes:
        bpy.utils.register_class(cls)
    bpy.types.Scene.neural_fields_jobs = PointerProperty(type=NeuralFieldsJobsSettings)
    bpy.types.WindowManager.neural_fields_jobs_state = PointerProperty(type=NeuralFieldsJobsState)
    if _on_load_post not in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.append(_on_load_post)


def unregister():
    stop_all_tasks()
    if _on_load_post in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.remove(_on_load_post)
    if bpy.app.timers.is_registered(_follow_tick):
        bpy.app.timers.unregister(_follow_tick)
    del bpy.types.WindowManager.neural_fields_jobs_state
    del bpy.types.Scene.neural_fields_jobs
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
