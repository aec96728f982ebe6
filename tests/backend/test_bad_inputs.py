"""The catalogue of bad inputs (docs/bad_inputs.md), backend and add-on modules without Blender.

Each case feeds one broken input to the real code path and asserts a message that says what is
wrong and what to do (a clean ProtocolError / DatasetError / MeshError / InputError / ValueError,
never a traceback), and that nothing earlier is changed. Inputs that look broken but are valid
(non-manifold and self-intersecting meshes, 16-bit and EXR images, extra keys) must work.

The Blender-level half (real operators, scene before == after) is
tests/blender/test_bad_inputs_blender.py.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # the add-on's bpy-free modules, from the source checkout

from blender_addon import jobs  # noqa: E402
from inr_backend import coverage, datasets, imageio, protocol
from inr_backend.datasets import DatasetError
from inr_backend.geometry.mesh import MeshError, load_mesh, sanitize_mesh
from inr_backend.geometry.winding import winding_numbers
from inr_backend.plyio import PlyError, read_ply, write_ply  # noqa: E402

EYE = np.eye(4).tolist()


# --------------------------------------------------------------------------- helpers


def cube(offset=(0.0, 0.0, 0.0), size=1.0):
    """A closed, outward-oriented cube of side ``size`` with its min corner at ``offset``."""
    v = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], float) * size + offset
    f = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                  [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])
    return v, f


def grid_mesh(cells: int):
    """A wavy (cells x cells) grid of 2 * cells^2 triangles, made in numpy in about a second."""
    xs = np.linspace(0.0, 1.0, cells + 1)
    x, y = np.meshgrid(xs, xs, indexing="ij")
    vertices = np.stack([x.ravel(), y.ravel(), 0.05 * np.sin(9 * x.ravel()) * np.cos(7 * y.ravel())], axis=1)
    i = (np.arange(cells)[:, None] * (cells + 1) + np.arange(cells)[None, :]).ravel()
    faces = np.concatenate([np.stack([i, i + 1, i + cells + 2], 1), np.stack([i, i + cells + 2, i + cells + 1], 1)])
    return vertices.astype(np.float32), faces.astype(np.int32)


def tree_digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` -> sha1 of its bytes: equal before and after = untouched."""
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_clear(message: str, *phrases: str) -> None:
    """A message for a person: the phrases, and no traceback or Python internals."""
    for phrase in phrases:
        assert phrase in message, (phrase, message)
    for noise in ("Traceback", "File \"", "Error:"):
        assert noise not in message, (noise, message)


# --------------------------------------------------------------------------- meshes


@pytest.mark.parametrize("case, vertices, faces, backend_words, addon_words", [
    ("empty", np.zeros((0, 3)), np.zeros((0, 3), int), "no faces", "has no faces"),
    ("point_cloud", np.random.default_rng(0).normal(size=(50, 3)), np.zeros((0, 3), int), "no faces", "has no faces"),
    ("coincident", np.ones((3, 3)), np.array([[0, 1, 2]]), "no area", "zero surface area"),
    ("collinear", np.array([[0, 0, 0], [1, 1, 1], [3, 3, 3.0]]), np.array([[0, 1, 2]]), "no area",
     "zero surface area"),
    ("all_nan", np.full((3, 3), np.nan), np.array([[0, 1, 2]]), "NaN or infinite", "non-finite"),
    ("bad_index", cube()[0], np.array([[0, 1, 99]]), "corrupt", "missing vertices"),
])
def test_unusable_meshes_are_refused_in_both_places(case, vertices, faces, backend_words, addon_words):
    with pytest.raises(MeshError) as backend:
        sanitize_mesh(vertices, faces)
    assert_clear(str(backend.value), backend_words)
    with pytest.raises(jobs.InputError) as addon:
        jobs.validate_mesh(vertices, faces, "Thing")
    assert_clear(str(addon.value), "'Thing'", addon_words)


def test_nan_vertex_is_refused_by_the_addon_with_what_to_fix_and_dropped_by_the_backend():
    vertices, faces = cube()
    vertices[0] = np.nan
    with pytest.raises(jobs.InputError) as exc:
        jobs.validate_mesh(vertices, faces, "Broken")
    assert_clear(str(exc.value), "1 of 8 vertices", "NaN", "modifier")
    # A job folder written elsewhere: the backend keeps the faces that do not touch the NaN.
    clean_v, clean_f = sanitize_mesh(vertices, faces)
    assert np.isfinite(clean_v).all() and len(clean_f) == 12 - 6   # vertex 0 is in 6 triangles


