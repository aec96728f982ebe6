"""A full disk under the jobs folder, through the add-on's real operators in Blender: Mesh to
Neural Field and Fit Neural Image report that the disk is full and what to do, add nothing to
the scene, and leave no half-written job folder.

Two full disks: a tmpfs filled to its last pages (needs root to mount; skipped with the reason
otherwise) and, always, a Blender whose file-size limit (RLIMIT_FSIZE, 200 KB) is below the
job's input mesh and image, so their writes fail with EFBIG.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import textwrap

import pytest

from blender_harness import PYTHON, SCRIPTS, blender_env

pytestmark = pytest.mark.blender

FILE_LIMIT = 200_000

SCRIPT = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {scripts!r})
    import bpy
    import numpy as np
    import bl_common as common


    def main(args):
        common.setup(args["zip"])
        common.preferences().jobs_dir = args["jobs_dir"]
        results = {{}}
        suzanne = common.add_suzanne(levels=2)           # 15.7k triangles: a ~300 KB input mesh
        common.make_active(suzanne)
        painted = bpy.data.images.new("painted", 256, 256)
        painted.pixels.foreach_set(np.random.default_rng(0).random(256 * 256 * 4).astype(np.float32))
        for label, run in (("mesh", lambda: bpy.ops.neural_fields.mesh_to_sdf()),
                           ("image", lambda: bpy.ops.neural_fields.fit_image('INVOKE_DEFAULT', image="painted"))):
            before = common.scene_snapshot()
            images = sorted(image.name for image in bpy.data.images)
            outcome = {{"error": None}}
            try:
                outcome["return"] = sorted(run())
            except RuntimeError as exc:
                outcome["error"] = str(exc)
            outcome["scene_unchanged"] = before == common.scene_snapshot()
            outcome["images_unchanged"] = images == sorted(image.name for image in bpy.data.images)
            outcome["jobs_folder"] = sorted(os.listdir(args["jobs_dir"]))
            results[label] = outcome
        return results


    common.run_main(main)
""")


@pytest.fixture(params=["tmpfs", "limit"])
def full_jobs_folder(request, tmp_path):
    """(jobs folder, file-size limit or None, what else the folder holds)."""
    if request.param == "limit":
        folder = tmp_path / "jobs"
        folder.mkdir()
        yield folder, FILE_LIMIT, []
        return
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (not root?): {mounted.stderr.strip()[:200]}")
    try:
        stat = os.statvfs(folder)
        (folder / "filler.bin").write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - 8192))   # two pages left
        yield folder, None, ["filler.bin"]
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_jobs_folder_is_reported_clearly_and_changes_nothing(addon_zip, tmp_path, full_jobs_folder):
    jobs_folder, file_limit, already_there = full_jobs_folder
    work = tmp_path / "work"
    work.mkdir()
    script = work / "disk_full_convert.py"
    script.write_text(SCRIPT.format(scripts=str(SCRIPTS)))
    result_path = work / "result.json"
    args = {"zip": str(addon_zip), "jobs_dir": str(jobs_folder), "result": str(result_path)}

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    process = subprocess.run([PYTHON, str(script), json.dumps(args)], cwd=work, env=blender_env(work / "user"),
                             capture_output=True, text=True, timeout=300,
                             preexec_fn=limit if file_limit is not None else None)
    assert result_path.is_file(), process.stderr[-3000:]
    results = json.loads(result_path.read_text())
    assert not results.get("exception"), results["exception"]
    for label in ("mesh", "image"):
        outcome = results[label]
        error = (outcome["error"] or "").removeprefix("Error: ").strip()   # how Blender prefixes a report
        assert outcome.get("return") is None, outcome
        assert error.startswith("Cannot write the job folder under " + str(jobs_folder)), error
        assert "the disk is full or a file is too large" in error and "nothing was written" in error, error
        assert "free some space on that disk" in error and "Choose another jobs folder" in error, error
        assert "Traceback" not in error
        assert outcome["scene_unchanged"] and outcome["images_unchanged"], outcome
        assert outcome["jobs_folder"] == already_there, outcome     # no half-written job folder
