"""Task ``nerf``: posed images become a radiance field; it renders any camera and gives a coloured mesh.

Steps: read the dataset (transforms.json, or transforms_train.json + _val/_test) -> check the
views (coverage.py) -> normalization (the dataset's normalization.json, a scene box, or one
derived from the cameras) -> train -> held-out PSNR/SSIM -> checkpoint (+ a coloured mesh).

Two models (``NerfConfig.model``):
- ``ngp`` (default, fast): hash grid field, an occupancy grid that skips empty space, samples
  at a fixed step (instant-ngp), batches with a fixed number of samples (rays adapt).
- ``reference``: the original NeRF, positional encoding + 8x256 MLPs with coarse/fine
  sampling. A correctness reference in tests and a baseline in benchmarks.

Images are used as stored (8-bit sRGB values are the training targets). Images with alpha are
composited over the training background: random colours by default, so the field learns
transparency instead of painting the background in; PSNR is measured over white (the
NeRF-synthetic convention).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .. import coverage, datasets, memory, protocol
from ..fields.radiance import (NgpFieldConfig, ReferenceNerfConfig, make_radiance_field,
                               radiance_config_from_dict)
from ..image_metrics import psnr, ssim
from ..render.compositing import composite_background
from ..render.occupancy_grid import OccupancyGrid, OccupancyGridConfig
from ..render.rays import cameras_to_unit, image_rays, pixel_rays, ray_box
from ..render.volume import render_rays_hierarchical, render_rays_marched, render_rays_packed

BACKGROUNDS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}


# --------------------------------------------------------------------------- config


@dataclass
class NerfTrainConfig:
    max_steps: int = 20000
    seconds: float | None = None          # wall-clock training budget; stops at whichever comes first
    learning_rate: float = 1e-2
    final_lr_fraction: float = 0.03       # exponential decay to this fraction at max_steps
    lr_hold_fraction: float = 0.0         # the rate stays at learning_rate for this fraction of the run, then decays
    samples_per_batch: int = 2 ** 18      # ngp: rays per step adapt to keep this many samples
    initial_rays: int = 4096
    max_rays: int = 2 ** 16
    rays_per_batch: int = 1024            # reference model: fixed
    background: str = "random"            # random | white | black
    preview_seconds: float = 10.0         # period of preview renders (0: none)
    preview_size: int = 256               # longest side of the preview image
    mixed_precision: bool = False         # CUDA: the MLPs in bfloat16 (autocast); the hash grid stays float32
    cuda_graph: bool = True               # CUDA, fast model: replay each step as one CUDA graph (NerfTrainer)


@dataclass
class NerfRenderConfig:
    step_size: float = 2.0 * math.sqrt(3.0) / 1024   # 1024 steps across the unit box's diagonal
    early_stop: float = 1e-4             # stop a ray once its transmittance is below this
    block_steps: int = 128               # inference marches this many steps at a time (H200, lego 800x800: 94 ms vs 101 ms at 64)
    chunk_rays: int = 2 ** 20
    n_coarse: int = 64                   # reference model
    n_fine: int = 128


@dataclass
class NerfMeshConfig:
    enabled: bool = False
    resolution: int = 256
    # Density threshold (per unit of the unit box, side 2): 20 means a layer 1/100 of the box
    # deep is 33% opaque; surfaces of a trained field are far denser, empty space far thinner,
    # so the surface barely moves between 10 and 50 (tested on the Blender scene).
    threshold: float = 20.0


@dataclass
class NerfEvalConfig:
    holdout_every: int = 8               # transforms.json only: every n-th view is held out
    max_views: int | None = None         # evaluate at most this many held-out views (None: all)


@dataclass
class NerfConfig:
    preset: str = "balanced"
    model: str = "ngp"
    device: str = "auto"
    seed: int = 0
    checkpoint_seconds: float = 30.0      # training seconds between resume checkpoints (0: end/cancel only)
    scene_box: list | None = None        # [[x0, y0, z0], [x1, y1, z1]] world-space box to reconstruct
    field: Any = dataclasses.field(default_factory=NgpFieldConfig)
    grid: OccupancyGridConfig = dataclasses.field(default_factory=OccupancyGridConfig)
    train: NerfTrainConfig = dataclasses.field(default_factory=NerfTrainConfig)
    render: NerfRenderConfig = dataclasses.field(default_factory=NerfRenderConfig)
    mesh: NerfMeshConfig = dataclasses.field(default_factory=NerfMeshConfig)
    eval: NerfEvalConfig = dataclasses.field(default_factory=NerfEvalConfig)

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = ("fast", "balanced", "quality")


def _preset(name: str, model: str) -> NerfConfig:
    if model == "reference":
        field = ReferenceNerfConfig()
        train = NerfTrainConfig(max_steps=200_000, learning_rate=5e-4, final_lr_fraction=0.1)
        if name == "fast":   # CPU tests: a narrower network
            field = ReferenceNerfConfig(width=64, depth=4, skip_layer=2)
            train = NerfTrainConfig(max_steps=2000, learning_rate=2e-3, final_lr_fraction=0.1, rays_per_batch=256)
        # Chunks of 2^13 rays: 192 samples x 256 channels of activations per ray add up to gigabytes.
        render = (NerfRenderConfig(n_coarse=32, n_fine=64, chunk_rays=2 ** 13) if name == "fast"
                  else NerfRenderConfig(chunk_rays=2 ** 13))
        return NerfConfig(preset=name, model=model, field=field, train=train, render=render)
    if model != "ngp":
        raise ValueError(f"unknown model {model!r}: choose ngp or reference")
    if name == "fast":
        # Small images on a CPU: a smaller table (Adam's dense update of 2^19 x 16 entries costs
        # more than the rest of a CPU step) and levels up to what 100-pixel views resolve.
        field = NgpFieldConfig()
        field.grid.log2_table_size = 15
        field.grid.n_levels = 8
        field.grid.finest_resolution = 256
        # Threshold 10: after a few hundred CPU steps thin parts are not yet as dense as 20.
        return NerfConfig(preset=name, field=field, grid=OccupancyGridConfig(resolution=64, warmup_steps=64),
                          mesh=NerfMeshConfig(threshold=10.0),
                          train=NerfTrainConfig(max_steps=1500, samples_per_batch=2 ** 15, initial_rays=1024,
                                                max_rays=2 ** 13, preview_seconds=5.0),
                          render=NerfRenderConfig(step_size=2.0 * math.sqrt(3.0) / 256))
    # Half the run at the full rate, then the decay: on lego after 60 s, 34.81 dB against 34.22
    # for a decay from the start (bench/sweep_nerf.py train.lr_hold_fraction=0.5, one seed).
    if name == "balanced":
        return NerfConfig(preset=name, train=NerfTrainConfig(max_steps=10000, lr_hold_fraction=0.5))
    if name == "quality":
        return NerfConfig(preset=name, train=NerfTrainConfig(max_steps=30000, lr_hold_fraction=0.5))
    raise ValueError(f"unknown preset {name!r}: choose fast, balanced or quality")


_KNOWN = {"preset", "model", "device", "seed", "seconds", "max_steps", "background", "preview_seconds",
          "mesh", "mesh_resolution", "mesh_threshold", "scene_box", "samples_per_batch", "holdout_every",
          "max_eval_views", "mixed_precision", "checkpoint_seconds"}


def resolve_config(user: dict) -> NerfConfig:
    """The full config from job.json's ``config`` (all keys optional; unknown keys are refused)."""
    unknown = sorted(set(user) - _KNOWN)
    if unknown:
        raise ValueError(f"unknown nerf option(s) {', '.join(unknown)}; known: {', '.join(sorted(_KNOWN))}")
    config = _preset(str(user.get("preset", "balanced")), str(user.get("model", "ngp")))
    config.device = str(user.get("device", config.device))
    config.seed = int(user.get("seed", config.seed))
    from ..checkpoint import checkpoint_seconds_option
    config.checkpoint_seconds = checkpoint_seconds_option(user)
    if user.get("seconds") is not None:
        config.train.seconds = _positive(user["seconds"], "seconds")
    if user.get("max_steps") is not None:
        config.train.max_steps = int(_positive(user["max_steps"], "max_steps"))
    background = str(user.get("background", config.train.background))
    if background not in ("random", "white", "black"):
        raise ValueError(f"background must be random, white or black, got {background!r}")
    config.train.background = background
    if "mixed_precision" in user:
        config.train.mixed_precision = bool(user["mixed_precision"])
    if "preview_seconds" in user:
        config.train.preview_seconds = float(user["preview_seconds"])
    if "samples_per_batch" in user:
        config.train.samples_per_batch = int(_positive(user["samples_per_batch"], "samples_per_batch"))
    config.mesh.enabled = bool(user.get("mesh", config.mesh.enabled))
    if "mesh_resolution" in user:
        config.mesh.resolution = int(_positive(user["mesh_resolution"], "mesh_resolution"))
    if "mesh_threshold" in user:
        config.mesh.threshold = _positive(user["mesh_threshold"], "mesh_threshold")
    if "holdout_every" in user:
        config.eval.holdout_every = int(_positive(user["holdout_every"], "holdout_every"))
    if "max_eval_views" in user:
        config.eval.max_views = int(_positive(user["max_eval_views"], "max_eval_views"))
    if user.get("scene_box") is not None:
        box = np.asarray(user["scene_box"], dtype=np.float64)
        if box.shape != (2, 3) or not np.all(np.isfinite(box)) or not np.all(box[1] > box[0]):
            raise ValueError("scene_box must be [[xmin, ymin, zmin], [xmax, ymax, zmax]] with max > min")
        config.scene_box = box.tolist()
    return config


