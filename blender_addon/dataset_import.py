"""Datasets <-> Blender cameras (the thin bpy layer over datasets.py, cameras.py and camera_io.py).

- "Import Dataset" (``neural_fields.import_dataset``): a transforms*.json (NeRF-synthetic,
  instant-ngp, nerfstudio) or a COLMAP text model becomes one camera per frame in a new
  collection, each with its photo as the camera's background image, so an artist sees at a
  glance whether a capture lines up with the scene. The whole dataset is read and checked
  first (images present and readable, sizes equal to the intrinsics, one image size and one
  pixel aspect for all frames since a scene has one resolution, cameras Blender can
  represent); any problem is reported and nothing is created.
- "Use Photos" (``neural_fields.use_photos``): the selected cameras' background images
  become a dataset folder (images/NNNN.<ext> + transforms.json) with the cameras' own
  intrinsics and poses. An image sequence or movie clip gives the frame it shows at the
  scene's current frame; a movie's frame is decoded by Blender and saved as a PNG.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import bpy
from bpy.props import StringProperty
from bpy_extras.io_utils import ImportHelper

from . import camera_io
from ._backend import cameras, datasets

CameraError, CameraModel, Intrinsics = cameras.CameraError, cameras.CameraModel, cameras.Intrinsics
DatasetError = datasets.DatasetError

TRANSFORMS_NAMES = ("transforms.json", "transforms_train.json")
BACKGROUND_ALPHA = 0.5


class ImportFailed(Exception):
    """A problem to report to the user; nothing was (or is left) created."""


# --------------------------------------------------------------------------- finding and reading


def _colmap_root(folder: Path) -> Path | None:
    """The dataset folder of a COLMAP text model found in ``folder``, ``folder/sparse/0`` or
    ``folder/sparse`` (the images live in ``<root>/images`` or ``<root>``)."""
    for candidate in (folder, folder / "sparse" / "0", folder / "sparse"):
        if (candidate / "cameras.txt").is_file() and (candidate / "images.txt").is_file():
            return folder
    return None


def _colmap_root_of_model(model: Path) -> Path:
    if model.name == "0" and model.parent.name == "sparse":
        return model.parent.parent
    if model.name == "sparse":
        return model.parent
    return model


def locate_dataset(path: str | os.PathLike) -> tuple[str, Path]:
    """('transforms', json file) or ('colmap', dataset folder) for a chosen file or folder."""
    text = str(path)
    if not text:
        raise ImportFailed("No dataset chosen")
    path = Path(bpy.path.abspath(text) if text.startswith("//") else text)
    if path.is_file():
        if path.suffix.lower() == ".json":
            return "transforms", path
        if path.name in ("cameras.txt", "images.txt", "points3D.txt"):
            if (path.parent / "cameras.txt").is_file() and (path.parent / "images.txt").is_file():
                return "colmap", _colmap_root_of_model(path.parent)
        raise ImportFailed(f"{path} is not a transforms*.json file or a COLMAP cameras.txt / images.txt")
    if path.is_dir():
        for name in TRANSFORMS_NAMES:
            if (path / name).is_file():
                return "transforms", path / name
        root = _colmap_root(path)
        if root is not None:
            return "colmap", root
        raise ImportFailed(f"{path} holds no transforms.json, transforms_train.json or COLMAP "
                           "cameras.txt + images.txt")
    raise ImportFailed(f"{path} does not exist")


def read_any(path) -> tuple[datasets.Dataset, str]:
    """The dataset at ``path`` (file or folder) and a name for its collection."""
    kind, found = locate_dataset(path)
    if kind == "colmap":
        try:
            from . import colmap  # optional: the add-on works without it
        except ImportError:
            raise ImportFailed(f"{found} holds a COLMAP model, and COLMAP import is not available in this "
                               "version of the add-on; export it to transforms.json instead") from None
        dataset = colmap.read_colmap(found)
        return dataset, found.absolute().name or "COLMAP"
    dataset = datasets.read_dataset(found)
    name = found.absolute().parent.name or "Dataset"
    stem = found.stem
    if stem.startswith("transforms_") and len(stem) > len("transforms_"):
        name = f"{name} ({stem[len('transforms_'):]})"
    elif stem != "transforms":
        name = f"{name} ({stem})"
    return dataset, name


@dataclass
class PlannedCamera:
    name: str
    model: CameraModel
    c2w: object
    image: Path


def plan_import(dataset: datasets.Dataset) -> list[PlannedCamera]:
    """Check every frame before anything is created; ImportFailed names the first problem."""
    plans = []
    first: tuple[Intrinsics, CameraModel, str] | None = None
    names = set()
    for index, frame in enumerate(dataset.frames):
        label = frame.name or str(frame.file_path)
        where = f"frame {index} ({label})"
        image = Path(frame.file_path)
        if not image.is_file():
            raise ImportFailed(f"{where}: image {image} is missing")
        try:
            size = datasets.image_size(image)
        except DatasetError as exc:
            raise ImportFailed(f"{where}: {exc}") from None
        intr = frame.intrinsics
        if intr is None:
            raise ImportFailed(f"{where}: no intrinsics")
        if tuple(size) != (intr.w, intr.h):
            raise ImportFailed(f"{where}: image {image.name} is {size[0]}x{size[1]} pixels but the dataset "
                               f"says {intr.w}x{intr.h}")
        if first is not None and (intr.w, intr.h) != (first[0].w, first[0].h):
            raise ImportFailed(f"{where}: its images are {intr.w}x{intr.h} but {first[2]} has "
                               f"{first[0].w}x{first[0].h}; a Blender scene has one resolution, so "
                               "datasets with mixed image sizes cannot be imported")
        try:
            model = cameras.camera_from_intrinsics(intr)
        except CameraError as exc:
            raise ImportFailed(f"{where}: {exc}") from None
        if first is not None and not (math.isclose(model.pixel_aspect_x, first[1].pixel_aspect_x, rel_tol=1e-9)
                                      and math.isclose(model.pixel_aspect_y, first[1].pixel_aspect_y, rel_tol=1e-9)):
            raise ImportFailed(f"{where}: its fl_x/fl_y differs from that of {first[2]}; a Blender scene has "
                               "one pixel aspect, so such datasets cannot be imported")
        try:
            c2w = cameras.validate_camera_matrix(where, frame.c2w)
        except CameraError as exc:
            raise ImportFailed(str(exc)) from None
        if first is None:
            first = (intr, model, where)
        stem = Path(label).stem or f"{index:04d}"
        name = stem if stem not in names else f"{stem}.{index:04d}"
        names.add(name)
        plans.append(PlannedCamera(name=name, model=model, c2w=c2w, image=image))
    if not plans:
        raise ImportFailed("The dataset has no frames")
    return plans


_RENDER_KEYS = ("resolution_x", "resolution_y", "resolution_percentage", "pixel_aspect_x", "pixel_aspect_y")


def create_cameras(context, plans: list[PlannedCamera], collection_name: str):
    """Create the collection, cameras and background images; on any error remove them again."""
    scene = context.scene
    render = scene.render
    saved_render = {key: getattr(render, key) for key in _RENDER_KEYS}
    images_before = set(bpy.data.images)
    created_objects, created_cameras = [], []
    collection = None
    try:
        collection = bpy.data.collections.new(collection_name)
        scene.collection.children.link(collection)
        for plan in plans:
            data = bpy.data.cameras.new(plan.name)
            created_cameras.append(data)
            obj = bpy.data.objects.new(plan.name, data)
            created_objects.append(obj)
            collection.objects.link(obj)
            camera_io.apply_camera_model(obj, scene, plan.model)
            camera_io.set_camera_to_world(obj, plan.c2w)
            image = bpy.data.images.load(str(plan.image), check_existing=True)
            # Blender loads a corrupt or truncated file without complaint, as an empty image (its
            # header alone passed plan_import); decoding it once here finds that, and freeing the
            # decoded pixels again keeps a dataset of hundreds of photos from filling memory.
            readable = image.has_data or tuple(image.size) != (0, 0)
            image.buffers_free()
            if not readable:
                raise ImportFailed(f"Blender cannot read the image {plan.image} of camera '{plan.name}': the file "
                                   "is corrupt or truncated. Export it again, or remove its frame from the dataset")
            background = data.background_images.new()
            background.image = image
            background.alpha = BACKGROUND_ALPHA
            background.frame_method = 'STRETCH'
            data.show_background_images = True
        context.view_layer.update()
    except BaseException as exc:
        for obj in created_objects:
            bpy.data.objects.remove(obj)
        for data in created_cameras:
            bpy.data.cameras.remove(data)
        if collection is not None:
            bpy.data.collections.remove(collection)
        for image in set(bpy.data.images) - images_before:
            bpy.data.images.remove(image)
        for key, value in saved_render.items():
            setattr(render, key, value)
        if isinstance(exc, ImportFailed):
            raise
        if isinstance(exc, (CameraError, DatasetError, RuntimeError, OSError)):
            raise ImportFailed(str(exc)) from None
        raise
    return collection, created_objects


def import_dataset(context, path):
    """Read, check, create. Returns (collection, camera objects, number of frames with lens distortion);
    ImportFailed leaves nothing behind."""
    try:
        dataset, name = read_any(path)
    except (DatasetError, CameraError) as exc:
        raise ImportFailed(str(exc)) from None
    except ImportFailed:
        raise
    except Exception as exc:  # noqa: BLE001 - a COLMAP reader's own errors
        raise ImportFailed(f"{type(exc).__name__}: {exc}") from None
    plans = plan_import(dataset)
    collection, objects = create_cameras(context, plans, name)
    distorted = sum(1 for frame in dataset.frames if any(frame.distortion.values()))
    return collection, objects, distorted


class NEURALFIELDS_OT_import_dataset(bpy.types.Operator, ImportHelper):
    """Import a dataset's cameras (transforms.json or COLMAP text model), each with its photo as background"""

    bl_idname = "neural_fields.import_dataset"
    bl_label = "Import Dataset"
    bl_options = {'REGISTER', 'UNDO'}

    filename_ext = ".json"
    filter_glob: StringProperty(default="*.json;*.txt", options={'HIDDEN'})

    def execute(self, context):
        try:
            collection, objects, distorted = import_dataset(context, self.filepath)
        except ImportFailed as exc:
            self.report({'ERROR'}, str(exc))
            return {'CANCELLED'}
        if distorted:
            self.report({'WARNING'}, f"{distorted} of {len(objects)} frames have lens distortion, which Blender "
                                     "cameras do not model: their background images line up only near the centre")
        self.report({'INFO'}, f"Imported {len(objects)} cameras into collection '{collection.name}'")
        return {'FINISHED'}


