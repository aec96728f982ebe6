"""Mesh -> neural field (SDF or occupancy) -> mesh, at the bpy level: the code the operator runs,
callable on its own.

    job = start_conversion(context, obj)          # export, write the job, start the backend
    while not job.finished:
        job.poll()                               # drain a few messages (a timer tick)
    new_object = job.finish(context)             # import (None when cancelled)

``run_conversion`` does the same synchronously (background mode, ``execute()``). Every
failure raises ``ConversionError`` (a RuntimeError) with a message for the artist, and leaves
the scene as it was.

Several conversions may be in flight: ``start_conversion`` exports the mesh and writes the job
folder at once (the job is a snapshot of the scene when it was queued; editing the mesh later
does not change it), and the runner queues the backend until one of the "Jobs at Once" slots
is free (runner.py). ``jobs_in_flight()`` lists them oldest first; the panel's single progress
state shows the *lead* job (``lead_job()``: the oldest one running, else the oldest queued)
and counts the others, so it never flickers between jobs.
"""

from __future__ import annotations

import collections
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import bpy
import numpy as np

from . import compat, jobs, runner
from ._backend import protocol

ADDON_ID = __package__

OBJECT_JOB_KEY = "neural_fields_job"
OBJECT_SOURCE_KEY = "neural_fields_source"
OBJECT_METRICS_KEY = "neural_fields_metrics"

_ACTIVE: list["ConversionJob"] = []
MESSAGES_KEPT = 500   # a job keeps its most recent messages only: a backend printing 100k lines must not grow memory


class ConversionError(RuntimeError):
    """A conversion that could not start or did not finish; the text is for the artist."""


@dataclass
class ConversionSettings:
    task: str = "sdf"           # the representation: sdf | occupancy
    preset: str = "fast"
    network: str = "hashgrid"
    resolution: int = 256
    device: str = "auto"
    seed: int = 0
    max_steps: int = 0          # 0: the preset decides
    python: str = ""            # "": the Python running Blender
    jobs_root: str = ""         # "": the add-on's user folder

    def config(self) -> dict[str, Any]:
        return jobs.make_config(preset=self.preset, network=self.network, resolution=self.resolution,
                                device=self.device, seed=self.seed, max_steps=self.max_steps or None)

    def record(self) -> dict[str, Any]:
        """What the result object records about how it was made (no paths: they are per machine)."""
        return {"preset": self.preset, "network": self.network, "resolution": int(self.resolution),
                "seed": int(self.seed), "max_steps": int(self.max_steps), "device": self.device}


# --------------------------------------------------------------------------- settings


def addon_preferences(context=None):
    context = context or bpy.context
    addon = context.preferences.addons.get(ADDON_ID)
    return addon.preferences if addon is not None else None


def default_jobs_root() -> Path:
    """The add-on's user folder ``.../extensions/.user/<repo>/neural_fields/jobs`` (a legacy
    add-on: ``<config>/neural_fields/jobs``), else a temp folder."""
    try:
        return compat.user_data_dir(ADDON_ID, subdir="jobs")
    except Exception:  # not installed at all (a source checkout imported by a test)
        path = Path(tempfile.gettempdir()) / "neural_fields_jobs"
        path.mkdir(parents=True, exist_ok=True)
        return path


def settings_from_context(context) -> ConversionSettings:
    """The scene's settings plus the add-on preferences."""
    settings = ConversionSettings()
    scene_settings = getattr(context.scene, "neural_fields", None)
    if scene_settings is not None:
        settings.task = scene_settings.representation
        settings.preset = scene_settings.preset
        settings.network = scene_settings.network
        settings.resolution = scene_settings.resolution
        settings.seed = scene_settings.seed
        settings.max_steps = scene_settings.max_steps
    prefs = addon_preferences(context)
    if prefs is not None:
        settings.python = bpy.path.abspath(prefs.backend_python) if prefs.backend_python else ""
        settings.device = prefs.device
        settings.jobs_root = bpy.path.abspath(prefs.jobs_dir) if prefs.jobs_dir else ""
    return settings


