"""Add-on preferences: which Python runs the backend (set up here, or an existing one checked here),
on which device, where jobs go, and what happens to running jobs when Blender quits.

"Set Up Backend" and "Check Backend" run backend_setup's tasks (child processes on a worker
thread). In the UI they are modal operators that poll the task from a timer and show a progress
bar in these preferences (Esc or Cancel stops them); in background mode they run synchronously.
The last result is kept, as JSON, in ``backend_status`` and shown under the buttons.
"""

from __future__ import annotations

import json
import shlex
import sys
import textwrap
from pathlib import Path

import bpy
from bpy.props import BoolProperty, EnumProperty, IntProperty, StringProperty

from . import backend_setup, compat

TIMER_INTERVAL = 0.1
WRAP_WIDTH = 100       # characters per label line (labels do not wrap by themselves)
MAX_PROBLEM_LINES = 12

# The one set-up or check running now (there is at most one): backend_setup.BackendSetup or BackendCheck.
_RUNNING: dict[str, object] = {}


def running_task():
    """The set-up or check task running now, or None."""
    task = _RUNNING.get("task")
    return task if task is not None and not task.finished else None


def backend_venv_dir() -> Path:
    """The backend's own environment: ``<add-on user folder>/backend-venv`` (an extension's
    ``extension_path_user``; a legacy add-on's config folder), never Blender's Python."""
    return compat.user_data_dir(__package__, subdir="backend-venv")


def _preferences(context):
    addon = context.preferences.addons.get(__package__)
    return addon.preferences if addon is not None else None


def python_to_check(prefs) -> str:
    """What jobs will run: the Backend Python preference, or the Python running Blender when it is empty."""
    return bpy.path.abspath(prefs.backend_python) if prefs.backend_python else sys.executable


def setup_config(prefs) -> backend_setup.SetupConfig:
    """The set-up's options from the preferences. Raises ValueError with a message for the user."""
    try:
        pip_args = tuple(shlex.split(prefs.setup_pip_args))
    except ValueError as exc:
        raise ValueError(f"Extra pip Arguments cannot be read ({exc}): fix the quotes") from None
    wheels = bpy.path.abspath(prefs.setup_wheels_dir) if prefs.setup_wheels_dir else ""
    if wheels and not Path(wheels).is_dir():
        raise ValueError(f"Wheel Folder {wheels} does not exist: choose an existing folder, or clear it")
    return backend_setup.SetupConfig(
        venv_dir=str(backend_venv_dir()),
        base_python=bpy.path.abspath(prefs.setup_base_python) if prefs.setup_base_python else "",
        find_links=(wheels,) if wheels else (),
        extra_pip_args=pip_args)


def _redraw_preferences(context) -> None:
    for window in context.window_manager.windows:
        screen = window.screen
        for area in (screen.areas if screen is not None else ()):
            if area.type == 'PREFERENCES':
                area.tag_redraw()


class _BackendTaskOperator:
    """Shared by Set Up Backend and Check Backend: modal in the UI, synchronous in background mode."""

    @classmethod
    def poll(cls, context):
        if running_task() is not None:
            cls.poll_message_set("A backend set-up or check is running: wait for it or press Cancel")
            return False
        return True

    def make_task(self, context):
        raise NotImplementedError

    def apply(self, context, result: backend_setup.TaskResult) -> None:
        """Keep the result in the preferences (main thread)."""
        prefs = _preferences(context)
        prefs.backend_status = json.dumps(result.status_record())
        context.preferences.is_dirty = True  # saved with the preferences (auto-save or Save Preferences)

    def _finish(self, context, result: backend_setup.TaskResult) -> set[str]:
        _RUNNING.pop("task", None)
        if not result.cancelled:
            self.apply(context, result)
        _redraw_preferences(context)
        if result.ok:
            self.report({'INFO'}, result.message)
            return {'FINISHED'}
        self.report({'WARNING'} if result.cancelled else {'ERROR'}, result.message)
        return {'CANCELLED'}

    def _task_or_report(self, context):
        try:
            return self.make_task(context)
        except ValueError as exc:
            self.report({'ERROR'}, str(exc))
            return None

    def execute(self, context):
        task = self._task_or_report(context)
        if task is None:
            return {'CANCELLED'}
        _RUNNING["task"] = task
        printed = [""]

        def print_step(event) -> None:
            # Background mode has no preferences window: say which step runs (once per step).
            step = getattr(event, "step", "")
            if bpy.app.background and step and step != printed[0]:
                printed[0] = step
                print(f"Neural Fields: {self.bl_label}: {step}", flush=True)

        try:
            result = task.run(on_event=print_step)
        finally:
            _RUNNING.pop("task", None)
        return self._finish(context, result)

    def invoke(self, context, event):
        if bpy.app.background or context.window is None:
            return self.execute(context)
        task = self._task_or_report(context)
        if task is None:
            return {'CANCELLED'}
        _RUNNING["task"] = task.start()
        self._task = task
        self._timer = context.window_manager.event_timer_add(TIMER_INTERVAL, window=context.window)
        context.window_manager.modal_handler_add(self)
        _redraw_preferences(context)
        return {'RUNNING_MODAL'}

    def modal(self, context, event):
        task = self._task
        if event.type == 'ESC' and event.value == 'PRESS':
            task.cancel()
            return {'RUNNING_MODAL'}
        if event.type != 'TIMER':
            return {'PASS_THROUGH'}
        if task.poll():
            _redraw_preferences(context)
        if not task.finished:
            return {'PASS_THROUGH'}
        context.window_manager.event_timer_remove(self._timer)
        self._timer = None
        return self._finish(context, task.result)

    def cancel(self, context):
        # Blender ends the modal operator (file load, window closed): stop the child process too.
        task = getattr(self, "_task", None)
        if task is not None:
            task.cancel()
            _RUNNING.pop("task", None)
        timer = getattr(self, "_timer", None)
        if timer is not None:
            context.window_manager.event_timer_remove(timer)
            self._timer = None


