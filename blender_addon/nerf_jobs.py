"""NeRF jobs, seen from the add-on (no bpy): find a dataset, check it, write a train job, follow
its messages, and build the command lines for rendering views and extracting a mesh.

The bpy layer (nerf.py) does only what needs Blender: reading cameras and the scene, making
images, meshes and materials, and the panel. Everything here is plain Python, tested without
Blender (tests/addon/test_nerf_jobs.py).

A train job folder::

    job.json                 task nerf, inputs {"dataset": "inputs/dataset"}, config
    inputs/dataset/          transforms.json (or transforms_train.json [+ _val]), the images
                             it lists, normalization.json when the capture wrote one
    checkpoints/field        the trained field (written by the backend)
    outputs/preview.png      the latest preview (replaced atomically while training)
    result.json              status, metrics {psnr, ssim, n_eval_views}, outputs
    renders/<name>/          one folder per render request: cameras.json, PNG/EXR, render.json
"""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ._backend import coverage, datasets, protocol
from .jobs import DiskFullError, is_disk_full, slugify

DATASET_INPUT = f"{protocol.INPUTS_DIR}/dataset"
PREVIEW_OUTPUT = f"{protocol.OUTPUTS_DIR}/preview.png"
MESH_OUTPUT = f"{protocol.OUTPUTS_DIR}/mesh.ply"
RENDERS_DIR = "renders"
TRANSFORMS_FILES = ("transforms.json", "transforms_train.json", "transforms_val.json", "transforms_test.json")
NORMALIZATION_FILE = "normalization.json"

PRESETS = ("fast", "balanced", "quality")
MODELS = ("ngp", "reference")
BACKGROUNDS = ("white", "black", "random")
DEVICES = ("auto", "cpu", "cuda")
RENDER_OUTPUTS = ("rgb", "alpha", "depth", "normal")


class NerfInputError(ValueError):
    """The dataset or request cannot be used; the text says why and what to do."""


class NerfJobError(RuntimeError):
    """A job (training, rendering, extraction) did not produce a usable result."""


# --------------------------------------------------------------------------- the dataset


def find_dataset(folder: str | os.PathLike | None) -> Path:
    """The dataset folder, checked to hold a training transforms file; NerfInputError otherwise."""
    if not folder:
        raise NerfInputError("No capture or dataset: render a capture first (Capture > Render Capture) or choose "
                             "a dataset folder that holds transforms.json")
    path = Path(folder)
    if path.is_file() and path.suffix == ".json":
        path = path.parent
    if not path.is_dir():
        raise NerfInputError(f"The dataset folder {path} does not exist: render a capture first (Capture > Render "
                             "Capture) or choose a folder that holds transforms.json")
    if coverage.training_transforms(path) is None:
        raise NerfInputError(f"{path} holds no transforms.json (or transforms_train.json): render a capture into it "
                             "or choose a dataset folder")
    return path.absolute()


def check_dataset(folder: str | os.PathLike) -> coverage.CoverageReport:
    """The coverage report of a dataset folder's training views (errors stop a run)."""
    return coverage.check_dataset(find_dataset(folder))


def _dataset_files(root: Path) -> list[Path]:
    """Every file a dataset folder needs: its transforms files, normalization.json, the images
    its frames list and the per-frame ``*_file_path`` extras (masks, depth passes) inside it."""
    files: list[Path] = []
    for name in TRANSFORMS_FILES + (NORMALIZATION_FILE,):
        if (root / name).is_file():
            files.append(root / name)
    for name in TRANSFORMS_FILES:
        if not (root / name).is_file():
            continue
        try:
            frames = datasets.read_transforms(root / name)
        except datasets.DatasetError as exc:
            raise NerfInputError(str(exc)) from None
        for frame in frames:
            files.append(Path(frame.file_path))
            for key, value in frame.extra.items():
                if key.endswith("file_path") and isinstance(value, str):
                    try:
                        extra = datasets.confined_path(root, value)
                    except datasets.DatasetError:
                        continue
                    if extra.is_file():
                        files.append(extra)
    unique: dict[str, Path] = {}
    for path in files:
        unique.setdefault(os.path.normpath(str(path)), path)
    return list(unique.values())


def copy_dataset(source: str | os.PathLike, target: str | os.PathLike) -> int:
    """Copy what a dataset needs (see _dataset_files) from ``source`` to ``target``, keeping
    the relative layout; returns the number of files. Missing images raise NerfInputError."""
    source, target = Path(source).absolute(), Path(target)
    count = 0
    for path in _dataset_files(source):
        relative = Path(os.path.normpath(path)).relative_to(Path(os.path.normpath(source)))
        if not path.is_file():
            raise NerfInputError(f"The dataset lists {relative.as_posix()} but the file is missing in {source}")
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, destination)
        count += 1
    return count