def _positive(value, name: str) -> float:
    number = float(value)
    if not number > 0 or not math.isfinite(number):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return number


def config_from_dict(data: dict) -> NerfConfig:
    """Rebuild a NerfConfig saved with to_dict (the checkpoint's JSON)."""
    return NerfConfig(preset=data["preset"], model=data["model"], device=data["device"], seed=data["seed"],
                      checkpoint_seconds=float(data.get("checkpoint_seconds", 30.0)),   # absent before resume existed
                      scene_box=data.get("scene_box"), field=radiance_config_from_dict(data["field"]),
                      grid=OccupancyGridConfig(**data["grid"]), train=NerfTrainConfig(**data["train"]),
                      render=NerfRenderConfig(**data["render"]), mesh=NerfMeshConfig(**data["mesh"]),
                      eval=NerfEvalConfig(**data["eval"]))


# --------------------------------------------------------------------------- data


@dataclass
class Views:
    """Posed images on the device: pixels (N, H, W, 4) uint8 (alpha 255 when the file has none),
    c2w (N, 4, 4) and intrinsics (N, 4) = fx, fy, cx, cy in the unit box, names (N,)."""

    pixels: torch.Tensor | None
    c2w: torch.Tensor
    intrinsics: torch.Tensor
    width: int
    height: int
    names: list[str]

    def __len__(self) -> int:
        return len(self.names)


def find_splits(dataset: Path) -> tuple[Path, Path | None, bool]:
    """(train transforms, held-out transforms or None, whether to hold out views of the train file)."""
    dataset = Path(dataset)
    if dataset.is_file():
        return dataset, None, True
    if (dataset / "transforms_train.json").is_file():
        for name in ("transforms_val.json", "transforms_test.json"):
            if (dataset / name).is_file():
                return dataset / "transforms_train.json", dataset / name, False
        return dataset / "transforms_train.json", None, True
    if (dataset / "transforms.json").is_file():
        return dataset / "transforms.json", None, True
    raise datasets.DatasetError(f"{dataset} holds no transforms.json (or transforms_train.json): "
                                "give a capture folder or a dataset folder")


def load_image_rgba(path: Path) -> np.ndarray:
    """(H, W, 4) uint8 of an 8-bit image (alpha 255 when it has none)."""
    from PIL import Image
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode.startswith("I") or image.mode == "F":   # 16-bit or float greyscale
                values = np.asarray(image, dtype=np.float64)
                gray = (np.clip(values / (65535.0 if values.max() > 255 else 255.0), 0, 1) * 255 + 0.5).astype(np.uint8)
                return np.dstack([gray] * 3 + [np.full(gray.shape, 255, np.uint8)])
            return np.asarray(image.convert("RGBA"), dtype=np.uint8)
    except FileNotFoundError:
        raise datasets.DatasetError(f"image {path} is missing: render or copy it, or remove its frame") from None
    except OSError as exc:
        raise datasets.DatasetError(f"cannot read image {path}: {exc}") from None


