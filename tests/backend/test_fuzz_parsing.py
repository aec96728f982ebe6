"""Fuzzing the parsers of untrusted text with hypothesis: job.json, transforms.json, the
protocol's stdout messages and binary PLY.

For every generated document: the parser either accepts it or raises its module's clean
validation error (ProtocolError, DatasetError, PlyError), never anything else; and whatever it
accepts is usable as it is (cameras with finite 4x4 poses and positive sizes, inputs inside the
job folder, message fields of the right types, faces that index real vertices).

Runs are derandomized (a fixed sequence of cases, no example database), so CI sees the same
cases every time; the case counts are in docs/bad_inputs.md and each test asserts it ran them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inr_backend import datasets, imageio, protocol
from inr_backend.plyio import PlyError, read_ply, write_ply

_FUZZ = settings(derandomize=True, database=None, deadline=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.filter_too_much, HealthCheck.data_too_large])


def fuzz(name: str):
    """The settings for one fuzz test: CASES[name] examples on top of the shared ones."""
    return settings(_FUZZ, max_examples=CASES[name])


# Cases per test (docs/bad_inputs.md lists the total).
CASES = {"job_structured": 1000, "job_text": 250, "transforms_structured": 1000, "transforms_text": 250,
         "message_structured": 1000, "message_text": 300, "ply_bytes": 400}
ran: dict[str, int] = {name: 0 for name in CASES}
accepted: dict[str, int] = {name: 0 for name in ("job", "transforms", "message", "ply")}

# --------------------------------------------------------------------------- value strategies

numbers = st.one_of(st.integers(-10, 10), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([0, 0.0, -0.0, 1e308, -1e-308, 2 ** 63, math.pi, 65536, 65537]))
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=12))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=12)
NASTY_PATHS = st.sampled_from(["inputs/mesh.ply", "inputs/image.png", "inputs/dataset", "a.png", "images/0000.png",
                     "images/../a.png", "a", "./a.png", "", " ", ".", "..", "../a.png", "inputs/../../x",
                     "/etc/hostname", "C:\\x.png", "\\\\server\\share", "a\x00.png", "a\n.png", "x" * 300,
                     "link/escape.png", "loop/a.png", "inputs/out/x", "images//0000.png", "ünïcödé.png"])
paths = st.integers(0, 3).flatmap(lambda pick: NASTY_PATHS if pick < 2 else
                                  st.text(max_size=20) if pick == 2 else st.one_of(st.integers(), st.none()))


def biased(good, anything):
    """Plausible values three times in four (so documents get past the first checks and deep
    into the parser), anything at all otherwise. (Not st.one_of(good, good, good, anything):
    hypothesis flattens nested one_of, so the branches of ``anything`` would outvote ``good``.)"""
    return st.integers(0, 3).flatmap(lambda pick: anything if pick == 0 else good)


sane_numbers = st.one_of(st.sampled_from([8, 6, 10, 10.0, 0.7, 1.2, 4.0, 3.0, 100, 1e-3, 0.0, -1.0, math.pi]),
                         st.floats(-1e3, 1e3), st.integers(-5, 70000))


def finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --------------------------------------------------------------------------- job.json


@pytest.fixture(scope="module")
def job_dir(tmp_path_factory):
    """A job folder with real inputs, a link leading out of it and a link loop."""
    folder = tmp_path_factory.mktemp("fuzz_job")
    (folder / "inputs" / "dataset").mkdir(parents=True)
    (folder / "inputs" / "mesh.ply").write_bytes(b"ply\n")
    (folder / "inputs" / "image.png").write_bytes(b"")
    outside = tmp_path_factory.mktemp("outside")
    (folder / "inputs" / "out").symlink_to(outside)
    (folder / "loop").symlink_to(folder / "loop")
    return folder


@st.composite
def mutated(draw, valid, keys: list[str], values):
    """A valid document with 0 to 3 of its keys replaced by ``values``, deleted, or joined by
    an unknown key: the fuzz starts where the parser's deeper checks are."""
    document = draw(valid)
    for _ in range(draw(st.integers(0, 3))):
        key = draw(st.sampled_from(keys))
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if action == "replace":
            document[key] = draw(values(key))
        elif action == "delete":
            document.pop(key, None)
        else:
            document[f"unknown_{key}"] = draw(json_values)
    return document


job_paths = st.integers(0, 1).flatmap(lambda pick: paths if pick else st.sampled_from(
    ["inputs/mesh.ply", "inputs/image.png", "inputs/dataset", "inputs/../inputs/mesh.ply"]))