def test_huge_mesh_is_refused_fast_and_small_in_memory(tmp_path):
    vertices, faces = grid_mesh(1582)                       # 5,005,448 triangles
    assert len(faces) > 5_000_000
    started = time.perf_counter()
    with pytest.raises(jobs.InputError) as addon:
        jobs.validate_mesh(vertices, faces, "Sculpt")
    with pytest.raises(MeshError) as backend:
        sanitize_mesh(vertices, faces)
    assert time.perf_counter() - started < 2.0
    assert_clear(str(addon.value), "'Sculpt' has 5,005,448 triangles", "2,000,000", "Decimate", "ratio 0.39")
    assert_clear(str(backend.value), "5,005,448 triangles", "Decimate")

    # As a job's inputs/mesh.ply: refused from the PLY header, before the 100 MB body is read.
    path = tmp_path / "inputs" / "mesh.ply"
    write_ply(path, vertices, faces)
    del vertices, faces
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(MeshError, match="5,005,448 triangles"):
        load_mesh(path)
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 1.0 and peak < 1_000_000, (elapsed, peak)


def test_mesh_just_under_the_limit_is_accepted_in_bounded_time():
    vertices, faces = grid_mesh(999)                        # 1,996,002 triangles
    started = time.perf_counter()
    jobs.validate_mesh(vertices, faces, "Dense")
    clean_v, clean_f = sanitize_mesh(vertices, faces)
    assert len(clean_f) == len(faces) and time.perf_counter() - started < 20.0


def test_point_cloud_and_corrupt_mesh_files(tmp_path):
    points = tmp_path / "points.ply"
    write_ply(points, np.random.default_rng(1).normal(size=(100, 3)), np.zeros((0, 3), int))
    with pytest.raises(MeshError) as exc:
        load_mesh(points)
    assert_clear(str(exc.value), "point cloud", "mesh the points first")
    obj = tmp_path / "points.obj"
    obj.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    with pytest.raises(MeshError, match="point cloud|no triangles"):
        load_mesh(obj)
    garbage = tmp_path / "garbage.ply"
    garbage.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex lots\nend_header\n")
    with pytest.raises(PlyError, match="corrupt PLY header"):
        read_ply(garbage)
    truncated = tmp_path / "truncated.ply"
    write_ply(truncated, *cube())
    truncated.write_bytes(truncated.read_bytes()[:-20])
    with pytest.raises(PlyError, match="corrupt or truncated"):
        read_ply(truncated)
    with pytest.raises(MeshError, match="not found"):
        load_mesh(tmp_path / "missing.obj")


def test_non_manifold_and_self_intersecting_meshes_work():
    """Winding numbers give sane insides where ray parity would not: two overlapping cubes
    (self-intersecting, not merged), a third cube sharing only an edge with the second (a
    non-manifold edge: four faces), and a stray fin triangle inside."""
    a_v, a_f = cube((0.0, 0.0, 0.0))
    b_v, b_f = cube((0.5, 0.5, 0.5))                 # overlaps a in [0.5, 1]^3
    c_v, c_f = cube((1.5, 1.5, 0.5))                 # shares the edge x=y=1.5 with b
    fin_v = np.array([[0.2, 0.2, 0.2], [0.8, 0.2, 0.2], [0.2, 0.8, 0.2]])
    vertices = np.concatenate([a_v, b_v, c_v, fin_v])
    faces = np.concatenate([a_f, b_f + 8, c_f + 16, [[24, 25, 26]]])
    clean_v, clean_f = sanitize_mesh(vertices, faces)
    assert len(clean_f) == 37
    queries = torch.tensor([[0.25, 0.25, 0.6],      # in a only
                            [0.75, 0.75, 0.75],     # in a and b (winding 2)
                            [1.25, 1.25, 1.25],     # in b only
                            [2.0, 2.0, 1.0],        # in c only
                            [1.25, 1.75, 1.0],      # beside the shared edge, outside b and c
                            [-0.5, 0.5, 0.5], [3.0, 3.0, 3.0]], dtype=torch.float64)
    w = winding_numbers(queries, clean_v, clean_f).numpy()
    inside = w > 0.5
    assert inside.tolist() == [True, True, True, True, False, False, False], w
    assert abs(w[1] - 2.0) < 0.1 and abs(w[0] - 1.0) < 0.1    # fin: +-1/2 at most near it, sign stays