# --------------------------------------------------------------------------- Use Photos


_NUMBER = re.compile(r"(\d+)(?!.*\d)")


def _sequence_frame(image, user, scene) -> int:
    """The frame number an image sequence shows at the scene's current frame (as Blender computes it)."""
    duration = user.frame_duration
    frame = scene.frame_current - user.frame_start + 1
    if duration > 0:
        if user.use_cyclic:
            frame = (frame - 1) % duration + 1
        else:
            frame = min(max(frame, 1), duration)
    return frame + user.frame_offset


@dataclass(frozen=True)
class MovieFrame:
    """One frame of a movie file (a camera's background movie clip at the scene's frame)."""

    path: Path
    index: int              # 0-based frame of the file, as Blender decodes it
    size: tuple[int, int]
    camera: str


def _movie_clip(background, scene):
    """The clip a MOVIE_CLIP background shows: its own, or with "Camera Clip" the one Blender's
    viewport takes (BKE_object_movieclip_get): the scene camera's Camera Solver constraint's clip
    (the first one not muted), else the scene's active clip."""
    if not background.use_camera_clip:
        return background.clip
    if scene.camera is None:
        return None
    solver = None
    for constraint in scene.camera.constraints:
        if constraint.type == 'CAMERA_SOLVER' and (solver is None or solver.mute):
            solver = constraint
    if solver is not None and not solver.use_active_clip:
        return solver.clip
    return scene.active_clip


