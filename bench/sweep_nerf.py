"""Sweep NeRF training settings on lego at a fixed time budget: which change buys PSNR?

    python bench/sweep_nerf.py [LEGO_DIR] --seconds 60 \
        --variant baseline \
        --variant "render.step_size_diag=512" \
        --variant "grid.threshold=0.03 train.samples_per_batch=524288" [--seeds 0 1] [--json out.json]

Each variant is a list of ``section.field=value`` overrides of the resolved quality-preset
config (``render.step_size_diag=N`` sets the step to the unit box's diagonal over N;
``scene_box=B`` reconstructs the world box [-B, B]^3 instead of the box from the cameras). Every
run trains for the whole budget (so the learning rate anneals by its end, as ``fit-nerf
--seconds`` does) and is evaluated like bench_nerf.py: mean per-image PSNR over the val split,
composited on white. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from inr_backend.tasks import nerf  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "lego"


def apply_overrides(config: nerf.NerfConfig, variant: str) -> None:
    """``section.field=value ...`` -> set on the config's component dataclasses."""
    for item in variant.split():
        if item == "baseline":
            continue
        key, _, text = item.partition("=")
        section, _, name = key.partition(".")
        value = ast.literal_eval(text)
        if key == "tf32":               # tf32=1: TF32 matmuls, as training had before (run_variant applies it)
            continue
        if key == "scene_box":          # scene_box=B: reconstruct the world box [-B, B]^3
            config.scene_box = [[-float(value)] * 3, [float(value)] * 3]
            continue
        if section == "render" and name == "step_size_diag":
            config.render.step_size = 2.0 * math.sqrt(3.0) / float(value)
            continue
        target = {"field": config.field, "grid": config.grid, "train": config.train, "render": config.render,
                  "hash": config.field.grid}[section]
        if not hasattr(target, name):
            raise SystemExit(f"unknown setting {key}")
        setattr(target, name, type(getattr(target, name))(value))


def run_variant(dataset: Path, variant: str, seconds: float, seed: int, device, eval_fine: bool = False) -> dict:
    config = nerf.resolve_config({"preset": "quality", "device": str(device), "seconds": seconds, "seed": seed,
                                  "max_steps": 10 ** 6})
    apply_overrides(config, variant)
    torch.manual_seed(seed)
    train, held, _ = nerf.load_dataset(dataset, config, device, warn=lambda text: None)[:3]
    model = nerf.NerfModel(config).to(device)
    trainer = nerf.NerfTrainer(model, train, config, device=device)
    torch.backends.cuda.matmul.allow_tf32 = "tf32=1" in variant.split()
    trainer.train_for(until_step=config.train.max_steps, until_seconds=seconds)
    metrics = nerf.evaluate(model, held, with_ssim=False)
    if eval_fine:   # the same field rendered with half the step: what a finer inference march buys
        config.render.step_size /= 2
        fine = round(nerf.evaluate(model, held, with_ssim=False)["psnr"], 3)
        config.render.step_size *= 2
    row = {"variant": variant, "seed": seed, "seconds": round(trainer.training_seconds, 2), "steps": trainer.step,
           "psnr": round(metrics["psnr"], 3), "rays_per_batch": trainer.rays,
           "steps_per_second": round(trainer.step / trainer.training_seconds, 1),
           "samples_per_second": round(trainer.samples_seen / trainer.training_seconds),
           "samples_per_ray": round(trainer.samples_seen / max(trainer.rays_seen, 1), 2)}
    if eval_fine:
        row["psnr_half_step"] = fine
    print(f"  {variant:60s} seed {seed}  {row['steps']:6d} steps  {row['psnr']:.2f} dB  "
          f"{row['steps_per_second']} steps/s  {row['samples_per_ray']} samples/ray"
          + (f"  half-step eval {row['psnr_half_step']:.2f} dB" if eval_fine else ""), flush=True)
    del model, trainer
    torch.cuda.empty_cache() if device.type == "cuda" else None
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", nargs="?", default=str(DATA))
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--variant", action="append", default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--eval-fine", action="store_true", help="also evaluate with half the step size")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    variants = args.variant or ["baseline"]
    rows = [run_variant(Path(args.dataset), variant, args.seconds, seed, device, args.eval_fine)
            for seed in args.seeds for variant in variants]
    print(f"\n| variant | seed | steps | samples/ray | PSNR at {args.seconds:g} s |\n| --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['variant']} | {row['seed']} | {row['steps']} | {row['samples_per_ray']} | {row['psnr']:.2f} |")
    result = {"benchmark": "nerf sweep", "dataset": Path(args.dataset).name, "seconds": args.seconds,
              "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "runs": rows}
    path = Path(args.json) if args.json else REPO / "bench" / "results" / "nerf_sweep.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
