"""Task ``occupancy``: a mesh becomes a neural occupancy field (Mescheder et al. 2019, "Occupancy
Networks") and comes back as a mesh.

Steps: load + sanitize the mesh -> normalize it into the unit box -> sample points near the
surface and uniformly in the box, labelled inside / outside by generalized winding numbers
-> train the field's logit with binary cross-entropy -> marching cubes at probability 1/2
(logit 0) -> back to the mesh's own coordinates -> metrics against the source.

Labels: inside where the winding number is above 1/2 (geometry/winding.py). For a closed mesh
that is the exact inside; for an open one (a hole, a cut) the inside closes across the hole,
where no ray-parity test gives a consistent answer. The field outputs a channel
``occupancy``: the logit of P(inside), positive inside.

The config is one dataclass per component with named presets, as for the sdf task;
``resolve_config`` merges the user's choices over a preset and the job saves it as config.json.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .. import memory
from ..checkpoint import (DEFAULT_CHECKPOINT_SECONDS, TrainingState, capture_training_state,
                          checkpoint_seconds_option, restore_training_state, save_field)
from ..fields.networks import NETWORKS, Field, FieldConfig, field_config_for, field_config_from_dict
from ..geometry.extract import marching_cubes, query_grid, to_world
from ..geometry.mesh import is_watertight, load_mesh, normalization_for
from ..geometry.metrics import mesh_metrics, uniform_points_in_box, volume_iou
from ..geometry.sampling import _near_surface_points
from ..geometry.winding import FastWindingNumber
from ..plyio import write_ply
from ..protocol import make_normalization
from .sdf import GraphedStep   # the same warm-up, capture and fallback as the SDF step

CHANNEL = "occupancy"


@dataclass
class OccupancySamplingConfig:
    n_near: int = 2 ** 20
    n_uniform: int = 2 ** 18
    # In unit-box units (the box is [-1, 1]^3). Labels say only which side a point is on, so
    # the decision boundary is pinned only where both labels occur close together: the narrow
    # sigma (half a 512^3 voxel) places it, the wider one keeps thin parts and the space
    # between close surfaces labelled. With few points (the fast preset) both are doubled.
    near_sigmas: tuple[float, ...] = (0.01, 0.002)


@dataclass
class OccupancyTrainConfig:
    steps: int = 1000
    # K points per step. The paper's K = 2048 is per shape in a batch of 64 shapes; one shape
    # alone learns its boundary faster from large batches: a hash grid's table entries are each
    # touched by few points, so small batches leave most of the surface without a gradient in
    # a step, and on a GPU a step is launch-bound up to ~2^17 points, so the larger batch is
    # nearly free (the same reasoning and sizes as the sdf task).
    batch_size: int = 2 ** 17
    learning_rate: float = 1e-2        # hash grids like a high rate; other networks set their own
    final_lr_fraction: float = 0.1     # exponential decay to this fraction at the last step
    cuda_graph: bool = True            # on CUDA, replay each step as one CUDA graph (see train_occupancy)


@dataclass
class OccupancyExtractConfig:
    resolution: int = 256
    threshold: float = 0.5             # probability of the surface (0.5: logit 0)
    chunk: int = 2 ** 18
    # Query the fine grid only in blocks whose corners disagree, and their neighbours
    # (query_grid_sign_refined); 0 queries every grid vertex.
    refine_block: int = 4
    # Bisection steps moving each marching-cubes vertex to the level crossing on its grid edge
    # (refine_vertices_on_edges); 0 keeps marching cubes' linear interpolation.
    edge_bisection_steps: int = 6


@dataclass
class OccupancyMetricsConfig:
    n_surface_samples: int = 100_000
    n_iou_points: int = 2 ** 18


@dataclass
class OccupancyConfig:
    preset: str = "balanced"
    device: str = "auto"
    seed: int = 0
    checkpoint_seconds: float = DEFAULT_CHECKPOINT_SECONDS   # training seconds between checkpoints (0: end only)
    field: FieldConfig = dataclasses.field(default_factory=lambda: field_config_for("hashgrid"))
    sampling: OccupancySamplingConfig = dataclasses.field(default_factory=OccupancySamplingConfig)
    train: OccupancyTrainConfig = dataclasses.field(default_factory=OccupancyTrainConfig)
    extract: OccupancyExtractConfig = dataclasses.field(default_factory=OccupancyExtractConfig)
    metrics: OccupancyMetricsConfig = dataclasses.field(default_factory=OccupancyMetricsConfig)

    def to_dict(self) -> dict:
        return asdict(self)


def occupancy_hash_grid(n_levels: int, finest_resolution: int, log2_table_size: int = 19) -> FieldConfig:
    """The hash grid + MLP for occupancy, with its finest level matched to the sample density.

    Labels are sparse information (a side, not a distance): a grid level whose cells are
    smaller than the spacing of the labelled points learns each point separately and leaves
    noise between them. On a torus with ~50k points, 250 steps, IoU against the analytic
    shape: finest 64 -> 0.987, 128 -> 0.951, 256 -> 0.917. So finer levels come with more points.
    """
    config = field_config_for("hashgrid")
    config.encoding.n_levels = n_levels
    config.encoding.finest_resolution = finest_resolution
    config.encoding.log2_table_size = log2_table_size
    return config


def _preset(name: str) -> OccupancyConfig:
    if name == "fast":      # tens of seconds on 2 CPU cores for a small mesh; a few seconds on a GPU
        # A 2^17 table: Adam's dense update of a 2^19 table alone costs ~0.08 s a step on 2 CPU cores.
        return OccupancyConfig(preset=name, field=occupancy_hash_grid(10, 128, 17),
                               sampling=OccupancySamplingConfig(2 ** 16, 2 ** 15, near_sigmas=(0.02, 0.004)),
                               train=OccupancyTrainConfig(steps=600, batch_size=2 ** 13),
                               metrics=OccupancyMetricsConfig(50_000, 2 ** 16))
    if name == "balanced":
        # Swept on the H200 (armadillo, 512^3, 1000 steps; bench/results/h200_armadillo_occupancy*.json):
        # finest 512 -> IoU 0.934, 256 -> 0.968, 128 -> 0.994, 256 with 4x the near points -> 0.9974
        # in 7.0 s; 2000 steps made it worse (0.964): the steep logit overfits the labels.
        sampling = OccupancySamplingConfig()
        sampling.n_near = 2 ** 22
        return OccupancyConfig(preset=name, field=occupancy_hash_grid(16, 256), sampling=sampling)
    if name == "quality":
        return OccupancyConfig(preset=name, field=occupancy_hash_grid(16, 512),
                               sampling=OccupancySamplingConfig(2 ** 23, 2 ** 19),   # untuned: balanced x2 detail, x2 points
                               train=OccupancyTrainConfig(steps=4000, batch_size=2 ** 17),
                               extract=OccupancyExtractConfig(resolution=512))
    raise ValueError(f"unknown preset {name!r}: choose fast, balanced or quality")


PRESETS = ("fast", "balanced", "quality")

# Learning rates that suit each network (hash-grid tables tolerate 1e-2; sine and ReLU MLPs do not).
_NETWORK_LR = {"hashgrid": 1e-2, "frequency": 5e-4, "siren": 1e-4, "relu": 5e-4, "fourier": 5e-4}


def resolve_config(user: dict) -> OccupancyConfig:
    """The full config from the options in job.json's ``config`` (all optional).

    Recognised: preset, network, device, seed, resolution, max_steps, batch_size, threshold,
    checkpoint_seconds;
    and for experiments (benchmarks, power users) ``field``: a field config dict (any encoding
    x MLP, see networks.field_config_from_dict; a named network's defaults fill the rest) and
    ``sampling`` / ``train`` / ``extract``: dicts of fields of those config dataclasses.
    Unknown keys raise ValueError so a typo is not silently ignored.
    """
    known = {"preset", "network", "device", "seed", "resolution", "max_steps", "batch_size", "threshold",
             "field", "sampling", "train", "extract", "checkpoint_seconds"}
    unknown = sorted(set(user) - known)
    if unknown:
        raise ValueError(f"unknown occupancy config option(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    config = _preset(user.get("preset", "balanced"))
    network = user.get("network", "hashgrid")
    if network not in NETWORKS:
        raise ValueError(f"unknown network {network!r}: choose {', '.join(NETWORKS)}")
    if network != config.field.network:
        config.field = field_config_for(network, in_dim=3)
    config.train.learning_rate = _NETWORK_LR[network]
    if "field" in user:
        config.field = field_config_from_dict({"network": network, **user["field"]}, in_dim=3)
    for section in ("sampling", "train", "extract"):
        if section in user:
            setattr(config, section, _merged(getattr(config, section), user[section], section))
    config.device = str(user.get("device", "auto"))
    config.seed = int(user.get("seed", 0))
    config.checkpoint_seconds = checkpoint_seconds_option(user)
    if "resolution" in user:
        resolution = int(user["resolution"])
        if not 16 <= resolution <= 2048:
            raise ValueError(f"resolution must be between 16 and 2048, got {resolution}")
        config.extract.resolution = resolution
    if "threshold" in user:
        threshold = float(user["threshold"])
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold is a probability strictly between 0 and 1, got {threshold}")
        config.extract.threshold = threshold
    if "max_steps" in user:
        steps = int(user["max_steps"])
        if steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {steps}")
        config.train.steps = steps
    if "batch_size" in user:
        batch_size = int(user["batch_size"])
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        config.train.batch_size = batch_size
    return config


def _merged(instance, changes: dict, section: str):
    """A copy of the dataclass ``instance`` with ``changes`` (a dict of its fields) applied."""
    if not isinstance(changes, dict):
        raise ValueError(f"occupancy option {section!r} must be a dict of {type(instance).__name__} fields")
    names = {f.name for f in dataclasses.fields(instance)}
    unknown = sorted(set(changes) - names)
    if unknown:
        raise ValueError(f"unknown {section} option(s): {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    changes = {k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()}  # JSON lists
    return dataclasses.replace(instance, **changes)


def make_occupancy_field(config: FieldConfig) -> Field:
    return Field(config, in_dim=3, channels={CHANNEL: 1})


# --------------------------------------------------------------------------- samples


@dataclass
class OccupancySamples:
    """Training points (N, 3) float32 and their labels (N,) float32, 1 inside and 0 outside."""

    points: torch.Tensor
    inside: torch.Tensor

    def __len__(self) -> int:
        return len(self.points)


def occupancy_labels(points: torch.Tensor, winding: FastWindingNumber) -> torch.Tensor:
    """points (N, 3) -> (N,) float32 labels: 1 where the winding number is above 1/2, else 0."""
    return (winding(points) > 0.5).to(torch.float32)


def sample_occupancy(vertices, faces, *, n_near: int, n_uniform: int, near_sigmas: tuple[float, ...],
                     bounds: float = 1.0, seed: int = 0, device=None,
                     winding: FastWindingNumber | None = None) -> OccupancySamples:
    """Labelled training points for the mesh (already in the unit box), on ``device``.

      * n_near surface points moved by isotropic Gaussian noise, split evenly over near_sigmas,
      * n_uniform points uniform in [-bounds, bounds]^3 (so the far field is outside, and
        cavities far from the surface are inside).
    No points exactly on the surface: their label (winding number 1/2) is undefined.
    Random numbers come from a CPU generator seeded with ``seed``: same samples on any device.
    ``winding``: a FastWindingNumber of this mesh to reuse.
    """
    vertices = vertices if torch.is_tensor(vertices) else torch.as_tensor(np.asarray(vertices))
    faces = faces if torch.is_tensor(faces) else torch.as_tensor(np.asarray(faces))
    device = torch.device(device) if device is not None else vertices.device
    vertices, faces = vertices.to(device=device, dtype=torch.float32), faces.to(device)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    near = _near_surface_points(vertices, faces, n_near, near_sigmas, generator)
    uniform = ((torch.rand(n_uniform, 3, generator=generator) * 2.0 - 1.0) * bounds).to(device)
    points = torch.cat([near, uniform]).to(torch.float32)
    winding = winding if winding is not None else FastWindingNumber(vertices, faces)
    return OccupancySamples(points, occupancy_labels(points, winding))


# --------------------------------------------------------------------------- training


def train_occupancy(model: Field, points: torch.Tensor, inside: torch.Tensor, config: OccupancyTrainConfig, *,
                    seed: int, on_step=None, check_cancel=None, cuda_graph: bool | None = None,
                    resume: TrainingState | None = None, track=None,
                    batch: memory.AdaptiveSize | None = None) -> dict:
    """Fit the ``occupancy`` logit of ``model`` to (points (N, 3), inside (N,) in {0, 1}) with
    binary cross-entropy over random batches; returns {"steps", "loss", "seconds"}.

    on_step(step, total, loss) is called after every step; check_cancel() raises to stop
    between steps. cuda_graph (default: config.cuda_graph on a CUDA device) replays the whole
    step as one CUDA graph, as train_sdf does (the eager step is the reference; both draw the
    same batches and do the same maths). resume / track: as for sdf.train_sdf (continue a
    checkpoint.TrainingState; hand a state-capturing function to the job for checkpoints).
    batch: the batch size as a memory.AdaptiveSize, halved on a GPU out-of-memory (as in sdf.train_sdf).
    """
    device = points.device
    graphed = (config.cuda_graph if cuda_graph is None else cuda_graph) and device.type == "cuda"
    generator = torch.Generator(device=device).manual_seed(seed)
    is_hashgrid = config.learning_rate >= 1e-3
    on_cuda = device.type == "cuda"
    # A tensor learning rate and capturable Adam on CUDA, so a captured graph sees the schedule.
    learning_rate = torch.tensor(config.learning_rate, device=device) if on_cuda else config.learning_rate
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate, betas=(0.9, 0.99),
                                 eps=1e-15 if is_hashgrid else 1e-8, capturable=on_cuda)
    decay = config.final_lr_fraction ** (1 / max(config.steps, 1))
    batch = batch if batch is not None else memory.AdaptiveSize(config.batch_size, device=device)
    buffers: dict[str, torch.Tensor] = {}     # fixed buffers (graphs), made again at a lowered batch size

    def step() -> torch.Tensor:
        index = buffers["index"]
        optimizer.zero_grad(set_to_none=True)
        logits = model(points[index])[CHANNEL]
        loss = F.binary_cross_entropy_with_logits(logits, inside[index])
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
            task="occupancy", step=progress["step"], total_steps=config.steps, training_seconds=progress["seconds"],
            model=model, optimizer=optimizer, generators={"batches": generator},
            trainer={"loss": float(torch.as_tensor(progress["loss"]).detach()),
                     "batch_lowered": batch.record() if batch.lowered else None}))

    buffers["index"] = torch.empty(batch.size, dtype=torch.long, device=device)
    first_step = progress["step"] + 1
    run_step = GraphedStep(step, enabled=graphed, device=device, first_step=first_step)
    loss = torch.tensor(progress["loss"])
    clock = time.perf_counter()
    step_number = first_step
    while step_number <= config.steps:
        if check_cancel is not None:
            check_cancel()
        rate = config.learning_rate * decay ** (step_number - 1)
        for group in optimizer.param_groups:
            if on_cuda:
                group["lr"].fill_(rate)
            else:
                group["lr"] = rate
        index = buffers["index"]
        torch.randint(len(points), (len(index),), device=device, generator=generator, out=index)
        del index
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
            buffers["index"] = torch.empty(batch.size, dtype=torch.long, device=device)
            continue
        progress["seconds"] += time.perf_counter() - clock
        progress["step"] = step_number
        if on_step is not None:
            progress["loss"] = loss          # a tensor: read only when a checkpoint or a report needs it
            on_step(step_number, config.steps, loss)
        clock = time.perf_counter()          # reports and checkpoints are not training time
        step_number += 1
    return {"steps": config.steps, "loss": float(loss.detach()), "seconds": progress["seconds"],
            "batch_size": batch.size}


# --------------------------------------------------------------------------- extraction


def probability_to_logit(probability: float) -> float:
    return math.log(probability / (1.0 - probability))


def query_grid_sign_refined(field, *, resolution: int, bounds: float = 1.0, block: int = 4, level: float = 0.0,
                            chunk: int = 2 ** 18, device=None) -> np.ndarray:
    """Like ``geometry.extract.query_grid`` (the reference), evaluating the fine grid only where
    the ``level`` set can be: (R, R, R) float32, [i, j, k] = field((x_i, y_j, z_k)) there.

    The occupancy paper's multiresolution extraction, one level deep. An occupancy logit is no
    distance (the sdf narrow band's test does not apply), but its sign is what marching cubes
    needs. The grid's cells are cut into blocks of ``block``^3; the field is evaluated at the
    block corners; a block whose 8 corners are on different sides of the level, and every
    block next to one, is evaluated in full. Every other vertex gets its block's mean corner
    value: all its corners are on one side, so the mean is too and marching cubes puts no
    triangle there. A part of the surface that crosses no corner of the coarse lattice and
    lies more than a block from every part that does (a detail thinner than ``block`` cells
    everywhere) is lost; tests check the mesh equals the reference's on shapes without such.
    """
    if resolution < 2:
        raise ValueError(f"the grid needs a resolution of at least 2, got {resolution}")
    if block < 1:
        raise ValueError(f"block must be at least 1 cell, got {block}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    cells = resolution - 1
    n_blocks = -(-cells // block)
    axis = torch.linspace(-bounds, bounds, resolution, device=device, dtype=torch.float32)

    def evaluate(points: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([field(part).reshape(-1).float() for part in points.split(chunk)])

    # The coarse lattice: block corners (vertex index k * block; the last block may be short).
    lattice = axis[torch.clamp(torch.arange(n_blocks + 1, device=device) * block, max=cells)]
    lx, ly, lz = torch.meshgrid(lattice, lattice, lattice, indexing="ij")
    corners = evaluate(torch.stack([lx, ly, lz], dim=-1).reshape(-1, 3)).reshape((1, 1) + (n_blocks + 1,) * 3)
    below = (corners < level).float()
    any_below = F.max_pool3d(below, kernel_size=2, stride=1)            # (1, 1, nb, nb, nb)
    all_below = -F.max_pool3d(-below, kernel_size=2, stride=1)
    mixed = (any_below != all_below).float()
    active = F.max_pool3d(mixed, kernel_size=3, stride=1, padding=1)[0, 0] > 0   # + every neighbour block
    block_mean = F.avg_pool3d(corners, kernel_size=2, stride=1)[0, 0]            # (nb, nb, nb)

    # Vertex v belongs to block min(v // block, nb - 1); a vertex on the far face of an active
    # block belongs to the next block, active too (the neighbours were added), so every cell
    # of a mixed block and of its neighbours has all 8 vertices evaluated.
    block_of = torch.clamp(torch.arange(resolution, device=device) // block, max=n_blocks - 1)
    volume = block_mean[block_of][:, block_of][:, :, block_of].reshape(-1)
    todo = active[block_of][:, block_of][:, :, block_of].reshape(-1).nonzero().reshape(-1)
    for part in todo.split(chunk):
        i, j, k = part // resolution ** 2, (part // resolution) % resolution, part % resolution
        volume[part] = evaluate(torch.stack([axis[i], axis[j], axis[k]], dim=1))
    return volume.reshape(resolution, resolution, resolution).cpu().numpy()


def refine_vertices_on_edges(vertices: np.ndarray, field, *, resolution: int, bounds: float = 1.0,
                             level: float = 0.0, steps: int = 6, chunk: int = 2 ** 18, device=None) -> np.ndarray:
    """Move marching-cubes vertices (V, 3) (unit box) to the ``level`` crossing of ``field`` on their
    grid edges, by bisection; returns the new (V, 3) float64.

    Marching cubes places a vertex by linear interpolation of the two grid values of its edge,
    which is exact for a distance but not for a logit: a trained occupancy logit is steep and
    saturates (BCE pushes it to large values off the surface), so the interpolated crossing
    lands anywhere between the nodes; on a 64^3 grid a torus came out 10% too small.
    ``steps`` bisections put the vertex within spacing / 2^(steps + 1) of the crossing. A vertex
    on a grid node (no edge) is kept. Each vertex's edge is the axis along which it is off the
    grid; its ends straddle the level (that is why marching cubes put a vertex there).
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    if steps <= 0 or len(vertices) == 0:
        return vertices
    device = torch.device(device) if device is not None else torch.device("cpu")
    spacing = 2.0 * bounds / (resolution - 1)
    grid = (vertices + bounds) / spacing                                   # in cells
    offset = np.abs(grid - np.round(grid))
    axis = offset.argmax(axis=1)
    on_edge = offset[np.arange(len(grid)), axis] > 1e-6
    rows = np.nonzero(on_edge)[0]
    lo = vertices[rows].copy()
    lo[np.arange(len(rows)), axis[rows]] = np.floor(grid[rows, axis[rows]]) * spacing - bounds
    lo = torch.as_tensor(lo, dtype=torch.float32, device=device)
    along = torch.nn.functional.one_hot(torch.as_tensor(axis[rows], device=device), 3).to(torch.float32)

    def below(points: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([field(part).reshape(-1) < level for part in points.split(chunk)])

    start_below = below(lo)                                               # (E,) side of the lower node
    t_lo = torch.zeros(len(rows), device=device)
    t_hi = torch.ones(len(rows), device=device)
    for _ in range(steps):
        t_mid = 0.5 * (t_lo + t_hi)
        same = below(lo + (t_mid * spacing)[:, None] * along) == start_below
        t_lo = torch.where(same, t_mid, t_lo)
        t_hi = torch.where(same, t_hi, t_mid)
    refined = lo + (0.5 * (t_lo + t_hi) * spacing)[:, None] * along
    out = vertices.copy()
    out[rows] = refined.double().cpu().numpy()
    return out


def extract_occupancy_mesh(logit_fn, config: OccupancyExtractConfig, *, device=None,
                           timings: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The surface P(inside) = threshold of a logit field: (vertices (V, 3) unit box, faces (F, 3)).

    Marching cubes runs on the negated logit (negative inside, like an SDF), so the faces
    are wound with normals pointing out of the object (geometry/extract.py's convention).
    """
    started = time.perf_counter()
    negated = lambda p: -logit_fn(p)  # noqa: E731
    level = -probability_to_logit(config.threshold)
    if config.refine_block > 0 and config.resolution >= 64:
        volume = query_grid_sign_refined(negated, resolution=config.resolution, block=config.refine_block,
                                         level=level, chunk=config.chunk, device=device)
    else:
        volume = query_grid(negated, resolution=config.resolution, chunk=config.chunk, device=device)
    queried = time.perf_counter()
    vertices, faces = marching_cubes(volume, level=level)
    meshed = time.perf_counter()
    vertices = refine_vertices_on_edges(vertices, negated, resolution=config.resolution, level=level,
                                        steps=config.edge_bisection_steps, chunk=config.chunk, device=device)
    if timings is not None:
        timings["grid_query"] = queried - started
        timings["marching_cubes"] = meshed - queried
        timings["edge_bisection"] = time.perf_counter() - meshed
    return vertices, faces


# --------------------------------------------------------------------------- the job


def run_occupancy_job(ctx) -> dict:
    """Run an occupancy job. ``ctx`` is a job.JobContext (paths, reporter, cancel, device).

    Returns the result fields (metrics, timings, outputs) for result.json.
    """
    config: OccupancyConfig = ctx.config
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    ctx.phase("loading mesh")
    vertices, faces = load_mesh(ctx.input_path("mesh"))
    center, scale = normalization_for(vertices)
    normalization = make_normalization(list(center), scale)
    ctx.write_normalization(normalization)
    unit_vertices = (vertices - center) * scale
    timings["load"] = time.perf_counter() - clock

    ctx.phase("labelling points (winding numbers)")
    clock = time.perf_counter()
    torch.manual_seed(config.seed)
    device = ctx.device
    # One winding-number structure serves the training labels and the IoU metric.
    winding = FastWindingNumber(torch.as_tensor(unit_vertices, dtype=torch.float32, device=device),
                                torch.as_tensor(faces, device=device))
    samples = sample_occupancy(unit_vertices, faces, n_near=config.sampling.n_near,
                               n_uniform=config.sampling.n_uniform, near_sigmas=config.sampling.near_sigmas,
                               seed=config.seed, device=device, winding=winding)
    ctx.sync()
    timings["sampling"] = time.perf_counter() - clock
    inside_fraction = float(samples.inside.mean())
    if inside_fraction == 0.0:
        raise ValueError("no sample point is inside the mesh (its winding number is below 1/2 everywhere): "
                         "the mesh encloses no volume (a flat sheet or a few loose faces?) or its faces "
                         "point inwards; an occupancy field needs a solid. Try the sdf task instead.")
    ctx.check_cancel()

    ctx.phase("training")
    clock = time.perf_counter()
    model = make_occupancy_field(config.field).to(device)
    model_meta = {"field": config.field.to_dict(), "channels": model.channels, "task": "occupancy",
                  "normalization": normalization,
                  "channel_meaning": {CHANNEL: "logit of P(inside); the surface is where it is 0"}}
    stats = train_occupancy(model, samples.points, samples.inside, config.train, seed=config.seed,
                            on_step=ctx.training_step, check_cancel=ctx.check_cancel, resume=ctx.resume_state,
                            track=lambda snapshot: ctx.track_training(snapshot, model_meta=model_meta),
                            batch=ctx.adaptive_size(config.train.batch_size, what="batch"))
    ctx.sync()
    timings["training"] = time.perf_counter() - clock
    ctx.finish_training()
    save_field(ctx.checkpoint_dir, model, config.field,
               extra={key: value for key, value in model_meta.items() if key not in ("field", "channels")}
               | {"steps": stats["steps"]})

    ctx.phase("extracting mesh")
    clock = time.perf_counter()
    model.eval()
    logit_fn = lambda p: model(p)[CHANNEL]  # noqa: E731
    chunk = ctx.adaptive_size(config.extract.chunk, what="chunk", unit="points", training=False)
    unit_out, faces_out = memory.retry_chunked(
        lambda size: extract_occupancy_mesh(memory.injecting(logit_fn, "extract_chunk"),
                                            dataclasses.replace(config.extract, chunk=size), device=device,
                                            timings=timings),
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
    # Against the training labels' definition (winding number > 1/2), so for open meshes too.
    metrics["iou"] = occupancy_iou(logit_fn, unit_vertices, winding, n_points=config.metrics.n_iou_points,
                                   threshold=config.extract.threshold, seed=config.seed + 1, device=device)
    metrics["train_inside_fraction"] = inside_fraction
    metrics["n_vertices"] = int(len(world_out))
    metrics["n_faces"] = int(len(faces_out))
    timings["metrics"] = time.perf_counter() - clock
    return {"metrics": metrics, "timings": timings,
            "outputs": {"mesh": f"outputs/{mesh_path.name}"}}


@torch.no_grad()
def occupancy_iou(logit_fn, unit_vertices: np.ndarray, winding: FastWindingNumber, *, n_points: int,
                  threshold: float = 0.5, seed: int = 1, device=None) -> float:
    """IoU of {P(inside) > threshold} and the source's inside (winding number > 1/2) on uniform
    points in the source's bounding box, padded by 5% (as Occupancy Networks measure it)."""
    lo, hi = unit_vertices.min(0), unit_vertices.max(0)
    pad = 0.05 * (hi - lo)
    points = uniform_points_in_box(lo - pad, hi + pad, n_points, seed=seed)
    points = torch.as_tensor(points, dtype=torch.float32, device=device)
    reference = winding(points) > 0.5
    level = probability_to_logit(threshold)
    predicted = torch.cat([logit_fn(chunk) > level for chunk in points.split(2 ** 18)])
    return float(volume_iou(predicted.cpu().numpy(), reference.cpu().numpy()))


__all__ = ["OccupancyConfig", "PRESETS", "resolve_config", "run_occupancy_job", "train_occupancy",
           "make_occupancy_field", "sample_occupancy", "occupancy_labels", "query_grid_sign_refined",
           "extract_occupancy_mesh", "refine_vertices_on_edges", "occupancy_iou"]
