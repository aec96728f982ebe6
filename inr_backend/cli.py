"""Command line: ``python -m inr_backend {run,fit-mesh,fit-image,resample} ...``.

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
                                          "`done` last; a line `cancel` on stdin, or end of stdin, cancels "
                                          "(so does SIGINT or SIGTERM). Training writes a checkpoint every "
                                          "checkpoint_seconds and when cancelled; --resume continues from it.")
    run.add_argument("job_dir", metavar="JOB_DIR", help="folder holding job.json and inputs/")
    run.add_argument("--resume", action="store_true",
                     help="continue from the job's last checkpoint with what is left of its budget "
                          "(a finished job is left as it is)")
    run.add_argument("--keep-running", action="store_true",
                     help="outlive the parent: end of stdin does not cancel and a closed stdout is ignored "
                          "(follow the job in JOB_DIR/events.jsonl); also set by INR_KEEP_RUNNING=1")
    run.add_argument("--ignore-stdin", action="store_true",
                     help="do not watch stdin for `cancel` / end of input (for batch runs with stdin closed)")
    run.set_defaults(handler=_run)

    fit = commands.add_parser("fit-mesh", help="convert a mesh file into a neural field and back",
                              description="Make a job folder from MESH, train a field, extract a mesh. "
                                          "Leaves OUT_DIR/mesh.ply, OUT_DIR/result.json and the job folder OUT_DIR/job.")
    fit.add_argument("mesh", metavar="MESH", help="any mesh trimesh reads: OBJ, PLY, STL, GLB, OFF")
    fit.add_argument("--task", choices=["sdf", "occupancy"], default="sdf",
                     help="the field to train: a signed distance field (default) or an occupancy field")
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
    _add_image_commands(commands)
    _add_nerf_commands(commands)
    from .selftest import add_command as add_selftest_command  # `selftest`: can this Python run the backend?
    add_selftest_command(commands)
    return parser


def _run(args) -> int:
    """The `run` command. It ends the process itself (os._exit): in-process callers use job.run_job."""
    import os
    from .job import keep_running_from_env, run_job
    code = run_job(args.job_dir, stdin=None if args.ignore_stdin else sys.stdin, resume=args.resume,
                   keep_running=args.keep_running or keep_running_from_env())
    # Everything is written and closed (result.json, events.jsonl, the log, `done`). Exit now,
    # without interpreter shutdown: the stdin and heartbeat threads are daemons, and a daemon
    # thread woken during shutdown can abort the process in native code ("terminate called
    # without an active exception", seen once in ~40 test runs; pytorch/pytorch#38228), which
    # would turn a finished job into exit code -6.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


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


# --------------------------------------------------------------------------- the image task

_IMAGE_NETWORKS = ["relu", "fourier", "frequency", "siren", "hashgrid"]


def _add_image_commands(commands) -> None:
    """``fit-image`` (image -> field -> image at any size) and ``resample`` (a trained field, new size)."""
    fit = commands.add_parser("fit-image", help="fit a neural field to an image and sample it at any size",
                              description="Make a job folder from IMAGE, fit a field f(x, y) -> colour, sample it "
                                          "at the asked size. Leaves OUT_DIR/image.png (8 or 16 bit like the "
                                          "source) or OUT_DIR/image.exr (for EXR sources), OUT_DIR/result.json "
                                          "(PSNR, SSIM) and the job folder OUT_DIR/job (checkpoint for `resample`).")
    fit.add_argument("image", metavar="IMAGE", help="PNG (8 or 16 bit), JPEG or OpenEXR (NONE, ZIP or ZIPS codec)")
    fit.add_argument("--out", required=True, metavar="OUT_DIR", help="output folder (created)")
    fit.add_argument("--network", choices=_IMAGE_NETWORKS, default="hashgrid",
                     help="hash grid + MLP (default), ReLU MLP, Fourier features + ReLU MLP, "
                          "positional encoding + ReLU MLP, or SIREN")
    size = fit.add_mutually_exclusive_group()
    size.add_argument("--scale", type=float, default=None, help="output size = scale x input size (default 1)")
    size.add_argument("--size", metavar="WxH", default=None, help="exact output size, e.g. 1920x1080")
    fit.add_argument("--preset", choices=["fast", "balanced", "quality"], default="balanced",
                     help="training budget: fast, balanced (default) or quality")
    fit.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: CUDA when present")
    fit.add_argument("--steps", type=int, default=None, help="training steps (default: the preset's)")
    fit.add_argument("--seconds", type=float, default=None, help="training time budget in seconds")
    fit.add_argument("--batch-size", type=int, default=None, help="pixels per training step (default: the preset's)")
    fit.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    fit.add_argument("--json", action="store_true", help="print protocol messages (JSON lines) on stdout instead of text")
    fit.set_defaults(handler=_fit_image)

    res = commands.add_parser("resample", help="sample a trained image field at a new size (no retraining)",
                              description="Load the image field of JOB_DIR (a fit-image job folder, OUT_DIR/job) "
                                          "and write it at a new size to FILE (.png or .exr).")
    res.add_argument("job_dir", metavar="JOB_DIR", help="job folder of a finished image job")
    size = res.add_mutually_exclusive_group(required=True)
    size.add_argument("--scale", type=float, help="output size = scale x the training image's size")
    size.add_argument("--size", metavar="WxH", help="exact output size, e.g. 1920x1080")
    res.add_argument("--out", required=True, metavar="FILE", help="output image, .png or .exr")
    res.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="default: CUDA when present")
    res.add_argument("--json", action="store_true", help="print one JSON line (a `done` message) on stdout")
    res.set_defaults(handler=_resample)


def _parse_size(text: str) -> tuple[int, int]:
    """'WxH' -> (width, height)."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size must look like 1920x1080 (width x height), got {text!r}") from None
    if width < 1 or height < 1:
        raise ValueError(f"--size must be positive, got {text!r}")
    return width, height


