"""Everything that must fail cleanly: a clear message, no new objects, earlier results kept.

Uses fake backend interpreters (no training) for the "earlier result" and the crash, the
system Python (no torch) for the missing-torch case.
"""

import bpy
import bl_common as common


def attempt(label, results, expect_same=True):
    """Run the operator, record its error text and whether the scene changed."""
    before = common.scene_snapshot()
    outcome = {"error": None}
    try:
        outcome["return"] = sorted(bpy.ops.neural_fields.mesh_to_sdf())
    except RuntimeError as exc:
        outcome["error"] = str(exc)
    after = common.scene_snapshot()
    outcome["scene_unchanged"] = before == after
    outcome["objects_after"] = sorted(after["objects"])
    outcome["state"] = {"last_status": bpy.context.window_manager.neural_fields_state.last_status,
                        "running": bpy.context.window_manager.neural_fields_state.running}
    results[label] = outcome


def main(args):
    common.setup(args["zip"])
    prefs = common.preferences()
    prefs.jobs_dir = args["jobs_dir"]
    results = {}
    cube = bpy.data.objects["Cube"]

    # Poll: nothing active, then a camera.
    common.make_active(None)
    results["poll_nothing"] = {"poll": bpy.ops.neural_fields.mesh_to_sdf.poll()}
    attempt("nothing_selected", results)
    common.make_active(bpy.data.objects["Camera"])
    results["poll_camera"] = {"poll": bpy.ops.neural_fields.mesh_to_sdf.poll()}
    attempt("camera", results)

    # An earlier result (fake backend that echoes the input).
    prefs.backend_python = args["fake_echo"]
    common.make_active(cube)
    before = common.scene_snapshot()
    ret = bpy.ops.neural_fields.mesh_to_sdf()
    earlier = bpy.data.objects.get("Cube_sdf")
    results["earlier"] = {"return": sorted(ret), "exists": earlier is not None,
                          "cube_unchanged": before["objects"]["Cube"] == common.object_fingerprint(cube),
                          "active": bpy.context.view_layer.objects.active.name,
                          "job": earlier.get("neural_fields_job") if earlier else None,
                          "metrics": dict(earlier.get("neural_fields_metrics", {})) if earlier else None,
                          "collections": [c.name for c in earlier.users_collection] if earlier else None,
                          "polygons": len(earlier.data.polygons) if earlier else 0,
                          "cube_triangles": sum(len(p.vertices) - 2 for p in cube.data.polygons),
                          "state": bpy.context.window_manager.neural_fields_state.last_status}

    # An empty mesh, and one whose modifiers remove every face.
    empty = bpy.data.objects.new("EmptyMesh", bpy.data.meshes.new("EmptyMesh"))
    bpy.context.scene.collection.objects.link(empty)
    common.make_active(empty)
    attempt("empty_mesh", results)

    # Zero area: coincident and collinear vertices.
    for label, coords in (("coincident", [(1, 1, 1)] * 3), ("collinear", [(0, 0, 0), (1, 1, 0), (3, 3, 0)])):
        mesh = bpy.data.meshes.new(label)
        mesh.from_pydata(coords, [], [(0, 1, 2)])
        obj = bpy.data.objects.new(label, mesh)
        bpy.context.scene.collection.objects.link(obj)
        common.make_active(obj)
        attempt(label, results)

    common.make_active(cube)
    # A Python without torch.
    prefs.backend_python = args["no_torch_python"]
    attempt("no_torch", results)
    # A bare Python: not even numpy (the backend cannot say why itself; the add-on reads the log).
    prefs.backend_python = args["bare_python"]
    attempt("bare_python", results)
    # A backend that crashes.
    prefs.backend_python = args["fake_crash"]
    attempt("crash", results)
    # An interpreter that does not exist.
    prefs.backend_python = "/nonexistent/python3"
    attempt("missing_python", results)

    results["earlier_still_there"] = bpy.data.objects.get("Cube_sdf") is not None
    return results


common.run_main(main)
