"""Queue N real mesh conversions at once from one Blender session and drive them like the modal
operators do (operators.timer_tick per job, finish_job when one ends), with the real backend.

Each source is a different primitive, moved, rotated and scaled differently, so a result put
on the wrong source would be far from it. After all jobs are queued, one queued source's mesh
is edited: its job must still convert the mesh as it was when it was queued.
"""

import json
import time

import bpy
import numpy as np

import bl_common as common

SHAPES = [
    ("cube", lambda: bpy.ops.mesh.primitive_cube_add(size=1.0)),
    ("ico", lambda: bpy.ops.mesh.primitive_ico_sphere_add(subdivisions=2, radius=0.6)),
    ("cone", lambda: bpy.ops.mesh.primitive_cone_add(vertices=24, radius1=0.6, depth=1.2)),
    ("cylinder", lambda: bpy.ops.mesh.primitive_cylinder_add(vertices=24, radius=0.4, depth=1.4)),
    ("torus", lambda: bpy.ops.mesh.primitive_torus_add(major_radius=0.6, minor_radius=0.25)),
    ("monkey", lambda: bpy.ops.mesh.primitive_monkey_add(size=1.2)),
    ("uv", lambda: bpy.ops.mesh.primitive_uv_sphere_add(segments=24, ring_count=12, radius=0.5)),
    ("box", lambda: bpy.ops.mesh.primitive_cube_add(size=0.8)),
    ("cone2", lambda: bpy.ops.mesh.primitive_cone_add(vertices=16, radius1=0.3, radius2=0.5, depth=0.9)),
    ("torus2", lambda: bpy.ops.mesh.primitive_torus_add(major_radius=0.5, minor_radius=0.15)),
]


class Reporter:
    """Stands in for the operator instance finish_job() reports to."""

    def __init__(self):
        self.reports = []

    def report(self, level, message):
        self.reports.append([sorted(level)[0], message])


def make_sources(count):
    sources = []
    for index in range(count):
        name, add = SHAPES[index % len(SHAPES)]
        add()
        obj = bpy.context.active_object
        obj.name = f"Q{index:02d}_{name}"
        obj.location = (3.0 * (index % 5) - 6.0, 3.0 * (index // 5) - 1.5, 0.2 * index)
        obj.rotation_euler = (0.2 * index, 0.1, 0.3 * index)
        obj.scale = (1.0 + 0.1 * index, 1.0, 0.8 + 0.05 * index)
        sources.append(obj)
    bpy.context.view_layer.update()
    return sources


def main(args):
    common.setup(args["zip"])
    prefs = common.preferences()
    prefs.device = "cpu"
    prefs.jobs_dir = args["jobs_dir"]
    prefs.max_parallel_jobs = args["limit"]
    settings = bpy.context.scene.neural_fields
    settings.preset = "fast"
    settings.resolution = args["resolution"]
    settings.max_steps = args["max_steps"]
    conversion = common.addon_module("conversion")
    operators = common.addon_module("operators")
    job_manager = common.addon_module("job_manager")
    runner = common.addon_module("runner")
    state = bpy.context.window_manager.neural_fields_state

    sources = make_sources(args["count"])
    meshes = {}
    for obj in sources:   # what each job must convert: the mesh as it was when it was queued
        meshes[obj.name] = common.world_triangles(obj)

    started = time.monotonic()
    jobs = []
    for obj in sources:
        common.make_active(obj)
        assert bpy.ops.neural_fields.mesh_to_sdf.poll(), "the button is disabled while a conversion runs"
        jobs.append(conversion.start_conversion(bpy.context, obj))
        operators._show_progress(bpy.context, jobs[-1])
    queue_seconds = time.monotonic() - started
    out = {"limit": runner.max_parallel(), "queue_seconds": queue_seconds,
           "queued": [job.queued for job in jobs], "texts": [job.status_text for job in jobs],
           "jobs_listed": {info.source: [info.status, info.message]
                           for info in job_manager.list_jobs(bpy.context, fresh=True)},
           "state_after_queueing": {"running": state.running, "running_count": state.running_count,
                                    "queued_count": state.queued_count, "source": state.source_name,
                                    "text": state.status_text}}

    # Edit a queued source after queueing: its job keeps the snapshot.
    edited = sources[-1]
    coords = np.empty(len(edited.data.vertices) * 3, np.float32)
    edited.data.vertices.foreach_get("co", coords)
    coords = coords.reshape(-1, 3)
    coords[:, 0] += 2.0
    edited.data.vertices.foreach_set("co", coords.ravel())
    edited.data.update()
    out["edited"] = edited.name
    edited_v, edited_f = common.world_triangles(edited)

    reporter = Reporter()
    finished = {}
    lead_sources = []          # the panel's progress state after every round of ticks
    queued_counts = []
    deadline = time.monotonic() + args["timeout"]
    while len(finished) < len(jobs):
        if time.monotonic() > deadline:
            raise RuntimeError(f"not all jobs finished within {args['timeout']} s: "
                               f"{[(job.source_name, job.status_text) for job in jobs]}")
        for job in jobs:
            if job.source_name in finished:
                continue
            if operators.timer_tick(bpy.context, job):
                returned = operators.finish_job(reporter, bpy.context, job)
                finished[job.source_name] = {"return": sorted(returned), "status": job.status,
                                             "at": time.monotonic() - started}
        if state.running:
            lead_sources.append(state.source_name)
            queued_counts.append(state.queued_count)
        time.sleep(0.05)
    out["seconds"] = time.monotonic() - started
    out["finished"] = finished
    out["reports"] = reporter.reports
    out["lead_sources"] = [name for i, name in enumerate(lead_sources) if i == 0 or lead_sources[i - 1] != name]
    out["queued_counts"] = [count for i, count in enumerate(queued_counts) if i == 0 or queued_counts[i - 1] != count]
    out["state_end"] = {"running": state.running, "last_status": state.last_status,
                        "last_message": state.last_message, "queued_count": state.queued_count}
    out["left_in_queue"] = len(runner.queued_runners())

    arrays = {"edited_v": edited_v, "edited_f": edited_f}
    results = {}
    for index, (obj, job) in enumerate(zip(sources, jobs)):
        new = bpy.data.objects.get(f"{obj.name}_sdf")
        info = {"job": str(job.job_dir), "new": new.name if new else None}
        with open(job.job_dir / "result.json") as handle:
            info["result_status"] = json.load(handle)["status"]
        info["log"] = (job.job_dir / "backend.log").read_text(errors="replace").splitlines()
        if new is not None:
            info["same_matrix"] = bool(np.allclose(np.array(new.matrix_world), np.array(obj.matrix_world), atol=1e-6))
            info["collections"] = [c.name for c in new.users_collection]
            new_v, new_f = common.world_triangles(new)
            arrays[f"new{index}_v"], arrays[f"new{index}_f"] = new_v, new_f
        source_v, source_f = meshes[obj.name]
        arrays[f"source{index}_v"], arrays[f"source{index}_f"] = source_v, source_f
        results[obj.name] = info
    out["results"] = results
    np.savez(f"{args['work']}/queue_meshes.npz", **arrays)
    return out


common.run_main(main)
