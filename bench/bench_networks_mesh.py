"""Benchmark: the four network kinds on one mesh, Chamfer vs training time, and a figure.

    python bench/bench_networks_mesh.py [MESH] [--task sdf|occupancy] [--budgets 1 2 5 10]
        [--networks relu fourier siren hashgrid] [--resolution 256] [--device cuda] [--quick]
        [--json out.json] [--figure out.png]

For each network (plain ReLU MLP, Fourier features + ReLU MLP, SIREN, hash grid + small MLP),
trains the task's field on the same ground-truth samples and, each time the training clock
passes a budget, extracts a mesh and measures it against the source (Chamfer-L1 in units of
the bounding-box diagonal, normal consistency, F-score; IoU for occupancy). The clock stops
while measuring. The learning-rate schedule is laid out over the largest budget (the number
of steps comes from each network's measured step rate), so the earlier budgets are points
along one run, as in instant-ngp's quality-vs-time plots.

Prints a table, writes JSON (bench/results/) and a PNG figure: one row per budget, the source
(grey) and each network's mesh (orange) side by side, rendered with the same orthographic
camera by a numpy z-buffer of dense surface samples (no matplotlib, no GPU renderer needed).
``--quick``: CPU-sized (budgets 3 and 6 s, small samples, 96^3 grid) to check the script.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from inr_backend.geometry.extract import extract_mesh  # noqa: E402
from inr_backend.geometry.mesh import load_mesh, normalization_for  # noqa: E402
from inr_backend.geometry.metrics import mesh_metrics, sample_surface_np  # noqa: E402
from inr_backend.geometry.winding import FastWindingNumber  # noqa: E402
from inr_backend.tasks import occupancy, sdf  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "meshes"
NETWORK_KINDS = ("relu", "fourier", "siren", "hashgrid")


# --------------------------------------------------------------------------- training with budgets


class Task:
    """What differs between sdf and occupancy: config, samples, the training call, extraction."""

    def __init__(self, name: str, preset: str, quick: bool):
        self.name, self.preset, self.quick = name, preset, quick
        self.module = sdf if name == "sdf" else occupancy

    def config(self, network: str, device: str):
        config = self.module.resolve_config({"preset": self.preset, "network": network, "device": device})
        if self.quick:
            if self.name == "sdf":
                config.sampling.n_surface, config.sampling.n_near, config.sampling.n_uniform = 2 ** 13, 2 ** 14, 2 ** 13
            else:
                config.sampling.n_near, config.sampling.n_uniform = 2 ** 15, 2 ** 14
            config.train.batch_size = 2 ** 12
        return config

    def samples(self, config, unit_vertices, faces, device):
        winding = FastWindingNumber(torch.as_tensor(unit_vertices, dtype=torch.float32, device=device),
                                    torch.as_tensor(faces, device=device))
        s = config.sampling
        if self.name == "sdf":
            from inr_backend.geometry.sampling import sample_sdf
            samples = sample_sdf(unit_vertices, faces, n_surface=s.n_surface, n_near=s.n_near, n_uniform=s.n_uniform,
                                 near_sigmas=s.near_sigmas, seed=config.seed, device=device, winding=winding)
            return samples.points, samples.sdf
        samples = occupancy.sample_occupancy(unit_vertices, faces, n_near=s.n_near, n_uniform=s.n_uniform,
                                             near_sigmas=s.near_sigmas, seed=config.seed, device=device,
                                             winding=winding)
        return samples.points, samples.inside

    def make_field(self, config):
        return (sdf.make_sdf_field if self.name == "sdf" else occupancy.make_occupancy_field)(config.field)

    def train(self, model, points, targets, train_config, *, on_step):
        trainer = sdf.train_sdf if self.name == "sdf" else occupancy.train_occupancy
        return trainer(model, points, targets, train_config, seed=0, on_step=on_step)

    def extract(self, model, resolution: int, device):
        if self.name == "sdf":
            # Every network here is trained as a distance, so the narrow band applies.
            return extract_mesh(lambda p: model(p)["sdf"], resolution=resolution, device=device)
        config = occupancy.OccupancyExtractConfig(resolution=resolution)
        return occupancy.extract_occupancy_mesh(lambda p: model(p)[occupancy.CHANNEL], config, device=device)


class BudgetClock:
    """Training time that excludes measuring; calls ``measure(step, seconds)`` at each budget."""

    def __init__(self, budgets: list[float], device, measure):
        self.budgets = sorted(budgets)
        self.device = device
        self.measure = measure
        self.paused = 0.0
        self.started = None
        self.next = 0

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started - self.paused

    def start(self) -> None:
        self.sync()
        self.started = time.perf_counter()

    def on_step(self, step: int, total: int, loss) -> None:
        if self.next >= len(self.budgets):
            return
        self.sync()  # true time at every step: the GPU may run behind the Python loop
        seconds = self.elapsed()
        if seconds >= self.budgets[self.next] or step == total:
            pause = time.perf_counter()
            while self.next < len(self.budgets) and (seconds >= self.budgets[self.next] or step == total):
                self.measure(self.budgets[self.next], step, seconds)
                self.next += 1
            self.paused += time.perf_counter() - pause


def measure_step_rate(task: Task, config, points, targets, device, probe_steps: int) -> float:
    """Seconds per training step of this network (after a few warm-up steps)."""
    model = task.make_field(config).to(device)
    train_config = type(config.train)(**{**config.train.__dict__, "steps": probe_steps})
    marks = []

    def on_step(step, total, loss):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        marks.append(time.perf_counter())

    task.train(model, points, targets, train_config, on_step=on_step)
    skip = min(5, probe_steps // 2)
    # The median step: a busy machine's stalls must not shrink the run's number of steps.
    return float(np.median(np.diff(marks[skip:])))


# --------------------------------------------------------------------------- rendering


def render_mesh(vertices: np.ndarray, faces: np.ndarray, *, size: int, center: np.ndarray, half_extent: float,
                view: np.ndarray, up: np.ndarray, colour: tuple[float, float, float], seed: int = 0) -> np.ndarray:
    """(size, size, 3) uint8: an orthographic shaded view of the mesh on white.

    Dense area-uniform surface samples (about 24 per pixel of the view) are projected; a
    z-buffer keeps the nearest per pixel; Lambert shading from a light near the camera, by
    |n . l| so open meshes' back faces are lit too.
    """
    view = view / np.linalg.norm(view)
    right = np.cross(up, view)
    right /= np.linalg.norm(right)
    true_up = np.cross(view, right)
    n_points = 24 * size * size
    points, normals = sample_surface_np(vertices, faces, n_points, np.random.default_rng(seed))
    local = points - center
    x, y, depth = local @ right, local @ true_up, local @ view     # depth grows towards the camera
    col = np.floor((x / half_extent + 1) * 0.5 * size).astype(np.int64)
    row = np.floor((1 - y / half_extent) * 0.5 * size).astype(np.int64)
    keep = (col >= 0) & (col < size) & (row >= 0) & (row < size)
    pixel = row[keep] * size + col[keep]
    order = np.lexsort((-depth[keep], pixel))                        # per pixel, nearest first
    first_pixels, first = np.unique(pixel[order], return_index=True)
    nearest = np.nonzero(keep)[0][order[first]]
    light = view + 0.4 * true_up + 0.3 * right
    light /= np.linalg.norm(light)
    shade = 0.25 + 0.75 * np.abs(normals[nearest] @ light)
    image = np.ones((size * size, 3))
    image[first_pixels] = shade[:, None] * np.asarray(colour)[None]
    return (image.reshape(size, size, 3) * 255).clip(0, 255).astype(np.uint8)


def save_figure(path: Path, panels: list[list[tuple[str, np.ndarray]]]) -> None:
    """Rows of (label, image) panels into one PNG, labels drawn under each panel."""
    from PIL import Image, ImageDraw
    size = panels[0][0][1].shape[0]
    label_height = 16
    columns = max(len(row) for row in panels)
    figure = Image.new("RGB", (columns * size, len(panels) * (size + label_height)), "white")
    draw = ImageDraw.Draw(figure)
    for r, row in enumerate(panels):
        for c, (label, image) in enumerate(row):
            top = r * (size + label_height)
            figure.paste(Image.fromarray(image), (c * size, top))
            draw.text((c * size + 4, top + size + 2), label, fill=(0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.save(path)


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mesh", nargs="?", type=Path, default=DATA / "armadillo.obj")
    parser.add_argument("--task", choices=["sdf", "occupancy"], default="sdf")
    parser.add_argument("--preset", default="balanced")
    parser.add_argument("--networks", nargs="+", default=list(NETWORK_KINDS))
    parser.add_argument("--budgets", nargs="+", type=float, default=[1.0, 2.0, 5.0, 10.0],
                        help="training seconds at which each network is measured")
    parser.add_argument("--resolution", type=int, default=256, help="marching-cubes grid for the measured meshes")
    parser.add_argument("--metric-samples", type=int, default=100_000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--panel", type=int, default=320, help="figure panel size in pixels")
    parser.add_argument("--view", type=float, nargs=3, default=[0.0, 0.0, 1.0],
                        help="direction from the object towards the camera (default +z)")
    parser.add_argument("--up", type=float, nargs=3, default=[0.0, 1.0, 0.0])
    parser.add_argument("--quick", action="store_true", help="CPU-sized run to check the script")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--figure", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.budgets, args.resolution, args.metric_samples, args.panel = [3.0, 6.0], 96, 20_000, 160
        args.preset = "fast"
    stem = f"bench_networks_mesh_{args.task}_{args.mesh.stem}"
    args.json = args.json or REPO / "bench" / "results" / f"{stem}.json"
    args.figure = args.figure or REPO / "bench" / "results" / f"{stem}.png"
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))

    vertices, faces = load_mesh(args.mesh)
    center, scale = normalization_for(vertices)
    unit_vertices = (vertices - center) * scale
    task = Task(args.task, args.preset, args.quick)
    base = task.config(args.networks[0], str(device))
    started = time.perf_counter()
    points, targets = task.samples(base, unit_vertices, faces, device)
    sampling_s = time.perf_counter() - started
    print(f"{args.mesh.name}: {len(faces)} faces, {len(points)} {args.task} samples in {sampling_s:.2f} s on {device}")

    rows, meshes = [], {}
    for network in args.networks:
        config = task.config(network, str(device))
        torch.manual_seed(0)
        seconds_per_step = measure_step_rate(task, config, points, targets, device, probe_steps=30 if not args.quick else 8)
        config.train.steps = max(10, math.ceil(max(args.budgets) / seconds_per_step))
        torch.manual_seed(0)
        model = task.make_field(config).to(device)

        def measure(budget, step, seconds, network=network, model=model):
            extract_started = time.perf_counter()
            try:
                with torch.no_grad():
                    unit_out, faces_out = task.extract(model, args.resolution, device)
            except ValueError as exc:  # no surface yet (the field is everywhere one sign)
                rows.append({"network": network, "budget_s": budget, "train_s": seconds, "steps": step,
                             "extraction_s": None, "chamfer_l1": None, "normal_consistency": None,
                             "f_score": None, "out_faces": 0, "error": str(exc)})
                print(f"  {network:9s} {budget:5.1f} s budget: step {step:6d}, no mesh: {exc}")
                return
            extraction_s = time.perf_counter() - extract_started
            world_out = unit_out / scale + center
            metrics = mesh_metrics(world_out, faces_out, vertices, faces, n_samples=args.metric_samples)
            rows.append({"network": network, "budget_s": budget, "train_s": seconds, "steps": step,
                         "extraction_s": extraction_s, "chamfer_l1": metrics["chamfer_l1"],
                         "normal_consistency": metrics["normal_consistency"], "f_score": metrics["f_score"],
                         "out_faces": int(len(faces_out))})
            meshes[(network, budget)] = (world_out, faces_out)
            print(f"  {network:9s} {budget:5.1f} s budget: step {step:6d}, Chamfer-L1 {metrics['chamfer_l1']:.5f}, "
                  f"NC {metrics['normal_consistency']:.3f}, F {metrics['f_score']:.3f}")

        clock = BudgetClock(args.budgets, device, measure)
        clock.start()
        task.train(model, points, targets, config.train, on_step=clock.on_step)

    header = ["network", "budget_s", "train_s", "steps", "chamfer_l1", "normal_consistency", "f_score", "extraction_s"]
    print(" | ".join(header))
    for row in rows:
        print(" | ".join(f"{row[k]:.4f}" if isinstance(row[k], float) else str(row[k]) for k in header))

    lo, hi = vertices.min(0), vertices.max(0)
    view_center, half_extent = (lo + hi) / 2, 0.55 * float(np.max(hi - lo))
    render = dict(size=args.panel, center=view_center, half_extent=half_extent,
                  view=np.asarray(args.view, float), up=np.asarray(args.up, float))
    source_image = render_mesh(vertices, faces, colour=(0.75, 0.75, 0.75), **render)
    panels = []
    for budget in sorted(args.budgets):
        row = [(f"source ({budget:g} s)", source_image)]
        for network in args.networks:
            if (network, budget) in meshes:
                mesh = meshes[(network, budget)]
                chamfer = next(r["chamfer_l1"] for r in rows if r["network"] == network and r["budget_s"] == budget
                               and r["chamfer_l1"] is not None)
                image = render_mesh(*mesh, colour=(0.95, 0.55, 0.2), **render)
                row.append((f"{network} CD {chamfer:.4f}", image))
            else:
                row.append((f"{network}: no surface", np.full((args.panel, args.panel, 3), 255, np.uint8)))
        panels.append(row)
    save_figure(args.figure, panels)

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    report = {"date": time.strftime("%Y-%m-%d"), "commit": commit, "task": args.task, "preset": args.preset,
              "mesh": args.mesh.name, "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
              "torch": torch.__version__, "python": platform.python_version(), "command": " ".join(sys.argv),
              "sampling_s": sampling_s, "resolution": args.resolution, "figure": str(args.figure), "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json} and {args.figure}")


if __name__ == "__main__":
    main()
