"""Command line: ``python -m inr_backend {run,fit-mesh} ...``.

``run`` is what the Blender add-on starts: stdout carries only protocol messages.
``fit-mesh`` is for people and pipelines: it makes a job folder from any mesh file, runs it,
prints readable progress on stderr and leaves OUT_DIR/mesh.ply and OUT_DIR/result.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from . import __version__, protocol


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return args.handler(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m inr_backend",
                                     description="Neural Fields for Blender backend: trains neural fields from job folders.")
    parser.add_argument("--version", action="version", version=f"inr_backend {__version__} (protocol v{protocol.SCHEMA_VERSION})")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="run a job folder (what the Blender add-on does)",
                              description="Run the job in JOB_DIR. stdout carries one JSON message a line, "
                                          "`done` last; a line `cancel` on stdin, or end of stdin, cancels.")
    run.add_argument("job_dir", metavar="JOB_DIR", help="folder holding job.json and inputs/")
    run.add_argument("--ignore-stdin", action="store_true",
                     help="do not watch stdin for `cancel` / end of input (for batch runs with stdin closed)")
    run.set_defaults(handler=_run)

    fit = commands.add_parser("fit-mesh", help="convert a mesh file into a neural field and back",
                              description="Make a job folder from MESH, train a field, extract a mesh. "
                                          "Leaves OUT_DIR/mesh.ply, OUT_DIR/result.json and the job folder OUT_DIR/job.")
    fit.add_argument("mesh", metavar="MESH", help="any mesh trimesh reads: OBJ, PLY, STL, GLB, OFF")
    fit.add_argument("--task", choices=["sdf"], default="sdf", help="the field to train (default: sdf)")
    fit.add_argument("--out", required=True, metavar="OUT_DIR", help="output folder (created)")
    fit.add_argument("--resolution", type=int, default=256, help="marching-cubes grid resolution per axis (default 256)")
    fit.add_argument("--preset", choices=["fast", "balanced", "quality"], default="balanced",
                     help="training budget: fast, balanced (default) or quality")
    fit.add_argument("--network", choices=["hashgrid", "frequency", "siren", "relu", "fourier"], default="hashgrid",
                     help="hash grid + MLP (default), positional encoding + ReLU MLP, SIREN, plain ReLU MLP, "
                          "or random Fourier features + ReLU MLP")
    fit.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: CUDA when present")
    fit.add_argument("--steps", type=int, default=None, help="training steps (default: the preset's)")
    fit.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    fit.add_argument("--json", action="store_true", help="print protocol messages (JSON lines) on stdout instead of text")
    fit.set_defaults(handler=_fit_mesh)
    return parser


def _run(args) -> int:
    from .job import run_job
    return run_job(args.job_dir, stdin=None if args.ignore_stdin else sys.stdin)


def _fit_mesh(args) -> int:
    from .geometry.mesh import MeshError, load_mesh
    from .job import run_job
    from .plyio import write_ply

    out_dir = Path(args.out)
    job_dir = out_dir / "job"
    try:
        vertices, faces = load_mesh(args.mesh)
    except MeshError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if job_dir.exists():
        shutil.rmtree(job_dir)  # a re-run of the same command starts afresh
    write_ply(job_dir / protocol.INPUTS_DIR / "mesh.ply", vertices, faces)
    config = {"preset": args.preset, "network": args.network, "resolution": args.resolution,
              "device": args.device, "seed": args.seed}
    if args.steps is not None:
        config["max_steps"] = args.steps
    job = protocol.make_job(args.task, inputs={"mesh": f"{protocol.INPUTS_DIR}/mesh.ply"}, config=config,
                            source={"file": str(Path(args.mesh).resolve())})
    protocol.write_job(job_dir, job)

    stream = sys.stdout if args.json else _HumanReadable(sys.stderr)
    code = run_job(job_dir, stdout=stream)
    result = protocol.read_result(job_dir)
    if result["status"] == "done":
        shutil.copyfile(job_dir / result["outputs"]["mesh"], out_dir / "mesh.ply")
    shutil.copyfile(job_dir / protocol.RESULT_FILE, out_dir / "result.json")
    if not args.json:
        print(json.dumps(result.get("metrics", {}), indent=2), file=sys.stderr)
        print(f"{result['status']}: {out_dir / 'mesh.ply'}" if result["status"] == "done"
              else f"{result['status']}: see {job_dir / protocol.LOG_FILE}", file=sys.stderr)
    return code


class _HumanReadable:
    """A text stream that turns protocol message lines into short readable lines."""

    def __init__(self, target):
        self.target = target

    def write(self, text: str) -> None:
        for line in text.splitlines():
            if line.strip():
                message = protocol.parse_message(line)
                if not message.get("heartbeat"):  # a heartbeat only says "still here": no news for a person
                    self.target.write(_describe(message) + "\n")

    def flush(self) -> None:
        self.target.flush()


def _describe(message: dict) -> str:
    kind = message["type"]
    if kind == "progress":
        if not message.get("total"):
            return f"[{message['elapsed']:7.1f}s] {message.get('phase', '')}"
        eta = f", eta {message['eta']:.0f}s" if message.get("eta") is not None else ""
        return (f"[{message['elapsed']:7.1f}s] {message.get('phase', '')} step {message['step']}/{message['total']}"
                f" loss {message['loss']:.5f}{eta}")
    if kind == "started":
        return f"started {message['task']} on {message['device']}"
    if kind in ("warning", "error"):
        return f"{kind}: {message['message']}"
    return f"{kind}: {message.get('status', message.get('path', ''))}"
