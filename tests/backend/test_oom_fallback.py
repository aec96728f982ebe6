"""GPU out-of-memory lowers the batch (or the inference chunk) and the job goes on.

No GPU here: the backend's test hook INR_INJECT_OOM (inr_backend/memory.py) raises a real
torch.OutOfMemoryError at chosen calls, inside the real backend subprocess; each task must then
end `done` with a warning, the lowered size in result.json, and a result that meets the same
quality bounds as the CPU tests without the fault. The two test_cuda_* tests cause a real OOM
on a GPU (a memory cap and an absurd batch); they skip without CUDA:
`pytest tests/backend -k "cuda or gpu"`.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from inr_backend import imageio, memory, protocol
from inr_backend.geometry.metrics import mesh_metrics
from inr_backend.plyio import read_ply, write_ply

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nerf_scene import write_scene  # noqa: E402

CENTRE = np.array([10.0, -5.0, 3.0])
# test_backend_process.py's run: 150 fast steps on a 1280-face sphere, marching cubes at 48^3.
MESH_CONFIG = {"preset": "fast", "max_steps": 150, "resolution": 48, "device": "cpu"}


def sphere_job(job_dir: Path, task: str, config: dict) -> Path:
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=3.5)
    write_ply(job_dir / "inputs" / "mesh.ply", sphere.vertices + CENTRE, sphere.faces)
    protocol.write_job(job_dir, protocol.make_job(task, inputs={"mesh": "inputs/mesh.ply"}, config=config))
    return job_dir


def image_job(job_dir: Path, config: dict) -> Path:
    y, x = np.mgrid[0:24, 0:32] / 24.0
    pixels = np.stack([0.5 + 0.5 * np.sin(6 * x), 0.5 + 0.5 * np.cos(5 * y), x * y / 1.5], -1).astype(np.float32)
    (job_dir / "inputs").mkdir(parents=True, exist_ok=True)
    imageio.write_png(job_dir / "inputs" / "image.png", pixels, bits=8)
    protocol.write_job(job_dir, protocol.make_job("image", inputs={"image": "inputs/image.png"}, config=config))
    return job_dir


def run_backend(job_dir: Path, inject: str | None, *extra: str, prefix: list[str] | None = None,
                timeout: float = 300) -> tuple[int, list[dict], str]:
    env = {key: value for key, value in os.environ.items() if key != memory.INJECT_ENV}
    if inject:
        env[memory.INJECT_ENV] = inject
    command = prefix or [sys.executable, "-m", "inr_backend"]
    completed = subprocess.run([*command, "run", str(job_dir), "--ignore-stdin", *extra], capture_output=True,
                               text=True, env=env, timeout=timeout)
    messages = [protocol.parse_message(line) for line in completed.stdout.splitlines()]
    return completed.returncode, messages, completed.stderr


def warnings_of(messages: list[dict]) -> list[str]:
    return [m["message"] for m in messages if m["type"] == "warning"]


def assert_done(code: int, messages: list[dict], stderr: str) -> dict:
    assert code == 0, (messages[-3:], stderr[-3000:])
    assert messages[-1]["type"] == "done" and messages[-1]["status"] == "done"
    return messages[-1]


def sphere_chamfer_bound(job_dir: Path, result: dict) -> tuple[float, float]:
    """(Chamfer-L1 of the job's mesh against the source, 1.5 marching-cubes cells): the bound the
    CPU test of the same run uses (tests/backend/test_backend_process.py)."""
    vertices, faces, _ = read_ply(job_dir / "inputs" / "mesh.ply")
    out_vertices, out_faces, _ = read_ply(job_dir / result["outputs"]["mesh"])
    metrics = mesh_metrics(out_vertices, out_faces, vertices, faces, n_samples=20000)
    scale = json.loads((job_dir / protocol.NORMALIZATION_FILE).read_text())["scale"]
    cell = (2.0 / (MESH_CONFIG["resolution"] - 1)) / scale / metrics["bbox_diagonal"]
    return metrics["chamfer_l1"], 1.5 * cell


# --------------------------------------------------------------------------- the pieces, in process


def test_adaptive_size_halves_down_to_its_floor_then_gives_up_with_the_clear_error():
    told = []
    size = memory.AdaptiveSize(8192, what="batch", report=lambda message, s: told.append((message, s.record())))
    assert size.floor == 256                                    # 1/1024 of 8192 is 8: a few hundred is the floor
    assert size.lower(memory.OutOfMemoryError("x"), step=7) == 4096
    assert told[-1][0] == "GPU out of memory at step 7: batch lowered from 8,192 to 4,096; training continues"
    assert told[-1][1] == {"what": "batch", "from": 8192, "to": 4096, "times": 1, "at_step": 7}
    for expected in (2048, 1024, 512, 256):
        assert size.lower(memory.OutOfMemoryError("x"), step=9) == expected
    with pytest.raises(memory.OutOfMemoryError, match="even with the batch at 256, lowered from 8,192"):
        size.lower(memory.OutOfMemoryError("x"), step=9)
    assert memory.AdaptiveSize(2 ** 24).floor == 2 ** 14       # large batches stop at 1/1024
    assert memory.AdaptiveSize(100).floor == 100                # a batch this small is never lowered


def test_a_resumed_size_continues_lowered_only_for_the_same_configured_size():
    told = []
    size = memory.AdaptiveSize(8192, report=lambda message, s: told.append(message))
    size.restore({"what": "batch", "from": 8192, "to": 2048, "times": 2, "at_step": 40})
    assert size.size == 2048 and size.record()["at_step"] == 40
    assert told == ["the batch stays lowered from 8,192 to 2,048 (the GPU ran out of memory at step 40 before "
                    "the resume)"]
    other = memory.AdaptiveSize(4096)
    other.restore({"from": 8192, "to": 2048})                   # another configured batch: not this run's
    assert other.size == 4096 and not other.lowered


def test_retry_chunked_redoes_the_call_with_half_the_chunk_and_passes_other_errors():
    calls = []

    def run(chunk):
        calls.append(chunk)
        if chunk > 1000:
            try:
                raise memory.OutOfMemoryError("inner")
            except memory.OutOfMemoryError:
                raise RuntimeError("capture invalidated")     # a CUDA graph capture fails like this after an OOM
        return chunk

    assert memory.retry_chunked(run, memory.AdaptiveSize(4000, what="chunk", training=False), phase="testing") == 1000
    assert calls == [4000, 2000, 1000]
    with pytest.raises(ValueError):
        memory.retry_chunked(lambda chunk: int("x"), memory.AdaptiveSize(4000), phase="testing")


def test_the_injection_hook_reads_single_calls_ranges_and_open_ranges():
    assert memory._parse_injection("train_step:3, extract_chunk:2-4,render_chunk:5+,bad:x") == {
        "train_step": [(3, 3)], "extract_chunk": [(2, 4)], "render_chunk": [(5, None)]}


# --------------------------------------------------------------------------- every task, real subprocess


@pytest.mark.parametrize("task", ["sdf", "occupancy"])
def test_mesh_jobs_lower_the_batch_and_the_extraction_chunk_and_still_meet_the_bounds(tmp_path, task):
    job_dir = sphere_job(tmp_path / task, task, MESH_CONFIG)
    code, messages, stderr = run_backend(job_dir, "train_step:3,train_step:9,extract_chunk:1")
    assert_done(code, messages, stderr)
    assert warnings_of(messages) == [
        "GPU out of memory at step 3: batch lowered from 8,192 to 4,096; training continues",
        "GPU out of memory at step 8: batch lowered from 4,096 to 2,048; training continues",
        "GPU out of memory while extracting the mesh: chunk lowered from 262,144 to 131,072 points; continuing"]
    result = protocol.read_result(job_dir)
    assert result["status"] == "done"
    assert result["batch_lowered"] == {"what": "batch", "from": 8192, "to": 2048, "times": 2, "at_step": 8}
    assert result["chunk_lowered"]["to"] == 131072
    # The step count and schedule are the configured ones: every step ran, at the lowered size after.
    assert [m["step"] for m in messages if m["type"] == "progress" and m["total"]][-1] == 150
    chamfer, bound = sphere_chamfer_bound(job_dir, result)
    assert chamfer < bound, f"chamfer {chamfer:.4f} above the CPU tests' bound {bound:.4f}"
    if task == "occupancy":                     # the bounds of test_occupancy.py's end-to-end run
        assert result["metrics"]["iou"] > 0.8 and result["metrics"]["chamfer_l1"] < 0.02


def test_image_job_lowers_the_batch_and_the_sampling_chunk(tmp_path):
    config = {"preset": "fast", "max_steps": 150, "device": "cpu", "scale": 2}
    reference = image_job(tmp_path / "reference", config)
    assert_done(*run_backend(reference, None))
    job_dir = image_job(tmp_path / "job", config)
    code, messages, stderr = run_backend(job_dir, "train_step:4,render_chunk:1")
    assert_done(code, messages, stderr)
    # 32x24 pixels: the whole image was the batch.
    assert warnings_of(messages) == [
        "GPU out of memory at step 4: batch lowered from 768 to 384; training continues",
        "GPU out of memory while sampling the field: chunk lowered from 262,144 to 131,072 pixels; continuing"]
    result = protocol.read_result(job_dir)
    assert result["batch_lowered"] == {"what": "batch", "from": 768, "to": 384, "times": 1, "at_step": 4}
    assert result["metrics"]["batch_size"] == 384 and result["metrics"]["steps"] == 150
    assert imageio.read_image(job_dir / result["outputs"]["image"])[0].shape == (48, 64, 3)
    unlowered = protocol.read_result(reference)["metrics"]["psnr"]
    print(f"PSNR {result['metrics']['psnr']:.2f} dB after the lowering, {unlowered:.2f} dB without")
    assert result["metrics"]["psnr"] > 30 and result["metrics"]["psnr"] > unlowered - 3


def test_nerf_job_lowers_the_samples_per_batch_and_the_render_chunk(tmp_path):
    job_dir = tmp_path / "nerf"
    write_scene(job_dir / "inputs" / "dataset", n_views=24, size=24)
    config = {"preset": "fast", "max_steps": 100, "device": "cpu", "checkpoint_seconds": 0, "preview_seconds": 0,
              "max_eval_views": 2, "samples_per_batch": 8192}
    protocol.write_job(job_dir, protocol.make_job("nerf", inputs={"dataset": "inputs/dataset"}, config=config))
    code, messages, stderr = run_backend(job_dir, "train_step:5,render_chunk:1")
    assert_done(code, messages, stderr)
    assert warnings_of(messages)[:2] == [
        "GPU out of memory at step 5: samples per batch lowered from 8,192 to 4,096; training continues",
        # a CPU render's chunk starts at 2^19 samples over 128-step blocks (nerf.CPU_RENDER_BLOCK_SAMPLES)
        "GPU out of memory while rendering: render chunk lowered from 4,096 to 2,048 rays; continuing"]
    result = protocol.read_result(job_dir)
    assert result["batch_lowered"] == {"what": "samples per batch", "from": 8192, "to": 4096, "times": 1,
                                       "at_step": 5}
    assert result["chunk_lowered"]["to"] == 2048 and result["metrics"]["steps"] == 100
    # Held out, measured: 18.6 dB with the lowering, 20.3 dB without (half the samples per step
    # learn more slowly), against 8-9 dB for an all-white image (test_nerf.py).
    assert result["metrics"]["psnr"] > 15, result["metrics"]


def test_below_the_floor_the_job_fails_with_the_clear_out_of_memory_message(tmp_path):
    job_dir = sphere_job(tmp_path / "job", "sdf", {**MESH_CONFIG, "max_steps": 10})
    code, messages, stderr = run_backend(job_dir, "train_step:2+")
    assert code == 1 and "Traceback" not in stderr
    assert [m["type"] for m in messages[-2:]] == ["error", "done"] and messages[-1]["status"] == "failed"
    error = messages[-2]["message"]
    assert error.startswith("the GPU ran out of memory: choose the 'fast' preset, a lower resolution, or the CPU")
    assert "at step 2 even with the batch at 256, lowered from 8,192" in error
    assert len(warnings_of(messages)) == 5                      # 8192 -> 4096 -> ... -> 256, then the floor
    result = protocol.read_result(job_dir)
    assert result["status"] == "failed" and result["error"] == error and result["batch_lowered"]["to"] == 256


def test_a_resume_continues_at_the_lowered_batch(tmp_path):
    job_dir = image_job(tmp_path / "job", {"preset": "fast", "max_steps": 3000, "device": "cpu",
                                           "checkpoint_seconds": 0})
    env = {**os.environ, memory.INJECT_ENV: "train_step:3"}
    process = subprocess.Popen([sys.executable, "-m", "inr_backend", "run", str(job_dir)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for line in process.stdout:                                 # cancel once training is past the lowering
        message = protocol.parse_message(line)
        if message["type"] == "progress" and message["total"] and message["step"] > 10:
            break
    process.stdin.write("cancel\n")
    process.stdin.flush()
    process.stdout.read()
    assert process.wait(timeout=60) == 0
    first = protocol.read_result(job_dir)
    assert first["status"] == "cancelled" and first["batch_lowered"]["to"] == 384
    state = json.loads(next((job_dir / "checkpoints" / "resume").glob("step-*/state.json")).read_text())
    assert state["trainer"]["batch_lowered"] == first["batch_lowered"]

    protocol.write_job(job_dir, {**protocol.read_job(job_dir)})  # unchanged job.json: a plain resume
    code, messages, stderr = run_backend(job_dir, None, "--resume")
    assert_done(code, messages, stderr)
    assert warnings_of(messages) == ["the batch stays lowered from 768 to 384 (the GPU ran out of memory at step 3 "
                                     "before the resume)"]
    result = protocol.read_result(job_dir)
    assert result["resumed_from_step"] == first["checkpoint_step"]
    assert result["batch_lowered"] == first["batch_lowered"] and result["metrics"]["batch_size"] == 384


# --------------------------------------------------------------------------- a real OOM on a GPU

CAPPED = textwrap.dedent("""
    # The backend under a GPU memory cap, so an absurd batch runs out of memory for real.
    import sys, torch
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, float(sys.argv[1]) * 2 ** 30 / total), 0)
    from inr_backend.cli import main
    sys.exit(main(sys.argv[2:]))