# --------------------------------------------------------------------------- images


def test_image_files(tmp_path):
    rng = np.random.default_rng(2)
    rgba = rng.random((6, 5, 4)).astype(np.float32)
    rgba[..., 3] = 1.0
    # supported: 8-bit with and without alpha, 16-bit, EXR float and half
    imageio.write_png(tmp_path / "rgb8.png", rgba[..., :3])
    imageio.write_png(tmp_path / "rgba8.png", rgba)
    imageio.write_png(tmp_path / "rgba16.png", rgba, bits=16)
    imageio.write_exr(tmp_path / "float.exr", rgba, pixel_type="float")
    imageio.write_exr(tmp_path / "half.exr", rgba[..., :3], pixel_type="half", compression="ZIPS")
    for name, channels, bits, tolerance in (("rgb8.png", 3, 8, 0.5 / 255), ("rgba8.png", 4, 8, 0.5 / 255),
                                            ("rgba16.png", 4, 16, 0.5 / 65535), ("float.exr", 4, 32, 0.0),
                                            ("half.exr", 3, 16, 1e-3)):
        pixels, info = imageio.read_image(tmp_path / name)
        assert pixels.shape == (6, 5, channels) and info["bit_depth"] == bits, (name, info)
        assert np.abs(pixels - rgba[..., :channels]).max() <= tolerance, name
        assert datasets.image_size(tmp_path / name) == (5, 6)

    # refused, each with a sentence
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "garbage.png").write_bytes(b"this is not an image at all")
    good = (tmp_path / "rgb8.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(good[: len(good) // 2])
    piz = bytearray(imageio.encode_exr(rgba))
    index = piz.index(b"compression\0compression\0") + len(b"compression\0compression\0") + 4
    piz[index] = 4                                   # PIZ: a codec this reader does not decode
    (tmp_path / "piz.exr").write_bytes(bytes(piz))
    clear = np.zeros((4, 4, 4), np.float32)
    imageio.write_png(tmp_path / "transparent.png", clear)
    imageio.write_png(tmp_path / "tiny.png", rgba[:1, :1])
    for name, words in (("missing.png", "not found"), ("empty.png", "empty (0 bytes)"),
                        ("garbage.png", "not an image this backend reads"),
                        ("truncated.png", "corrupt or truncated"), ("piz.exr", "PIZ compression"),
                        ("transparent.png", "fully transparent"), ("tiny.png", "too small")):
        with pytest.raises(ValueError) as exc:
            imageio.read_image(tmp_path / name)
        assert_clear(str(exc.value), words)
    assert "Save As" in str(pytest.raises(ValueError, imageio.read_image, tmp_path / "piz.exr").value)


def nerf_dataset(root: Path, sizes, suffix=".png", writer=None) -> Path:
    """A ring of cameras looking at the origin, one image each (``sizes``: (w, h) per view)."""
    frames = []
    for index, (w, h) in enumerate(sizes):
        angle = 2 * math.pi * index / len(sizes)
        eye = np.array([4 * math.cos(angle), 4 * math.sin(angle), 1.0])
        forward = -eye / np.linalg.norm(eye)
        right = np.cross(forward, [0, 0, 1.0])
        right /= np.linalg.norm(right)
        c2w = np.eye(4)
        c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, np.cross(right, forward), -forward, eye
        name = f"images/{index:03d}{suffix}"
        (writer or (lambda p, a: imageio.write_png(p, a)))(root / name, np.full((h, w, 3), 0.5, np.float32))
        frames.append(datasets.Frame(file_path=name, c2w=c2w,
                                     intrinsics=datasets.Intrinsics(fl_x=w, fl_y=w, cx=w / 2, cy=h / 2, w=w, h=h)))
    datasets.write_transforms(root / "transforms.json", frames)
    return root / "transforms.json"


@pytest.mark.parametrize("case, sizes, suffix, damage, words", [
    ("mixed_sizes", [(16, 16)] * 20 + [(20, 12)] * 4, ".png", None, "different sizes"),
    ("missing", [(16, 16)] * 24, ".png", "delete", "images are missing"),
    ("corrupt", [(16, 16)] * 24, ".png", "garbage", "cannot be read as PNG or JPEG"),
    ("exr", [(16, 16)] * 24, ".exr", None, "OpenEXR"),
])
def test_nerf_views_with_bad_images_are_refused_before_training(tmp_path, case, sizes, suffix, damage, words):
    writer = (lambda p, a: imageio.write_exr(p, a)) if suffix == ".exr" else None
    transforms = nerf_dataset(tmp_path, sizes, suffix, writer)
    if damage == "delete":
        (tmp_path / "images" / "003.png").unlink()
    elif damage == "garbage":
        (tmp_path / "images" / "003.png").write_bytes(b"\x89PNG\r\n\x1a\n but then nothing useful")
    report = coverage.check_views(datasets.read_transforms(transforms), root=tmp_path)
    assert not report.ok
    assert_clear(" ".join(report.errors), words)


def test_sixteen_bit_views_pass_the_checks(tmp_path):
    writer = lambda p, a: imageio.write_png(p, a, bits=16)   # noqa: E731
    transforms = nerf_dataset(tmp_path, [(16, 16)] * 24, ".png", writer)
    assert coverage.check_views(datasets.read_transforms(transforms), root=tmp_path).ok


# --------------------------------------------------------------------------- transforms.json


def write_transforms_doc(root: Path, doc) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "a.png").exists():
        imageio.write_png(root / "a.png", np.full((6, 8, 3), 0.5, np.float32))
    path = root / "transforms.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc), encoding="utf-8")
    return path


