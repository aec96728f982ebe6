"""A new mesh from a trained sdf or occupancy job: another resolution, level or smoothing, no training.

``python -m inr_backend extract JOB_DIR --out OUT.ply [--resolution N] [--threshold T] [--smoothing S]``
calls ``extract_job_mesh``. The field comes from the job's final checkpoint
(checkpoints/model.safetensors + model.json); a job whose training has not finished (cancelled,
interrupted) is extracted from its last resume checkpoint instead, with a note saying so. Nothing
in the job folder is written: the mesh goes to ``out`` only (atomically), in the same world
coordinates as the job's own outputs/mesh.ply.

Defaults come from the job's own settings (job.json's config resolved as the job resolved it):
its marching-cubes resolution, the sdf ``level`` or the occupancy ``threshold``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from .. import memory, protocol
from ..checkpoint import META_FILE, WEIGHTS_FILE, load_field, load_training_state
from ..fields.networks import Field, field_config_from_dict
from ..geometry.extract import extract_mesh, to_world
from ..plyio import write_ply

TASKS = ("sdf", "occupancy")
MAX_SMOOTHING = 1000


def extract_job_mesh(job_dir: str | Path, out: str | Path, *, resolution: int | None = None,
                     threshold: float | None = None, smoothing: int = 0, device="cpu", warn=None) -> dict:
    """Extract the mesh of the sdf/occupancy field in ``job_dir`` into the PLY ``out``.

    threshold: sdf: the distance level in the job's unit box (the same units as job.json's
    ``level``; world distance = level / normalization scale); occupancy: the probability of
    the surface, in (0, 1). smoothing: Taubin smoothing iterations (0: none).
    Returns {"path", "n_vertices", "n_faces", "resolution", "threshold", "smoothing", "seconds",
    "from_step", "finished"}. warn(text): where a chunk lowered after a GPU out-of-memory is told.
    """
    started = time.perf_counter()
    job_dir = Path(job_dir)
    out = Path(out)
    if out.suffix.lower() != ".ply":
        raise ValueError(f"the output mesh {out.name} must end in .ply")
    smoothing = int(smoothing)
    if not 0 <= smoothing <= MAX_SMOOTHING:
        raise ValueError(f"smoothing is a number of iterations from 0 (none) to {MAX_SMOOTHING}, got {smoothing}")
    job = protocol.read_job(job_dir)
    task = job["task"]
    if task not in TASKS:
        raise ValueError(f"extract works on sdf, occupancy and nerf jobs; {job_dir} is a {task!r} job")
    config = _resolved_config(task, job.get("config", {}))
    resolution = config.extract.resolution if resolution is None else int(resolution)
    if not 16 <= resolution <= 2048:
        raise ValueError(f"resolution must be between 16 and 2048, got {resolution}")

    if task == "sdf":
        level = config.extract.level if threshold is None else float(threshold)
        if not np.isfinite(level):
            raise ValueError(f"the sdf threshold (level) must be a finite number, got {threshold}")
    else:
        level = config.extract.threshold if threshold is None else float(threshold)
        if not 0.0 < level < 1.0:
            raise ValueError(f"the occupancy threshold is a probability strictly between 0 and 1, got {threshold}")

    model, meta, from_step, finished = load_trained_field(job_dir, device=device)
    if meta.get("task", task) != task:
        raise protocol.ProtocolError(f"the checkpoint in {job_dir} holds a {meta.get('task')!r} field, but job.json "
                                     f"says {task!r}")
    normalization = meta.get("normalization")
    if normalization is None:
        normalization = protocol.read_json(job_dir / protocol.NORMALIZATION_FILE, "normalization.json")
    model.eval()
    chunk = memory.AdaptiveSize(config.extract.chunk, what="chunk", unit="points", training=False, device=device,
                                report=None if warn is None else (lambda message, _size: warn(message)))
    if task == "sdf":
        field = memory.injecting(lambda p: model(p)["sdf"], "extract_chunk")
        vertices, faces = memory.retry_chunked(
            lambda size: extract_mesh(field, resolution=resolution, level=level, device=device, chunk=size),
            chunk, phase="extracting the mesh")
    else:
        from .occupancy import CHANNEL, extract_occupancy_mesh
        field = memory.injecting(lambda p: model(p)[CHANNEL], "extract_chunk")
        vertices, faces = memory.retry_chunked(
            lambda size: extract_occupancy_mesh(field, dataclasses.replace(config.extract, resolution=resolution,
                                                                           threshold=level, chunk=size),
                                                device=device),
            chunk, phase="extracting the mesh")
    vertices = taubin_smooth(vertices, faces, iterations=smoothing)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_ply(out, to_world(vertices, normalization), faces)
    return {"path": str(out), "n_vertices": int(len(vertices)), "n_faces": int(len(faces)), "resolution": resolution,
            "threshold": level, "smoothing": smoothing, "seconds": round(time.perf_counter() - started, 3),
            "from_step": from_step, "finished": finished}


def load_trained_field(job_dir: str | Path, *, device="cpu") -> tuple[Field, dict, int | None, bool]:
    """(field, its description, step, finished) of a 3D field job: the final checkpoint, else the
    last resume checkpoint (finished False). ProtocolError when the job has neither."""
    checkpoints = Path(job_dir) / protocol.CHECKPOINTS_DIR
    if (checkpoints / META_FILE).is_file() and (checkpoints / WEIGHTS_FILE).is_file():
        model, meta = load_field(checkpoints, device=device)
        return model, meta, meta.get("steps"), True
    state = load_training_state(checkpoints)
    if state is None or not state.meta.get("model", {}).get("field"):
        raise protocol.ProtocolError(
            f"no trained field in {checkpoints}: the job has not trained yet (or stopped before its first "
            "checkpoint). Run it, or finish it with `run JOB_DIR --resume`, then extract")
    meta = state.meta["model"]
    try:
        model = Field(field_config_from_dict(meta["field"]), in_dim=int(meta.get("in_dim", 3)),
                      channels=meta.get("channels", {"sdf": 1}))
        model.load_state_dict(state.weights)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise protocol.ProtocolError(f"the checkpoint in {state.path} does not hold a usable field: {exc}") from None
    return model.to(device), meta, state.step, False


def taubin_smooth(vertices: np.ndarray, faces: np.ndarray, *, iterations: int, lam: float = 0.5,
                  mu: float = -0.53) -> np.ndarray:
    """Taubin's lambda|mu smoothing (1995): each iteration moves every vertex towards the mean of
    its neighbours by ``lam`` and then away by ``mu``, which removes marching cubes' staircase
    ripples without the shrinking of plain Laplacian smoothing. (V, 3) float64 out; faces and
    vertex count unchanged."""
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    if iterations <= 0 or len(faces) == 0:
        return vertices
    from scipy import sparse
    n = len(vertices)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = np.concatenate([edges, edges[:, ::-1]])
    adjacency = sparse.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n)).tocsr()
    adjacency.data[:] = 1.0                     # an edge shared by two faces is still one neighbour
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    connected = degree > 0
    inverse_degree = np.where(connected, 1.0 / np.maximum(degree, 1.0), 0.0)[:, None]
    smoothed = vertices.copy()
    for _ in range(iterations):
        for factor in (lam, mu):
            mean = adjacency @ smoothed * inverse_degree
            smoothed = np.where(connected[:, None], smoothed + factor * (mean - smoothed), smoothed)
    return smoothed


def _resolved_config(task: str, user: dict):
    if task == "sdf":
        from .sdf import resolve_config
    else:
        from .occupancy import resolve_config
    return resolve_config(user)


__all__ = ["extract_job_mesh", "load_trained_field", "taubin_smooth"]
