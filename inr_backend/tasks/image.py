"""Task ``image``: fit a coordinate field f(x, y) -> RGB(A) to an image, then sample it at any size.

Steps: read the image (inputs/image.<png|jpg|exr>, inr_backend.imageio) -> train the field with
MSE + Adam on random pixel batches (every pixel each step when the image is small) -> save the
checkpoint (checkpoints/field/: model.safetensors + model.json) -> sample the field at the
requested size into outputs/image.png (8 or 16 bit like the source) or outputs/image.exr (for
EXR / linear sources) -> PSNR and SSIM of the field at the training resolution.

Coordinates (kept in model.json as "coordinates"): pixel *centres* of an H x W image, column c
and row r (row 0 at the top), map to

    x = ((2c + 1) / W - 1) * W / max(H, W)        y = ((2r + 1) / H - 1) * H / max(H, W)

so the image's *edges* span the box, the longer side [-1, 1], and the aspect ratio is kept
(isotropic encodings see square pixels). Sampling at another size W' x H' keeps the
training image's extent and puts the new pixel centres on the same formula with W', H'. So
at an integer scale s the output pixel block (s*r .. s*r + s-1, s*c .. s*c + s-1) covers
exactly training pixel (r, c), and the block's centre is that pixel's centre: at odd s the
output pixel (s*r + (s-1)/2, s*c + (s-1)/2) sits exactly on it; at even s (2x, 4x) no output
centre coincides with a training centre, and the s x s block mean is the comparable value
(the same convention as OpenGL texture sampling, Pillow's resize and torch's
align_corners=False).

Config (job.json ``config``, all optional): preset (fast | balanced | quality), network
(relu | fourier | frequency | siren | hashgrid), device, seed, max_steps, seconds (training
time budget; training stops at whichever of max_steps / seconds comes first), batch_size,
scale (output = scale x input size, default 1) or width and/or height (exact output size; one
of them alone keeps the aspect ratio), field (a field config dict for
fields.networks.field_config_from_dict: any encoding x MLP, used as given), checkpoint_seconds
(training seconds between resume checkpoints, default 30; 0: only at the end or on cancel).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import imageio, memory
from ..checkpoint import (DEFAULT_CHECKPOINT_SECONDS, META_FILE, WEIGHTS_FILE, TrainingState,
                          capture_training_state, checkpoint_seconds_option, restore_training_state, save_field)
from ..image_metrics import psnr, ssim  # noqa: F401  (callers use image.psnr / image.ssim too)
from ..fields.networks import NETWORKS, Field, FieldConfig, field_config_for, field_config_from_dict
from ..protocol import ProtocolError, read_json
from .sdf import GraphedStep   # the same warm-up, capture and fallback as the SDF step

CHECKPOINT_SUBDIR = "field"          # checkpoints/field/model.safetensors + model.json
MAX_OUTPUT_PIXELS = 2 ** 28          # 16384 x 16384: beyond this an output needs > 1 GB per channel
COORDINATES = ("pixel centres: x = ((2c+1)/W - 1) * W/max(H,W), y = ((2r+1)/H - 1) * H/max(H,W); "
               "c column from the left, r row from the top")


@dataclass
class ImageTrainConfig:
    steps: int = 2000
    seconds: float | None = None       # wall-clock budget for training (None: steps only)
    batch_size: int = 2 ** 18          # pixels per step; an image with fewer pixels trains on all of them
    learning_rate: float = 1e-2        # set per network by resolve_config (_NETWORK_LR)
    final_lr_fraction: float = 0.1     # exponential decay to this fraction at the end (steps or seconds)
    # On a CPU (unless the user set batch_size): a 256-wide MLP costs ~1 GFLOP per 2^12 pixels
    # and step, a 16-level hash grid ~0.1 s per 2^14 pixels on one core; keep steps near a second.
    cpu_batch_cap: int = 2 ** 14
    cpu_hashgrid_batch_cap: int = 2 ** 15
    cuda_graph: bool = True            # on CUDA, replay each step as one CUDA graph (see train_image)


@dataclass
class ImageFieldSizing:
    """How a named network adapts to the image (only the hash grid does; MLPs keep their size).

    The hash grid's finest level gets ``finest_per_pixel`` cells per pixel of the longer side and
    its table 2^ceil(log2(pixels)) entries per level (so coarse levels are collision-free and the
    finest ones hold about one feature vector per pixel), capped by ``max_log2_table_size``:
    Adam updates the whole table every step, so the cap bounds the step time and memory.
    """
    adapt: bool = True
    finest_per_pixel: float = 2.0
    min_log2_table_size: int = 12
    max_log2_table_size: int = 21
    per_level_scale: float = 1.5       # tiny-cuda-nn's image example; sets the number of levels (<= 16)


@dataclass
class ImageOutputConfig:
    scale: float = 1.0
    width: int | None = None
    height: int | None = None
    chunk: int = 2 ** 18               # pixels per forward pass when sampling the field


@dataclass
class ImageConfig:
    preset: str = "balanced"
    device: str = "auto"
    seed: int = 0
    checkpoint_seconds: float = DEFAULT_CHECKPOINT_SECONDS   # training seconds between checkpoints (0: end only)
    field: FieldConfig = dataclasses.field(default_factory=lambda: field_config_for("hashgrid"))
    sizing: ImageFieldSizing = dataclasses.field(default_factory=ImageFieldSizing)
    train: ImageTrainConfig = dataclasses.field(default_factory=ImageTrainConfig)
    output: ImageOutputConfig = dataclasses.field(default_factory=ImageOutputConfig)
    batch_size_from_user: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = ("fast", "balanced", "quality")

# Adam learning rates per network, for budgets of hundreds to a few thousand steps (the
# exponential decay to 0.1x ends each run at a tenth of them). Hash-grid tables are sparse,
# mostly-zero features and want instant-ngp's 1e-2. SIREN's paper uses 1e-4 over 10k+ steps;
# at our budgets 1e-3 is far better and still stable (256^2 crop of albert.jpg, 150 steps of
# 4096 pixels on a CPU: 38.0 dB vs 35.9; 64^2 sinusoid pattern, 200 steps: 26.7 vs 11.7 dB).
# Fourier features + ReLU: 3e-3 (same 35.9 dB as 1e-3 on the photo, 23.6 vs 14.5 dB on the
# pattern). Plain ReLU / positional encoding: Adam's usual 1e-3 (3e-3 gained nothing).
_NETWORK_LR = {"hashgrid": 1e-2, "siren": 1e-3, "relu": 1e-3, "fourier": 3e-3, "frequency": 1e-3}


def _preset(name: str) -> ImageConfig:
    if name == "fast":       # seconds on a GPU; a 512^2 image in a minute or two on 2 CPU cores
        return ImageConfig(preset=name, train=ImageTrainConfig(steps=500, batch_size=2 ** 16),
                           sizing=ImageFieldSizing(max_log2_table_size=19))
    if name == "balanced":
        return ImageConfig(preset=name, train=ImageTrainConfig(steps=2000, batch_size=2 ** 18))
    if name == "quality":
        return ImageConfig(preset=name, train=ImageTrainConfig(steps=10000, batch_size=2 ** 18),
                           sizing=ImageFieldSizing(max_log2_table_size=22))
    raise ValueError(f"unknown preset {name!r}: choose fast, balanced or quality")


_KNOWN_OPTIONS = {"preset", "network", "device", "seed", "max_steps", "seconds", "batch_size", "scale", "width",
                  "height", "field", "checkpoint_seconds"}


def resolve_config(user: dict) -> ImageConfig:
    """The full config from job.json's ``config`` (all keys optional; see the module docstring).

    Unknown keys and out-of-range values raise ValueError, so a typo never passes silently.
    """
    unknown = sorted(set(user) - _KNOWN_OPTIONS)
    if unknown:
        raise ValueError(f"unknown image config option(s): {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(_KNOWN_OPTIONS))}")
    config = _preset(user.get("preset", "balanced"))
    if "field" in user:
        if not isinstance(user["field"], dict):
            raise ValueError("config 'field' must be an object (a field config)")
        config.field = field_config_from_dict(user["field"])
        config.sizing.adapt = False          # a field given in full is used as given
        network = config.field.network
    else:
        network = str(user.get("network", "hashgrid"))
        if network not in NETWORKS:
            raise ValueError(f"unknown network {network!r}: choose {', '.join(NETWORKS)}")
        config.field = field_config_for(network)
    config.train.learning_rate = _NETWORK_LR.get(network, 1e-2 if config.field.encoding.kind == "hashgrid"
                                                 else 1e-3)
    config.device = str(user.get("device", "auto"))
    config.seed = int(user.get("seed", 0))
    config.checkpoint_seconds = checkpoint_seconds_option(user)
    if "max_steps" in user:
        config.train.steps = _positive_int(user["max_steps"], "max_steps")
    if "seconds" in user and user["seconds"] is not None:
        seconds = float(user["seconds"])
        if not seconds > 0:
            raise ValueError(f"seconds must be positive, got {seconds}")
        config.train.seconds = seconds
        if "max_steps" not in user:
            config.train.steps = 10 ** 9     # the time budget decides
    if "batch_size" in user:
        config.train.batch_size = _positive_int(user["batch_size"], "batch_size")
        config.batch_size_from_user = True
    if "scale" in user and ("width" in user or "height" in user):
        raise ValueError("give either scale or width/height for the output size, not both")
    if "scale" in user:
        scale = float(user["scale"])
        if not 0 < scale <= 64:
            raise ValueError(f"scale must be in (0, 64], got {scale}")
        config.output.scale = scale
    for key in ("width", "height"):
        if key in user and user[key] is not None:
            value = _positive_int(user[key], key)
            if value > 65536:
                raise ValueError(f"{key} must be at most 65536, got {value}")
            setattr(config.output, key, value)
    return config


def _positive_int(value, name: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(f"{name} must be at least 1, got {number}")
    return number


# --------------------------------------------------------------------------- coordinates and sizes


def image_extent(height: int, width: int) -> tuple[float, float]:
    """(ex, ey): the image spans [-ex, ex] x [-ey, ey]; the longer side is [-1, 1]."""
    longest = max(height, width)
    return width / longest, height / longest


def pixel_coordinates(rows: torch.Tensor, cols: torch.Tensor, height: int, width: int,
                      extent: tuple[float, float]) -> torch.Tensor:
    """Field coordinates (N, 2) of pixel centres (rows (N,), cols (N,)) of an H x W sampling of ``extent``."""
    x = ((2 * cols.to(torch.float32) + 1) / width - 1) * extent[0]
    y = ((2 * rows.to(torch.float32) + 1) / height - 1) * extent[1]
    return torch.stack([x, y], dim=-1)


def output_size(height: int, width: int, output: ImageOutputConfig) -> tuple[int, int]:
    """(H', W') asked for: exact width/height (one alone keeps the aspect ratio), else scale x size."""
    if output.width and output.height:
        size = (output.height, output.width)
    elif output.width:
        size = (max(1, round(output.width * height / width)), output.width)
    elif output.height:
        size = (output.height, max(1, round(output.height * width / height)))
    else:
        size = (max(1, round(height * output.scale)), max(1, round(width * output.scale)))
    if size[0] * size[1] > MAX_OUTPUT_PIXELS:
        raise ValueError(f"an output of {size[1]}x{size[0]} pixels is too large (at most {MAX_OUTPUT_PIXELS} "
                         "pixels): choose a smaller scale or size")
    return size


def adapt_field_to_image(config: FieldConfig, sizing: ImageFieldSizing, height: int, width: int) -> FieldConfig:
    """A copy of ``config`` with the hash grid sized for an H x W image (see ImageFieldSizing)."""
    config = field_config_from_dict(config.to_dict())
    encoding = config.encoding
    if not sizing.adapt or encoding.kind != "hashgrid":
        return config
    finest = max(encoding.base_resolution + 1, int(math.ceil(sizing.finest_per_pixel * max(height, width))))
    levels = 1 + math.ceil(math.log(finest / encoding.base_resolution) / math.log(sizing.per_level_scale))
    encoding.n_levels = int(min(16, max(2, levels)))
    encoding.finest_resolution = finest
    log2_size = math.ceil(math.log2(height * width))
    encoding.log2_table_size = int(min(sizing.max_log2_table_size, max(sizing.min_log2_table_size, log2_size)))
    return config


def make_image_field(config: FieldConfig, channels: int) -> Field:
    return Field(config, in_dim=2, channels={"rgb": channels})


def field_values(model: Field, points: torch.Tensor) -> torch.Tensor:
    """points (N, 2) -> (N, C), also for C = 1 (Field squeezes one-wide channels)."""
    values = model(points)["rgb"]
    return values[:, None] if values.ndim == 1 else values


# --------------------------------------------------------------------------- training


def train_image(model: Field, pixels: torch.Tensor, config: ImageTrainConfig, *, seed: int,
                on_step=None, check_cancel=None, cuda_graph: bool | None = None,
                time_marks: tuple[float, ...] = (), on_time_mark=None,
                resume: TrainingState | None = None, track=None, batch: memory.AdaptiveSize | None = None) -> dict:
    """Fit ``model`` to ``pixels`` (H, W, C) on the model's device by MSE; returns stats.

    Stops after config.steps steps or config.seconds of training, whichever comes first.
    on_step(step, total, loss) after every step (total: the step count expected, an
    estimate under a time budget); check_cancel() raises to stop. on_time_mark(mark, step)
    is called once training time passes each of ``time_marks`` (seconds); time spent inside
    it is not counted as training time (benchmarks evaluate there).

    cuda_graph (default config.cuda_graph on CUDA) replays each step (forward, backward,
    Adam) as one CUDA graph: a hash-grid step is hundreds of small kernels whose launches,
    not the arithmetic, bound the step time. The eager step is the reference: both draw the
    same batches and do the same maths. Under a time budget on CUDA every step is
    synchronised so the clock measures finished work.

    resume: a checkpoint.TrainingState of this training: weights, Adam's moments, the step and
    the training time so far (so the learning-rate schedule and the seconds budget go on where
    they were), and the batch generator are restored. track(snapshot): as in sdf.train_sdf.

    batch: the pixels per step as a memory.AdaptiveSize (default config.batch_size), halved on
    a GPU out-of-memory as in sdf.train_sdf (an image that fitted whole is then sampled).
    """
    device = pixels.device
    height, width, channels = pixels.shape
    n_pixels = height * width
    extent = image_extent(height, width)
    targets = pixels.reshape(n_pixels, channels)
    batch = batch if batch is not None else memory.AdaptiveSize(config.batch_size, device=device)
    if n_pixels < batch.original:
        # The whole image is the batch: it is what a lowering starts from.
        batch = memory.AdaptiveSize(n_pixels, what=batch.what, report=batch.report, device=batch.device)
    on_cuda = device.type == "cuda"
    graphed = (config.cuda_graph if cuda_graph is None else cuda_graph) and on_cuda
    timed = config.seconds is not None or bool(time_marks)
    generator = torch.Generator(device=device).manual_seed(seed)
    is_hashgrid = config.learning_rate >= 1e-3 and any(p.ndim == 3 for p in model.parameters())
    # Capturable Adam with a tensor learning rate on CUDA, graph or not, so the eager step is
    # an exact reference for the graphed one and a captured graph sees the schedule's updates.
    learning_rate = torch.tensor(config.learning_rate, device=device) if on_cuda else config.learning_rate
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate, betas=(0.9, 0.99),
                                 eps=1e-15 if is_hashgrid else 1e-8, capturable=on_cuda)

    # Batches live in fixed buffers refilled before each step (a CUDA graph reads fixed addresses);
    # they are made again at a lowered batch size.
    buffers: dict[str, torch.Tensor] = {}

    def allocate(size: int) -> None:
        buffers["index"] = (torch.arange(size, device=device) if size >= n_pixels
                            else torch.empty(size, dtype=torch.long, device=device))

    def draw_batch() -> None:
        index = buffers["index"]
        if len(index) < n_pixels:
            torch.randint(n_pixels, (len(index),), device=device, generator=generator, out=index)

    def step() -> torch.Tensor:
        index = buffers["index"]
        optimizer.zero_grad(set_to_none=True)
        points = pixel_coordinates(index // width, index % width, height, width, extent)
        loss = F.mse_loss(field_values(model, points), targets[index])
        loss.backward()
        optimizer.step()
        return loss

    marks = sorted(time_marks)
    loss = torch.tensor(math.nan)
    training_time, step_number = 0.0, 0
    if resume is not None:
        restore_training_state(resume, model=model, optimizer=optimizer, generators={"batches": generator})
        training_time, step_number = resume.training_seconds, resume.step
        loss = torch.tensor(resume.meta.get("trainer", {}).get("loss", math.nan))
        batch.restore(resume.meta.get("trainer", {}).get("batch_lowered"))
    if track is not None:
        track(lambda: capture_training_state(
            task="image", step=step_number, total_steps=config.steps, training_seconds=training_time,
            model=model, optimizer=optimizer, generators={"batches": generator},
            trainer={"loss": float(loss.detach()), "batch_lowered": batch.record() if batch.lowered else None}))
    allocate(batch.size)
    first_step = step_number + 1
    run_step = GraphedStep(step, enabled=graphed, device=device, first_step=first_step)
    last = time.perf_counter()
    total = config.steps
    while step_number < config.steps:
        if config.seconds is not None and training_time >= config.seconds:
            break
        if check_cancel is not None:
            check_cancel()
        step_number += 1
        fraction = step_number / config.steps
        if config.seconds is not None:
            fraction = max(fraction, training_time / config.seconds)
        rate = config.learning_rate * config.final_lr_fraction ** min(fraction, 1.0)
        for group in optimizer.param_groups:
            if on_cuda:
                group["lr"].fill_(rate)
            else:
                group["lr"] = rate
        draw_batch()
        try:
            memory.inject("train_step")
            loss = run_step(step_number)
        except Exception as exc:   # noqa: BLE001 - only a GPU out-of-memory is handled
            if not memory.caused_by_oom(exc):
                raise
            # Drop the step (a captured graph and the buffer have the old size), halve, retry it.
            run_step.fall_back()   # eager from now on, without the graph
            buffers.clear()
            optimizer.zero_grad(set_to_none=True)
            batch.lower(exc, step=step_number)
            allocate(batch.size)
            step_number -= 1
            continue
        if timed and on_cuda:
            torch.cuda.synchronize(device)
        now = time.perf_counter()
        training_time += now - last
        if config.seconds is not None and training_time > 0:
            total = min(config.steps, max(step_number, int(step_number * config.seconds / training_time)))
        while marks and training_time >= marks[0]:
            if on_time_mark is not None:
                on_time_mark(marks[0], step_number)
            marks.pop(0)
        if on_step is not None:
            on_step(step_number, total, loss)
        last = time.perf_counter()       # time in the callbacks is not training time
    if on_cuda:
        torch.cuda.synchronize(device)
    return {"steps": step_number, "loss": float(loss.detach()), "seconds": training_time, "batch_size": batch.size}


# --------------------------------------------------------------------------- sampling and metrics


@torch.no_grad()
def render_field(model: Field, height: int, width: int, extent: tuple[float, float], *,
                 chunk: int = 2 ** 18) -> torch.Tensor:
    """The field sampled at the pixel centres of an H x W image covering ``extent``: (H, W, C)."""
    device = next(model.parameters()).device
    rows_out = []
    rows_per_chunk = max(1, chunk // width)
    cols = torch.arange(width, device=device)
    for row0 in range(0, height, rows_per_chunk):
        rows = torch.arange(row0, min(height, row0 + rows_per_chunk), device=device)
        r, c = torch.meshgrid(rows, cols, indexing="ij")
        points = pixel_coordinates(r.reshape(-1), c.reshape(-1), height, width, extent)
        rows_out.append(field_values(model, points).reshape(len(rows), width, -1))
    return torch.cat(rows_out, dim=0)


def render_field_adaptive(model: Field, height: int, width: int, extent: tuple[float, float], *,
                          chunk: memory.AdaptiveSize, phase: str) -> torch.Tensor:
    """render_field with a chunk that halves on a GPU out-of-memory (``chunk``: memory.AdaptiveSize)."""
    return memory.retry_chunked(
        lambda size: render_field(_Injecting(model), height, width, extent, chunk=size), chunk, phase=phase)


class _Injecting:
    """A model whose calls pass memory.inject("render_chunk") first (the OOM test hook), nothing else."""

    def __init__(self, model: Field):
        self.model = model

    def parameters(self):
        return self.model.parameters()

    def __call__(self, points):
        memory.inject("render_chunk")
        return self.model(points)


def data_range_of(target: torch.Tensor, info: dict) -> float:
    """1 for display images (PNG/JPEG in [0, 1]); the value range for linear (EXR) images."""
    if info.get("colour_space") == "linear" or info.get("format") == "exr":
        return max(float(target.max() - target.min()), 1e-6)
    return 1.0


# --------------------------------------------------------------------------- output files


def output_kind(info: dict) -> tuple[str, int]:
    """(suffix, bits) of the output for a source: EXR/linear -> .exr, 16-bit -> 16-bit PNG, else 8-bit PNG."""
    if info.get("format") == "exr" or info.get("colour_space") == "linear":
        return ".exr", 32 if info.get("exr_pixel_type", "float") == "float" else 16
    return ".png", 16 if info.get("bit_depth") == 16 else 8


def write_output(path: Path, image: np.ndarray, info: dict) -> Path:
    """Write (H, W, C) ``image`` as ``path`` (.png or .exr), bit depth from the source's info.

    The field holds the source's own encoding. PNG means sRGB-encoded and EXR linear, so a
    PNG made from a linear source (or an EXR from an sRGB one) goes through the sRGB transfer
    function (colour channels only, not alpha), and looks the same in Blender.
    """
    suffix = path.suffix.lower()
    if suffix not in (".png", ".exr"):
        raise ValueError(f"output file {path.name} must end in .png or .exr")
    source_linear = info.get("colour_space") == "linear"
    colour = image.shape[2] - (1 if info.get("has_alpha") else 0)
    image = np.array(image, dtype=np.float32)
    if suffix == ".exr":
        if not source_linear:
            image[..., :colour] = srgb_to_linear(image[..., :colour])
        pixel_type = "half" if info.get("exr_pixel_type") == "half" else "float"
        return imageio.write_exr(path, image, pixel_type=pixel_type)
    if source_linear:
        image[..., :colour] = linear_to_srgb(np.clip(image[..., :colour], 0.0, 1.0))
    return imageio.write_png(path, np.clip(image, 0.0, 1.0), bits=16 if info.get("bit_depth") == 16 else 8)


def srgb_to_linear(values: np.ndarray) -> np.ndarray:
    """The sRGB decoding function (IEC 61966-2-1), elementwise."""
    return np.where(values <= 0.04045, values / 12.92, ((np.maximum(values, 0.04045) + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(values: np.ndarray) -> np.ndarray:
    """The sRGB encoding function (IEC 61966-2-1), elementwise."""
    return np.where(values <= 0.0031308, values * 12.92, 1.055 * np.maximum(values, 0.0031308) ** (1 / 2.4) - 0.055)


# --------------------------------------------------------------------------- the job


def run_image_job(ctx) -> dict:
    """Run an image job. ``ctx`` is a job.JobContext; returns metrics, timings, outputs for result.json."""
    config: ImageConfig = ctx.config
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    ctx.phase("loading image")
    source, info = imageio.read_image(ctx.input_path("image"))
    height, width, channels = source.shape
    out_height, out_width = output_size(height, width, config.output)
    device = ctx.device
    pixels = torch.as_tensor(source, device=device)
    timings["load"] = time.perf_counter() - clock
    ctx.check_cancel()

    ctx.phase("training")
    clock = time.perf_counter()
    torch.manual_seed(config.seed)
    field_config = adapt_field_to_image(config.field, config.sizing, height, width)
    model = make_image_field(field_config, channels).to(device)
    train_config = dataclasses.replace(config.train)
    if device.type == "cpu" and not config.batch_size_from_user:
        cap = (train_config.cpu_hashgrid_batch_cap if field_config.encoding.kind == "hashgrid"
               else train_config.cpu_batch_cap)
        train_config.batch_size = min(train_config.batch_size, cap)
    extent = image_extent(height, width)
    model_meta = {"field": field_config.to_dict(), "channels": model.channels, "task": "image", "in_dim": 2,
                  "image": {key: info.get(key) for key in ("width", "height", "channels", "colour_space", "bit_depth",
                                                           "format", "has_alpha", "exr_pixel_type")},
                  "coordinates": {"extent": list(extent), "convention": COORDINATES}}
    stats = train_image(model, pixels, train_config, seed=config.seed,
                        on_step=ctx.training_step, check_cancel=ctx.check_cancel, resume=ctx.resume_state,
                        track=lambda snapshot: ctx.track_training(snapshot, model_meta=model_meta),
                        batch=ctx.adaptive_size(train_config.batch_size, what="batch"))
    ctx.sync()
    timings["training"] = time.perf_counter() - clock
    ctx.finish_training()
    checkpoint_dir = Path(ctx.checkpoint_dir) / CHECKPOINT_SUBDIR
    save_field(checkpoint_dir, model, field_config, extra={
        key: value for key, value in model_meta.items() if key not in ("field", "channels")} | {"steps": stats["steps"]})

    ctx.phase("sampling the field")
    clock = time.perf_counter()
    model.eval()
    suffix, _bits = output_kind(info)
    chunk = ctx.adaptive_size(config.output.chunk, what="chunk", unit="pixels", training=False)
    output = render_field_adaptive(model, out_height, out_width, extent, chunk=chunk, phase="sampling the field")
    out_path = write_output(ctx.output_path("image" + suffix), output.cpu().numpy(), info)
    del output
    timings["sampling"] = time.perf_counter() - clock

    ctx.phase("measuring")
    clock = time.perf_counter()
    fitted = render_field_adaptive(model, height, width, extent, chunk=chunk, phase="measuring")
    if suffix == ".png":
        fitted = fitted.clamp(0.0, 1.0)   # what the PNG holds
    data_range = data_range_of(pixels, info)
    metrics = {"psnr": psnr(fitted, pixels, data_range), "ssim": ssim(fitted, pixels, data_range),
               "data_range": data_range, "final_loss": stats["loss"], "steps": stats["steps"],
               "steps_per_second": stats["steps"] / max(stats["seconds"], 1e-9), "batch_size": stats["batch_size"],
               "n_parameters": int(sum(p.numel() for p in model.parameters())),
               "input_size": [width, height], "output_size": [out_width, out_height], "channels": channels}
    timings["metrics"] = time.perf_counter() - clock
    return {"metrics": metrics, "timings": timings,
            "outputs": {"image": f"outputs/{out_path.name}", "checkpoint": f"checkpoints/{CHECKPOINT_SUBDIR}"}}


# --------------------------------------------------------------------------- resampling a checkpoint


def load_image_field(checkpoint_dir: str | Path, *, device="cpu") -> tuple[Field, dict]:
    """The image field saved by run_image_job (checkpoints/field/) and its model.json."""
    from safetensors.torch import load_file

    from ..protocol import check_safetensors

    directory = Path(checkpoint_dir)
    meta = read_json(directory / META_FILE, "checkpoint description (model.json)")
    if meta.get("task") != "image":
        raise ProtocolError(f"{directory} holds a {meta.get('task')!r} field, not an image field")
    check_safetensors(directory / WEIGHTS_FILE)  # a pickle named like a checkpoint is refused by name
    try:
        config = field_config_from_dict(meta["field"])
        model = Field(config, in_dim=2, channels=meta["channels"])
        model.load_state_dict(load_file(str(directory / WEIGHTS_FILE), device="cpu"))
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ProtocolError(f"{directory} does not hold a usable image field: {exc}") from None
    return model.to(device).eval(), meta


def resample(job_or_checkpoint: str | Path, out_path: str | Path, *, scale: float | None = None,
             width: int | None = None, height: int | None = None, device="cpu", chunk: int = 2 ** 18,
             warn=None) -> dict:
    """Sample a trained image field at a new size into ``out_path`` (.png or .exr), no retraining.

    ``job_or_checkpoint``: a job folder (its checkpoints/field/ is used) or the checkpoint folder.
    Returns {"path", "width", "height", "seconds"}. warn(text): where a lowered chunk is reported.
    """
    started = time.perf_counter()
    folder = Path(job_or_checkpoint)
    for candidate in (folder / "checkpoints" / CHECKPOINT_SUBDIR, folder / CHECKPOINT_SUBDIR, folder):
        if (candidate / META_FILE).is_file():
            folder = candidate
            break
    else:
        raise ProtocolError(f"no image field checkpoint in {job_or_checkpoint} (expected checkpoints/field/model.json): "
                            "has the image job finished?")
    out_path = Path(out_path)
    if out_path.suffix.lower() not in (".png", ".exr"):
        raise ValueError(f"output file {out_path.name} must end in .png or .exr")
    model, meta = load_image_field(folder, device=device)
    image = meta["image"]
    out = ImageOutputConfig(scale=1.0 if scale is None else float(scale), width=width, height=height, chunk=chunk)
    if scale is not None and not 0 < float(scale) <= 64:
        raise ValueError(f"scale must be in (0, 64], got {scale}")
    out_height, out_width = output_size(image["height"], image["width"], out)
    extent = tuple(meta["coordinates"]["extent"])
    adaptive = memory.AdaptiveSize(chunk, what="chunk", unit="pixels", training=False, device=device,
                                   report=None if warn is None else (lambda message, _size: warn(message)))
    pixels = render_field_adaptive(model, out_height, out_width, extent, chunk=adaptive, phase="resampling")
    write_output(out_path, pixels.cpu().numpy(), image)
    return {"path": str(out_path), "width": out_width, "height": out_height,
            "seconds": round(time.perf_counter() - started, 3)}


__all__ = ["ImageConfig", "PRESETS", "resolve_config", "run_image_job", "train_image", "make_image_field",
           "render_field", "psnr", "ssim", "resample", "load_image_field", "image_extent", "pixel_coordinates"]
