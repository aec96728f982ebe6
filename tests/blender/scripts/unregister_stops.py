"""Disabling the add-on while a backend runs ends the backend: no orphan processes."""

import time

import bpy

import bl_common as common


def main(args):
    common.setup(args["zip"])
    common.preferences().backend_python = args["fake_wait"]
    common.preferences().jobs_dir = args["jobs_dir"]
    conversion = common.addon_module("conversion")
    job = conversion.start_conversion(bpy.context, bpy.data.objects["Cube"])
    process = job.runner.process
    deadline = time.monotonic() + 60
    while job.runner.last_progress is None and time.monotonic() < deadline:
        job.poll()
        time.sleep(0.02)
    alive_before = process.poll() is None
    poll_while_running = bpy.ops.neural_fields.mesh_to_sdf.poll()
    second = conversion.start_conversion(bpy.context, bpy.data.objects["Cube"])  # queued behind the first
    second_queued = second.queued
    started = time.monotonic()
    common.teardown()  # the user unticks the add-on: unregister()
    stop_seconds = time.monotonic() - started
    return {"pid": process.pid, "alive_before": alive_before, "returncode_after": process.poll(),
            "stop_seconds": stop_seconds, "poll_while_running": poll_while_running, "second_queued": second_queued,
            "second_never_started": second.runner.process is None,
            "second_result_status": conversion.jobs.read_status(second.job_dir)["status"],
            "enabled_after": common.ADDON_MODULE in bpy.context.preferences.addons,
            "result_status": conversion.jobs.read_status(job.job_dir)["status"]}


common.run_main(main)