def _fit_image(args) -> int:
    from . import imageio
    from .job import run_job

    out_dir = Path(args.out)
    job_dir = out_dir / "job"
    try:
        pixels, info = imageio.read_image(args.image)
        size = _parse_size(args.size) if args.size else None
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if job_dir.exists():
        shutil.rmtree(job_dir)  # a re-run of the same command starts afresh
    suffix = {"png": ".png", "jpeg": ".jpg", "exr": ".exr"}.get(info["format"])
    input_path = job_dir / protocol.INPUTS_DIR / f"image{suffix or ('.exr' if info['bit_depth'] == 32 else '.png')}"
    input_path.parent.mkdir(parents=True, exist_ok=True)
    if suffix:
        shutil.copyfile(args.image, input_path)      # the file as it is: no re-encoding
    elif input_path.suffix == ".exr":                  # other formats Pillow reads (TIFF, BMP, ...)
        imageio.write_exr(input_path, pixels)
    else:
        imageio.write_png(input_path, pixels, bits=16 if info["bit_depth"] == 16 else 8)
    config = {"preset": args.preset, "network": args.network, "device": args.device, "seed": args.seed}
    for key, value in (("max_steps", args.steps), ("seconds", args.seconds), ("batch_size", args.batch_size),
                       ("scale", args.scale)):
        if value is not None:
            config[key] = value
    if size:
        config["width"], config["height"] = size
    job = protocol.make_job("image", inputs={"image": f"{protocol.INPUTS_DIR}/{input_path.name}"}, config=config,
                            source={"file": str(Path(args.image).resolve())})
    protocol.write_job(job_dir, job)

    stream = sys.stdout if args.json else _HumanReadable(sys.stderr)
    code = run_job(job_dir, stdout=stream)
    result = protocol.read_result(job_dir)
    out_image = None
    if result["status"] == "done":
        out_image = out_dir / Path(result["outputs"]["image"]).name
        shutil.copyfile(job_dir / result["outputs"]["image"], out_image)
    shutil.copyfile(job_dir / protocol.RESULT_FILE, out_dir / "result.json")
    if not args.json:
        print(json.dumps(result.get("metrics", {}), indent=2), file=sys.stderr)
        print(f"{result['status']}: {out_image}" if out_image else f"{result['status']}: see {job_dir / protocol.LOG_FILE}",
              file=sys.stderr)
    return code