""")

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the lead runs it on an H200)")


@needs_cuda
def test_cuda_oom_sdf_batch_of_2_24_under_a_3_gb_cap_is_lowered_and_finishes(tmp_path):
    job_dir = sphere_job(tmp_path / "job", "sdf", {**MESH_CONFIG, "device": "cuda", "batch_size": 2 ** 24})
    code, messages, stderr = run_backend(job_dir, None, prefix=[sys.executable, "-c", CAPPED, "3"])
    assert_done(code, messages, stderr)
    lowered = [text for text in warnings_of(messages) if text.startswith("GPU out of memory at step")]
    assert lowered and "batch lowered from 16,777,216" in lowered[0], warnings_of(messages)
    result = protocol.read_result(job_dir)
    assert result["device"].startswith("cuda") and 2 ** 14 <= result["batch_lowered"]["to"] < 2 ** 24
    chamfer, bound = sphere_chamfer_bound(job_dir, result)
    assert chamfer < bound, f"chamfer {chamfer:.4f} above {bound:.4f}"


@needs_cuda
def test_cuda_oom_nerf_samples_per_batch_of_2_25_under_a_3_gb_cap_is_lowered_and_finishes(tmp_path):
    job_dir = tmp_path / "nerf"
    write_scene(job_dir / "inputs" / "dataset", n_views=24, size=24)
    config = {"preset": "fast", "max_steps": 200, "device": "cuda", "preview_seconds": 0, "max_eval_views": 2,
              "samples_per_batch": 2 ** 25}
    protocol.write_job(job_dir, protocol.make_job("nerf", inputs={"dataset": "inputs/dataset"}, config=config))
    code, messages, stderr = run_backend(job_dir, None, prefix=[sys.executable, "-c", CAPPED, "3"])
    assert_done(code, messages, stderr)
    assert any("samples per batch lowered from 33,554,432" in text for text in warnings_of(messages)), \
        warnings_of(messages)
    result = protocol.read_result(job_dir)
    assert 2 ** 15 <= result["batch_lowered"]["to"] < 2 ** 25 and result["metrics"]["steps"] == 200
    assert result["metrics"]["psnr"] > 14, result["metrics"]
