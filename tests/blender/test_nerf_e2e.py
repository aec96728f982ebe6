"""NeRF end to end in real Blender on the CPU (scripts/nerf_e2e.py): a Cycles capture of a red
cube and a blue sphere, Train NeRF, Render from Active Camera through a new camera (compared
with Cycles), Extract Mesh (compared with the source meshes in world coordinates), Render
Camera Animation (3 frames).

Training is STEPS steps of the fast preset (a step count, not a time budget, so the result
does not depend on how busy the machine is): about 65 s on 2 idle CPU cores, 150 s with other
jobs running. The thresholds are margins under what such a run measured (numbers in each
test); the scale of the scene: 64-pixel views that span about 2.6 world units, so one pixel
is about 0.04 units, 1.2% of the scene's diagonal (3.47).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from blender_harness import run_blender_script

pytestmark = [pytest.mark.blender, pytest.mark.slow]

VIEWS = 40
SIZE = 64
NOVEL = (80, 60)
STEPS = 240            # training steps: the quality the thresholds below assume
SECONDS = 240.0        # a time cap only, so a very slow machine still finishes


@pytest.fixture(scope="module")
def results(addon_zip, tmp_path_factory):
    return run_blender_script("nerf_e2e.py", tmp_path_factory.mktemp("nerf_e2e"),
                              {"zip": str(addon_zip), "views": VIEWS, "size": SIZE, "novel_size": list(NOVEL),
                               "max_steps": STEPS, "seconds": SECONDS, "mesh_resolution": 128, "mesh_threshold": 10.0},
                              timeout=560)


def on_white(path: Path) -> np.ndarray:
    rgba = np.asarray(Image.open(path).convert("RGBA"), dtype=np.float64) / 255.0
    return rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])


def rendered(results) -> dict:
    """The render's images by kind: rgb, depth, alpha, normal (named <job label>_<kind> in Blender)."""
    label = results["label"]
    return {name[len(label) + 1:]: info for name, info in results["rendered_images"].items()
            if name.startswith(label + "_")}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(-10.0 * np.log10(np.mean((a - b) ** 2)))


def test_capture_and_training_ran(results):
    for key in ("rig", "capture", "train"):
        assert results[key]["result"] == "{'FINISHED'}", (key, results[key]["error"], results["_output"])
    assert results["train_state"]["last_status"] == "done"
    assert results["train_state"]["warnings"] == ""          # a full sphere of 40 views: no coverage warning
    assert Path(results["job_dir"]).is_dir()
    # no folder was given: Train NeRF used the most recent capture (Render Capture's default folder)
    assert Path(results["job_dataset"]) == Path(results["capture_dir"])


def test_held_out_psnr(results):
    """result.json's PSNR over the views the backend held out (every 8th of 40: 5 views), on white.

    An empty field (all white) scores about 10 dB on such views; after 48 steps, with the cube
    a blur and the sphere missing, 18.2 dB; after 240 steps 25.6 dB (SSIM 0.88), after 300
    27.1 dB. 23 dB needs both objects in place with their colours."""
    result = json.loads((Path(results["job_dir"]) / "result.json").read_text())
    metrics = result["metrics"]
    assert metrics["n_eval_views"] == VIEWS // 8
    assert metrics["psnr"] > 23.0, metrics
    assert 0.0 < metrics["ssim"] <= 1.0


def test_preview_image_shown(results):
    preview = results["preview"]
    assert preview["exists"] and preview["size"][0] > 0, preview
    assert results["train_state"]["preview_image"] == "NeRF Preview"
    assert results["train_state"]["preview_text"].startswith("Preview")
    assert "NeRF Preview" in results["images_after_train"]