def object_problem(obj) -> str | None:
    """Why ``obj`` cannot be converted (for poll messages), or None."""
    if obj is None:
        return "Select a mesh object first"
    if obj.type != 'MESH':
        return f"'{obj.name}' is a {obj.type.lower()}, not a mesh: select a mesh object"
    return None


def keep_jobs_on_quit(context=None) -> bool:
    """The preference *Keep Jobs Running on Quit*: training runs start with --keep-running."""
    return bool(getattr(addon_preferences(context), "keep_jobs_on_quit", False))


def note_job(event: str, context, job_dir, task: str = "", source: str = "") -> None:
    """Tell the Jobs panel (job_manager) that the scene waits for a job ("started") or no longer
    does ("finished"); a no-op when job_manager is not registered."""
    try:
        from . import job_manager
        if event == "started":
            job_manager.note_started(context, job_dir, task, source)
        else:
            job_manager.note_finished(job_dir)
    except (ImportError, AttributeError, RuntimeError) as exc:
        print(f"Neural Fields: cannot note the job {job_dir}: {exc}")


def active_job() -> "ConversionJob | None":
    """The oldest conversion not finished yet (running or queued), or None."""
    for job in _ACTIVE:
        if not job.finished:
            return job
    return None


def jobs_in_flight() -> list["ConversionJob"]:
    """Every conversion not finished yet, oldest first (running and queued)."""
    return [job for job in _ACTIVE if not job.finished]


def lead_job(jobs: list | None = None):
    """The job a single progress display shows: the oldest running one, else the oldest queued
    one (None when nothing is in flight). ``jobs``: any list of BackendJob-like objects."""
    jobs = jobs_in_flight() if jobs is None else [job for job in jobs if not job.finished]
    for job in jobs:
        if not job.runner.is_queued:
            return job
    return jobs[0] if jobs else None


def apply_job_limit(context=None) -> int:
    """The preference *Jobs at Once* -> the runner's limit on training children; read where
    every training job starts (and when the preference changes)."""
    prefs = addon_preferences(context)
    return runner.set_max_parallel(getattr(prefs, "max_parallel_jobs", runner.DEFAULT_MAX_PARALLEL))


def queued_text(backend: runner.BackendRunner) -> str:
    ahead = backend.jobs_ahead
    return "Queued" if ahead is None else f"Queued ({ahead} ahead)"


class RunnerStatus:
    """``status_text`` and ``finished`` of a job driven by ``self.runner`` (a runner.BackendRunner):
    while the runner waits for a slot the status says so, after ``title`` when one is set
    ("NeRF training: Queued (2 ahead)")."""

    title = ""

    @property
    def status_text(self) -> str:
        if self.runner.is_queued:
            return f"{self.title}: {queued_text(self.runner)}" if self.title else queued_text(self.runner)
        return self._status_text

    @status_text.setter
    def status_text(self, value: str) -> None:
        self._status_text = value

    @property
    def finished(self) -> bool:
        return self.runner.is_finished


# --------------------------------------------------------------------------- export


def export_mesh(context, obj) -> tuple[np.ndarray, np.ndarray]:
    """The evaluated mesh (modifiers applied), triangulated, in the object's local coordinates."""
    depsgraph = context.evaluated_depsgraph_get()
    evaluated = obj.evaluated_get(depsgraph)
    mesh = evaluated.to_mesh()
    try:
        mesh.calc_loop_triangles()
        vertices = np.empty(len(mesh.vertices) * 3, dtype=np.float32)
        mesh.vertices.foreach_get("co", vertices)
        faces = np.empty(len(mesh.loop_triangles) * 3, dtype=np.int32)
        mesh.loop_triangles.foreach_get("vertices", faces)
    finally:
        evaluated.to_mesh_clear()
    return vertices.reshape(-1, 3), faces.reshape(-1, 3)


# --------------------------------------------------------------------------- the job