def _clip_photo(obj, clip, scene):
    """The file (image sequence) or MovieFrame (movie) ``clip`` shows at the scene's current frame.

    Blender's mapping (movieclip.cc): frame ``scene - clip.frame_start + clip.frame_offset`` of the
    movie (0-based), or that plus the number in the clip's file name for an image sequence."""
    path = Path(bpy.path.abspath(clip.filepath, library=clip.library))
    index = scene.frame_current - clip.frame_start + clip.frame_offset
    if clip.source == 'SEQUENCE':
        match = _NUMBER.search(path.name)
        if match is not None:
            digits = match.group(1)
            number = int(digits) + index
            if number < 0:
                raise ImportFailed(f"Camera '{obj.name}': movie clip '{clip.name}' has no image for scene frame "
                                   f"{scene.frame_current}")
            path = path.with_name(path.name[:match.start()] + f"{number:0{len(digits)}d}" + path.name[match.end():])
        if not path.is_file():
            raise ImportFailed(f"Camera '{obj.name}': the image {path} of its background movie clip "
                               f"'{clip.name}' at scene frame {scene.frame_current} is missing")
        return path
    if not path.is_file():
        raise ImportFailed(f"Camera '{obj.name}': the movie file {path} of its background movie clip "
                           f"'{clip.name}' is missing")
    duration = clip.frame_duration
    if not 0 <= index < duration:
        first = clip.frame_start - clip.frame_offset
        raise ImportFailed(f"Camera '{obj.name}': its background movie clip '{clip.name}' shows nothing at scene "
                           f"frame {scene.frame_current} (its {duration} frames are at scene frames "
                           f"{first}-{first + duration - 1}); set the scene frame to one of them")
    return MovieFrame(path=path, index=index, size=(int(clip.size[0]), int(clip.size[1])), camera=obj.name)


