"""Mesh loading, cleaning, watertightness and the unit-box normalization."""

from pathlib import Path

import numpy as np
import pytest
import trimesh

from inr_backend.geometry.mesh import (MeshError, bounding_box, is_watertight, load_mesh, normalization_for,
                                       sanitize_mesh)

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def split_box() -> tuple[np.ndarray, np.ndarray]:
    """A unit cube whose 6 sides each have their own 4 vertices (as a UV-seamed export has):
    24 vertices, 12 faces, closed only once vertices are merged by position."""
    box = trimesh.creation.box()
    tris = box.vertices[box.faces]  # (12, 3, 3): 36 corners, no sharing at all
    return tris.reshape(-1, 3), np.arange(36).reshape(12, 3)


def total_area(vertices, faces) -> float:
    tris = vertices[faces]
    return float(0.5 * np.linalg.norm(np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0]), axis=1).sum())


# --------------------------------------------------------------------------- loading


@pytest.mark.parametrize("extension", ["obj", "ply", "stl", "off", "glb"])
def test_load_mesh_reads_common_formats(tmp_path, extension):
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.7)
    path = tmp_path / f"sphere.{extension}"
    sphere.export(path)
    vertices, faces = load_mesh(path)
    assert vertices.dtype == np.float64 and faces.dtype == np.int64
    assert faces.shape == (len(sphere.faces), 3)
    assert len(vertices) == len(sphere.vertices)  # STL stores corners per face: merged back
    assert total_area(vertices, faces) == pytest.approx(sphere.area, rel=1e-6)
    assert is_watertight(vertices, faces)


def test_load_mesh_merges_seams_and_flattens_scenes(tmp_path):
    vertices, faces = split_box()
    path = tmp_path / "seamed.obj"
    trimesh.Trimesh(vertices, faces, process=False).export(path)
    loaded_vertices, loaded_faces = load_mesh(path)
    assert len(loaded_vertices) == 8 and len(loaded_faces) == 12
    assert is_watertight(loaded_vertices, loaded_faces)

    scene = trimesh.Scene([trimesh.creation.box(), trimesh.creation.icosphere(subdivisions=1)])
    scene.graph.update(scene.graph.nodes_geometry[1], matrix=trimesh.transformations.translation_matrix([5, 0, 0]))
    scene.export(tmp_path / "scene.glb")
    scene_vertices, scene_faces = load_mesh(tmp_path / "scene.glb")
    assert len(scene_faces) == 12 + 80
    assert scene_vertices[:, 0].max() == pytest.approx(6.0)  # the node transform was applied


def test_load_mesh_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope.obj"
    with pytest.raises(MeshError, match="not found") as error:
        load_mesh(path)
    assert str(path) in str(error.value)


def test_load_mesh_corrupt_files(tmp_path):
    truncated = tmp_path / "truncated.ply"
    truncated.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 5\nproperty float x\nend_header\n\x00")
    with pytest.raises(MeshError, match="could not read") as error:
        load_mesh(truncated)
    assert str(truncated) in str(error.value)

    garbage = tmp_path / "garbage.obj"
    garbage.write_text("this is not\na mesh at all\n")
    with pytest.raises(MeshError, match="no triangles"):
        load_mesh(garbage)


def test_load_mesh_point_cloud_is_refused(tmp_path):
    path = tmp_path / "points.ply"
    trimesh.PointCloud(np.random.default_rng(0).random((50, 3))).export(path)
    with pytest.raises(MeshError, match="point cloud"):
        load_mesh(path)


def test_load_mesh_zero_area_mesh_is_refused(tmp_path):
    path = tmp_path / "flat.obj"
    path.write_text("v 0 0 0\nv 1 0 0\nv 2 0 0\nv 3 0 0\nf 1 2 3\nf 2 3 4\n")  # collinear
    with pytest.raises(MeshError, match="the mesh has no area") as error:
        load_mesh(path)
    assert str(path) in str(error.value)


@pytest.mark.skipif(not (SHARED_DATA / "meshes" / "spot.obj").exists(),
                    reason=f"real meshes not found in {SHARED_DATA} (../shared/data beside the repo)")
