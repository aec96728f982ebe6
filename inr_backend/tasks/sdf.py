"""Task ``sdf``: a mesh becomes a neural signed distance field and comes back as a mesh.

Steps: load + sanitize the mesh -> normalize it into the unit box -> sample ground truth
(exact distances, winding-number signs) -> train the field (L1 on the SDF + eikonal term)
-> marching cubes -> back to the mesh's own coordinates -> metrics against the source.

The config is one dataclass per component with named presets; ``resolve_config`` merges
the user's choices over a preset and the job saves the result as config.json.
"""

from __future__ import annotations

import math
import time
import dataclasses
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..checkpoint import (DEFAULT_CHECKPOINT_SECONDS, TrainingState, capture_training_state,
                          checkpoint_seconds_option, restore_training_state, save_field)
from ..fields.networks import Field, FieldConfig, field_config_for
from ..geometry.extract import extract_mesh, to_world
from ..geometry.mesh import is_watertight, load_mesh, normalization_for
from ..geometry.metrics import mesh_metrics, uniform_points_in_box, volume_iou
from ..geometry.sampling import sample_sdf
from ..geometry.winding import FastWindingNumber
from .. import memory
from ..plyio import write_ply
from ..protocol import make_normalization


@dataclass
class SdfSamplingConfig:
    n_surface: int = 2 ** 17
    n_near: int = 2 ** 18
    n_uniform: int = 2 ** 17
    near_sigmas: tuple[float, ...] = (0.01, 0.002)   # in unit-box units (the box is [-1, 1]^3)


@dataclass
class SdfTrainConfig:
    steps: int = 2000
    batch_size: int = 2 ** 14
    learning_rate: float = 1e-2        # hash grids like a high rate; other networks set their own
    final_lr_fraction: float = 0.1     # exponential decay to this fraction at the last step
    eikonal_weight: float = 0.1
    eikonal_batch_fraction: float = 1 / 16
    # Gradients for the eikonal term are central finite differences, not autograd: they cost
    # 6 extra forward passes on a small batch, work for every encoding (a fused kernel needs
    # no double backward), and smooth the hash grid's piecewise-linear gradients.
    eikonal_step: float = 2.0 / 512
    cuda_graph: bool = True            # on CUDA, replay each step as one CUDA graph (see train_sdf)


@dataclass
class SdfExtractConfig:
    resolution: int = 256
    level: float = 0.0
    chunk: int = 2 ** 18


@dataclass
class SdfMetricsConfig:
    n_surface_samples: int = 100_000
    n_iou_points: int = 2 ** 18


@dataclass
class SdfConfig:
    preset: str = "balanced"
    device: str = "auto"
    seed: int = 0
    checkpoint_seconds: float = DEFAULT_CHECKPOINT_SECONDS   # training seconds between checkpoints (0: end only)
    field: FieldConfig = dataclasses.field(default_factory=lambda: field_config_for("hashgrid"))
    sampling: SdfSamplingConfig = dataclasses.field(default_factory=SdfSamplingConfig)
    train: SdfTrainConfig = dataclasses.field(default_factory=SdfTrainConfig)
    extract: SdfExtractConfig = dataclasses.field(default_factory=SdfExtractConfig)
    metrics: SdfMetricsConfig = dataclasses.field(default_factory=SdfMetricsConfig)

    def to_dict(self) -> dict:
        return asdict(self)