# --------------------------------------------------------------------------- the train job


@dataclass
class NerfSettings:
    """What the artist chose (the backend resolves everything else)."""

    preset: str = "fast"
    model: str = "ngp"
    device: str = "auto"
    seed: int = 0
    seconds: float = 0.0          # 0: the preset decides
    max_steps: int = 0            # 0: the preset (or the time budget) decides
    background: str = "random"
    preview_seconds: float = 10.0
    mesh: bool = False
    mesh_resolution: int = 0      # 0: the backend's default
    mesh_threshold: float = 0.0   # 0: the backend's default

    def config(self) -> dict[str, Any]:
        for value, allowed, what in ((self.preset, PRESETS, "preset"), (self.model, MODELS, "model"),
                                     (self.device, DEVICES, "device"), (self.background, BACKGROUNDS, "background")):
            if value not in allowed:
                raise NerfInputError(f"unknown {what} {value!r}; choose one of {', '.join(allowed)}")
        config: dict[str, Any] = {"preset": self.preset, "model": self.model, "device": self.device,
                                  "seed": int(self.seed), "background": self.background,
                                  "preview_seconds": float(self.preview_seconds)}
        if self.seconds and self.seconds > 0:
            config["seconds"] = float(self.seconds)
        if self.max_steps and self.max_steps > 0:
            config["max_steps"] = int(self.max_steps)
        if self.mesh:
            config["mesh"] = True
            if self.mesh_resolution > 0:
                config["mesh_resolution"] = int(self.mesh_resolution)
            if self.mesh_threshold > 0:
                config["mesh_threshold"] = float(self.mesh_threshold)
        return config


def new_job_name(label: str, now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(time.time() if now is None else now))
    return f"{stamp}-nerf-{slugify(label, 24)}-{uuid.uuid4().hex[:6]}"


def create_train_job(jobs_root: str | os.PathLike, dataset_dir: str | os.PathLike, config: dict[str, Any], *,
                     source: dict[str, Any] | None = None, name: str | None = None) -> Path:
    """Write a complete nerf job folder (the dataset copied into inputs/dataset) and return it.

    Written into a hidden folder and renamed when complete, like every job.
    """
    dataset_dir = find_dataset(dataset_dir)
    jobs_root = Path(jobs_root)
    jobs_root.mkdir(parents=True, exist_ok=True)
    source = {"dataset": str(dataset_dir), **dict(source or {})}
    name = name or new_job_name(str(source.get("label") or dataset_dir.name))
    final = jobs_root / name
    if final.exists():
        raise FileExistsError(f"job folder already exists: {final}")
    temporary = jobs_root / f".{name}.partial"
    temporary.mkdir()
    try:
        copy_dataset(dataset_dir, temporary / DATASET_INPUT)
        job = protocol.make_job("nerf", inputs={"dataset": DATASET_INPUT}, config=config,
                                outputs={"checkpoint": f"{protocol.CHECKPOINTS_DIR}/field", "preview": PREVIEW_OUTPUT},
                                source=source)
        protocol.write_job(temporary, job)
        os.rename(temporary, final)
    except BaseException as exc:
        shutil.rmtree(temporary, ignore_errors=True)
        if is_disk_full(exc):   # the same "free some space" advice as a mesh conversion's job folder
            raise DiskFullError(exc, temporary, leftover=temporary.exists()) from exc
        raise
    return final


def job_label(job_dir: str | os.PathLike) -> str:
    """A short name for a job's images and objects: the label it was made with, else its folder name."""
    job_dir = Path(job_dir)
    try:
        label = protocol.read_job(job_dir).get("source", {}).get("label")
    except protocol.ProtocolError:
        label = None
    return slugify(str(label), 40) if label else slugify(job_dir.name, 40)


# --------------------------------------------------------------------------- following a training run