def frame(**overrides):
    return {"file_path": "a.png", "transform_matrix": EYE, **overrides}


NAN_MATRIX = ('{"fl_x": 10, "frames": [{"file_path": "a.png", '
              '"transform_matrix": [[NaN,0,0,0],[0,1,0,0],[0,0,1,0],[0,0,0,1]]}]}')

TRANSFORMS_CASES = [
    ("nan_matrix", NAN_MATRIX, "NaN or infinite"),
    ("nan_focal", '{"fl_x": NaN, "frames": [{"file_path": "a.png", "transform_matrix": %s}]}' % json.dumps(EYE),
     "give a finite number"),
    ("zero_focal", {"fl_x": 0, "frames": [frame()]}, "focal lengths must be positive"),
    ("zero_angle", {"camera_angle_x": 0, "frames": [frame()]}, "strictly between 0 and pi"),
    ("angle_180", {"camera_angle_x": math.pi, "frames": [frame()]}, "strictly between 0 and pi"),
    ("no_focal", {"frames": [frame()]}, "no focal length"),
    ("no_frames", {"fl_x": 10}, "no 'frames' list"),
    ("no_file_path", {"fl_x": 10, "frames": [{"transform_matrix": EYE}]}, "missing 'file_path'"),
    ("no_matrix", {"fl_x": 10, "frames": [{"file_path": "a.png"}]}, "missing 'transform_matrix'"),
    ("matrix_string", {"fl_x": 10, "frames": [frame(transform_matrix="identity")]}, "not a matrix of numbers"),
    ("matrix_3x3", {"fl_x": 10, "frames": [frame(transform_matrix=np.eye(3).tolist())]}, "expected 4x4"),
    ("matrix_degenerate", {"fl_x": 10, "frames": [frame(transform_matrix=np.diag([0, 0, 0, 1.0]).tolist())]},
     "degenerate"),
    ("matrix_bottom_row", {"fl_x": 10, "frames": [frame(transform_matrix=np.ones((4, 4)).tolist())]},
     "expected [0, 0, 0, 1]"),
    ("focal_string", {"fl_x": "35mm", "frames": [frame()]}, "fl_x must be a number"),
    ("focal_bool", {"fl_x": True, "frames": [frame()]}, "fl_x must be a number"),
    ("focal_overflow", '{"fl_x": 1%s, "frames": [{"file_path": "a.png", "transform_matrix": %s}]}'
     % ("0" * 400, json.dumps(EYE)), "give a finite number"),
    ("size_fraction", {"fl_x": 10, "w": 8.5, "h": 6, "frames": [frame()]}, "positive whole number"),
    ("size_huge", {"fl_x": 10, "w": 10 ** 9, "h": 6, "frames": [frame()]}, "at most 65536"),
    ("camera_model_list", {"fl_x": 10, "camera_model": ["OPENCV"], "frames": [frame()]}, "camera_model must be"),
    ("file_path_number", {"fl_x": 10, "frames": [frame(file_path=7)]}, "non-empty string"),
    ("absolute_path", {"fl_x": 10, "frames": [frame(file_path="/etc/hostname")]}, "is absolute"),
    ("windows_path", {"fl_x": 10, "frames": [frame(file_path="C:\\Users\\x.png")]}, "is absolute"),
    ("parent_path", {"fl_x": 10, "frames": [frame(file_path="../outside.png")]}, "outside the dataset folder"),
    ("sneaky_parent", {"fl_x": 10, "frames": [frame(file_path="images/../../outside.png")]},
     "outside the dataset folder"),
    ("nul_in_path", {"fl_x": 10, "frames": [frame(file_path="a.png\u0000.jpg")]}, "control characters"),
    ("long_name", {"fl_x": 10, "frames": [frame(file_path="x" * 300 + ".png")]}, "longer than 255 bytes"),
    ("missing_image_no_size", {"fl_x": 10, "frames": [frame(file_path="gone.png")]}, "give w and h"),
    ("not_json", "{'frames': []}", "not valid JSON"),
    ("nested_deep", "[" * 50_000 + "]" * 50_000, "nested too deeply"),
    ("top_level_list", [frame()], "expected a JSON object"),
]


