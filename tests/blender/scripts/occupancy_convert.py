"""Representation: Occupancy in the panel, press Mesh to Neural Field, get <name>_occupancy on top of the source."""

import json
import time

import bpy
import numpy as np

import bl_common as common


def main(args):
    common.setup(args["zip"])
    prefs = common.preferences()
    prefs.device = "cpu"
    prefs.jobs_dir = args["jobs_dir"]
    settings = bpy.context.scene.neural_fields
    settings.representation = 'occupancy'          # the panel's choice
    settings.preset = "fast"
    settings.network = args.get("network", "hashgrid")
    settings.resolution = args["resolution"]
    settings.max_steps = args["max_steps"]

    source = common.add_suzanne(levels=args["subdivision"])
    source_before = common.object_fingerprint(source)
    objects_before = sorted(obj.name for obj in bpy.data.objects)

    started = time.monotonic()
    ret = bpy.ops.neural_fields.mesh_to_sdf('INVOKE_DEFAULT')  # background mode: runs synchronously
    seconds = time.monotonic() - started

    new = bpy.data.objects.get(f"{source.name}_occupancy")
    state = bpy.context.window_manager.neural_fields_state
    data = {"return": sorted(ret), "seconds": seconds, "new_object": new.name if new else None,
            "objects_before": objects_before, "objects_after": sorted(obj.name for obj in bpy.data.objects),
            "source_unchanged": common.object_fingerprint(source) == source_before,
            "source_matrix": [list(row) for row in source.matrix_world],
            "source_collections": [c.name for c in source.users_collection],
            "state": {"last_status": state.last_status, "last_message": state.last_message,
                      "running": state.running}}
    if new is None:
        return data
    data.update({
        "new_matrix": [list(row) for row in new.matrix_world],
        "new_collections": [c.name for c in new.users_collection],
        "active": bpy.context.view_layer.objects.active.name,
        "job": new["neural_fields_job"],
        "metrics_property": dict(new.get("neural_fields_metrics", {})),
    })
    with open(f"{new['neural_fields_job']}/job.json") as handle:
        data["job_json"] = json.load(handle)
    with open(f"{new['neural_fields_job']}/result.json") as handle:
        data["result"] = json.load(handle)
    source_v, source_f = common.world_triangles(source)
    new_v, new_f = common.world_triangles(new)
    np.savez(f"{args['work']}/meshes.npz", source_v=source_v, source_f=source_f, new_v=new_v, new_f=new_f)
    return data


common.run_main(main)