def write_movie_frame(frame: MovieFrame, target: Path) -> None:
    """Decode ``frame`` with Blender (no render, no GPU) and save it as a PNG of the same size.

    The movie is loaded as a fresh image datablock (source MOVIE); an image texture's
    ``evaluate`` acquires the wanted frame through its image user, after which the image's
    ``pixels`` are that frame (Blender reads a movie image without a user at its last frame).
    Every datablock made here is removed again."""
    import numpy as np

    movie = texture = out = None
    try:
        movie = bpy.data.images.load(str(frame.path), check_existing=False)
        if movie.source != 'MOVIE':
            raise ImportFailed(f"Camera '{frame.camera}': Blender does not read {frame.path.name} as a movie")
        texture = bpy.data.textures.new(".neural_fields_movie_frame", 'IMAGE')
        texture.image = movie
        user = texture.image_user
        # whatever the scene frame, this user shows frame index + 1 (1-based) of the movie
        user.use_cyclic = False
        user.frame_start = 1
        user.frame_duration = 1
        user.frame_offset = frame.index
        user.frame_current = frame.index + 1
        texture.evaluate((0.0, 0.0, 0.0))
        w, h = movie.size[:]
        if (w, h) != frame.size:
            raise ImportFailed(f"Camera '{frame.camera}': frame {frame.index + 1} of {frame.path.name} is "
                               f"{w}x{h}, not {frame.size[0]}x{frame.size[1]}")
        pixels = np.empty(w * h * movie.channels, dtype=np.float32)
        movie.pixels.foreach_get(pixels)
        out = bpy.data.images.new(".neural_fields_movie_frame", w, h, alpha=False, float_buffer=movie.is_float)
        if movie.is_float:
            out.colorspace_settings.name = movie.colorspace_settings.name
        if movie.channels != 4:
            pixels = np.concatenate([pixels.reshape(-1, movie.channels)[:, :3],
                                     np.ones((w * h, 1), np.float32)], axis=1).ravel()
        out.pixels.foreach_set(pixels)
        out.filepath_raw = str(target)
        out.file_format = 'PNG'
        out.save()
    except RuntimeError as exc:
        raise ImportFailed(f"Camera '{frame.camera}': cannot read frame {frame.index + 1} of "
                           f"{frame.path.name}: {exc}") from None
    finally:
        if texture is not None:
            bpy.data.textures.remove(texture)
        for image in (movie, out):
            if image is not None:
                bpy.data.images.remove(image)


def background_photo(obj, scene) -> Path | MovieFrame:
    """The image file (or movie frame) of ``obj``'s (first usable) background at the scene's frame."""
    data = obj.data
    for background in data.background_images:
        if background.source == 'IMAGE' and background.image is not None:
            image = background.image
            if image.packed_file is not None:
                raise ImportFailed(f"Camera '{obj.name}': its background image '{image.name}' is packed "
                                   "into the .blend; unpack it (Image > Unpack) first")
            path = Path(bpy.path.abspath(image.filepath, library=image.library))
            if image.source == 'SEQUENCE':
                frame = _sequence_frame(image, background.image_user, scene)
                match = _NUMBER.search(path.name)
                if match is None:
                    raise ImportFailed(f"Camera '{obj.name}': cannot find the frame number in {path.name}")
                digits = match.group(1)
                name = path.name[:match.start()] + f"{frame:0{len(digits)}d}" + path.name[match.end():]
                path = path.with_name(name)
            elif image.source != 'FILE':
                raise ImportFailed(f"Camera '{obj.name}': its background image '{image.name}' is "
                                   f"{image.source.lower()}, not a file; save it as an image first")
            if not path.is_file():
                raise ImportFailed(f"Camera '{obj.name}': its background image file {path} is missing")
            return path
        if background.source == 'MOVIE_CLIP':
            clip = _movie_clip(background, scene)
            if clip is not None:
                return _clip_photo(obj, clip, scene)
    raise ImportFailed(f"Camera '{obj.name}' has no background image to use as its photo")


