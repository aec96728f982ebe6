"""Jobs panel, first half: convert a small mesh with the real backend, then through the Jobs
operators re-extract at another resolution (no training), re-import, open the log, pack the
field into the .blend, save it and delete the job folder (the confirmation is skipped in
background mode). job_manager_reopen.py opens the .blend in a fresh process."""

import time
from pathlib import Path

import bpy
import numpy as np

import bl_common as common


def vertex_count(obj):
    return len(obj.data.vertices)


LAYOUT_FUNCTIONS = set(bpy.types.UILayout.bl_rna.functions.keys())


class Recorder:
    """A stand-in layout (background mode draws nothing) that checks every call is a real
    UILayout function, every prop() a real property and every operator a registered one."""

    def __init__(self, calls):
        self._calls = calls

    def __setattr__(self, name, value):
        if not name.startswith("_"):
            assert name in bpy.types.UILayout.bl_rna.properties.keys(), f"UILayout has no property {name}"
        object.__setattr__(self, name, value)

    def __getattr__(self, name):
        assert name in LAYOUT_FUNCTIONS, f"UILayout has no function {name}"

        def call(*args, **kwargs):
            if name == "prop":
                assert args[1] in args[0].bl_rna.properties.keys(), f"{args[0]} has no property {args[1]}"
            if name == "operator":
                category, op = args[0].split(".")
                assert hasattr(getattr(bpy.ops, category), op), args[0]
            self._calls.append([name, [a for a in args if isinstance(a, str)],
                                {k: v for k, v in kwargs.items() if isinstance(v, (str, int, float, bool))}])
            if name == "operator":
                return OperatorRecorder(args[0], self._calls[-1][2])
            return Recorder(self._calls)
        return call


class OperatorRecorder:
    """What layout.operator() returns: its properties must be the operator's own."""

    def __init__(self, idname, record):
        category, op = idname.split(".")
        object.__setattr__(self, "_names", getattr(getattr(bpy.ops, category), op).get_rna_type().properties.keys())
        object.__setattr__(self, "_record", record)

    def __setattr__(self, name, value):
        assert name in self._names, f"the operator has no property {name}"
        self._record[name] = value


def draw_jobs_panel(manager, job_dir):
    bpy.context.window_manager.neural_fields_jobs_state.selected_job = str(job_dir)
    calls = []

    class Self:
        layout = Recorder(calls)

    manager.NEURALFIELDS_PT_jobs.draw(Self, bpy.context)
    return calls