class BackendJob(RunnerStatus):
    """One running backend (a conversion, an image fit, a resample): its job folder, its runner,
    and the progress so far. Subclasses add ``finish()``; everything here is bpy-free."""

    def __init__(self, source_name: str, job_dir: Path, backend: runner.BackendRunner) -> None:
        self.source_name = source_name
        self.job_dir = Path(job_dir)
        self.runner = backend
        self.started_at = time.monotonic()
        self.step = 0
        self.total = 0
        self.loss: float | None = None
        self.eta: float | None = None
        self.status_text = "Starting the backend..."
        self.warnings: list[str] = []
        self.messages: collections.deque[dict[str, Any]] = collections.deque(maxlen=MESSAGES_KEPT)
        self.result: dict[str, Any] | None = None

    @property
    def queued(self) -> bool:
        return self.runner.is_queued

    # ------------------------------------------------------------- progress

    @property
    def status(self) -> str | None:
        return self.runner.status

    @property
    def progress(self) -> float:
        if self.finished:
            return 1.0
        return min(1.0, self.step / self.total) if self.total else 0.0

    @property
    def error_message(self) -> str | None:
        return self.runner.error_message

    def poll(self, max_messages: int = 50) -> list[dict[str, Any]]:
        """Drain up to ``max_messages`` messages (non-blocking) and update the progress."""
        messages = self.runner.poll(max_messages=max_messages)
        for message in messages:
            self.handle_message(message)
        return messages

    def wait(self, timeout: float | None = None,
             on_message: Callable[[dict[str, Any]], Any] | None = None) -> dict[str, Any]:
        """Block until the backend is done (background mode); returns the ``done`` message."""
        def handle(message):
            self.handle_message(message)
            if on_message is not None:
                on_message(message)
        return runner.run_to_completion(self.runner, on_message=handle, timeout=timeout)

    def handle_message(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        kind = message["type"]
        if kind == "started":
            self.status_text = f"Training on {message.get('device', '?')}..."
        elif kind == "progress":
            # Training steps carry total > 0; phase markers and heartbeats carry total 0 and
            # must not move the bar back.
            phase = message.get("phase")
            phase_text = phase.replace("_", " ").capitalize() if isinstance(phase, str) and phase else "Training"
            total = int(message.get("total") or 0)
            if total > 0:
                self.step = int(message.get("step") or 0)
                self.total = total
                self.loss = message.get("loss")
                self.eta = message.get("eta")
                text = f"{phase_text}: step {self.step}/{self.total}"
                if isinstance(self.loss, (int, float)):
                    text += f", loss {self.loss:.4g}"
                if isinstance(self.eta, (int, float)):
                    text += f", {_format_seconds(self.eta)} left"
            else:
                text = f"{phase_text}..."
                elapsed = message.get("elapsed")
                if isinstance(elapsed, (int, float)):
                    text += f" ({_format_seconds(elapsed)})"
            self.status_text = text
        elif kind == "warning":
            self.warnings.append(str(message.get("message")))
            print(f"Neural Fields: warning: {message.get('message')}")
        elif kind == "error":
            self.status_text = "Failed"
        elif kind == "done":
            self.status_text = {"done": "Importing the result...", "failed": "Failed",
                                "cancelled": "Cancelled"}.get(message["status"], message["status"])

    def cancel(self) -> None:
        """Ask the backend to stop; ``finished`` becomes true when it has."""
        if not self.finished:
            self.status_text = "Cancelling..."
            self.runner.cancel()

    # ------------------------------------------------------------- the end

    def failure_text(self) -> str:
        self.runner.wait_exit(timeout=2.0)  # a failing backend may still be writing its traceback
        text = self.runner.error_message
        if not text:  # a `done` failed with no `error`: the log may still say what is missing
            text = (runner.missing_module_hint(self.runner.python, runner.log_tail_text(self.job_dir))
                    or "The backend failed without saying why.")
        if "last lines of" not in text:
            tail = runner.log_tail_text(self.job_dir, count=8)
            text += f"\nJob folder: {self.job_dir}" if str(self.job_dir) not in text else ""
            if tail:
                text += "\n" + tail
        return text


class ConversionJob(BackendJob):
    """One running mesh conversion (task sdf or occupancy)."""

    def __init__(self, source, job_dir: Path, backend: runner.BackendRunner, settings: ConversionSettings) -> None:
        super().__init__(source.name, job_dir, backend)
        self._source = source
        self.settings = settings
        self.new_object_name: str | None = None

    @property
    def label(self) -> str:
        """'Neural SDF', 'Neural occupancy field': how messages name this conversion."""
        return jobs.TASK_LABELS.get(self.settings.task, "Neural field")

    def source_object(self):
        try:
            self._source.name  # raises ReferenceError when the object was deleted
            return self._source
        except ReferenceError:
            return bpy.data.objects.get(self.source_name)

    def finish(self, context):
        """After ``done``: import the result. Returns the new object, or None when cancelled.

        Raises ConversionError when the job failed; the scene is then left as it was.
        """
        if not self.finished:
            raise ConversionError("the conversion is still running: poll() until finished, or cancel() it")
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        note_job("finished", context, self.job_dir)
        status = self.status
        if status == "cancelled":
            return None
        if status != "done":
            raise ConversionError(f"{self.label} of '{self.source_name}' failed: {self.failure_text()}")
        try:
            vertices, faces, result = jobs.import_result(self.job_dir)
        except jobs.JobError as exc:
            raise ConversionError(str(exc)) from None
        self.result = result
        source = self.source_object()
        if source is None:
            raise ConversionError(f"'{self.source_name}' was deleted or renamed while it was being converted; "
                                  f"the result is in {self.job_dir}")
        new_object = import_mesh_object(context, source, vertices, faces, self.job_dir, result,
                                        suffix=self.settings.task, settings=self.settings.record())
        self.new_object_name = new_object.name
        return new_object


def start_conversion(context, obj, settings: ConversionSettings | None = None) -> ConversionJob:
    """Check ``obj``, export its evaluated mesh, write a job folder and start the backend (or
    queue it behind the running jobs: ``job.queued``)."""
    problem = object_problem(obj)
    if problem:
        raise ConversionError(problem)
    # No "already running" refusal: a conversion started while others run is queued (runner.py).
    settings = settings or settings_from_context(context)
    vertices, faces = export_mesh(context, obj)
    try:
        jobs.validate_mesh(vertices, faces, obj.name)
        config = settings.config()
    except jobs.InputError as exc:
        raise ConversionError(str(exc)) from None
    jobs_root = Path(settings.jobs_root) if settings.jobs_root else default_jobs_root()
    source = {"object": obj.name, "mesh": obj.data.name, "blend_file": bpy.data.filepath,
              "blender": bpy.app.version_string, "vertices": int(len(vertices)), "triangles": int(len(faces))}
    try:
        job_dir = jobs.create_job(jobs_root, vertices, faces, config=config, source=source, task=settings.task)
    except jobs.InputError as exc:
        raise ConversionError(str(exc)) from None
    except OSError as exc:
        raise ConversionError(f"Cannot write the job folder under {jobs_root}: {exc}. Choose another jobs folder "
                              f"in {runner.PREFERENCES_HINT.removeprefix('Set it in ')}") from None
    apply_job_limit(context)
    backend = runner.BackendRunner(keep_running=keep_jobs_on_quit(context)).start(settings.python or None, job_dir)
    job = ConversionJob(obj, job_dir, backend, settings)
    _ACTIVE.append(job)
    note_job("started", context, job_dir, settings.task, obj.name)
    return job


def run_conversion(context, obj, settings: ConversionSettings | None = None, timeout: float | None = None,
                   on_message: Callable[[dict[str, Any]], Any] | None = None):
    """Start, wait and import in one call. Returns the new object (None when cancelled)."""
    job = start_conversion(context, obj, settings)
    job.wait(timeout=timeout, on_message=on_message)
    return job.finish(context)


def forget(job: ConversionJob) -> None:
    """Drop a job nobody will finish() (its modal operator was ended by Blender): the panel no
    longer shows it. Its backend was asked to cancel (a queued one never starts) and ends by itself."""
    if job in _ACTIVE:
        _ACTIVE.remove(job)


def stop_all_jobs(timeout: float = 5.0) -> None:
    """unregister(): end every backend the add-on started, except those meant to outlive Blender
    (started with keep_running: the Jobs panel re-attaches to them)."""
    for job in list(_ACTIVE):
        if not job.runner.keep_running:
            job.runner.cancel()
    _ACTIVE.clear()
    runner.stop_all(timeout=timeout)


# --------------------------------------------------------------------------- import


def build_mesh(name: str, vertices: np.ndarray, faces: np.ndarray):
    """A new mesh datablock from triangles, with foreach_set (fast)."""
    vertices = np.ascontiguousarray(vertices, dtype=np.float32).reshape(-1, 3)
    faces = np.ascontiguousarray(faces, dtype=np.int32).reshape(-1, 3)
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(len(vertices))
    mesh.vertices.foreach_set("co", vertices.ravel())
    mesh.loops.add(faces.size)
    mesh.loops.foreach_set("vertex_index", faces.ravel())
    mesh.polygons.add(len(faces))
    mesh.polygons.foreach_set("loop_start", np.arange(0, faces.size, 3, dtype=np.int32))
    compat.set_polygon_sizes(mesh, np.full(len(faces), 3, dtype=np.int32))
    mesh.update(calc_edges=True)
    if hasattr(mesh, "shade_smooth"):
        mesh.shade_smooth()
    return mesh


def import_mesh_object(context, source, vertices, faces, job_dir: Path, result: dict[str, Any], suffix: str = "sdf",
                       settings: dict[str, Any] | None = None):
    """``<source>_sdf`` (or ``_occupancy``): the result mesh on top of ``source`` (same matrix_world),
    active and selected. It records its job (folder, name, task, ``settings``: job_registry.record_job)."""
    mesh = build_mesh(f"{source.name}_{suffix}", vertices, faces)
    new_object = bpy.data.objects.new(f"{source.name}_{suffix}", mesh)
    new_object.matrix_world = source.matrix_world.copy()
    collection = source.users_collection[0] if source.users_collection else context.scene.collection
    collection.objects.link(new_object)
    from .job_registry import record_job
    record_job(new_object, job_dir, suffix, settings)   # OBJECT_JOB_KEY and the job's name, task, settings
    new_object[OBJECT_SOURCE_KEY] = source.name
    metrics = {key: float(value) for key, value in (result.get("metrics") or {}).items()
               if isinstance(value, (int, float)) and not isinstance(value, bool)}
    if metrics:
        new_object[OBJECT_METRICS_KEY] = metrics
    view_layer = context.view_layer
    for selected in list(context.selected_objects):
        selected.select_set(False)
    try:
        new_object.select_set(True)
        view_layer.objects.active = new_object
    except RuntimeError:
        pass  # the collection is excluded from this view layer: the object exists, it just is not selectable
    return new_object


def metrics_summary(result: dict[str, Any] | None) -> list[tuple[str, str]]:
    """(label, value) pairs of the metrics worth showing in the panel."""
    if not result:
        return []
    metrics = result.get("metrics") or {}
    rows = []
    labels = {"chamfer_l1": "Chamfer L1", "normal_consistency": "Normal consistency", "f_score": "F-score",
              "iou": "IoU", "hausdorff": "Hausdorff", "psnr": "PSNR", "ssim": "SSIM"}
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            rows.append((labels.get(key, key.replace("_", " ").capitalize()), f"{value:.4g}"))
    timings = result.get("timings") or {}
    total = timings.get("total") or timings.get("total_s") or timings.get("wall")
    if isinstance(total, (int, float)):
        rows.append(("Time", _format_seconds(total)))
    if result.get("device"):
        rows.append(("Device", str(result["device"])))
    return rows


def result_json_text(result: dict[str, Any] | None) -> str:
    return json.dumps(result or {}, default=str)


def _format_seconds(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"