def test_render_images_from_a_new_camera(results):
    assert results["render"]["result"] == "{'FINISHED'}", results["render"]["error"]
    images = rendered(results)
    label = results["label"]
    assert label == "neural_fields_capture"      # the job's label: its dataset folder's name
    assert {f"{label}_rgb", f"{label}_depth", f"{label}_alpha", f"{label}_normal"} == set(results["rendered_images"])
    for name in ("rgb", "depth", "alpha"):
        assert images[name]["size"] == list(NOVEL), (name, images[name])   # the scene's resolution, not the capture's
    assert images["depth"]["colorspace"] == "Non-Color" and images["alpha"]["colorspace"] == "Non-Color"
    assert images["rgb"]["colorspace"] == "sRGB"


def test_new_camera_matches_cycles(results):
    """The field's view of a camera that is not in the capture (another lens, another
    resolution, 5% farther away than the rig) against Cycles' render of it, both on white.
    Measured 23.6 dB after 240 steps (24.4 after 300); all white scores 9.7 dB."""
    reference = on_white(Path(results["cycles_novel"]))
    ours = on_white(Path(rendered(results)["rgb"]["filepath"]))
    assert ours.shape == reference.shape == (NOVEL[1], NOVEL[0], 3)
    empty = psnr(np.ones_like(reference), reference)
    value = psnr(ours, reference)
    print(f"novel view PSNR {value:.2f} dB (all white: {empty:.2f} dB)")
    assert value > 21.0 and value > empty + 10.0, (value, empty)


def test_alpha_and_depth_of_the_new_camera(results):
    """Alpha: the field's silhouette against Cycles' (IoU; measured 0.96). Depth: z-depth in world
    units against ray casting the scene through the same pixel centres, where both see the
    object (median error measured 0.027 at a median depth of 3.8: 0.7%)."""
    reference_alpha = np.asarray(Image.open(results["cycles_novel"]).convert("RGBA"))[..., 3] / 255.0
    ours_alpha = np.asarray(Image.open(rendered(results)["alpha"]["filepath"]).convert("L")) / 255.0
    inside_ref, inside_ours = reference_alpha > 0.5, ours_alpha > 0.5
    iou = (inside_ref & inside_ours).sum() / (inside_ref | inside_ours).sum()
    assert iou > 0.9, iou
    from inr_backend import imageio
    pixels, _info = imageio.read_image(rendered(results)["depth"]["filepath"])
    depth = np.asarray(pixels, dtype=np.float64).reshape(NOVEL[1], NOVEL[0], -1)[..., 0]
    truth = np.load(results["true_depth"])
    both = (truth > 0) & (ours_alpha > 0.95) & (reference_alpha > 0.99)
    assert both.sum() > 0.5 * (truth > 0).sum()
    error = np.abs(depth[both] - truth[both])
    assert np.median(error) < 0.03 * np.median(truth[both]), (np.median(error), np.median(truth[both]))
    assert (depth[ours_alpha == 0] == 0).mean() > 0.97    # 0 where nothing was hit (measured 0.994)


def test_extracted_mesh_overlaps_the_source(results):
    """The extracted mesh against the cube + sphere in world coordinates, as fractions of the
    scene's diagonal D (3.47; one pixel of the capture is about 0.012 D).

    Points are sampled uniformly on both surfaces (numpy). Completeness: each source point's
    distance to the nearest mesh sample. Accuracy: each mesh point's exact distance to the
    source surfaces (Blender's closest point). A NeRF's inside is never seen, so marching
    cubes also finds surfaces inside the objects (about half the mesh's area here, invisible
    from outside): the Chamfer-L1 over all points (symmetric mean) includes them and gets a
    looser bound than the accuracy of the points outside the objects.

    Measured after 240 steps at 128^3, density threshold 10 (20000 mesh and 8000 source
    samples): Chamfer-L1 0.022 D; completeness mean 0.010 D (p95 0.023 D); accuracy outside
    the objects mean 0.0066 D (p95 0.017 D); 56% of the mesh's area inside the objects. The threshold is 10 rather than the backend's 20: after 240 steps
    the sphere's density is still 10-20 in places and at 20 marching cubes misses half of it.
    """
    assert results["extract"]["result"] == "{'FINISHED'}", results["extract"]["error"]
    mesh = results["mesh"]
    assert mesh["in_scene"] and mesh["matrix_world_identity"] and mesh["faces"] > 1000
    d = mesh["diagonal"]
    print({key: round(value / d, 4) for key, value in mesh.items()
           if isinstance(value, float) and key not in ("diagonal", "interior_fraction")},
          "interior fraction", mesh["interior_fraction"])
    assert mesh["chamfer_l1"] < 0.04 * d, mesh
    assert mesh["to_mesh_mean"] < 0.02 * d and mesh["to_mesh_p95"] < 0.04 * d, mesh      # both objects are there
    assert mesh["outside_to_source_mean"] < 0.015 * d and mesh["outside_to_source_p95"] < 0.035 * d, mesh
    ours, source = np.array(mesh["bbox"]), np.array(mesh["source_bbox"])
    assert np.all(np.abs(ours - source) < 0.05 * d), (ours, source)   # world coordinates, not the unit box