class NEURALFIELDS_OT_setup_backend(_BackendTaskOperator, bpy.types.Operator):
    """Create the backend's own Python environment in the add-on's user folder, install torch (the CUDA build when an NVIDIA GPU is present, else the CPU build) and the backend's libraries, check it, and use it as Backend Python"""

    bl_idname = "neural_fields.setup_backend"
    bl_label = "Set Up Backend"

    def make_task(self, context):
        return backend_setup.BackendSetup(setup_config(_preferences(context)))

    def apply(self, context, result):
        super().apply(context, result)
        if result.ok:
            _preferences(context).backend_python = result.python


class NEURALFIELDS_OT_check_backend(_BackendTaskOperator, bpy.types.Operator):
    """Check that Backend Python can run the backend: torch and the libraries import, the device, a tiny training run"""

    bl_idname = "neural_fields.check_backend"
    bl_label = "Check Backend"

    def make_task(self, context):
        log = backend_venv_dir().parent / "backend-check.log"
        return backend_setup.BackendCheck(python=python_to_check(_preferences(context)), log_path=log)


class NEURALFIELDS_OT_cancel_backend_task(bpy.types.Operator):
    """Stop the running backend set-up or check (a set-up resumes where it stopped when started again)"""

    bl_idname = "neural_fields.cancel_backend_task"
    bl_label = "Cancel"

    @classmethod
    def poll(cls, context):
        if running_task() is None:
            cls.poll_message_set("No backend set-up or check is running")
            return False
        return True

    def execute(self, context):
        task = running_task()
        if task is not None:
            task.cancel()
        return {'FINISHED'}


def _on_max_parallel_jobs(prefs, _context) -> None:
    _apply_job_limit(prefs)


class NeuralFieldsPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    backend_python: StringProperty(
        name="Backend Python",
        description=("Python interpreter that has torch, numpy, scikit-image, trimesh, safetensors, scipy and Pillow. "
                     "Set Up Backend makes one and sets this. Empty: the Python running Blender"),
        subtype='FILE_PATH',
        default="",
    )
    device: EnumProperty(
        name="Device",
        description="Where the backend trains",
        items=[
            ('auto', "Auto", "CUDA when the backend Python sees a GPU, the CPU otherwise"),
            ('cpu', "CPU", "Always the CPU (slow, but works everywhere)"),
            ('cuda', "CUDA", "An NVIDIA GPU (the CPU, with a warning, when the backend sees none)"),
        ],
        default='auto',
    )
    jobs_dir: StringProperty(
        name="Jobs Folder",
        description="Where job folders (inputs, logs, checkpoints, results) are written. Empty: the add-on's user folder",
        subtype='DIR_PATH',
        default="",
    )
    max_parallel_jobs: IntProperty(
        name="Jobs at Once",
        description=("How many trainings (conversions, NeRF and image fits, resumes) run at the same time; more "
                     "wait in a queue and start when one ends. Renders, extractions and resamples never wait"),
        default=1, min=1, max=8,
        update=_on_max_parallel_jobs,
    )
    keep_jobs_on_quit: BoolProperty(
        name="Keep Jobs Running When Blender Quits",
        description=("Off: running jobs stop cleanly when Blender quits. On: they keep running, and Blender "
                     "re-attaches to them when the .blend file is opened again"),
        default=False,
    )
    backend_status: StringProperty(
        name="Backend Status",
        description="The last Set Up Backend / Check Backend result (JSON)",
        default="",
    )
    show_setup_options: BoolProperty(
        name="Set-Up Options",
        description="Show the options of Set Up Backend (base Python, offline wheels, pip arguments)",
        default=False,
    )
    setup_base_python: StringProperty(
        name="Base Python",
        description=("Python 3.10-3.12 that creates the backend's environment. Empty: Blender's Python when it can "
                     "create environments, else python3.11 / python3 on PATH"),
        subtype='FILE_PATH',
        default="",
    )
    setup_wheels_dir: StringProperty(
        name="Wheel Folder",
        description=("A folder of downloaded wheels (torch and the libraries) that pip searches first "
                     "(pip --find-links): for machines without internet"),
        subtype='DIR_PATH',
        default="",
    )
    setup_pip_args: StringProperty(
        name="Extra pip Arguments",
        description="Added to every pip install of the set-up, e.g. --proxy http://proxy:3128",
        default="",
    )

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        layout.prop(self, "backend_python")
        if not self.backend_python:
            layout.label(text=f"Using: {sys.executable}", icon='INFO')
        row = layout.row(align=True)
        row.operator(NEURALFIELDS_OT_setup_backend.bl_idname, icon='IMPORT')
        row.operator(NEURALFIELDS_OT_check_backend.bl_idname, icon='CHECKMARK')
        task = running_task()
        if task is not None:
            _draw_progress(layout, task)
        else:
            _draw_status(layout, backend_setup.status_from_json(self.backend_status))
        box = layout.box()
        box.prop(self, "show_setup_options", icon='TRIA_DOWN' if self.show_setup_options else 'TRIA_RIGHT',
                 emboss=False)
        if self.show_setup_options:
            box.prop(self, "setup_base_python")
            box.prop(self, "setup_wheels_dir")
            box.prop(self, "setup_pip_args")
            box.label(text=f"Environment: {backend_venv_dir()}", icon='FILE_FOLDER')
        layout.prop(self, "device")
        layout.prop(self, "jobs_dir")
        if not self.jobs_dir:
            from .conversion import default_jobs_root
            layout.label(text=f"Using: {default_jobs_root()}", icon='INFO')
        layout.prop(self, "max_parallel_jobs")
        layout.prop(self, "keep_jobs_on_quit")


def _apply_job_limit(prefs) -> None:
    """Jobs at Once changed: the runner's limit follows at once (a raise starts queued jobs now)."""
    from . import runner
    runner.set_max_parallel(prefs.max_parallel_jobs)


def _draw_progress(layout, task) -> None:
    progress = task.progress
    step = progress.step or "Starting"
    text = f"{step}: {progress.fraction * 100:.0f}%" + (" (cancelling)" if task.cancel_requested else "")
    compat.progress_bar(layout, factor=progress.fraction, text=text)
    if progress.line:
        layout.label(text=textwrap.shorten(progress.line, WRAP_WIDTH, placeholder="..."))
    layout.operator(NEURALFIELDS_OT_cancel_backend_task.bl_idname, text="Cancel (Esc)", icon='CANCEL')


def _draw_status(layout, status: dict | None) -> None:
    box = layout.box()
    if status is None:
        box.label(text="Not checked yet: press Check Backend, or Set Up Backend to install torch in its own "
                       "environment", icon='INFO')
        return
    if status.get("ok"):
        box.label(text=f"Backend works: torch {status.get('torch')} on {status.get('device')}", icon='CHECKMARK')
        box.label(text=f"Python {status.get('python_version')}: {status.get('python')}")
    else:
        lines = []
        for problem in status.get("problems") or [status.get("message", "")]:
            for paragraph in problem.splitlines():  # a pip error keeps its last lines, one per label
                lines += textwrap.wrap(paragraph, WRAP_WIDTH) or [""]
        box.label(text=lines[0] if lines else "Backend problem", icon='ERROR')
        for line in lines[1:MAX_PROBLEM_LINES]:
            box.label(text=line)
    box.label(text=f"Checked {status.get('checked_at', '')}")


classes = (NEURALFIELDS_OT_setup_backend, NEURALFIELDS_OT_check_backend, NEURALFIELDS_OT_cancel_backend_task,
           NeuralFieldsPreferences)

_register_classes, _unregister_classes = bpy.utils.register_classes_factory(classes)


def register():
    _register_classes()
    try:   # a saved Jobs at Once applies from the start, before any job reads it
        prefs = bpy.context.preferences.addons[__package__].preferences
        _apply_job_limit(prefs)
    except (KeyError, AttributeError):
        pass


def unregister():
    task = running_task()
    if task is not None:  # disabling the add-on (or quitting) stops a set-up's pip too
        task.cancel()
        task.wait(timeout=backend_setup.KILL_AFTER + 1.0)
    _RUNNING.clear()
    _unregister_classes()
