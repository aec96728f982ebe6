"""Import Dataset / Use Photos in real Blender (the add-on as installed from the zip).

(a) the lego train set (when given): cameras, intrinsics, poses, background images;
(b) a generated small dataset: exact cameras, then Use Photos writes it back;
(c) bad datasets: a clear message and nothing created;
(d) Use Photos refusals: a camera without a background image;
(e) Use Photos with movie clips: a one-image clip, a movie made here (frame per scene frame).
"""

import json
import math
import shutil
from pathlib import Path

import bpy
import numpy as np

import bl_common as common


def state():
    """Every datablock that an import could leave behind."""
    return {"collections": sorted(c.name for c in bpy.data.collections),
            "objects": sorted(o.name for o in bpy.data.objects),
            "cameras": sorted(c.name for c in bpy.data.cameras),
            "images": sorted(i.name for i in bpy.data.images),
            "resolution": [bpy.context.scene.render.resolution_x, bpy.context.scene.render.resolution_y]}


def run_op(op, **kwargs):
    """(result, error text) of an operator call; bpy raises RuntimeError carrying ERROR reports."""
    try:
        result = op(**kwargs)
        return sorted(result), ""
    except RuntimeError as exc:
        return ["CANCELLED"], str(exc)


def rel(a, b):
    return abs(a - b) / max(abs(b), 1e-12)


def check_cameras(objects, dataset, cameras, camera_io, scene):
    worst_intr, worst_pose, problems = 0.0, 0.0, []
    by_name = {obj.name: obj for obj in objects}
    for frame, obj in zip(dataset.frames, objects):
        intr = cameras.intrinsics_from_camera(camera_io.camera_model_from_object(obj, scene))
        want = frame.intrinsics
        for key in ("fl_x", "fl_y", "cx", "cy"):
            worst_intr = max(worst_intr, rel(getattr(intr, key), getattr(want, key)))
        if (intr.w, intr.h) != (want.w, want.h):
            problems.append(f"{obj.name}: size {intr.w}x{intr.h} != {want.w}x{want.h}")
        worst_pose = max(worst_pose, float(np.max(np.abs(camera_io.camera_to_world(obj) - frame.c2w))))
        backgrounds = obj.data.background_images
        if not obj.data.show_background_images or len(backgrounds) != 1 or backgrounds[0].image is None:
            problems.append(f"{obj.name}: no background image")
        elif Path(bpy.path.abspath(backgrounds[0].image.filepath)).resolve() != Path(frame.file_path).resolve():
            problems.append(f"{obj.name}: background {backgrounds[0].image.filepath} != {frame.file_path}")
        elif abs(backgrounds[0].alpha - 0.5) > 1e-6:
            problems.append(f"{obj.name}: alpha {backgrounds[0].alpha}")
    return {"worst_intrinsics": worst_intr, "worst_pose": worst_pose, "problems": problems[:10],
            "count": len(objects), "names": len(by_name)}


def write_png(path, w, h, seed):
    from PIL import Image
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def look_at(eye, target=(0.0, 0.0, 0.0)):
    eye = np.asarray(eye, float)
    forward = np.asarray(target, float) - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, up, -forward, eye
    return m