def test_mesh_colours_and_material(results):
    mesh = results["mesh"]
    assert mesh["has_colors"] and mesh["color_nodes"] == ["Col"]
    links = [tuple(link) for link in mesh["material_links"]]
    # the colours reach the surface through an Emission (as seen) and a Principled BSDF (relit), mixed
    assert ("ShaderNodeVertexColor", "Color", "ShaderNodeEmission", "Color") in links
    assert ("ShaderNodeVertexColor", "Color", "ShaderNodeBsdfPrincipled", "Base Color") in links
    assert ("ShaderNodeMixShader", "Shader", "ShaderNodeOutputMaterial", "Surface") in links
    red, blue = mesh["mean_color_cube"], mesh["mean_color_ball"]
    assert red is not None and red[0] > red[2] + 0.3, red
    assert blue is not None and blue[2] > blue[0] + 0.2, blue


def test_the_extracted_mesh_rendered_by_cycles_has_the_source_colours(results):
    """Cycles renders the extracted mesh (sources hidden) from the camera not in the capture;
    compared with Cycles' render of the sources over the pixels both cover (the mesh's shape
    is the Chamfer test's business; after 240 CPU steps the ball's density is patchy and
    much of it falls below the threshold from this side).

    Its material shows the colours as the field saw them (emission): lit again by the sun and
    the sky, as a Principled BSDF alone would (the material's mix at 0), they come out
    brighter and shaded twice. Measured: as seen 23.3 dB, relit 20.1 dB, over 1482 pixels.
    """
    mesh = results["mesh"]

    def rgba(path):
        return np.asarray(Image.open(path).convert("RGBA"), dtype=np.float64) / 255.0

    reference, seen, relit = rgba(results["cycles_novel"]), rgba(mesh["render_seen"]), rgba(mesh["render_relit"])
    both = (reference[..., 3] > 0.9) & (seen[..., 3] > 0.9)
    assert both.sum() > 500, both.sum()                    # most of the cube's ~1100 pixels
    values = {"seen": psnr(seen[both][:, :3], reference[both][:, :3]),
              "relit": psnr(relit[both][:, :3], reference[both][:, :3])}
    print(values, both.sum())
    assert values["seen"] > 21.0 and values["seen"] > values["relit"] + 1.5, values


def test_animation_is_a_three_image_sequence(results):
    assert results["animation"]["result"] == "{'FINISHED'}", results["animation"]["error"]
    sequence = results["sequence"]
    assert sequence["source"] == "SEQUENCE"
    assert sequence["files"] == ["frame_0001.png", "frame_0002.png", "frame_0003.png"]
    assert Path(sequence["filepath"]).name == "frame_0001.png"
    frames = [np.asarray(Image.open(Path(sequence["filepath"]).parent / name)) for name in sequence["files"]]
    assert all(frame.shape[:2] == (36, 48) for frame in frames)
    assert np.abs(frames[0].astype(int) - frames[2].astype(int)).mean() > 1.0   # the camera moved
    assert results["frame_after_animation"] == 2                               # the scene's frame restored


def test_timings(results):
    print(json.dumps(results["timings"], indent=1))