def use_photos(context, objects, directory) -> Path:
    """Write ``directory``/images/NNNN.<ext> + transforms.json for ``objects`` (cameras)."""
    if not directory:
        raise ImportFailed("No output folder chosen")
    root = Path(bpy.path.abspath(directory))
    cams = sorted((obj for obj in objects if obj.type == 'CAMERA'), key=lambda obj: obj.name)
    if not cams:
        raise ImportFailed("Select one or more cameras that have background images")
    if (root / "transforms.json").exists():
        raise ImportFailed(f"{root} already holds a transforms.json; choose an empty folder")
    scene = context.scene
    plans = []
    for index, obj in enumerate(cams):
        try:
            intr = cameras.intrinsics_from_camera(camera_io.camera_model_from_object(obj, scene))
            c2w = camera_io.camera_to_world(obj)
        except CameraError as exc:
            raise ImportFailed(str(exc)) from None
        source = background_photo(obj, scene)
        if isinstance(source, MovieFrame):
            size, what, suffix = source.size, f"{source.path.name} (frame {source.index + 1})", ".png"
        else:
            try:
                size = datasets.image_size(source)
            except DatasetError as exc:
                raise ImportFailed(f"Camera '{obj.name}': {exc}") from None
            what = source.name
            suffix = source.suffix.lower() if source.suffix.lower() in datasets.IMAGE_SUFFIXES else ".png"
        if tuple(size) != (intr.w, intr.h):
            raise ImportFailed(f"Camera '{obj.name}': its photo {what} is {size[0]}x{size[1]} pixels but "
                               f"the scene renders {intr.w}x{intr.h}; set the output resolution to the photo's")
        plans.append((obj, intr, c2w, source, f"images/{index:04d}{suffix}"))
    frames = []
    try:
        (root / "images").mkdir(parents=True, exist_ok=True)
        for obj, intr, c2w, source, name in plans:
            if isinstance(source, MovieFrame):
                write_movie_frame(source, root / name)
            else:
                shutil.copyfile(source, root / name)
            frames.append(datasets.Frame(file_path=name, c2w=c2w, intrinsics=intr,
                                         extra={"blender_camera": obj.name}))
        datasets.write_transforms(root / "transforms.json", frames)
    except (OSError, DatasetError) as exc:
        raise ImportFailed(f"Cannot write the dataset to {root}: {exc}") from None
    return root


class NEURALFIELDS_OT_use_photos(bpy.types.Operator):
    """Write the selected cameras and their background images as a dataset (images/ + transforms.json)"""

    bl_idname = "neural_fields.use_photos"
    bl_label = "Use Photos"
    bl_options = {'REGISTER'}

    directory: StringProperty(name="Folder", subtype='DIR_PATH',
                              description="Folder to write images/ and transforms.json into")
    filter_folder: bpy.props.BoolProperty(default=True, options={'HIDDEN'})

    def invoke(self, context, event):
        if bpy.app.background:
            return self.execute(context)
        context.window_manager.fileselect_add(self)
        return {'RUNNING_MODAL'}

    def execute(self, context):
        try:
            root = use_photos(context, context.selected_objects, self.directory)
        except ImportFailed as exc:
            self.report({'ERROR'}, str(exc))
            return {'CANCELLED'}
        self.report({'INFO'}, f"Wrote the dataset to {root}")
        return {'FINISHED'}


class NEURALFIELDS_PT_datasets(bpy.types.Panel):
    bl_label = "Datasets"
    bl_idname = "NEURALFIELDS_PT_datasets"
    bl_space_type = 'VIEW_3D'
    bl_region_type = 'UI'
    bl_category = "Neural Fields"
    bl_parent_id = "NEURALFIELDS_PT_main"
    bl_options = {'DEFAULT_CLOSED'}

    def draw(self, context):
        column = self.layout.column(align=True)
        column.operator(NEURALFIELDS_OT_import_dataset.bl_idname, icon='IMPORT')
        column.operator(NEURALFIELDS_OT_use_photos.bl_idname, icon='IMAGE_DATA')


classes = (NEURALFIELDS_OT_import_dataset, NEURALFIELDS_OT_use_photos, NEURALFIELDS_PT_datasets)

register, unregister = bpy.utils.register_classes_factory(classes)