def frames_to_views(frames: list, normalization: dict, device, *, with_pixels: bool) -> Views:
    if not frames:
        raise datasets.DatasetError("no views")
    sizes = {(f.intrinsics.w, f.intrinsics.h) for f in frames}
    if len(sizes) > 1 and with_pixels:
        raise datasets.DatasetError(f"the views have images of different sizes {sorted(sizes)}: "
                                    "render or resize them to one size")
    width, height = frames[0].intrinsics.w, frames[0].intrinsics.h
    c2w = cameras_to_unit(np.stack([f.c2w for f in frames]), normalization)
    intr = np.array([[f.intrinsics.fl_x, f.intrinsics.fl_y, f.intrinsics.cx, f.intrinsics.cy] for f in frames])
    pixels = None
    if with_pixels:
        arrays = []
        for frame in frames:
            array = load_image_rgba(Path(frame.file_path))
            if array.shape[:2] != (height, width):
                raise datasets.DatasetError(f"{frame.file_path} is {array.shape[1]}x{array.shape[0]} pixels but its "
                                            f"camera says {width}x{height}: fix w/h in the transforms file")
            arrays.append(array)
        pixels = torch.from_numpy(np.stack(arrays)).to(device)
    names = [Path(str(f.name or f.file_path)).stem or f"frame_{i:04d}" for i, f in enumerate(frames)]
    return Views(pixels, torch.as_tensor(c2w, dtype=torch.float32, device=device),
                 torch.as_tensor(intr, dtype=torch.float32, device=device), width, height, names)


def normalization_for_views(frames: list, scene_box: list | None, dataset_dir: Path | None) -> dict:
    """The world -> unit box map: a scene box when given, else the dataset's normalization.json,
    else a box around the point the cameras look at, sized by what they see there."""
    if scene_box is not None:
        return datasets.normalization_for_cameras([f.c2w for f in frames], roi_min=scene_box[0],
                                                  roi_max=scene_box[1])
    if dataset_dir is not None and (dataset_dir / "normalization.json").is_file():
        data = protocol.read_json(dataset_dir / "normalization.json", "normalization.json")
        return protocol.make_normalization(list(data["center"]), float(data["scale"]))
    from_cameras = datasets.normalization_for_cameras([f.c2w for f in frames])
    center = np.asarray(from_cameras["center"], dtype=np.float64)
    # An orbit of cameras at distance d with half field of view a sees a region of half-width
    # about d * tan(a) around its centre; 1.25x that keeps the object inside the box without
    # spending the hash grid's resolution on empty space (for NeRF-synthetic lego, the box
    # comes out about +-1.8 around a +-1.2 object).
    distances = np.array([np.linalg.norm(f.c2w[:3, 3] - center) for f in frames])
    half_angles = np.array([0.5 * min(f.intrinsics.camera_angle_x, f.intrinsics.camera_angle_y) for f in frames])
    half_width = 1.25 * float(np.min(distances * np.tan(half_angles)))
    if not half_width > 1e-9:
        return from_cameras
    return protocol.make_normalization(center.tolist(), 0.9 / half_width)


# --------------------------------------------------------------------------- model


def trains_in_fixed_slots(device) -> bool:
    """Whether the fast model trains on packed fixed sample slots (``render_rays_packed``).

    On CUDA it lets the GPU run ahead of the host (no sync to learn the sample count); on the
    CPU nothing runs ahead, so training marches just the samples there are.
    """
    return torch.device(device).type == "cuda"


class NerfModel(torch.nn.Module):
    """The trained scene: radiance field(s) + occupancy grid, rendering rays in the unit box."""

    def __init__(self, config: NerfConfig):
        super().__init__()
        self.config = config
        self.field = make_radiance_field(config.field)
        # The reference model's coarse network; the fast model marches the occupancy grid instead.
        self.coarse = make_radiance_field(config.field) if config.model == "reference" else None
        self.grid = OccupancyGrid(config.grid)

    @property
    def max_ray_steps(self) -> int:
        """Steps that cover the longest chord of the unit box, its diagonal 2 sqrt(3)."""
        return int(math.ceil(2.0 * math.sqrt(3.0) / self.config.render.step_size)) + 1

    def render(self, origins, dirs, *, training: bool, generator=None, normals: bool = False,
               capacity: int | None = None, jitter: torch.Tensor | None = None) -> dict:
        """Rays (R, 3) -> rendered dict (rgb premultiplied, opacity, depth as ray distance).
        capacity: the sample slots of a packed training batch (default: config's samples_per_batch).
        jitter (R,) in [0, 1): the training samples' offset along each ray (default: drawn here)."""
        t_near, t_far = ray_box(origins, dirs, near=0.0)
        render = self.config.render
        if self.config.model == "reference":
            coarse, fine = render_rays_hierarchical(self.coarse, self.field, origins, dirs, t_near, t_far,
                                                    n_coarse=render.n_coarse, n_fine=render.n_fine,
                                                    perturb=training, generator=generator, normals=normals)
            fine["coarse_rgb"], fine["coarse_opacity"] = coarse["rgb"], coarse["opacity"]
            return fine
        if training:
            if jitter is None:
                jitter = torch.rand(len(origins), device=origins.device, generator=generator)
            if not trains_in_fixed_slots(origins.device):
                return render_rays_marched(self.field, self.grid.is_occupied, origins, dirs, t_near, t_far,
                                           step_size=render.step_size, jitter=jitter, block_steps=None)
            return render_rays_packed(self.field, self.grid.is_occupied, origins, dirs, t_near, t_far,
                                      step_size=render.step_size, max_steps=self.max_ray_steps,
                                      capacity=capacity or self.config.train.samples_per_batch, jitter=jitter)
        return render_rays_marched(self.field, self.grid.is_occupied, origins, dirs, t_near, t_far,
                                   step_size=render.step_size, block_steps=render.block_steps,
                                   early_stop=render.early_stop, normals=normals)

    def update_grid(self, step: int, generator=None) -> None:
        if self.config.model != "ngp":
            return
        grid = self.config.grid
        if step % grid.update_every == 0:
            self.grid.update(self.field.density, step=step, step_size=self.config.render.step_size,
                             generator=generator)


# Samples one inference block may hold on a CPU (rays per chunk x marching block steps). A CPU has
# no out-of-memory error to halve on (the system kills the process instead), and a block of a
# GPU-sized chunk, 2^20 rays x 128 steps, needs tens of GB where the grid is occupied.
CPU_RENDER_BLOCK_SAMPLES = 2 ** 19


