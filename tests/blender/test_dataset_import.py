"""Import Dataset and Use Photos in real Blender: see scripts/dataset_import_check.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from blender_harness import run_blender_script

pytestmark = pytest.mark.blender

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
LEGO = DATA / "lego"


@pytest.fixture(scope="module")
def results(addon_zip, tmp_path_factory):
    lego = str(LEGO) if (LEGO / "transforms_train.json").is_file() else ""
    return run_blender_script("dataset_import_check.py", tmp_path_factory.mktemp("dataset_import"),
                              {"zip": str(addon_zip), "lego": lego}, timeout=240)


def test_lego_train_set(results):
    if "lego" not in results:
        pytest.skip(f"the lego data set is not at {LEGO}")
    lego = results["lego"]
    assert lego["result"] == ["FINISHED"], lego["error"]
    assert lego["collections"] == ["lego (train)"]
    assert lego["count"] == 100 and lego["names"] == 100
    assert lego["resolution"] == [400, 400, 100]
    assert lego["problems"] == []
    assert lego["worst_intrinsics"] < 1e-6     # fl = 0.5 w / tan(camera_angle_x / 2), cx = cy = 200
    assert lego["worst_pose"] < 1e-5
    assert lego["images"] == 100


def test_small_dataset_imports_exactly(results):
    small = results["small"]
    assert small["result"] == ["FINISHED"], small["error"]
    assert small["collections"] == ["small"]
    assert small["count"] == 4
    assert small["problems"] == []
    assert small["worst_intrinsics"] < 1e-6
    assert small["worst_pose"] < 1e-5


def test_use_photos_round_trip(results):
    written = results["small"]["use_photos"]
    assert written["result"] == ["FINISHED"], written["error"]
    assert written["frames"] == 4
    assert written["names"] == [f"images/{i:04d}.png" for i in range(4)]
    assert written["same_images"]
    assert written["sizes"] == [[48, 32]]
    assert written["worst_intrinsics"] < 1e-6
    assert written["worst_pose"] < 1e-5
    again = results["small"]["use_photos_again"]
    assert again["result"] == ["CANCELLED"] and "already holds a transforms.json" in again["error"]


def test_use_photos_image_sequence_frame(results):
    sequence = results["small"]["sequence"]
    assert sequence["result"] == ["FINISHED"], sequence["error"]
    assert sequence["same_as_3"]
    assert sequence["blender_path"].endswith("shot_0003.png")  # Blender's own choice agrees


def test_use_photos_refusals(results):
    bare = results["small"]["no_background"]
    assert bare["result"] == ["CANCELLED"]
    assert "Camera 'Bare Camera' has no background image" in bare["error"]
    assert not bare["written"]


def test_use_photos_movie_clip_of_one_image(results):
    still = results["small"]["movie_clip_still"]
    assert still["source"] == "SEQUENCE"
    assert still["result"] == ["FINISHED"], still["error"]
    assert still["same_as_view_0"]


# the frames of the movie made in the check script: red, green, blue, yellow, cyan
MOVIE_COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]


@pytest.fixture(scope="module")
def movie(results):
    clip = results["small"]["movie_clip"]
    if "skipped" in clip:
        pytest.skip(f"no movie could be made here: {clip['skipped']}")
    assert clip["source"] == "MOVIE"
    assert clip["size"] == [48, 32] and clip["duration"] == 5
    return clip["runs"]


@pytest.mark.parametrize("label, frame", [("frame_11", 2), ("frame_13", 4), ("camera_clip_10", 1)])
def test_use_photos_movie_clip_frame(movie, label, frame):
    """Scene frame f shows movie frame f - frame_start + frame_offset (0-based), as Blender does."""
    run = movie[label]
    assert run["result"] == ["FINISHED"], run["error"]
    assert run["names"] == ["images/0000.png"]
    assert run["size"] == [48, 32] and run["intrinsics_size"] == [48, 32]
    assert run["spread"] < 12, run                      # a flat frame, up to codec noise
    want = MOVIE_COLOURS[frame]
    assert max(abs(a - b) for a, b in zip(run["colour"], want)) < 12, (run["colour"], want)
    assert run["unchanged"], (run["before"], run["after"])


def test_use_photos_movie_clip_past_its_end(movie):
    run = movie["frame_14"]
    assert run["result"] == ["CANCELLED"]
    assert "shows nothing at scene frame 14" in run["error"] and "9-13" in run["error"], run["error"]
    assert not run["written"]
    assert run["unchanged"], (run["before"], run["after"])


@pytest.mark.parametrize("case, words", [
    ("missing", ["view_2.png", "missing"]),
    ("wrong_size", ["view_3.png", "40x32", "48x32"]),
    ("nan", ["frame 1", "NaN"]),
    ("escape", ["../outside.png", "outside the dataset folder"]),
    ("absolute", ["absolute"]),
    ("mixed_sizes", ["40x30", "one resolution"]),
    ("nothing_there", ["does not exist"]),
    ("empty_folder", ["no transforms.json"]),
])
def test_bad_datasets_create_nothing(results, case, words):
    bad = results["bad"][case]
    assert bad["result"] == ["CANCELLED"]
    for word in words:
        assert word in bad["error"], bad["error"]
    assert bad["unchanged"], (bad["before"], bad["after"])


def test_panel_is_a_sub_panel(results):
    assert results["panel_parent"] == "NEURALFIELDS_PT_main"


def test_colmap_model_imports_the_same_cameras(results):
    if not results["colmap_available"]:
        pytest.skip("blender_addon/colmap.py is not in this version of the add-on")
    colmap = results["colmap"]
    assert colmap["result"] == ["FINISHED"], colmap["error"]
    assert colmap["collections"] == ["colmap_scene"]
    assert colmap["count"] == 4
    assert colmap["problems"] == []
    assert colmap["worst_intrinsics"] < 1e-6
    assert colmap["worst_pose"] < 1e-5
    assert colmap["pose_vs_transforms"] < 1e-5


def test_failure_while_creating_leaves_nothing(results):
    half = results["half_way"]
    assert half["calls"] == 3
    assert half["result"] == ["CANCELLED"] and "injected failure" in half["error"]
    assert half["unchanged"], (half["before"], half["after"])