def _preset(name: str) -> SdfConfig:
    if name == "fast":       # about a minute on 2 CPU cores for a 16k-triangle mesh; seconds on a GPU
        # A 2^17 table: Adam's dense update of a 2^19 table alone costs ~0.08 s a step on 2 CPU cores.
        # 12 levels up to 256: in 600 steps finer levels stay undertrained and show as bumps
        # (subdivided Suzanne at 256^3: normal consistency 0.962 -> 0.979, Chamfer 0.0026 -> 0.0022).
        field_config = field_config_for("hashgrid")
        field_config.encoding.log2_table_size = 17
        field_config.encoding.n_levels = 12
        field_config.encoding.finest_resolution = 256
        return SdfConfig(preset=name, field=field_config,
                         sampling=SdfSamplingConfig(2 ** 15, 2 ** 16, 2 ** 15),
                         train=SdfTrainConfig(steps=600, batch_size=2 ** 13),
                         metrics=SdfMetricsConfig(50_000, 2 ** 16))
    if name == "balanced":  # armadillo at 512^3 on an H200: 8.4 s, IoU 0.9955 (README's table)
        return SdfConfig(preset=name, train=SdfTrainConfig(steps=1250, batch_size=2 ** 17))
    if name == "quality":
        return SdfConfig(preset=name,
                         sampling=SdfSamplingConfig(2 ** 19, 2 ** 20, 2 ** 18),
                         train=SdfTrainConfig(steps=6000, batch_size=2 ** 16),
                         extract=SdfExtractConfig(resolution=512))
    raise ValueError(f"unknown preset {name!r}: choose fast, balanced or quality")


PRESETS = ("fast", "balanced", "quality")

# Learning rates that suit each network (hash-grid tables tolerate 1e-2; sine and ReLU MLPs do not).
# ReLU MLPs on raw coordinates or Fourier features train like the positional-encoding one.
_NETWORK_LR = {"hashgrid": 1e-2, "frequency": 5e-4, "siren": 1e-4, "relu": 5e-4, "fourier": 5e-4}


