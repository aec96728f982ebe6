"""Operators: Mesh to Neural Field (SDF or occupancy; modal in the UI, synchronous in background mode) and Cancel.

Both modes run the same functions from ``conversion``: start_conversion -> ConversionJob.poll /
wait -> ConversionJob.finish. The modal path runs ``timer_tick`` on every timer event: it
drains a bounded number of messages, so Blender never freezes while the backend trains,
however fast the backend prints.

Several conversions at once: pressing the button again while a conversion runs queues a new
job (the mesh is exported and the job folder written at once; the runner starts its backend
when one of the "Jobs at Once" slots frees). Each job has its own modal operator. The
sidebar's progress state always shows the *lead* job (the oldest running one) and counts the
rest, whichever job's operator writes it, so it does not flicker between jobs.

Esc: Blender hands an event to the newest modal handler first, so Esc cancels the newest
conversion still going (the last one queued); its operator consumes that press. An operator
whose job is already cancelling passes Esc on, so each further press cancels the next newest
job. The panel's Cancel All button cancels every conversion; each queued row has its own X,
and the Jobs panel's Stop stops one job.
"""

from __future__ import annotations

import time

import bpy
from bpy.props import StringProperty

from . import conversion
from .conversion import ConversionError

TIMER_INTERVAL = 0.1
MESSAGES_PER_TICK = 50
# A tick drains batches of MESSAGES_PER_TICK until the queue is empty or this much time went
# by: a backend that prints very fast is caught up with in seconds, not minutes (at 50 a
# tick, a 100k-message backlog took 2000 ticks: 200 s behind), and a tick stays under 5 ms.
TICK_BUDGET_S = 0.002


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


def _show_progress(context, job: conversion.ConversionJob | None = None) -> None:
    """Write the panel's progress state from the lead job, whichever job asks (``job`` is
    unused but says who asked): the display never flickers between jobs."""
    in_flight = conversion.jobs_in_flight()
    lead = conversion.lead_job(in_flight)
    state = _state(context)
    state.running = lead is not None
    state.queued_count = sum(1 for other in in_flight if other.queued)
    state.running_count = len(in_flight) - state.queued_count
    if lead is not None:
        state.progress = lead.progress
        state.status_text = lead.status_text
        state.source_name = lead.source_name
    workspace = getattr(context, "workspace", None)
    if bpy.app.background:
        if lead is not None:
            _print_progress(lead)
    elif workspace is not None:
        if lead is None:
            workspace.status_text_set(None)
        else:
            others = len(in_flight) - 1
            more = f"  (+{others} more)" if others else ""
            workspace.status_text_set(f"Neural Fields: {lead.source_name}: {lead.status_text}{more}  (Esc to cancel)")
    _redraw_sidebars(context)


_last_print = [0.0, ""]


def _print_progress(job: conversion.ConversionJob, interval: float = 5.0) -> None:
    """Background mode has no status bar: print the progress, at most every ``interval`` s."""
    now = time.monotonic()
    if job.finished or (job.status_text != _last_print[1] and now - _last_print[0] >= interval):
        _last_print[:] = [now, job.status_text]
        print(f"Neural Fields: {job.source_name}: {job.status_text}", flush=True)


def _clear_progress(context, job: conversion.ConversionJob, status: str, message: str) -> None:
    """``job`` ended: it becomes the panel's last result; the progress moves to the next lead job."""
    state = _state(context)
    state.last_status = status
    state.last_message = message
    state.last_job_dir = str(job.job_dir)
    if job.result is not None:
        state.last_result_json = conversion.result_json_text(job.result)
    if conversion.lead_job() is None:
        state.progress = 1.0 if status == "done" else state.progress
        state.status_text = ""
    _show_progress(context)


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


def drain(poll, *, budget: float = TICK_BUDGET_S) -> bool:
    """Call ``poll()`` (which takes one bounded batch of messages and is truthy when it got
    any) until a batch comes back empty, the job ends, or ``budget`` seconds went by. True when
    any message came. Shared by every modal operator of the add-on."""
    deadline = time.perf_counter() + budget
    got = False
    while poll():
        got = True
        if time.perf_counter() >= deadline:
            break
    return got