valid_jobs = st.sampled_from(protocol.TASKS).flatmap(lambda task: st.fixed_dictionaries({
    "schema_version": st.just(protocol.SCHEMA_VERSION), "task": st.just(task),
    "inputs": st.fixed_dictionaries({protocol.REQUIRED_INPUTS[task]: job_paths},
                                    optional={"extra": job_paths}),
    "config": st.dictionaries(st.sampled_from(["preset", "device", "seed", "max_steps"]), json_values, max_size=3),
    "outputs": st.just({}), "source": st.dictionaries(st.text(max_size=5), json_values, max_size=2)}))


def job_values(key: str):
    return {"schema_version": st.one_of(st.sampled_from([1, 0, 2, -1, 1.0, True, "1", None]), st.integers()),
            "task": st.one_of(st.sampled_from(protocol.TASKS), scalars),
            "inputs": st.one_of(st.dictionaries(st.sampled_from(["mesh", "image", "dataset", "extra", ""]), paths,
                                                max_size=3), json_values)}.get(key, json_values)


job_documents = biased(mutated(valid_jobs, ["schema_version", "task", "inputs", "config", "outputs", "source"],
                               job_values), json_values)


def check_job(job_dir: Path, text: str) -> None:
    (job_dir / protocol.JOB_FILE).write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        job = protocol.read_job(job_dir)
    except protocol.ProtocolError:
        return
    accepted["job"] += 1
    # accepted: usable as it is
    assert type(job["schema_version"]) is int and 1 <= job["schema_version"] <= protocol.SCHEMA_VERSION
    assert job["task"] in protocol.TASKS
    for key in ("inputs", "config", "outputs", "source"):
        assert isinstance(job.get(key, {}), dict)
    assert protocol.REQUIRED_INPUTS[job["task"]] in job["inputs"]
    root = job_dir.resolve()
    for value in job["inputs"].values():
        target = protocol.resolve_inside(job_dir, value)
        assert target == root or root in target.parents


@fuzz("job_structured")
@given(document=job_documents)
def test_fuzz_job_json_documents(job_dir, document):
    ran["job_structured"] += 1
    check_job(job_dir, json.dumps(document))