@pytest.mark.parametrize("case, doc, words", TRANSFORMS_CASES, ids=[c[0] for c in TRANSFORMS_CASES])
def test_bad_transforms_json_is_refused(tmp_path, case, doc, words):
    path = write_transforms_doc(tmp_path / "dataset", doc)
    before = tree_digest(tmp_path)
    with pytest.raises(DatasetError) as exc:
        datasets.read_dataset(path)
    assert_clear(str(exc.value), words)
    assert tree_digest(tmp_path) == before


def test_symlink_escaping_the_dataset_is_refused(tmp_path):
    secret = tmp_path / "secret.png"
    imageio.write_png(secret, np.zeros((6, 8, 3), np.float32))
    root = tmp_path / "dataset"
    path = write_transforms_doc(root, {"fl_x": 10, "frames": [frame(file_path="images/0000.png")]})
    (root / "images").mkdir()
    (root / "images" / "0000.png").symlink_to(secret)
    with pytest.raises(DatasetError) as exc:
        datasets.read_dataset(path)
    assert_clear(str(exc.value), "is a link to", "outside the dataset folder", "copy the image")
    (root / "images" / "0000.png").unlink()
    (root / "images" / "0000.png").symlink_to(root / "a.png")          # a link inside is fine
    assert datasets.read_dataset(path).frames[0].intrinsics.w == 8


def test_extra_keys_are_ignored_and_kept(tmp_path):
    doc = {"fl_x": 10, "w": 8, "h": 6, "my_tool_version": "3.1", "aabb_scale": 16,
           "frames": [frame(colmap_im_id=4, notes={"x": [1, 2]})]}
    dataset = datasets.read_dataset(write_transforms_doc(tmp_path, doc))
    assert dataset.meta["my_tool_version"] == "3.1" and dataset.frames[0].extra["colmap_im_id"] == 4
    assert dataset.frames[0].intrinsics.fl_x == 10


# --------------------------------------------------------------------------- job.json


def make_sdf_job(job_dir: Path) -> Path:
    write_ply(job_dir / "inputs" / "mesh.ply", *cube())
    protocol.write_job(job_dir, protocol.make_job("sdf", inputs={"mesh": "inputs/mesh.ply"}, config={}))
    return job_dir


def run_backend(job_dir: Path, timeout: float = 120) -> tuple[list[dict], subprocess.CompletedProcess]:
    process = subprocess.run([sys.executable, "-m", "inr_backend", "run", str(job_dir)], input="",
                             capture_output=True, text=True, timeout=timeout, cwd=REPO)
    return [protocol.parse_message(line) for line in process.stdout.splitlines() if line.strip()], process


JOB_CASES = [
    ("future_version", {"schema_version": protocol.SCHEMA_VERSION + 1}, "schema_version 2, but this backend "
     "understands up to 1: update"),
    ("version_zero", {"schema_version": 0}, "versions start at 1"),
    ("version_string", {"schema_version": "1"}, "no integer schema_version"),
    ("unknown_task", {"task": "gaussian_splats"}, "task must be one of"),
    ("missing_input", {"inputs": {}}, "needs inputs.mesh"),
    ("inputs_list", {"inputs": ["inputs/mesh.ply"]}, "'inputs' must be a JSON object"),
    ("source_list", {"source": ["Suzanne"]}, "'source' must be a JSON object"),
    ("input_absolute", {"inputs": {"mesh": "/etc/hostname"}}, "must be relative"),
    ("input_parent", {"inputs": {"mesh": "../other/inputs/mesh.ply"}}, "leaves the job folder"),
    ("input_nul", {"inputs": {"mesh": "inputs/mesh.ply\u0000"}}, "control characters"),
]


