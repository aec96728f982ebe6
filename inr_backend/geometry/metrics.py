"""How close a reconstructed mesh is to the reference: Chamfer-L1, normal consistency, F-score,
and the volume IoU of two inside masks. numpy / scipy on the CPU.

Surface metrics compare area-uniform samples of both surfaces. With 100k samples a side, a
mesh against itself already scores a Chamfer-L1 of ~0.0013-0.0015 of its bounding-box
diagonal (two independent samplings never coincide): no reconstruction can beat that floor.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

F_SCORE_THRESHOLD = 0.01  # fraction of the reference bounding-box diagonal


def sample_surface_np(vertices: np.ndarray, faces: np.ndarray, n: int, rng: np.random.Generator
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(points (n, 3), unit face normals (n, 3)), area-uniform on the mesh."""
    tris = np.asarray(vertices, dtype=np.float64)[np.asarray(faces, dtype=np.int64)]
    cross = np.cross(tris[:, 1] - tris[:, 0], tris[:, 2] - tris[:, 0])
    areas = np.linalg.norm(cross, axis=1)
    if len(tris) == 0 or not areas.sum() > 0:
        raise ValueError("cannot sample a mesh with no area")
    ids = rng.choice(len(tris), size=n, p=areas / areas.sum())
    u, v = rng.random(n), rng.random(n)
    flip = u + v > 1.0  # fold the unit square onto the triangle
    u, v = np.where(flip, 1.0 - u, u), np.where(flip, 1.0 - v, v)
    t = tris[ids]
    points = t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0])
    normals = cross[ids] / np.maximum(areas[ids], np.finfo(np.float64).tiny)[:, None]
    return points, normals


def mesh_metrics(pred_vertices: np.ndarray, pred_faces: np.ndarray, ref_vertices: np.ndarray,
                 ref_faces: np.ndarray, *, n_samples: int = 100_000, seed: int = 0) -> dict:
    """Surface metrics of a predicted mesh against a reference, in the same coordinates.

    Keys: chamfer_l1 (mean of the two directions' mean nearest-neighbour distance, divided by
    the reference bbox diagonal), normal_consistency (mean |cos| between a sample's normal and
    its nearest neighbour's, both directions), precision / recall (fraction of predicted /
    reference samples within 1% of the diagonal of the other surface), f_score (their
    harmonic mean), f_score_threshold (that 1%, in mesh units), bbox_diagonal, n_samples.
    """
    rng = np.random.default_rng(seed)
    pred_points, pred_normals = sample_surface_np(pred_vertices, pred_faces, n_samples, rng)
    ref_points, ref_normals = sample_surface_np(ref_vertices, ref_faces, n_samples, rng)
    ref_vertices = np.asarray(ref_vertices, dtype=np.float64)
    diagonal = float(np.linalg.norm(ref_vertices.max(axis=0) - ref_vertices.min(axis=0)))

    pred_to_ref, nearest_ref = cKDTree(ref_points).query(pred_points, workers=-1)
    ref_to_pred, nearest_pred = cKDTree(pred_points).query(ref_points, workers=-1)

    threshold = F_SCORE_THRESHOLD * diagonal
    precision = float(np.mean(pred_to_ref < threshold))
    recall = float(np.mean(ref_to_pred < threshold))
    f_score = 2.0 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    cos_pred = np.abs(np.sum(pred_normals * ref_normals[nearest_ref], axis=1))
    cos_ref = np.abs(np.sum(ref_normals * pred_normals[nearest_pred], axis=1))
    return {
        "chamfer_l1": float(0.5 * (pred_to_ref.mean() + ref_to_pred.mean()) / diagonal),
        "normal_consistency": float(0.5 * (cos_pred.mean() + cos_ref.mean())),
        "f_score": float(f_score),
        "precision": precision,
        "recall": recall,
        "f_score_threshold": threshold,
        "bbox_diagonal": diagonal,
        "n_samples": int(n_samples),
    }


def volume_iou(pred_inside: np.ndarray, ref_inside: np.ndarray) -> float:
    """|pred and ref| / |pred or ref| of two boolean masks over the same points; 1.0 when both
    are empty (they agree everywhere)."""
    pred_inside = np.asarray(pred_inside, dtype=bool)
    ref_inside = np.asarray(ref_inside, dtype=bool)
    if pred_inside.shape != ref_inside.shape:
        raise ValueError(f"masks differ in shape: {pred_inside.shape} and {ref_inside.shape}")
    union = np.count_nonzero(pred_inside | ref_inside)
    return 1.0 if union == 0 else np.count_nonzero(pred_inside & ref_inside) / union


def uniform_points_in_box(lo, hi, n: int, *, seed: int = 0) -> np.ndarray:
    """(n, 3) float64 points uniform in the box [lo, hi] (lo, hi: (3,))."""
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    return lo + np.random.default_rng(seed).random((n, 3)) * (hi - lo)