@fuzz("job_text")
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
                      json_values.map(json.dumps).map(lambda t: t[: len(t) // 2])))
def test_fuzz_job_json_text(job_dir, text):
    ran["job_text"] += 1
    check_job(job_dir, text)


# --------------------------------------------------------------------------- transforms.json


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    """A dataset folder: a real image, a link inside, a link out of it, a link loop."""
    folder = tmp_path_factory.mktemp("fuzz_dataset")
    imageio.write_png(folder / "a.png", np.full((6, 8, 3), 0.5, np.float32))
    (folder / "images").mkdir()
    imageio.write_png(folder / "images" / "0000.png", np.full((6, 8, 3), 0.5, np.float32))
    outside = tmp_path_factory.mktemp("outside_dataset")
    imageio.write_png(outside / "escape.png", np.zeros((6, 8, 3), np.float32))
    (folder / "link").symlink_to(outside)
    (folder / "loop").symlink_to(folder / "loop")
    return folder


def matrices():
    eye = np.eye(4)
    rotation = np.array([[0.0, -1, 0, 1], [1, 0, 0, 2], [0, 0, 1, 3], [0, 0, 0, 1]])
    good = st.sampled_from([eye.tolist(), rotation.tolist(), eye[:3].tolist()])
    return biased(good, st.one_of(
        st.sampled_from([eye.tolist(), rotation.tolist(), eye[:3].tolist(), np.eye(3).tolist(),
                         np.zeros((4, 4)).tolist(), (eye * 2).tolist(), [[1, 0, 0, 0]] * 4, [], "eye", None]),
        st.lists(st.lists(numbers, min_size=4, max_size=4), min_size=3, max_size=4),
        json_values))


intrinsic_values = st.dictionaries(
    st.sampled_from(list(datasets.INTRINSIC_KEYS) + list(datasets.DISTORTION_KEYS) + ["camera_model", "aabb_scale"]),
    biased(sane_numbers, st.one_of(numbers, scalars, json_values)), max_size=5)

frame_paths = biased(st.sampled_from(["a.png", "images/0000.png", "a", "./a.png", "images/../a.png",
                                      "link/escape.png"]), paths)
frame_options = {"colmap_im_id": json_values, "fl_x": biased(sane_numbers, numbers),
                 "w": biased(sane_numbers, numbers), "h": biased(sane_numbers, numbers),
                 "camera_angle_x": biased(sane_numbers, numbers), "k1": biased(sane_numbers, scalars)}
frames = st.one_of(
    st.fixed_dictionaries({"file_path": frame_paths, "transform_matrix": matrices()}, optional=frame_options),
    st.fixed_dictionaries({"file_path": frame_paths, "transform_matrix": matrices()}, optional=frame_options),
    st.fixed_dictionaries({}, optional={"file_path": paths, "transform_matrix": matrices(), **frame_options}))

frame_keys = ["file_path", "transform_matrix", "fl_x", "w", "h", "camera_angle_x", "k1", "camera_model"]


def frame_values(key: str):
    return {"file_path": paths, "transform_matrix": matrices()}.get(key, st.one_of(numbers, scalars, json_values))


valid_frames = st.fixed_dictionaries({"file_path": frame_paths, "transform_matrix": matrices()},
                                     optional={"colmap_im_id": json_values})
top_keys = ["fl_x", "fl_y", "cx", "cy", "w", "h", "camera_angle_x", "camera_angle_y", "k1", "camera_model",
            "aabb_scale", "frames"]
focal_keys = st.one_of(
    st.fixed_dictionaries({"fl_x": biased(st.sampled_from([10, 555.5, 1e4]), sane_numbers)},
                          optional={"fl_y": biased(st.sampled_from([10, 555.5]), sane_numbers)}),
    st.fixed_dictionaries({"camera_angle_x": biased(st.sampled_from([0.7, 1.2, 3.0]), sane_numbers)},
                          optional={"camera_angle_y": biased(st.sampled_from([0.5, 1.0]), sane_numbers)}))
valid_transforms = st.builds(
    lambda focal, rest: {**focal, **rest}, focal_keys,
    st.fixed_dictionaries(
        {"frames": st.lists(biased(valid_frames, mutated(valid_frames, frame_keys, frame_values)), min_size=1,
                            max_size=3)},
        optional={"w": biased(st.sampled_from([8, 16, 640]), numbers),
                  "h": biased(st.sampled_from([6, 12, 480]), numbers),
                  "cx": sane_numbers, "k1": sane_numbers, "camera_model": st.sampled_from(["OPENCV", "PINHOLE"]),
                  "aabb_scale": json_values}))


def top_values(key: str):
    if key == "frames":
        return st.one_of(st.lists(frames, max_size=3), json_values)
    return st.one_of(numbers, scalars, json_values)


transforms_documents = biased(
    mutated(valid_transforms, top_keys, top_values),
    st.one_of(st.builds(lambda top, fr: {**top, "frames": fr}, intrinsic_values, st.lists(frames, max_size=3)),
              json_values))


def check_transforms(dataset_dir: Path, text: str) -> None:
    path = dataset_dir / "transforms.json"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        dataset = datasets.read_dataset(path)
    except datasets.DatasetError:
        return
    accepted["transforms"] += 1
    root = dataset_dir.resolve()
    assert dataset.frames
    for frame in dataset.frames:
        c2w = frame.c2w
        assert c2w.shape == (4, 4) and np.isfinite(c2w).all()
        assert np.allclose(c2w[3], [0, 0, 0, 1], atol=1e-6)
        assert np.isfinite(np.linalg.norm(c2w[:3, :3], axis=0)).all() and abs(np.linalg.det(c2w[:3, :3])) > 0
        intr = frame.intrinsics
        assert type(intr.w) is int and type(intr.h) is int
        assert 0 < intr.w <= datasets.MAX_IMAGE_SIDE and 0 < intr.h <= datasets.MAX_IMAGE_SIDE
        assert all(math.isfinite(v) for v in (intr.fl_x, intr.fl_y, intr.cx, intr.cy))
        assert intr.fl_x > 0 and intr.fl_y > 0
        assert all(finite(value) for value in frame.distortion.values())
        assert isinstance(frame.camera_model, str)
        real = Path(frame.file_path).resolve()
        assert real == root or root in real.parents, (frame.file_path, real)
        # what the add-on and the backend do next must not fail on it either
        assert math.isfinite(intr.camera_angle_x) and math.isfinite(intr.camera_angle_y)


@fuzz("transforms_structured")
@given(document=transforms_documents)
def test_fuzz_transforms_json_documents(dataset_dir, document):
    ran["transforms_structured"] += 1
    check_transforms(dataset_dir, json.dumps(document))


@fuzz("transforms_text")
@given(text=st.one_of(st.text(max_size=200), transforms_documents.map(json.dumps).map(lambda t: t[: len(t) * 2 // 3])))
def test_fuzz_transforms_json_text(dataset_dir, text):
    ran["transforms_text"] += 1
    check_transforms(dataset_dir, text)


# --------------------------------------------------------------------------- messages

message_documents = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(list(protocol.MESSAGE_FIELDS))},
                          optional={name: json_values for name in
                                    ("task", "device", "step", "total", "loss", "elapsed", "eta", "path",
                                     "message", "status", "phase", "psnr")}),
    st.fixed_dictionaries({"type": st.sampled_from(["progress"]), "step": biased(st.integers(0, 10**6), numbers),
                           "total": biased(st.integers(0, 10**6), numbers), "loss": numbers,
                           "elapsed": biased(st.floats(0, 1e4), numbers),
                           "eta": st.one_of(st.none(), numbers)}),
    st.fixed_dictionaries({"type": st.sampled_from(["warning", "error", "preview", "started"]),
                           "message": biased(st.text(max_size=30), json_values),
                           "path": biased(st.text(max_size=30), json_values),
                           "task": biased(st.sampled_from(protocol.TASKS), json_values),
                           "device": biased(st.sampled_from(["cpu", "cuda:H200"]), json_values)}),
    st.fixed_dictionaries({"type": st.sampled_from(["done"]),
                           "status": st.one_of(st.sampled_from(protocol.STATUSES), scalars)}),
    json_values)


def check_message(line: str) -> None:
    try:
        message = protocol.parse_message(line)
    except protocol.ProtocolError:
        return
    accepted["message"] += 1
    kind = message["type"]
    assert kind in protocol.MESSAGE_FIELDS
    for name in protocol.MESSAGE_FIELDS[kind]:
        assert name in message
    if kind == "progress":
        for name in ("step", "total"):
            assert type(message[name]) is int and message[name] >= 0
        for name in ("loss", "elapsed", "eta"):
            assert message[name] is None or finite(message[name])
    elif kind in ("warning", "error"):
        assert isinstance(message["message"], str)
    elif kind == "preview":
        assert isinstance(message["path"], str)
    elif kind == "started":
        assert isinstance(message["task"], str) and isinstance(message["device"], str)
    elif kind == "done":
        assert message["status"] in protocol.STATUSES
    # what the backend would print for it parses back to the same message
    assert protocol.parse_message(protocol.encode_message(message))["type"] == kind


@fuzz("message_structured")
@given(document=message_documents)
def test_fuzz_message_documents(document):
    ran["message_structured"] += 1
    check_message(json.dumps(document))


@fuzz("message_text")
@given(line=st.one_of(st.text(max_size=120), message_documents.map(json.dumps).map(lambda t: t[: len(t) - 3])))
def test_fuzz_message_text(line):
    ran["message_text"] += 1
    check_message(line)


# --------------------------------------------------------------------------- PLY


def _tetrahedron_ply(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("fuzz_ply") / "t.ply"
    write_ply(path, np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1.0]]),
              np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]]),
              np.full((4, 4), 200, np.uint8))
    return path.read_bytes()


