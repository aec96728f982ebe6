"""Operators: Mesh to Neural Field (SDF or occupancy; modal in the UI, synchronous in background mode) and Cancel.

Both modes run the same functions from ``conversion``: start_conversion -> ConversionJob.poll /
wait -> ConversionJob.finish. The modal path drains a bounded number of messages per timer
tick, so Blender never freezes while the backend trains.
"""

from __future__ import annotations

import time

import bpy

from . import conversion
from .conversion import ConversionError

TIMER_INTERVAL = 0.1
MESSAGES_PER_TICK = 50


def _state(context):
    return context.window_manager.neural_fields_state


def _redraw_sidebars(context) -> None:
    window_manager = context.window_manager
    for window in window_manager.windows:
        screen = window.screen
        if screen is None:
            continue
        for area in screen.areas:
            if area.type == 'VIEW_3D':
                for region in area.regions:
                    if region.type == 'UI':
                        region.tag_redraw()


def _show_progress(context, job: conversion.ConversionJob) -> None:
    state = _state(context)
    state.running = not job.finished
    state.progress = job.progress
    state.status_text = job.status_text
    state.source_name = job.source_name
    workspace = getattr(context, "workspace", None)
    if bpy.app.background:
        _print_progress(job)
    elif workspace is not None:
        workspace.status_text_set(f"Neural Fields: {job.source_name}: {job.status_text}  (Esc to cancel)")
    _redraw_sidebars(context)


_last_print = [0.0, ""]


def _print_progress(job: conversion.ConversionJob, interval: float = 5.0) -> None:
    """Background mode has no status bar: print the progress, at most every ``interval`` s."""
    now = time.monotonic()
    if job.finished or (job.status_text != _last_print[1] and now - _last_print[0] >= interval):
        _last_print[:] = [now, job.status_text]
        print(f"Neural Fields: {job.source_name}: {job.status_text}", flush=True)


def _clear_progress(context, job: conversion.ConversionJob, status: str, message: str) -> None:
    state = _state(context)
    state.running = False
    state.progress = 1.0 if status == "done" else state.progress
    state.status_text = ""
    state.last_status = status
    state.last_message = message
    state.last_job_dir = str(job.job_dir)
    if job.result is not None:
        state.last_result_json = conversion.result_json_text(job.result)
    workspace = getattr(context, "workspace", None)
    if workspace is not None and not bpy.app.background:
        workspace.status_text_set(None)
    _redraw_sidebars(context)


def finish_job(operator, context, job: conversion.ConversionJob) -> set[str]:
    """Import (or report) a finished job; the operator's return value."""
    try:
        new_object = job.finish(context)
    except ConversionError as exc:
        message = str(exc)
        _clear_progress(context, job, "failed", message.splitlines()[0])
        operator.report({'ERROR'}, message)
        return {'CANCELLED'}
    if new_object is None:
        _clear_progress(context, job, "cancelled", "Cancelled")
        operator.report({'WARNING'}, f"{job.label} of '{job.source_name}' cancelled")
        return {'CANCELLED'}
    summary = ", ".join(f"{label} {value}" for label, value in conversion.metrics_summary(job.result)[:3])
    message = f"Created '{new_object.name}'" + (f" ({summary})" if summary else "")
    _clear_progress(context, job, "done", message)
    operator.report({'INFO'}, message)
    return {'FINISHED'}


class NEURALFIELDS_OT_mesh_to_sdf(bpy.types.Operator):
    """Train a neural field (signed distance or occupancy, the panel's Representation) on the active mesh (modifiers applied) and add the mesh extracted from it"""

    bl_idname = "neural_fields.mesh_to_sdf"  # the name since 0.1.0, when SDF was the only representation
    bl_label = "Mesh to Neural Field"
    bl_options = {'REGISTER', 'UNDO'}

    @classmethod
    def poll(cls, context):
        problem = conversion.object_problem(context.active_object)
        if problem is None and conversion.active_job() is not None:
            problem = "A conversion is already running: wait for it or press Esc to cancel it"
        if problem:
            cls.poll_message_set(problem)
            return False
        return True

    def _start(self, context):
        try:
            job = conversion.start_conversion(context, context.active_object)
        except ConversionError as exc:
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
        window_manager = context.window_manager
        self._timer = window_manager.event_timer_add(TIMER_INTERVAL, window=context.window)
        window_manager.modal_handler_add(self)
        return {'RUNNING_MODAL'}

    def modal(self, context, event):
        job = self._job
        if event.type == 'ESC' and event.value == 'PRESS':
            job.cancel()
            _show_progress(context, job)
            return {'RUNNING_MODAL'}
        if event.type != 'TIMER':
            return {'PASS_THROUGH'}
        if job.poll(max_messages=MESSAGES_PER_TICK) or job.finished:
            _show_progress(context, job)
        if not job.finished:
            return {'PASS_THROUGH'}
        context.window_manager.event_timer_remove(self._timer)
        self._timer = None
        return finish_job(self, context, job)

    def cancel(self, context):
        # Blender ends the modal operator (file load, window closed): stop the backend too.
        # A job started to outlive Blender (keep_running) goes on: the Jobs panel re-attaches to it.
        job = getattr(self, "_job", None)
        if job is not None:
            if not job.runner.keep_running:
                job.cancel()
            conversion.forget(job)
            _state(context).running = False
            workspace = getattr(context, "workspace", None)
            if workspace is not None:
                workspace.status_text_set(None)
        timer = getattr(self, "_timer", None)
        if timer is not None:
            context.window_manager.event_timer_remove(timer)
            self._timer = None


class NEURALFIELDS_OT_cancel(bpy.types.Operator):
    """Stop the running neural field conversion"""

    bl_idname = "neural_fields.cancel"
    bl_label = "Cancel Conversion"

    @classmethod
    def poll(cls, context):
        if conversion.active_job() is None:
            cls.poll_message_set("No conversion is running")
            return False
        return True

    def execute(self, context):
        job = conversion.active_job()
        if job is not None:
            job.cancel()
            _show_progress(context, job)
        return {'FINISHED'}


class NEURALFIELDS_OT_open_job_folder(bpy.types.Operator):
    """Open the last job's folder (logs, checkpoints, result.json) in the file browser"""

    bl_idname = "neural_fields.open_job_folder"
    bl_label = "Open Job Folder"

    @classmethod
    def poll(cls, context):
        return bool(_state(context).last_job_dir)

    def execute(self, context):
        bpy.ops.wm.path_open(filepath=_state(context).last_job_dir)
        return {'FINISHED'}


classes = (NEURALFIELDS_OT_mesh_to_sdf, NEURALFIELDS_OT_cancel, NEURALFIELDS_OT_open_job_folder)

register, unregister = bpy.utils.register_classes_factory(classes)