def main(args):
    common.setup(args["zip"])
    prefs = common.preferences()
    prefs.jobs_dir = args["jobs_dir"]
    prefs.device = "cpu"
    settings = bpy.context.scene.neural_fields
    settings.preset = "fast"
    settings.resolution = args["resolution"]
    settings.max_steps = args["max_steps"]
    bpy.ops.mesh.primitive_ico_sphere_add(subdivisions=2, radius=0.8, location=(1.0, -2.0, 0.5),
                                          rotation=(0.3, 0.0, 0.7))
    source = bpy.context.active_object
    source.name = "Ball"
    manager = common.addon_module("job_manager")
    registry = common.addon_module("job_registry")
    out = {}

    # Mesh to Neural Field, cancelled once it trains (the backend saves a resume checkpoint),
    # then Resume from the Jobs panel: it finishes and imports Ball_sdf like the first run would.
    conversion = common.addon_module("conversion")
    started = time.monotonic()
    job = conversion.start_conversion(bpy.context, source)
    while not job.finished and not job.total:
        job.poll()
        time.sleep(0.05)
    job.cancel()
    job.wait(timeout=120)
    out["cancelled_finish"] = job.finish(bpy.context)
    info = registry.read_job_info(job.job_dir)
    out["cancelled_info"] = {"status": info.status, "resumable": info.resumable, "step": job.step}
    out["objects_after_cancel"] = sorted(obj.name for obj in bpy.data.objects)
    out["resume_return"] = sorted(bpy.ops.neural_fields.job_resume('INVOKE_DEFAULT', job=str(job.job_dir)))
    out["convert_seconds"] = time.monotonic() - started
    first = bpy.data.objects["Ball_sdf"]
    job_dir = Path(first[registry.JOB_KEY])
    out["job_dir"] = str(job_dir)
    out["first_props"] = {key: (value.to_dict() if hasattr(value, "to_dict") else value)
                          for key, value in first.items() if key.startswith("neural_fields")}
    out["first_vertices"] = vertex_count(first)
    out["pending_after_convert"] = len(bpy.context.scene.neural_fields_jobs.pending)
    out["listed"] = [(info.name, info.status, info.task, info.source, info.extractable)
                     for info in manager.list_jobs(bpy.context, fresh=True)]

    events = job_dir / "events.jsonl"
    events_before = events.read_text().count("\n")
    checkpoint = job_dir / "checkpoints" / "model.safetensors"
    checkpoint_mtime = checkpoint.stat().st_mtime_ns
    started = time.monotonic()
    out["reextract_return"] = sorted(bpy.ops.neural_fields.job_reextract(job=str(job_dir),
                                                                         resolution=args["reextract_resolution"]))
    out["reextract_seconds"] = time.monotonic() - started
    out["new_events"] = events.read_text().splitlines()[events_before:]
    out["checkpoint_unchanged"] = checkpoint.stat().st_mtime_ns == checkpoint_mtime
    second = bpy.data.objects.get(f"Ball_sdf_{args['reextract_resolution']}")
    out["second"] = None if second is None else {
        "vertices": vertex_count(second), "props": {key: (value.to_dict() if hasattr(value, "to_dict") else value)
                                                    for key, value in second.items() if key.startswith("neural_fields")},
        "matrix_equal": np.allclose(np.array(second.matrix_world), np.array(source.matrix_world)),
        "collections": [c.name for c in second.users_collection]}
    out["state"] = {"last_status": bpy.context.window_manager.neural_fields_jobs_state.last_status,
                    "last_message": bpy.context.window_manager.neural_fields_jobs_state.last_message}

    out["reimport_return"] = sorted(bpy.ops.neural_fields.job_reimport(job=job_dir.name))
    reimported = [obj for obj in bpy.data.objects if obj.name.startswith("Ball_sdf.")]
    out["reimported"] = [(obj.name, vertex_count(obj), np.allclose(np.array(obj.matrix_world),
                                                                    np.array(source.matrix_world)))
                         for obj in reimported]
    out["panel"] = draw_jobs_panel(manager, job_dir)
    out["log_return"] = sorted(bpy.ops.neural_fields.job_open_log(job=str(job_dir)))
    log_text = bpy.data.texts.get(f"Neural Fields log {job_dir.name}")
    out["log_has_phases"] = log_text is not None and "phase" in log_text.as_string()

    # Resume refuses a finished job with a message that says what to do.
    try:
        bpy.ops.neural_fields.job_resume(job=str(job_dir))
        out["resume_done_error"] = None
    except RuntimeError as exc:
        out["resume_done_error"] = str(exc)

    out["pack_return"] = sorted(bpy.ops.neural_fields.job_pack(job=str(job_dir)))
    packed = manager.packed_images()[job_dir.name]
    out["packed_size"] = packed.packed_file.size
    out["checkpoint_size"] = checkpoint.stat().st_size
    blend = Path(args["work"]) / "scene.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    out["blend_size"] = blend.stat().st_size

    out["delete_return"] = sorted(bpy.ops.neural_fields.job_delete('INVOKE_DEFAULT', job=str(job_dir)))
    out["job_dir_exists_after_delete"] = job_dir.exists()
    out["objects"] = sorted(obj.name for obj in bpy.data.objects)
    return out


common.run_main(main)
