"""Two real NeRF trainings at once (Jobs at Once 2) from one Blender session, polled as the
modal operators poll them: which training's preview does the panel's image show, tick by tick?"""

import time
from pathlib import Path

import bpy

import bl_common as common


def main(args):
    common.setup(args["zip"])
    prefs = common.preferences()
    prefs.device = "cpu"
    prefs.jobs_dir = args["jobs_dir"]
    prefs.max_parallel_jobs = 2
    nerf = common.addon_module("nerf")
    context = bpy.context
    settings = context.scene.neural_fields_nerf
    settings.preset = 'fast'
    settings.preview_seconds = 1.0
    tasks = []
    for folder, steps in zip(args["datasets"], args["steps"]):
        settings.dataset_dir = folder
        settings.max_steps = steps
        task, _warnings = nerf.start_training(context)
        tasks.append(task)
    job_dirs = [Path(task.job_dir).resolve() for task in tasks]
    state = context.window_manager.neural_fields_nerf_state
    ticks = []   # per tick with a preview shown: [index of the job it belongs to, which jobs were running]
    deadline = time.monotonic() + args.get("seconds", 240)
    while not all(task.finished for task in tasks) and time.monotonic() < deadline:
        running = [not task.finished and not task.runner.is_queued for task in tasks]
        for task in tasks:
            if not task.finished:
                task.poll(context)
        image = bpy.data.images.get(state.preview_image) if state.preview_image else None
        if image is not None:
            path = Path(bpy.path.abspath(image.filepath)).resolve()
            owner = next((index for index, job_dir in enumerate(job_dirs) if job_dir in path.parents), -1)
            ticks.append([owner, running])
        time.sleep(0.05)
    finished = [task.finished for task in tasks]
    endings = []
    for task in tasks:
        try:
            endings.append(list(task.finish(context)))
        except Exception as exc:   # a failed training: the test shows why
            endings.append(["ERROR", str(exc)])
    return {"ticks": ticks, "finished": finished, "endings": endings}


common.run_main(main)
