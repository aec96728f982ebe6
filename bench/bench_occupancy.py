"""Benchmark: mesh -> neural occupancy field -> mesh, the whole conversion, per phase.

    python bench/bench_occupancy.py [MESH ...] [--preset balanced] [--resolution 512] [--steps N]
        [--device cuda] [--variant JSON ...] [--quick] [--json out.json]

Runs the real job (inr_backend.job.run_job, task occupancy) in this process after one small
warm-up job (CUDA context, kernel caches), then prints a table of timings (sampling, training,
extraction, metrics) and quality (IoU against the winding-number labels, Chamfer-L1, normal
consistency, F-score) and writes them as JSON. Default mesh: armadillo from ../shared/data/meshes.

Each ``--variant`` is a JSON dict merged over the base config (the occupancy task's options,
including the experiment dicts ``field``, ``sampling``, ``train``, ``extract``), one row each,
so one run sweeps settings after one warm-up, e.g.
    --variant '{}' --variant '{"max_steps": 1500}' --variant '{"field": {"encoding": {"finest_resolution": 1024}}}'
``--quick``: CPU-sized (preset fast, 200 steps, 128^3) to check the script itself.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from inr_backend import protocol  # noqa: E402
from inr_backend.geometry.mesh import load_mesh  # noqa: E402
from inr_backend.job import run_job  # noqa: E402
from inr_backend.plyio import write_ply  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "meshes"


def convert(mesh_path: Path, config: dict, work: Path) -> dict:
    job_dir = work / mesh_path.stem
    vertices, faces = load_mesh(mesh_path)
    write_ply(job_dir / "inputs" / "mesh.ply", vertices, faces)
    protocol.write_job(job_dir, protocol.make_job("occupancy", inputs={"mesh": "inputs/mesh.ply"}, config=config))
    started = time.perf_counter()
    code = run_job(job_dir, stdout=io.StringIO(), install_signal_handlers=False)
    wall = time.perf_counter() - started
    result = protocol.read_result(job_dir)
    if code != 0:
        raise SystemExit(f"{mesh_path.name}: job failed: {result.get('error')}")
    result["wall"] = wall
    result["n_source_faces"] = int(len(faces))
    result["resolved_config"] = json.loads((job_dir / protocol.CONFIG_FILE).read_text())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("meshes", nargs="*", type=Path, default=[DATA / "armadillo.obj"])
    parser.add_argument("--preset", default="balanced")
    parser.add_argument("--network", default="hashgrid")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--variant", action="append", default=None, metavar="JSON",
                        help="config dict merged over the base config; repeat for a sweep (one row each)")
    parser.add_argument("--quick", action="store_true", help="CPU-sized run to check the script")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "bench_occupancy.json")
    args = parser.parse_args()

    config = {"preset": args.preset, "network": args.network, "resolution": args.resolution, "device": args.device}
    if args.quick:
        config.update(preset="fast", max_steps=200, resolution=128)
    if args.steps:
        config["max_steps"] = args.steps
    if args.batch_size:
        config["batch_size"] = args.batch_size
    variants = [json.loads(text) for text in (args.variant or ["{}"])]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        warm = Path(tmp) / "warmup.ply"
        import trimesh
        sphere = trimesh.creation.icosphere(subdivisions=3)
        write_ply(warm, sphere.vertices, sphere.faces)
        convert(warm, {**config, "max_steps": 20, "resolution": 64}, Path(tmp))
        for mesh in args.meshes:
            for variant in variants:
                result = convert(mesh, {**config, **variant}, Path(tmp))
                t, m = result["timings"], result["metrics"]
                resolved = result["resolved_config"]
                rows.append({"mesh": mesh.name, "variant": json.dumps(variant), "faces": result["n_source_faces"],
                             "device": result["device"], "steps": resolved["train"]["steps"],
                             "sampling_s": t["sampling"], "training_s": t["training"],
                             "extraction_s": t["extraction"],
                             "train_extract_s": t["training"] + t["extraction"],
                             "conversion_s": t["sampling"] + t["training"] + t["extraction"],
                             "grid_query_s": t.get("grid_query"), "marching_cubes_s": t.get("marching_cubes"),
                             "edge_bisection_s": t.get("edge_bisection"),
                             "metrics_s": t["metrics"], "total_s": t["total"],
                             "iou": m["iou"], "chamfer_l1": m["chamfer_l1"],
                             "normal_consistency": m["normal_consistency"], "f_score": m["f_score"],
                             "final_loss": m["final_loss"], "out_faces": m["n_faces"]})

    header = ["mesh", "variant", "steps", "sampling_s", "training_s", "extraction_s", "grid_query_s",
              "marching_cubes_s", "edge_bisection_s", "train_extract_s", "conversion_s", "iou", "chamfer_l1",
              "normal_consistency", "f_score"]
    print(" | ".join(header))
    for row in rows:
        print(" | ".join(f"{row[k]:.4f}" if isinstance(row[k], float) else str(row[k]) for k in header))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    import torch
    report = {"date": time.strftime("%Y-%m-%d"), "commit": commit, "config": config, "variants": variants,
              "device": rows[0]["device"] if rows else None, "torch": torch.__version__,
              "python": platform.python_version(), "command": " ".join(sys.argv), "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
