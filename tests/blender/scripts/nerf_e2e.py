"""NeRF end to end in Blender (the add-on installed from its zip), everything on the CPU:

a red cube and a blue sphere (diffuse) -> Make Capture Rig + Render Capture (Cycles) ->
Train NeRF (the operator, synchronous in background mode) -> Render from Active Camera through
a camera that is not in the capture, at another resolution, compared with Cycles' render of
the same camera -> Extract Mesh compared with the source meshes in world coordinates ->
Render Camera Animation over 3 frames.

Reports facts (paths, numbers) as JSON; tests/blender/test_nerf_e2e.py asserts on them.
"""

import json
import math
import tempfile
import time
from pathlib import Path

import bpy
import numpy as np
from mathutils import Vector

import bl_common as common


def diffuse(name, color):
    material = bpy.data.materials.new(name)
    material.use_nodes = True
    principled = material.node_tree.nodes["Principled BSDF"]
    principled.inputs["Base Color"].default_value = (*color, 1.0)
    principled.inputs["Roughness"].default_value = 1.0
    return material


def aim(obj, target):
    direction = Vector(target) - obj.location
    obj.rotation_euler = direction.to_track_quat('-Z', 'Y').to_euler()


def run_op(op, **kwargs):
    start = time.monotonic()
    try:
        result, error = op(**kwargs), ""
    except RuntimeError as exc:
        result, error = None, str(exc)
    return {"result": str(result), "error": error, "seconds": time.monotonic() - start}


def sample_surface(vertices, faces, count, rng):
    """Area-weighted uniform points on a triangle mesh (numpy only)."""
    a, b, c = vertices[faces[:, 0]], vertices[faces[:, 1]], vertices[faces[:, 2]]
    areas = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    chosen = rng.choice(len(faces), size=count, p=areas / areas.sum())
    u, v = rng.random(count), rng.random(count)
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    return a[chosen] + u[:, None] * (b[chosen] - a[chosen]) + v[:, None] * (c[chosen] - a[chosen])


def nearest_distances(points, targets, chunk=2048):
    out = np.empty(len(points))
    target_sq = (targets ** 2).sum(1)
    for start in range(0, len(points), chunk):
        block = points[start:start + chunk]
        d2 = (block ** 2).sum(1)[:, None] - 2 * block @ targets.T + target_sq[None]
        out[start:start + chunk] = np.sqrt(np.maximum(d2.min(axis=1), 0))
    return out