def resolve_config(user: dict) -> SdfConfig:
    """The full config from the options in job.json's ``config`` (all optional).

    Recognised: preset, network, device, seed, resolution, max_steps, batch_size, level,
    checkpoint_seconds. Unknown keys raise ValueError so a typo is not silently ignored.
    """
    known = {"preset", "network", "device", "seed", "resolution", "max_steps", "batch_size", "level",
             "checkpoint_seconds"}
    unknown = sorted(set(user) - known)
    if unknown:
        raise ValueError(f"unknown sdf config option(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    config = _preset(user.get("preset", "balanced"))
    network = user.get("network", "hashgrid")
    if network != config.field.network:
        config.field = field_config_for(network, in_dim=3)
    config.train.learning_rate = _NETWORK_LR[network]
    config.device = str(user.get("device", "auto"))
    config.seed = int(user.get("seed", 0))
    config.checkpoint_seconds = checkpoint_seconds_option(user)
    if "resolution" in user:
        resolution = int(user["resolution"])
        if not 16 <= resolution <= 2048:
            raise ValueError(f"resolution must be between 16 and 2048, got {resolution}")
        config.extract.resolution = resolution
    if "level" in user:
        config.extract.level = float(user["level"])
    if "max_steps" in user:
        steps = int(user["max_steps"])
        if steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {steps}")
        config.train.steps = steps
    if "batch_size" in user:
        config.train.batch_size = int(user["batch_size"])
    return config


def make_sdf_field(config: FieldConfig) -> Field:
    return Field(config, in_dim=3, channels={"sdf": 1})


def eikonal_loss(sdf_fn, points: torch.Tensor, step: float) -> torch.Tensor:
    """mean((|grad f| - 1)^2) with the gradient from central differences.

    points (M, 3); sdf_fn maps (K, 3) -> (K,).
    """
    offsets = torch.eye(3, device=points.device, dtype=points.dtype) * step          # (3, 3)
    probes = torch.cat([points[:, None] + offsets, points[:, None] - offsets], dim=1)  # (M, 6, 3)
    values = sdf_fn(probes.reshape(-1, 3)).reshape(-1, 6)
    gradient = (values[:, :3] - values[:, 3:]) / (2 * step)
    return ((gradient.norm(dim=-1) - 1) ** 2).mean()


def train_sdf(model: Field, points: torch.Tensor, sdf: torch.Tensor, config: SdfTrainConfig, *,
              seed: int, on_step=None, check_cancel=None, cuda_graph: bool | None = None,
              resume: TrainingState | None = None, track=None, batch: memory.AdaptiveSize | None = None) -> dict:
    """Fit ``model`` to (points (N, 3), sdf (N,)) samples; returns {"steps", "loss", "seconds", "batch_size"}.

    on_step(step, total, loss) is called after every step (the caller decides how often
    to report); check_cancel() raises to stop between steps.

    resume: a checkpoint.TrainingState of this training (same samples, config and seed): the
    weights, Adam's moments, the step (so the learning-rate schedule) and the batch generator
    are restored and only the remaining steps run, drawing the batches an uninterrupted run
    would. track(snapshot) is called once with a function that captures the state after the
    last completed step (job.JobContext.track_training writes it periodically and on cancel).

    cuda_graph (default: config.cuda_graph on a CUDA device) replays the whole step
    (forward, backward, Adam) as one CUDA graph: a hash-grid step is hundreds of small
    kernels, so on a GPU the launch overhead, not the arithmetic, bounds the step time. The
    eager step is the reference; both draw the same random batches and do the same maths.

    batch: the batch size as a memory.AdaptiveSize (default: config.batch_size, unreported). On
    a GPU out-of-memory the step is retried at half the batch (buffers and a captured graph are
    rebuilt at the new size); the lowered size is kept in the training state, so a resume goes
    on at it.
    """
    device = points.device
    graphed = (config.cuda_graph if cuda_graph is None else cuda_graph) and device.type == "cuda"
    generator = torch.Generator(device=device).manual_seed(seed)
    is_hashgrid = config.learning_rate >= 1e-3
    # On CUDA, Adam keeps its state and learning rate in tensors (capturable), with or without
    # the graph, so the eager step is an exact reference for the graphed one; a tensor
    # learning rate lets a captured graph see the schedule's updates.
    on_cuda = device.type == "cuda"
    learning_rate = torch.tensor(config.learning_rate, device=device) if on_cuda else config.learning_rate
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate, betas=(0.9, 0.99),
                                 eps=1e-15 if is_hashgrid else 1e-8, capturable=on_cuda)
    decay = config.final_lr_fraction ** (1 / max(config.steps, 1))
    sdf_fn = lambda p: model(p)["sdf"]  # noqa: E731
    batch = batch if batch is not None else memory.AdaptiveSize(config.batch_size, device=device)

    # The batch lives in fixed buffers, refilled before every step (a graph reads fixed addresses);
    # they are made again at a lowered batch size.
    buffers: dict[str, torch.Tensor] = {}

    def allocate(size: int) -> None:
        buffers["index"] = torch.empty(size, dtype=torch.long, device=device)
        buffers["free"] = torch.empty(max(1, int(size * config.eikonal_batch_fraction)), 3, device=device)

    def draw_batch() -> None:
        index = buffers["index"]
        torch.randint(len(points), (len(index),), device=device, generator=generator, out=index)
        # Eikonal points: uniform in the box, where the supervised samples are sparse.
        buffers["free"].uniform_(-1.0, 1.0, generator=generator)

    def step() -> torch.Tensor:
        index, free = buffers["index"], buffers["free"]
        optimizer.zero_grad(set_to_none=True)
        loss = (sdf_fn(points[index]) - sdf[index]).abs().mean()
        if config.eikonal_weight > 0:
            loss = loss + config.eikonal_weight * eikonal_loss(sdf_fn, free, config.eikonal_step)
        loss.backward()
        optimizer.step()
        return loss

    progress = {"step": 0, "seconds": 0.0, "loss": math.nan}
    if resume is not None:
        restore_training_state(resume, model=model, optimizer=optimizer, generators={"batches": generator})
        progress.update(step=resume.step, seconds=resume.training_seconds,
                        loss=resume.meta.get("trainer", {}).get("loss", math.nan))
        batch.restore(resume.meta.get("trainer", {}).get("batch_lowered"))
    if track is not None:
        track(lambda: capture_training_state(
            task="sdf", step=progress["step"], total_steps=config.steps, training_seconds=progress["seconds"],
            model=model, optimizer=optimizer, generators={"batches": generator},
            trainer={"loss": float(torch.as_tensor(progress["loss"]).detach()),
                     "batch_lowered": batch.record() if batch.lowered else None}))

    allocate(batch.size)
    first_step = progress["step"] + 1
    run_step = GraphedStep(step, enabled=graphed, device=device, first_step=first_step)
    loss = torch.tensor(progress["loss"])
    clock = time.perf_counter()
    step_number = first_step
    while step_number <= config.steps:
        if check_cancel is not None:
            check_cancel()
        for group in optimizer.param_groups:
            rate = config.learning_rate * decay ** (step_number - 1)
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
            # Drop the step (a captured graph and the buffers have the old size), halve, retry it.
            run_step.fall_back()   # eager from now on, without the graph
            buffers.clear()
            optimizer.zero_grad(set_to_none=True)
            batch.lower(exc, step=step_number)
            allocate(batch.size)
            continue
        now = time.perf_counter()
        progress["seconds"] += now - clock
        progress["step"] = step_number
        if on_step is not None:
            progress["loss"] = loss          # a tensor: read only when a checkpoint or a report needs it
            on_step(step_number, config.steps, loss)
        clock = time.perf_counter()          # reports and checkpoints are not training time
        step_number += 1
    return {"steps": config.steps, "loss": float(loss.detach()), "seconds": progress["seconds"],
            "batch_size": batch.size}