@dataclass
class TrainProgress:
    """What the panel shows while a NeRF trains, updated from the backend's messages."""

    job_dir: Path
    step: int = 0
    total: int = 0
    loss: float | None = None
    psnr: float | None = None
    elapsed: float | None = None
    eta: float | None = None
    status_text: str = "Starting the backend..."
    preview_path: Path | None = None
    preview_step: int | None = None
    preview_psnr: float | None = None
    preview_serial: int = 0               # grows with every new preview: the panel reloads its image
    warnings: list[str] = field(default_factory=list)
    device: str | None = None

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total) if self.total else 0.0

    def handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "started":
            self.device = str(message.get("device", "?"))
            self.status_text = f"Training on {self.device}..."
        elif kind == "progress":
            total = int(message.get("total") or 0)
            if total > 0:
                self.step, self.total = int(message.get("step") or 0), total
            for name in ("loss", "psnr", "elapsed", "eta"):
                value = message.get(name)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    setattr(self, name, float(value))
            self.status_text = self.summary()
        elif kind == "preview":
            try:
                self.preview_path = protocol.resolve_inside(self.job_dir, str(message["path"]))
            except protocol.ProtocolError:
                return
            self.preview_step = message.get("step")
            psnr = message.get("psnr")
            self.preview_psnr = float(psnr) if isinstance(psnr, (int, float)) else None
            self.preview_serial += 1
        elif kind == "warning":
            self.warnings.append(str(message.get("message")))
        elif kind == "error":
            self.status_text = "Failed"
        elif kind == "done":
            self.status_text = {"done": "Finished", "failed": "Failed", "cancelled": "Cancelled"}.get(
                message["status"], str(message["status"]))

    def summary(self) -> str:
        parts = []
        if self.total:
            parts.append(f"step {self.step}/{self.total}")
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4g}")
        if self.psnr is not None:
            parts.append(f"PSNR {self.psnr:.2f} dB")
        if self.eta is not None:
            parts.append(f"{format_seconds(self.eta)} left")
        return "Training: " + ", ".join(parts) if parts else "Training..."


def read_train_result(job_dir: str | os.PathLike) -> dict[str, Any]:
    """result.json of a finished train job whose status is done, with its checkpoint present."""
    job_dir = Path(job_dir)
    try:
        result = protocol.read_result(job_dir)
    except protocol.ProtocolError as exc:
        raise NerfJobError(f"The NeRF job has no valid result ({exc}). Job folder: {job_dir}") from None
    if result.get("status") != "done":
        from .jobs import result_message
        reason = result_message(result)
        text = "The NeRF training was cancelled." if result.get("status") == "cancelled" else "The NeRF training failed."
        raise NerfJobError(f"{text}{' ' + reason if reason else ''} Job folder: {job_dir}")
    return result


def trained_job_problem(job_dir: str | os.PathLike | None) -> str | None:
    """Why ``job_dir`` cannot render or extract (for poll messages and errors), or None."""
    if not job_dir:
        return "No trained NeRF yet: train one first (Train NeRF)"
    job_dir = Path(job_dir)
    if not (job_dir / protocol.JOB_FILE).is_file():
        return f"The NeRF job folder {job_dir} is gone: train again (Train NeRF)"
    try:
        job = protocol.read_job(job_dir)
    except protocol.ProtocolError as exc:
        return f"The NeRF job folder {job_dir} is unreadable: {exc}"
    if job.get("task") != "nerf":
        return f"{job_dir} is a {job.get('task')} job, not a NeRF"
    try:
        read_train_result(job_dir)
    except NerfJobError as exc:
        return f"No trained NeRF in this job: {exc}"
    return None


# --------------------------------------------------------------------------- render and extract requests


def new_render_dir(job_dir: str | os.PathLike, kind: str) -> Path:
    """A fresh folder under the job's renders/ for one request ('view', 'animation')."""
    root = Path(job_dir) / RENDERS_DIR
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for _ in range(100):
        candidate = root / f"{stamp}-{slugify(kind, 20)}-{uuid.uuid4().hex[:4]}"
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise OSError(f"cannot make a render folder under {root}")