@pytest.mark.parametrize("case, change, words", JOB_CASES, ids=[c[0] for c in JOB_CASES])
def test_bad_job_json_is_refused(tmp_path, case, change, words):
    job_dir = make_sdf_job(tmp_path / "job")
    job = json.loads((job_dir / "job.json").read_text())
    job.update(change)
    (job_dir / "job.json").write_text(json.dumps(job))
    with pytest.raises(protocol.ProtocolError) as exc:
        protocol.read_job(job_dir)
    assert_clear(str(exc.value), words)


def test_bad_job_json_files_are_refused(tmp_path):
    job_dir = make_sdf_job(tmp_path / "job")
    for text, words in (("{", "not valid JSON"), ("[" * 50_000, "not valid JSON"),
                        ('{"schema_version": 1' + "0" * 5000 + "}", "not valid JSON"), ("[]", "a JSON object")):
        (job_dir / "job.json").write_text(text)
        with pytest.raises(protocol.ProtocolError) as exc:
            protocol.read_job(job_dir)
        assert_clear(str(exc.value), words)
    (job_dir / "job.json").write_bytes(b"\xff\xfe\x00{")
    with pytest.raises(protocol.ProtocolError, match="not valid JSON"):
        protocol.read_job(job_dir)


def test_the_real_backend_refuses_bad_jobs_and_leaves_earlier_results_alone(tmp_path):
    """The backend as the add-on runs it: a future job.json, an input leaving the folder and one
    linked out of it each end with an error message and `done` failed, exit code 1, no traceback
    on stderr; a finished job folder beside them is byte for byte the same afterwards."""
    earlier = make_sdf_job(tmp_path / "earlier")
    write_ply(earlier / "outputs" / "mesh.ply", *cube())
    protocol.write_json_atomic(earlier / "result.json", {"schema_version": 1, "status": "done", "task": "sdf"})
    before = tree_digest(earlier)

    outside = tmp_path / "outside.ply"
    write_ply(outside, *cube())
    cases = {}
    future = make_sdf_job(tmp_path / "future")
    job = json.loads((future / "job.json").read_text())
    job["schema_version"] = protocol.SCHEMA_VERSION + 1
    (future / "job.json").write_text(json.dumps(job))
    cases["future"] = (future, "update the backend")
    escape = make_sdf_job(tmp_path / "escape")
    job = json.loads((escape / "job.json").read_text())
    job["inputs"]["mesh"] = "../earlier/inputs/mesh.ply"
    (escape / "job.json").write_text(json.dumps(job))
    cases["escape"] = (escape, "leaves the job folder")
    linked = make_sdf_job(tmp_path / "linked")
    (linked / "inputs" / "mesh.ply").unlink()
    (linked / "inputs" / "mesh.ply").symlink_to(outside)
    cases["linked"] = (linked, "symbolic link")

    for name, (job_dir, words) in cases.items():
        messages, process = run_backend(job_dir)
        assert process.returncode == 1, (name, process.stderr[-2000:])
        assert [m["type"] for m in messages] == ["error", "done"], (name, messages)
        assert messages[-1]["status"] == "failed"
        assert_clear(messages[0]["message"], words)
        assert "Traceback" not in process.stderr, process.stderr[-2000:]
        assert protocol.read_result(job_dir)["status"] == "failed"
        assert not (job_dir / "outputs").exists(), name
    assert tree_digest(earlier) == before
    assert not (tmp_path / "PWNED").exists()


# --------------------------------------------------------------------------- messages


@pytest.mark.parametrize("line, words", [
    ('{"type": "progress", "step": "ten", "total": 100, "loss": 0.1, "elapsed": 1, "eta": 2}', "step must be a count"),
    ('{"type": "progress", "step": 1, "total": 100, "loss": "low", "elapsed": 1, "eta": 2}', "loss must be a number"),
    ('{"type": "error", "message": {"text": "x"}}', "message must be a text"),
    ('{"type": "done", "status": "finished"}', "done status must be one of"),
    ('{"type": "progress"}', "lacks step"),
    ('{"type": "teleport"}', "unknown message type"),
    ("Segmentation fault (core dumped)", "not JSON"),
])
def test_bad_messages_are_refused(line, words):
    with pytest.raises(protocol.ProtocolError) as exc:
        protocol.parse_message(line)
    assert words in str(exc.value)