_CUDA_GRAPH_WARMUP_STEPS = 3


def _capture_step(step):
    """Record ``step`` as a CUDA graph; returns a function that replays it and gives its loss."""
    # The eager warm-up's cached blocks go back first, so the graph's private pool can take
    # them when memory is tight (else the capture itself can run out).
    torch.cuda.empty_cache()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = step()

    def replay() -> torch.Tensor:
        graph.replay()
        return static_loss

    return replay  # capture only records: the caller replays it for this step too


class GraphedStep:
    """A training step (a function of no arguments that returns the loss) as the loops run it:
    on CUDA with ``enabled``, eagerly for _CUDA_GRAPH_WARMUP_STEPS steps from ``first_step`` (on
    a side stream, as capture requires), then captured as one CUDA graph and replayed; otherwise
    eagerly. The graph reads the step's buffers at fixed addresses, refilled before each call."""

    def __init__(self, step, *, enabled: bool, device, first_step: int):
        self.step, self.enabled, self.device, self.first_step = step, enabled, device, first_step
        self._replay = None
        self._side_stream = torch.cuda.Stream(device) if enabled else None

    def __call__(self, step_number: int) -> torch.Tensor:
        if not self.enabled:
            return self.step()
        if step_number - self.first_step < _CUDA_GRAPH_WARMUP_STEPS:
            current = torch.cuda.current_stream(self.device)
            self._side_stream.wait_stream(current)
            with torch.cuda.stream(self._side_stream):
                loss = self.step()
            current.wait_stream(self._side_stream)
            return loss
        if self._replay is None:
            self._replay = _capture_step(self.step)
        return self._replay()

    def fall_back(self) -> None:
        """After a GPU out-of-memory: drop the graph (its buffers have the old size) and run
        eagerly from now on, since a captured graph keeps a memory pool of its own, which a GPU
        that just ran out cannot spare (its capture would run out again)."""
        self.enabled = False
        self._replay = None


