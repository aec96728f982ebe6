"""The Blender half of the bad-input catalogue (docs/bad_inputs.md): the add-on installed from
its zip, its real operators fed broken meshes, cameras, datasets and images. For each case it
records the error text, whether bpy.data and the render settings are exactly as before, and
whether the jobs folder (holding an earlier, finished job) is byte for byte the same.

Reports facts as JSON; tests/blender/test_bad_inputs_blender.py asserts on them.
"""

import hashlib
import json
import math
import time
from pathlib import Path

import bpy
import numpy as np

import bl_common as common

RENDER_KEYS = ("resolution_x", "resolution_y", "resolution_percentage", "pixel_aspect_x", "pixel_aspect_y",
               "filepath", "film_transparent")


def snapshot():
    data = {name: sorted(item.name for item in getattr(bpy.data, name))
            for name in ("objects", "meshes", "materials", "images", "cameras", "collections", "textures")}
    data["fingerprints"] = common.scene_snapshot()["objects"]
    render = bpy.context.scene.render
    data["render"] = {key: getattr(render, key) for key in RENDER_KEYS}
    data["view_transform"] = bpy.context.scene.view_settings.view_transform
    data["camera"] = bpy.context.scene.camera.name if bpy.context.scene.camera else None
    return data


def tree_digest(folder: Path) -> dict:
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


class Recorder:
    def __init__(self, jobs: Path):
        self.jobs = jobs
        self.out = {}

    def run(self, label, op, **kwargs):
        before, jobs_before = snapshot(), tree_digest(self.jobs)
        started = time.perf_counter()
        try:
            result, error = sorted(op(**kwargs)), ""
        except RuntimeError as exc:
            result, error = None, str(exc)
        after = snapshot()
        self.out[label] = {"result": result, "error": error, "seconds": round(time.perf_counter() - started, 3),
                           "unchanged": after == before, "jobs_unchanged": tree_digest(self.jobs) == jobs_before,
                           "added_objects": len(after["objects"]) - len(before["objects"]),
                           "diff": {k: [before[k], after[k]] for k in before if before[k] != after[k] and
                                    k != "fingerprints"}}
        return self.out[label]


def mesh_object(name, vertices, faces=()):
    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata([tuple(v) for v in vertices], [], [tuple(f) for f in faces])
    obj = bpy.data.objects.new(name, mesh)
    bpy.context.scene.collection.objects.link(obj)
    return obj


def look_at(eye, target=(0.0, 0.0, 0.0)):
    forward = np.asarray(target, float) - np.asarray(eye, float)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, np.cross(right, forward), -forward, eye
    return c2w


def write_dataset(root: Path, backend, count=3, size=(8, 6), suffix=".png", bits=8, frames_override=None, top=None):
    """A small dataset: ``count`` cameras on a ring with plain images; returns transforms.json."""
    imageio = backend.imageio
    frames = []
    for index in range(count):
        w, h = size if not callable(size) else size(index)
        name = f"images/{index:04d}{suffix}"
        pixels = np.full((h, w, 3), 0.25 + 0.1 * index, np.float32)
        if suffix == ".exr":
            imageio.write_exr(root / name, pixels)
        else:
            imageio.write_png(root / name, pixels, bits=bits)
        angle = 2 * math.pi * index / count
        eye = [4 * math.cos(angle), 4 * math.sin(angle), 1]
        frames.append({"file_path": name, "transform_matrix": look_at(eye).tolist(),
                       "fl_x": 1.2 * w, "fl_y": 1.2 * w, "cx": w / 2, "cy": h / 2, "w": w, "h": h})
    if frames_override:
        frames_override(frames)
    doc = {**(top or {}), "frames": frames}
    path = root / "transforms.json"
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return path