def _resample(args) -> int:
    try:
        width, height = _parse_size(args.size) if args.size else (None, None)
        import torch
        from .tasks.image import resample
        device = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
        info = resample(args.job_dir, args.out, scale=args.scale, width=width, height=height, device=device,
                        warn=lambda text: print(protocol.encode_message(protocol.make_message("warning", message=text))
                                                if args.json else f"warning: {text}",
                                                file=sys.stdout if args.json else sys.stderr, flush=True))
    except (ValueError, OSError) as exc:  # ProtocolError is a ValueError
        if isinstance(exc, OSError) and protocol.is_disk_full(exc):
            exc = ValueError(protocol.disk_full_message(exc))
        if args.json:
            print(protocol.encode_message(protocol.make_message("error", message=str(exc))))
            print(protocol.encode_message(protocol.make_message("done", status="failed")))
        else:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(protocol.encode_message(protocol.make_message("done", status="done", **info)))
    else:
        print(f"wrote {info['path']} ({info['width']}x{info['height']}) in {info['seconds']:.2f} s", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- nerf: fit-nerf, render, extract


def _add_nerf_commands(commands) -> None:
    fit = commands.add_parser("fit-nerf", help="train a NeRF from posed images (transforms.json)",
                              description="Train a NeRF on DATASET_DIR (transforms.json, or transforms_train.json "
                                          "with transforms_val.json / transforms_test.json held out). Leaves the job "
                                          "folder OUT_DIR/job (checkpoint, previews), OUT_DIR/result.json and, with "
                                          "--mesh, OUT_DIR/mesh.ply.")
    fit.add_argument("dataset", metavar="DATASET_DIR", help="folder with transforms*.json and images (or a transforms file)")
    fit.add_argument("--out", required=True, metavar="OUT_DIR", help="output folder (created)")
    fit.add_argument("--seconds", type=float, default=None, help="training time budget in seconds (default: the preset's steps)")
    fit.add_argument("--steps", type=int, default=None, help="at most this many training steps")
    fit.add_argument("--preset", choices=["fast", "balanced", "quality"], default="balanced")
    fit.add_argument("--model", choices=["ngp", "reference"], default="ngp",
                     help="ngp: hash grid + occupancy grid (default); reference: the original NeRF MLP")
    fit.add_argument("--background", choices=["random", "white", "black"], default="random",
                     help="training background behind transparent pixels (default random)")
    fit.add_argument("--scene-box", type=float, nargs=6, metavar=("X0", "Y0", "Z0", "X1", "Y1", "Z1"), default=None,
                     help="world-space box to reconstruct (default: normalization.json or the cameras' view)")
    fit.add_argument("--mesh", action="store_true", help="also extract a coloured mesh (OUT_DIR/mesh.ply)")
    fit.add_argument("--mesh-resolution", type=int, default=256)
    fit.add_argument("--mesh-threshold", type=float, default=None, help="density threshold (default 20)")
    fit.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--json", action="store_true", help="print protocol messages (JSON lines) on stdout instead of text")
    fit.set_defaults(handler=_fit_nerf)

    render = commands.add_parser("render", help="render cameras with a trained NeRF",
                                 description="Render every frame of TRANSFORMS_JSON with the NeRF trained in JOB_DIR "
                                             "(a fit-nerf OUT_DIR or its job folder) into RENDER_DIR: <frame>.png, "
                                             "<frame>_alpha.png, <frame>_depth.exr (z-depth in world units, 0 where "
                                             "nothing is hit), <frame>_normal.png and render.json. Prints PSNR/SSIM "
                                             "against the frames' images where they exist.")
    render.add_argument("job_dir", metavar="JOB_DIR")
    render.add_argument("--cameras", required=True, metavar="TRANSFORMS_JSON")
    render.add_argument("--out", required=True, metavar="RENDER_DIR")
    render.add_argument("--outputs", default="rgb,alpha,depth", help="comma-separated: rgb,alpha,depth,normal")
    render.add_argument("--background", choices=["white", "black"], default="white")
    render.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    render.add_argument("--json", action="store_true", help="print protocol messages (JSON lines) on stdout")
    render.set_defaults(handler=_render_nerf)

    extract = commands.add_parser("extract", help="extract a mesh again from a trained sdf, occupancy or nerf job",
                                  description="Marching cubes on the field trained in JOB_DIR, without any training: "
                                              "sdf and occupancy jobs at another resolution, level (--threshold) or "
                                              "smoothing; nerf jobs as a coloured mesh of the density. Written "
                                              "atomically as a binary PLY in world coordinates (those of the job's own "
                                              "mesh); prints the vertex and face counts. A job that has not finished "
                                              "training is extracted from its last checkpoint.")
    extract.add_argument("job_dir", metavar="JOB_DIR", help="a job folder (or a fit-mesh / fit-nerf OUT_DIR)")
    extract.add_argument("--out", required=True, metavar="MESH_PLY", help="the mesh to write (.ply)")
    extract.add_argument("--resolution", type=int, default=None,
                         help="marching-cubes grid per axis, 16-2048 (default: the job's; nerf 256)")
    extract.add_argument("--threshold", type=float, default=None,
                         help="sdf: the distance level in the job's unit box (default: the job's level, 0); "
                              "occupancy: the surface probability in (0, 1) (default: the job's, 0.5); "
                              "nerf: the density (default: the job's, 20)")
    extract.add_argument("--smoothing", type=int, default=0,
                         help="Taubin smoothing iterations of the marching-cubes mesh (default 0: none)")
    extract.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    extract.add_argument("--json", action="store_true",
                         help="print protocol messages (JSON lines) on stdout, `done` last")
    extract.set_defaults(handler=_extract)


def _fit_nerf(args) -> int:
    from .job import run_job

    out_dir = Path(args.out)
    job_dir = out_dir / "job"
    dataset = Path(args.dataset)
    if not dataset.exists():
        print(f"error: {dataset} does not exist", file=sys.stderr)
        return 2
    if job_dir.exists():
        shutil.rmtree(job_dir)
    # The dataset is copied in: a job folder is self-contained, and the backend refuses paths
    # (symlinks included) that leave it.
    inputs = job_dir / protocol.INPUTS_DIR
    inputs.mkdir(parents=True)
    if dataset.is_dir():
        dataset_input = inputs / "dataset"
        shutil.copytree(dataset, dataset_input)
    else:  # a transforms file: its folder is the dataset
        shutil.copytree(dataset.parent, inputs / "dataset")
        dataset_input = inputs / "dataset" / dataset.name
    config = {"preset": args.preset, "model": args.model, "background": args.background, "device": args.device,
              "seed": args.seed, "mesh": args.mesh, "mesh_resolution": args.mesh_resolution}
    if args.seconds is not None:
        config["seconds"] = args.seconds
    if args.steps is not None:
        config["max_steps"] = args.steps
    if args.mesh_threshold is not None:
        config["mesh_threshold"] = args.mesh_threshold
    if args.scene_box is not None:
        config["scene_box"] = [args.scene_box[:3], args.scene_box[3:]]
    job = protocol.make_job("nerf", inputs={"dataset": dataset_input.relative_to(job_dir).as_posix()}, config=config,
                            source={"dataset": str(dataset.resolve())})
    protocol.write_job(job_dir, job)
    stream = sys.stdout if args.json else _HumanReadable(sys.stderr)
    code = run_job(job_dir, stdout=stream)
    result = protocol.read_result(job_dir)
    if result["status"] == "done" and "mesh" in result.get("outputs", {}):
        shutil.copyfile(job_dir / result["outputs"]["mesh"], out_dir / "mesh.ply")
    shutil.copyfile(job_dir / protocol.RESULT_FILE, out_dir / "result.json")
    if not args.json:
        print(json.dumps(result.get("metrics", {}), indent=2), file=sys.stderr)
        print(f"{result['status']}: {out_dir}" if result["status"] == "done"
              else f"{result['status']}: see {job_dir / protocol.LOG_FILE}", file=sys.stderr)
    return code


def _trained_job_dir(path: str) -> Path:
    """A fit-nerf OUT_DIR or a job folder -> the job folder."""
    path = Path(path)
    if not (path / protocol.JOB_FILE).is_file() and (path / "job" / protocol.JOB_FILE).is_file():
        return path / "job"
    return path


class _CommandReporter:
    """Protocol messages (--json) or readable lines for the render/extract commands (thread-safe:
    a heartbeat thread reports through it too)."""

    def __init__(self, as_json: bool):
        import threading
        import time
        self.as_json = as_json
        self.done = False
        self.lock = threading.Lock()
        self.last_sent = time.monotonic()
        self.phase = ""

    def send(self, type: str, **fields) -> None:
        with self.lock:
            self._send(type, **fields)

    def _send(self, type: str, **fields) -> None:
        import time
        message = protocol.make_message(type, **fields)
        self.last_sent = time.monotonic()
        if type == "progress" and not fields.get("heartbeat"):
            self.phase = fields.get("phase", self.phase)
        if self.as_json:
            if not self.done:
                print(protocol.encode_message(message), flush=True)
            self.done = self.done or type == "done"
        elif type != "done" and not fields.get("heartbeat"):
            print(_describe(message) if type != "progress" or not message.get("total") else
                  f"[{message['elapsed']:7.1f}s] {message.get('phase', '')} {message['step']}/{message['total']}",
                  file=sys.stderr)

    def heartbeat(self, stop, started: float) -> None:
        """A progress message at least every second while one long call runs (as `run` does)."""
        import time
        while not stop.wait(0.25):
            with self.lock:    # checked and sent at once: never after a message sent meanwhile
                if not stop.is_set() and time.monotonic() - self.last_sent >= 1.0:
                    self._send("progress", phase=self.phase, step=0, total=0, loss=None,
                               elapsed=round(time.monotonic() - started, 3), eta=None, heartbeat=True)


def _run_command(args, task: str, body) -> int:
    """Start, run ``body(reporter, device)``, and end with `done` whatever happens; a dict that
    ``body`` returns goes into the `done` message."""
    import threading
    import time
    reporter = _CommandReporter(args.json)
    stop = threading.Event()
    try:
        from .job import choose_device
        device = choose_device(args.device, reporter)
        if device.type == "cpu":
            from .job import limit_cpu_threads
            limit_cpu_threads()
        reporter.send("started", task=task, device=str(device))
        threading.Thread(target=reporter.heartbeat, args=(stop, time.monotonic()), name="heartbeat",
                         daemon=True).start()
        extra = body(reporter, device) or {}
    except KeyboardInterrupt:
        stop.set()
        reporter.send("done", status="cancelled")
        return 1
    except Exception as exc:  # noqa: BLE001 - every failure ends in a message and `done`
        stop.set()
        from .job import _user_message
        reporter.send("error", message=_user_message(exc))
        reporter.send("done", status="failed")
        if not args.json:
            print(f"error: {_user_message(exc)}", file=sys.stderr)
        return 1
    stop.set()
    reporter.send("done", status="done", **extra)
    return 0


def _render_nerf(args) -> int:
    outputs = [name.strip() for name in args.outputs.split(",") if name.strip()]
    unknown = sorted(set(outputs) - {"rgb", "alpha", "depth", "normal"})
    if unknown or not outputs:
        print(f"error: --outputs takes rgb, alpha, depth, normal; got {args.outputs!r}", file=sys.stderr)
        return 2

    def body(reporter, device):
        from .tasks.nerf import render_frames_to_folder
        summary = render_frames_to_folder(_trained_job_dir(args.job_dir), Path(args.cameras), Path(args.out),
                                          outputs=outputs, background=args.background, device=device,
                                          reporter=reporter)
        if not args.json:
            for frame in summary["frames"]:
                quality = (f"  PSNR {frame['psnr']:.2f} dB  SSIM {frame['ssim']:.4f}" if "psnr" in frame else "")
                print(f"{frame['name']}: {frame['rgb'] if 'rgb' in frame else frame['name']}{quality}", file=sys.stderr)
            if summary.get("psnr") is not None:
                print(f"mean PSNR {summary['psnr']:.2f} dB, SSIM {summary['ssim']:.4f} over "
                      f"{summary['n_compared']} frames", file=sys.stderr)

    return _run_command(args, "render", body)


def _extract(args) -> int:
    """`extract`: sdf / occupancy jobs through tasks.reextract, nerf jobs through tasks.nerf."""
    def body(reporter, device):
        job_dir = _trained_job_dir(args.job_dir)
        task = protocol.read_job(job_dir)["task"]
        reporter.send("progress", phase="extracting mesh", step=0, total=0, loss=None, elapsed=0.0, eta=None)
        if task == "nerf":
            from .tasks.nerf import extract_to_file
            info = extract_to_file(job_dir, Path(args.out), resolution=args.resolution or 256,
                                   threshold=args.threshold, smoothing=args.smoothing, device=device,
                                   warn=lambda text: reporter.send("warning", message=text))
        else:
            from .tasks.reextract import extract_job_mesh
            info = extract_job_mesh(job_dir, Path(args.out), resolution=args.resolution, threshold=args.threshold,
                                    smoothing=args.smoothing, device=device,
                                    warn=lambda text: reporter.send("warning", message=text))
            if not info["finished"]:
                reporter.send("warning", message=f"the job's training has not finished: this mesh comes from its "
                                                 f"checkpoint at step {info['from_step']} (finish it with "
                                                 "`run JOB_DIR --resume`)")
        reporter.send("progress", phase="extracted", step=1, total=1, loss=0.0, elapsed=round(info["seconds"], 3),
                      eta=0.0, n_vertices=info["n_vertices"], n_faces=info["n_faces"])
        if not args.json:
            print(f"{args.out}: {info['n_vertices']} vertices, {info['n_faces']} faces", file=sys.stderr)
        return {"path": str(args.out), "n_vertices": info["n_vertices"], "n_faces": info["n_faces"]}

    return _run_command(args, "extract", body)