def frame_stem(name: str) -> str:
    """A file stem for a camera's name: letters, digits, . _ - only."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "view"
    return stem[:60]


def write_cameras(path: str | os.PathLike, cameras: Sequence[tuple[str, Any, Any]]) -> Path:
    """A transforms.json for the renderer: (stem, 4x4 camera-to-world, Intrinsics) per frame.

    Written with the backend's own writer; ``file_path`` is ``<stem>.png`` (the render's name),
    stems made unique.
    """
    frames = []
    seen: set[str] = set()
    for stem, c2w, intrinsics in cameras:
        stem = frame_stem(stem)
        base, number = stem, 1
        while stem in seen:
            number += 1
            stem = f"{base}_{number}"
        seen.add(stem)
        frames.append(datasets.Frame(file_path=f"{stem}.png", c2w=c2w, intrinsics=intrinsics))
    if not frames:
        raise NerfInputError("no cameras to render")
    return datasets.write_transforms(path, frames)


def render_args(job_dir: str | os.PathLike, cameras_json: str | os.PathLike, out_dir: str | os.PathLike, *,
                outputs: Iterable[str] = RENDER_OUTPUTS, background: str | None = None,
                device: str | None = None) -> list[str]:
    """The arguments after the interpreter for ``python -m inr_backend render ... --json``."""
    outputs = list(outputs)
    for output in outputs:
        if output not in RENDER_OUTPUTS:
            raise NerfInputError(f"unknown render output {output!r}; choose from {', '.join(RENDER_OUTPUTS)}")
    args = ["-m", "inr_backend", "render", str(Path(job_dir)), "--cameras", str(Path(cameras_json)),
            "--out", str(Path(out_dir)), "--outputs", ",".join(outputs)]
    if background:
        if background not in ("white", "black"):
            raise NerfInputError(f"background must be white or black, got {background!r}")
        args += ["--background", background]
    return args + _device_args(device) + ["--json"]


def _device_args(device: str | None) -> list[str]:
    if not device:
        return []
    if device not in DEVICES:
        raise NerfInputError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    return ["--device", device]


def extract_args(job_dir: str | os.PathLike, out_ply: str | os.PathLike, *, resolution: int = 0,
                 threshold: float = 0.0, device: str | None = None) -> list[str]:
    """The arguments after the interpreter for ``python -m inr_backend extract ... --json``."""
    args = ["-m", "inr_backend", "extract", str(Path(job_dir)), "--out", str(Path(out_ply))]
    if resolution:
        if not 16 <= int(resolution) <= 2048:
            raise NerfInputError(f"mesh resolution must be between 16 and 2048, got {resolution}")
        args += ["--resolution", str(int(resolution))]
    if threshold and threshold > 0:
        args += ["--threshold", repr(float(threshold))]
    return args + _device_args(device) + ["--json"]


@dataclass
class RenderedFrame:
    name: str
    rgb: Path | None = None
    alpha: Path | None = None
    depth: Path | None = None
    normal: Path | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def read_render(render_dir: str | os.PathLike) -> list[RenderedFrame]:
    """render.json's frames with absolute paths (checked to exist, inside the folder)."""
    render_dir = Path(render_dir)
    try:
        data = protocol.read_json(render_dir / "render.json", "render.json")
    except protocol.ProtocolError as exc:
        raise NerfJobError(f"The render wrote no usable render.json: {exc}") from None
    items = data.get("frames") if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        raise NerfJobError(f"render.json in {render_dir} lists no frames")
    frames = []
    for item in items:
        if not isinstance(item, dict):
            raise NerfJobError(f"render.json in {render_dir}: a frame is not an object")
        frame = RenderedFrame(name=str(item.get("name", "")))
        for key in RENDER_OUTPUTS:
            value = item.get(key)
            if isinstance(value, str) and value:
                try:
                    path = protocol.resolve_inside(render_dir, value)
                except protocol.ProtocolError as exc:
                    raise NerfJobError(f"render.json: {exc}") from None
                if not path.is_file():
                    raise NerfJobError(f"render.json names {value} but the file is missing in {render_dir}")
                setattr(frame, key, path)
        frame.metrics = {key: float(item[key]) for key in ("psnr", "ssim")
                         if isinstance(item.get(key), (int, float)) and not isinstance(item.get(key), bool)}
        frames.append(frame)
    return frames


def format_seconds(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def metrics_summary(result: dict[str, Any] | None) -> list[tuple[str, str]]:
    """(label, value) rows for the panel: PSNR, SSIM, views evaluated, time, device."""
    if not result:
        return []
    metrics = result.get("metrics") or {}
    rows = []
    if isinstance(metrics.get("psnr"), (int, float)):
        rows.append(("PSNR", f"{metrics['psnr']:.2f} dB"))
    if isinstance(metrics.get("ssim"), (int, float)):
        rows.append(("SSIM", f"{metrics['ssim']:.3f}"))
    if isinstance(metrics.get("n_eval_views"), (int, float)):
        rows.append(("Held-out views", f"{int(metrics['n_eval_views'])}"))
    timings = result.get("timings") or {}
    total = timings.get("total") or timings.get("total_s") or timings.get("training")
    if isinstance(total, (int, float)):
        rows.append(("Time", format_seconds(total)))
    if result.get("device"):
        rows.append(("Device", str(result["device"])))
    return rows
