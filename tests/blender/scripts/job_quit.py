"""Start a conversion with the real backend, wait until it trains, save the .blend, then let this
Blender exit (no add-on disable by the script: what happens at quit is under test)."""

import json
import sys
import time
import traceback
from pathlib import Path

import bpy

import bl_common as common

args = common.load_args()
data = {}
started = time.monotonic()
try:
    common.setup(args["zip"])
    prefs = common.preferences()
    prefs.jobs_dir = args["jobs_dir"]
    prefs.device = "cpu"
    prefs.keep_jobs_on_quit = args["keep"]
    settings = bpy.context.scene.neural_fields
    settings.preset = "fast"
    settings.resolution = 32
    settings.max_steps = args["max_steps"]
    bpy.ops.mesh.primitive_ico_sphere_add(subdivisions=2, radius=0.8, location=(1.0, -2.0, 0.5))
    ball = bpy.context.active_object
    ball.name = "Ball"
    conversion = common.addon_module("conversion")
    job = conversion.start_conversion(bpy.context, ball)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not job.finished and not job.total:
        job.poll()
        time.sleep(0.05)
    assert job.total and not job.finished, f"no training progress: {job.status_text} {job.error_message}"
    pid_path = Path(job.job_dir) / "backend.pid"
    while not pid_path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    blend = str(Path(args["work"]) / "scene.blend")
    bpy.ops.wm.save_as_mainfile(filepath=blend)
    data.update(job_dir=str(job.job_dir), backend_pid=job.runner.process.pid, blend=blend,
                pid_file=json.loads(pid_path.read_text()), step=job.step,
                pending=[note.job_name for note in bpy.context.scene.neural_fields_jobs.pending])
except BaseException:
    data["exception"] = traceback.format_exc()
data["elapsed_before_exit"] = time.monotonic() - started
with open(args["result"], "w") as handle:
    json.dump(data, handle, indent=1, default=str)
print("Neural Fields test: exiting with the job running", flush=True)
sys.exit(0)   # a normal interpreter exit: Blender's exit path runs, the add-on stays enabled