def render_chunk(model: NerfModel, report=None) -> memory.AdaptiveSize:
    """The model's rays per render chunk, halved on a GPU out-of-memory and kept lowered for the
    views after (``report(message, size)``: where a lowering is told, set by the first caller).
    On a CPU, at most CPU_RENDER_BLOCK_SAMPLES samples per marching block."""
    chunk = getattr(model, "_render_chunk", None)
    if chunk is None:
        rays = model.config.render.chunk_rays
        if model.grid.density.device.type == "cpu" and model.config.model == "ngp":
            rays = min(rays, max(CPU_RENDER_BLOCK_SAMPLES // model.config.render.block_steps, 256))
        chunk = model._render_chunk = memory.AdaptiveSize(rays, what="render chunk", unit="rays", training=False)
    if report is not None:
        chunk.report = report
    return chunk


def render_view(model: NerfModel, c2w: torch.Tensor, intrinsics: torch.Tensor, width: int, height: int, *,
                background=(1.0, 1.0, 1.0), normals: bool = False) -> dict[str, torch.Tensor]:
    """One camera -> rgb (H, W, 3) over ``background``, opacity (H, W), z-depth (H, W) in unit-box
    units (0 where nothing is hit), and normal (H, W, 3) world-space unit normals when asked.
    On a GPU out-of-memory the view is rendered again in chunks of half as many rays."""
    return memory.retry_chunked(
        lambda chunk: _render_view(model, c2w, intrinsics, width, height, background=background, normals=normals,
                                   chunk=chunk),
        render_chunk(model), phase="rendering")


@torch.no_grad()
def _render_view(model: NerfModel, c2w: torch.Tensor, intrinsics: torch.Tensor, width: int, height: int, *,
                 background, normals: bool, chunk: int) -> dict[str, torch.Tensor]:
    origins, dirs, z_per_t = image_rays(c2w, intrinsics, width, height)
    parts: dict[str, list] = {"rgb": [], "opacity": [], "depth": [], "normal": []}
    bg = torch.as_tensor(background, dtype=torch.float32, device=origins.device)
    for start in range(0, len(origins), chunk):
        part = slice(start, start + chunk)
        memory.inject("render_chunk")
        out = model.render(origins[part], dirs[part], training=False, normals=normals)
        parts["rgb"].append(composite_background(out["rgb"], out["opacity"], bg).clamp(0, 1))
        parts["opacity"].append(out["opacity"])
        # The weights-sum of t is the expected distance times the opacity; divided by it, the distance.
        distance = out["depth"] / out["opacity"].clamp(min=1e-6)
        parts["depth"].append(torch.where(out["opacity"] > 1e-3, distance * z_per_t[part], torch.zeros_like(distance)))
        if normals:
            parts["normal"].append(torch.nn.functional.normalize(out["normal"], dim=-1))
    result = {key: torch.cat(values).reshape(height, width, -1).squeeze(-1) for key, values in parts.items() if values}
    return result


# --------------------------------------------------------------------------- training


def _learning_rate(config: NerfTrainConfig, step: int, seconds: float = 0.0) -> float:
    """Exponential decay over the run: its progress is the larger of the step and time fractions,
    so a time-budgeted run anneals by its deadline (worth about 1 dB on lego over a constant rate)."""
    progress = step / max(config.max_steps, 1)
    if config.seconds:
        progress = max(progress, seconds / config.seconds)
    if config.lr_hold_fraction > 0:
        progress = max(progress - config.lr_hold_fraction, 0.0) / (1.0 - config.lr_hold_fraction)
    return config.learning_rate * config.final_lr_fraction ** min(progress, 1.0)


def make_optimizer(model: NerfModel, config: NerfConfig) -> torch.optim.Optimizer:
    if config.model == "ngp":
        grid_params = [model.field.encoding.table]
        mlp_params = [p for name, p in model.field.named_parameters() if not name.startswith("encoding.")]
        # instant-ngp: Adam with eps 1e-15 and a small weight decay on the MLPs only.
        # On CUDA the fused Adam: one kernel instead of a few per parameter, which matters when
        # the host's launch time is what bounds the step rate.
        # Capturable (state and learning rate in device tensors) so that a CUDA graph can replay the
        # step; the eager CUDA step uses the same optimizer, so it stays the graph's exact reference.
        on_cuda = model.field.encoding.table.is_cuda
        rate = torch.tensor(config.train.learning_rate, device="cuda") if on_cuda else config.train.learning_rate
        return torch.optim.Adam([{"params": grid_params}, {"params": mlp_params, "weight_decay": 1e-6}],
                                lr=rate, betas=(0.9, 0.99), eps=1e-15, fused=on_cuda, capturable=on_cuda)
    return torch.optim.Adam(model.parameters(), lr=config.train.learning_rate)


_GRAPH_WARMUP_STEPS = 2     # eager steps of a new shape before its capture (allocate Adam's state, compile kernels)
_MAX_GRAPHS = 4             # captured shapes kept at once


def _input_buffers(n_rays: int, device, *, jitter: bool) -> dict[str, torch.Tensor]:
    """Fixed buffers for one step's random draws (NerfTrainer._draw_inputs fills them)."""
    buffers = {"image": torch.empty(n_rays, dtype=torch.long, device=device),
               "px": torch.empty(n_rays, dtype=torch.long, device=device),
               "py": torch.empty(n_rays, dtype=torch.long, device=device),
               "bg": torch.empty(n_rays, 3, device=device)}
    if jitter:
        buffers["jitter"] = torch.empty(n_rays, device=device)
    return buffers


@dataclass
class _CapturedStep:
    """A training step's CUDA graph, the buffers it reads and the outputs it writes."""
    inputs: dict[str, torch.Tensor]
    warm_steps: int = 0
    graph: Any = None
    outputs: Any = None


class NerfTrainer:
    """Trains a NerfModel on Views step by step; ``train_for`` runs until a step or time limit."""

    def __init__(self, model: NerfModel, views: Views, config: NerfConfig, *, device, report=None):
        self.model, self.views, self.config, self.device = model, views, config, device
        self.optimizer = make_optimizer(model, config)
        # The MLPs stay in full float32 (torch's default; no TF32): on the H200, TF32 matmuls cost
        # 0.3 dB on lego after 60 s (34.81 against 35.10 dB, bench/sweep_nerf.py tf32=1) for 3% more steps.
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(config.seed)
        self.step = 0
        self.rays = config.train.initial_rays if config.model == "ngp" else config.train.rays_per_batch
        # What a GPU out-of-memory halves (memory.AdaptiveSize; report(message, size) tells the job):
        # the sample slots of the fast model (its rays follow), the rays of the reference model.
        ngp = config.model == "ngp"
        self.batch = memory.AdaptiveSize(config.train.samples_per_batch if ngp else config.train.rays_per_batch,
                                         what="samples per batch" if ngp else "rays per batch", report=report,
                                         device=device)
        # CUDA graphs of the training step, one per (rays, sample slots), most recent last.
        self.graphed = (config.model == "ngp" and config.train.cuda_graph and not config.train.mixed_precision
                        and trains_in_fixed_slots(device))
        self._graphs: dict[tuple[int, int], _CapturedStep] = {}
        self.training_seconds = 0.0
        self.last_loss = float("nan")
        self.last_psnr = float("nan")
        self.samples_seen = 0
        self.rays_seen = 0
        # Counts of the steps since the last device sync, kept on the device until then.
        self._pending_samples = self._pending_rays = 0

    # Trainer fields a resume needs besides the model, the optimizer and the generator.
    _RESUMED_FIELDS = ("rays", "samples_seen", "rays_seen", "last_loss", "last_psnr")

    def capture_state(self):
        """A checkpoint.TrainingState of this trainer after its last step (the occupancy grid is
        in the model's buffers; the learning rate follows from step and training seconds)."""
        from ..checkpoint import capture_training_state
        return capture_training_state(task="nerf", step=self.step, total_steps=self.config.train.max_steps,
                                      training_seconds=self.training_seconds, model=self.model,
                                      optimizer=self.optimizer, generators={"trainer": self.generator},
                                      trainer={**{name: getattr(self, name) for name in self._RESUMED_FIELDS},
                                               "batch_lowered": self.batch.record() if self.batch.lowered else None})

    def restore_state(self, state) -> None:
        """Continue from a TrainingState written by capture_state (same config)."""
        from ..checkpoint import restore_training_state
        restore_training_state(state, model=self.model, optimizer=self.optimizer,
                               generators={"trainer": self.generator})
        self.step, self.training_seconds = state.step, state.training_seconds
        fields = state.meta.get("trainer", {})
        for name in self._RESUMED_FIELDS:
            if fields.get(name) is not None:
                setattr(self, name, type(getattr(self, name))(fields[name]))
        self.batch.restore(fields.get("batch_lowered"))

    def _draw_inputs(self, n_rays: int, out: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """A step's random draws: image (R,), px, py (R,) int64, bg (R, 3) and, for the fast model,
        jitter (R,). They come from the trainer's generator in the order the step has always used
        (so a CPU run's trajectory does not depend on this split). out: fixed buffers to fill."""
        views, g, device = self.views, self.generator, self.device
        if out is None:
            out = _input_buffers(n_rays, device, jitter=self.config.model == "ngp")
        torch.randint(0, len(views), (n_rays,), device=device, generator=g, out=out["image"])
        torch.randint(0, views.width, (n_rays,), device=device, generator=g, out=out["px"])
        torch.randint(0, views.height, (n_rays,), device=device, generator=g, out=out["py"])
        background = self.config.train.background
        if background == "random":
            out["bg"].uniform_(0.0, 1.0, generator=g)
        else:
            out["bg"].copy_(torch.tensor(BACKGROUNDS[background], device=device).expand(n_rays, 3))
        if "jitter" in out:
            out["jitter"].uniform_(0.0, 1.0, generator=g)
        return out

    def _step(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any, Any]:
        """Forward, loss, backward and Adam on drawn inputs, with no host sync (so it can be
        captured). Returns (loss, samples, trained rays) as device tensors (or ints)."""
        config, model, views = self.config, self.model, self.views
        image, px, py, bg = inputs["image"], inputs["px"], inputs["py"], inputs["bg"]
        origins, dirs, _ = pixel_rays(views.c2w[image], views.intrinsics[image], px, py)
        rgba = views.pixels[image, py, px].float() / 255.0
        target = rgba[:, :3] * rgba[:, 3:] + bg * (1.0 - rgba[:, 3:])
        autocast = config.train.mixed_precision and torch.device(self.device).type == "cuda"
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            out = model.render(origins, dirs, training=True, generator=self.generator, capacity=self.batch.size,
                               jitter=inputs.get("jitter"))
        out["rgb"] = out["rgb"].float()
        prediction = composite_background(out["rgb"], out["opacity"], bg)
        if "ray_valid" in out:
            # Packed marching drops the rays whose samples did not fit the batch: train on the rest.
            valid = out["ray_valid"].to(prediction.dtype)
            loss = (((prediction - target) ** 2).mean(1) * valid).sum() / valid.sum().clamp(min=1.0)
            trained_rays = out["ray_valid"].sum()
        else:
            loss = torch.mean((prediction - target) ** 2)
            trained_rays = len(origins)
        if "coarse_rgb" in out:
            loss = loss + torch.mean((composite_background(out["coarse_rgb"], out["coarse_opacity"], bg) - target) ** 2)
        self.optimizer.zero_grad(set_to_none=True)
        if loss.requires_grad:    # no samples at all (the plain marcher, an empty grid): nothing to learn
            loss.backward()
            self.optimizer.step()
        return loss.detach(), out["n_samples"], trained_rays

    def train_step(self) -> None:
        self.model.train()
        self.model.update_grid(self.step, generator=self.generator)
        rate = _learning_rate(self.config.train, self.step, self.training_seconds)
        for group in self.optimizer.param_groups:
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(rate)
            else:
                group["lr"] = rate
        if self.graphed:
            loss, n_samples, trained_rays = self._graphed_step()
        else:
            loss, n_samples, trained_rays = self._step(self._draw_inputs(self.rays))
        self._pending_samples = self._pending_samples + n_samples
        self._pending_rays = self._pending_rays + trained_rays
        self.step += 1
        self._loss_tensor = loss

    def _graphed_step(self):
        """The step replayed from a CUDA graph of its shape (rays, slots): one launch instead of a
        few hundred, which matters because the host's launches, not the GPU, bound the eager step.
        A new shape runs a few eager warm-up steps on a side stream, then is captured."""
        key = (self.rays, self.batch.size)
        captured = self._graphs.pop(key, None)
        if captured is None:
            captured = _CapturedStep(_input_buffers(self.rays, self.device, jitter=True))
            while len(self._graphs) >= _MAX_GRAPHS:      # each graph holds its own activation memory
                self._graphs.pop(next(iter(self._graphs)))
        self._graphs[key] = captured                      # most recently used last
        self._draw_inputs(self.rays, out=captured.inputs)
        if captured.graph is not None:
            captured.graph.replay()
            return captured.outputs
        if captured.warm_steps < _GRAPH_WARMUP_STEPS:
            captured.warm_steps += 1
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                outputs = self._step(captured.inputs)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            return outputs
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured.outputs = self._step(captured.inputs)
        captured.graph = graph
        graph.replay()        # capture only records the step: run it
        return captured.outputs

    def _lower_batch(self, exc: BaseException) -> None:
        """After a GPU out-of-memory in a step: drop its gradients, halve the batch (the rays with
        it), and let the caller run the step again."""
        self.optimizer.zero_grad(set_to_none=True)
        # Graphs are captured at the old size, and each keeps a memory pool of its own, which a GPU
        # that just ran out cannot spare: from now on the steps run eagerly.
        self._graphs.clear()
        self.graphed = False
        self._pending_samples = self._pending_rays = 0
        self.batch.lower(exc, step=self.step + 1)
        if self.config.model == "ngp":    # the next sync fits the rays to the slots again (_settle_counts)
            self.rays = max(min(self.rays, 256), self.rays // 2)
        else:
            self.rays = self.batch.size

    def _settle_counts(self) -> None:
        """At a device sync: count the samples and rays of the last steps, and set the rays per
        batch so that the samples fill the batch's slots (the grid empties as training goes on)."""
        samples, rays = int(self._pending_samples), int(self._pending_rays)
        self._pending_samples, self._pending_rays = 0, 0
        self.samples_seen += samples
        self.rays_seen += rays
        if self.config.model == "ngp" and rays > 0:
            # Fixed slots get 3% headroom: the sum over ~10^4 random rays varies by about 1%,
            # and a ray that does not fit is dropped.
            headroom = 0.97 if trains_in_fixed_slots(self.device) else 1.0
            wanted = int(headroom * self.batch.size * rays / max(samples, 1))
            if trains_in_fixed_slots(self.device):
                # Rounded down to 1/32 of its power of two (3-6 %), so the rays per step settle on
                # a few values and each value's captured graph is replayed, not captured again.
                wanted -= wanted % max(256, 1 << max(0, wanted.bit_length() - 6))
            self.rays = int(min(max(wanted, 256), self.config.train.max_rays))

    def train_for(self, *, until_step: int, until_seconds: float | None = None,
                  on_step: Callable[["NerfTrainer"], None] | None = None,
                  check_cancel: Callable[[], None] | None = None) -> None:
        """Train until ``until_step`` or until ``training_seconds`` reaches ``until_seconds``.

        Time is measured on the host with the device synchronised every few steps, so
        ``training_seconds`` counts training only (not evaluation or previews done between calls).
        """
        # On a GPU the clock is read every 16 steps (reading it needs a device sync); on a CPU every step.
        sync_every = 16 if torch.device(self.device).type == "cuda" else 1
        clock = time.perf_counter()
        while self.step < until_step:
            try:
                memory.inject("train_step")
                self.train_step()
            except Exception as exc:   # noqa: BLE001 - only a GPU out-of-memory is handled
                if not memory.caused_by_oom(exc):
                    raise
                self._lower_batch(exc)
                continue
            if self.step % sync_every == 0 or self.step == until_step:
                _synchronize(self.device)
                now = time.perf_counter()
                self.training_seconds += now - clock
                clock = now
                self._settle_counts()
                self.last_loss = float(self._loss_tensor)
                self.last_psnr = -10.0 * math.log10(max(self.last_loss, 1e-10))
                if on_step is not None:
                    on_step(self)
                if check_cancel is not None:
                    check_cancel()
                clock = time.perf_counter()   # callbacks do not count as training
                if until_seconds is not None and self.training_seconds >= until_seconds:
                    break
        _synchronize(self.device)
        self.training_seconds += time.perf_counter() - clock
        self._settle_counts()


def _synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def evaluate(model: NerfModel, views: Views, *, max_views: int | None = None, with_ssim: bool = True) -> dict:
    """Mean per-image PSNR (and SSIM) over held-out views, composited on white."""
    model.eval()
    count = len(views) if max_views is None else min(len(views), max_views)
    psnrs, ssims = [], []
    for index in range(count):
        out = render_view(model, views.c2w[index], views.intrinsics[index], views.width, views.height)
        rgba = views.pixels[index].float() / 255.0
        target = rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])
        psnrs.append(psnr(out["rgb"], target))
        value = ssim(out["rgb"], target) if with_ssim else None
        if value is not None:
            ssims.append(value)
    result = {"psnr": float(np.mean(psnrs)) if psnrs else None, "n_eval_views": count}
    if ssims:
        result["ssim"] = float(np.mean(ssims))
    return result


# --------------------------------------------------------------------------- checkpoints


def save_nerf(directory: Path, model: NerfModel, config: NerfConfig, normalization: dict, extra: dict) -> None:
    from ..checkpoint import save_tensors
    save_tensors(directory, model.state_dict(),
                 {"task": "nerf", "config": config.to_dict(), "normalization": normalization, **extra})


def load_nerf(job_dir: Path, device) -> tuple[NerfModel, dict]:
    """The trained model of a finished nerf job folder, and its checkpoint description."""
    from ..checkpoint import load_tensors
    directory = Path(job_dir) / protocol.CHECKPOINTS_DIR / "field"
    tensors, meta = load_tensors(directory)
    if meta.get("task") != "nerf":
        raise protocol.ProtocolError(f"{directory} holds a {meta.get('task')!r} checkpoint, not a NeRF")
    model = NerfModel(config_from_dict(meta["config"]))
    model.load_state_dict(tensors)
    return model.to(device).eval(), meta


# --------------------------------------------------------------------------- mesh


@torch.no_grad()
def extract_nerf_mesh(model: NerfModel, *, resolution: int, threshold: float, device,
                      timings: dict | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Marching cubes on the density at ``threshold``: unit-box vertices (V, 3), faces (F, 3) and
    uint8 vertex colours (V, 3), each the field's colour seen from outside along the normal."""
    from ..geometry.extract import marching_cubes

    clock = time.perf_counter()
    chunk = memory.AdaptiveSize(2 ** 21, what="chunk", unit="points", training=False, device=device,
                                report=render_chunk(model).report)
    volume = memory.retry_chunked(lambda size: query_density_grid(model, resolution=resolution, device=device,
                                                                  chunk=size),
                                  chunk, phase="extracting the mesh")
    if timings is not None:
        timings["mesh_query"] = time.perf_counter() - clock
    if not volume.max() > threshold:
        raise ValueError(f"the field's density never reaches the threshold {threshold:g} (its maximum is "
                         f"{float(volume.max()):.3g}): train longer or lower the threshold")
    clock = time.perf_counter()
    # marching_cubes expects a signed-distance-like volume, negative inside.
    vertices, faces = marching_cubes(threshold - volume, level=0.0)
    if timings is not None:
        timings["mesh_marching_cubes"] = time.perf_counter() - clock
    clock = time.perf_counter()
    colors = memory.retry_chunked(lambda size: vertex_colors(model, vertices, faces, device=device, chunk=size),
                                  chunk, phase="colouring the mesh")
    if timings is not None:
        timings["mesh_colors"] = time.perf_counter() - clock
    return vertices, faces, colors


@torch.no_grad()
def query_density_grid(model: NerfModel, *, resolution: int, device, chunk: int = 2 ** 21) -> np.ndarray:
    """(R, R, R) float32 densities on ``geometry.extract.grid_axis`` vertices, evaluated only in
    occupancy-grid cells that are occupied or next to one (elsewhere 0: the grid already knows
    the space is empty). ``geometry.extract.query_grid`` gives the same on every vertex."""
    occupied = model.grid.occupied.view(1, 1, *(model.grid.resolution,) * 3).float()
    near_occupied = torch.nn.functional.max_pool3d(occupied, 3, stride=1, padding=1).view(-1) > 0
    axis = torch.linspace(-1.0, 1.0, resolution, device=device)
    total = resolution ** 3
    values = torch.zeros(total, dtype=torch.float32, device=device)
    for start in range(0, total, chunk):
        index = torch.arange(start, min(start + chunk, total), device=device)
        points = torch.stack([axis[index // resolution ** 2], axis[(index // resolution) % resolution],
                              axis[index % resolution]], dim=1)
        keep = near_occupied[model.grid.cell_index(points)]
        memory.inject("extract_chunk")
        if keep.any():
            values[index[keep]] = model.field.density(points[keep]).float()
    return values.view(resolution, resolution, resolution).cpu().numpy()


@torch.no_grad()
def vertex_colors(model: NerfModel, vertices: np.ndarray, faces: np.ndarray, *, device,
                  chunk: int = 2 ** 20) -> np.ndarray:
    """(V, 3) uint8: the colour at each vertex looking at it from outside, against the vertex normal."""
    v = torch.as_tensor(vertices, dtype=torch.float32, device=device)
    f = torch.as_tensor(faces, dtype=torch.long, device=device)
    face_normals = torch.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]], dim=-1)
    normals = torch.zeros_like(v).index_add_(0, f.reshape(-1), face_normals.repeat_interleave(3, 0))
    normals = torch.nn.functional.normalize(normals, dim=-1)
    colors = []
    for points, n in zip(v.split(chunk), normals.split(chunk)):
        _, rgb = model.field(points, -n)
        colors.append(rgb)
    return (torch.cat(colors).clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()


# --------------------------------------------------------------------------- the job


def load_dataset(dataset: Path, config: NerfConfig, device, warn: Callable[[str], None]):
    """(train Views, held-out Views or None, normalization, train frames)."""
    train_file, held_file, holdout = find_splits(dataset)
    train_frames = datasets.read_transforms(train_file)
    held_frames: list = datasets.read_transforms(held_file) if held_file is not None else []
    # Coverage is judged on every view of the training file, as the add-on judges it before it
    # starts a job, so a dataset the add-on accepts is never refused here after the hold-out.
    report = coverage.check_views(train_frames, root=train_file.parent)
    if report.errors:
        raise datasets.DatasetError("; ".join(report.errors))
    for message in report.warnings:
        warn(message)
    if holdout and len(train_frames) >= 2 * config.eval.holdout_every:
        every = config.eval.holdout_every
        held_frames = [f for i, f in enumerate(train_frames) if i % every == every // 2]
        train_frames = [f for i, f in enumerate(train_frames) if i % every != every // 2]
    dataset_dir = train_file.parent
    normalization = normalization_for_views(train_frames, config.scene_box, dataset_dir)
    train = frames_to_views(train_frames, normalization, device, with_pixels=True)
    held = frames_to_views(held_frames, normalization, device, with_pixels=True) if held_frames else None
    return train, held, normalization


def run_nerf_job(ctx) -> dict:
    config: NerfConfig = ctx.config
    device = ctx.device
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    ctx.phase("loading images")
    torch.manual_seed(config.seed)
    train, held, normalization = load_dataset(ctx.input_path("dataset"), config, device,
                                              warn=lambda text: ctx.reporter.send("warning", message=text))
    ctx.write_normalization(normalization)
    timings["load"] = time.perf_counter() - clock
    ctx.check_cancel()

    ctx.phase("training")
    model = NerfModel(config).to(device)
    render_chunk(model, report=ctx.memory_lowered)
    trainer = NerfTrainer(model, train, config, device=device, report=ctx.memory_lowered)
    if ctx.resume_state is not None:
        trainer.restore_state(ctx.resume_state)
    ctx.track_training(trainer.capture_state, model_meta={"task": "nerf", "config": config.to_dict(),
                                                          "normalization": normalization,
                                                          "width": train.width, "height": train.height})
    preview_path = ctx.output_path("preview.png")
    preview_view = held if held is not None else train
    state = {"last_preview": time.perf_counter()}

    def on_step(t: NerfTrainer) -> None:
        eta = None
        if config.train.seconds is not None:   # a time budget usually ends training before max_steps
            eta = max(config.train.seconds - t.training_seconds, 0.0)
        ctx.training_step(t.step, config.train.max_steps, t.last_loss, psnr=round(t.last_psnr, 3), eta=eta)
        period = config.train.preview_seconds
        if period and time.perf_counter() - state["last_preview"] >= period:
            _write_preview(model, preview_view, preview_path, config)
            ctx.reporter.send("preview", path=f"{protocol.OUTPUTS_DIR}/{preview_path.name}", step=t.step,
                              psnr=round(t.last_psnr, 3))
            state["last_preview"] = time.perf_counter()

    trainer.train_for(until_step=config.train.max_steps, until_seconds=config.train.seconds,
                      on_step=on_step, check_cancel=ctx.check_cancel)
    timings["training"] = trainer.training_seconds
    ctx.finish_training()
    checkpoint_dir = ctx.checkpoint_dir / "field"
    save_nerf(checkpoint_dir, model, config, normalization,
              {"steps": trainer.step, "width": train.width, "height": train.height})
    _write_preview(model, preview_view, preview_path, config)
    ctx.reporter.send("preview", path=f"{protocol.OUTPUTS_DIR}/{preview_path.name}", step=trainer.step,
                      psnr=round(trainer.last_psnr, 3))

    ctx.phase("evaluating")
    clock = time.perf_counter()
    metrics: dict[str, Any] = {"steps": trainer.step, "train_psnr": trainer.last_psnr,
                               "rays_per_second": trainer.rays_seen / max(trainer.training_seconds, 1e-9),
                               "samples_per_second": trainer.samples_seen / max(trainer.training_seconds, 1e-9)}
    if held is not None:
        metrics.update(evaluate(model, held, max_views=config.eval.max_views))
    else:
        ctx.reporter.send("warning", message="no held-out views (fewer than "
                                             f"{2 * config.eval.holdout_every} images): PSNR is not measured")
    timings["evaluation"] = time.perf_counter() - clock
    outputs = {"checkpoint": f"{protocol.CHECKPOINTS_DIR}/field", "preview": f"{protocol.OUTPUTS_DIR}/preview.png"}

    if config.mesh.enabled:
        ctx.phase("extracting mesh")
        clock = time.perf_counter()
        try:
            mesh_path = ctx.output_path("mesh.ply")
            write_nerf_mesh(model, normalization, mesh_path,
                                        resolution=config.mesh.resolution, threshold=config.mesh.threshold,
                                        device=device, timings=timings)
            outputs["mesh"] = f"{protocol.OUTPUTS_DIR}/{mesh_path.name}"
        except ValueError as exc:   # the trained field stays usable: extract later with other settings
            ctx.reporter.send("warning", message=f"no mesh: {exc}")
        timings["mesh"] = time.perf_counter() - clock
    return {"metrics": metrics, "timings": timings, "outputs": outputs}


def write_nerf_mesh(model: NerfModel, normalization: dict, path: Path, *, resolution: int, threshold: float,
                    device, timings: dict | None = None, smoothing: int = 0) -> dict:
    """Extract the coloured mesh into ``path`` (world coordinates); returns its vertex and face counts.
    smoothing: Taubin smoothing iterations after the colours are taken (0: none)."""
    from ..geometry.extract import to_world
    from ..plyio import write_ply
    from .reextract import taubin_smooth
    vertices, faces, colors = extract_nerf_mesh(model, resolution=resolution, threshold=threshold, device=device,
                                                timings=timings)
    vertices = taubin_smooth(vertices, faces, iterations=smoothing)
    write_ply(path, to_world(vertices, normalization), faces, vertex_colors=colors)
    return {"n_vertices": int(len(vertices)), "n_faces": int(len(faces))}


def _write_preview(model: NerfModel, views: Views, path: Path, config: NerfConfig) -> None:
    """Render the first view at most ``preview_size`` pixels across into ``path`` (atomically)."""
    from ..imageio import write_png
    scale = min(1.0, config.train.preview_size / max(views.width, views.height))
    width, height = max(1, round(views.width * scale)), max(1, round(views.height * scale))
    out = render_view(model, views.c2w[0], views.intrinsics[0] * scale, width, height)
    write_png(path, out["rgb"].cpu().numpy())


# --------------------------------------------------------------------------- render / extract commands


def render_frames_to_folder(job_dir: Path, cameras: Path, out_dir: Path, *, outputs: list[str],
                            background: str = "white", device="cpu", reporter=None) -> dict:
    """Render every frame of a transforms file with the NeRF of ``job_dir`` into ``out_dir``.

    Files per frame (stem = the frame's file name stem, frame_NNNN when missing or repeated):
    <stem>.png RGB over the background, <stem>_alpha.png, <stem>_depth.exr (z-depth along the
    camera axis in world units, 0 where nothing is hit), <stem>_normal.png (world normals as
    0.5 + 0.5 n). render.json lists them, with PSNR/SSIM where the frame's image exists.
    """
    from ..imageio import write_exr, write_png
    model, meta = load_nerf(job_dir, device)
    if reporter is not None:
        render_chunk(model, report=lambda message, _size: reporter.send("warning", message=message))
    normalization = meta["normalization"]
    frames = datasets.read_transforms(cameras)
    out_dir.mkdir(parents=True, exist_ok=True)
    bg = BACKGROUNDS[background]
    used: set[str] = set()
    summary: dict[str, Any] = {"frames": [], "background": background}
    psnrs, ssims = [], []
    clock = time.perf_counter()
    for index, frame in enumerate(frames):
        stem = Path(str(frame.name)).stem if frame.name else ""
        if not stem or stem in used:
            stem = f"frame_{index:04d}"
        used.add(stem)
        view = frames_to_views([frame], normalization, device, with_pixels=False)
        out = render_view(model, view.c2w[0], view.intrinsics[0], view.width, view.height, background=bg,
                          normals="normal" in outputs)
        entry: dict[str, Any] = {"name": stem, "width": view.width, "height": view.height}
        if "rgb" in outputs:
            entry["rgb"] = write_png(out_dir / f"{stem}.png", out["rgb"].cpu().numpy()).name
        if "alpha" in outputs:
            entry["alpha"] = write_png(out_dir / f"{stem}_alpha.png", out["opacity"].cpu().numpy()[..., None]).name
        if "depth" in outputs:
            depth = (out["depth"] / float(normalization["scale"])).cpu().numpy().astype(np.float32)
            entry["depth"] = write_exr(out_dir / f"{stem}_depth.exr", depth[..., None]).name
        if "normal" in outputs:
            entry["normal"] = write_png(out_dir / f"{stem}_normal.png", (out["normal"].cpu().numpy() + 1) * 0.5).name
        image_file = Path(frame.file_path)
        if image_file.is_file():
            rgba = torch.from_numpy(load_image_rgba(image_file)).to(device).float() / 255.0
            if rgba.shape[:2] == (view.height, view.width):
                target = rgba[..., :3] * rgba[..., 3:] + torch.tensor(bg, device=device) * (1 - rgba[..., 3:])
                entry["psnr"] = psnr(out["rgb"], target)
                entry["ssim"] = ssim(out["rgb"], target)
                psnrs.append(entry["psnr"])
                if entry["ssim"] is not None:
                    ssims.append(entry["ssim"])
        summary["frames"].append(entry)
        if reporter is not None:
            reporter.send("progress", phase="rendering", step=index + 1, total=len(frames), loss=0.0,
                          elapsed=round(time.perf_counter() - clock, 3), eta=None, name=stem)
    summary["n_compared"] = len(psnrs)
    summary["psnr"] = float(np.mean(psnrs)) if psnrs else None
    summary["ssim"] = float(np.mean(ssims)) if ssims else None
    summary["seconds"] = time.perf_counter() - clock
    protocol.write_json_atomic(out_dir / "render.json", summary)
    return summary


def extract_to_file(job_dir: Path, out: Path, *, resolution: int = 256, threshold: float | None = None,
                    device="cpu", smoothing: int = 0, warn=None) -> dict:
    """Extract the coloured mesh of a trained NeRF into a PLY (world coordinates); warn(text):
    where a chunk lowered after a GPU out-of-memory is told."""
    model, meta = load_nerf(job_dir, device)
    if warn is not None:
        render_chunk(model, report=lambda message, _size: warn(message))
    if threshold is None:
        threshold = model.config.mesh.threshold
    clock = time.perf_counter()
    timings: dict[str, float] = {}
    counts = write_nerf_mesh(model, meta["normalization"], Path(out), resolution=resolution, threshold=threshold,
                             device=device, timings=timings, smoothing=smoothing)
    return {"seconds": time.perf_counter() - clock, **counts, "timings": timings}
