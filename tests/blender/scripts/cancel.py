"""Start a conversion through the bpy-level API, cancel it at the first progress message."""

import time

import bpy

import bl_common as common


def main(args):
    common.setup(args["zip"])
    conversion = common.addon_module("conversion")
    settings = bpy.context.scene.neural_fields
    settings.resolution = 64
    settings.max_steps = 100000          # far longer than the test waits: only a cancel ends it
    source = common.add_suzanne(levels=1)
    before = common.scene_snapshot()

    job = conversion.start_conversion(bpy.context, source)
    seen = []
    first_progress = None
    deadline = time.monotonic() + 180
    while first_progress is None and not job.finished and time.monotonic() < deadline:
        for message in job.poll():
            seen.append(message)
            if message["type"] == "progress" and first_progress is None:
                first_progress = message
        time.sleep(0.05)
    cancelled_at = time.monotonic()
    job.cancel()
    while not job.finished and time.monotonic() < deadline + 60:
        seen += job.poll()
        time.sleep(0.05)
    cancel_seconds = time.monotonic() - cancelled_at

    # Same code path as the modal operator's last timer tick.
    operators = common.addon_module("operators")

    class FakeOperator:  # finish_job only calls report()
        reports = []

        def report(self, kind, text):
            self.reports.append((sorted(kind), text))

    operator_return = operators.finish_job(FakeOperator(), bpy.context, job)
    after = common.scene_snapshot()
    state = bpy.context.window_manager.neural_fields_state
    return {"first_progress": first_progress, "status": job.status, "finish_returned": job.finish(bpy.context),
            "operator_return": sorted(operator_return), "reports": FakeOperator.reports,
            "scene_unchanged": before == after, "cancel_seconds": cancel_seconds,
            "messages": [m["type"] for m in seen], "synthesized": [m for m in seen if m.get("synthesized")],
            "result_status": conversion.jobs.read_status(job.job_dir)["status"],
            "state": {"last_status": state.last_status, "running": state.running}}


common.run_main(main)
