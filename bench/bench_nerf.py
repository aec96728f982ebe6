"""Benchmark: NeRF on NeRF-synthetic lego: held-out PSNR against training time, speed, render, mesh.

    python bench/bench_nerf.py [LEGO_DIR] [--checkpoints 5 15 30 60 150] [--reference-seconds 150]
                               [--max-eval-views N] [--json out.json]

Trains on transforms_train.json and evaluates on transforms_val.json: PSNR is the mean over
the val images of per-image PSNR, composited on white. Training stops at each checkpoint time
(training time only, device synchronised), is evaluated, and continues; with --budget-runs each
checkpoint time is instead its own run with that budget, so its learning rate anneals by then
(as `fit-nerf --seconds N` does). Then: rays/s and
samples/s of training, the time to render one 800x800 view (the val camera with doubled
intrinsics), a coloured mesh at 512^3, and the reference model's PSNR after the same time.
Default data: ../shared/data/lego.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from inr_backend.kernels.hash_grid import fused_kernels_enabled  # noqa: E402
from inr_backend.tasks import nerf  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "lego"


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_with_checkpoints(dataset: Path, user_config: dict, checkpoints: list[float], device, max_eval_views,
                           final_lr_fraction: float | None = None):
    config = nerf.resolve_config(user_config)
    if final_lr_fraction is not None:
        config.train.final_lr_fraction = final_lr_fraction
    torch.manual_seed(config.seed)
    train, held, normalization = nerf.load_dataset(dataset, config, device, warn=lambda text: print("warning:", text))
    model = nerf.NerfModel(config).to(device)
    trainer = nerf.NerfTrainer(model, train, config, device=device)
    rows = []
    for seconds in checkpoints:
        trainer.train_for(until_step=config.train.max_steps, until_seconds=seconds)
        clock = time.perf_counter()
        metrics = nerf.evaluate(model, held, max_views=max_eval_views, with_ssim=seconds == checkpoints[-1])
        row = {"seconds": round(trainer.training_seconds, 2), "steps": trainer.step, "psnr": round(metrics["psnr"], 3),
               "rays_per_batch": trainer.rays, "eval_seconds": round(time.perf_counter() - clock, 2)}
        if "ssim" in metrics:
            row["ssim"] = round(metrics["ssim"], 4)
        rows.append(row)
        print(f"  {user_config.get('model', 'ngp'):9s} {row['seconds']:7.1f} s  step {row['steps']:6d}  "
              f"PSNR {row['psnr']:.2f} dB  (eval {row['eval_seconds']} s)", flush=True)
    speed = {"rays_per_second": trainer.rays_seen / trainer.training_seconds,
             "samples_per_second": trainer.samples_seen / trainer.training_seconds,
             "steps_per_second": trainer.step / trainer.training_seconds}
    return model, held, normalization, rows, speed


def time_render(model, held, device, repeats: int = 5) -> dict:
    """Median time of one 800x800 view, for the configured marching and a few alternatives
    (block size, early-stop transmittance), with each one's PSNR on the first val image."""
    c2w, intr = held.c2w[0], held.intrinsics[0] * 2.0          # 400 -> 800 pixels, same field of view
    width, height = held.width * 2, held.height * 2
    render = model.config.render
    configured = (render.block_steps, render.early_stop)
    variants = []
    for block, early in [configured, (32, 1e-4), (32, 1e-3), (16, 1e-3), (128, 1e-3)]:
        render.block_steps, render.early_stop = block, early
        nerf.render_view(model, c2w, intr, width, height)       # warm-up
        times = []
        for _ in range(repeats):
            sync(device)
            clock = time.perf_counter()
            nerf.render_view(model, c2w, intr, width, height)
            sync(device)
            times.append(time.perf_counter() - clock)
        quality = nerf.evaluate(model, held, max_views=1, with_ssim=False)["psnr"]
        variants.append({"block_steps": block, "early_stop": early, "seconds_median": sorted(times)[len(times) // 2],
                         "psnr_view0": round(quality, 3)})
        print(f"  render {width}x{height} block {block} early_stop {early}: "
              f"{variants[-1]['seconds_median'] * 1000:.1f} ms, PSNR(view 0) {quality:.2f}", flush=True)
    render.block_steps, render.early_stop = configured
    return {"size": f"{width}x{height}", "seconds_median": variants[0]["seconds_median"], "variants": variants}


def time_mesh(model, normalization, device, out: Path, resolution: int = 512) -> dict:
    timings: dict = {}
    sync(device)
    clock = time.perf_counter()
    counts = nerf.write_nerf_mesh(model, normalization, out, resolution=resolution,
                                  threshold=model.config.mesh.threshold, device=device, timings=timings)
    sync(device)
    return {"resolution": resolution, "seconds": time.perf_counter() - clock, "n_faces": counts["n_faces"],
            **{k: round(v, 3) for k, v in timings.items()}}


def profile_training(model, dataset: Path, device, steps: int = 20) -> None:
    """Profile a few steps of continued training: where GPU time goes, and whether the host keeps up."""
    from torch.profiler import ProfilerActivity, profile
    train, _, _ = nerf.load_dataset(dataset, model.config, device, warn=lambda text: None)
    trainer = nerf.NerfTrainer(model, train, model.config, device=device)
    trainer.step = 10_000                        # past warm-up: sampled grid updates, as in steady training
    trainer.train_for(until_step=trainer.step + 10)
    sync(device)
    clock = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        trainer.train_for(until_step=trainer.step + steps)
        sync(device)
    wall = (time.perf_counter() - clock) / steps
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=30))
    print(f"  wall per training step (under the profiler): {wall * 1000:.2f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", nargs="?", default=str(DATA))
    parser.add_argument("--checkpoints", type=float, nargs="+", default=[5, 15, 30, 60, 150])
    parser.add_argument("--reference-seconds", type=float, default=150.0, help="0 skips the reference model")
    parser.add_argument("--max-eval-views", type=int, default=None)
    parser.add_argument("--preset", default="quality")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--scene-box", type=float, default=None, metavar="B",
                        help="reconstruct the world box [-B, B]^3 (NeRF-synthetic scenes fit in 1.5)")
    parser.add_argument("--mixed-precision", action="store_true", help="MLPs in bfloat16")
    parser.add_argument("--skip-extras", action="store_true", help="no render/mesh timing")
    parser.add_argument("--profile-render", action="store_true", help="print a profile of one 800x800 render")
    parser.add_argument("--profile-train", action="store_true", help="print a profile of 20 training steps")
    parser.add_argument("--max-steps", type=int, default=10 ** 6, help="stop at this step (A/B runs at equal steps)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget-runs", action="store_true",
                        help="train a separate run for each checkpoint time, with that time as its budget "
                             "(default: one run of the last time, evaluated at each checkpoint on the way)")
    parser.add_argument("--final-lr-fraction", type=float, default=None, help="override the LR decay's end point")
    parser.add_argument("--json", default=None)
    parser.add_argument("--out", default="/tmp/bench_nerf")
    args = parser.parse_args()
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dataset = Path(args.dataset)
    result = {"benchmark": "nerf", "dataset": dataset.name, "device": torch.cuda.get_device_name() if device.type == "cuda"
              else platform.processor() or "cpu", "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
              "preset": args.preset}
    box = {"scene_box": [[-args.scene_box] * 3, [args.scene_box] * 3]} if args.scene_box else {}
    result.update(scene_box=args.scene_box, mixed_precision=args.mixed_precision)
    print(f"NeRF on {dataset.name} ({result['device']}, preset {args.preset})", flush=True)
    user = {"preset": args.preset, "device": args.device, "max_steps": args.max_steps, "seed": args.seed,
            "mixed_precision": args.mixed_precision, **box}
    if args.budget_runs:
        # One run per budget: what `fit-nerf --seconds N` gives, the learning rate annealed by N.
        rows = []
        for seconds in args.checkpoints:
            model = None   # free the last run's model before the next one
            model, held, normalization, run_rows, speed = train_with_checkpoints(
                dataset, {**user, "seconds": seconds}, [seconds], device, args.max_eval_views,
                args.final_lr_fraction)
            rows += run_rows
    else:
        model, held, normalization, rows, speed = train_with_checkpoints(
            dataset, {**user, "seconds": args.checkpoints[-1]}, args.checkpoints, device, args.max_eval_views,
            args.final_lr_fraction)
    result["budget_runs"] = args.budget_runs
    result["ngp"] = {"checkpoints": rows, **{k: round(v, 1) for k, v in speed.items()}}
    if args.profile_render:
        from torch.profiler import ProfilerActivity, profile
        c2w, intr = held.c2w[0], held.intrinsics[0] * 2.0
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            nerf.render_view(model, c2w, intr, held.width * 2, held.height * 2)
            sync(device)
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25))
    if args.profile_train:
        profile_training(model, dataset, device)
    result["fused_kernels"] = fused_kernels_enabled()
    if args.skip_extras:
        result["speed_only"] = True
        path = Path(args.json) if args.json else REPO / "bench" / "results" / f"nerf_{dataset.name}_variant.json"
        path.write_text(json.dumps(result, indent=2))
        return 0
    result["render"] = time_render(model, held, device)
    print(f"  render {result['render']['size']}: {result['render']['seconds_median'] * 1000:.1f} ms", flush=True)
    result["mesh"] = time_mesh(model, normalization, device, out / "lego_mesh.ply")
    print(f"  mesh 512^3: {result['mesh']['seconds']:.2f} s ({result['mesh']['n_faces']} faces) {result['mesh']}",
          flush=True)
    del model
    if args.reference_seconds > 0:
        _, _, _, ref_rows, ref_speed = train_with_checkpoints(
            dataset, {"preset": "balanced", "model": "reference", "device": args.device, "max_steps": 10 ** 7,
                      "seconds": args.reference_seconds, **box},
            [args.reference_seconds], device, args.max_eval_views)
        result["reference"] = {"checkpoints": ref_rows, **{k: round(v, 1) for k, v in ref_speed.items()}}

    print("\n| training time | steps | PSNR (dB) |\n| --- | --- | --- |")
    for row in rows:
        print(f"| {row['seconds']:.1f} s | {row['steps']} | {row['psnr']:.2f} |")
    print(f"\nrays/s {speed['rays_per_second']:.3g}, samples/s {speed['samples_per_second']:.3g}, "
          f"steps/s {speed['steps_per_second']:.1f}")
    if "reference" in result:
        ref = result["reference"]["checkpoints"][-1]
        print(f"reference NeRF after {ref['seconds']:.0f} s: {ref['psnr']:.2f} dB ({ref['steps']} steps)")
    path = Path(args.json) if args.json else REPO / "bench" / "results" / f"nerf_{dataset.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