def run_sdf_job(ctx) -> dict:
    """Run an sdf job. ``ctx`` is a job.JobContext (paths, reporter, cancel, device).

    Returns the result fields (metrics, timings, outputs) for result.json.
    """
    config: SdfConfig = ctx.config
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    ctx.phase("loading mesh")
    vertices, faces = load_mesh(ctx.input_path("mesh"))
    center, scale = normalization_for(vertices)
    normalization = make_normalization(list(center), scale)
    ctx.write_normalization(normalization)
    unit_vertices = (vertices - center) * scale
    timings["load"] = time.perf_counter() - clock

    ctx.phase("sampling ground truth")
    clock = time.perf_counter()
    torch.manual_seed(config.seed)
    device = ctx.device
    # One winding-number structure serves the training signs and the IoU metric.
    winding = FastWindingNumber(torch.as_tensor(unit_vertices, dtype=torch.float32, device=device),
                                torch.as_tensor(faces, device=device))
    samples = sample_sdf(unit_vertices, faces, n_surface=config.sampling.n_surface, n_near=config.sampling.n_near,
                         n_uniform=config.sampling.n_uniform, near_sigmas=config.sampling.near_sigmas,
                         seed=config.seed, device=device, winding=winding)
    ctx.sync()
    timings["sampling"] = time.perf_counter() - clock
    ctx.check_cancel()

    ctx.phase("training")
    clock = time.perf_counter()
    model = make_sdf_field(config.field).to(device)
    model_meta = {"field": config.field.to_dict(), "channels": model.channels, "task": "sdf",
                  "normalization": normalization}
    stats = train_sdf(model, samples.points, samples.sdf, config.train, seed=config.seed,
                      on_step=ctx.training_step, check_cancel=ctx.check_cancel, resume=ctx.resume_state,
                      track=lambda snapshot: ctx.track_training(snapshot, model_meta=model_meta),
                      batch=ctx.adaptive_size(config.train.batch_size, what="batch"))
    ctx.sync()
    timings["training"] = time.perf_counter() - clock
    ctx.finish_training()
    save_field(ctx.checkpoint_dir, model, config.field, extra={"task": "sdf", "steps": stats["steps"],
                                                               "normalization": normalization})

    ctx.phase("extracting mesh")
    clock = time.perf_counter()
    model.eval()
    sdf_fn = lambda p: model(p)["sdf"]  # noqa: E731
    chunk = ctx.adaptive_size(config.extract.chunk, what="chunk", unit="points", training=False)
    unit_out, faces_out = memory.retry_chunked(
        lambda size: extract_mesh(memory.injecting(sdf_fn, "extract_chunk"), resolution=config.extract.resolution,
                                  level=config.extract.level, device=device, chunk=size, timings=timings),
        chunk, phase="extracting the mesh")
    world_out = to_world(unit_out, normalization)
    mesh_path = ctx.output_path("mesh.ply")
    write_ply(mesh_path, world_out, faces_out)
    timings["extraction"] = time.perf_counter() - clock

    ctx.phase("measuring")
    clock = time.perf_counter()
    metrics = mesh_metrics(world_out, faces_out, vertices, faces,
                           n_samples=config.metrics.n_surface_samples, seed=config.seed)
    metrics["final_loss"] = stats["loss"]
    metrics["source_watertight"] = bool(is_watertight(vertices, faces))
    if metrics["source_watertight"]:
        metrics["iou"] = _volume_iou(sdf_fn, unit_vertices, winding, config, device)
    metrics["n_vertices"] = int(len(world_out))
    metrics["n_faces"] = int(len(faces_out))
    timings["metrics"] = time.perf_counter() - clock
    return {"metrics": metrics, "timings": timings,
            "outputs": {"mesh": f"outputs/{mesh_path.name}"}}


@torch.no_grad()
def _volume_iou(sdf_fn, unit_vertices: np.ndarray, winding: FastWindingNumber, config: SdfConfig, device) -> float:
    """IoU of {field < level} and the source's inside (winding number > 1/2) on uniform points
    in the source's bounding box (padded by 5% so thin outer shells count)."""
    lo, hi = unit_vertices.min(0), unit_vertices.max(0)
    pad = 0.05 * (hi - lo)
    points = uniform_points_in_box(lo - pad, hi + pad, config.metrics.n_iou_points, seed=config.seed + 1)
    points = torch.as_tensor(points, dtype=torch.float32, device=device)
    reference = winding(points) > 0.5
    predicted = torch.cat([sdf_fn(chunk) < config.extract.level for chunk in points.split(2 ** 18)])
    return float(volume_iou(predicted.cpu().numpy(), reference.cpu().numpy()))


__all__ = ["SdfConfig", "PRESETS", "resolve_config", "run_sdf_job", "train_sdf", "make_sdf_field"]