def timer_tick(context, job: conversion.ConversionJob) -> bool:
    """What the modal operator does on one timer event: drain the job's messages in batches of
    MESSAGES_PER_TICK for at most TICK_BUDGET_S, then, when any came, refresh the panel (from
    the lead job). True once the job is finished. No file is read here: the runner's reader
    thread already parsed the messages."""
    if drain(lambda: job.poll(max_messages=MESSAGES_PER_TICK)) or job.finished:
        _show_progress(context, job)
    return job.finished


class NEURALFIELDS_OT_mesh_to_sdf(bpy.types.Operator):
    """Train a neural field (signed distance or occupancy, the panel's Representation) on the active mesh (modifiers applied) and add the mesh extracted from it. Pressed while conversions run, it queues one more"""

    bl_idname = "neural_fields.mesh_to_sdf"  # the name since 0.1.0, when SDF was the only representation
    bl_label = "Mesh to Neural Field"
    bl_options = {'REGISTER', 'UNDO'}

    @classmethod
    def poll(cls, context):
        problem = conversion.object_problem(context.active_object)
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
        if job.queued:
            self.report({'INFO'}, f"{job.label} of '{job.source_name}': {job.status_text}")
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
        self._next_tick = 0.0
        window_manager = context.window_manager
        self._timer = window_manager.event_timer_add(TIMER_INTERVAL, window=context.window)
        window_manager.modal_handler_add(self)
        return {'RUNNING_MODAL'}

    def modal(self, context, event):
        job = self._job
        if event.type == 'ESC' and event.value == 'PRESS':
            if job.finished or job.runner.cancel_requested:
                return {'PASS_THROUGH'}   # already cancelling: this press is for the next newest job
            job.cancel()
            _show_progress(context, job)
            return {'RUNNING_MODAL'}
        if event.type != 'TIMER':
            return {'PASS_THROUGH'}
        # Every modal operator sees every window timer's events (each queued job has a timer,
        # and Python cannot tell whose timer fired): tick at most once per TIMER_INTERVAL, so
        # ten jobs cost ten ticks per interval, not a hundred.
        now = time.monotonic()
        if now < getattr(self, "_next_tick", 0.0):
            return {'PASS_THROUGH'}
        self._next_tick = now + TIMER_INTERVAL * 0.8
        if not timer_tick(context, job):
            return {'PASS_THROUGH'}
        context.window_manager.event_timer_remove(self._timer)
        self._timer = None
        return finish_job(self, context, job)

    def cancel(self, context):
        # Blender ends the modal operator (file load, window closed): stop the backend too.
        # A job started to outlive Blender (keep_running) goes on: the Jobs panel re-attaches to it.
        job = getattr(self, "_job", None)
        if job is not None:
            if not job.runner.keep_running or job.queued:
                job.cancel()
            conversion.forget(job)
            _show_progress(context)
        timer = getattr(self, "_timer", None)
        if timer is not None:
            context.window_manager.event_timer_remove(timer)
            self._timer = None


class NEURALFIELDS_OT_cancel(bpy.types.Operator):
    """Stop neural field conversions: every running and queued one, or the one named by Job"""

    bl_idname = "neural_fields.cancel"
    bl_label = "Cancel Conversion"

    job: StringProperty(name="Job", default="", options={'SKIP_SAVE'},
                        description="The job folder of the conversion to cancel. Empty: every conversion")

    @classmethod
    def poll(cls, context):
        if conversion.active_job() is None:
            cls.poll_message_set("No conversion is running")
            return False
        return True

    def execute(self, context):
        chosen = [job for job in conversion.jobs_in_flight() if not self.job or str(job.job_dir) == self.job]
        if not chosen:
            self.report({'WARNING'}, f"No conversion with the job folder {self.job} is running or queued")
            return {'CANCELLED'}
        for job in reversed(chosen):   # the queued ones first, so none of them starts meanwhile
            job.cancel()
        _show_progress(context)
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
