"""A fresh Blender opens a .blend whose job still runs (kept running after the Blender that
started it quit): the Jobs panel follows it and imports the result when it is done."""

from pathlib import Path

import bpy

import bl_common as common


def main(args):
    common.setup(args["zip"])
    prefs = common.preferences()
    prefs.jobs_dir = args["jobs_dir"]
    bpy.ops.wm.open_mainfile(filepath=args["blend"])
    manager = common.addon_module("job_manager")
    registry = common.addon_module("job_registry")
    job_dir = Path(args["job_dir"])
    out = {"status_on_open": registry.read_job_info(job_dir).status,
           "objects_on_open": sorted(obj.name for obj in bpy.data.objects),   # imported on open if done
           "pending_on_open": [note.job_name for _scene, note in manager.pending_jobs()],
           "listed": [(info.name, info.status) for info in manager.list_jobs(bpy.context, fresh=True)]}
    out["reports"] = manager.wait_pending(bpy.context, timeout=240)   # background mode: no timers
    made = [obj for obj in bpy.data.objects if obj.get(registry.JOB_KEY)]
    out["imported"] = made[0].name if made else None
    out["imported_job"] = made[0].get(registry.JOB_KEY) if made else None
    out["pending_after"] = [note.job_name for _scene, note in manager.pending_jobs()]
    return out


common.run_main(main)