def make_small(folder: Path, w=48, h=32):
    """4 frames with known cameras (fl_x != cx-centred, off-centre principal point)."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    frames = []
    for index in range(4):
        write_png(folder / "images" / f"view_{index}.png", w, h, index)
        angle = index * math.pi / 2 + 0.3
        c2w = look_at([4 * math.cos(angle), 4 * math.sin(angle), 1.0 + 0.2 * index])
        frames.append({"file_path": f"images/view_{index}.png", "transform_matrix": c2w.tolist()})
    data = {"fl_x": 55.5, "fl_y": 55.5, "cx": 25.0, "cy": 15.5, "w": w, "h": h, "frames": frames}
    (folder / "transforms.json").write_text(json.dumps(data, indent=1))
    return data


MOVIE_COLOURS = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (0, 1, 1)]


def make_movie(folder: Path, w, h, colours):
    """An H.264 MPEG-4 movie with one flat colour per frame, rendered by Blender's sequencer in a
    scene of its own (no 3D render, no GPU); that scene is removed again."""
    maker = bpy.data.scenes.new("movie maker")
    try:
        render = maker.render
        render.resolution_x, render.resolution_y, render.resolution_percentage = w, h, 100
        render.fps, render.fps_base = 24, 1.0
        maker.view_settings.view_transform = 'Standard'
        maker.view_settings.look = 'None'
        editor = maker.sequence_editor_create()
        for number, colour in enumerate(colours, start=1):
            strip = editor.strips.new_effect(name=f"colour {number}", type='COLOR', channel=1,
                                             frame_start=number, frame_end=number + 1)
            strip.color = colour
        maker.frame_start, maker.frame_end = 1, len(colours)
        render.image_settings.file_format = 'FFMPEG'
        render.ffmpeg.format = 'MPEG4'
        render.ffmpeg.codec = 'H264'
        render.ffmpeg.constant_rate_factor = 'PERC_LOSSLESS'
        folder.mkdir(parents=True, exist_ok=True)
        render.filepath = str(folder / "colours_")
        bpy.ops.render.render(animation=True, scene=maker.name)
    finally:
        bpy.data.scenes.remove(maker)
    movies = sorted(folder.glob("colours_*.mp4"))
    if len(movies) != 1:
        raise RuntimeError(f"expected one movie in {folder}: {sorted(p.name for p in folder.iterdir())}")
    return movies[0]


def blend_state():
    """What Use Photos must leave as it was."""
    scene = bpy.context.scene
    return {"images": sorted(i.name for i in bpy.data.images),
            "textures": sorted(t.name for t in bpy.data.textures),
            "scenes": sorted(s.name for s in bpy.data.scenes),
            "clips": sorted(c.name for c in bpy.data.movieclips),
            "frame": scene.frame_current,
            "active_clip": scene.active_clip.name if scene.active_clip else None}


def png_colour(path: Path):
    """(size, mean RGB 0-255, largest deviation from that mean) of a written PNG."""
    from PIL import Image
    with Image.open(path) as image:
        size = list(image.size)
        pixels = np.asarray(image.convert("RGB"), dtype=float).reshape(-1, 3)
    mean = pixels.mean(axis=0)
    return size, mean.tolist(), float(np.abs(pixels - mean).max())


def movie_clip_cases(work: Path, cam, background, datasets):
    """A camera whose background is a movie clip: the colour of the frame shown, per scene frame."""
    scene = bpy.context.scene
    if not bpy.app.build_options.codec_ffmpeg:
        return {"skipped": "this bpy has no FFmpeg"}
    w, h = scene.render.resolution_x, scene.render.resolution_y
    movie = make_movie(work / "movie", w, h, MOVIE_COLOURS)
    clip = bpy.data.movieclips.load(str(movie))
    clip.frame_start = 10
    clip.frame_offset = 1      # scene frame f shows movie frame f - 10 + 1 (0-based)
    background.clip = clip
    out = {"source": clip.source, "size": list(clip.size), "duration": clip.frame_duration, "runs": {}}

    def run(label, frame):
        scene.frame_set(frame)
        before = blend_state()
        folder = work / f"clip_{label}"
        result, error = run_op(bpy.ops.neural_fields.use_photos, directory=str(folder))
        entry = {"result": result, "error": error, "unchanged": blend_state() == before,
                 "before": before, "after": blend_state(), "written": folder.exists()}
        if (folder / "transforms.json").exists():
            back = datasets.read_dataset(folder / "transforms.json")
            entry["names"] = [f.name for f in back.frames]
            entry["intrinsics_size"] = [back.frames[0].intrinsics.w, back.frames[0].intrinsics.h]
            entry["size"], entry["colour"], entry["spread"] = png_colour(Path(back.frames[0].file_path))
        out["runs"][label] = entry

    run("frame_11", 11)        # movie frame 2: blue
    run("frame_13", 13)        # movie frame 4: cyan
    run("frame_14", 14)        # past the end: refused
    # the camera's clip is the scene's active clip
    background.clip = None
    background.use_camera_clip = True
    scene.active_clip = clip
    run("camera_clip_10", 10)  # movie frame 1: green
    scene.active_clip = None
    background.use_camera_clip = False
    scene.frame_set(1)
    return out


def main(args):
    common.setup(args["zip"])
    cameras = common.addon_module("_backend").cameras
    camera_io = common.addon_module("camera_io")
    datasets = common.addon_module("_backend").datasets
    work = Path(args["work"])
    scene = bpy.context.scene
    out = {}

    # (a) lego
    if args.get("lego"):
        lego = Path(args["lego"])
        dataset = datasets.read_dataset(lego / "transforms_train.json")
        before = set(bpy.data.collections)
        result, error = run_op(bpy.ops.neural_fields.import_dataset, filepath=str(lego / "transforms_train.json"))
        new = [c for c in bpy.data.collections if c not in before]
        out["lego"] = {"result": result, "error": error, "collections": [c.name for c in new],
                       "resolution": [scene.render.resolution_x, scene.render.resolution_y,
                                      scene.render.resolution_percentage]}
        if new:
            objects = list(new[0].objects)
            out["lego"].update(check_cameras(objects, dataset, cameras, camera_io, scene))
            out["lego"]["images"] = len({o.data.background_images[0].image.name for o in objects})
            for obj in objects:
                data = obj.data
                bpy.data.objects.remove(obj)
                bpy.data.cameras.remove(data)
            bpy.data.collections.remove(new[0])
            for image in [image for image in bpy.data.images if image.name.startswith("r_")]:
                bpy.data.images.remove(image)

    # (b) a small generated dataset, imported through its folder, then Use Photos
    small = work / "small"
    make_small(small)
    dataset = datasets.read_dataset(small / "transforms.json")
    before = set(bpy.data.collections)
    result, error = run_op(bpy.ops.neural_fields.import_dataset, filepath=str(small))
    new = [c for c in bpy.data.collections if c not in before]
    info = {"result": result, "error": error, "collections": [c.name for c in new]}
    out["small"] = info
    if new:
        objects = list(new[0].objects)
        objects.sort(key=lambda o: o.name)
        info.update(check_cameras(objects, dataset, cameras, camera_io, scene))
        common.make_active(None)
        for obj in objects:
            obj.select_set(True)
        written = work / "written"
        result, error = run_op(bpy.ops.neural_fields.use_photos, directory=str(written))
        info["use_photos"] = {"result": result, "error": error}
        if (written / "transforms.json").exists():
            back = datasets.read_dataset(written / "transforms.json")
            poses = max(float(np.max(np.abs(a.c2w - b.c2w))) for a, b in zip(back.frames, dataset.frames))
            intr = max(rel(getattr(a.intrinsics, k), getattr(b.intrinsics, k))
                       for a, b in zip(back.frames, dataset.frames) for k in ("fl_x", "fl_y", "cx", "cy"))
            same_images = all(Path(a.file_path).read_bytes() == Path(b.file_path).read_bytes()
                              for a, b in zip(back.frames, dataset.frames))
            info["use_photos"].update(frames=len(back.frames), worst_pose=poses, worst_intrinsics=intr,
                                      same_images=same_images,
                                      sizes=sorted({(f.intrinsics.w, f.intrinsics.h) for f in back.frames}),
                                      names=[f.name for f in back.frames])
        # an image sequence background: the frame shown at the scene's current frame
        seq = work / "sequence"
        seq.mkdir()
        for number in range(1, 6):
            write_png(seq / f"shot_{number:04d}.png", 48, 32, 100 + number)
        sequence = bpy.data.images.load(str(seq / "shot_0001.png"))
        sequence.source = 'SEQUENCE'
        seq_cam = objects[1]
        background = seq_cam.data.background_images[0]
        background.image = sequence
        background.image_user.frame_duration = 5
        background.image_user.frame_start = 10
        background.image_user.frame_offset = 1
        scene.frame_set(11)   # frame 11 - 10 + 1 = 2, offset 1 -> shot_0003.png
        common.make_active(seq_cam)
        seq_out = work / "written_sequence"
        result, error = run_op(bpy.ops.neural_fields.use_photos, directory=str(seq_out))
        info["sequence"] = {"result": result, "error": error,
                            "blender_path": bpy.path.abspath(sequence.filepath_from_user(image_user=background.image_user))}
        if (seq_out / "transforms.json").exists():
            back = datasets.read_dataset(seq_out / "transforms.json")
            info["sequence"]["same_as_3"] = (Path(back.frames[0].file_path).read_bytes()
                                             == (seq / "shot_0003.png").read_bytes())
        scene.frame_set(1)
        for obj in objects:
            obj.select_set(True)
        # a second write into the same folder is refused
        result, error = run_op(bpy.ops.neural_fields.use_photos, directory=str(written))
        info["use_photos_again"] = {"result": result, "error": error}
        # a camera without a background image: refused by name, nothing written
        bare = bpy.data.objects.new("Bare Camera", bpy.data.cameras.new("Bare Camera"))
        scene.collection.objects.link(bare)
        bare.select_set(True)
        refused = work / "refused"
        result, error = run_op(bpy.ops.neural_fields.use_photos, directory=str(refused))
        info["no_background"] = {"result": result, "error": error, "written": refused.exists()}
        bare.select_set(False)
        # a movie clip of one image (a one-frame image sequence): that image, unchanged
        clip_cam = objects[0]
        background = clip_cam.data.background_images[0]
        background.source = 'MOVIE_CLIP'
        common.make_active(clip_cam)
        still = bpy.data.movieclips.load(str(small / "images" / "view_0.png"))
        background.clip = still
        result, error = run_op(bpy.ops.neural_fields.use_photos, directory=str(work / "clip_still"))
        info["movie_clip_still"] = {"result": result, "error": error, "source": still.source}
        if (work / "clip_still" / "transforms.json").exists():
            back = datasets.read_dataset(work / "clip_still" / "transforms.json")
            info["movie_clip_still"]["same_as_view_0"] = (Path(back.frames[0].file_path).read_bytes()
                                                          == (small / "images" / "view_0.png").read_bytes())
        # a movie clip of a real movie (made here by Blender): the frame shown at the scene's frame
        info["movie_clip"] = movie_clip_cases(work, clip_cam, background, datasets)
        background.source = 'IMAGE'
        common.make_active(None)

    # (b2) the same cameras as a COLMAP text model (sparse/0), when the add-on has colmap.py
    try:
        colmap = common.addon_module("colmap")
    except ImportError:
        colmap = None
    out["colmap_available"] = colmap is not None
    if colmap is not None:
        from mathutils import Matrix
        folder = work / "colmap_scene"
        (folder / "sparse" / "0").mkdir(parents=True)
        shutil.copytree(small / "images", folder / "images")
        known = json.loads((small / "transforms.json").read_text())
        (folder / "sparse" / "0" / "cameras.txt").write_text(
            "# CAMERA_ID MODEL WIDTH HEIGHT PARAMS\n1 PINHOLE 48 32 55.5 55.5 25.0 15.5\n")
        lines = ["# IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME"]
        for index, frame in enumerate(known["frames"]):
            c2w_cv = np.array(frame["transform_matrix"]) @ np.diag([1.0, -1.0, -1.0, 1.0])
            rotation = c2w_cv[:3, :3].T
            t = -rotation @ c2w_cv[:3, 3]
            q = Matrix(rotation.tolist()).to_quaternion()
            lines.append(f"{index + 1} {q.w!r} {q.x!r} {q.y!r} {q.z!r} {t[0]!r} {t[1]!r} {t[2]!r} 1 "
                         f"view_{index}.png")
            lines.append("")
        (folder / "sparse" / "0" / "images.txt").write_text("\n".join(lines) + "\n")
        before = set(bpy.data.collections)
        result, error = run_op(bpy.ops.neural_fields.import_dataset,
                               filepath=str(folder / "sparse" / "0" / "cameras.txt"))
        new = [c for c in bpy.data.collections if c not in before]
        info = {"result": result, "error": error, "collections": [c.name for c in new]}
        if new:
            objects = sorted(new[0].objects, key=lambda o: o.name)
            info.update(check_cameras(objects, colmap.read_colmap(folder), cameras, camera_io, scene))
            # and the cameras the COLMAP model was made from
            info["pose_vs_transforms"] = max(float(np.max(np.abs(camera_io.camera_to_world(obj) - frame.c2w)))
                                             for obj, frame in zip(objects, dataset.frames))
        out["colmap"] = info

    # (b3) a failure half-way through creating the cameras takes everything back
    original = camera_io.apply_camera_model
    calls = []

    def failing(obj, scene_, model):
        calls.append(obj.name)
        if len(calls) == 3:
            raise cameras.CameraError(f"Camera '{obj.name}': injected failure")
        return original(obj, scene_, model)

    camera_io.apply_camera_model = failing
    try:
        scene.render.resolution_x, scene.render.resolution_y = 640, 480
        before = state()
        fresh = work / "half_way"  # images not loaded yet, so the two before the failure are new ones
        make_small(fresh)
        result, error = run_op(bpy.ops.neural_fields.import_dataset, filepath=str(fresh / "transforms.json"))
        out["half_way"] = {"result": result, "error": error, "calls": len(calls),
                           "unchanged": state() == before, "before": before, "after": state()}
    finally:
        camera_io.apply_camera_model = original

    # (c) bad datasets: nothing created
    bad = {}
    cases = {}
    missing = work / "bad_missing"
    data = make_small(missing)
    (missing / "images" / "view_2.png").unlink()
    cases["missing"] = missing
    wrong = work / "bad_size"
    make_small(wrong)
    write_png(wrong / "images" / "view_3.png", 40, 32, 9)
    cases["wrong_size"] = wrong
    nan = work / "bad_nan"
    data = make_small(nan)
    data["frames"][1]["transform_matrix"][0][3] = "NaN_PLACEHOLDER"
    (nan / "transforms.json").write_text(json.dumps(data).replace('"NaN_PLACEHOLDER"', "NaN"))
    cases["nan"] = nan
    escape = work / "bad_escape"
    data = make_small(escape)
    shutil.copy(escape / "images" / "view_0.png", work / "outside.png")
    data["frames"][2]["file_path"] = "../outside.png"
    (escape / "transforms.json").write_text(json.dumps(data))
    cases["escape"] = escape
    absolute = work / "bad_absolute"
    data = make_small(absolute)
    data["frames"][0]["file_path"] = str(work / "outside.png")
    (absolute / "transforms.json").write_text(json.dumps(data))
    cases["absolute"] = absolute
    mixed = work / "bad_mixed"
    data = make_small(mixed)
    for key in ("w", "h", "cx", "cy"):
        del data[key]
    write_png(mixed / "images" / "view_1.png", 40, 30, 5)
    (mixed / "transforms.json").write_text(json.dumps(data))
    cases["mixed_sizes"] = mixed
    cases["nothing_there"] = work / "does_not_exist"
    empty = work / "empty_folder"
    empty.mkdir()
    cases["empty_folder"] = empty
    for label, folder in cases.items():
        before = state()
        result, error = run_op(bpy.ops.neural_fields.import_dataset, filepath=str(folder))
        bad[label] = {"result": result, "error": error, "unchanged": state() == before,
                      "before": before, "after": state()}
    out["bad"] = bad

    # the panel is registered under the main one
    panel = getattr(bpy.types, "NEURALFIELDS_PT_datasets", None)
    out["panel_parent"] = getattr(panel, "bl_parent_id", None)
    return out


if __name__ == "__main__":
    common.run_main(main)