@pytest.fixture(scope="module")
def ply_bytes(tmp_path_factory):
    return _tetrahedron_ply(tmp_path_factory), tmp_path_factory.mktemp("fuzz_ply_out") / "mesh.ply"


@fuzz("ply_bytes")
@given(edits=st.lists(st.tuples(st.integers(0, 400), st.binary(min_size=0, max_size=6)), max_size=4),
       cut=st.one_of(st.none(), st.integers(0, 400)),
       header_word=st.sampled_from([None, b"element face 99999999", b"element vertex -4", b"property list int int x",
                                    b"property double x", b"element face", b"format ascii 1.0", b"property list"]))
def test_fuzz_ply_bytes(ply_bytes, edits, cut, header_word):
    ran["ply_bytes"] += 1
    original, path = ply_bytes
    data = bytearray(original)
    if header_word is not None:
        end = data.index(b"end_header")
        data[end:end] = header_word + b"\n"
    for offset, replacement in edits:
        offset = min(offset, len(data))
        data[offset:offset + len(replacement)] = replacement
    if cut is not None:
        data = data[:cut]
    path.write_bytes(bytes(data))
    try:
        vertices, faces, colors = read_ply(path)
    except PlyError:
        return
    accepted["ply"] += 1
    assert vertices.ndim == 2 and vertices.shape[1] == 3
    assert faces.ndim == 2 and faces.shape[1] == 3
    if len(faces):
        assert faces.min() >= 0 and faces.max() < len(vertices)
    assert colors is None or len(colors) == len(vertices)


def test_fuzz_case_counts():
    """Runs after the fuzz tests in this file (pytest keeps file order): each ran all its cases."""
    if not all(ran.values()):
        pytest.skip("run the whole file to count the cases")
    for name, count in CASES.items():
        assert ran[name] >= count, (name, ran[name], count)
    print(f"fuzz cases run: {sum(ran.values())} ({ran}); accepted and checked for use: {accepted}")
    # the checks on accepted documents ran often enough to mean something
    for name, share in (("job", 0.1), ("transforms", 0.05), ("message", 0.1), ("ply", 0.02)):
        total = sum(count for key, count in ran.items() if key.startswith(name))
        assert accepted[name] >= share * total, (name, accepted[name], total)
