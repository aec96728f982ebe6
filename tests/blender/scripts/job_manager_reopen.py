"""Jobs panel, second half: a fresh Blender on "another machine" (another jobs folder) opens the
.blend whose job folder is gone; the packed field is restored and re-extract works."""

import time
from pathlib import Path

import bpy

import bl_common as common


def main(args):
    common.setup(args["zip"])
    prefs = common.preferences()
    prefs.jobs_dir = args["jobs_dir"]
    prefs.device = "cpu"
    bpy.ops.wm.open_mainfile(filepath=args["blend"])      # load_post restores the packed field
    manager = common.addon_module("job_manager")
    registry = common.addon_module("job_registry")
    first = bpy.data.objects["Ball_sdf"]
    job_dir = Path(first[registry.JOB_KEY])
    out = {"job_dir": str(job_dir), "restored_files": sorted(p.relative_to(job_dir).as_posix()
                                                            for p in job_dir.rglob("*") if p.is_file()),
           "listed": [(info.name, info.status) for info in manager.list_jobs(bpy.context, fresh=True)]}
    started = time.monotonic()
    out["reextract_return"] = sorted(bpy.ops.neural_fields.job_reextract(job=str(job_dir),
                                                                         resolution=args["resolution"]))
    out["reextract_seconds"] = time.monotonic() - started
    made = bpy.data.objects.get(f"Ball_sdf_{args['resolution']}.001") or bpy.data.objects.get(
        f"Ball_sdf_{args['resolution']}")
    out["objects"] = sorted(obj.name for obj in bpy.data.objects)
    out["made_vertices"] = len(made.data.vertices) if made else 0
    out["made_job"] = made.get(registry.JOB_KEY) if made else None
    return out


common.run_main(main)