def test_spot_is_watertight_after_merging_uv_seams():
    raw = trimesh.load(SHARED_DATA / "meshes" / "spot.obj", force="mesh", process=False)
    assert not raw.is_watertight  # split along its UV seams as stored
    vertices, faces = load_mesh(SHARED_DATA / "meshes" / "spot.obj")
    assert len(vertices) < len(raw.vertices)  # seams merged
    assert len(faces) == len(raw.faces)
    assert is_watertight(vertices, faces)


# --------------------------------------------------------------------------- cleaning


def test_sanitize_drops_nan_faces_zero_area_faces_and_unused_vertices():
    box = trimesh.creation.box()
    vertices = np.vstack([box.vertices, [[np.nan, 0, 0], [5, 5, 5], [9, 9, 9]]])  # 8: NaN, 9, 10: unused
    faces = np.vstack([box.faces, [[0, 1, 8], [8, 2, 3], [0, 0, 1], [0, 9, 9]]])  # NaN x2, repeated x2
    # A zero-area face with distinct vertices: 10 lies on the segment 0 -> 9 (collinear).
    vertices[10] = 0.5 * (vertices[0] + vertices[9])
    faces = np.vstack([faces, [[0, 10, 9]]])
    clean_vertices, clean_faces = sanitize_mesh(vertices, faces)
    assert len(clean_faces) == 12 and len(clean_vertices) == 8
    assert np.isfinite(clean_vertices).all()
    assert total_area(clean_vertices, clean_faces) == pytest.approx(box.area)
    assert is_watertight(clean_vertices, clean_faces)


def test_sanitize_keeps_orientation():
    box = trimesh.creation.box()
    vertices, faces = sanitize_mesh(box.vertices, box.faces)
    tris = vertices[faces]
    signed_volume = np.einsum("ij,ij->i", tris[:, 0], np.cross(tris[:, 1], tris[:, 2])).sum() / 6.0
    assert signed_volume == pytest.approx(1.0)


@pytest.mark.parametrize("vertices, faces, message", [
    (np.zeros((3, 3)), np.zeros((0, 3), dtype=int), "no faces"),
    (np.full((3, 3), np.nan), np.array([[0, 1, 2]]), "NaN"),
    (np.eye(3), np.array([[0, 1, 5]]), "outside"),
    (np.eye(3), np.array([[0.0, 1.0, 2.0]]), "integer"),
    (np.zeros((4, 2)), np.array([[0, 1, 2]]), r"\(V, 3\)"),
])
def test_sanitize_errors_say_what_is_wrong(vertices, faces, message):
    with pytest.raises(MeshError, match=message):
        sanitize_mesh(vertices, faces)


def test_is_watertight():
    box = trimesh.creation.box()
    assert is_watertight(box.vertices, box.faces)
    assert is_watertight(*split_box())  # merged by position first
    assert not is_watertight(box.vertices, box.faces[:-1])  # a hole
    # Non-manifold: a third face on one of the box's edges.
    vertices = np.vstack([box.vertices, [[3.0, 3.0, 3.0]]])
    edge = box.faces[0, :2]
    assert not is_watertight(vertices, np.vstack([box.faces, [[edge[0], edge[1], 8]]]))


# --------------------------------------------------------------------------- normalization


def test_normalization_puts_the_longest_side_at_two_times_one_minus_padding():
    rng = np.random.default_rng(1)
    vertices = rng.normal(size=(500, 3)) * [3.0, 1.0, 0.5] + [10.0, -4.0, 2.0]
    lo, hi = bounding_box(vertices)
    np.testing.assert_array_equal(lo, vertices.min(0))
    np.testing.assert_array_equal(hi, vertices.max(0))
    center, scale = normalization_for(vertices, padding=0.1)
    unit = (vertices - center) * scale
    unit_lo, unit_hi = unit.min(0), unit.max(0)
    np.testing.assert_allclose(unit_lo + unit_hi, 0.0, atol=1e-12)  # centred
    assert np.max(unit_hi - unit_lo) == pytest.approx(1.8)
    assert np.abs(unit).max() == pytest.approx(0.9)

    _, no_padding = normalization_for(vertices, padding=0.0)
    assert no_padding == pytest.approx(scale / 0.9)


def test_normalization_of_a_single_point_is_an_error():
    with pytest.raises(MeshError, match="no extent"):
        normalization_for(np.ones((4, 3)))