def main(args):
    timings = {}
    t0 = time.monotonic()
    common.setup(args["zip"])
    work = Path(args["work"])
    prefs = common.preferences()
    prefs.jobs_dir = str(work / "jobs")
    prefs.device = 'cpu'
    out = {}

    scene = bpy.context.scene
    scene.render.engine = 'CYCLES'
    scene.cycles.device = 'CPU'
    scene.cycles.samples = args.get("samples", 32)
    scene.cycles.use_denoising = False
    scene.render.film_transparent = True
    scene.view_settings.view_transform = 'Standard'
    size = args.get("size", 64)
    scene.render.resolution_x = scene.render.resolution_y = size
    scene.render.resolution_percentage = 100

    # ---- the scene: a rotated red cube and a blue sphere beside it, a sun and a grey sky
    bpy.data.objects.remove(bpy.data.objects["Light"])
    cube = bpy.data.objects["Cube"]
    cube.location = (0.25, -0.2, 0.1)
    cube.rotation_euler = (0.3, 0.2, 0.6)
    cube.scale = (0.55, 0.55, 0.55)
    cube.data.materials.clear()
    cube.data.materials.append(diffuse("Red", (0.8, 0.08, 0.05)))
    bpy.ops.mesh.primitive_uv_sphere_add(radius=0.45, location=(-0.75, 0.55, 0.35), segments=48, ring_count=24)
    sphere = bpy.context.active_object
    sphere.name = "Ball"
    bpy.ops.object.shade_smooth()
    sphere.data.materials.append(diffuse("Blue", (0.05, 0.2, 0.8)))
    sun = bpy.data.objects.new("Sun", bpy.data.lights.new("Sun", 'SUN'))
    sun.data.energy = 3.0
    sun.rotation_euler = (0.6, 0.3, 0.8)
    scene.collection.objects.link(sun)
    scene.world.use_nodes = True
    background = scene.world.node_tree.nodes["Background"]
    background.inputs["Color"].default_value = (0.5, 0.5, 0.5, 1.0)
    background.inputs["Strength"].default_value = 1.0
    bpy.context.view_layer.update()
    sources = {}
    for obj in (cube, sphere):
        vertices, faces = common.world_triangles(obj)
        sources[obj.name] = (vertices, faces)

    # ---- capture
    for obj in scene.objects:
        obj.select_set(obj in (cube, sphere))
    bpy.context.view_layer.objects.active = cube
    out["rig"] = run_op(bpy.ops.neural_fields.make_capture_rig, count=args.get("views", 40), layout='SPHERE',
                        lens=50.0)
    common.make_active(None)
    # Render Capture's default folder (an unsaved file: <temp>/neural_fields_capture), so that
    # Train NeRF below finds "the most recent capture" by itself
    tempfile.tempdir = str(work / "tmp")
    (work / "tmp").mkdir(exist_ok=True)
    capture_dir = work / "tmp" / "neural_fields_capture"
    out["capture"] = run_op(bpy.ops.neural_fields.render_capture)
    out["capture_dir"] = str(capture_dir)
    timings["capture"] = out["capture"]["seconds"]

    # ---- a camera not in the capture, at another resolution: Cycles' reference render
    rig_camera = next(o for o in scene.objects if o.type == 'CAMERA' and o.name.startswith("Capture"))
    distance = (rig_camera.location - Vector((-0.2, 0.15, 0.2))).length
    novel_data = bpy.data.cameras.new("Novel")
    novel_data.lens = 55.0
    novel_data.clip_start, novel_data.clip_end = rig_camera.data.clip_start, rig_camera.data.clip_end
    novel = bpy.data.objects.new("Novel", novel_data)
    scene.collection.objects.link(novel)
    centre = Vector((-0.2, 0.15, 0.2))
    direction = Vector((0.55, -0.8, 0.35)).normalized()
    novel.location = centre + 1.05 * distance * direction
    aim(novel, centre)
    scene.camera = novel
    novel_w, novel_h = args.get("novel_size", (80, 60))
    scene.render.resolution_x, scene.render.resolution_y = novel_w, novel_h
    scene.render.filepath = str(work / "cycles_novel.png")
    scene.render.image_settings.file_format, scene.render.image_settings.color_mode = 'PNG', 'RGBA'
    scene.cycles.samples = args.get("reference_samples", 128)
    start = time.monotonic()
    bpy.ops.render.render(write_still=True)
    timings["cycles_novel"] = time.monotonic() - start
    out["cycles_novel"] = str(work / "cycles_novel.png")
    # ground-truth z-depth of the novel view by ray casting the scene (pixel centres)
    depsgraph = bpy.context.evaluated_depsgraph_get()
    c2w = np.array(novel.matrix_world)
    intr_fx = novel_data.lens / novel_data.sensor_width * novel_w
    depth = np.zeros((novel_h, novel_w))
    w2c = np.linalg.inv(c2w)
    for row in range(novel_h):
        for col in range(novel_w):
            d_cam = np.array([(col + 0.5 - novel_w / 2) / intr_fx, -(row + 0.5 - novel_h / 2) / intr_fx, -1.0])
            d_world = c2w[:3, :3] @ d_cam
            hit, location, *_ = scene.ray_cast(depsgraph, Vector(c2w[:3, 3].tolist()),
                                               Vector((d_world / np.linalg.norm(d_world)).tolist()))
            if hit:
                depth[row, col] = float(-(w2c @ np.append(np.array(location), 1.0))[2])
    np.save(work / "true_depth.npy", depth)
    out["true_depth"] = str(work / "true_depth.npy")

    # ---- train through the operator (the most recent capture; settings from the NeRF panel)
    settings = scene.neural_fields_nerf
    settings.preset = 'fast'
    settings.seconds = args.get("seconds", 60.0)
    settings.max_steps = args.get("max_steps", 0)
    settings.preview_seconds = 5.0
    state = bpy.context.window_manager.neural_fields_nerf_state
    images_before = sorted(image.name for image in bpy.data.images)
    out["train"] = run_op(bpy.ops.neural_fields.train_nerf)
    timings["train"] = out["train"]["seconds"]
    out["job_dir"] = settings.job_dir
    out["job_dataset"] = json.loads((Path(settings.job_dir) / "job.json").read_text())["source"].get("dataset") \
        if settings.job_dir else None
    out["train_state"] = {"last_status": state.last_status, "last_message": state.last_message,
                          "preview_image": state.preview_image, "preview_text": state.preview_text,
                          "warnings": state.last_warnings}
    preview = bpy.data.images.get(state.preview_image)
    out["preview"] = {"exists": preview is not None,
                      "size": list(preview.size) if preview is not None else None,
                      "filepath": bpy.path.abspath(preview.filepath) if preview is not None else None}
    out["images_after_train"] = sorted(set(image.name for image in bpy.data.images) - set(images_before))

    # ---- render the novel camera with the field
    out["render"] = run_op(bpy.ops.neural_fields.render_nerf_view)
    timings["render"] = out["render"]["seconds"]
    rendered = {}
    for image in bpy.data.images:
        if image.get("neural_fields_job") and image.source == 'FILE':
            rendered[image.name] = {"size": list(image.size), "filepath": bpy.path.abspath(image.filepath),
                                    "colorspace": image.colorspace_settings.name}
    out["rendered_images"] = rendered
    out["label"] = common.addon_module("nerf_jobs").job_label(settings.job_dir)

    # ---- extract the mesh
    out["extract"] = run_op(bpy.ops.neural_fields.extract_nerf_mesh, resolution=args.get("mesh_resolution", 128),
                            threshold=args.get("mesh_threshold", 0.0))
    timings["extract"] = out["extract"]["seconds"]
    mesh_obj = bpy.context.active_object
    if mesh_obj is not None and mesh_obj.get("neural_fields_job"):
        vertices, faces = common.world_triangles(mesh_obj)
        source_v = np.concatenate([v for v, _ in sources.values()])
        offsets = np.cumsum([0] + [len(v) for v, _ in sources.values()])
        source_f = np.concatenate([f + offsets[i] for i, (_, f) in enumerate(sources.values())])
        rng = np.random.default_rng(0)
        ours = sample_surface(vertices, faces, args.get("mesh_samples", 20000), rng)
        theirs = sample_surface(source_v, source_f, args.get("source_samples", 8000), rng)
        to_ours = nearest_distances(theirs, ours)          # completeness: the source surface is covered
        # accuracy: exact signed distance from each point on our mesh to the nearest source
        # surface (Blender's closest point; negative inside an object, by its face normal)
        signed = np.empty(len(ours))
        frames = [(obj, obj.matrix_world.copy(), obj.matrix_world.inverted()) for obj in (cube, sphere)]
        for index, point in enumerate(ours):
            best = None
            point = Vector(point.tolist())
            for obj, matrix, inverse in frames:
                _found, location, normal, _face = obj.closest_point_on_mesh(inverse @ point)
                normal_world = (inverse.transposed().to_3x3() @ normal).normalized()
                offset = point - matrix @ location
                value = math.copysign(offset.length, offset.dot(normal_world))
                if best is None or abs(value) < abs(best):
                    best = value
            signed[index] = best
        to_source = np.abs(signed)
        outside = signed > -0.01 * float(np.linalg.norm(source_v.max(0) - source_v.min(0)))
        diagonal = float(np.linalg.norm(source_v.max(0) - source_v.min(0)))
        attribute = mesh_obj.data.color_attributes.get("Col")
        colors = None
        if attribute is not None:
            colors = np.empty(len(attribute.data) * 4, np.float32)
            attribute.data.foreach_get("color_srgb", colors)
            colors = colors.reshape(-1, 4)
        material = mesh_obj.active_material
        links = [(link.from_node.bl_idname, link.from_socket.name, link.to_node.bl_idname, link.to_socket.name)
                 for link in material.node_tree.links] if material else []
        color_nodes = [node.layer_name for node in material.node_tree.nodes
                       if node.bl_idname == "ShaderNodeVertexColor"] if material else []
        # colours near each source object: red near the cube, blue near the sphere
        mesh_vertices = np.asarray(vertices)
        near = {name: nearest_distances(mesh_vertices, sample_surface(v, f, 4000, rng)) < 0.03 * diagonal
                for name, (v, f) in sources.items()}
        out["mesh"] = {
            "name": mesh_obj.name, "vertices": len(vertices), "faces": len(faces),
            "matrix_world_identity": bool(np.allclose(np.array(mesh_obj.matrix_world), np.eye(4))),
            "chamfer_l1": float(0.5 * (to_source.mean() + to_ours.mean())),
            "to_source_mean": float(to_source.mean()), "to_mesh_mean": float(to_ours.mean()),
            "to_source_p95": float(np.percentile(to_source, 95)), "to_mesh_p95": float(np.percentile(to_ours, 95)),
            "interior_fraction": float(1.0 - outside.mean()),
            "outside_to_source_mean": float(to_source[outside].mean()),
            "outside_to_source_p95": float(np.percentile(to_source[outside], 95)),
            "diagonal": diagonal,
            "bbox": [mesh_vertices.min(0).tolist(), mesh_vertices.max(0).tolist()],
            "source_bbox": [source_v.min(0).tolist(), source_v.max(0).tolist()],
            "has_colors": colors is not None,
            "mean_color_cube": colors[near["Cube"], :3].mean(0).tolist() if colors is not None and near["Cube"].any() else None,
            "mean_color_ball": colors[near["Ball"], :3].mean(0).tolist() if colors is not None and near["Ball"].any() else None,
            "material_links": links, "color_nodes": color_nodes,
            "in_scene": mesh_obj.name in scene.objects,
        }

        # the mesh rendered by Cycles from the novel camera, the sources hidden: as its material
        # shows it (the colours as seen) and relit (the material's mix at 0), for comparison with
        # Cycles' render of the sources
        mix = material.node_tree.nodes.get(common.addon_module("nerf").MIX_NODE_NAME) if material else None
        if mix is not None:
            for obj in (cube, sphere):
                obj.hide_render = True
            scene.cycles.samples = args.get("mesh_render_samples", 32)
            for kind, factor in (("seen", 1.0), ("relit", 0.0)):
                mix.inputs[0].default_value = factor
                scene.render.filepath = str(work / f"mesh_{kind}.png")
                bpy.ops.render.render(write_still=True)
                out["mesh"][f"render_{kind}"] = scene.render.filepath
            mix.inputs[0].default_value = 1.0
            for obj in (cube, sphere):
                obj.hide_render = False

    # ---- an animation of 3 frames
    scene.frame_start, scene.frame_end = 1, 3
    for frame, angle in ((1, 0.0), (3, 0.6)):
        scene.frame_set(frame)
        turned = centre + 1.05 * distance * Vector((math.cos(angle) * direction.x - math.sin(angle) * direction.y,
                                                    math.sin(angle) * direction.x + math.cos(angle) * direction.y,
                                                    direction.z))
        novel.location = turned
        aim(novel, centre)
        novel.keyframe_insert("location")
        novel.keyframe_insert("rotation_euler")
    scene.frame_set(2)
    scene.render.resolution_x, scene.render.resolution_y = 48, 36
    out["animation"] = run_op(bpy.ops.neural_fields.render_nerf_animation)
    timings["animation"] = out["animation"]["seconds"]
    out["frame_after_animation"] = scene.frame_current
    sequence = next((image for image in bpy.data.images if image.name.endswith("_animation")), None)
    if sequence is not None:
        folder = Path(bpy.path.abspath(sequence.filepath)).parent
        out["sequence"] = {"name": sequence.name, "source": sequence.source,
                           "filepath": bpy.path.abspath(sequence.filepath),
                           "files": sorted(p.name for p in folder.glob("frame_*.png") if "_" not in p.stem[6:])}
    out["state_end"] = [state.last_status, state.last_message, state.running]
    timings["total"] = time.monotonic() - t0
    out["timings"] = timings
    return out


common.run_main(main)