def main(args):
    work = Path(args["work"])
    common.setup(args["zip"])
    backend = common.addon_module("_backend")
    prefs = common.preferences()
    jobs = work / "jobs"
    prefs.jobs_dir = str(jobs)
    prefs.backend_python = str(work / "no-such-python")   # nothing may start; a missed check shows up
    # an earlier, finished job: must stay byte for byte the same
    earlier = jobs / "20250101-000000-Earlier-abc123"
    backend.plyio.write_ply(earlier / "inputs" / "mesh.ply", np.eye(3), np.array([[0, 1, 2]]))
    backend.protocol.write_job(earlier, backend.protocol.make_job("sdf", inputs={"mesh": "inputs/mesh.ply"}))
    backend.plyio.write_ply(earlier / "outputs" / "mesh.ply", np.eye(3), np.array([[0, 1, 2]]))
    backend.protocol.write_json_atomic(earlier / "result.json", {"schema_version": 1, "status": "done"})
    rec = Recorder(jobs)
    ops = bpy.ops.neural_fields
    out = rec.out

    # ---- meshes (Mesh to Neural Field)
    cube = bpy.data.objects["Cube"]
    nan = cube.copy()
    nan.data = cube.data.copy()
    nan.name = "NaNCube"
    bpy.context.scene.collection.objects.link(nan)
    coords = np.empty(len(nan.data.vertices) * 3, np.float32)
    nan.data.vertices.foreach_get("co", coords)
    coords[0] = np.nan
    nan.data.vertices.foreach_set("co", coords)
    nan.data.update()
    common.make_active(nan)
    rec.run("mesh_nan", ops.mesh_to_sdf)

    common.make_active(mesh_object("PointCloud", np.random.default_rng(0).normal(size=(200, 3))))
    rec.run("mesh_point_cloud", ops.mesh_to_sdf)
    common.make_active(mesh_object("Flat", [(0, 0, 0), (1, 1, 1), (2, 2, 2)], [(0, 1, 2)]))
    rec.run("mesh_zero_area", ops.mesh_to_sdf)

    started = time.perf_counter()
    bpy.ops.mesh.primitive_grid_add(x_subdivisions=1582, y_subdivisions=1582, size=2.0)
    grid = bpy.context.active_object
    grid.name = "HugeGrid"
    out["huge_made_seconds"] = round(time.perf_counter() - started, 2)
    out["huge_triangles"] = sum(len(p.vertices) - 2 for p in grid.data.polygons)
    common.make_active(grid)
    rec.run("mesh_huge", ops.mesh_to_sdf)
    bpy.data.objects.remove(grid)

    # ---- cameras (Render Capture, Use Photos): refused by name, nothing written
    scene = bpy.context.scene
    camera = bpy.data.objects["Camera"]
    capture_dir = work / "capture"
    for label, kind in (("capture_ortho", "ORTHO"), ("capture_pano", "PANO")):
        camera.data.type = kind
        common.make_active(camera)
        rec.run(label, ops.render_capture, directory=str(capture_dir))
    camera.data.type = 'PERSP'
    render = scene.render
    saved = (render.resolution_x, render.resolution_y, render.resolution_percentage)
    render.resolution_x, render.resolution_y, render.resolution_percentage = 4, 4, 1
    common.make_active(camera)
    rec.run("capture_zero_pixels", ops.render_capture, directory=str(capture_dir))
    render.resolution_x, render.resolution_y, render.resolution_percentage = saved
    out["capture_dir_written"] = capture_dir.exists()
    camera.data.lens = 0.0
    out["lens_after_setting_zero"] = camera.data.lens
    camera.data.lens = 50.0

    photo = work / "photo.png"
    backend.imageio.write_png(photo, np.full((render.resolution_y * render.resolution_percentage // 100,
                                              render.resolution_x * render.resolution_percentage // 100, 3), 0.5,
                                             np.float32))
    background = camera.data.background_images.new()
    background.image = bpy.data.images.load(str(photo))
    camera.data.type = 'ORTHO'
    common.make_active(camera)
    photos_dir = work / "photos"
    rec.run("use_photos_ortho", ops.use_photos, directory=str(photos_dir))
    out["photos_written"] = (photos_dir / "transforms.json").exists()
    camera.data.type = 'PERSP'

    # ---- Import Dataset: every broken dataset leaves the scene as it was
    datasets_root = work / "datasets"
    secret = work / "secret.png"
    backend.imageio.write_png(secret, np.zeros((6, 8, 3), np.float32))

    def nan_matrix(frames):
        frames[1]["transform_matrix"][0][0] = float("nan")

    def set_key(key, value, index=1):
        def change(frames):
            frames[index][key] = value
        return change

    def symlink(root):
        target = root / "images" / "0001.png"
        target.unlink()
        target.symlink_to(secret)

    def truncate(root):
        target = root / "images" / "0001.png"
        target.write_bytes(target.read_bytes()[:40])

    def garbage(root):
        (root / "images" / "0001.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 8 + b"IHDR" + b"\0\0\0\x08\0\0\0\x06"
                                                   + b"garbage")

    def missing(root):
        (root / "images" / "0001.png").unlink()

    cases = {
        "import_nan_matrix": dict(frames_override=nan_matrix),
        "import_absolute_path": dict(frames_override=set_key("file_path", str(secret))),
        "import_parent_path": dict(frames_override=set_key("file_path", "../secret.png")),
        "import_zero_focal": dict(frames_override=set_key("fl_x", 0)),
        "import_wrong_type": dict(frames_override=set_key("w", "eight")),
        "import_no_matrix": dict(frames_override=lambda frames: frames[1].pop("transform_matrix")),
        "import_mixed_sizes": dict(size=lambda i: (8, 6) if i != 2 else (10, 6)),
        "import_symlink_out": dict(after=symlink),
        "import_missing_image": dict(after=missing),
        "import_truncated_image": dict(after=truncate),
        "import_corrupt_image": dict(after=garbage),
        "import_16bit": dict(bits=16),
        "import_exr": dict(suffix=".exr"),
        "import_extra_keys": dict(frames_override=set_key("my_tool_id", {"a": [1, 2]}),
                                  top={"generator": "someone else's tool", "aabb_scale": 16}),
    }
    for label, options in cases.items():
        after = options.pop("after", None)
        root = datasets_root / label
        path = write_dataset(root, backend, **options)
        if after:
            after(root)
        rec.run(label, ops.import_dataset, filepath=str(path))

    # ---- Train NeRF on a capture of EXR images: refused before any job is written
    exr_root = datasets_root / "nerf_exr"
    write_dataset(exr_root, backend, count=24, size=(16, 16), suffix=".exr")
    rec.run("nerf_exr", ops.train_nerf, dataset_dir=str(exr_root))
    out["jobs_after"] = sorted(p.name for p in jobs.iterdir())
    return out


common.run_main(main)
